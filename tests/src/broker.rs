//! Helpers for tests against the real RabbitMQ: whether it is reachable,
//! unique names, raw publishing as a service in another language would do
//! it, and reading the dead-letter queue.
//!
//! Every test process shares one broker, and every node of every test
//! consumes the one `switchboard.inbound` queue: any node may process any
//! event, exactly as in a cluster. Tests therefore address only users, tags
//! and client types of their own ([`unique`]), never a fixed name.

use std::collections::HashMap;
use std::sync::Once;
use std::time::Duration;

use futures_util::StreamExt;
use lapin::options::{
    BasicAckOptions, BasicConsumeOptions, BasicPublishOptions, BasicQosOptions,
    ConfirmSelectOptions,
};
use lapin::types::FieldTable;
use lapin::{BasicProperties, Channel, Confirmation, Connection, ConnectionProperties};
use switchboard::Config;
use switchboard_client::topology;
use switchboard_protocol::amqp;
use tokio::sync::OnceCell;

use crate::{amqp_url, test_config};

/// Prefix of every id a test makes, so stale test dead letters can be told
/// from real ones and cleaned up.
pub const TEST_PREFIX: &str = "sbt-";

/// Dead letters of tests older than this are removed while scanning.
const STALE_SECS: u64 = 600;

static AVAILABLE: OnceCell<bool> = OnceCell::const_new();
static SKIP_NOTICE: Once = Once::new();

/// Whether broker tests can run. When RabbitMQ is unreachable this prints
/// one line and returns `false`, unless the `CI` variable is set, in which
/// case it panics: CI must not pass by skipping.
pub async fn broker_available() -> bool {
    let available = *AVAILABLE
        .get_or_init(|| async {
            let url = amqp_url();
            let connect = Connection::connect(&url, ConnectionProperties::default());
            match tokio::time::timeout(Duration::from_secs(5), connect).await {
                Ok(Ok(connection)) => {
                    let _ = connection.close(200, "probe".into()).await;
                    true
                }
                _ => false,
            }
        })
        .await;
    if !available {
        let where_ = switchboard_client::connector::redact_url(&amqp_url());
        let ci = std::env::var("CI").is_ok_and(|v| !v.is_empty() && v != "false" && v != "0");
        assert!(!ci, "RabbitMQ not reachable at {where_}, and CI is set");
        SKIP_NOTICE.call_once(|| {
            println!("skipping broker tests: RabbitMQ not reachable at {where_}");
        });
    }
    available
}

/// A name no other test (or test run) uses: `sbt-<what>-<random>`.
pub fn unique(what: &str) -> String {
    let random = uuid::Uuid::new_v4().simple().to_string();
    format!("{TEST_PREFIX}{what}-{}", &random[..12])
}

/// [`test_config`] with RabbitMQ as broker and a node id of its own.
pub fn amqp_config() -> Config {
    let mut config = test_config();
    config.broker.url = Some(amqp_url());
    config.node.id = Some(unique("node"));
    // Test nodes listen on loopback only; cluster mode otherwise demands keys.
    config.auth.allow_open = true;
    config
}

/// A raw connection with a channel in confirm mode, as a service in
/// another language would open it.
pub async fn raw_channel() -> (Connection, Channel) {
    let connection = Connection::connect(&amqp_url(), ConnectionProperties::default())
        .await
        .expect("raw connection to RabbitMQ");
    let channel = connection.create_channel().await.expect("raw channel");
    channel
        .confirm_select(ConfirmSelectOptions::default())
        .await
        .expect("confirm mode");
    (connection, channel)
}

/// Publishes `body` to `switchboard.inbound` exactly as the contract asks
/// of a service (routing key, `application/json`, persistent, mandatory),
/// with `message_id` where given, and asserts a clean confirm.
pub async fn publish_raw(
    channel: &Channel,
    routing_key: &str,
    body: &[u8],
    message_id: Option<&str>,
) {
    let mut properties = BasicProperties::default()
        .with_content_type(amqp::CONTENT_TYPE_JSON.into())
        .with_delivery_mode(amqp::PERSISTENT)
        .with_timestamp(topology::now_secs());
    if let Some(id) = message_id {
        properties = properties.with_message_id(id.into());
    }
    let options = BasicPublishOptions {
        mandatory: true,
        immediate: false,
    };
    let confirm = channel
        .basic_publish(
            amqp::INBOUND_EXCHANGE.into(),
            routing_key.into(),
            options,
            body,
            properties,
        )
        .await
        .expect("publish sent")
        .await
        .expect("publish confirmed");
    assert_eq!(confirm, Confirmation::Ack(None), "clean ack, not returned");
}

/// A dead letter as a test sees it.
#[derive(Debug, Clone)]
pub struct DeadLetter {
    /// The body, unchanged.
    pub body: Vec<u8>,
    /// The routing key it was dead-lettered with.
    pub routing_key: String,
    /// `x-switchboard-reason`.
    pub reason: Option<String>,
    /// `x-switchboard-reason-code`.
    pub reason_code: Option<String>,
    /// `x-switchboard-routing-key`.
    pub original_key: Option<String>,
    /// `delivery_mode` 2.
    pub persistent: bool,
    /// `x-switchboard-node`: the node that dead-lettered it.
    pub node: Option<String>,
}

