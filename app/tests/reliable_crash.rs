//! A node dies with SIGKILL while it holds unacknowledged reliable pushes:
//! RabbitMQ hands them back and the user gets every one on another node.
//! The dying node is the `switchboard` binary in a child process; the
//! survivor runs in this process.

use std::collections::HashSet;
use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use switchboard_tests::broker::{broker_available, reliable_amqp_config, unique};
use switchboard_tests::{Client, TEST_SECRET, TestNode, amqp_url, frame};

/// How long the child may take to start listening.
const START: Duration = Duration::from_secs(20);

/// A `switchboard` child process, killed when dropped.
struct ChildNode {
    child: Child,
    addr: String,
}

impl Drop for ChildNode {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl ChildNode {
    /// Starts the binary on RabbitMQ, port 0, the test secret, and no
    /// inherited `SWITCHBOARD_` variables; waits for its address.
    fn start(in_flight: u16) -> ChildNode {
        let mut command = Command::new(env!("CARGO_BIN_EXE_switchboard"));
        command
            .current_dir(std::env::temp_dir())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        for (key, _) in std::env::vars() {
            if key.starts_with("SWITCHBOARD_") {
                command.env_remove(key);
            }
        }
        command
            .env("RUST_LOG", "info")
            .env("SWITCHBOARD_LOG__FORMAT", "json")
            .env("SWITCHBOARD_SERVER__BIND", "127.0.0.1:0")
            .env("SWITCHBOARD_BROKER__URL", amqp_url())
            .env("SWITCHBOARD_AUTH__SECRET", TEST_SECRET)
            .env("SWITCHBOARD_AUTH__ALLOW_OPEN", "true")
            .env("SWITCHBOARD_NODE__ID", unique("child"))
            .env("SWITCHBOARD_RELIABLE__TTL_SECS", "300")
            .env(
                "SWITCHBOARD_RELIABLE__MAX_IN_FLIGHT_PER_USER",
                in_flight.to_string(),
            );
        let mut child = command.spawn().expect("the binary starts");

        // Read log lines on a thread, so waiting for one has a deadline.
        let (lines_tx, lines) = mpsc::channel::<Value>();
        let stderr = child.stderr.take().expect("stderr is piped");
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if let Ok(value) = serde_json::from_str(&line) {
                    let _ = lines_tx.send(value);
                }
            }
        });
        let deadline = Instant::now() + START;
        let addr = loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let Ok(line) = lines.recv_timeout(left) else {
                let _ = child.kill();
                panic!("the child node did not listen within {START:?}");
            };
            if line["fields"]["message"] == "listening" {
                break line["fields"]["addr"].as_str().expect("addr").to_owned();
            }
        };
        ChildNode { child, addr }
    }

    /// Connects a client of `unique_id` to the child.
    async fn connect(&self, unique_id: &str) -> Client {
        let url = format!(
            "http://{}/websocket/token?uniqueId={unique_id}&clientType=H5",
            self.addr
        );
        let body: Value = reqwest::get(&url)
            .await
            .expect("token request")
            .json()
            .await
            .expect("token JSON");
        let socket = body["data"].as_str().expect("token URL");
        Client::connect(socket).await
    }
}

/// A node killed with SIGKILL while holding 100 unacknowledged pushes:
/// all 100 reach the user on another node, with their messageIds.
#[tokio::test]
async fn pushes_held_by_a_killed_node_reach_the_user_on_another_node() {
    if !broker_available().await {
        return;
    }
    let doomed = ChildNode::start(100);
    let survivor = TestNode::start_with(reliable_amqp_config()).await;
    let user = unique("payer");
    let mut client = doomed.connect(&user).await;

    let mut ids = Vec::new();
    for n in 0..100 {
        let event = json!({
            "businessType": "payment_callback",
            "toUniqueId": user,
            "content": {"orderId": format!("order-{n}"), "status": "PAID"},
        });
        ids.push(survivor.publish_ok(&event).await);
    }
    for id in &ids {
        let push = client.recv_type("SERVER_TO_CLIENT").await;
        assert_eq!(push["messageId"], id.as_str(), "{push}");
    }

    // SIGKILL: no drain, no hand-back by the node itself.
    drop(doomed);
    let mut client = survivor.connect(&user, "H5").await;
    let mut seen = HashSet::new();
    for id in &ids {
        let push = client.recv_type("SERVER_TO_CLIENT").await;
        assert_eq!(
            push["messageId"],
            id.as_str(),
            "redelivered out of order: {push}"
        );
        seen.insert(id.clone());
        client
            .send(&frame("ACK", json!({"correlationId": id})))
            .await;
    }
    assert_eq!(seen.len(), 100);
    survivor.assert_nothing_delivered(&mut client).await;
}
