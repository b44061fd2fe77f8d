//! Several nodes in one process, one RabbitMQ: every session gets exactly
//! one copy of what is addressed to it, whichever node it is on and
//! whichever node processed the event.

use std::time::Duration;

use serde_json::{Value, json};
use switchboard_tests::broker::{amqp_config, broker_available, unique};
use switchboard_tests::{Client, TestNode};

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

/// Receives one push with `messageId` = `id`, then asserts nothing more.
async fn expect_once(client: &mut Client, id: &str) -> Value {
    let push = client.recv_type("SERVER_TO_CLIENT").await;
    assert_eq!(push["messageId"], id, "unexpected push {push}");
    client.expect_silence().await;
    push
}

async fn publish(node: &TestNode, event: Value) -> String {
    let (status, body) = node.publish(&event).await;
    assert_eq!(status, 200, "{body}");
    body["data"]["messageId"].as_str().unwrap().to_owned()
}

/// A UNICAST reaches each session of the user on two other nodes once,
/// and `toClientType` narrows it to one of them.
#[tokio::test]
async fn unicast_reaches_each_session_of_the_user_across_nodes_once() {
    if !broker_available().await {
        return;
    }
    let nodes = cluster(3).await;
    let user = unique("user");
    let other = unique("user");
    let mut web = nodes[0].connect(&user, "H5").await;
    let mut app = nodes[1].connect(&user, "APP").await;
    let mut bystander = nodes[2].connect(&other, "H5").await;

    let event = json!({"businessType": "notice", "toUniqueId": user, "content": {"n": 1}});
    let id = publish(&nodes[2], event).await;
    expect_once(&mut web, &id).await;
    expect_once(&mut app, &id).await;
    bystander.expect_silence().await;

    let narrowed = json!({
        "businessType": "notice", "toUniqueId": user, "toClientType": "APP", "content": {},
    });
    let id = publish(&nodes[0], narrowed).await;
    expect_once(&mut app, &id).await;
    web.expect_silence().await;
    stop(nodes).await;
}

/// TAG, BUSINESS and BROADCAST sends reach each matching session on every
/// node once, a session matching two tags included.
#[tokio::test]
async fn tag_business_and_broadcast_reach_each_session_once() {
    if !broker_available().await {
        return;
    }
    let nodes = cluster(3).await;
    // A client type of this test alone, so the broadcast stays here.
    let kind = unique("ct").replace('-', "_");
    let (t1, t2, biz) = (unique("tag"), unique("tag"), unique("biz"));
    let mut both = nodes[0]
        .connect_with(&unique("u"), &kind, &format!("&tags={t1},{t2}"))
        .await;
    let mut one = nodes[1]
        .connect_with(&unique("u"), &kind, &format!("&tags={t1}&businesses={biz}"))
        .await;
    let mut none = nodes[2].connect(&unique("u"), &kind).await;

    let tag = json!({"businessType": "notice", "sendType": "TAG", "tags": [t1, t2]});
    let id = publish(&nodes[2], tag).await;
    expect_once(&mut both, &id).await;
    expect_once(&mut one, &id).await;
    none.expect_silence().await;

    let business = json!({"businessType": "notice", "sendType": "BUSINESS", "businesses": [biz]});
    let id = publish(&nodes[0], business).await;
    expect_once(&mut one, &id).await;
    both.expect_silence().await;
    none.expect_silence().await;

    let broadcast =
        json!({"businessType": "notice", "sendType": "BROADCAST", "toClientType": kind});
    let id = publish(&nodes[1], broadcast).await;
    expect_once(&mut both, &id).await;
    expect_once(&mut one, &id).await;
    expect_once(&mut none, &id).await;
    stop(nodes).await;
}

/// A page update from a session on one node reaches the target's sessions
/// on two other nodes once, with the sender's identity set by the server.
#[tokio::test]
async fn page_update_crosses_nodes_once() {
    if !broker_available().await {
        return;
    }
    let nodes = cluster(3).await;
    let (sender, target) = (unique("sender"), unique("target"));
    let mut from = nodes[0].connect(&sender, "H5").await;
    let mut to_web = nodes[1].connect(&target, "H5").await;
    let mut to_app = nodes[2].connect(&target, "APP").await;

    let id = unique("msg");
    let ack = from
        .request(json!({
            "messageId": id,
            "messageType": "CLIENT_TO_CLIENT",
            "businessType": "page_update",
            "toUniqueId": target,
            "fromUniqueId": "forged",
            "content": {"page": 2},
        }))
        .await;
    assert_eq!(ack["messageType"], "ACK", "{ack}");
    for client in [&mut to_web, &mut to_app] {
        let relayed = client.recv_type("CLIENT_TO_CLIENT").await;
        assert_eq!(relayed["messageId"], id.as_str());
        assert_eq!(relayed["fromUniqueId"], sender.as_str());
        assert_eq!(relayed["content"]["page"], 2);
        client.expect_silence().await;
    }
    from.expect_silence().await;
    stop(nodes).await;
}

