//! Switchboard: one WebSocket channel from a company's backend to its
//! browsers and apps.
//!
//! This crate is the framework. It owns connections, tokens, subscriptions,
//! fan-out, backpressure and the broker, and calls business logic through the
//! [`BusinessHandler`] trait, one handler per `businessType`. A binary links
//! the handler crates it wants and runs a [`Server`]:
//!
//! ```no_run
//! use switchboard::{Config, HandlerRegistry, Server};
//!
//! # async fn run() -> Result<(), Box<dyn std::error::Error>> {
//! let config = Config::load(None)?;
//! let registry = HandlerRegistry::from_linked()?;
//! let server = Server::bind(config, registry).await?;
//! server.serve(async { let _ = tokio::signal::ctrl_c().await; }).await;
//! # Ok(())
//! # }
//! ```
//!
//! Modules, in the order a message meets them: [`routes`](crate::Server)
//! (HTTP and the upgrade), [`session`] (one connection), [`node`] (the
//! protocol's rules), [`handler`] (business logic), [`hub`] (local fan-out),
//! [`broker`] (everything that crosses nodes). Around them, for security and
//! operations: [`authenticators`] and [`origin`] decide who may call and
//! connect, [`replay`] keeps tokens single-use, [`limits`] bounds what one
//! client, user or node may take, and [`metrics`] and [`presence`] answer
//! operators (`docs/operations.md`).
#![warn(missing_docs)]

pub mod auth;
pub mod authenticators;
pub mod broker;
pub mod config;
mod drain;
pub mod handler;
pub mod hub;
pub mod limits;
pub mod metrics;
pub mod node;
pub mod origin;
pub mod presence;
pub mod registry;
pub mod replay;
mod routes;
mod server;
pub mod session;
pub mod token;
mod upgrade;

/// The unified envelope; lives in `switchboard-protocol`, shared with services.
pub use switchboard_protocol::envelope;

pub use async_trait::async_trait;
pub use authenticators::AuthenticatorDescriptor;
pub use config::Config;
pub use envelope::{Envelope, ErrorCode, MessageType, Refusal, SendType};
pub use handler::{BusinessHandler, ClientInfo, Context, HandlerError};
pub use registry::{HandlerDescriptor, HandlerRegistry, RegistryError};
pub use server::{Server, ServerHandle, StartError};

/// Re-exports for the macros; not part of the public API.
#[doc(hidden)]
pub mod __private {
    pub use inventory;
}

// Shared types cross tasks: fail the build, not a user's, if one stops being
// thread-safe.
const _: () = {
    const fn thread_safe<T: Send + Sync>() {}
    thread_safe::<Envelope>();
    thread_safe::<node::Node>();
    thread_safe::<HandlerRegistry>();
    thread_safe::<broker::Delivery>();
    thread_safe::<metrics::Metrics>();
    thread_safe::<limits::Admission>();
};
