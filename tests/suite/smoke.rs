//! The shortest path through the product: token, connect, push, receive,
//! on each broker.

use serde_json::json;
use switchboard::Config;
use switchboard_tests::broker::{amqp_config, broker_available, unique};
use switchboard_tests::{TestNode, test_config, unicast};

async fn published_event_reaches_connected_user(config: Config) {
    let node = TestNode::start_with(config).await;
    let user = unique("user");
    let mut client = node.connect(&user, "H5").await;
    assert_eq!(client.connected["uniqueId"], user.as_str());

    let (status, body) = node
        .publish(&unicast("notice", &user, json!({"text": "hello"})))
        .await;
    assert_eq!(status, 200, "{body}");
    let message_id = body["data"]["messageId"].as_str().unwrap().to_owned();

    let push = client.recv_type("SERVER_TO_CLIENT").await;
    assert_eq!(push["messageId"], message_id.as_str());
    assert_eq!(push["content"]["text"], "hello");
    client.expect_silence().await;
    node.stop().await;
}

/// On the embedded broker, an event published over HTTP reaches the
/// addressed user's socket.
#[tokio::test]
async fn published_event_reaches_connected_user_embedded() {
    published_event_reaches_connected_user(test_config()).await;
}

/// On RabbitMQ, an event published over HTTP reaches the addressed user's
/// socket, once.
#[tokio::test]
async fn published_event_reaches_connected_user_rabbitmq() {
    if !broker_available().await {
        return;
    }
    published_event_reaches_connected_user(amqp_config()).await;
}
