//! One WebSocket session, from `CONNECTED` to its close.
//!
//! Each session is one task that waits on five things at once: the client's
//! next frame, the session's outbound queue, the ping timer, the idle
//! deadline, and a request to end (from the hub when the queue overflows, or
//! from the node when it drains). Frames from the client are handled in
//! order, one at a time; a client that floods is slowed by TCP, not buffered.
//!
//! Every way a session can end is a [`SessionEnd`], and [`SessionEnd::close`]
//! is the one place that picks its close code and log level.

use std::future::Future;
use std::sync::Arc;
use std::task::Poll;
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use tokio::sync::mpsc;
use tokio::time::{Instant, MissedTickBehavior};
use tokio_util::sync::CancellationToken;
use tungstenite::Message;
use tungstenite::protocol::CloseFrame;
use tungstenite::protocol::frame::coding::CloseCode;

use crate::envelope::{Envelope, ErrorCode, MessageType, Refusal, salvage_message_id};
use crate::handler::ClientInfo;
use crate::hub::{Outbound, SessionHandle};
use crate::limits::{SessionLimiter, Verdict};
use crate::metrics::Metrics;
use crate::node::Node;
use crate::token::Claims;
use crate::upgrade::WebSocket;

/// How long one write to a client may take before the client counts as not
/// reading. Fan-out never waits this long (it only queues); this bounds the
/// session's own task.
const WRITE_TIMEOUT: Duration = Duration::from_secs(10);

/// Queued frames written with one flush.
const WRITE_BATCH: usize = 64;

/// Close codes this service sends. 1000-1015 are the standard's; 4000-4999
/// are ours.
pub mod close_code {
    /// The client closed, or a handler ended the session.
    pub const NORMAL: u16 = 1000;
    /// The node is shutting down; reconnect (to another node).
    pub const GOING_AWAY: u16 = 1001;
    /// The client broke the WebSocket protocol (an unmasked or malformed
    /// frame).
    pub const PROTOCOL_ERROR: u16 = 1002;
    /// A text frame held bytes that are not UTF-8.
    pub const INVALID_PAYLOAD: u16 = 1007;
    /// The client kept sending past its rate limits (`limits.*`).
    pub const POLICY_VIOLATION: u16 = 1008;
    /// A frame was larger than `ws.max_message_bytes`.
    pub const MESSAGE_TOO_BIG: u16 = 1009;
    /// An unexpected server error.
    pub const INTERNAL_ERROR: u16 = 1011;
    /// Nothing received (not even a pong) within `ws.idle_timeout_secs`.
    pub const IDLE_TIMEOUT: u16 = 4000;
    /// The client did not read: its send queue filled or a write stalled.
    pub const SLOW_CLIENT: u16 = 4001;
}

/// Every way a session ends.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SessionEnd {
    /// The client sent a close frame or closed the connection.
    ClientClosed,
    /// The client sent nothing within the idle timeout.
    IdleTimeout,
    /// The client sent a frame over the size limit.
    MessageTooBig,
    /// The client sent a text frame that is not UTF-8. The WebSocket layer
    /// cannot read on after it, so unlike invalid JSON it ends the session.
    InvalidUtf8,
    /// The client broke the WebSocket framing rules.
    ProtocolViolation,
    /// The node is draining.
    Shutdown,
    /// The client did not read fast enough.
    SlowClient,
    /// The client went on sending while rate-limited.
    RateLimited,
    /// The connection failed (reset, protocol violation).
    Transport(String),
    /// Ended by the server for another reason.
    Kicked,
}

impl SessionEnd {
    /// The close code and reason to send, if a close frame can still be sent.
    pub fn close(&self) -> Option<(u16, &'static str)> {
        match self {
            SessionEnd::ClientClosed => None,
            SessionEnd::IdleTimeout => Some((close_code::IDLE_TIMEOUT, "idle timeout")),
            SessionEnd::MessageTooBig => Some((close_code::MESSAGE_TOO_BIG, "frame too large")),
            SessionEnd::InvalidUtf8 => Some((close_code::INVALID_PAYLOAD, "text frame not UTF-8")),
            SessionEnd::ProtocolViolation => {
                Some((close_code::PROTOCOL_ERROR, "WebSocket protocol error"))
            }
            SessionEnd::Shutdown => Some((close_code::GOING_AWAY, "server shutting down")),
            SessionEnd::SlowClient => Some((close_code::SLOW_CLIENT, "client not reading")),
            SessionEnd::RateLimited => Some((close_code::POLICY_VIOLATION, "rate limit exceeded")),
            SessionEnd::Transport(_) => None,
            SessionEnd::Kicked => Some((close_code::NORMAL, "closed by server")),
        }
    }

