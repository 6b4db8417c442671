use tally_api::config::{Cli, Command, RoleArg, ServeArgs};
use tally_api::{app, pool, AppConfig, AppState, Keys, Role};
use tracing_subscriber::EnvFilter;

#[tokio::main]
async fn main() {
    let cli = Cli::parse_with_default();
    match cli.command {
        Command::Token(args) => {
            let role = match args.role {
                RoleArg::User => Role::User,
                RoleArg::Service => Role::Service,
            };
            println!(
                "{}",
                Keys::new(&args.secret.jwt_secret.0).mint(&args.sub, role, args.ttl_seconds)
            );
        }
        Command::Openapi => println!(
            "{}",
            serde_json::to_string_pretty(tally_api::openapi::document())
                .expect("the document serializes")
        ),
        Command::Serve(args) => serve(*args).await,
    }
}

async fn serve(args: ServeArgs) {
    tracing_subscriber::fmt()
        .with_env_filter(
            EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| EnvFilter::new("info,tower_http=info")),
        )
        .init();
    let request_timeout = std::time::Duration::from_millis(args.request_timeout_ms);
    let pool =
        pool(&args.database_url, args.pool_size, request_timeout).unwrap_or_else(|e| fail(&e));
    let keys = args
        .identity_provider
        .keys(&args.secret.jwt_secret.0)
        .await
        .unwrap_or_else(|e| fail(&e));
    let state = AppState {
        pool,
        keys,
        config: AppConfig {
            request_timeout,
            cors_origins: args.cors_origins,
            max_backdate: args.max_backdate,
        },
    };
    let listener = tokio::net::TcpListener::bind(args.bind)
        .await
        .unwrap_or_else(|e| fail(&format!("cannot listen on {} (TALLY_BIND): {e}", args.bind)));
    tokio::spawn(tally_api::health::metrics_upkeep());
    tracing::info!(address = %args.bind, "tally-api listening");
    axum::serve(listener, app(state))
        .with_graceful_shutdown(shutdown_signal())
        .await
        .unwrap_or_else(|e| fail(&format!("server error: {e}")));
    tracing::info!("tally-api stopped");
}

fn fail(message: &str) -> ! {
    eprintln!("tally-api: {message}");
    std::process::exit(2)
}

/// Resolves on SIGINT or SIGTERM; in-flight requests then finish before exit.
async fn shutdown_signal() {
    let interrupt = async {
        tokio::signal::ctrl_c()
            .await
            .expect("install the SIGINT handler");
    };
    let terminate = async {
        tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
            .expect("install the SIGTERM handler")
            .recv()
            .await;
    };
    tokio::select! {
        _ = interrupt => {},
        _ = terminate => {},
    }
    tracing::info!("shutting down");
}
