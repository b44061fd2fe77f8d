//! Reliable pushes (`payment_callback`): kept for offline users, delivered
//! to every session of the user, settled by the client's `ACK`, redelivered
//! with the same `messageId` until then, in order. Against RabbitMQ with
//! several nodes in one process, and on the embedded broker.

use std::time::Duration;

use serde_json::{Value, json};
use switchboard_tests::broker::{
    broker_available, reliable_amqp_config, unique, wait_inbox_messages,
};
use switchboard_tests::{Client, TestNode, frame, new_id, test_config};

/// A payment result for `user`, with `n` in its content.
pub(crate) fn payment(user: &str, n: usize) -> Value {
    json!({
        "businessType": "payment_callback",
        "toUniqueId": user,
        "content": {"orderId": format!("order-{n}"), "status": "PAID", "n": n},
    })
}

/// The next push the client receives.
pub(crate) async fn recv_push(client: &mut Client) -> Value {
    client.recv_type("SERVER_TO_CLIENT").await
}

/// Sends the receipt of the push `message_id`.
pub(crate) async fn ack(client: &mut Client, message_id: &str) {
    client
        .send(&frame("ACK", json!({"correlationId": message_id})))
        .await;
}

/// Receives the next push, asserts its id, and acknowledges it.
async fn recv_and_ack(client: &mut Client, message_id: &str) {
    let push = recv_push(client).await;
    assert_eq!(push["messageId"], message_id, "unexpected push {push}");
    ack(client, message_id).await;
}

async fn cluster(nodes: usize) -> Vec<TestNode> {
    let mut started = Vec::new();
    for _ in 0..nodes {
        started.push(TestNode::start_with(reliable_amqp_config()).await);
    }
    started
}

/// Closes a client and waits until its node has let the session go.
async fn leave(node: &TestNode, client: &mut Client, remaining: usize) {
    client.close().await;
    node.wait_for_sessions(remaining).await;
}

/// A push to an offline user waits in RabbitMQ, reaches the user on
/// whichever node they connect to, and after the ACK never comes again.
#[tokio::test]
async fn amqp_offline_push_arrives_on_connect_and_not_again_after_ack() {
    if !broker_available().await {
        return;
    }
    let nodes = cluster(2).await;
    let user = unique("payer");
    let id = nodes[0].publish_ok(&payment(&user, 1)).await;
    wait_inbox_messages(&user, 1, Duration::from_secs(10)).await;

    let mut client = nodes[1].connect(&user, "H5").await;
    recv_and_ack(&mut client, &id).await;
    wait_inbox_messages(&user, 0, Duration::from_secs(10)).await;
    leave(&nodes[1], &mut client, 0).await;

    let mut again = nodes[0].connect(&user, "H5").await;
    nodes[0].assert_nothing_delivered(&mut again).await;
}

/// A push that was not acknowledged comes again, with the same messageId,
/// when the user reconnects to another node.
#[tokio::test]
async fn amqp_unacked_push_is_redelivered_on_another_node() {
    if !broker_available().await {
        return;
    }
    let nodes = cluster(2).await;
    let user = unique("payer");
    let mut first = nodes[0].connect(&user, "H5").await;
    let id = nodes[1].publish_ok(&payment(&user, 1)).await;
    let push = recv_push(&mut first).await;
    assert_eq!(push["messageId"], id);
    leave(&nodes[0], &mut first, 0).await;

    let mut second = nodes[1].connect(&user, "APP").await;
    recv_and_ack(&mut second, &id).await;
    second.expect_silence().await;
}

/// 500 pushes published in order reach the user in that order, each once,
/// while the client acknowledges as it reads.
#[tokio::test]
async fn amqp_burst_of_500_pushes_arrives_in_order() {
    if !broker_available().await {
        return;
    }
    let nodes = cluster(2).await;
    let user = unique("payer");
    let mut client = nodes[1].connect(&user, "H5").await;
    let mut ids = Vec::new();
    for n in 0..500 {
        ids.push(nodes[0].publish_ok(&payment(&user, n)).await);
    }
    for id in &ids {
        recv_and_ack(&mut client, id).await;
    }
    nodes[1].assert_nothing_delivered(&mut client).await;
}

