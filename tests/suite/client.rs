//! `switchboard-client` against the real broker: confirmed publishing,
//! returned messages, service queues with manual acknowledgements.

use std::time::Duration;

use lapin::options::QueueDeleteOptions;
use serde_json::json;
use switchboard_client::protocol::amqp::OUTBOUND_EXCHANGE;
use switchboard_client::protocol::{Envelope, MessageType};
use switchboard_client::{
    ClientError, ClientOptions, IfUnroutable, Outgoing, Publisher, SwitchboardClient, topology,
};
use switchboard_tests::amqp_url;
use switchboard_tests::broker::{broker_available, raw_channel, unique};

async fn client() -> SwitchboardClient {
    let options = ClientOptions::default().service_name(unique("svc"));
    SwitchboardClient::connect(&amqp_url(), options)
        .await
        .expect("client connects")
}

/// Publishes `envelope` to `switchboard.outbound` as a handler's forward
/// would, with routing key `key`.
async fn forward(client: &SwitchboardClient, key: &str, envelope: &Envelope) {
    let publisher = Publisher::new(client.connector().clone(), 8, Duration::from_secs(5));
    let body = envelope.to_json();
    let message = Outgoing {
        exchange: OUTBOUND_EXCHANGE,
        routing_key: key,
        body: body.as_bytes(),
        properties: topology::persistent_json(envelope.id()),
        unroutable: IfUnroutable::Retry,
    };
    publisher
        .publish(&message)
        .await
        .expect("forward confirmed");
}

async fn delete_queue(queue: &str) {
    let (connection, channel) = raw_channel().await;
    let _ = channel
        .queue_delete(queue.into(), QueueDeleteOptions::default())
        .await;
    let _ = connection.close(200, "cleanup".into()).await;
}

/// A URL that is not AMQP is refused before any connection is tried.
#[tokio::test]
async fn invalid_url_is_refused_at_once() {
    let result = SwitchboardClient::connect("http://nope", ClientOptions::default()).await;
    assert!(
        matches!(result, Err(ClientError::InvalidUrl(_))),
        "{result:?}"
    );
}

/// With nothing listening, connect fails after its timeout, naming the cause.
#[tokio::test]
async fn connect_fails_within_its_timeout_when_nothing_listens() {
    let options = ClientOptions::default().connect_timeout(Duration::from_millis(800));
    let started = std::time::Instant::now();
    let result = SwitchboardClient::connect("amqp://guest:guest@127.0.0.1:1/%2f", options).await;
    assert!(
        matches!(result, Err(ClientError::Connect { .. })),
        "{result:?}"
    );
    assert!(started.elapsed() < Duration::from_secs(5));
}

/// A message on a service queue arrives as an envelope and is acknowledged;
/// the AMQP message_id is its messageId.
#[tokio::test]
async fn receive_delivers_forwarded_envelopes_with_manual_ack() {
    if !broker_available().await {
        return;
    }
    let client = client().await;
    let key = unique("fwd");
    let queue = unique("queue");
    let mut inbox = client.receive(&queue, &[&key]).await.expect("receive");

    let mut envelope = Envelope::new(MessageType::ClientToServer);
    envelope.business_type = Some(key.clone());
    envelope.content = json!({"n": 1});
    envelope.stamp();
    forward(&client, &key, &envelope).await;

    let message = tokio::time::timeout(Duration::from_secs(10), inbox.next())
        .await
        .expect("arrives in time")
        .expect("subscription open");
    assert_eq!(message.routing_key(), key);
    assert!(!message.redelivered());
    let got = message.envelope().expect("an envelope");
    assert_eq!(got.message_id, envelope.message_id);
    assert_eq!(got.content, json!({"n": 1}));
    message.ack().await.expect("ack sent");

    client.close().await;
    delete_queue(&queue).await;
}

/// A message not acknowledged before its subscription ends is delivered
/// again, flagged as redelivered.
#[tokio::test]
async fn unacknowledged_message_is_redelivered() {
    if !broker_available().await {
        return;
    }
    let client = client().await;
    let key = unique("fwd");
    let queue = unique("queue");
    let mut inbox = client.receive(&queue, &[&key]).await.expect("receive");
    let mut envelope = Envelope::new(MessageType::ClientToServer);
    envelope.business_type = Some(key.clone());
    envelope.stamp();
    forward(&client, &key, &envelope).await;

    let first = tokio::time::timeout(Duration::from_secs(10), inbox.next())
        .await
        .expect("arrives")
        .expect("open");
    drop(inbox);
    drop(first);

    let mut again = client
        .receive(&queue, &[&key])
        .await
        .expect("receive again");
    let second = tokio::time::timeout(Duration::from_secs(10), again.next())
        .await
        .expect("arrives again")
        .expect("open");
    assert!(second.redelivered());
    assert_eq!(
        second.envelope().expect("envelope").message_id,
        envelope.message_id
    );
    second.ack().await.expect("ack");

    client.close().await;
    delete_queue(&queue).await;
}

/// A mandatory publish that no queue takes is returned (312) and fails as
/// unroutable after the timeout, instead of counting as confirmed.
#[tokio::test]
async fn returned_message_is_an_error_not_a_confirm() {
    if !broker_available().await {
        return;
    }
    let client = client().await;
    let publisher = Publisher::new(client.connector().clone(), 8, Duration::from_millis(600));
    let key = unique("nobody");
    let message = Outgoing {
        exchange: OUTBOUND_EXCHANGE,
        routing_key: &key,
        body: b"{}",
        properties: topology::persistent_json("sbt-unroutable"),
        unroutable: IfUnroutable::Retry,
    };
    let result = publisher.publish(&message).await;
    assert!(
        matches!(result, Err(ClientError::Unroutable { .. })),
        "{result:?}"
    );
    client.close().await;
}
