//! `order_status` over real sockets: a node on port 0 with the shipped
//! handlers (linked by the `switchboard-tests` harness) and this crate.
//!
//! ```text
//! cargo test -p switchboard-example-custom-handler
//! ```

use serde_json::{Value, json};
use switchboard::{HandlerDescriptor, HandlerRegistry, RegistryError};
use switchboard_tests::{Client, TestNode, assert_error, unicast};

// The test binary links only the crates it names: without this line the
// registration of `order_status` would be missing here.
use switchboard_example_custom_handler as _;

/// Publishes an order update for `owner` and waits until `owner_client`
/// received the push, so the handler has recorded it.
async fn report(node: &TestNode, owner_client: &mut Client, owner: &str, status: &str) {
    let event = unicast(
        "order_status",
        owner,
        json!({ "orderId": "A-1001", "status": status }),
    );
    let (status_code, body) = node.publish(&event).await;
    assert_eq!(status_code, 200, "{body}");
    let message_id = body["data"]["messageId"].clone();

    let push = owner_client.recv_type("SERVER_TO_CLIENT").await;
    assert_eq!(push["messageId"], message_id);
    assert_eq!(push["businessType"], "order_status");
    assert_eq!(push["content"]["status"], status);
}

fn ask(message_id: &str, content: Value) -> Value {
    json!({
        "messageId": message_id,
        "messageType": "CLIENT_TO_SERVER",
        "businessType": "order_status",
        "content": content,
    })
}

/// The binary serves exactly the shipped business types plus order_status.
#[tokio::test]
async fn linked_registry_holds_order_status_and_the_shipped_types() {
    let node = TestNode::start().await;
    let types = node.handle().node().registry().business_types();
    assert_eq!(
        types,
        [
            "notice",
            "order_status",
            "page_update",
            "payment_callback",
            "qr_refresh"
        ]
    );
    node.stop().await;
}

/// A request is acknowledged, and the reply that follows carries the status
/// the order service reported.
#[tokio::test]
async fn request_is_acked_then_answered_with_the_reported_status() {
    let node = TestNode::start().await;
    let mut alice = node.connect("alice", "H5").await;
    report(&node, &mut alice, "alice", "PAID").await;

    let ack = alice
        .request(ask("q-1", json!({ "orderId": "A-1001" })))
        .await;
    assert_eq!(ack["messageType"], "ACK", "{ack}");

    let reply = alice.recv().await;
    assert_eq!(reply["messageType"], "SERVER_TO_CLIENT", "{reply}");
    assert_eq!(reply["correlationId"], "q-1");
    assert_eq!(reply["content"]["orderId"], "A-1001");
    assert_eq!(reply["content"]["status"], "PAID");
    assert!(reply["content"]["updatedAt"].is_i64(), "{reply}");
    node.stop().await;
}

/// An order nobody reported is answered as UNKNOWN, not refused.
#[tokio::test]
async fn unreported_order_is_answered_unknown() {
    let node = TestNode::start().await;
    let mut alice = node.connect("alice", "H5").await;

    let ack = alice.request(ask("q-1", json!({ "orderId": "Z-9" }))).await;
    assert_eq!(ack["messageType"], "ACK", "{ack}");
    let reply = alice.recv_type("SERVER_TO_CLIENT").await;
    assert_eq!(reply["content"]["status"], "UNKNOWN");
    assert!(reply["content"]["updatedAt"].is_null());
    node.stop().await;
}

/// Another user's order is refused with FORBIDDEN and no reply follows.
#[tokio::test]
async fn another_users_order_is_forbidden() {
    let node = TestNode::start().await;
    let mut alice = node.connect("alice", "H5").await;
    let mut bob = node.connect("bob", "H5").await;
    report(&node, &mut alice, "alice", "SHIPPED").await;

    let answer = bob
        .request(ask("q-1", json!({ "orderId": "A-1001" })))
        .await;
    assert_error(&answer, "FORBIDDEN");
    bob.expect_silence().await;
    node.stop().await;
}

/// A request without an orderId is an INVALID_MESSAGE naming the field.
#[tokio::test]
async fn request_without_order_id_is_invalid() {
    let node = TestNode::start().await;
    let mut alice = node.connect("alice", "H5").await;

    let answer = alice.request(ask("q-1", json!({}))).await;
    assert_error(&answer, "INVALID_MESSAGE");
    assert_eq!(
        answer["content"]["message"],
        "content.orderId must be a string"
    );
    node.stop().await;
}

/// check_event refuses an unknown status before /api/publish accepts it, and
/// nothing is pushed.
#[tokio::test]
async fn event_with_unknown_status_is_refused_before_acceptance() {
    let node = TestNode::start().await;
    let mut alice = node.connect("alice", "H5").await;

    let event = unicast(
        "order_status",
        "alice",
        json!({ "orderId": "A-1001", "status": "LOST" }),
    );
    let (status, body) = node.publish(&event).await;
    assert_eq!(status, 400, "{body}");
    assert_eq!(body["result"], 400);
    let description = body["description"].as_str().unwrap_or("");
    assert!(
        description.starts_with("INVALID_MESSAGE: content.status"),
        "{body}"
    );
    alice.expect_silence().await;
    node.stop().await;
}

/// A second crate that claims order_status makes start-up fail, naming both
/// crates.
#[test]
fn a_second_crate_claiming_order_status_fails_start_up() {
    struct Impostor;
    #[switchboard::async_trait]
    impl switchboard::BusinessHandler for Impostor {}

    static IMPOSTOR: HandlerDescriptor = HandlerDescriptor {
        business_type: "order_status",
        description: "another team's idea of order_status",
        crate_name: "another-team-handler",
        constructor: || Box::new(Impostor),
    };

    let linked = HandlerRegistry::from_linked().expect("the linked handlers register");
    let all = linked.descriptors().chain(std::iter::once(&IMPOSTOR));
    let err = HandlerRegistry::from_descriptors(all).unwrap_err();
    assert!(matches!(err, RegistryError::Duplicate { .. }), "{err}");
    assert_eq!(
        err.to_string(),
        "business type 'order_status' is registered twice, by another-team-handler and by \
         switchboard-example-custom-handler"
    );
}