/// A QR refresh is answered on the requesting session only, though the
/// same user is connected to another node too.
#[tokio::test]
async fn qr_refresh_answers_only_the_requesting_session() {
    if !broker_available().await {
        return;
    }
    let nodes = cluster(2).await;
    let user = unique("user");
    let mut asking = nodes[0].connect(&user, "H5").await;
    let mut other = nodes[1].connect(&user, "H5").await;

    let id = unique("msg");
    let ack = asking
        .request(json!({
            "messageId": id,
            "messageType": "CLIENT_TO_SERVER",
            "businessType": "qr_refresh",
        }))
        .await;
    assert_eq!(ack["messageType"], "ACK", "{ack}");
    let reply = asking.recv_type("SERVER_TO_CLIENT").await;
    assert_eq!(reply["correlationId"], id.as_str());
    assert!(reply["content"]["ticket"].is_string());
    asking.expect_silence().await;
    other.expect_silence().await;
    stop(nodes).await;
}

/// A user who leaves a node stops receiving there, and the binding follows
/// them when they come back on another node.
#[tokio::test]
async fn routing_follows_a_user_who_moves_between_nodes() {
    if !broker_available().await {
        return;
    }
    let nodes = cluster(2).await;
    let user = unique("user");
    let first = nodes[0].connect(&user, "H5").await;
    drop(first);
    let mut second = nodes[1].connect(&user, "H5").await;

    let event = json!({"businessType": "notice", "toUniqueId": user, "content": {}});
    let id = publish(&nodes[0], event).await;
    expect_once(&mut second, &id).await;
    stop(nodes).await;
}

/// A token's cluster-wide record: the first claim wins, and every later
/// one is refused, whether it declares the record with another lifetime
/// (time passed between the claims: RabbitMQ refuses the declaration) or
/// with the same one (the one-slot queue refuses the second marker).
#[tokio::test]
async fn token_records_refuse_every_later_claim() {
    use switchboard::broker::amqp::tokens::claim;
    use switchboard_client::{Connector, ConnectorSettings};
    if !broker_available().await {
        return;
    }
    let connector = Connector::start(
        &switchboard_tests::amqp_url(),
        ConnectorSettings::default(),
        None,
    )
    .expect("valid URL");
    connector
        .wait_ready(Duration::from_secs(10))
        .await
        .expect("connects");
    let token = unique("token");
    let timeout = Duration::from_secs(10);
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("after 1970")
        .as_secs();

    let first = claim(&connector, &token, now + 60, timeout).await;
    assert!(first.expect("first claim answered"), "first claim wins");
    let longer = claim(&connector, &token, now + 600, timeout).await;
    assert!(
        !longer.expect("claim answered"),
        "another lifetime is refused"
    );
    let again = claim(&connector, &token, now + 60, timeout).await;
    assert!(
        !again.expect("claim answered"),
        "the same lifetime is refused"
    );
    connector.close().await;
}

/// A token used on one node is refused with 401 on every other node, and
/// a fresh token still connects anywhere.
#[tokio::test]
async fn token_used_on_one_node_is_refused_on_another() {
    if !broker_available().await {
        return;
    }
    let nodes = cluster(2).await;
    let user = unique("user");
    let on = |node: &TestNode, url: &str| {
        let path = url
            .split_once("/socket/")
            .map(|(_, token)| token)
            .unwrap_or_default();
        format!("ws://{}/socket/{path}", node.addr())
    };

    let url = nodes[0].token_url(&user, "H5", "").await;
    let _first = Client::try_connect(&on(&nodes[0], &url), None)
        .await
        .expect("first use");
    assert_eq!(
        Client::try_connect(&on(&nodes[1], &url), None).await.err(),
        Some(401)
    );
    assert_eq!(
        Client::try_connect(&on(&nodes[0], &url), None).await.err(),
        Some(401)
    );

    let fresh = nodes[0].token_url(&user, "H5", "").await;
    let _second = Client::try_connect(&on(&nodes[1], &fresh), None)
        .await
        .expect("fresh token");
    stop(nodes).await;
}
