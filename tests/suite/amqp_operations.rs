//! Presence and broker metrics with several nodes on one RabbitMQ.

use std::time::Duration;

use serde_json::{Value, json};
use switchboard::broker::amqp::presence_query::ANSWER_WINDOW;
use switchboard_tests::broker::{
    amqp_config, broker_available, publish_raw, raw_channel, take_dead_letters, unique,
};
use switchboard_tests::{DEADLINE, TestNode, metric};

async fn cluster(nodes: usize) -> Vec<TestNode> {
    let mut started = Vec::new();
    for _ in 0..nodes {
        started.push(TestNode::start_with(amqp_config()).await);
    }
    started
}

async fn stop(nodes: Vec<TestNode>) {
    for node in nodes {
        node.stop().await;
    }
}

/// The `data` of `GET /api/presence?uniqueId=<user>` on `node`. A 503
/// (the broker connection dropped mid-question, as other test binaries'
/// fault tests force on the shared broker) is asked again until
/// [`DEADLINE`].
async fn presence(node: &TestNode, user: &str) -> Value {
    let deadline = tokio::time::Instant::now() + DEADLINE;
    loop {
        let (status, body) = node.get(&format!("/api/presence?uniqueId={user}")).await;
        if status == 503 && tokio::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(100)).await;
            continue;
        }
        assert_eq!(status, 200, "{body}");
        return body["data"].clone();
    }
}

/// Presence asked on any node counts the user's sessions per client type
/// on every node, the asking node's own once.
#[tokio::test]
async fn presence_counts_sessions_per_client_type_on_every_node() {
    if !broker_available().await {
        return;
    }
    let nodes = cluster(3).await;
    let user = unique("user");
    let _web = nodes[0].connect(&user, "H5").await;
    let _app = nodes[1].connect(&user, "APP").await;

    let both = json!({"H5": 1, "APP": 1});
    for node in &nodes {
        let data = presence(node, &user).await;
        assert_eq!(data["online"], true, "{data}");
        assert_eq!(data["sessions"], both, "{data}");
    }

    let _web_again = nodes[0].connect(&user, "H5").await;
    let data = presence(&nodes[2], &user).await;
    assert_eq!(data["sessions"], json!({"H5": 2, "APP": 1}), "{data}");
    let data = presence(&nodes[0], &user).await;
    assert_eq!(data["sessions"], json!({"H5": 2, "APP": 1}), "{data}");
    stop(nodes).await;
}

/// A user connected only to the asking node is counted once.
#[tokio::test]
async fn presence_of_a_user_on_the_asking_node_alone_counts_once() {
    if !broker_available().await {
        return;
    }
    let nodes = cluster(2).await;
    let user = unique("user");
    let _web = nodes[0].connect(&user, "H5").await;

    let data = presence(&nodes[0], &user).await;
    assert_eq!(data["sessions"], json!({"H5": 1}), "{data}");
    let data = presence(&nodes[1], &user).await;
    assert_eq!(data["sessions"], json!({"H5": 1}), "{data}");
    stop(nodes).await;
}

/// A user online nowhere is reported offline without waiting for answers:
/// the question comes back unrouted.
#[tokio::test]
async fn presence_of_an_offline_user_answers_without_waiting() {
    if !broker_available().await {
        return;
    }
    let nodes = cluster(2).await;
    let expected = json!({"uniqueId": "", "online": false, "sessions": {}});

    // The first request opens the HTTP connection; time the later ones.
    presence(&nodes[0], &unique("nobody")).await;
    for _ in 0..3 {
        let user = unique("nobody");
        let started = tokio::time::Instant::now();
        let data = presence(&nodes[0], &user).await;
        let took = started.elapsed();
        let mut want = expected.clone();
        want["uniqueId"] = json!(user);
        assert_eq!(data, want);
        assert!(took < ANSWER_WINDOW, "offline answer took {took:?}");
    }
    stop(nodes).await;
}

const DEAD_LETTERS: &str = "switchboard_broker_dead_letters_total";
const CONFIRMED: &str = r#"switchboard_broker_publishes_total{outcome="confirmed"}"#;

/// The value of `series` on `node`.
async fn series(node: &TestNode, series: &str) -> f64 {
    let response = reqwest::get(format!("{}/metrics", node.base()))
        .await
        .expect("metrics reachable");
    metric(&response.text().await.expect("metrics text"), series)
}

/// Waits until `series` on `node` exceeds `above`, failing after
/// [`DEADLINE`].
async fn wait_above(node: &TestNode, name: &str, above: f64) {
    let deadline = tokio::time::Instant::now() + DEADLINE;
    loop {
        let now = series(node, name).await;
        if now > above {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{name} stayed at {now}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// An event dead-lettered through RabbitMQ moves the dead-letter and
/// confirmed-publish counters of the node that dead-lettered it.
#[tokio::test]
async fn dead_lettered_event_moves_the_broker_counters_of_its_node() {
    if !broker_available().await {
        return;
    }
    let nodes = cluster(2).await;
    let ids: Vec<String> = nodes
        .iter()
        .map(|node| node.handle().node().node_id().to_owned())
        .collect();
    let (connection, channel) = raw_channel().await;

    // Nodes of other tests consume the same inbound queue: publish until
    // one of this test's nodes dead-letters an event, as its header says.
    for _ in 0..20 {
        let before: Vec<(f64, f64)> = {
            let mut counts = Vec::new();
            for node in &nodes {
                counts.push((
                    series(node, DEAD_LETTERS).await,
                    series(node, CONFIRMED).await,
                ));
            }
            counts
        };
        let id = unique("msg");
        let nobody = unique("nobody");
        let body = json!({"businessType": nobody, "toUniqueId": "x"}).to_string();
        publish_raw(&channel, &nobody, body.as_bytes(), Some(&id)).await;
        let letters = take_dead_letters(std::slice::from_ref(&id), DEADLINE).await;
        let letter = letters.get(&id).expect("the event is dead-lettered");
        let Some(at) = ids.iter().position(|n| letter.node.as_deref() == Some(n)) else {
            continue;
        };
        let (dead, confirmed) = before[at];
        wait_above(&nodes[at], DEAD_LETTERS, dead).await;
        wait_above(&nodes[at], CONFIRMED, confirmed).await;
        let _ = connection.close(200, "done".into()).await;
        stop(nodes).await;
        return;
    }
    panic!("no event was dead-lettered by this test's nodes");
}
