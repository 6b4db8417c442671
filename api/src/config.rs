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
                "serve" | "token" | "openapi" | "help" | "-h" | "--help" | "-V" | "--version"
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
    Serve(Box<ServeArgs>),
    /// Print a signed token for local use.
    Token(TokenArgs),
    /// Print the OpenAPI 3 document (what GET /openapi.json serves), for client generators.
    Openapi,
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
    #[command(flatten)]
    pub identity_provider: IdentityProviderArgs,
}

/// Tokens from the app's identity provider (RS256, ES256, EdDSA), besides HS256.
#[derive(Debug, Clone, Args)]
pub struct IdentityProviderArgs {
    /// The provider's public key: PEM text, or the path of a PEM file.
    #[arg(long = "jwt-public-key", env = "TALLY_JWT_PUBLIC_KEY")]
    pub public_key: Option<String>,
    /// The provider's JWKS document: an https:// or http:// URL, a file:// URL or a path.
    /// Fetched at start, and again when a token names an unknown key id.
    #[arg(long = "jwks-url", env = "TALLY_JWKS_URL")]
    pub jwks_url: Option<String>,
    /// Required `iss` of every token, when set.
    #[arg(long = "jwt-issuer", env = "TALLY_JWT_ISSUER")]
    pub issuer: Option<String>,
    /// Required `aud` of every token, when set.
    #[arg(long = "jwt-audience", env = "TALLY_JWT_AUDIENCE")]
    pub audience: Option<String>,
    /// The claim that holds the user id (e.g. a provider's namespaced custom claim).
    #[arg(
        long = "jwt-user-claim",
        env = "TALLY_JWT_USER_CLAIM",
        default_value = "sub"
    )]
    pub user_claim: String,
    /// The claim that holds the role: `service` (or an array containing it) for a
    /// service token, anything else for a user token.
    #[arg(
        long = "jwt-role-claim",
        env = "TALLY_JWT_ROLE_CLAIM",
        default_value = "role"
    )]
    pub role_claim: String,
}

impl IdentityProviderArgs {
    /// The keys and rules tokens are verified with, besides HS256 with `secret`.
    pub async fn keys(&self, secret: &[u8]) -> Result<crate::Keys, String> {
        let mut keys = crate::Keys::new(secret).with_rules(crate::auth::TokenRules {
            issuer: self.issuer.clone(),
            audience: self.audience.clone(),
            user_claim: self.user_claim.clone(),
            role_claim: self.role_claim.clone(),
        });
        if let Some(value) = &self.public_key {
            let pem = if value.trim_start().starts_with("-----BEGIN") {
                value.as_bytes().to_vec()
            } else {
                std::fs::read(value)
                    .map_err(|e| format!("cannot read TALLY_JWT_PUBLIC_KEY file {value}: {e}"))?
            };
            keys = keys.with_public_key(&pem)?;
        }
        if let Some(location) = &self.jwks_url {
            keys =
                keys.with_jwks(crate::jwks::Jwks::load(location, crate::jwks::MIN_REFRESH).await?);
        }
        Ok(keys)
    }
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
