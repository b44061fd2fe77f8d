//! Operations: metrics, presence and the spread-out drain.

use std::time::Duration;

use serde_json::json;
use switchboard_tests::{Client, DEADLINE, TestNode, metric, test_config, unicast};

async fn scrape(node: &TestNode) -> String {
    let response = reqwest::get(format!("{}/metrics", node.base()))
        .await
        .expect("metrics reachable");
    assert_eq!(response.status().as_u16(), 200);
    let content_type = response.headers()["content-type"]
        .to_str()
        .unwrap()
        .to_owned();
    assert!(content_type.starts_with("text/plain"), "{content_type}");
    response.text().await.expect("metrics text")
}

/// Polls `/metrics` until `series` reaches `value`, failing after [`DEADLINE`].
async fn wait_for_metric(node: &TestNode, series: &str, value: f64) -> String {
    let deadline = tokio::time::Instant::now() + DEADLINE;
    loop {
        let text = scrape(node).await;
        if metric(&text, series) == value {
            return text;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{series} never reached {value}: {}",
            metric(&text, series)
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Every delta between two scrapes, for the series named.
fn deltas<'a>(before: &str, after: &str, series: &[&'a str]) -> Vec<(&'a str, f64)> {
    series
        .iter()
        .map(|s| (*s, metric(after, s) - metric(before, s)))
        .collect()
}

/// The metrics move when sessions open and close, frames flow, events are
/// published and delivered, and never carry a user id.
#[tokio::test]
async fn metrics_follow_sessions_frames_and_deliveries() {
    let node = TestNode::start().await;
    let before = scrape(&node).await;
    assert_eq!(metric(&before, "switchboard_connections"), 0.0);
    assert_eq!(metric(&before, "switchboard_broker_ready"), 1.0);

    let mut client = node.connect("metrics-user-7731", "H5").await;
    let open = scrape(&node).await;
    assert_eq!(metric(&open, "switchboard_connections"), 1.0);
    assert_eq!(
        metric(&open, r#"switchboard_sessions{client_type="H5"}"#),
        1.0
    );

    let beat = client
        .request_any(json!({"messageId": "m-beat", "messageType": "HEARTBEAT"}))
        .await;
    assert_eq!(beat["messageType"], "HEARTBEAT");
    let (status, _) = node
        .publish(&unicast("notice", "metrics-user-7731", json!({"n": 1})))
        .await;
    assert_eq!(status, 200);
    client.recv_type("SERVER_TO_CLIENT").await;
    let (status, _) = node
        .publish(&unicast("notice", "nobody-here", json!({"n": 2})))
        .await;
    assert_eq!(status, 200);
    client.close_and_wait().await;

    let ended = r#"switchboard_session_ends_total{reason="client_closed"}"#;
    let after = wait_for_metric(&node, ended, 1.0).await;
    // The second event is processed after its publish was confirmed; wait
    // for it to reach the hub too.
    let no_local = r#"switchboard_deliveries_total{outcome="no_local_session"}"#;
    let after = if metric(&after, no_local) == 1.0 {
        after
    } else {
        wait_for_metric(&node, no_local, 1.0).await
    };
    let expected = [
        ("switchboard_tokens_issued_total", 1.0),
        (
            r#"switchboard_frames_received_total{message_type="HEARTBEAT"}"#,
            1.0,
        ),
        (
            r#"switchboard_frames_sent_total{message_type="HEARTBEAT"}"#,
            1.0,
        ),
        (
            r#"switchboard_frames_sent_total{message_type="CONNECTED"}"#,
            1.0,
        ),
        (
            r#"switchboard_frames_sent_total{message_type="SERVER_TO_CLIENT"}"#,
            1.0,
        ),
        (r#"switchboard_deliveries_total{outcome="delivered"}"#, 1.0),
        (no_local, 1.0),
        (
            r#"switchboard_events_published_total{outcome="accepted"}"#,
            2.0,
        ),
        (
            r#"switchboard_broker_publishes_total{outcome="confirmed"}"#,
            2.0,
        ),
        (
            r#"switchboard_handler_duration_seconds_count{business_type="notice",source="event"}"#,
            2.0,
        ),
        (ended, 1.0),
    ];
    let names: Vec<&str> = expected.iter().map(|(s, _)| *s).collect();
    assert_eq!(deltas(&before, &after, &names), expected);
    assert_eq!(metric(&after, "switchboard_connections"), 0.0);
    assert_eq!(
        metric(&after, r#"switchboard_sessions{client_type="H5"}"#),
        0.0
    );
    assert!(
        !after.contains("metrics-user-7731"),
        "a user id leaked into metrics"
    );
    node.stop().await;
}

/// Presence reports a user's sessions per client type on one node, offline
/// before and after, behind the same authenticator as publish.
#[tokio::test]
async fn presence_reports_sessions_per_client_type() {
    let mut config = test_config();
    config.auth.api_keys = vec!["presence-key-0123".into()];
    let node = TestNode::start_with(config).await;

    let (status, body) = node.get("/api/presence?uniqueId=pres-1").await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        body,
        json!({"result": 0, "description": "ok",
               "data": {"uniqueId": "pres-1", "online": false, "sessions": {}}})
    );

    let h5_a = node.connect("pres-1", "H5").await;
    let h5_b = node.connect("pres-1", "H5").await;
    let app = node.connect("pres-1", "APP").await;
    let _other = node.connect("pres-2", "H5").await;
    let (_, body) = node.get("/api/presence?uniqueId=pres-1").await;
    assert_eq!(body["data"]["online"], true);
    assert_eq!(body["data"]["sessions"], json!({"H5": 2, "APP": 1}));

    let anonymous = reqwest::get(format!("{}/api/presence?uniqueId=pres-1", node.base()))
        .await
        .unwrap();
    assert_eq!(anonymous.status().as_u16(), 401);
    let (status, _) = node.get("/api/presence").await;
    assert_eq!(status, 400);
    let (status, _) = node.get("/api/presence?uniqueId=bad%20id").await;
    assert_eq!(status, 400);

    for client in [h5_a, h5_b, app] {
        client.close_and_wait().await;
    }
    let deadline = tokio::time::Instant::now() + DEADLINE;
    loop {
        let (_, body) = node.get("/api/presence?uniqueId=pres-1").await;
        if body["data"]["online"] == false {
            assert_eq!(body["data"]["sessions"], json!({}));
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "still online: {body}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    node.stop().await;
}

/// A drain closes every session with 1001, spread over
/// `server.drain_spread_secs` instead of all at once.
#[tokio::test]
async fn drain_spreads_closes_over_the_window() {
    let mut config = test_config();
    config.server.drain_spread_secs = 2;
    config.server.shutdown_grace_secs = 5;
    let node = TestNode::start_with(config).await;
    let mut clients = Vec::new();
    for i in 0..10 {
        clients.push(node.connect(&format!("drain-{i}"), "H5").await);
    }

    let start = tokio::time::Instant::now();
    node.handle().begin_shutdown();
    let closes = clients.into_iter().map(|mut client: Client| async move {
        let code = client.closed_with().await;
        (code, start.elapsed())
    });
    let closes = futures_util::future::join_all(closes).await;

    assert!(
        closes.iter().all(|(code, _)| *code == Some(1001)),
        "{closes:?}"
    );
    let first = closes.iter().map(|(_, at)| *at).min().unwrap();
    let last = closes.iter().map(|(_, at)| *at).max().unwrap();
    // Ten uniform draws over 2 s all within 300 ms of each other: odds
    // below one in a million.
    assert!(last - first >= Duration::from_millis(300), "{closes:?}");
    assert!(last <= Duration::from_millis(3500), "{closes:?}");
    node.stop().await;
}
