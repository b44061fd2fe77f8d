//! The `switchboard` binary: load config, build the server with the linked
//! handlers, serve until SIGTERM or SIGINT, drain, exit 0.
//!
//! ```text
//! switchboard [--config FILE]
//! ```
//!
//! Which handlers are linked is chosen with Cargo features (all four by
//! default); see `handlers.rs`.

mod handlers;

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context as _;
use switchboard::config::{Config, LogFormat};
use switchboard::{HandlerRegistry, Server};

const USAGE: &str = "usage: switchboard [--config FILE]

Runs the Switchboard WebSocket gateway. Without --config it reads
switchboard.toml in the working directory if present, else the defaults.
SWITCHBOARD_* environment variables override the file (for example
SWITCHBOARD_SERVER__BIND=127.0.0.1:9000).";

fn main() -> ExitCode {
    let config_path = match parse_args(std::env::args().skip(1)) {
        Ok(Some(path)) => path,
        Ok(None) => {
            println!("{USAGE}");
            return ExitCode::SUCCESS;
        }
        Err(message) => {
            eprintln!("switchboard: {message}\n\n{USAGE}");
            return ExitCode::from(2);
        }
    };

    // Config comes before logging, so its errors go plainly to stderr.
    let config = match Config::load(config_path.as_deref()) {
        Ok(config) => config,
        Err(err) => {
            eprintln!("switchboard: bad configuration: {err}");
            return ExitCode::from(2);
        }
    };
    init_tracing(&config);

    let runtime = match tokio::runtime::Runtime::new() {
        Ok(runtime) => runtime,
        Err(err) => {
            eprintln!("switchboard: cannot start the runtime: {err}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(config)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            tracing::error!(error = format!("{err:#}"), "switchboard failed to start");
            eprintln!("switchboard: {err:#}");
            ExitCode::FAILURE
        }
    }
}

async fn run(config: Config) -> anyhow::Result<()> {
    handlers::link();

    // Install the signal handlers before anything can be said to be
    // listening, so a SIGTERM right after start-up still drains.
    let shutdown = shutdown_signal().context("installing signal handlers")?;

    let registry = HandlerRegistry::from_linked().context("handler registration")?;
    let broker = if config.broker.url.is_some() {
        "rabbitmq"
    } else {
        "embedded"
    };

    let server = Server::bind(config, registry.clone())
        .await
        .context("start-up")?;
    tracing::info!(
        addr = %server.local_addr(),
        node_id = server.node().node_id(),
        broker,
        "listening"
    );
    for handler in registry.descriptors() {
        tracing::info!(
            business_type = handler.business_type,
            crate_name = handler.crate_name,
            description = handler.description,
            "handler registered"
        );
    }
    if registry.is_empty() {
        tracing::warn!("no handlers are linked: every business type will be refused");
    }

    server.serve(shutdown).await;
    Ok(())
}

/// Installs SIGTERM and SIGINT handlers; the future resolves on either.
fn shutdown_signal() -> std::io::Result<impl Future<Output = ()> + Send + 'static> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    Ok(async move {
        tokio::select! {
            _ = term.recv() => tracing::info!(signal = "SIGTERM", "shutdown requested"),
            _ = int.recv() => tracing::info!(signal = "SIGINT", "shutdown requested"),
        }
    })
}

/// `Ok(Some(path))` to run, `Ok(None)` for `--help`.
fn parse_args(mut args: impl Iterator<Item = String>) -> Result<Option<Option<PathBuf>>, String> {
    let mut config = None;
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "-h" | "--help" => return Ok(None),
            "-c" | "--config" => {
                let path = args.next().ok_or("--config needs a file")?;
                config = Some(PathBuf::from(path));
            }
            other => {
                if let Some(path) = other.strip_prefix("--config=") {
                    config = Some(PathBuf::from(path));
                } else {
                    return Err(format!("unknown argument {other}"));
                }
            }
        }
    }
    Ok(Some(config))
}

fn init_tracing(config: &Config) {
    use tracing_subscriber::EnvFilter;
    let filter = EnvFilter::try_from_default_env()
        .or_else(|_| EnvFilter::try_new(&config.log.filter))
        .unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match config.log.format {
        LogFormat::Json => builder.json().init(),
        LogFormat::Text => builder.init(),
    }
}
