//! A node's life: liveness and readiness, the drain that refuses new work
//! and closes sessions with 1001, and a shutdown that finishes in time.

use std::time::{Duration, Instant};

use serde_json::json;
use switchboard::token::{Claims, TokenSigner, now_secs};
use switchboard_tests::{
    Client, TEST_SECRET, TestNode, assert_refused, event, test_config, unicast,
};

/// While draining, the node answers `/readyz` with 503, refuses tokens,
/// upgrades and published events with 503, closes every session with 1001,
/// and stays live.
///
/// The drain is started on the node itself: `begin_shutdown` also stops the
/// HTTP listener at once, after which no request gets an answer at all.
#[tokio::test]
async fn draining_node_refuses_new_work_and_closes_sessions_with_1001() {
    let node = TestNode::start().await;
    let mut web = node.connect("alice", "H5").await;
    let mut app = node.connect("bob", "APP").await;
    let live_token = TokenSigner::new(TEST_SECRET.as_bytes()).sign(&Claims {
        unique_id: "carol".into(),
        client_type: "H5".into(),
        tags: Vec::new(),
        businesses: Vec::new(),
        expires_at: now_secs() + 60,
        token_id: "drain".into(),
    });
    assert_eq!(node.get("/readyz").await.0, 200);

    node.handle().node().begin_drain();
    assert_eq!(web.closed_with().await, Some(1001));
    assert_eq!(app.closed_with().await, Some(1001));
    node.wait_for_sessions(0).await;

    assert_eq!(node.get("/readyz").await.0, 503);
    assert_eq!(node.get("/healthz").await.0, 200);
    let token = node.get("/websocket/token?uniqueId=u&clientType=H5").await;
    assert_refused(&token, 503);
    let publish = node.publish(&unicast("notice", "alice", json!(1))).await;
    assert_refused(&publish, 503);
    let upgrade = Client::refused_status(&node.socket_url(&live_token)).await;
    assert_eq!(upgrade, 503);

    let stopping = Instant::now();
    node.stop().await;
    assert!(stopping.elapsed() < Duration::from_secs(3));
}

/// `begin_shutdown` closes every session with 1001, `stop` then completes
/// promptly, and the port no longer accepts connections.
#[tokio::test]
async fn shutdown_closes_sessions_with_1001_and_stops() {
    let node = TestNode::start().await;
    let addr = node.addr();
    let mut clients = vec![
        node.connect("alice", "H5").await,
        node.connect("alice", "APP").await,
        node.connect("bob", "H5").await,
    ];

    node.handle().begin_shutdown();
    for client in &mut clients {
        assert_eq!(client.closed_with().await, Some(1001));
    }
    let stopping = Instant::now();
    node.stop().await;
    assert!(
        stopping.elapsed() < Duration::from_secs(3),
        "stop took {:?}",
        stopping.elapsed()
    );
    assert!(
        tokio::net::TcpStream::connect(addr).await.is_err(),
        "the port still accepts connections after stop"
    );
}

/// A drain does not wait for a client that does not read: a session blocked
/// writing to a full socket is ended at once, well within the grace period.
#[tokio::test]
async fn shutdown_does_not_wait_for_a_client_that_never_reads() {
    // About 16 MiB of broadcasts, several times what loopback socket buffers
    // hold, and few enough that the 64-frame send queue never overflows: the
    // non-reading session ends up blocked in a write, not cut as slow.
    const MESSAGES: usize = 16;
    let mut config = test_config();
    config.ws.max_message_bytes = 2 * 1024 * 1024;
    config.ws.send_queue_len = 64;
    let node = TestNode::start_with(config).await;
    let mut reader = node.connect("reader", "H5").await;
    let _stuck = node.connect("stuck", "H5").await;
    let pad = "x".repeat(1024 * 1024);

    for seq in 0..MESSAGES {
        let broadcast = event(
            "notice",
            json!({"sendType": "BROADCAST"}),
            json!({"seq": seq, "pad": pad}),
        );
        let id = node.publish_ok(&broadcast).await;
        assert_eq!(reader.recv().await["messageId"], id.as_str());
    }
    assert_eq!(node.session_count(), 2, "the stuck client was cut as slow");

    let stopping = Instant::now();
    node.stop().await;
    let took = stopping.elapsed();
    assert!(
        took < Duration::from_secs(3),
        "stop waited {took:?} for a client that does not read"
    );
}

