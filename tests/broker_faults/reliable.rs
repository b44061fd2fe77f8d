//! Reliable pushes survive a RabbitMQ restart: every push confirmed to its
//! producer reaches its user afterwards, online or offline at the time.

use std::collections::HashSet;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use serde_json::json;
use switchboard_tests::broker::{reliable_amqp_config, unique};
use switchboard_tests::{Client, Event, TestNode, frame};
use tokio::time::Instant;

use crate::SERIAL;
use crate::faults::{RestartOnDrop, controllable, wait_readyz};

/// Pushes published in the test.
const PUSHES: usize = 1000;

/// After how many confirmed pushes the broker is stopped.
const STOP_AFTER: usize = 300;

/// How long the pushes may take to arrive once the broker is back.
const ARRIVAL: Duration = Duration::from_secs(90);

/// Reads pushes, acknowledging each, until every id in `want` was seen or
/// `deadline` passes; returns what was seen. Duplicates (redeliveries) are
/// fine.
async fn collect(
    client: &mut Client,
    want: &HashSet<String>,
    deadline: Instant,
) -> HashSet<String> {
    let mut seen = HashSet::new();
    while !want.is_subset(&seen) {
        let left = deadline.saturating_duration_since(Instant::now());
        let Some(event) = client.next_event_within(left).await else {
            break;
        };
        let Event::Json(push) = event else {
            panic!("the session ended: {event:?}");
        };
        if push["messageType"] != "SERVER_TO_CLIENT" {
            continue;
        }
        let id = push["messageId"].as_str().unwrap_or("").to_owned();
        client
            .send(&frame("ACK", json!({"correlationId": id})))
            .await;
        seen.insert(id);
    }
    seen
}

/// RabbitMQ stopped and started while 1,000 pushes are published to an
/// online and an offline user: every push confirmed to the producer is
/// delivered afterwards.
#[tokio::test]
async fn confirmed_reliable_pushes_survive_a_broker_restart() {
    let _serial = SERIAL.lock().await;
    if !controllable().await {
        return;
    }
    let mut config = reliable_amqp_config();
    config.broker.publish_timeout_secs = 2;
    let node = Arc::new(TestNode::start_with(config).await);
    let online = unique("online");
    let offline = unique("offline");
    let mut client = node.connect(&online, "H5").await;
    wait_readyz(&node, 200).await;

    // The producer publishes one after another and keeps what was confirmed.
    let confirmed = Arc::new(AtomicUsize::new(0));
    let producer = {
        let node = node.clone();
        let confirmed = confirmed.clone();
        let users = [online.clone(), offline.clone()];
        tokio::spawn(async move {
            let mut kept: Vec<(usize, String)> = Vec::new();
            for n in 0..PUSHES {
                let user = &users[n % 2];
                let event = json!({
                    "businessType": "payment_callback",
                    "toUniqueId": user,
                    "content": {"orderId": format!("order-{n}"), "status": "PAID"},
                });
                let (status, body) = node.publish(&event).await;
                if status == 200 {
                    let id = body["data"]["messageId"].as_str().unwrap_or("").to_owned();
                    kept.push((n % 2, id));
                    confirmed.fetch_add(1, Ordering::Relaxed);
                }
            }
            kept
        })
    };

    // The online client reads and acknowledges while the producer runs and
    // the broker restarts; it has nothing to wait for yet, so it only
    // drains until the producer is done.
    let mut broker = RestartOnDrop { stopped: false };
    let deadline = Instant::now() + ARRIVAL;
    while confirmed.load(Ordering::Relaxed) < STOP_AFTER {
        assert!(Instant::now() < deadline, "the producer stalled");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    broker.stop_app().await;
    broker.start_app().await;
    let kept = producer.await.expect("producer finishes");
    assert!(
        kept.len() > STOP_AFTER,
        "only {} pushes confirmed",
        kept.len()
    );

    let want = |who: usize| -> HashSet<String> {
        kept.iter()
            .filter(|(w, _)| *w == who)
            .map(|(_, id)| id.clone())
            .collect()
    };
    let (want_online, want_offline) = (want(0), want(1));
    wait_readyz(&node, 200).await;
    let seen = collect(&mut client, &want_online, Instant::now() + ARRIVAL).await;
    let missing = want_online.difference(&seen).count();
    assert_eq!(
        missing, 0,
        "{missing} confirmed pushes to the online user never came"
    );

    let mut late = node.connect(&offline, "H5").await;
    let seen = collect(&mut late, &want_offline, Instant::now() + ARRIVAL).await;
    let missing = want_offline.difference(&seen).count();
    assert_eq!(
        missing, 0,
        "{missing} confirmed pushes to the offline user never came"
    );
}
