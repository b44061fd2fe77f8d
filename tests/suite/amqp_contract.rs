//! The RabbitMQ contract for backend services (PROTOCOL.md section 4),
//! exercised with a raw AMQP client as a service in any language would.

use std::time::Duration;

use serde_json::json;
use switchboard_protocol::amqp::{HEADER_REASON, HEADER_REASON_CODE};
use switchboard_tests::TestNode;
use switchboard_tests::broker::{
    amqp_config, broker_available, publish_raw, raw_channel, take_dead_letters, unique,
};

/// A persistent, confirmed raw publish to `switchboard.inbound` reaches the
/// user once, and its AMQP message_id becomes the envelope's messageId.
#[tokio::test]
async fn raw_amqp_event_reaches_user_with_message_id_from_property() {
    if !broker_available().await {
        return;
    }
    let node = TestNode::start_with(amqp_config()).await;
    let user = unique("user");
    let mut client = node.connect(&user, "H5").await;

    let (connection, channel) = raw_channel().await;
    let message_id = unique("msg");
    let body = json!({
        "businessType": "notice",
        "sendType": "UNICAST",
        "toUniqueId": user,
        "content": {"text": "from a service"},
    });
    publish_raw(
        &channel,
        "notice",
        body.to_string().as_bytes(),
        Some(&message_id),
    )
    .await;

    let push = client.recv_type("SERVER_TO_CLIENT").await;
    assert_eq!(push["messageId"], message_id.as_str());
    assert_eq!(push["businessType"], "notice");
    assert_eq!(push["content"]["text"], "from a service");
    client.expect_silence().await;

    let _ = connection.close(200, "done".into()).await;
    node.stop().await;
}

/// An invalid body, an unknown business type and an event the handler
/// refuses each land in `switchboard.dead`, unchanged and persistent, with
/// the reason and the original routing key.
#[tokio::test]
async fn undeliverable_events_are_dead_lettered_with_reason() {
    if !broker_available().await {
        return;
    }
    let node = TestNode::start_with(amqp_config()).await;
    let (connection, channel) = raw_channel().await;

    let invalid = unique("msg");
    let unknown = unique("msg");
    let refused = unique("msg");
    let nobody = unique("nobody");
    let unknown_body = json!({"businessType": nobody, "toUniqueId": "x"}).to_string();
    let refused_body = json!({
        "businessType": "payment_callback",
        "toUniqueId": unique("payer"),
        "content": {"status": "PAID"},
    })
    .to_string();
    publish_raw(&channel, "notice", b"this is not json", Some(&invalid)).await;
    publish_raw(&channel, &nobody, unknown_body.as_bytes(), Some(&unknown)).await;
    publish_raw(
        &channel,
        "payment_callback",
        refused_body.as_bytes(),
        Some(&refused),
    )
    .await;

    let ids = [invalid.clone(), unknown.clone(), refused.clone()];
    let dead = take_dead_letters(&ids, Duration::from_secs(20)).await;
    assert_eq!(dead.len(), 3, "found only {:?}", dead.keys());

    let letter = &dead[&invalid];
    assert_eq!(letter.body, b"this is not json");
    assert_eq!(letter.reason_code.as_deref(), Some("INVALID_MESSAGE"));
    assert_eq!(letter.routing_key, "notice");
    assert_eq!(letter.original_key.as_deref(), Some("notice"));
    assert!(letter.persistent);

    let letter = &dead[&unknown];
    assert_eq!(letter.body, unknown_body.as_bytes());
    assert_eq!(letter.reason_code.as_deref(), Some("UNKNOWN_BUSINESS_TYPE"));
    let reason = letter.reason.as_deref().unwrap_or("");
    assert!(reason.contains(&nobody), "{HEADER_REASON}: {reason}");
    assert_eq!(letter.routing_key, nobody);

    let letter = &dead[&refused];
    assert_eq!(letter.body, refused_body.as_bytes());
    assert_eq!(
        letter.reason_code.as_deref(),
        Some("INVALID_MESSAGE"),
        "{HEADER_REASON_CODE}"
    );
    assert!(
        letter.reason.as_deref().unwrap_or("").contains("orderId"),
        "{letter:?}"
    );

    let _ = connection.close(200, "done".into()).await;
    node.stop().await;
}

/// An event handed in over HTTP while RabbitMQ is the broker is confirmed
/// there before the answer, and then delivered.
#[tokio::test]
async fn http_publish_goes_through_rabbitmq() {
    if !broker_available().await {
        return;
    }
    let node = TestNode::start_with(amqp_config()).await;
    let (status, _) = node.get("/readyz").await;
    assert_eq!(status, 200);
    let user = unique("user");
    let mut client = node.connect(&user, "H5").await;
    let event = json!({
        "businessType": "payment_callback",
        "toUniqueId": user,
        "content": {"orderId": "A-1", "status": "PAID"},
    });
    let (status, body) = node.publish(&event).await;
    assert_eq!(status, 200, "{body}");
    let push = client.recv_type("SERVER_TO_CLIENT").await;
    assert_eq!(push["messageId"], body["data"]["messageId"]);
    assert_eq!(push["content"]["orderId"], "A-1");
    client.expect_silence().await;
    node.stop().await;
}