    fn label(&self) -> &'static str {
        match self {
            SessionEnd::ClientClosed => "client_closed",
            SessionEnd::IdleTimeout => "idle_timeout",
            SessionEnd::MessageTooBig => "message_too_big",
            SessionEnd::InvalidUtf8 => "invalid_utf8",
            SessionEnd::ProtocolViolation => "protocol_violation",
            SessionEnd::Shutdown => "shutdown",
            SessionEnd::SlowClient => "slow_client",
            SessionEnd::RateLimited => "rate_limited",
            SessionEnd::Transport(_) => "transport_error",
            SessionEnd::Kicked => "kicked",
        }
    }

    /// Logs and counts the end once, at the level its cause calls for:
    /// client misbehaviour at INFO, everything routine at DEBUG.
    fn record(&self, info: &ClientInfo, metrics: &Metrics) {
        let session_id = info.session_id.as_str();
        let unique_id = info.unique_id.as_str();
        let client_type = info.client_type.as_str();
        let reason = self.label();
        metrics.session_ended(reason);
        if *self == SessionEnd::SlowClient {
            metrics.slow_client_disconnected();
        }
        match self {
            SessionEnd::MessageTooBig
            | SessionEnd::InvalidUtf8
            | SessionEnd::ProtocolViolation
            | SessionEnd::SlowClient
            | SessionEnd::RateLimited => tracing::info!(
                target: "switchboard::ws",
                session_id, unique_id, client_type, reason,
                "session closed for client misbehaviour"
            ),
            SessionEnd::Transport(error) => tracing::debug!(
                target: "switchboard::ws",
                session_id, unique_id, client_type, reason, error = %error,
                "session ended"
            ),
            _ => tracing::debug!(
                target: "switchboard::ws",
                session_id, unique_id, client_type, reason,
                "session ended"
            ),
        }
    }
}

/// Runs a session on an upgraded socket until it ends.
pub(crate) async fn run(node: Arc<Node>, mut socket: WebSocket, claims: Claims) {
    let config = &node.config().ws;
    let (tx, mut rx) = mpsc::channel::<Outbound>(config.send_queue_len);
    let id = node.hub().next_session_id();
    let info = ClientInfo {
        session_id: format!("{}-{id}", node.node_id()),
        unique_id: claims.unique_id,
        client_type: claims.client_type,
    };
    let handle = Arc::new(SessionHandle::new(
        id,
        info.unique_id.clone(),
        info.client_type.clone(),
        tx,
    ));

    // Register before CONNECTED is written, so that anything published
    // after the client saw CONNECTED reaches it.
    if node
        .hub()
        .register(handle.clone(), &claims.tags, &claims.businesses)
    {
        node.broker().user_presence_changed(&info.unique_id);
    }
    let route_wait = Duration::from_secs(node.config().broker.publish_timeout_secs);
    node.broker()
        .wait_user_routed(&info.unique_id, route_wait)
        .await;
    tracing::debug!(
        target: "switchboard::ws",
        session_id = %info.session_id, unique_id = %info.unique_id,
        client_type = %info.client_type,
        "session connected"
    );

    let _open = node.metrics().session_opened(&info.client_type);
    // Only the text of CONNECTED is kept: this future lives as long as the
    // session, and so would the envelope.
    let hello = connected_frame(&node, &info, &claims.tags, &claims.businesses).to_json();
    let hello = [Message::text(hello)];
    let end = match write_all(&mut socket, &handle, node.shutdown_token(), hello).await {
        Err(end) => end,
        Ok(()) => session_loop(&node, &info, &handle, &mut socket, &mut rx).await,
    };

    // Unregister first, so no new frame is queued for a dying session.
    if node.hub().unregister(&handle) {
        node.broker().user_presence_changed(&info.unique_id);
    }
    end.record(&info, node.metrics());

    // The client may be gone or not reading: every write here is bounded and
    // best effort.
    let last_write = Duration::from_secs(1);
    if let Some((code, reason)) = end.close() {
        let close = Message::Close(Some(CloseFrame {
            code: CloseCode::from(code),
            reason: reason.into(),
        }));
        let _ = tokio::time::timeout(last_write, socket.send(close)).await;
    } else if end == SessionEnd::ClientClosed {
        // A client's close frame must be answered with one (RFC 6455, 5.5.1).
        // The socket queued the answer when it read the close; a flush sends it.
        let _ = tokio::time::timeout(last_write, socket.flush()).await;
    }
}

