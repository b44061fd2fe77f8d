//! The broker fails under a running node: every connection closed by the
//! broker, and the broker application stopped and started again.

use std::collections::HashSet;
use std::process::Command;
use std::time::Duration;

use futures_util::StreamExt;
use lapin::options::{BasicConsumeOptions, BasicQosOptions};
use lapin::types::FieldTable;
use lapin::{Channel, Connection, ConnectionProperties};
use serde_json::json;
use switchboard_client::protocol::amqp::INBOUND_QUEUE;
use switchboard_client::{ClientOptions, SwitchboardClient, topology};
use switchboard_tests::broker::{amqp_config, broker_available, unique};
use switchboard_tests::{Client, TestNode, amqp_url};
use tokio::time::Instant;

use crate::SERIAL;

/// How long the broker may take to come back, and the node to follow.
const RECOVERY: Duration = Duration::from_secs(60);

/// Runs `rabbitmqctl` with `args`; `Err` with its output when it fails.
pub(crate) async fn rabbitmqctl(args: &[&str]) -> Result<(), String> {
    let args: Vec<String> = ["-q", "--timeout", "90"]
        .iter()
        .chain(args)
        .map(|a| (*a).to_owned())
        .collect();
    let output =
        tokio::task::spawn_blocking(move || Command::new("rabbitmqctl").args(&args).output())
            .await
            .map_err(|e| e.to_string())?
            .map_err(|e| format!("cannot run rabbitmqctl: {e}"))?;
    if output.status.success() {
        Ok(())
    } else {
        Err(String::from_utf8_lossy(&output.stderr).into_owned())
    }
}

/// Whether these tests can control the broker; like
/// [`broker_available`], fails instead of skipping under CI.
pub(crate) async fn controllable() -> bool {
    if !broker_available().await {
        return false;
    }
    match rabbitmqctl(&["status"]).await {
        Ok(()) => true,
        Err(why) => {
            let ci = std::env::var("CI").is_ok_and(|v| !v.is_empty() && v != "false" && v != "0");
            assert!(
                !ci,
                "rabbitmqctl cannot control the broker, and CI is set: {why}"
            );
            println!("skipping broker fault tests: rabbitmqctl cannot control the broker");
            false
        }
    }
}

/// Starts the broker application again if a test stopped it and failed
/// before restarting it, so later tests (and runs) find it up.
pub(crate) struct RestartOnDrop {
    pub(crate) stopped: bool,
}

impl Drop for RestartOnDrop {
    fn drop(&mut self) {
        if self.stopped {
            let _ = Command::new("rabbitmqctl")
                .args(["-q", "start_app"])
                .status();
        }
    }
}

impl RestartOnDrop {
    pub(crate) async fn stop_app(&mut self) {
        self.stopped = true;
        rabbitmqctl(&["stop_app"]).await.expect("stop_app");
    }

