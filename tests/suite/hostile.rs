//! Hostile and broken clients: malformed frames are answered with `ERROR`
//! and the same connection goes on serving; frames over the size limit,
//! floods and clients that never read cost only the offender.

use serde_json::{Value, json};
use switchboard_tests::{Client, TestNode, assert_error, event, frame, new_id, test_config};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::frame::Frame;
use tokio_tungstenite::tungstenite::protocol::frame::coding::{Data, OpCode};

/// Sends `text`, expects an `ERROR` with `code` naming `correlation` (or
/// nothing), then proves the connection still serves.
async fn refused_and_alive(client: &mut Client, text: String, code: &str, correlation: Value) {
    client.send_text(text.clone()).await;
    let answer = client.recv().await;
    assert_error(&answer, code);
    assert_eq!(
        answer["correlationId"], correlation,
        "wrong correlationId for {text:.200}: {answer}"
    );
    client.assert_alive().await;
}

/// Text that is not JSON gets `INVALID_MESSAGE`, and the connection stays.
#[tokio::test]
async fn invalid_json_is_refused_and_the_connection_stays() {
    let node = TestNode::start().await;
    let mut client = node.connect("alice", "H5").await;
    for text in [
        "{",
        "not json",
        "",
        "{\"messageType\":\"HEARTBEAT\",}",
        "\u{0}",
    ] {
        refused_and_alive(&mut client, text.into(), "INVALID_MESSAGE", Value::Null).await;
    }
    node.stop().await;
}

/// JSON that is not an object gets `INVALID_MESSAGE`.
#[tokio::test]
async fn non_object_json_is_refused() {
    let node = TestNode::start().await;
    let mut client = node.connect("alice", "H5").await;
    // The array holds an envelope's fields in declaration order, which a
    // lenient parser would read as a HEARTBEAT.
    let fields_in_order = r#"[null, null, null, "HEARTBEAT"]"#;
    for text in [
        "[1,2]",
        "\"HEARTBEAT\"",
        "42",
        "null",
        "true",
        "[]",
        fields_in_order,
    ] {
        refused_and_alive(&mut client, text.into(), "INVALID_MESSAGE", Value::Null).await;
    }
    node.stop().await;
}

/// A field of the wrong type makes the frame `INVALID_MESSAGE`, answered
/// with the frame's `messageId` where it could be read.
#[tokio::test]
async fn wrong_field_types_are_refused() {
    let node = TestNode::start().await;
    let mut client = node.connect("alice", "H5").await;
    let broken = [
        json!({"messageType": 5}),
        json!({"messageType": "SIDEWAYS"}),
        json!({"messageType": "HEARTBEAT", "timestamp": "yesterday"}),
        json!({"messageType": "SUBSCRIBE", "tags": "a,b"}),
        json!({"messageType": "SUBSCRIBE", "tags": [1, 2]}),
        json!({"messageType": "SUBSCRIBE", "businesses": {"a": 1}}),
        json!({"messageType": "CLIENT_TO_CLIENT", "toUniqueId": 7}),
        json!({"messageType": "CLIENT_TO_CLIENT", "sendType": "SIDEWAYS"}),
        json!({"messageType": "CLIENT_TO_SERVER", "businessType": ["qr_refresh"]}),
        json!({"messageType": "HEARTBEAT", "correlationId": false}),
    ];
    for mut frame in broken {
        let id = new_id("typed");
        frame["messageId"] = json!(id);
        refused_and_alive(&mut client, frame.to_string(), "INVALID_MESSAGE", json!(id)).await;
    }

    // A messageId of the wrong type cannot be named in the answer.
    let text = json!({"messageId": 12, "messageType": "HEARTBEAT"}).to_string();
    refused_and_alive(&mut client, text, "INVALID_MESSAGE", Value::Null).await;
    node.stop().await;
}