/// The session's select loop. The socket is not split into halves: the
/// select drops its read future before a branch body runs, so a body can
/// write on the same socket, and no lock sits between the two directions.
async fn session_loop(
    node: &Arc<Node>,
    info: &ClientInfo,
    handle: &SessionHandle,
    socket: &mut WebSocket,
    rx: &mut mpsc::Receiver<Outbound>,
) -> SessionEnd {
    let config = &node.config().ws;
    let shutdown = node.shutdown_token();
    // Drawn once: the session's own moment to close when the node drains.
    let closing = crate::drain::closing_turn(node);
    tokio::pin!(closing);
    let mut limiter = SessionLimiter::new(&node.config().limits, Instant::now());

    let ping_every = Duration::from_secs(config.ping_interval_secs);
    let mut ping = tokio::time::interval_at(Instant::now() + ping_every, ping_every.max(MIN_TICK));
    ping.set_missed_tick_behavior(MissedTickBehavior::Delay);
    let idle_limit = Duration::from_secs(config.idle_timeout_secs);
    let idle = tokio::time::sleep(idle_limit);
    tokio::pin!(idle);
    let mut refusals_logged = 0u32;

    // Built once, not per turn of the loop: each build registers a waiter
    // under the token's lock and each drop removes it, and the node's token
    // is shared by every session.
    let ended = handle.ended();
    tokio::pin!(ended);

    loop {
        tokio::select! {
            biased;
            reason = &mut ended => return reason,
            () = &mut closing => return SessionEnd::Shutdown,
            frame = rx.recv() => {
                // The hub holds a sender as long as the session is registered,
                // so the queue cannot close while this loop runs.
                let Some(first) = frame else { return SessionEnd::Kicked };
                // What is already queued goes out with one flush. A queued
                // frame shares its bytes with every other session's copy: no
                // frame is copied here.
                let queued = std::iter::from_fn(|| rx.try_recv().ok());
                let batch = std::iter::once(first)
                    .chain(queued.take(WRITE_BATCH - 1))
                    .map(Message::Text);
                if let Err(end) = write_all(socket, handle, shutdown, batch).await {
                    return end;
                }
            }
            frame = socket.next() => {
                let message = match frame {
                    None => return SessionEnd::ClientClosed,
                    Some(Err(err)) => return read_error(&err),
                    Some(Ok(message)) => message,
                };
                if config.idle_timeout_secs != 0 {
                    idle.as_mut().reset(Instant::now() + idle_limit);
                }
                if message.is_close() {
                    return SessionEnd::ClientClosed;
                }
                if message.is_ping() || message.is_pong() {
                    continue;
                }
                match limiter.check(message.len(), Instant::now()) {
                    Verdict::Pass => {}
                    Verdict::Close => return SessionEnd::RateLimited,
                    Verdict::Limited => {
                        let answer = rate_limited(node, info, &message, &mut refusals_logged);
                        if let Err(end) = write_all(socket, handle, shutdown, [answer]).await {
                            return end;
                        }
                        continue;
                    }
                }
                let answers = if let Message::Text(text) = &message {
                    // Boxed: answering can be a deep chain of futures, and
                    // inline it would grow every idle session's task.
                    Box::pin(answer_text(node, info, handle, text, &mut refusals_logged)).await
                } else {
                    node.metrics().binary_frame_received();
                    node.metrics().frame_sent(Some(MessageType::Error));
                    let refusal = Refusal::new(
                        ErrorCode::UnsupportedFrame,
                        "only text frames holding one JSON envelope are accepted",
                    );
                    log_refusal(info, &refusal, &mut refusals_logged);
                    vec![Envelope::error(&refusal, None)]
                };
                let answers: Vec<Message> =
                    answers.into_iter().map(|env| Message::text(env.to_json())).collect();
                if let Err(end) = write_all(socket, handle, shutdown, answers).await {
                    return end;
                }
            }
            _ = ping.tick(), if config.ping_interval_secs != 0 => {
                let probe = [Message::Ping(Default::default())];
                if let Err(end) = write_all(socket, handle, shutdown, probe).await {
                    return end;
                }
            }
            () = &mut idle, if config.idle_timeout_secs != 0 => return SessionEnd::IdleTimeout,
        }
    }
}

/// Shortest timer period; `interval` refuses a zero period even when the
/// branch that uses it is disabled.
const MIN_TICK: Duration = Duration::from_millis(1);

async fn answer_text(
    node: &Arc<Node>,
    info: &ClientInfo,
    handle: &SessionHandle,
    text: &str,
    refusals_logged: &mut u32,
) -> Vec<Envelope> {
    let metrics = node.metrics();
    let envelope = match Envelope::parse(text) {
        Ok(envelope) => envelope,
        Err(refusal) => {
            metrics.frame_received(None);
            metrics.frame_sent(Some(MessageType::Error));
            log_refusal(info, &refusal, refusals_logged);
            return vec![Envelope::error(
                &refusal,
                salvage_message_id(text).as_deref(),
            )];
        }
    };
    metrics.frame_received(envelope.message_type);
    let answers = node.on_client_envelope(info, handle.id, envelope).await;
    for answer in &answers {
        metrics.frame_sent(answer.message_type);
        if answer.message_type == Some(MessageType::Error) {
            let code = answer
                .content
                .get("code")
                .and_then(|c| c.as_str())
                .unwrap_or("");
            tracing::debug!(
                target: "switchboard::ws",
                session_id = %info.session_id, unique_id = %info.unique_id,
                code, "client frame refused"
            );
        }
    }
    answers
}

