//! The WebSocket upgrade, done here instead of by `warp::ws()`.
//!
//! warp's filter builds every socket with tungstenite's default read buffer
//! of 128 KiB, which tungstenite allocates up front and zero-fills on the
//! first read, and warp has no setting for it: 128 KiB of resident memory per
//! connection, idle or not. This module checks the same request headers as
//! warp's filter, answers `101 Switching Protocols`, and builds the socket
//! itself with a [`READ_BUFFER_BYTES`] read buffer. A larger frame still
//! arrives whole: tungstenite reserves room for a frame once it has read the
//! frame's header, up to `ws.max_message_bytes`.

use std::future::Future;

use hyper::upgrade::OnUpgrade;
use hyper_util::rt::TokioIo;
use tokio_tungstenite::WebSocketStream;
use tokio_util::task::TaskTracker;
use tungstenite::handshake::derive_accept_key;
use tungstenite::protocol::{Role, WebSocketConfig};
use warp::http::{HeaderMap, HeaderValue, StatusCode, header};
use warp::reply::Response;
use warp::{Filter, Rejection};

/// A client's socket once upgraded.
pub(crate) type WebSocket = WebSocketStream<TokioIo<hyper::upgrade::Upgraded>>;

/// Initial read buffer of a socket, in bytes, and the most one `read` call
/// takes from the kernel. Client frames are small envelopes (a heartbeat, an
/// ACK, a request: a few hundred bytes), so 2 KiB holds several; a larger
/// frame gets room for its whole length once its header is read.
pub(crate) const READ_BUFFER_BYTES: usize = 2 * 1024;

/// The request is not a WebSocket upgrade this server can accept. Answered
/// with 400 like any malformed request.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub(crate) enum NotAnUpgrade {
    /// `Connection` does not list `upgrade`.
    #[error("connection header does not ask for an upgrade")]
    Connection,
    /// `Upgrade` is not `websocket`.
    #[error("upgrade header is not websocket")]
    Protocol,
    /// `Sec-WebSocket-Version` is not 13.
    #[error("unsupported websocket version")]
    Version,
    /// `Sec-WebSocket-Key` is missing.
    #[error("missing websocket key")]
    Key,
    /// The connection cannot be taken over (HTTP/2, or a test request).
    #[error("connection cannot be upgraded")]
    Unavailable,
}

impl warp::reject::Reject for NotAnUpgrade {}

/// A WebSocket upgrade request that passed the header checks; see
/// [`websocket`].
pub(crate) struct Upgrade {
    accept: HeaderValue,
    on_upgrade: OnUpgrade,
    config: WebSocketConfig,
}

/// Accepts a `GET` that asks for a WebSocket (RFC 6455, 4.2.1: `Connection:
/// upgrade`, `Upgrade: websocket`, `Sec-WebSocket-Version: 13` and a
/// `Sec-WebSocket-Key`); anything else is rejected with [`NotAnUpgrade`].
pub(crate) fn websocket() -> impl Filter<Extract = (Upgrade,), Error = Rejection> + Clone {
    warp::get()
        .and(warp::header::headers_cloned())
        .and(warp::ext::optional::<OnUpgrade>())
        .and_then(
            |headers: HeaderMap, on_upgrade: Option<OnUpgrade>| async move {
                let accept = accept_key(&headers)?;
                let on_upgrade = on_upgrade.ok_or(NotAnUpgrade::Unavailable)?;
                let config = WebSocketConfig::default().read_buffer_size(READ_BUFFER_BYTES);
                Ok::<_, Rejection>(Upgrade {
                    accept,
                    on_upgrade,
                    config,
                })
            },
        )
}

