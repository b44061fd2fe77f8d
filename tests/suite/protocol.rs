//! The session protocol: `CONNECTED`, heartbeats, pings, the idle timeout,
//! answers and their correlation, and the server-set sender identity.

use std::time::{Duration, Instant};

use serde_json::json;
use switchboard_tests::{DEADLINE, TestNode, assert_ack, assert_error, frame, new_id, test_config};
use tokio_tungstenite::tungstenite::Message;

/// A node whose sessions are pinged every second and dropped after two
/// silent seconds.
async fn fast_timers_node() -> TestNode {
    let mut config = test_config();
    config.ws.ping_interval_secs = 1;
    config.ws.idle_timeout_secs = 2;
    TestNode::start_with(config).await
}

/// The first frame is `CONNECTED`, naming the session, the user, the client
/// type and the heartbeat settings.
#[tokio::test]
async fn connected_is_the_first_frame_and_names_the_session() {
    let node = TestNode::start().await;
    let first = node.connect("user-1", "H5").await;
    let second = node.connect("user-1", "H5").await;

    let content = &first.connected;
    assert!(!first.session_id().is_empty(), "{content}");
    assert_ne!(first.session_id(), second.session_id());
    assert_eq!(content["uniqueId"], "user-1");
    assert_eq!(content["clientType"], "H5");
    assert_eq!(content["pingIntervalSecs"], 20, "{content}");
    assert_eq!(content["idleTimeoutSecs"], 60, "{content}");
    node.stop().await;
}

/// A `HEARTBEAT` is answered with a `HEARTBEAT` whose `correlationId` names
/// it.
#[tokio::test]
async fn heartbeat_is_answered_with_heartbeat() {
    let node = TestNode::start().await;
    let mut client = node.connect("user-1", "H5").await;
    let beat = frame("HEARTBEAT", json!({}));
    client.send(&beat).await;
    let answer = client.recv().await;
    assert_eq!(answer["messageType"], "HEARTBEAT", "{answer}");
    assert_eq!(answer["correlationId"], beat["messageId"], "{answer}");
    assert!(answer["timestamp"].is_i64(), "{answer}");
    node.stop().await;
}

/// The server pings at `ws.ping_interval_secs`.
#[tokio::test]
async fn server_pings_at_the_configured_interval() {
    let node = fast_timers_node().await;
    let mut client = node.connect("user-1", "H5").await;
    let started = Instant::now();
    client.recv_ping().await;
    client.recv_ping().await;
    let elapsed = started.elapsed();
    assert!(
        elapsed >= Duration::from_millis(1500) && elapsed < Duration::from_secs(4),
        "two pings took {elapsed:?} at a 1 s interval"
    );
    node.stop().await;
}

/// A client that reads (and so answers pings with pongs) outlives the idle
/// timeout without sending anything else.
#[tokio::test]
async fn pongs_keep_a_reading_client_connected() {
    let node = fast_timers_node().await;
    let mut client = node.connect("user-1", "H5").await;

    // Read for longer than the idle timeout: only pings arrive, and reading
    // answers them.
    let event = client.next_event_within(Duration::from_millis(3500)).await;
    assert!(event.is_none(), "expected only pings, got {event:?}");
    client.assert_alive().await;
    assert_eq!(node.session_count(), 1);
    node.stop().await;
}

/// A client that sends nothing, pongs included, is dropped after
/// `ws.idle_timeout_secs` with close code 4000.
///
/// The client is never polled while it waits: a WebSocket client answers
/// pings only while it reads, so not polling it is how a dead peer looks to
/// the server. The session's removal is observed on the node; afterwards the
/// client reads the pings that piled up and then the close frame. Should the
/// connection be gone before the close frame is read, that still proves the
/// drop.
#[tokio::test]
async fn silent_client_is_dropped_after_the_idle_timeout() {
    let node = fast_timers_node().await;
    let mut client = node.connect("user-1", "H5").await;
    let connected = Instant::now();

    node.wait_for_sessions(0).await;
    let elapsed = connected.elapsed();
    assert!(
        elapsed >= Duration::from_millis(1800),
        "dropped after {elapsed:?}, before the 2 s idle timeout"
    );
    let code = client.closed_with().await;
    assert!(matches!(code, Some(4000) | None), "closed with {code:?}");
    node.stop().await;
}

