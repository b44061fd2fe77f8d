//! Test harness shared by the workspace's integration tests: start real
//! nodes on port 0, talk to them over real HTTP and real WebSockets, and wait
//! for events with deadlines instead of sleeping.

use std::net::SocketAddr;
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use serde_json::{Value, json};
use switchboard::{Config, HandlerRegistry, Server, ServerHandle};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
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

/// The RabbitMQ URL for broker tests: `SWITCHBOARD_TEST_AMQP_URL`, or the
/// local broker.
pub fn amqp_url() -> String {
    std::env::var("SWITCHBOARD_TEST_AMQP_URL")
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
    config.auth.secret = Some("switchboard-test-secret-0123456789".into());
    // Sessions close at once on shutdown; the spread is tested on its own.
    config.server.drain_spread_secs = 0;
    // Tests of other behaviour send bursts of frames; rate limits are tested
    // on their own, with their own settings.
    config.limits.frames_per_sec = 0;
    config.limits.bytes_per_sec = 0;
    config
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

    /// The server handle (node internals, shutdown).
    pub fn handle(&self) -> &ServerHandle {
        &self.handle
    }

    /// Drains and waits for the node to stop.
    pub async fn stop(self) {
        self.handle.shutdown().await;
    }

    /// GET `path` with the configured API key; returns status and JSON (or
    /// `Value::Null` for a body that is not JSON).
    pub async fn get(&self, path: &str) -> (u16, Value) {
        let mut request = self.http.get(format!("{}{path}", self.base()));
        if let Some(key) = &self.api_key {
            request = request.bearer_auth(key);
        }
        let response = request.send().await.expect("GET reaches the node");
        let status = response.status().as_u16();
        let body = response.text().await.unwrap_or_default();
        (status, serde_json::from_str(&body).unwrap_or(Value::Null))
    }

    /// POST `/api/publish` with `event` as body; returns status and JSON.
    pub async fn publish(&self, event: &Value) -> (u16, Value) {
        self.publish_raw(event.to_string()).await
    }

    /// POST `/api/publish` with a raw body.
    pub async fn publish_raw(&self, body: String) -> (u16, Value) {
        let mut request = self
            .http
            .post(format!("{}/api/publish", self.base()))
            .body(body);
        if let Some(key) = &self.api_key {
            request = request.bearer_auth(key);
        }
        let response = request.send().await.expect("POST reaches the node");
        let status = response.status().as_u16();
        let body = response.text().await.unwrap_or_default();
        (status, serde_json::from_str(&body).unwrap_or(Value::Null))
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

/// A WebSocket client.
pub struct Client {
    ws: WebSocketStream<MaybeTlsStream<TcpStream>>,
    /// The `CONNECTED` frame's content.
    pub connected: Value,
}

/// What [`Client::next_event`] saw.
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

    /// The next event within `wait`, skipping pings and pongs; `None` on
    /// timeout.
    pub async fn next_event_within(&mut self, wait: Duration) -> Option<Event> {
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            let frame = tokio::time::timeout_at(deadline, self.ws.next())
                .await
                .ok()?;
            return Some(match frame {
                None | Some(Err(_)) => Event::Gone,
                Some(Ok(Message::Text(text))) => {
                    Event::Json(serde_json::from_str(&text).expect("server sends JSON"))
                }
                Some(Ok(Message::Close(frame))) => {
                    Event::Closed(frame.map(|f: CloseFrame| u16::from(f.code)))
                }
                Some(Ok(Message::Ping(_) | Message::Pong(_))) => continue,
                Some(Ok(other)) => panic!("unexpected frame {other:?}"),
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

    /// Asserts that no JSON frame arrives within [`QUIET`].
    pub async fn expect_silence(&mut self) {
        if let Some(Event::Json(value)) = self.next_event_within(QUIET).await {
            panic!("expected no frame, got {value}");
        }
    }

    /// Waits for the server to close the connection and returns the close
    /// code (skipping any JSON frames before it).
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

    /// Sends a request and returns the server's `ACK` or `ERROR` for it.
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
}