/// A plain TCP connection to `node`, for clients that misbehave below HTTP.
async fn raw_connection(node: &TestNode) -> tokio::net::TcpStream {
    tokio::net::TcpStream::connect(node.addr())
        .await
        .expect("connects")
}

/// A client that sends part of a request's headers and then nothing, and
/// one that sends nothing at all, are disconnected once
/// `server.request_timeout_secs` has passed; others are served
/// meanwhile.
#[tokio::test]
async fn slow_or_silent_clients_are_cut_off_at_the_header_timeout() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    let mut config = test_config();
    config.server.request_timeout_secs = 1;
    let node = TestNode::start_with(config).await;
    let mut trickle = raw_connection(&node).await;
    trickle
        .write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n")
        .await
        .expect("writes");
    let mut silent = raw_connection(&node).await;
    assert_eq!(node.get("/healthz").await.0, 200);

    // Closed by the server: the read ends (EOF or reset) well before the
    // deadline; an open connection would wait the whole deadline.
    for (what, stream) in [("trickling", &mut trickle), ("silent", &mut silent)] {
        let mut answer = Vec::new();
        let ended =
            tokio::time::timeout(Duration::from_secs(5), stream.read_to_end(&mut answer)).await;
        assert!(ended.is_ok(), "{what} connection still open after 5 s");
    }
    node.stop().await;
}

/// A request whose body does not arrive in `server.request_timeout_secs` is
/// answered 408 and its connection closed.
#[tokio::test]
async fn withheld_request_body_is_answered_408() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    let mut config = test_config();
    config.server.request_timeout_secs = 1;
    let node = TestNode::start_with(config).await;
    let mut slow = raw_connection(&node).await;
    slow.write_all(
        b"POST /api/publish HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 100\r\n\r\n{",
    )
    .await
    .expect("writes");

    let mut answer = Vec::new();
    let ended = tokio::time::timeout(Duration::from_secs(5), slow.read_to_end(&mut answer)).await;
    assert!(ended.is_ok(), "connection still open after 5 s");
    let answer = String::from_utf8_lossy(&answer);
    assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");
    assert_eq!(node.get("/healthz").await.0, 200);
    node.stop().await;
}

/// A connection that has sent nothing yet does not hold up a drain: it is
/// closed when the drain begins, not when its header timeout or the grace
/// period runs out.
#[tokio::test]
async fn silent_connection_does_not_delay_the_drain() {
    let mut config = test_config();
    config.server.shutdown_grace_secs = 5;
    config.server.request_timeout_secs = 30;
    let node = TestNode::start_with(config).await;
    let silent = raw_connection(&node).await;
    assert_eq!(node.get("/healthz").await.0, 200);

    let stopping = Instant::now();
    node.stop().await;
    let took = stopping.elapsed();
    assert!(
        took < Duration::from_secs(3),
        "stop waited {took:?} for a connection that sent nothing"
    );
    drop(silent);
}

/// A client that stopped halfway through an HTTP request does not hold the
/// drain past `server.shutdown_grace_secs`.
#[tokio::test]
async fn half_sent_request_does_not_hold_the_drain_past_the_grace_period() {
    use tokio::io::AsyncWriteExt;

    let mut config = test_config();
    config.server.shutdown_grace_secs = 1;
    let node = TestNode::start_with(config).await;
    let mut half = raw_connection(&node).await;
    half.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n")
        .await
        .expect("writes");
    // The request is in flight once the server has read its first bytes;
    // a full request on another connection is answered after them.
    assert_eq!(node.get("/healthz").await.0, 200);

    let stopping = Instant::now();
    node.stop().await;
    let took = stopping.elapsed();
    assert!(
        took < Duration::from_secs(4),
        "stop waited {took:?} for a half-sent request"
    );
    drop(half);
}
