//! The HTTP surface: the token endpoint, API keys, the upgrade's token
//! checks, liveness and readiness.

use serde_json::json;
use switchboard::token::{Claims, TokenSigner, now_secs};
use switchboard_tests::{Client, TEST_SECRET, TestNode, assert_refused, test_config, unicast};

/// A token request for `uniqueId` and `clientType` with no other parameter.
fn token_path(unique_id: &str, client_type: &str) -> String {
    format!("/websocket/token?uniqueId={unique_id}&clientType={client_type}")
}

/// Claims for `user-1` on `H5` that expire at `expires_at`.
fn claims(expires_at: u64) -> Claims {
    Claims {
        unique_id: "user-1".into(),
        client_type: "H5".into(),
        tags: Vec::new(),
        businesses: Vec::new(),
        expires_at,
        token_id: "test-token".into(),
    }
}

/// The token endpoint answers `{result: 0, description, data}` with a
/// `ws://` URL built from the request's host, and that URL connects.
#[tokio::test]
async fn token_answer_has_the_documented_shape() {
    let node = TestNode::start().await;
    let (status, body) = node.get(&token_path("user-1", "H5")).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["result"], 0, "{body}");
    assert!(body["description"].is_string(), "{body}");

    let url = body["data"].as_str().expect("data is the URL");
    let prefix = format!("ws://{}/socket/", node.addr());
    assert!(
        url.starts_with(&prefix),
        "{url} does not start with {prefix}"
    );
    assert!(url.len() > prefix.len(), "{url} carries no token");

    let client = Client::connect(url).await;
    assert_eq!(client.connected["uniqueId"], "user-1");
    node.stop().await;
}

/// Missing or malformed `uniqueId` and `clientType` are refused with 400.
#[tokio::test]
async fn malformed_token_parameters_are_refused_with_400() {
    let node = TestNode::start().await;
    let long_user = "u".repeat(129);
    let long_type = "t".repeat(33);
    let bad = [
        "/websocket/token".to_owned(),
        "/websocket/token?clientType=H5".to_owned(),
        "/websocket/token?uniqueId=user-1".to_owned(),
        token_path("", "H5"),
        token_path("user-1", ""),
        token_path("user%201", "H5"),
        token_path("user/1", "H5"),
        token_path("user%E9", "H5"),
        token_path(&long_user, "H5"),
        token_path("user-1", "H.5"),
        token_path("user-1", "H@5"),
        token_path("user-1", &long_type),
    ];
    let many_tags: Vec<String> = (0..65).map(|i| format!("t{i}")).collect();
    let bad_lists = [
        format!(
            "{}&tags={}",
            token_path("user-1", "H5"),
            many_tags.join(",")
        ),
        format!(
            "{}&businesses={}",
            token_path("user-1", "H5"),
            "b".repeat(129)
        ),
    ];
    for path in bad.iter().chain(&bad_lists) {
        let answer = node.get(path).await;
        assert_refused(&answer, 400);
    }

    // The limits themselves are accepted, with every allowed character.
    let max_user = format!("aZ09._:@-{}", "u".repeat(119));
    let max_type = format!("aZ09_-{}", "t".repeat(26));
    let (status, body) = node.get(&token_path(&max_user, &max_type)).await;
    assert_eq!(status, 200, "{body}");
    node.stop().await;
}

/// With `server.public_url` set, the URL in `data` uses its scheme and
/// authority (`https` becomes `wss`), not the request's host.
#[tokio::test]
async fn token_url_uses_the_configured_public_url() {
    let mut config = test_config();
    config.server.public_url = Some("https://dws.example.com:8086".into());
    let node = TestNode::start_with(config).await;
    let (status, body) = node.get(&token_path("user-1", "H5")).await;
    assert_eq!(status, 200, "{body}");
    let url = body["data"].as_str().expect("data is the URL");
    assert!(
        url.starts_with("wss://dws.example.com:8086/socket/"),
        "{url}"
    );
    node.stop().await;
}

/// With API keys configured, the token endpoint answers 401 without a key or
/// with a wrong one, and 200 with a configured one.
#[tokio::test]
async fn token_endpoint_requires_a_configured_api_key() {
    let mut config = test_config();
    config.auth.api_keys = vec!["key-one".into(), "key-two".into()];
    let node = TestNode::start_with(config).await;
    let path = token_path("user-1", "H5");

    assert_refused(&node.get_as(&path, None).await, 401);
    assert_refused(&node.get_as(&path, Some("key-three")).await, 401);
    assert_refused(&node.get_as(&path, Some("key-on")).await, 401);

    for key in ["key-one", "key-two"] {
        let (status, body) = node.get_as(&path, Some(key)).await;
        assert_eq!(status, 200, "{body}");
        assert_eq!(body["result"], 0, "{body}");
    }
    node.stop().await;
}

