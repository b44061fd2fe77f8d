//! A gateway serving `order_status` beside the four shipped handlers.
//!
//! ```text
//! cargo run -p switchboard-example-custom-handler
//! ```
//!
//! It reads its configuration as the `switchboard` binary does
//! (`switchboard.toml` in the working directory if present, then
//! `SWITCHBOARD_*` variables), so it listens on 127.0.0.1:8086 unless told
//! otherwise; `SWITCHBOARD_SERVER__BIND=127.0.0.1:8087` runs it beside the
//! main server. Stop it with Ctrl-C.

use std::error::Error;
use std::process::ExitCode;

use switchboard::{Config, HandlerRegistry, Server};
use tracing_subscriber::EnvFilter;

// Name every handler crate this binary serves. A crate that is only a
// dependency is not linked, and its `register_handler!` silently vanishes;
// that holds for this package's own library too.
use switchboard_example_custom_handler as _;
use switchboard_notice as _;
use switchboard_page_update as _;
use switchboard_payment_callback as _;
use switchboard_qr_refresh as _;

#[tokio::main]
async fn main() -> ExitCode {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .init();

    match run().await {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("order-status-server: {err}");
            ExitCode::FAILURE
        }
    }
}

async fn run() -> Result<(), Box<dyn Error>> {
    let config = Config::load(None)?;
    let registry = HandlerRegistry::from_linked()?;
    let server = Server::bind(config, registry.clone()).await?;
    tracing::info!(
        addr = %server.local_addr(),
        business_types = ?registry.business_types(),
        "listening"
    );

    server
        .serve(async {
            let _ = tokio::signal::ctrl_c().await;
        })
        .await;
    Ok(())
}
