//! Test harness shared by the workspace's integration tests: start real
//! nodes on port 0, talk to them over real HTTP and real WebSockets, and wait
//! for events with deadlines instead of sleeping.

pub mod broker;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use serde_json::{Value, json};
use switchboard::{Config, HandlerRegistry, Server, ServerHandle};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::{self, Message};
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

mod upgrade;
pub use upgrade::metric;

// Link the shipped handlers; without these lines their registrations vanish.
use switchboard_notice as _;
use switchboard_page_update as _;
use switchboard_payment_callback as _;
use switchboard_qr_refresh as _;

/// How long any single expected event may take before a test fails.
pub const DEADLINE: Duration = Duration::from_secs(10);

/// How long a test waits to be sure something does *not* arrive.
pub const QUIET: Duration = Duration::from_millis(300);

/// The token secret of [`test_config`], for tests that sign their own tokens.
pub const TEST_SECRET: &str = "switchboard-test-secret-0123456789";

/// The RabbitMQ URL for broker tests: `SB_TEST_AMQP_URL`, or the
/// local broker.
pub fn amqp_url() -> String {
    std::env::var("SB_TEST_AMQP_URL")
        .unwrap_or_else(|_| "amqp://guest:guest@127.0.0.1:5672/%2f".to_owned())
}

/// Installs a test log subscriber once (`RUST_LOG` selects; default warn).
pub fn init_logging() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_test_writer()
        .try_init();
}

/// A configuration for tests: port 0, a fixed secret, short timers.
pub fn test_config() -> Config {
    let mut config = Config::default();
    config.server.bind = SocketAddr::from(([127, 0, 0, 1], 0));
    config.server.shutdown_grace_secs = 5;
    config.auth.secret = Some(TEST_SECRET.into());
    // Sessions close at once on shutdown; the spread is tested on its own.
    config.server.drain_spread_secs = 0;
    // Tests of other behaviour send bursts of frames; rate limits are tested
    // on their own, with their own settings.
    config.limits.frames_per_sec = 0;
    config.limits.bytes_per_sec = 0;
    config
}

/// A `messageId` unique within this test process: `prefix-N`.
pub fn new_id(prefix: &str) -> String {
    static NEXT: AtomicU64 = AtomicU64::new(1);
    format!("{prefix}-{}", NEXT.fetch_add(1, Ordering::Relaxed))
}

/// A client frame: `messageType` and a fresh `messageId`, plus every field of
/// `extra` (an object; its fields win).
pub fn frame(message_type: &str, extra: Value) -> Value {
    let mut frame = json!({ "messageId": new_id("m"), "messageType": message_type });
    if let (Some(frame), Value::Object(extra)) = (frame.as_object_mut(), extra) {
        frame.extend(extra);
    }
    frame
}

/// A service event addressed to one user.
pub fn unicast(business_type: &str, to: &str, content: Value) -> Value {
    json!({
        "businessType": business_type,
        "sendType": "UNICAST",
        "toUniqueId": to,
        "content": content,
    })
}

/// A service event of `business_type` with the addressing fields of
/// `address` (an object such as `{"sendType": "TAG", "tags": ["a"]}`).
pub fn event(business_type: &str, address: Value, content: Value) -> Value {
    let mut event = json!({ "businessType": business_type, "content": content });
    if let (Some(event), Value::Object(address)) = (event.as_object_mut(), address) {
        event.extend(address);
    }
    event
}

/// Asserts an `ERROR` frame with `code`.
#[track_caller]
pub fn assert_error(frame: &Value, code: &str) {
    assert_eq!(
        frame["messageType"], "ERROR",
        "expected ERROR {code}, got {frame}"
    );
    assert_eq!(
        frame["content"]["code"], code,
        "wrong error code in {frame}"
    );
    assert!(
        frame["content"]["message"].is_string(),
        "ERROR without a message: {frame}"
    );
}

/// Asserts an `ACK` frame answering `message_id`.
#[track_caller]
pub fn assert_ack(frame: &Value, message_id: &str) {
    assert_eq!(frame["messageType"], "ACK", "expected ACK, got {frame}");
    assert_eq!(
        frame["correlationId"], message_id,
        "ACK answers the wrong frame: {frame}"
    );
}

/// Asserts a refused HTTP answer: `status`, a non-zero `result`, a
/// `description`, and no `data`.
#[track_caller]
pub fn assert_refused(answer: &(u16, Value), status: u16) {
    let (got, body) = answer;
    assert_eq!(*got, status, "{body}");
    assert_ne!(body["result"], 0, "refusal with result 0: {body}");
    assert!(body["result"].is_number(), "{body}");
    assert!(body["description"].is_string(), "{body}");
    assert!(body["data"].is_null(), "{body}");
}