    pub(crate) async fn start_app(&mut self) {
        rabbitmqctl(&["start_app"]).await.expect("start_app");
        self.stopped = false;
        // start_app returns once the application runs; wait for the listener.
        let deadline = Instant::now() + RECOVERY;
        let url = amqp_url();
        loop {
            let connect = Connection::connect(&url, ConnectionProperties::default());
            if let Ok(Ok(connection)) = tokio::time::timeout(Duration::from_secs(5), connect).await
            {
                let _ = connection.close(200, "probe".into()).await;
                return;
            }
            assert!(Instant::now() < deadline, "the broker did not come back");
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
}

/// Polls `/readyz` until it answers `status`; panics after [`RECOVERY`].
pub(crate) async fn wait_readyz(node: &TestNode, status: u16) {
    let deadline = Instant::now() + RECOVERY;
    loop {
        if node.get("/readyz").await.0 == status {
            return;
        }
        assert!(Instant::now() < deadline, "/readyz never answered {status}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Receives `ids.len()` pushes and checks each id arrived exactly once.
async fn expect_each_once(client: &mut Client, ids: &[String]) {
    let mut seen = HashSet::new();
    while seen.len() < ids.len() {
        let push = client.recv_type("SERVER_TO_CLIENT").await;
        let id = push["messageId"].as_str().unwrap_or("").to_owned();
        assert!(ids.contains(&id), "unexpected push {push}");
        assert!(seen.insert(id), "duplicate push {push}");
    }
    client.expect_silence().await;
}

/// A consumer that holds what it receives from the inbound queue,
/// unacknowledged, until its channel closes.
struct Gate {
    connection: Connection,
    channel: Channel,
    /// Held, never acknowledged: they return to the queue on close.
    _held: Vec<lapin::message::Delivery>,
}

async fn hold_inbound(ids: &[String]) -> Gate {
    let connection = Connection::connect(&amqp_url(), ConnectionProperties::default())
        .await
        .expect("gate connection");
    let channel = connection.create_channel().await.expect("gate channel");
    channel
        .basic_qos(1000, BasicQosOptions { global: false })
        .await
        .expect("qos");
    let mut consumer = channel
        .basic_consume(
            INBOUND_QUEUE.into(),
            "".into(),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await
        .expect("gate consumes");
    let mut held = HashSet::new();
    let mut deliveries = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(20);
    while held.len() < ids.len() {
        let next = tokio::time::timeout_at(deadline, consumer.next()).await;
        let Ok(Some(Ok(delivery))) = next else {
            panic!("the gate got {} of {} events", held.len(), ids.len());
        };
        if let Some(id) = topology::message_id(&delivery.properties)
            && ids.iter().any(|i| i == id)
        {
            held.insert(id.to_owned());
        }
        deliveries.push(delivery);
    }
    Gate {
        connection,
        channel,
        _held: deliveries,
    }
}

/// When the broker closes every connection, `/readyz` turns 503, the node
/// reconnects and turns 200 again, its users are routed again, and events
/// confirmed afterwards are delivered.
#[tokio::test]
async fn node_recovers_after_the_broker_closes_its_connections() {
    let _serial = SERIAL.lock().await;
    if !controllable().await {
        return;
    }
    let node = TestNode::start_with(amqp_config()).await;
    let user = unique("user");
    let mut client = node.connect(&user, "H5").await;
    let service = SwitchboardClient::connect(&amqp_url(), ClientOptions::default())
        .await
        .expect("service connects");
    wait_readyz(&node, 200).await;

    rabbitmqctl(&["close_all_connections", "switchboard fault test"])
        .await
        .expect("close_all_connections");
    wait_readyz(&node, 503).await;
    wait_readyz(&node, 200).await;

    // Both sides reconnected: a service push and an HTTP publish arrive.
    let pushed = service
        .unicast("notice", &user, json!({"after": "reconnect"}))
        .await
        .expect("service push confirmed after the reconnect");
    let (status, body) = node
        .publish(&json!({"businessType": "notice", "toUniqueId": user, "content": {}}))
        .await;
    assert_eq!(status, 200, "{body}");
    let published = body["data"]["messageId"].as_str().unwrap().to_owned();
    expect_each_once(&mut client, &[pushed, published]).await;

    service.close().await;
    node.stop().await;
}

/// Events confirmed before the broker stops are still there after it
/// starts and are delivered; a node that stays up through the restart goes
/// unready, refuses HTTP publishes with 503, recovers, and a service push
/// made during the outage waits for the broker and is delivered.
#[tokio::test]
async fn events_survive_a_broker_restart_and_the_node_recovers() {
    let _serial = SERIAL.lock().await;
    if !controllable().await {
        return;
    }
    let mut broker = RestartOnDrop { stopped: false };
    let options = ClientOptions::default().publish_timeout(RECOVERY);
    let service = SwitchboardClient::connect(&amqp_url(), options)
        .await
        .expect("service connects");
    let user = unique("user");

    // Events confirmed while no node runs; a gate holds them so they are
    // known to be in the queue.
    let mut ids = Vec::new();
    for n in 0..5 {
        let id = service
            .unicast("notice", &user, json!({ "n": n }))
            .await
            .expect("confirmed");
        ids.push(id);
    }
    let gate = hold_inbound(&ids).await;

    broker.stop_app().await;
    drop(gate);
    broker.start_app().await;

    // Hold them again, start a node, connect the user, then let them go.
    let gate = hold_inbound(&ids).await;
    let mut config = amqp_config();
    config.broker.publish_timeout_secs = 2;
    let node = TestNode::start_with(config).await;
    let mut client = node.connect(&user, "H5").await;
    let _ = gate.channel.close(200, "release".into()).await;
    let _ = gate.connection.close(200, "release".into()).await;
    expect_each_once(&mut client, &ids).await;

    // Now an outage under the running node.
    broker.stop_app().await;
    wait_readyz(&node, 503).await;
    let (status, body) = node
        .publish(&json!({"businessType": "notice", "toUniqueId": user, "content": {}}))
        .await;
    assert_eq!(status, 503, "{body}");
    assert!(
        body["description"]
            .as_str()
            .unwrap_or("")
            .contains("UNAVAILABLE"),
        "{body}"
    );
    let during = {
        let user = user.clone();
        let service = std::sync::Arc::new(service);
        let pusher = service.clone();
        let task = tokio::spawn(async move {
            pusher
                .unicast("notice", &user, json!({"during": "outage"}))
                .await
        });
        (service, task)
    };
    broker.start_app().await;
    wait_readyz(&node, 200).await;
    let pushed = during
        .1
        .await
        .expect("push task")
        .expect("the push made during the outage is confirmed after it");
    expect_each_once(&mut client, &[pushed]).await;

    during.0.close().await;
    node.stop().await;
}
