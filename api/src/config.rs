//! Configuration from flags and environment, validated at start-up.

use std::net::SocketAddr;

use clap::{Args, Parser, Subcommand, ValueEnum};

#[derive(Debug, Parser)]
#[command(
    name = "tally-api",
    version,
    about = "HTTP API for tally: writes sessions, reads usage counters"
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

impl Cli {
    /// Parses the command line; `serve` is the command when none is named.
    pub fn parse_with_default() -> Self {
        let mut args: Vec<std::ffi::OsString> = std::env::args_os().collect();
        let named = args.get(1).and_then(|a| a.to_str()).is_some_and(|a| {
            matches!(
                a,
                "serve" | "token" | "help" | "-h" | "--help" | "-V" | "--version"
            )
        });
        if !named {
            args.insert(1, "serve".into());
        }
        Self::parse_from(args)
    }
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Serve the API (the default).
    Serve(ServeArgs),
    /// Print a signed token for local use.
    Token(TokenArgs),
}

#[derive(Debug, Clone, Args)]
pub struct ServeArgs {
    /// PostgreSQL connection string; the database must have the tally extension.
    #[arg(long, env = "DATABASE_URL")]
    pub database_url: String,
    /// Address to listen on.
    #[arg(long, env = "TALLY_BIND", default_value = "127.0.0.1:8080")]
    pub bind: SocketAddr,
    #[command(flatten)]
    pub secret: SecretArgs,
    /// Maximum database connections in the pool.
    #[arg(long, env = "TALLY_POOL_SIZE", default_value_t = 16, value_parser = clap::value_parser!(u32).range(1..=1000))]
    pub pool_size: u32,
    /// Per-request time limit, in milliseconds.
    #[arg(long, env = "TALLY_REQUEST_TIMEOUT_MS", default_value_t = 10_000)]
    pub request_timeout_ms: u64,
    /// Browser origins allowed by CORS, comma-separated (none by default; `*` for any).
    #[arg(long, env = "TALLY_CORS_ORIGINS", value_delimiter = ',')]
    pub cors_origins: Vec<String>,
    /// How far in the past a user token may date a session (`started_at`), e.g. `24h`,
    /// `90m`; never before the start of the user's current billing period either.
    /// Service tokens may import history.
    #[arg(long, env = "TALLY_MAX_BACKDATE", default_value = "24h", value_parser = parse_duration)]
    pub max_backdate: std::time::Duration,
}

fn parse_duration(value: &str) -> Result<std::time::Duration, String> {
    humantime::parse_duration(value).map_err(|e| format!("not a duration such as 24h or 90m ({e})"))
}

#[derive(Debug, Clone, Args)]
pub struct SecretArgs {
    /// HS256 secret for bearer tokens, at least 32 bytes.
    #[arg(long = "jwt-secret", env = "TALLY_JWT_SECRET", hide_env_values = true, value_parser = parse_secret)]
    pub jwt_secret: Secret,
}

#[derive(Debug, Args)]
pub struct TokenArgs {
    /// The user the token acts as (claim `sub`).
    #[arg(long)]
    pub sub: String,
    /// `user` acts only for `sub`; `service` acts for anyone.
    #[arg(long, value_enum, default_value_t = RoleArg::User)]
    pub role: RoleArg,
    /// Lifetime in seconds.
    #[arg(long, default_value_t = 3600)]
    pub ttl_seconds: u64,
    #[command(flatten)]
    pub secret: SecretArgs,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum RoleArg {
    User,
    Service,
}

/// The signing secret; never printed.
#[derive(Clone)]
pub struct Secret(pub Vec<u8>);

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Secret(..)")
    }
}

pub const MIN_SECRET_BYTES: usize = 32;

pub fn parse_secret(value: &str) -> Result<Secret, String> {
    if value.len() < MIN_SECRET_BYTES {
        return Err(format!(
            "TALLY_JWT_SECRET must be at least {MIN_SECRET_BYTES} bytes (got {}); generate one with `openssl rand -hex 32`",
            value.len()
        ));
    }
    Ok(Secret(value.as_bytes().to_vec()))
}