/// A service publishing 300 pushes for one user straight to the
/// `switchboard.inbound` exchange, pipelined with confirms, reaches the user
/// in publication order, whichever of the nodes processes the events.
#[tokio::test]
async fn amqp_pushes_from_one_amqp_producer_arrive_in_publication_order() {
    use switchboard_protocol::amqp;
    use switchboard_tests::broker::raw_channel;

    if !broker_available().await {
        return;
    }
    let nodes = cluster(2).await;
    let user = unique("payer");
    let mut client = nodes[1].connect(&user, "H5").await;

    let (_connection, channel) = raw_channel().await;
    let mut confirms = Vec::new();
    let mut ids = Vec::new();
    for n in 0..300 {
        let id = format!("{user}-{n}");
        let mut body = payment(&user, n);
        body["messageId"] = json!(id);
        let properties = lapin::BasicProperties::default()
            .with_content_type(amqp::CONTENT_TYPE_JSON.into())
            .with_delivery_mode(amqp::PERSISTENT)
            .with_message_id(id.as_str().into());
        let confirm = channel
            .basic_publish(
                amqp::INBOUND_EXCHANGE.into(),
                "payment_callback".into(),
                lapin::options::BasicPublishOptions::default(),
                body.to_string().as_bytes(),
                properties,
            )
            .await
            .expect("publish sent");
        confirms.push(confirm);
        ids.push(id);
    }
    for confirm in confirms {
        assert!(confirm.await.expect("confirmed").is_ack());
    }
    for id in &ids {
        recv_and_ack(&mut client, id).await;
    }
    nodes[1].assert_nothing_delivered(&mut client).await;
}

/// A user with a session on each of two nodes gets the push on both, and
/// one ACK settles it for both: neither gets it again after reconnecting.
#[tokio::test]
async fn amqp_two_sessions_on_two_nodes_get_the_push_and_one_ack_settles_it() {
    if !broker_available().await {
        return;
    }
    let nodes = cluster(3).await;
    let user = unique("payer");
    let mut web = nodes[0].connect(&user, "H5").await;
    let mut app = nodes[1].connect(&user, "APP").await;
    let id = nodes[2].publish_ok(&payment(&user, 1)).await;
    assert_eq!(recv_push(&mut web).await["messageId"], id);
    assert_eq!(recv_push(&mut app).await["messageId"], id);

    // The receipt from one session settles the push for the user, whichever
    // node consumes the inbox.
    ack(&mut app, &id).await;
    wait_inbox_messages(&user, 0, Duration::from_secs(10)).await;
    leave(&nodes[0], &mut web, 0).await;
    leave(&nodes[1], &mut app, 0).await;

    let mut web = nodes[1].connect(&user, "H5").await;
    let mut app = nodes[0].connect(&user, "APP").await;
    nodes[1].assert_nothing_delivered(&mut web).await;
    nodes[0].assert_nothing_delivered(&mut app).await;
}

/// Embedded broker: a push to an offline user arrives when the user
/// connects, and after the ACK not again.
#[tokio::test]
async fn embedded_offline_push_arrives_on_connect_and_not_again_after_ack() {
    let node = TestNode::start().await;
    let user = new_id("payer");
    let id = node.publish_ok(&payment(&user, 1)).await;

    let mut client = node.connect(&user, "H5").await;
    recv_and_ack(&mut client, &id).await;
    node.assert_nothing_delivered(&mut client).await;
    leave(&node, &mut client, 0).await;

    let mut again = node.connect(&user, "H5").await;
    node.assert_nothing_delivered(&mut again).await;
}

/// Embedded broker: a push not acknowledged comes again, same messageId,
/// when the user reconnects.
#[tokio::test]
async fn embedded_unacked_push_is_redelivered_on_reconnect() {
    let node = TestNode::start().await;
    let user = new_id("payer");
    let mut first = node.connect(&user, "H5").await;
    let id = node.publish_ok(&payment(&user, 1)).await;
    assert_eq!(recv_push(&mut first).await["messageId"], id);
    leave(&node, &mut first, 0).await;

    let mut second = node.connect(&user, "H5").await;
    recv_and_ack(&mut second, &id).await;
    node.assert_nothing_delivered(&mut second).await;
}

/// Embedded broker: 500 pushes arrive in order, each once.
#[tokio::test]
async fn embedded_burst_of_500_pushes_arrives_in_order() {
    let node = TestNode::start().await;
    let user = new_id("payer");
    let mut client = node.connect(&user, "H5").await;
    let mut ids = Vec::new();
    for n in 0..500 {
        ids.push(node.publish_ok(&payment(&user, n)).await);
    }
    for id in &ids {
        recv_and_ack(&mut client, id).await;
    }
    node.assert_nothing_delivered(&mut client).await;
}

/// Embedded broker: two sessions of a user both get the push; one ACK
/// settles it for both.
#[tokio::test]
async fn embedded_two_sessions_get_the_push_and_one_ack_settles_it() {
    let node = TestNode::start_with(test_config()).await;
    let user = new_id("payer");
    let mut web = node.connect(&user, "H5").await;
    let mut app = node.connect(&user, "APP").await;
    let id = node.publish_ok(&payment(&user, 1)).await;
    assert_eq!(recv_push(&mut web).await["messageId"], id);
    assert_eq!(recv_and_ack_id(&mut app).await, id);
    node.assert_nothing_delivered(&mut app).await;
    leave(&node, &mut web, 1).await;
    leave(&node, &mut app, 0).await;

    let mut web = node.connect(&user, "H5").await;
    node.assert_nothing_delivered(&mut web).await;
}

