//! The shipped business handlers over the wire: `qr_refresh`,
//! `payment_callback` and `page_update` (`notice` is covered by
//! `delivery.rs`), and unknown business types.

use serde_json::{Value, json};
use switchboard_tests::{TestNode, assert_ack, assert_refused, frame, unicast};

/// A `qr_refresh` request.
fn qr_request() -> Value {
    frame("CLIENT_TO_SERVER", json!({"businessType": "qr_refresh"}))
}

/// A `page_update` relay from a client with the given addressing.
fn page_update(address: Value, content: Value) -> Value {
    let mut relay = frame(
        "CLIENT_TO_CLIENT",
        json!({"businessType": "page_update", "content": content}),
    );
    if let (Some(relay), Value::Object(address)) = (relay.as_object_mut(), address) {
        relay.extend(address);
    }
    relay
}

/// A payment result for `payer`.
fn payment(payer: &str, order_id: &str) -> Value {
    unicast(
        "payment_callback",
        payer,
        json!({"orderId": order_id, "status": "PAID", "amount": 1999}),
    )
}

/// A `qr_refresh` request is answered by an `ACK`, then a `SERVER_TO_CLIENT`
/// reply naming the request, with a string ticket, a string QR content and a
/// numeric expiry.
#[tokio::test]
async fn qr_refresh_acks_then_replies_with_a_ticket() {
    let node = TestNode::start().await;
    let mut client = node.connect("alice", "H5").await;
    let request = qr_request();
    let id = request["messageId"].as_str().unwrap().to_owned();
    client.send(&request).await;

    assert_ack(&client.recv().await, &id);
    let reply = client.recv().await;
    assert_eq!(reply["messageType"], "SERVER_TO_CLIENT", "{reply}");
    assert_eq!(reply["businessType"], "qr_refresh", "{reply}");
    assert_eq!(reply["correlationId"], id.as_str(), "{reply}");
    let content = &reply["content"];
    assert!(content["ticket"].is_string(), "{reply}");
    assert!(content["qrContent"].is_string(), "{reply}");
    assert!(content["expiresAt"].is_number(), "{reply}");
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64;
    assert!(content["expiresAt"].as_i64().unwrap() > now, "{reply}");
    node.stop().await;
}

/// Every `qr_refresh` reply carries a new ticket.
#[tokio::test]
async fn qr_refresh_issues_a_new_ticket_each_time() {
    let node = TestNode::start().await;
    let mut client = node.connect("alice", "H5").await;
    let mut tickets = Vec::new();
    for _ in 0..5 {
        client.request_ok(qr_request()).await;
        let reply = client.recv_type("SERVER_TO_CLIENT").await;
        tickets.push(reply["content"]["ticket"].as_str().unwrap().to_owned());
    }
    let mut unique = tickets.clone();
    unique.sort();
    unique.dedup();
    assert_eq!(unique.len(), tickets.len(), "repeated tickets: {tickets:?}");
    node.stop().await;
}

/// The `qr_refresh` reply goes only to the requesting session, not to the
/// same user's other sessions of the same client type.
#[tokio::test]
async fn qr_refresh_replies_only_to_the_requesting_session() {
    let node = TestNode::start().await;
    let mut asking = node.connect("alice", "H5").await;
    let mut sibling = node.connect("alice", "H5").await;
    asking.request_ok(qr_request()).await;
    asking.recv_type("SERVER_TO_CLIENT").await;

    // The marker reaches both sessions; the sibling must see it first.
    node.assert_nothing_delivered(&mut sibling).await;
    node.stop().await;
}

