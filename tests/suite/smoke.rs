//! The shortest path through the product: token, connect, push, receive.

use serde_json::json;
use switchboard_tests::{TestNode, unicast};

/// A service event published over HTTP reaches the addressed user's socket.
#[tokio::test]
async fn published_event_reaches_connected_user() {
    let node = TestNode::start().await;
    let mut client = node.connect("user-1", "H5").await;
    assert_eq!(client.connected["uniqueId"], "user-1");

    let (status, body) = node
        .publish(&unicast("notice", "user-1", json!({"text": "hello"})))
        .await;
    assert_eq!(status, 200, "{body}");
    let message_id = body["data"]["messageId"].as_str().unwrap().to_owned();

    let push = client.recv_type("SERVER_TO_CLIENT").await;
    assert_eq!(push["messageId"], message_id.as_str());
    assert_eq!(push["content"]["text"], "hello");
    node.stop().await;
}