/// With API keys configured, `/api/publish` answers 401 without a key or
/// with a wrong one, and accepts the event with a configured one.
#[tokio::test]
async fn publish_requires_a_configured_api_key() {
    let mut config = test_config();
    config.auth.api_keys = vec!["key-one".into()];
    let node = TestNode::start_with(config).await;
    let event = unicast("notice", "user-1", json!({"text": "hi"})).to_string();

    assert_refused(&node.publish_as(event.clone(), None).await, 401);
    assert_refused(&node.publish_as(event.clone(), Some("nope")).await, 401);

    let (status, body) = node.publish_as(event, Some("key-one")).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["result"], 0, "{body}");
    assert!(body["data"]["messageId"].is_string(), "{body}");
    node.stop().await;
}

/// A token whose signature does not match its claims is refused with 401
/// before the upgrade.
#[tokio::test]
async fn tampered_token_is_refused_with_401() {
    let node = TestNode::start().await;
    let url = node.token_url("user-1", "H5", "").await;
    let token = url.rsplit('/').next().expect("URL ends with the token");
    let (payload, signature) = token.split_once('.').expect("token has two parts");

    // Claim another user under the original signature.
    let forged = TokenSigner::new(b"any key at all, it is discarded").sign(&Claims {
        unique_id: "admin".into(),
        ..claims(now_secs() + 60)
    });
    let forged_payload = forged.split_once('.').expect("token has two parts").0;
    let swapped = format!("{forged_payload}.{signature}");

    // Flip one character of the signature.
    let mut flipped = signature.to_owned().into_bytes();
    flipped[0] = if flipped[0] == b'A' { b'B' } else { b'A' };
    let flipped = format!("{payload}.{}", String::from_utf8(flipped).expect("ASCII"));

    for bad in [
        swapped,
        flipped,
        "not-a-token".to_owned(),
        payload.to_owned(),
    ] {
        assert_eq!(Client::refused_status(&node.socket_url(&bad)).await, 401);
    }
    assert_eq!(node.session_count(), 0);
    node.stop().await;
}

/// A correctly signed token past its expiry is refused with 401.
#[tokio::test]
async fn expired_token_is_refused_with_401() {
    let node = TestNode::start().await;
    let signer = TokenSigner::new(TEST_SECRET.as_bytes());

    let expired = signer.sign(&claims(now_secs() - 1));
    assert_eq!(
        Client::refused_status(&node.socket_url(&expired)).await,
        401
    );

    // The same signer's live token connects, so only the expiry differed.
    let live = signer.sign(&claims(now_secs() + 60));
    let client = Client::connect(&node.socket_url(&live)).await;
    assert_eq!(client.connected["uniqueId"], "user-1");
    node.stop().await;
}