/// A frame without `messageType`, with an empty or over-long name, is
/// refused with `INVALID_MESSAGE`.
#[tokio::test]
async fn missing_and_malformed_names_are_refused() {
    let node = TestNode::start().await;
    let mut client = node.connect("alice", "H5").await;

    let id = new_id("untyped");
    let text = json!({"messageId": id}).to_string();
    refused_and_alive(&mut client, text, "INVALID_MESSAGE", json!(id)).await;

    for (field, value) in [
        ("businessType", json!("")),
        ("businessType", json!("b".repeat(129))),
        ("toUniqueId", json!("")),
        ("correlationId", json!("c".repeat(129))),
    ] {
        let mut bad = frame("CLIENT_TO_SERVER", json!({"businessType": "qr_refresh"}));
        bad[field] = value;
        let id = bad["messageId"].clone();
        refused_and_alive(&mut client, bad.to_string(), "INVALID_MESSAGE", id).await;
    }

    let long_id = json!({"messageId": "m".repeat(129), "messageType": "HEARTBEAT"});
    refused_and_alive(
        &mut client,
        long_id.to_string(),
        "INVALID_MESSAGE",
        Value::Null,
    )
    .await;
    node.stop().await;
}

/// Unknown fields are ignored: the frame is served as if they were absent.
#[tokio::test]
async fn unknown_fields_are_ignored() {
    let node = TestNode::start().await;
    let mut client = node.connect("alice", "H5").await;
    let extra = json!({"color": "blue", "nested": {"deep": [1, 2]}, "tags ": 5});

    let mut beat = frame("HEARTBEAT", extra.clone());
    beat["MessageType"] = json!("ERROR");
    client.send(&beat).await;
    let answer = client.recv().await;
    assert_eq!(answer["messageType"], "HEARTBEAT", "{answer}");
    assert_eq!(answer["correlationId"], beat["messageId"]);

    let mut request = frame("CLIENT_TO_SERVER", extra);
    request["businessType"] = json!("qr_refresh");
    client.request_ok(request).await;
    node.stop().await;
}

/// More than 64 tags or businesses in one frame is `INVALID_MESSAGE`; 64
/// is accepted.
#[tokio::test]
async fn oversized_target_lists_are_refused() {
    let node = TestNode::start().await;
    let mut client = node.connect("alice", "H5").await;
    let names = |n: usize| -> Vec<String> { (0..n).map(|i| format!("n{i}")).collect() };

    for field in ["tags", "businesses"] {
        let too_many = frame("SUBSCRIBE", json!({ field: names(65) }));
        let id = too_many["messageId"].clone();
        refused_and_alive(&mut client, too_many.to_string(), "INVALID_MESSAGE", id).await;
        client
            .request_ok(frame("SUBSCRIBE", json!({ field: names(64) })))
            .await;
    }

    let huge = frame("SUBSCRIBE", json!({"tags": names(5_000)}));
    let id = huge["messageId"].clone();
    refused_and_alive(&mut client, huge.to_string(), "INVALID_MESSAGE", id).await;
    node.stop().await;
}

/// A session holds at most 256 subscriptions; a `SUBSCRIBE` past that is
/// refused whole and the session keeps the ones it had.
#[tokio::test]
async fn subscriptions_per_session_are_capped() {
    let node = TestNode::start().await;
    let mut client = node.connect("alice", "H5").await;
    for batch in 0..4 {
        let tags: Vec<String> = (0..64).map(|i| format!("t{batch}-{i}")).collect();
        client
            .request_ok(frame("SUBSCRIBE", json!({"tags": tags})))
            .await;
    }
    let over = frame("SUBSCRIBE", json!({"tags": ["one-more"]}));
    client.request_refused(over, "INVALID_MESSAGE").await;

    let kept = event(
        "notice",
        json!({"sendType": "TAG", "tags": ["t3-63"]}),
        json!(1),
    );
    let id = node.publish_ok(&kept).await;
    assert_eq!(client.recv().await["messageId"], id.as_str());
    let refused = event(
        "notice",
        json!({"sendType": "TAG", "tags": ["one-more"]}),
        json!(2),
    );
    node.publish_ok(&refused).await;
    node.assert_nothing_delivered(&mut client).await;
    node.stop().await;
}