/// The answer to a frame dropped by the rate limiter, counted and logged
/// like any refusal.
fn rate_limited(node: &Node, info: &ClientInfo, message: &Message, logged: &mut u32) -> Message {
    let refusal = Refusal::new(
        ErrorCode::RateLimited,
        "too many frames or bytes; this frame was dropped, slow down",
    );
    node.metrics().frame_rate_limited();
    node.metrics().frame_sent(Some(MessageType::Error));
    log_refusal(info, &refusal, logged);
    let message_id = message.to_text().ok().and_then(salvage_message_id);
    Message::text(Envelope::error(&refusal, message_id.as_deref()).to_json())
}

/// Logs a client's malformed or rate-limited frame: the first few of a
/// session at INFO, the rest at DEBUG, so one misbehaving client cannot
/// flood the log.
fn log_refusal(info: &ClientInfo, refusal: &Refusal, logged: &mut u32) {
    const AT_INFO: u32 = 3;
    let code = refusal.code.as_str();
    if *logged < AT_INFO {
        *logged += 1;
        tracing::info!(
            target: "switchboard::ws",
            session_id = %info.session_id, unique_id = %info.unique_id,
            code, error = %refusal.message,
            "client frame refused"
        );
    } else {
        tracing::debug!(
            target: "switchboard::ws",
            session_id = %info.session_id, code, "client frame refused"
        );
    }
}

fn read_error(err: &tungstenite::Error) -> SessionEnd {
    // The variants that carry client bytes (a UTF-8 error quotes them) are
    // mapped without their text: client content never reaches the log.
    match err {
        tungstenite::Error::Capacity(_) => SessionEnd::MessageTooBig,
        tungstenite::Error::Utf8(_) => SessionEnd::InvalidUtf8,
        // A peer that vanished without a close frame is a lost connection,
        // not a protocol violation.
        tungstenite::Error::Protocol(
            tungstenite::error::ProtocolError::ResetWithoutClosingHandshake,
        ) => SessionEnd::Transport(err.to_string()),
        tungstenite::Error::Protocol(_) => SessionEnd::ProtocolViolation,
        _ => SessionEnd::Transport(err.to_string()),
    }
}

/// Writes `messages` with one flush, giving up when the session is asked to
/// end, the node drains, or the write stalls past [`WRITE_TIMEOUT`].
///
/// A write to a client that does not read can wait for the whole timeout;
/// watching the drain here keeps such a client from holding up a shutdown.
async fn write_all(
    socket: &mut WebSocket,
    handle: &SessionHandle,
    shutdown: &CancellationToken,
    messages: impl IntoIterator<Item = Message>,
) -> Result<(), SessionEnd> {
    let write = async {
        for message in messages {
            socket.feed(message).await?;
        }
        socket.flush().await
    };
    let mut write = std::pin::pin!(write);

    // Fast path: a client that reads has room in its socket buffer, and the
    // whole batch goes out in this first poll. Only a write that has to wait
    // pays for a timer and for watching the session's end and the drain.
    let first = std::future::poll_fn(|cx| Poll::Ready(write.as_mut().poll(cx))).await;
    if let Poll::Ready(result) = first {
        return result.map_err(|err| SessionEnd::Transport(err.to_string()));
    }

    tokio::select! {
        result = tokio::time::timeout(WRITE_TIMEOUT, write) => match result {
            Ok(Ok(())) => Ok(()),
            Ok(Err(err)) => Err(SessionEnd::Transport(err.to_string())),
            Err(_) => Err(SessionEnd::SlowClient),
        },
        reason = handle.ended() => Err(reason),
        () = shutdown.cancelled() => Err(SessionEnd::Shutdown),
    }
}

fn connected_frame(
    node: &Node,
    info: &ClientInfo,
    tags: &[String],
    businesses: &[String],
) -> Envelope {
    let ws = &node.config().ws;
    let mut env = Envelope::new(MessageType::Connected);
    env.to_unique_id = Some(info.unique_id.clone());
    env.to_client_type = Some(info.client_type.clone());
    env.content = serde_json::json!({
        "sessionId": info.session_id,
        "uniqueId": info.unique_id,
        "clientType": info.client_type,
        "nodeId": node.node_id(),
        "pingIntervalSecs": ws.ping_interval_secs,
        "idleTimeoutSecs": ws.idle_timeout_secs,
        "maxMessageBytes": ws.max_message_bytes,
        "tags": tags,
        "businesses": businesses,
    });
    env.stamp();
    env
}
