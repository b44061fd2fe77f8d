//! Building and running a node: bind, serve, drain.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::broker::amqp::AmqpBroker;
use crate::broker::embedded::EmbeddedBroker;
use crate::broker::{Broker, BrokerError};
use crate::config::{Config, ConfigError};
use crate::metrics::{BrokerMetrics, Metrics};
use crate::node::Node;
use crate::registry::HandlerRegistry;
use crate::routes;
use crate::token::TokenSigner;

/// Why a node could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// The listen address could not be bound.
    #[error("cannot listen on {addr}")]
    Bind {
        /// The address from `server.bind`.
        addr: SocketAddr,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// The broker could not be reached or set up.
    #[error(transparent)]
    Broker(#[from] BrokerError),
    /// The configuration is not valid; the message names the key.
    #[error("bad configuration: {0}")]
    Config(#[from] ConfigError),
}

/// A node that is bound and ready to serve.
pub struct Server {
    node: Arc<Node>,
    listener: TcpListener,
    local_addr: SocketAddr,
}

impl Server {
    /// Builds a node from `config` and `registry`: connects the broker,
    /// declares its topology, and binds the listener. Nothing is served until
    /// [`Server::serve`].
    ///
    /// # Errors
    ///
    /// [`StartError`] when the configuration is invalid or the broker or
    /// the listener cannot be set up.
    pub async fn bind(config: Config, registry: HandlerRegistry) -> Result<Server, StartError> {
        // A configuration built in code has not been through `Config::load`.
        config.validate()?;
        let node_id = config.node.id.clone().unwrap_or_else(|| {
            let suffix = uuid::Uuid::new_v4().simple().to_string();
            format!("node-{}", &suffix[..8])
        });
        let signer = match &config.auth.secret {
            Some(secret) => TokenSigner::new(secret.as_bytes()),
            None => {
                tracing::warn!(
                    target: "switchboard::server",
                    "auth.secret is unset: tokens are signed with a random key that only this \
                     process knows; set it for more than one node"
                );
                TokenSigner::random()
            }
        };
        let authenticator = crate::authenticators::build(&config)?;
        tracing::info!(
            target: "switchboard::server",
            authenticator = %config.auth.authenticator,
            "authenticator selected"
        );
        if authenticator.is_open() {
            tracing::warn!(
                target: "switchboard::server",
                "auth.api_keys is empty: anyone who can reach this port may issue tokens and \
                 publish events"
            );
        }
        let metrics = Arc::new(Metrics::new(&registry.business_types()));
        let broker = make_broker(&config, &node_id, metrics.broker()).await?;

        let addr = config.server.bind;
        let listener = TcpListener::bind(addr)
            .await
            .map_err(|source| StartError::Bind { addr, source })?;
        let local_addr = listener
            .local_addr()
            .map_err(|source| StartError::Bind { addr, source })?;

        let node = Node::new(
            config,
            node_id,
            registry,
            broker.clone(),
            signer,
            authenticator,
            metrics,
        );
        broker.start(node.clone()).await?;
        Ok(Server {
            node,
            listener,
            local_addr,
        })
    }

    /// The address actually bound (useful with port 0).
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// The node this server runs.
    pub fn node(&self) -> &Arc<Node> {
        &self.node
    }

    /// Serves until `shutdown` resolves, then drains: stops accepting, closes
    /// every session with 1001, lets the broker finish or hand back in-flight
    /// work, all within `server.shutdown_grace_secs`.
    pub async fn serve(self, shutdown: impl Future<Output = ()> + Send + 'static) {
        let Server { node, listener, .. } = self;
        let routes = routes::routes(node.clone());
        let grace = Duration::from_secs(node.config().server.shutdown_grace_secs);
        let drain_started = Arc::new(std::sync::OnceLock::new());
        let drain = {
            let node = node.clone();
            let drain_started = drain_started.clone();
            async move {
                shutdown.await;
                let _ = drain_started.set(tokio::time::Instant::now());
                tracing::info!(target: "switchboard::server", "draining");
                node.begin_drain();
            }
        };
        let request_timeout = Duration::from_secs(node.config().server.request_timeout_secs);
        let mut http = tokio::spawn(serve_http(listener, routes, request_timeout, drain));

        // Serve until the drain begins (or the HTTP server ends by itself).
        let mut http_done = tokio::select! {
            () = node.shutdown_token().cancelled() => false,
            _ = &mut http => true,
        };
        let started = drain_started
            .get()
            .copied()
            .unwrap_or_else(tokio::time::Instant::now);
        let deadline = started + grace;

        // Sessions close themselves on the drain signal (warp does not track
        // upgraded sockets); then the broker finishes or hands back its
        // in-flight work. Meanwhile the HTTP server, which stopped accepting,
        // lets open requests finish; a client that stalls mid-request does
        // not hold up the sessions or the broker.
        if tokio::time::timeout_at(deadline, node.session_tasks().wait())
            .await
            .is_err()
        {
            tracing::warn!(
                target: "switchboard::server",
                sessions = node.hub().session_count(),
                "sessions still open at the end of the grace period"
            );
        }
        if tokio::time::timeout_at(deadline, node.broker().shutdown())
            .await
            .is_err()
        {
            tracing::warn!(
                target: "switchboard::server",
                "broker work still in flight at the end of the grace period"
            );
        }
        if !http_done {
            http_done = tokio::time::timeout_at(deadline, &mut http).await.is_ok();
        }
        if !http_done {
            tracing::warn!(
                target: "switchboard::server",
                "HTTP connections still open at the end of the grace period; closing them"
            );
            http.abort();
        }
        tracing::info!(target: "switchboard::server", "stopped");
    }

    /// Serves in a background task; for tests and embedding. The returned
    /// handle stops it.
    pub fn spawn(self) -> ServerHandle {
        let stop = CancellationToken::new();
        let addr = self.local_addr;
        let node = self.node.clone();
        let signal = stop.clone().cancelled_owned();
        let task = tokio::spawn(self.serve(signal));
        ServerHandle {
            addr,
            node,
            stop,
            task,
        }
    }
}

/// A server running in the background.
pub struct ServerHandle {
    addr: SocketAddr,
    node: Arc<Node>,
    stop: CancellationToken,
    task: tokio::task::JoinHandle<()>,
}

impl ServerHandle {
    /// The bound address.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The node.
    pub fn node(&self) -> &Arc<Node> {
        &self.node
    }

    /// Starts the drain without waiting for it.
    pub fn begin_shutdown(&self) {
        self.stop.cancel();
    }

    /// Drains and waits until the server has stopped.
    pub async fn shutdown(self) {
        self.stop.cancel();
        let _ = self.task.await;
    }
}

async fn make_broker(
    config: &Config,
    node_id: &str,
    metrics: BrokerMetrics,
) -> Result<Arc<dyn Broker>, BrokerError> {
    let timeout = Duration::from_secs(config.broker.publish_timeout_secs);
    match &config.broker.url {
        None => Ok(Arc::new(
            EmbeddedBroker::new(config.broker.max_retries, timeout, &config.reliable)
                .with_metrics(metrics),
        )),
        Some(_) => Ok(Arc::new(
            AmqpBroker::new(config, node_id)?.with_metrics(metrics),
        )),
    }
}

/// Pause after a failed `accept` (for example, out of file descriptors)
/// before trying again, so the loop does not spin.
const ACCEPT_PAUSE: Duration = Duration::from_millis(100);

/// Serves HTTP/1.1 (with upgrades) on `listener` until `drain` resolves,
/// then stops accepting and waits for the open connections to finish.
///
/// This is what `warp::serve` does, plus what it has no setting for: a
/// limit on how long a client may take to send a request's headers (hyper
/// enforces it once it has a timer) and, by [`timed`], on how long a
/// request may take to be read and answered.
async fn serve_http<F, R>(
    listener: TcpListener,
    routes: F,
    request_timeout: Duration,
    drain: impl Future<Output = ()>,
) where
    F: warp::Filter<Extract = (R,), Error = std::convert::Infallible>
        + Clone
        + Send
        + Sync
        + 'static,
    R: warp::Reply,
{
    use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
    use hyper_util::server::conn::auto;

    let graceful = hyper_util::server::graceful::GracefulShutdown::new();
    // Cancelled when the drain begins, so connections still waiting for
    // their first byte close at once instead of holding up the shutdown.
    let closing = CancellationToken::new();
    let mut drain = std::pin::pin!(drain);
    loop {
        let stream = tokio::select! {
            () = &mut drain => break,
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => stream,
                Err(error) => {
                    tracing::warn!(target: "switchboard::server", error = %error, "accept failed");
                    tokio::time::sleep(ACCEPT_PAUSE).await;
                    continue;
                }
            },
        };
        let mut builder = auto::Builder::new(TokioExecutor::new());
        builder
            .http1()
            .timer(TokioTimer::new())
            .header_read_timeout(request_timeout);
        let routes = routes.clone();
        let watcher = graceful.watcher();
        let closing = closing.clone();
        tokio::spawn(async move {
            // hyper's header timeout starts at the first byte of a request;
            // a connection that sends nothing at all gets the same time to
            // send its first byte (peeked, so hyper still reads it).
            let mut first = [0u8; 1];
            let started = tokio::select! {
                peeked = tokio::time::timeout(request_timeout, stream.peek(&mut first)) => {
                    matches!(peeked, Ok(Ok(1)))
                }
                () = closing.cancelled() => false,
            };
            if !started {
                tracing::debug!(target: "switchboard::server", "connection sent nothing; closed");
                return;
            }
            let routes = hyper_util::service::TowerToHyperService::new(warp::service(routes));
            let service = hyper::service::service_fn(move |request| {
                let answer = hyper::service::Service::call(&routes, request);
                timed(answer, request_timeout)
            });
            let connection = builder
                .serve_connection_with_upgrades(TokioIo::new(stream), service)
                .into_owned();
            // A client that went away or was too slow ends its connection
            // here; that is its business, not an error of the node.
            if let Err(error) = watcher.watch(connection).await {
                tracing::debug!(target: "switchboard::server", error = %error, "HTTP connection ended");
            }
        });
    }
    drop(listener);
    closing.cancel();
    graceful.shutdown().await;
}

/// A request whose body and handling take longer than `limit` is answered
/// 408 and its connection closed, so a client that sends complete headers
/// and then trickles or withholds the body cannot hold a connection. A
/// WebSocket upgrade completes at once (the session runs apart from it).
async fn timed<F>(
    answer: F,
    limit: Duration,
) -> Result<warp::reply::Response, std::convert::Infallible>
where
    F: Future<Output = Result<warp::reply::Response, std::convert::Infallible>>,
{
    use warp::Reply;
    match tokio::time::timeout(limit, answer).await {
        Ok(answer) => answer,
        Err(_) => {
            tracing::debug!(target: "switchboard::server", "request not complete in time; 408");
            let mut response = warp::reply::with_status(
                "request not complete in time\n",
                warp::http::StatusCode::REQUEST_TIMEOUT,
            )
            .into_response();
            response.headers_mut().insert(
                warp::http::header::CONNECTION,
                warp::http::HeaderValue::from_static("close"),
            );
            Ok(response)
        }
    }
}