/// Receives a push, acknowledges it, and returns its messageId.
async fn recv_and_ack_id(client: &mut Client) -> String {
    let push = recv_push(client).await;
    let id = push["messageId"]
        .as_str()
        .expect("push has an id")
        .to_owned();
    ack(client, &id).await;
    id
}

/// A client that never reads holds at most `reliable.max_in_flight_per_user`
/// pushes on its node (the rest wait in RabbitMQ), is cut as a slow client
/// (4001, or no close frame when its socket is full) once the window's bytes
/// back up, loses nothing, and another user is served meanwhile.
#[tokio::test]
async fn amqp_client_that_never_reads_is_bounded_by_the_window_and_cut() {
    const WINDOW: u16 = 32;
    const PUSHES: usize = 48;
    if !broker_available().await {
        return;
    }
    let mut config = reliable_amqp_config();
    config.reliable.max_in_flight_per_user = WINDOW;
    config.ws.max_message_bytes = 2 * 1024 * 1024;
    let node = TestNode::start_with(config).await;
    let slow_user = unique("slow");
    let other_user = unique("payer");
    let mut slow = node.connect(&slow_user, "H5").await;
    let mut other = node.connect(&other_user, "H5").await;

    // About 1 MiB a push: the window's bytes are more than the sockets
    // buffer, so the session's writes stall.
    let pad = "x".repeat(1024 * 1024);
    for n in 0..PUSHES {
        let mut event = payment(&slow_user, n);
        event["content"]["pad"] = json!(pad);
        node.publish_ok(&event).await;
    }
    let (ready, unacked) = switchboard_tests::broker::inbox_counts(&slow_user)
        .await
        .expect("the inbox exists");
    assert_eq!(ready + unacked, PUSHES as u64);
    assert!(unacked <= u64::from(WINDOW), "{unacked} pushes out at once");

    // Another user is served while the slow one stalls.
    let id = node.publish_ok(&payment(&other_user, 1)).await;
    recv_and_ack(&mut other, &id).await;

    // The slow session is cut; every push goes back to its inbox.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(40);
    while node.handle().node().hub().has_user(&slow_user) {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the slow client was never cut"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    wait_inbox_messages(&slow_user, PUSHES as u64, Duration::from_secs(10)).await;
    let code = slow.closed_with().await;
    assert!(matches!(code, Some(4001) | None), "closed with {code:?}");
    other.assert_alive().await;

    // About 48 MiB of pushes would otherwise wait for their TTL.
    switchboard_tests::broker::delete_inbox(&slow_user).await;
}

/// Asserts that publishing `event` is refused with 503 and says "inbox full".
async fn assert_inbox_full(node: &TestNode, event: &Value) {
    let (status, body) = node.publish(event).await;
    assert_eq!(status, 503, "{body}");
    let description = body["description"].as_str().unwrap_or("");
    assert!(description.contains("inbox full"), "{body}");
}

/// RabbitMQ: a push beyond `reliable.max_pending_per_user` is refused
/// (`reject-publish`), the older pushes stay and are delivered.
#[tokio::test]
async fn amqp_push_to_a_full_inbox_is_refused_and_older_ones_kept() {
    if !broker_available().await {
        return;
    }
    let mut config = reliable_amqp_config();
    config.reliable.max_pending_per_user = 2;
    let node = TestNode::start_with(config).await;
    let user = unique("payer");
    let first = node.publish_ok(&payment(&user, 1)).await;
    let second = node.publish_ok(&payment(&user, 2)).await;
    assert_inbox_full(&node, &payment(&user, 3)).await;

    let mut client = node.connect(&user, "H5").await;
    recv_and_ack(&mut client, &first).await;
    recv_and_ack(&mut client, &second).await;
    node.assert_nothing_delivered(&mut client).await;
}

/// Embedded broker: the same overflow policy.
#[tokio::test]
async fn embedded_push_to_a_full_inbox_is_refused_and_older_ones_kept() {
    let mut config = test_config();
    config.reliable.max_pending_per_user = 2;
    let node = TestNode::start_with(config).await;
    let user = new_id("payer");
    let first = node.publish_ok(&payment(&user, 1)).await;
    let second = node.publish_ok(&payment(&user, 2)).await;
    assert_inbox_full(&node, &payment(&user, 3)).await;

    let mut client = node.connect(&user, "H5").await;
    recv_and_ack(&mut client, &first).await;
    recv_and_ack(&mut client, &second).await;
    node.assert_nothing_delivered(&mut client).await;
}