/// The `Sec-WebSocket-Accept` value for a request, once its headers are
/// checked.
fn accept_key(headers: &HeaderMap) -> Result<HeaderValue, NotAnUpgrade> {
    let lists = |name: header::HeaderName, token: &str| {
        headers.get_all(name).iter().any(|value| {
            value.to_str().is_ok_and(|v| {
                v.split(',')
                    .any(|item| item.trim().eq_ignore_ascii_case(token))
            })
        })
    };
    if !lists(header::CONNECTION, "upgrade") {
        return Err(NotAnUpgrade::Connection);
    }
    let upgrade = headers.get(header::UPGRADE).map(HeaderValue::as_bytes);
    if !upgrade.is_some_and(|u| u.eq_ignore_ascii_case(b"websocket")) {
        return Err(NotAnUpgrade::Protocol);
    }
    if headers.get(header::SEC_WEBSOCKET_VERSION) != Some(&HeaderValue::from_static("13")) {
        return Err(NotAnUpgrade::Version);
    }
    let key = headers
        .get(header::SEC_WEBSOCKET_KEY)
        .ok_or(NotAnUpgrade::Key)?;

    // The accept key is base64, so always a valid header value.
    HeaderValue::from_str(&derive_accept_key(key.as_bytes())).map_err(|_| NotAnUpgrade::Key)
}

impl Upgrade {
    /// Largest message and frame a client may send, in bytes; a larger one
    /// is a read error that the session closes with 1009.
    pub(crate) fn max_message_size(mut self, limit: usize) -> Self {
        self.config = self
            .config
            .max_message_size(Some(limit))
            .max_frame_size(Some(limit));
        self
    }

    /// Answers `101 Switching Protocols` and runs `session` on the socket
    /// once hyper hands the connection over, in a task of `tasks` (so a
    /// drain waits for it from this moment, not only once the session runs).
    pub(crate) fn on_upgrade<F, Fut>(self, tasks: &TaskTracker, session: F) -> Response
    where
        F: FnOnce(WebSocket) -> Fut + Send + 'static,
        Fut: Future<Output = ()> + Send + 'static,
    {
        let Upgrade {
            accept,
            on_upgrade,
            config,
        } = self;
        tasks.spawn(async move {
            match on_upgrade.await {
                Ok(upgraded) => {
                    let io = TokioIo::new(upgraded);
                    let socket =
                        WebSocketStream::from_raw_socket(io, Role::Server, Some(config)).await;
                    session(socket).await;
                }
                // The client went away between the 101 and the switch.
                Err(err) => tracing::debug!(
                    target: "switchboard::ws",
                    error = %err,
                    "upgrade not completed"
                ),
            }
        });

        let mut response = Response::default();
        *response.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
        let headers = response.headers_mut();
        headers.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
        headers.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
        headers.insert(header::SEC_WEBSOCKET_ACCEPT, accept);
        response
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(pairs: &[(&'static str, &'static str)]) -> HeaderMap {
        let mut headers = HeaderMap::new();
        for (name, value) in pairs {
            headers.append(*name, HeaderValue::from_static(value));
        }
        headers
    }

    const GOOD: [(&str, &str); 4] = [
        ("connection", "keep-alive, Upgrade"),
        ("upgrade", "WebSocket"),
        ("sec-websocket-version", "13"),
        ("sec-websocket-key", "dGhlIHNhbXBsZSBub25jZQ=="),
    ];

    /// A valid request gets the accept key of RFC 6455's worked example.
    #[test]
    fn valid_request_gets_the_rfc_accept_key() {
        let accept = accept_key(&request(&GOOD)).unwrap();
        assert_eq!(accept, "s3pPLMBiTxaQ9kYGzzhZRbK+xOo=");
    }

    /// Each missing or wrong header is refused with its own reason.
    #[test]
    fn each_header_is_checked() {
        let without = |name: &str| {
            let pairs: Vec<_> = GOOD.iter().copied().filter(|(n, _)| *n != name).collect();
            accept_key(&request(&pairs))
        };
        assert_eq!(without("connection"), Err(NotAnUpgrade::Connection));
        assert_eq!(without("upgrade"), Err(NotAnUpgrade::Protocol));
        assert_eq!(without("sec-websocket-version"), Err(NotAnUpgrade::Version));
        assert_eq!(without("sec-websocket-key"), Err(NotAnUpgrade::Key));

        let mut old = request(&GOOD);
        old.insert("sec-websocket-version", HeaderValue::from_static("8"));
        assert_eq!(accept_key(&old), Err(NotAnUpgrade::Version));
        let mut other = request(&GOOD);
        other.insert("upgrade", HeaderValue::from_static("h2c"));
        assert_eq!(accept_key(&other), Err(NotAnUpgrade::Protocol));
        let mut close = request(&GOOD);
        close.insert("connection", HeaderValue::from_static("close"));
        assert_eq!(accept_key(&close), Err(NotAnUpgrade::Connection));
    }
}
