//! Handlers linked only into this binary: one that forwards client
//! requests to services, one whose events always fail.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

use serde_json::json;
use switchboard::{BusinessHandler, Context, Envelope, HandlerError, register_handler};
use switchboard_client::{ClientOptions, SwitchboardClient};
use switchboard_tests::broker::{
    amqp_config, broker_available, publish_raw, raw_channel, take_dead_letters, unique,
};
use switchboard_tests::{TestNode, amqp_url};

use crate::SERIAL;

/// Business type of [`Forward`].
const FORWARD: &str = "sbt_forward";

/// Business type of [`Flaky`].
const FLAKY: &str = "sbt_flaky";

/// Forwards every client request to services.
struct Forward;

#[switchboard::async_trait]
impl BusinessHandler for Forward {
    async fn on_client_message(
        &self,
        ctx: &mut Context,
        message: Envelope,
    ) -> Result<(), HandlerError> {
        ctx.forward_to_services(message).await
    }
}

register_handler! {
    business_type: FORWARD,
    description: "test: forwards client requests to services",
    constructor: || Box::new(Forward),
}

/// How often [`Flaky`] ran, per message id.
static FLAKY_CALLS: Mutex<Option<HashMap<String, u32>>> = Mutex::new(None);

/// Fails every event.
struct Flaky;

#[switchboard::async_trait]
impl BusinessHandler for Flaky {
    async fn on_event(&self, _ctx: &mut Context, event: Envelope) -> Result<(), HandlerError> {
        let mut calls = FLAKY_CALLS.lock().unwrap_or_else(|p| p.into_inner());
        *calls
            .get_or_insert_with(HashMap::new)
            .entry(event.id().to_owned())
            .or_default() += 1;
        Err(HandlerError::failed("this handler always fails"))
    }
}

register_handler! {
    business_type: FLAKY,
    description: "test: fails every event",
    constructor: || Box::new(Flaky),
}

/// A client request that the handler forwards reaches a service's queue
/// through `switchboard.outbound`, with the sender set by the server.
#[tokio::test]
async fn forwarded_client_message_reaches_a_service_receiver() {
    let _serial = SERIAL.lock().await;
    if !broker_available().await {
        return;
    }
    let node = TestNode::start_with(amqp_config()).await;
    let service = SwitchboardClient::connect(&amqp_url(), ClientOptions::default())
        .await
        .expect("service connects");
    let queue = unique("service-queue");
    let mut inbox = service.receive(&queue, &[FORWARD]).await.expect("receive");

    let user = unique("user");
    let mut client = node.connect(&user, "H5").await;
    let id = unique("msg");
    let ack = client
        .request(json!({
            "messageId": id,
            "messageType": "CLIENT_TO_SERVER",
            "businessType": FORWARD,
            "content": {"question": 42},
        }))
        .await;
    assert_eq!(ack["messageType"], "ACK", "{ack}");

    let message = tokio::time::timeout(Duration::from_secs(10), inbox.next())
        .await
        .expect("forward arrives")
        .expect("subscription open");
    assert_eq!(message.routing_key(), FORWARD);
    let envelope = message.envelope().expect("an envelope");
    assert_eq!(envelope.message_id.as_deref(), Some(id.as_str()));
    assert_eq!(envelope.from_unique_id.as_deref(), Some(user.as_str()));
    assert_eq!(envelope.content["question"], 42);
    message.ack().await.expect("ack");

    let (connection, channel) = raw_channel().await;
    let _ = channel
        .queue_delete(queue.as_str().into(), Default::default())
        .await;
    let _ = connection.close(200, "cleanup".into()).await;
    service.close().await;
    node.stop().await;
}

/// An event whose handler keeps failing is offered `1 + max_retries` times,
/// then dead-lettered as HANDLER_FAILED; never requeued forever.
#[tokio::test]
async fn failing_event_is_retried_then_dead_lettered() {
    let _serial = SERIAL.lock().await;
    if !broker_available().await {
        return;
    }
    let mut config = amqp_config();
    config.broker.max_retries = 2;
    let node = TestNode::start_with(config).await;

    let (connection, channel) = raw_channel().await;
    let id = unique("msg");
    let body = json!({"businessType": FLAKY, "toUniqueId": unique("user")}).to_string();
    publish_raw(&channel, FLAKY, body.as_bytes(), Some(&id)).await;

    let dead = take_dead_letters(std::slice::from_ref(&id), Duration::from_secs(30)).await;
    let letter = dead.get(&id).expect("dead-lettered in time");
    assert_eq!(letter.reason_code.as_deref(), Some("HANDLER_FAILED"));
    let reason = letter.reason.as_deref().unwrap_or("");
    assert!(reason.contains("after 3 attempts"), "{reason}");
    assert_eq!(letter.body, body.as_bytes(), "body unchanged");
    assert_eq!(letter.original_key.as_deref(), Some(FLAKY));

    let count = {
        let calls = FLAKY_CALLS.lock().unwrap_or_else(|p| p.into_inner());
        calls.as_ref().and_then(|c| c.get(&id)).copied()
    };
    assert_eq!(count, Some(3));

    let _ = connection.close(200, "done".into()).await;
    node.stop().await;
}
