//! Addressing: who receives a `UNICAST`, `TAG`, `BUSINESS` or `BROADCAST`
//! send, narrowed by `toClientType`, and how subscriptions change it.
//!
//! The events are `notice` events published over HTTP, so this module is
//! also the proof that `notice` delivers exactly as addressed.

use serde_json::{Value, json};
use switchboard_tests::{Client, TestNode, event, frame, unicast};

/// Asserts that `client` receives the push `message_id` next.
async fn receives(client: &mut Client, message_id: &str) -> Value {
    let push = client.recv().await;
    assert_eq!(push["messageType"], "SERVER_TO_CLIENT", "{push}");
    assert_eq!(push["messageId"], message_id, "{push}");
    push
}

/// A `UNICAST` reaches every session of the user, and no other user.
#[tokio::test]
async fn unicast_reaches_every_session_of_the_user() {
    let node = TestNode::start().await;
    let mut web = node.connect("alice", "H5").await;
    let mut app = node.connect("alice", "APP").await;
    let mut other = node.connect("bob", "H5").await;

    let id = node
        .publish_ok(&unicast("notice", "alice", json!({"n": 1})))
        .await;
    let push = receives(&mut web, &id).await;
    assert_eq!(push["content"], json!({"n": 1}));
    assert_eq!(push["toUniqueId"], "alice");
    receives(&mut app, &id).await;
    node.assert_nothing_delivered(&mut other).await;
    node.stop().await;
}

/// A `UNICAST` with `toClientType` reaches only the user's sessions of that
/// client type.
#[tokio::test]
async fn unicast_is_narrowed_by_to_client_type() {
    let node = TestNode::start().await;
    let mut web = node.connect("alice", "H5").await;
    let mut app = node.connect("alice", "APP").await;

    let mut notice = unicast("notice", "alice", json!({"n": 1}));
    notice["toClientType"] = json!("APP");
    let id = node.publish_ok(&notice).await;
    receives(&mut app, &id).await;
    node.assert_nothing_delivered(&mut web).await;
    node.stop().await;
}

/// Tags and businesses named in the token request are subscribed from the
/// first frame on, and `CONNECTED` lists them.
#[tokio::test]
async fn token_subscriptions_apply_at_connect() {
    let node = TestNode::start().await;
    let mut subscribed = node
        .connect_with("alice", "H5", "&tags=a,b&businesses=x")
        .await;
    let mut plain = node.connect("bob", "H5").await;
    assert_eq!(subscribed.connected["tags"], json!(["a", "b"]));
    assert_eq!(subscribed.connected["businesses"], json!(["x"]));

    let by_tag = event(
        "notice",
        json!({"sendType": "TAG", "tags": ["b"]}),
        json!(1),
    );
    let id = node.publish_ok(&by_tag).await;
    receives(&mut subscribed, &id).await;

    let by_business = event(
        "notice",
        json!({"sendType": "BUSINESS", "businesses": ["x"]}),
        json!(2),
    );
    let id = node.publish_ok(&by_business).await;
    receives(&mut subscribed, &id).await;

    node.assert_nothing_delivered(&mut plain).await;
    node.stop().await;
}

/// `SUBSCRIBE` is acknowledged and starts deliveries to its tags and
/// businesses; `UNSUBSCRIBE` is acknowledged and stops them.
#[tokio::test]
async fn subscribe_and_unsubscribe_change_what_arrives() {
    let node = TestNode::start().await;
    let mut client = node.connect("alice", "H5").await;
    let by_tag = event(
        "notice",
        json!({"sendType": "TAG", "tags": ["t"]}),
        json!(1),
    );
    let by_business = event(
        "notice",
        json!({"sendType": "BUSINESS", "businesses": ["b"]}),
        json!(2),
    );

    // Before subscribing, nothing arrives.
    node.publish_ok(&by_tag).await;
    node.publish_ok(&by_business).await;
    node.assert_nothing_delivered(&mut client).await;

    let change = json!({"tags": ["t"], "businesses": ["b"]});
    client.request_ok(frame("SUBSCRIBE", change.clone())).await;
    let id = node.publish_ok(&by_tag).await;
    receives(&mut client, &id).await;
    let id = node.publish_ok(&by_business).await;
    receives(&mut client, &id).await;

    client.request_ok(frame("UNSUBSCRIBE", change)).await;
    node.publish_ok(&by_tag).await;
    node.publish_ok(&by_business).await;
    node.assert_nothing_delivered(&mut client).await;
    node.stop().await;
}