/// Polls `condition` every few milliseconds until it holds; panics naming
/// `what` after [`DEADLINE`].
pub async fn eventually(what: &str, mut condition: impl FnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + DEADLINE;
    while !condition() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting until {what}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// A running node.
pub struct TestNode {
    handle: ServerHandle,
    http: reqwest::Client,
    api_key: Option<String>,
}

impl TestNode {
    /// Starts a node with [`test_config`] and every linked handler.
    pub async fn start() -> TestNode {
        Self::start_with(test_config()).await
    }

    /// Starts a node with `config` and every linked handler.
    pub async fn start_with(config: Config) -> TestNode {
        init_logging();
        let api_key = config.auth.api_keys.first().cloned();
        let registry = HandlerRegistry::from_linked().expect("handlers register");
        let server = Server::bind(config, registry).await.expect("node starts");
        TestNode {
            handle: server.spawn(),
            http: reqwest::Client::new(),
            api_key,
        }
    }

    /// The bound address.
    pub fn addr(&self) -> SocketAddr {
        self.handle.addr()
    }

    /// `http://127.0.0.1:PORT`.
    pub fn base(&self) -> String {
        format!("http://{}", self.addr())
    }

    /// `ws://127.0.0.1:PORT/socket/<token>`.
    pub fn socket_url(&self, token: &str) -> String {
        format!("ws://{}/socket/{token}", self.addr())
    }

    /// The server handle (node internals, shutdown).
    pub fn handle(&self) -> &ServerHandle {
        &self.handle
    }

    /// Sessions connected to this node now.
    pub fn session_count(&self) -> usize {
        self.handle.node().hub().session_count()
    }

    /// Waits until exactly `count` sessions are connected.
    pub async fn wait_for_sessions(&self, count: usize) {
        let what = format!("the node holds {count} sessions");
        eventually(&what, || self.session_count() == count).await;
    }

    /// Drains and waits for the node to stop.
    pub async fn stop(self) {
        self.handle.shutdown().await;
    }

    /// GET `path` with the configured API key; returns status and JSON (or
    /// `Value::Null` for a body that is not JSON).
    pub async fn get(&self, path: &str) -> (u16, Value) {
        self.get_as(path, self.api_key.as_deref()).await
    }

    /// GET `path` with `Authorization: Bearer <key>` where `key` is given.
    pub async fn get_as(&self, path: &str, key: Option<&str>) -> (u16, Value) {
        let mut request = self.http.get(format!("{}{path}", self.base()));
        if let Some(key) = key {
            request = request.bearer_auth(key);
        }
        answer(request).await
    }

    /// POST `/api/publish` with `event` as body; returns status and JSON.
    pub async fn publish(&self, event: &Value) -> (u16, Value) {
        self.publish_raw(event.to_string()).await
    }

    /// POST `/api/publish` with a raw body.
    pub async fn publish_raw(&self, body: String) -> (u16, Value) {
        self.publish_as(body, self.api_key.as_deref()).await
    }

    /// POST `/api/publish` with a raw body and the given key, if any.
    pub async fn publish_as(&self, body: String, key: Option<&str>) -> (u16, Value) {
        let mut request = self
            .http
            .post(format!("{}/api/publish", self.base()))
            .body(body);
        if let Some(key) = key {
            request = request.bearer_auth(key);
        }
        answer(request).await
    }

    /// Publishes `event` and asserts it was accepted; returns its
    /// `messageId`.
    pub async fn publish_ok(&self, event: &Value) -> String {
        let (status, body) = self.publish(event).await;
        assert_eq!(status, 200, "publish refused: {body}");
        assert_eq!(body["result"], 0, "{body}");
        body["data"]["messageId"]
            .as_str()
            .expect("publish answer names the messageId")
            .to_owned()
    }

    /// Proves that nothing published before this call is still on its way to
    /// `client`: publishes a marker notice to the client's user and client
    /// type, and asserts that it is the client's next JSON frame.
    ///
    /// Stronger than [`Client::expect_silence`]: the node processes published
    /// events in order and every session receives its frames in order, so an
    /// earlier delivery would have arrived before the marker. Other sessions
    /// of the same user and client type receive the marker too.
    pub async fn assert_nothing_delivered(&self, client: &mut Client) {
        let unique_id = client.connected["uniqueId"].as_str().unwrap_or("");
        let marker = new_id("marker");
        let mut event = unicast("notice", unique_id, json!({ "marker": marker }));
        event["toClientType"] = client.connected["clientType"].clone();
        self.publish_ok(&event).await;
        let next = client.recv().await;
        assert_eq!(
            next["content"]["marker"], marker,
            "expected nothing before the marker, got {next}"
        );
    }

    /// Asks for a token and returns the connection URL.
    pub async fn token_url(&self, unique_id: &str, client_type: &str, extra: &str) -> String {
        let path = format!("/websocket/token?uniqueId={unique_id}&clientType={client_type}{extra}");
        let (status, body) = self.get(&path).await;
        assert_eq!(status, 200, "token request failed: {body}");
        body["data"]
            .as_str()
            .expect("token response has data")
            .to_owned()
    }

    /// Connects a client and waits for its `CONNECTED` frame.
    pub async fn connect(&self, unique_id: &str, client_type: &str) -> Client {
        self.connect_with(unique_id, client_type, "").await
    }

    /// Like [`TestNode::connect`], with extra query text such as `&tags=a,b`.
    pub async fn connect_with(&self, unique_id: &str, client_type: &str, extra: &str) -> Client {
        let url = self.token_url(unique_id, client_type, extra).await;
        Client::connect(&url).await
    }
}

async fn answer(request: reqwest::RequestBuilder) -> (u16, Value) {
    let response = request.send().await.expect("request reaches the node");
    let status = response.status().as_u16();
    let body = response.text().await.unwrap_or_default();
    (status, serde_json::from_str(&body).unwrap_or(Value::Null))
}

/// A WebSocket client.
pub struct Client {
    ws: WebSocketStream<MaybeTlsStream<TcpStream>>,
    /// The `CONNECTED` frame's content.
    pub connected: Value,
}

/// What [`Client::next_event_within`] saw.
#[derive(Debug)]
pub enum Event {
    /// A text frame holding JSON.
    Json(Value),
    /// A close frame, with its code.
    Closed(Option<u16>),
    /// The connection ended without a close frame.
    Gone,
}

impl Client {
    /// Connects to `url` and waits for `CONNECTED`.
    pub async fn connect(url: &str) -> Client {
        let (ws, _) = tokio_tungstenite::connect_async(url)
            .await
            .expect("upgrade succeeds");
        let mut client = Client {
            ws,
            connected: Value::Null,
        };
        let first = client.recv().await;
        assert_eq!(first["messageType"], "CONNECTED", "first frame: {first}");
        client.connected = first["content"].clone();
        client
    }

    /// Tries to connect to `url`, expecting the server to refuse the upgrade;
    /// returns the HTTP status of the refusal.
    pub async fn refused_status(url: &str) -> u16 {
        match tokio_tungstenite::connect_async(url).await {
            Ok(_) => panic!("the upgrade to {url} succeeded, expected a refusal"),
            Err(tungstenite::Error::Http(response)) => response.status().as_u16(),
            Err(other) => panic!("expected an HTTP refusal, got {other}"),
        }
    }

    /// The session id from `CONNECTED`.
    pub fn session_id(&self) -> &str {
        self.connected["sessionId"].as_str().unwrap_or("")
    }

    /// Sends `value` as a text frame.
    pub async fn send(&mut self, value: &Value) {
        self.send_text(value.to_string()).await;
    }

    /// Sends raw text.
    pub async fn send_text(&mut self, text: String) {
        self.ws
            .send(Message::text(text))
            .await
            .expect("send succeeds");
    }

    /// Sends any frame.
    pub async fn send_message(&mut self, message: Message) {
        self.ws.send(message).await.expect("send succeeds");
    }

    /// The next frame of any kind within `wait`: `None` on timeout,
    /// `Some(None)` when the connection ended or failed.
    pub async fn next_frame_within(&mut self, wait: Duration) -> Option<Option<Message>> {
        let frame = tokio::time::timeout(wait, self.ws.next()).await.ok()?;
        Some(frame.and_then(Result::ok))
    }

    /// The next event within `wait`, skipping pings and pongs; `None` on
    /// timeout. Reading also answers the server's pings.
    pub async fn next_event_within(&mut self, wait: Duration) -> Option<Event> {
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            return Some(match self.next_frame_within(left).await? {
                None => Event::Gone,
                Some(Message::Text(text)) => {
                    Event::Json(serde_json::from_str(&text).expect("server sends JSON"))
                }
                Some(Message::Close(frame)) => {
                    Event::Closed(frame.map(|f: CloseFrame| u16::from(f.code)))
                }
                Some(Message::Ping(_) | Message::Pong(_)) => continue,
                Some(other) => panic!("unexpected frame {other:?}"),
            });
        }
    }

    /// The next JSON frame; panics on close or after [`DEADLINE`].
    pub async fn recv(&mut self) -> Value {
        match self.next_event_within(DEADLINE).await {
            Some(Event::Json(value)) => value,
            other => panic!("expected a JSON frame, got {other:?}"),
        }
    }

    /// The next JSON frame whose `messageType` is `message_type`, skipping
    /// others (heartbeats, unrelated pushes).
    pub async fn recv_type(&mut self, message_type: &str) -> Value {
        loop {
            let frame = self.recv().await;
            if frame["messageType"] == message_type {
                return frame;
            }
        }
    }

    /// Waits for the server's next ping, skipping JSON frames; panics if the
    /// connection ends or no ping comes within [`DEADLINE`].
    pub async fn recv_ping(&mut self) {
        let deadline = tokio::time::Instant::now() + DEADLINE;
        loop {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            match self.next_frame_within(left).await {
                Some(Some(Message::Ping(_))) => return,
                Some(Some(Message::Text(_) | Message::Pong(_))) => continue,
                other => panic!("expected a ping, got {other:?}"),
            }
        }
    }

    /// Asserts that no JSON frame arrives within [`QUIET`].
    pub async fn expect_silence(&mut self) {
        if let Some(Event::Json(value)) = self.next_event_within(QUIET).await {
            panic!("expected no frame, got {value}");
        }
    }

    /// Waits for the server to close the connection and returns the close
    /// code (skipping any JSON frames before it); `None` when the connection
    /// ended without a close frame.
    pub async fn closed_with(&mut self) -> Option<u16> {
        loop {
            match self.next_event_within(DEADLINE).await {
                Some(Event::Json(_)) => continue,
                Some(Event::Closed(code)) => return code,
                Some(Event::Gone) => return None,
                None => panic!("the server did not close the connection within {DEADLINE:?}"),
            }
        }
    }

    /// Sends a request and returns the server's `ACK` or `ERROR` for it,
    /// skipping other frames.
    pub async fn request(&mut self, envelope: Value) -> Value {
        let id = envelope["messageId"]
            .as_str()
            .expect("request has a messageId")
            .to_owned();
        self.send(&envelope).await;
        loop {
            let frame = self.recv().await;
            let answers = frame["correlationId"] == id.as_str();
            if answers && (frame["messageType"] == "ACK" || frame["messageType"] == "ERROR") {
                return frame;
            }
        }
    }

    /// Sends a request and asserts that it is acknowledged.
    pub async fn request_ok(&mut self, envelope: Value) {
        let id = envelope["messageId"].as_str().unwrap_or("").to_owned();
        let answer = self.request(envelope).await;
        assert_ack(&answer, &id);
    }

    /// Sends a request and asserts that it is refused with `code`.
    pub async fn request_refused(&mut self, envelope: Value, code: &str) {
        let answer = self.request(envelope).await;
        assert_error(&answer, code);
    }

    /// Proves the connection still serves: a `HEARTBEAT` is answered with a
    /// `HEARTBEAT` naming it.
    pub async fn assert_alive(&mut self) {
        let beat = frame("HEARTBEAT", json!({}));
        let id = beat["messageId"].clone();
        self.send(&beat).await;
        let answer = self.recv_type("HEARTBEAT").await;
        assert_eq!(answer["correlationId"], id, "{answer}");
    }

    /// Sends every frame of `frames` while reading, and returns the first
    /// `answers` JSON frames that come back. Sending and reading run at once,
    /// so neither side's buffers fill up and stall the other.
    pub async fn flood(&mut self, frames: Vec<String>, answers: usize) -> Vec<Value> {
        let (mut sink, mut stream) = (&mut self.ws).split();
        let send = async move {
            for text in frames {
                sink.feed(Message::text(text)).await.expect("send succeeds");
            }
            sink.flush().await.expect("flush succeeds");
        };
        let receive = async move {
            let mut got = Vec::with_capacity(answers);
            while got.len() < answers {
                let frame = tokio::time::timeout(DEADLINE, stream.next())
                    .await
                    .expect("answers keep coming")
                    .expect("connection stays open")
                    .expect("read succeeds");
                if let Message::Text(text) = frame {
                    got.push(serde_json::from_str(&text).expect("server sends JSON"));
                }
            }
            got
        };
        let ((), got) = tokio::join!(send, receive);
        got
    }

    /// Starts a normal close (code 1000) from the client side.
    pub async fn close(&mut self) {
        let frame = CloseFrame {
            code: CloseCode::Normal,
            reason: "done".into(),
        };
        self.ws.close(Some(frame)).await.expect("close frame sent");
    }
}