/// A token issued with `auth.token_ttl_secs = 1` connects at first and is
/// refused with 401 once its second has passed.
#[tokio::test]
async fn issued_token_expires_after_its_ttl() {
    let mut config = test_config();
    config.auth.token_ttl_secs = 1;
    let node = TestNode::start_with(config).await;
    let url = node.token_url("user-1", "H5", "").await;

    // Poll with fresh upgrades until one is refused; each accepted one is
    // closed again. Expiry is second-granular, so this takes at most ~2 s.
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(5);
    loop {
        match tokio_tungstenite::connect_async(&url).await {
            Ok((mut ws, _)) => {
                let _ = ws.close(None).await;
            }
            Err(tokio_tungstenite::tungstenite::Error::Http(response)) => {
                assert_eq!(response.status().as_u16(), 401);
                break;
            }
            Err(other) => panic!("expected 401, got {other}"),
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the token was still accepted after its TTL"
        );
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    node.stop().await;
}

/// A token signed with another secret is refused with 401.
#[tokio::test]
async fn token_from_another_secret_is_refused_with_401() {
    let node = TestNode::start().await;
    let other = TokenSigner::new(b"another-secret-of-enough-length");
    let token = other.sign(&claims(now_secs() + 60));
    assert_eq!(Client::refused_status(&node.socket_url(&token)).await, 401);
    node.stop().await;
}

/// `/healthz` answers 200 and `/readyz` answers 200 while the node serves.
#[tokio::test]
async fn health_and_readiness_answer_200_while_serving() {
    let node = TestNode::start().await;
    assert_eq!(node.get("/healthz").await.0, 200);
    assert_eq!(node.get("/readyz").await.0, 200);
    node.stop().await;
}

/// A publish body larger than `ws.max_message_bytes` is refused with 413.
#[tokio::test]
async fn oversized_publish_body_is_refused_with_413() {
    let node = TestNode::start().await;
    let big = "x".repeat(70 * 1024);
    let answer = node
        .publish(&unicast("notice", "user-1", json!({ "text": big })))
        .await;
    assert_refused(&answer, 413);
    node.stop().await;
}

/// `/api/publish` refuses a body that is not a valid service event with 400
/// and a non-zero `result`: not JSON, not an object, not a
/// `SERVER_TO_CLIENT`, or without `businessType`.
#[tokio::test]
async fn publish_refuses_malformed_events() {
    let node = TestNode::start().await;
    let mut heartbeat = unicast("notice", "user-1", json!({}));
    heartbeat["messageType"] = json!("HEARTBEAT");
    let mut no_business = unicast("notice", "user-1", json!({}));
    no_business.as_object_mut().unwrap().remove("businessType");
    let mut bad_type = unicast("notice", "user-1", json!({}));
    bad_type["timestamp"] = json!("now");
    let bodies = [
        "{".to_owned(),
        " ".to_owned(),
        "[]".to_owned(),
        json!(["notice"]).to_string(),
        heartbeat.to_string(),
        no_business.to_string(),
        bad_type.to_string(),
    ];
    for body in bodies {
        let answer = node.publish_raw(body.clone()).await;
        assert_eq!(answer.0, 400, "{body:?}: {}", answer.1);
        assert_refused(&answer, 400);
    }
    node.stop().await;
}

/// A producer's own `messageId` is kept: the answer names it and the push
/// carries it.
#[tokio::test]
async fn publish_keeps_the_producers_message_id() {
    let node = TestNode::start().await;
    let mut client = node.connect("user-1", "H5").await;
    let mut notice = unicast("notice", "user-1", json!({"n": 1}));
    notice["messageId"] = json!("producer-id-1");
    assert_eq!(node.publish_ok(&notice).await, "producer-id-1");
    let push = client.recv().await;
    assert_eq!(push["messageId"], "producer-id-1", "{push}");
    assert!(push["timestamp"].is_i64(), "{push}");
    node.stop().await;
}

/// Unknown paths and wrong methods are answered in the same JSON shape.
#[tokio::test]
async fn unknown_paths_answer_in_the_json_shape() {
    let node = TestNode::start().await;
    assert_refused(&node.get("/nope").await, 404);
    assert_refused(&node.get("/api/publish").await, 405);
    node.stop().await;
}

/// The largest subscriptions a token may carry (64 tags and 64 businesses
/// of 128 bytes) still make a token that connects.
#[tokio::test]
async fn largest_allowed_token_connects() {
    let node = TestNode::start().await;
    let names = |prefix: char| {
        (0..64)
            .map(|i| format!("{prefix}{i:03}{}", "x".repeat(124)))
            .collect::<Vec<_>>()
            .join(",")
    };
    let extra = format!("&tags={}&businesses={}", names('t'), names('b'));
    let client = node.connect_with("big-token", "H5", &extra).await;
    assert_eq!(client.connected["tags"].as_array().map(Vec::len), Some(64));
    node.stop().await;
}

/// A GET of a valid socket URL that is not a WebSocket upgrade (no upgrade
/// headers, an unknown upgrade, an old protocol version, no key) is refused
/// with 400 in the JSON shape, and the same token still upgrades.
#[tokio::test]
async fn socket_url_without_a_valid_upgrade_is_refused_with_400() {
    let node = TestNode::start().await;
    let url = node.token_url("user-1", "H5", "").await;
    let http_url = url.replacen("ws://", "http://", 1);
    let good = [
        ("connection", "Upgrade"),
        ("upgrade", "websocket"),
        ("sec-websocket-version", "13"),
        ("sec-websocket-key", "dGhlIHNhbXBsZSBub25jZQ=="),
    ];
    let broken: [&[(&str, &str)]; 4] = [
        &[],
        &[good[0], ("upgrade", "h2c"), good[2], good[3]],
        &[good[0], good[1], ("sec-websocket-version", "8"), good[3]],
        &good[..3],
    ];
    let http = reqwest::Client::new();
    for headers in broken {
        let mut request = http.get(&http_url);
        for (name, value) in headers {
            request = request.header(*name, *value);
        }
        let response = request.send().await.expect("request is answered");
        let status = response.status().as_u16();
        let body: serde_json::Value = response.json().await.expect("JSON answer");
        assert_refused(&(status, body), 400);
    }

    let mut client = Client::connect(&url).await;
    client.assert_alive().await;
    node.stop().await;
}