/// Unsubscribing from one tag keeps the others.
#[tokio::test]
async fn unsubscribe_removes_only_the_named_tags() {
    let node = TestNode::start().await;
    let mut client = node.connect_with("alice", "H5", "&tags=keep,drop").await;
    client
        .request_ok(frame("UNSUBSCRIBE", json!({"tags": ["drop", "never"]})))
        .await;

    node.publish_ok(&event(
        "notice",
        json!({"sendType": "TAG", "tags": ["drop"]}),
        json!(1),
    ))
    .await;
    node.assert_nothing_delivered(&mut client).await;
    let id = node
        .publish_ok(&event(
            "notice",
            json!({"sendType": "TAG", "tags": ["keep"]}),
            json!(2),
        ))
        .await;
    receives(&mut client, &id).await;
    node.stop().await;
}

/// A session subscribed to two of the targeted tags gets one copy.
#[tokio::test]
async fn session_on_two_targeted_tags_gets_one_copy() {
    let node = TestNode::start().await;
    let mut client = node.connect_with("alice", "H5", "&tags=a,b").await;
    let id = node
        .publish_ok(&event(
            "notice",
            json!({"sendType": "TAG", "tags": ["a", "b", "c"]}),
            json!(1),
        ))
        .await;
    receives(&mut client, &id).await;
    node.assert_nothing_delivered(&mut client).await;
    node.stop().await;
}

/// A `BROADCAST` reaches every session of every user.
#[tokio::test]
async fn broadcast_reaches_every_session() {
    let node = TestNode::start().await;
    let mut clients = vec![
        node.connect("alice", "H5").await,
        node.connect("alice", "APP").await,
        node.connect("bob", "H5").await,
        node.connect_with("carol", "PC", "&tags=z").await,
    ];
    let id = node
        .publish_ok(&event(
            "notice",
            json!({"sendType": "BROADCAST"}),
            json!("all"),
        ))
        .await;
    for client in &mut clients {
        receives(client, &id).await;
    }
    node.stop().await;
}

/// `toClientType` narrows `BROADCAST`, `TAG` and `BUSINESS` sends too.
#[tokio::test]
async fn group_sends_are_narrowed_by_to_client_type() {
    let node = TestNode::start().await;
    let extra = "&tags=t&businesses=b";
    let mut web = node.connect_with("alice", "H5", extra).await;
    let mut app = node.connect_with("bob", "APP", extra).await;

    for address in [
        json!({"sendType": "BROADCAST"}),
        json!({"sendType": "TAG", "tags": ["t"]}),
        json!({"sendType": "BUSINESS", "businesses": ["b"]}),
    ] {
        let mut narrowed = event("notice", address, json!(1));
        narrowed["toClientType"] = json!("APP");
        let id = node.publish_ok(&narrowed).await;
        receives(&mut app, &id).await;
    }
    node.assert_nothing_delivered(&mut web).await;
    node.stop().await;
}

/// A `UNICAST` to a user with no session is accepted and reaches no one.
#[tokio::test]
async fn unicast_to_an_offline_user_reaches_no_one() {
    let node = TestNode::start().await;
    let mut online = node.connect("alice", "H5").await;
    node.publish_ok(&unicast("notice", "nobody", json!(1)))
        .await;
    node.assert_nothing_delivered(&mut online).await;
    node.stop().await;
}

/// Service events that are not addressed are refused with a non-zero
/// `result`: a `UNICAST` without `toUniqueId`, a `TAG` without tags, a
/// `BUSINESS` without businesses.
#[tokio::test]
async fn unaddressed_events_are_refused() {
    let node = TestNode::start().await;
    for address in [
        json!({"sendType": "UNICAST"}),
        json!({}),
        json!({"sendType": "TAG", "tags": []}),
        json!({"sendType": "BUSINESS"}),
    ] {
        let answer = node.publish(&event("notice", address, json!(1))).await;
        switchboard_tests::assert_refused(&answer, 400);
    }
    node.stop().await;
}