/// A payment result published over HTTP reaches every session of the payer,
/// narrowed by `toClientType`, and no one else.
#[tokio::test]
async fn payment_callback_reaches_the_payers_sessions() {
    let node = TestNode::start().await;
    let mut web = node.connect("payer", "H5").await;
    let mut app = node.connect("payer", "APP").await;
    let mut other = node.connect("someone", "H5").await;

    let id = node.publish_ok(&payment("payer", "A-1001")).await;
    for client in [&mut web, &mut app] {
        let push = client.recv().await;
        assert_eq!(push["messageId"], id.as_str(), "{push}");
        assert_eq!(push["messageType"], "SERVER_TO_CLIENT", "{push}");
        assert_eq!(push["businessType"], "payment_callback", "{push}");
        assert_eq!(push["content"]["orderId"], "A-1001", "{push}");
        assert_eq!(push["content"]["amount"], 1999, "{push}");
    }

    let mut narrowed = payment("payer", "A-1002");
    narrowed["toClientType"] = json!("APP");
    let id = node.publish_ok(&narrowed).await;
    assert_eq!(app.recv().await["messageId"], id.as_str());
    node.assert_nothing_delivered(&mut web).await;
    node.assert_nothing_delivered(&mut other).await;
    node.stop().await;
}

/// A payment result without `toUniqueId`, `orderId` or `status`, or not a
/// `UNICAST`, is refused with a non-zero `result` and not delivered.
#[tokio::test]
async fn payment_callback_without_payer_or_order_is_refused() {
    let node = TestNode::start().await;
    let mut payer = node.connect("payer", "H5").await;

    let mut no_payer = payment("payer", "A-1");
    no_payer.as_object_mut().unwrap().remove("toUniqueId");
    let mut no_order = payment("payer", "A-1");
    no_order["content"]
        .as_object_mut()
        .unwrap()
        .remove("orderId");
    let mut no_status = payment("payer", "A-1");
    no_status["content"]
        .as_object_mut()
        .unwrap()
        .remove("status");
    let mut numeric_order = payment("payer", "A-1");
    numeric_order["content"]["orderId"] = json!(1001);
    let mut broadcast = payment("payer", "A-1");
    broadcast["sendType"] = json!("BROADCAST");

    for refused in [no_payer, no_order, no_status, numeric_order, broadcast] {
        let answer = node.publish(&refused).await;
        assert_refused(&answer, 400);
        assert!(
            answer.1["description"]
                .as_str()
                .unwrap()
                .contains("INVALID_MESSAGE"),
            "{}",
            answer.1
        );
    }
    node.assert_nothing_delivered(&mut payer).await;
    node.stop().await;
}

/// A `page_update` `UNICAST` is relayed to the target's sessions with the
/// sender's identity, and the sender gets an `ACK`.
#[tokio::test]
async fn page_update_relays_a_unicast_with_the_senders_identity() {
    let node = TestNode::start().await;
    let mut sender = node.connect("alice", "H5").await;
    let mut web = node.connect("bob", "H5").await;
    let mut app = node.connect("bob", "APP").await;

    let relay = page_update(
        json!({"sendType": "UNICAST", "toUniqueId": "bob"}),
        json!({"page": "cart", "items": 3}),
    );
    sender.request_ok(relay.clone()).await;
    for client in [&mut web, &mut app] {
        let got = client.recv().await;
        assert_eq!(got["messageType"], "CLIENT_TO_CLIENT", "{got}");
        assert_eq!(got["messageId"], relay["messageId"], "{got}");
        assert_eq!(got["fromUniqueId"], "alice", "{got}");
        assert_eq!(got["fromClientType"], "H5", "{got}");
        assert_eq!(got["content"], json!({"page": "cart", "items": 3}));
    }

    // Narrowed by toClientType.
    let narrowed = page_update(
        json!({"sendType": "UNICAST", "toUniqueId": "bob", "toClientType": "APP"}),
        json!({"page": "home"}),
    );
    sender.request_ok(narrowed.clone()).await;
    assert_eq!(app.recv().await["messageId"], narrowed["messageId"]);
    node.assert_nothing_delivered(&mut web).await;
    node.assert_nothing_delivered(&mut sender).await;
    node.stop().await;
}

