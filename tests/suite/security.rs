//! Security: single-use tokens, origins, rate limits, caps, sender identity,
//! authenticators and the configurations a cluster refuses.

use std::time::Duration;

use serde_json::{Value, json};
use switchboard::Config;
use switchboard::auth::{AuthError, Authenticator, HeaderMap};
use switchboard_tests::{Client, DEADLINE, Event, TestNode, assert_error, metric, test_config};

/// Retries `attempt` every 50 ms until it returns `Some`, failing the test
/// after [`DEADLINE`].
async fn eventually<T, F, Fut>(what: &str, mut attempt: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = tokio::time::Instant::now() + DEADLINE;
    loop {
        if let Some(value) = attempt().await {
            return value;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{what} did not happen within {DEADLINE:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn scrape(node: &TestNode) -> String {
    reqwest::get(format!("{}/metrics", node.base()))
        .await
        .expect("metrics reachable")
        .text()
        .await
        .expect("metrics text")
}

/// A token connects once; a second upgrade with the same token gets 401.
#[tokio::test]
async fn reused_token_is_refused_with_401() {
    let node = TestNode::start().await;
    let url = node.token_url("reuse-1", "H5", "").await;
    let _first = Client::try_connect(&url, None).await.expect("first use");
    assert_eq!(Client::try_connect(&url, None).await.err(), Some(401));
    let text = scrape(&node).await;
    assert_eq!(
        metric(
            &text,
            r#"switchboard_upgrades_refused_total{reason="reused_token"}"#
        ),
        1.0
    );
    node.stop().await;
}

/// An `Origin` outside `ws.allowed_origins` gets 403 before the upgrade (and
/// keeps its token unspent); a listed origin or none connects.
#[tokio::test]
async fn origin_outside_the_allow_list_is_refused_with_403() {
    let mut config = test_config();
    config.ws.allowed_origins = vec!["https://app.example.com".into()];
    let node = TestNode::start_with(config).await;

    let url = node.token_url("origin-1", "H5", "").await;
    let refused = Client::try_connect(&url, Some("https://evil.example.net")).await;
    assert_eq!(refused.err(), Some(403));
    Client::try_connect(&url, Some("https://APP.example.com"))
        .await
        .expect("listed origin connects with the unspent token");

    let url = node.token_url("origin-2", "APP", "").await;
    Client::try_connect(&url, None)
        .await
        .expect("a client without Origin connects");
    node.stop().await;
}

/// A client over its frame rate gets `RATE_LIMITED` for the dropped frames
/// and, when it keeps going, a close with 1008.
#[tokio::test]
async fn flooding_client_is_rate_limited_then_closed_with_1008() {
    let mut config = test_config();
    config.limits.frames_per_sec = 2;
    config.limits.frame_burst = 3;
    config.limits.rate_limited_close_after = 5;
    let node = TestNode::start_with(config).await;
    let mut client = node.connect("flood-1", "H5").await;

    // One frame at a time, each answered before the next, until the server
    // closes: the server has then read everything sent, so its close is not
    // turned into a reset by unread data. Bounded so a broken limiter fails.
    let mut heartbeats = 0;
    let mut limited = 0;
    let mut code = None;
    for i in 0..100 {
        let beat = json!({"messageId": format!("f{i}"), "messageType": "HEARTBEAT"});
        assert!(
            client.try_send_text(beat.to_string()).await,
            "open until closed"
        );
        match client.next_event_within(DEADLINE).await {
            Some(Event::Json(frame)) if frame["messageType"] == "HEARTBEAT" => heartbeats += 1,
            Some(Event::Json(frame)) => {
                assert_error(&frame, "RATE_LIMITED");
                limited += 1;
            }
            Some(Event::Closed(close)) => {
                code = close;
                break;
            }
            other => panic!("expected an answer or a close, got {other:?}"),
        }
    }
    assert_eq!(code, Some(1008));
    assert!(heartbeats >= 3, "the burst passes: {heartbeats}");
    assert!(limited >= 1, "limited frames are answered: {limited}");

    let text = scrape(&node).await;
    assert!(metric(&text, "switchboard_rate_limited_frames_total") >= 4.0);
    let ends = r#"switchboard_session_ends_total{reason="rate_limited"}"#;
    let node_ref = &node;
    eventually(
        "the rate-limited session end to be counted",
        || async move { (metric(&scrape(node_ref).await, ends) == 1.0).then_some(()) },
    )
    .await;
    node.stop().await;
}

/// A frame over the byte rate is dropped with `RATE_LIMITED`, the session
/// stays open, and the same frame passes once the bucket has refilled.
#[tokio::test]
async fn byte_rate_limit_drops_frames_without_closing() {
    let mut config = test_config();
    config.ws.max_message_bytes = 1024;
    config.limits.bytes_per_sec = 1024;
    config.limits.byte_burst = 2048;
    config.limits.rate_limited_close_after = 0;
    let node = TestNode::start_with(config).await;
    let mut client = node.connect("bytes-1", "H5").await;

    let padding = "x".repeat(800);
    let beat = |id: &str| json!({"messageId": id, "messageType": "HEARTBEAT", "content": padding});
    assert_eq!(
        client.request_any(beat("b1")).await["messageType"],
        "HEARTBEAT"
    );
    assert_eq!(
        client.request_any(beat("b2")).await["messageType"],
        "HEARTBEAT"
    );
    assert_error(&client.request_any(beat("b3")).await, "RATE_LIMITED");

    // Refilling 800 bytes at 1024 a second takes under a second; poll.
    let deadline = tokio::time::Instant::now() + DEADLINE;
    for n in 0.. {
        let answer = client.request_any(beat(&format!("r{n}"))).await;
        if answer["messageType"] == "HEARTBEAT" {
            break;
        }
        assert_error(&answer, "RATE_LIMITED");
        assert!(
            tokio::time::Instant::now() < deadline,
            "bucket never refilled"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    node.stop().await;
}

/// `limits.max_subscriptions_per_session` holds for token requests and for
/// `SUBSCRIBE`.
#[tokio::test]
async fn subscription_cap_is_enforced() {
    let mut config = test_config();
    config.limits.max_subscriptions_per_session = 3;
    let node = TestNode::start_with(config).await;

    let (status, body) = node
        .get("/websocket/token?uniqueId=subs-1&clientType=H5&tags=a,b&businesses=c,d")
        .await;
    assert_eq!(status, 400, "{body}");

    let mut client = node.connect_with("subs-1", "H5", "&tags=a,b").await;
    let ack = client
        .request(json!({"messageId": "s1", "messageType": "SUBSCRIBE", "tags": ["c"]}))
        .await;
    assert_eq!(ack["messageType"], "ACK", "{ack}");
    let refused = client
        .request(json!({"messageId": "s2", "messageType": "SUBSCRIBE", "businesses": ["d"]}))
        .await;
    assert_error(&refused, "INVALID_MESSAGE");
    node.stop().await;
}

/// A user's session past `limits.max_sessions_per_user` is refused with 429
/// without spending its token, which connects once a place is free.
#[tokio::test]
async fn sessions_per_user_cap_refuses_with_429() {
    let mut config = test_config();
    config.limits.max_sessions_per_user = 2;
    let node = TestNode::start_with(config).await;

    let first = node.connect("cap-user", "H5").await;
    let _second = node.connect("cap-user", "APP").await;
    let url = node.token_url("cap-user", "H5", "").await;
    assert_eq!(Client::try_connect(&url, None).await.err(), Some(429));
    let _other_user = node.connect("cap-other", "H5").await;

    first.close_and_wait().await;
    eventually("a freed place to admit the third session", || {
        let url = url.clone();
        async move { Client::try_connect(&url, None).await.ok() }
    })
    .await;
    node.stop().await;
}

/// A node at `limits.max_connections` answers 503 on the token endpoint and
/// on the upgrade, and recovers when a connection ends.
#[tokio::test]
async fn full_node_refuses_tokens_and_upgrades_with_503() {
    let mut config = test_config();
    config.limits.max_connections = 2;
    let node = TestNode::start_with(config).await;

    let spare = node.token_url("full-3", "H5", "").await;
    let first = node.connect("full-1", "H5").await;
    let _second = node.connect("full-2", "H5").await;

    let (status, body) = node
        .get("/websocket/token?uniqueId=full-4&clientType=H5")
        .await;
    assert_eq!(status, 503, "{body}");
    assert_ne!(body["result"], 0);
    assert_eq!(Client::try_connect(&spare, None).await.err(), Some(503));

    first.close_and_wait().await;
    eventually("the node to take connections again", || {
        let spare = spare.clone();
        async move { Client::try_connect(&spare, None).await.ok() }
    })
    .await;
    node.stop().await;
}

/// A client's `fromUniqueId` and `fromClientType` are replaced by its
/// session's identity before anyone sees the message.
#[tokio::test]
async fn spoofed_sender_is_replaced_by_the_session_identity() {
    let node = TestNode::start().await;
    let mut alice = node.connect("alice", "H5").await;
    let mut bob = node.connect("bob", "APP").await;

    let ack = alice
        .request(json!({
            "messageId": "spoof-1",
            "messageType": "CLIENT_TO_CLIENT",
            "sendType": "UNICAST",
            "businessType": "page_update",
            "toUniqueId": "bob",
            "fromUniqueId": "admin",
            "fromClientType": "service",
            "content": {"page": 1},
        }))
        .await;
    assert_eq!(ack["messageType"], "ACK", "{ack}");
    let relayed = bob.recv_type("CLIENT_TO_CLIENT").await;
    assert_eq!(relayed["fromUniqueId"], "alice");
    assert_eq!(relayed["fromClientType"], "H5");
    assert_eq!(relayed["content"]["page"], 1);
    node.stop().await;
}

/// The `trusted_header` authenticator admits exactly the requests that carry
/// the configured header, on the token, publish and presence endpoints.
#[tokio::test]
async fn trusted_header_authenticator_requires_the_header() {
    let mut config = test_config();
    config.auth.authenticator = "trusted_header".into();
    config.auth.trusted_header = Some("X-Authenticated-User".into());
    let node = TestNode::start_with(config).await;
    let http = reqwest::Client::new();
    let paths = [
        "/websocket/token?uniqueId=th-1&clientType=H5",
        "/api/presence?uniqueId=th-1",
    ];
    for path in paths {
        let url = format!("{}{path}", node.base());
        let bare = http.get(&url).send().await.unwrap();
        assert_eq!(bare.status().as_u16(), 401, "{path}");
        let body: Value = bare.json().await.unwrap();
        assert!(
            body["description"]
                .as_str()
                .unwrap()
                .contains("x-authenticated-user")
        );
        let vouched = http
            .get(&url)
            .header("X-Authenticated-User", "gateway-user")
            .send()
            .await
            .unwrap();
        assert_eq!(vouched.status().as_u16(), 200, "{path}");
    }
    let publish = |with_header: bool| {
        let mut request = http
            .post(format!("{}/api/publish", node.base()))
            .body(switchboard_tests::unicast("notice", "th-1", json!({})).to_string());
        if with_header {
            request = request.header("X-Authenticated-User", "billing");
        }
        request.send()
    };
    assert_eq!(publish(false).await.unwrap().status().as_u16(), 401);
    assert_eq!(publish(true).await.unwrap().status().as_u16(), 200);
    node.stop().await;
}

/// Lets in requests whose `X-Office` header equals `auth.options.office`.
struct OfficeAuthenticator {
    office: String,
}

impl Authenticator for OfficeAuthenticator {
    fn authenticate(&self, headers: &HeaderMap) -> Result<(), AuthError> {
        match headers.get("x-office") {
            Some(value) if value.as_bytes() == self.office.as_bytes() => Ok(()),
            _ => Err(AuthError::MissingHeader("X-Office".into())),
        }
    }
}

switchboard::register_authenticator! {
    name: "test_office",
    description: "test-only: X-Office must equal auth.options.office",
    constructor: |config| {
        let office = config.auth.options.get("office").and_then(Value::as_str).ok_or(
            switchboard::config::ConfigError::Invalid {
                key: "auth.options.office",
                reason: "is required".into(),
            },
        )?;
        Ok(Box::new(OfficeAuthenticator { office: office.to_owned() }))
    },
}

/// An authenticator registered with `register_authenticator!` in another
/// crate is selected by `auth.authenticator` and configured from
/// `auth.options`.
#[tokio::test]
async fn custom_authenticator_is_selected_by_name() {
    let mut config = test_config();
    config.auth.authenticator = "test_office".into();
    let err = config.validate().unwrap_err().to_string();
    assert!(err.starts_with("auth.options.office"), "{err}");

    config.auth.options.insert("office".into(), json!("hq"));
    let node = TestNode::start_with(config).await;
    let url = format!("{}/websocket/token?uniqueId=o-1&clientType=H5", node.base());
    let http = reqwest::Client::new();
    let refused = http
        .get(&url)
        .header("X-Office", "branch")
        .send()
        .await
        .unwrap();
    assert_eq!(refused.status().as_u16(), 401);
    let admitted = http
        .get(&url)
        .header("X-Office", "hq")
        .send()
        .await
        .unwrap();
    assert_eq!(admitted.status().as_u16(), 200);
    node.stop().await;
}

/// A cluster configuration without a shared secret, or with open endpoints
/// and no explicit opt-in, is refused with an error naming the key.
#[test]
fn cluster_configuration_refuses_unsafe_auth() {
    let cluster = || {
        let mut config = Config::default();
        config.broker.url = Some("amqp://guest:guest@127.0.0.1:5672/%2f".into());
        config
    };
    let error = |config: Config| config.validate().unwrap_err().to_string();

    let no_secret = cluster();
    assert!(error(no_secret).starts_with("auth.secret:"));

    let mut open = cluster();
    open.auth.secret = Some("a-shared-secret-of-32-bytes-long".into());
    let message = error(open.clone());
    assert!(message.starts_with("auth.api_keys:"), "{message}");
    assert!(message.contains("auth.allow_open"), "{message}");

    let mut opted_in = open.clone();
    opted_in.auth.allow_open = true;
    opted_in.validate().expect("explicit opt-in is accepted");

    let mut keyed = open.clone();
    keyed.auth.api_keys = vec!["k-0123456789".into()];
    keyed.validate().expect("keys close the endpoints");

    let mut gateway = open;
    gateway.auth.authenticator = "trusted_header".into();
    gateway.auth.trusted_header = Some("X-Authenticated-User".into());
    gateway.validate().expect("a gateway identity is not open");

    let mut single = Config::default();
    single.auth.api_keys.clear();
    single
        .validate()
        .expect("one embedded node may run open, with a warning");
}

/// Start-up refuses a configuration built in code when it is invalid.
#[tokio::test]
async fn server_refuses_an_invalid_configuration() {
    let mut config = test_config();
    config.server.drain_spread_secs = config.server.shutdown_grace_secs;
    let registry = switchboard::HandlerRegistry::from_linked().unwrap();
    let err = switchboard::Server::bind(config, registry)
        .await
        .err()
        .unwrap();
    assert!(
        err.to_string().contains("server.drain_spread_secs"),
        "{err}"
    );
}