/// Takes the dead letters whose `message_id` is one of `ids` from
/// `switchboard.dead`, waiting at most `within`; others' dead letters are
/// left in the queue (stale ones of earlier test runs are removed).
pub async fn take_dead_letters(ids: &[String], within: Duration) -> HashMap<String, DeadLetter> {
    let deadline = tokio::time::Instant::now() + within;
    let mut found = HashMap::new();
    let connection = Connection::connect(&amqp_url(), ConnectionProperties::default())
        .await
        .expect("connection for the dead-letter scan");

    while found.len() < ids.len() && tokio::time::Instant::now() < deadline {
        // One pass: hold what is not ours unacknowledged, then close the
        // channel so it returns to the queue for others.
        let channel = connection.create_channel().await.expect("scan channel");
        channel
            .basic_qos(2000, BasicQosOptions { global: false })
            .await
            .expect("qos");
        let mut consumer = channel
            .basic_consume(
                amqp::DEAD_QUEUE.into(),
                "".into(),
                BasicConsumeOptions::default(),
                FieldTable::default(),
            )
            .await
            .expect("consume the dead-letter queue");
        let pass_end = (tokio::time::Instant::now() + Duration::from_secs(1)).min(deadline);
        while found.len() < ids.len() {
            let Ok(Some(Ok(delivery))) = tokio::time::timeout_at(pass_end, consumer.next()).await
            else {
                break;
            };
            let properties = &delivery.properties;
            let id = topology::message_id(properties).unwrap_or("").to_owned();
            let stale = id.starts_with(TEST_PREFIX)
                && properties
                    .timestamp()
                    .is_some_and(|t| t + STALE_SECS < topology::now_secs());
            if ids.contains(&id) {
                found.insert(
                    id,
                    DeadLetter {
                        body: delivery.data.clone(),
                        routing_key: delivery.routing_key.to_string(),
                        reason: topology::header_str(properties, amqp::HEADER_REASON),
                        reason_code: topology::header_str(properties, amqp::HEADER_REASON_CODE),
                        original_key: topology::header_str(properties, amqp::HEADER_ROUTING_KEY),
                        persistent: *properties.delivery_mode() == Some(amqp::PERSISTENT),
                        node: topology::header_str(properties, amqp::HEADER_NODE),
                    },
                );
                delivery.ack(BasicAckOptions::default()).await.expect("ack");
            } else if stale {
                delivery.ack(BasicAckOptions::default()).await.expect("ack");
            }
        }
        let _ = channel.close(200, "scan pass done".into()).await;
    }
    let _ = connection.close(200, "scan done".into()).await;
    found
}

/// Messages in `unique_id`'s inbox queue, ready and unacknowledged, as
/// `rabbitmqctl` reports them; `None` when the queue does not exist or
/// `rabbitmqctl` cannot run.
pub async fn inbox_messages(unique_id: &str) -> Option<u64> {
    inbox_counts(unique_id)
        .await
        .map(|(ready, unacked)| ready + unacked)
}

/// Messages in `unique_id`'s inbox queue: (ready, unacknowledged).
pub async fn inbox_counts(unique_id: &str) -> Option<(u64, u64)> {
    let queue = amqp::inbox_queue(unique_id);
    let output = tokio::task::spawn_blocking(|| {
        std::process::Command::new("rabbitmqctl")
            .args([
                "-q",
                "list_queues",
                "name",
                "messages_ready",
                "messages_unacknowledged",
            ])
            .output()
    })
    .await
    .ok()?
    .ok()?;
    let text = String::from_utf8_lossy(&output.stdout).into_owned();
    text.lines().find_map(|line| {
        let fields: Vec<&str> = line.split_whitespace().collect();
        match fields[..] {
            [name, ready, unacked] if name == queue => {
                Some((ready.parse().ok()?, unacked.parse().ok()?))
            }
            _ => None,
        }
    })
}

/// Waits, at most `within`, until `unique_id`'s inbox holds `count`
/// messages; panics with what it saw otherwise.
pub async fn wait_inbox_messages(unique_id: &str, count: u64, within: Duration) {
    let deadline = tokio::time::Instant::now() + within;
    loop {
        let seen = inbox_messages(unique_id).await;
        if seen == Some(count) {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "inbox of {unique_id} holds {seen:?} messages, expected {count}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// [`amqp_config`] with a short reliable TTL, so test inboxes expire soon
/// after a run (twice the TTL after their last use).
pub fn reliable_amqp_config() -> Config {
    let mut config = amqp_config();
    config.reliable.ttl_secs = 300;
    config
}

/// Deletes `unique_id`'s inbox queue, for tests that leave large pushes
/// behind.
pub async fn delete_inbox(unique_id: &str) {
    let (connection, channel) = raw_channel().await;
    let _ = channel
        .queue_delete(
            amqp::inbox_queue(unique_id).as_str().into(),
            lapin::options::QueueDeleteOptions::default(),
        )
        .await;
    let _ = connection.close(200, "done".into()).await;
}