/// Deeply nested JSON is refused with `INVALID_MESSAGE`, without harm to the
/// node; a large flat content is passed through.
#[tokio::test]
async fn deep_nesting_is_refused_and_large_content_passes() {
    let node = TestNode::start().await;
    let mut client = node.connect("alice", "H5").await;
    for depth in [200, 10_000] {
        let text = format!(
            r#"{{"messageId":"deep","messageType":"HEARTBEAT","content":{}{}}}"#,
            "[".repeat(depth),
            "]".repeat(depth)
        );
        client.send_text(text).await;
        assert_error(&client.recv().await, "INVALID_MESSAGE");
        client.assert_alive().await;
        let text = format!(
            r#"{{"messageId":"deep","messageType":"HEARTBEAT","content":{}1{}}}"#,
            r#"{"a":"#.repeat(depth),
            "}".repeat(depth)
        );
        client.send_text(text).await;
        assert_error(&client.recv().await, "INVALID_MESSAGE");
        client.assert_alive().await;
    }

    let flat = frame("HEARTBEAT", json!({"content": vec![1; 10_000]}));
    client.send(&flat).await;
    assert_eq!(client.recv().await["correlationId"], flat["messageId"]);
    node.stop().await;
}

/// Binary frames, whether they hold JSON or bytes that are not UTF-8, get
/// `UNSUPPORTED_FRAME`, and the connection stays.
#[tokio::test]
async fn binary_frames_are_unsupported_and_the_connection_stays() {
    let node = TestNode::start().await;
    let mut client = node.connect("alice", "H5").await;
    let json_bytes = frame("HEARTBEAT", json!({})).to_string().into_bytes();
    for bytes in [json_bytes, vec![0xff, 0xfe, 0x80, 0x00], Vec::new()] {
        client.send_message(Message::binary(bytes)).await;
        assert_error(&client.recv().await, "UNSUPPORTED_FRAME");
        client.assert_alive().await;
    }
    node.stop().await;
}

/// A text frame whose bytes are not UTF-8 breaks the WebSocket protocol: the
/// connection is closed with 1007, and other sessions are unaffected.
#[tokio::test]
async fn text_frame_with_invalid_utf8_closes_with_1007() {
    let node = TestNode::start().await;
    let mut bystander = node.connect("bob", "H5").await;
    let mut client = node.connect("alice", "H5").await;
    let bad = Frame::message(vec![b'{', 0xff, 0xfe, b'}'], OpCode::Data(Data::Text), true);
    client.send_message(Message::Frame(bad)).await;
    assert_eq!(client.closed_with().await, Some(1007));
    node.wait_for_sessions(1).await;
    bystander.assert_alive().await;
    node.stop().await;
}

/// A frame that breaks the WebSocket framing rules (reserved bits set)
/// closes the connection with 1002, and other sessions are unaffected.
#[tokio::test]
async fn framing_violation_closes_with_1002() {
    let node = TestNode::start().await;
    let mut bystander = node.connect("bob", "H5").await;
    let mut client = node.connect("alice", "H5").await;
    let text = frame("HEARTBEAT", json!({})).to_string();
    let mut bad = Frame::message(text.into_bytes(), OpCode::Data(Data::Text), true);
    bad.header_mut().rsv2 = true;
    client.send_message(Message::Frame(bad)).await;
    assert_eq!(client.closed_with().await, Some(1002));
    node.wait_for_sessions(1).await;
    bystander.assert_alive().await;
    node.stop().await;
}

/// Server-only message types sent by a client are `INVALID_MESSAGE`.
#[tokio::test]
async fn server_only_message_types_from_a_client_are_invalid() {
    let node = TestNode::start().await;
    let mut client = node.connect("alice", "H5").await;
    let mut victim = node.connect("bob", "H5").await;
    for message_type in ["SERVER_TO_CLIENT", "CONNECTED", "ERROR"] {
        let forged = frame(
            message_type,
            json!({
                "businessType": "notice",
                "sendType": "UNICAST",
                "toUniqueId": "bob",
                "content": {"text": "forged"},
            }),
        );
        let id = forged["messageId"].clone();
        refused_and_alive(&mut client, forged.to_string(), "INVALID_MESSAGE", id).await;
    }
    node.assert_nothing_delivered(&mut victim).await;
    node.stop().await;
}