/// A `page_update` `BROADCAST`, `TAG` or `BUSINESS` send is refused with
/// `FORBIDDEN` and relayed to no one.
#[tokio::test]
async fn page_update_group_sends_are_forbidden() {
    let node = TestNode::start().await;
    let mut sender = node.connect("alice", "H5").await;
    let mut other = node.connect_with("bob", "H5", "&tags=t&businesses=b").await;

    for address in [
        json!({"sendType": "BROADCAST"}),
        json!({"sendType": "TAG", "tags": ["t"]}),
        json!({"sendType": "BUSINESS", "businesses": ["b"]}),
    ] {
        let relay = page_update(address, json!({"page": "x"}));
        sender.request_refused(relay, "FORBIDDEN").await;
    }
    node.assert_nothing_delivered(&mut other).await;
    node.stop().await;
}

/// A `page_update` whose `content` is not an object, or that names no
/// target, is refused with `INVALID_MESSAGE`.
#[tokio::test]
async fn page_update_needs_an_object_and_a_target() {
    let node = TestNode::start().await;
    let mut sender = node.connect("alice", "H5").await;
    let mut target = node.connect("bob", "H5").await;
    let to_bob = json!({"sendType": "UNICAST", "toUniqueId": "bob"});

    for content in [json!("text"), json!([1, 2]), json!(7), Value::Null] {
        let relay = page_update(to_bob.clone(), content);
        sender.request_refused(relay, "INVALID_MESSAGE").await;
    }
    let untargeted = page_update(json!({"sendType": "UNICAST"}), json!({}));
    sender.request_refused(untargeted, "INVALID_MESSAGE").await;
    node.assert_nothing_delivered(&mut target).await;
    node.stop().await;
}

/// A client request to a business type that takes no client requests
/// (`notice`) is refused with `FORBIDDEN`, and so is a relay through one.
#[tokio::test]
async fn server_to_client_types_refuse_client_frames() {
    let node = TestNode::start().await;
    let mut client = node.connect("alice", "H5").await;
    let request = frame("CLIENT_TO_SERVER", json!({"businessType": "notice"}));
    client.request_refused(request, "FORBIDDEN").await;
    let relay = frame(
        "CLIENT_TO_CLIENT",
        json!({"businessType": "payment_callback", "toUniqueId": "alice", "content": {}}),
    );
    client.request_refused(relay, "FORBIDDEN").await;
    node.stop().await;
}

/// An unknown `businessType` is refused with `UNKNOWN_BUSINESS_TYPE` on the
/// socket (request and relay) and with a non-zero `result` over HTTP.
#[tokio::test]
async fn unknown_business_type_is_refused_everywhere() {
    let node = TestNode::start().await;
    let mut client = node.connect("alice", "H5").await;

    let request = frame("CLIENT_TO_SERVER", json!({"businessType": "no_such_type"}));
    client
        .request_refused(request, "UNKNOWN_BUSINESS_TYPE")
        .await;
    let relay = frame(
        "CLIENT_TO_CLIENT",
        json!({"businessType": "no_such_type", "toUniqueId": "alice", "content": {}}),
    );
    client.request_refused(relay, "UNKNOWN_BUSINESS_TYPE").await;

    let answer = node
        .publish(&unicast("no_such_type", "alice", json!({})))
        .await;
    assert_refused(&answer, 400);
    let description = answer.1["description"].as_str().unwrap();
    assert!(
        description.contains("UNKNOWN_BUSINESS_TYPE"),
        "{description}"
    );

    // A request without any businessType is invalid rather than unknown.
    let bare = frame("CLIENT_TO_SERVER", json!({}));
    client.request_refused(bare, "INVALID_MESSAGE").await;
    let no_type = json!({"toUniqueId": "alice", "content": {}});
    assert_refused(&node.publish(&no_type).await, 400);
    node.assert_nothing_delivered(&mut client).await;
    node.stop().await;
}