/// `ACK` and `ERROR` carry the request's `messageId` as `correlationId`.
#[tokio::test]
async fn answers_name_the_request_in_correlation_id() {
    let node = TestNode::start().await;
    let mut client = node.connect("user-1", "H5").await;

    let subscribe = frame("SUBSCRIBE", json!({"tags": ["t"]}));
    let id = subscribe["messageId"].as_str().unwrap().to_owned();
    client.send(&subscribe).await;
    let answer = client.recv().await;
    assert_ack(&answer, &id);
    assert!(answer["messageId"].is_string(), "{answer}");
    assert_ne!(answer["messageId"], id.as_str(), "{answer}");

    let request = frame("CLIENT_TO_SERVER", json!({"businessType": "no_such_type"}));
    let id = request["messageId"].as_str().unwrap().to_owned();
    client.send(&request).await;
    let answer = client.recv().await;
    assert_error(&answer, "UNKNOWN_BUSINESS_TYPE");
    assert_eq!(answer["correlationId"], id.as_str());
    node.stop().await;
}

/// A client frame without `messageId` is given one, which its answer names.
#[tokio::test]
async fn server_assigns_a_message_id_where_absent() {
    let node = TestNode::start().await;
    let mut client = node.connect("user-1", "H5").await;

    let mut ids = Vec::new();
    for message_type in ["SUBSCRIBE", "HEARTBEAT", "SUBSCRIBE"] {
        client
            .send(&json!({"messageType": message_type, "tags": ["t"]}))
            .await;
        let answer = client.recv().await;
        let id = answer["correlationId"].as_str().unwrap_or("").to_owned();
        assert!(!id.is_empty(), "answer names no assigned id: {answer}");
        ids.push(id);
    }
    ids.sort();
    ids.dedup();
    assert_eq!(ids.len(), 3, "assigned ids repeat: {ids:?}");
    node.stop().await;
}

/// The sender's `fromUniqueId` and `fromClientType` are set from its session;
/// what the client wrote is discarded.
#[tokio::test]
async fn client_cannot_forge_its_sender_identity() {
    let node = TestNode::start().await;
    let mut sender = node.connect("alice", "H5").await;
    let mut receiver = node.connect("bob", "APP").await;

    let relay = frame(
        "CLIENT_TO_CLIENT",
        json!({
            "businessType": "page_update",
            "sendType": "UNICAST",
            "toUniqueId": "bob",
            "fromUniqueId": "admin",
            "fromClientType": "service",
            "content": {"page": "cart"},
        }),
    );
    sender.request_ok(relay.clone()).await;

    let got = receiver.recv().await;
    assert_eq!(got["messageId"], relay["messageId"], "{got}");
    assert_eq!(got["fromUniqueId"], "alice", "{got}");
    assert_eq!(got["fromClientType"], "H5", "{got}");
    node.stop().await;
}

/// A client's `ACK` of a delivery is accepted without an answer.
#[tokio::test]
async fn client_ack_is_accepted_silently() {
    let node = TestNode::start().await;
    let mut client = node.connect("user-1", "H5").await;
    client
        .send(&frame("ACK", json!({"correlationId": new_id("delivery")})))
        .await;
    client.expect_silence().await;
    client.assert_alive().await;
    node.stop().await;
}

/// A client's close frame is answered with a close frame, and the session
/// is removed.
#[tokio::test]
async fn client_close_is_answered_and_the_session_removed() {
    let node = TestNode::start().await;
    let mut client = node.connect("user-1", "H5").await;
    client.close().await;
    assert_eq!(client.closed_with().await, Some(1000));
    node.wait_for_sessions(0).await;
    node.stop().await;
}

/// Sessions of one user are independent: closing one leaves the other
/// served.
#[tokio::test]
async fn closing_one_session_leaves_the_users_others_served() {
    let node = TestNode::start().await;
    let mut first = node.connect("user-1", "H5").await;
    let mut second = node.connect("user-1", "APP").await;
    first.close().await;
    node.wait_for_sessions(1).await;
    second.assert_alive().await;
    assert!(node.handle().node().hub().has_user("user-1"));
    node.stop().await;
}

/// A client's WebSocket ping is answered with a pong carrying its payload.
#[tokio::test]
async fn client_ping_is_answered_with_pong() {
    let node = TestNode::start().await;
    let mut client = node.connect("user-1", "H5").await;
    client
        .send_message(Message::Ping(b"probe".to_vec().into()))
        .await;
    match client.next_frame_within(DEADLINE).await {
        Some(Some(Message::Pong(payload))) => assert_eq!(&payload[..], b"probe"),
        other => panic!("expected a pong, got {other:?}"),
    }
    client.assert_alive().await;
    node.stop().await;
}