/// A frame over `ws.max_message_bytes` closes its connection with 1009; a
/// frame of exactly the limit is served; other sessions are unaffected.
#[tokio::test]
async fn oversized_frame_closes_with_1009() {
    let node = TestNode::start().await;
    let limit = node.handle().node().config().ws.max_message_bytes;
    let mut bystander = node.connect("bob", "H5").await;
    let mut client = node.connect("alice", "H5").await;

    // Pad a HEARTBEAT to exactly the limit.
    let mut at_limit = frame("HEARTBEAT", json!({"pad": ""}));
    let padding = limit - at_limit.to_string().len();
    at_limit["pad"] = json!("p".repeat(padding));
    assert_eq!(at_limit.to_string().len(), limit);
    client.send(&at_limit).await;
    assert_eq!(client.recv().await["correlationId"], at_limit["messageId"]);

    at_limit["pad"] = json!("p".repeat(padding + 1));
    client.send(&at_limit).await;
    assert_eq!(client.closed_with().await, Some(1009));
    node.wait_for_sessions(1).await;
    bystander.assert_alive().await;
    node.stop().await;
}

/// A burst of 5,000 frames sent without waiting is answered in full and in
/// order, and the node goes on serving others.
#[tokio::test]
async fn flood_of_frames_is_answered_and_the_node_stays_healthy() {
    const FRAMES: usize = 5_000;
    let node = TestNode::start().await;
    let mut bystander = node.connect("bob", "H5").await;
    let mut client = node.connect("alice", "H5").await;

    let beats: Vec<Value> = (0..FRAMES).map(|_| frame("HEARTBEAT", json!({}))).collect();
    let texts = beats.iter().map(Value::to_string).collect();
    let answers = client.flood(texts, FRAMES).await;
    for (beat, answer) in beats.iter().zip(&answers) {
        assert_eq!(answer["messageType"], "HEARTBEAT", "{answer}");
        assert_eq!(answer["correlationId"], beat["messageId"], "out of order");
    }

    assert_eq!(node.get("/healthz").await.0, 200);
    client.assert_alive().await;
    bystander.assert_alive().await;
    let id = node
        .publish_ok(&event("notice", json!({"sendType": "BROADCAST"}), json!(1)))
        .await;
    assert_eq!(bystander.recv().await["messageId"], id.as_str());
    node.stop().await;
}

/// A client that never reads is cut once its send queue overflows (close
/// code 4001, or the connection just ends when the socket is full), and its
/// session is removed; a reading client meanwhile receives every message, in
/// order.
#[tokio::test]
async fn client_that_never_reads_is_cut_and_readers_get_everything() {
    // Each broadcast is about 16 KiB; the bound keeps the test finite should
    // the slow client never be cut (about 32 MiB in all).
    const MAX_MESSAGES: u64 = 2_000;
    let mut config = test_config();
    config.ws.send_queue_len = 8;
    let node = TestNode::start_with(config).await;
    let mut reader = node.connect("reader", "H5").await;
    let mut slow = node.connect("slow", "H5").await;
    let pad = "x".repeat(16 * 1024);

    // The reader takes each message before the next is published, so only
    // the slow client's queue can fill.
    let mut published = 0;
    while node.session_count() == 2 {
        assert!(
            published < MAX_MESSAGES,
            "the slow client was not cut after {published} messages"
        );
        let broadcast = event(
            "notice",
            json!({"sendType": "BROADCAST"}),
            json!({"seq": published, "pad": pad}),
        );
        let id = node.publish_ok(&broadcast).await;
        let got = reader.recv().await;
        assert_eq!(got["messageId"], id.as_str());
        assert_eq!(got["content"]["seq"], published, "out of order");
        published += 1;
    }
    assert!(
        !node.handle().node().hub().has_user("slow"),
        "the wrong session was cut"
    );

    // The reader is still served, and the slow client sees its cut once it
    // reads through what was buffered.
    reader.assert_alive().await;
    let code = slow.closed_with().await;
    assert!(matches!(code, Some(4001) | None), "closed with {code:?}");
    node.stop().await;
}
