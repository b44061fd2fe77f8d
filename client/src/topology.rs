//! Declaring the shared topology, and the message properties and headers of
//! the contract.
//!
//! Declarations are idempotent: every party (each gateway node, each
//! service's client) declares the durable part on every connect, with the
//! same arguments, so whoever starts first creates it. A declaration whose
//! arguments differ from the existing entity fails with 406 and kills its
//! channel, which is why [`declare_shared`] takes a channel of its own that
//! the caller throws away afterwards.

use lapin::options::{ExchangeDeclareOptions, QueueBindOptions, QueueDeclareOptions};
use lapin::types::{AMQPValue, FieldTable, LongString, ShortString};
use lapin::{BasicProperties, Channel, ExchangeKind};
use switchboard_protocol::amqp::{
    CONTENT_TYPE_JSON, DEAD_EXCHANGE, DEAD_QUEUE, INBOUND_BINDING_KEY, INBOUND_EXCHANGE,
    INBOUND_QUEUE, OUTBOUND_EXCHANGE, PERSISTENT,
};

/// Options of a durable exchange or queue.
fn durable_exchange() -> ExchangeDeclareOptions {
    ExchangeDeclareOptions {
        durable: true,
        ..ExchangeDeclareOptions::default()
    }
}

/// Declares the durable part of the topology that services and the gateway
/// share: the inbound exchange and queue, the outbound exchange, and the
/// dead-letter exchange and queue. Use a throwaway channel.
///
/// # Errors
///
/// The lapin error of the first declaration that fails (406 when an entity
/// exists with other arguments).
pub async fn declare_shared(channel: &Channel) -> Result<(), lapin::Error> {
    let none = FieldTable::default;

    channel
        .exchange_declare(
            INBOUND_EXCHANGE.into(),
            ExchangeKind::Topic,
            durable_exchange(),
            none(),
        )
        .await?;
    // One active consumer at a time: events are taken in publication order,
    // which is what keeps one producer's pushes to a user in order.
    let mut single = FieldTable::default();
    single.insert(short("x-single-active-consumer"), AMQPValue::Boolean(true));
    let options = QueueDeclareOptions {
        durable: true,
        ..QueueDeclareOptions::default()
    };
    channel
        .queue_declare(INBOUND_QUEUE.into(), options, single)
        .await?;
    channel
        .queue_bind(
            INBOUND_QUEUE.into(),
            INBOUND_EXCHANGE.into(),
            INBOUND_BINDING_KEY.into(),
            QueueBindOptions::default(),
            none(),
        )
        .await?;

    channel
        .exchange_declare(
            OUTBOUND_EXCHANGE.into(),
            ExchangeKind::Topic,
            durable_exchange(),
            none(),
        )
        .await?;

    channel
        .exchange_declare(
            DEAD_EXCHANGE.into(),
            ExchangeKind::Fanout,
            durable_exchange(),
            none(),
        )
        .await?;
    declare_durable_queue(channel, DEAD_QUEUE).await?;
    channel
        .queue_bind(
            DEAD_QUEUE.into(),
            DEAD_EXCHANGE.into(),
            "".into(),
            QueueBindOptions::default(),
            none(),
        )
        .await?;
    Ok(())
}

/// Declares a durable classic queue without arguments.
///
/// # Errors
///
/// The lapin error (406 when the queue exists with other arguments).
pub async fn declare_durable_queue(channel: &Channel, queue: &str) -> Result<(), lapin::Error> {
    let options = QueueDeclareOptions {
        durable: true,
        ..QueueDeclareOptions::default()
    };
    channel
        .queue_declare(queue.into(), options, FieldTable::default())
        .await?;
    Ok(())
}

/// Properties of a persistent JSON message: `content_type`
/// `application/json`, `delivery_mode` 2, `message_id`, and the current
/// time in seconds.
pub fn persistent_json(message_id: &str) -> BasicProperties {
    BasicProperties::default()
        .with_content_type(CONTENT_TYPE_JSON.into())
        .with_delivery_mode(PERSISTENT)
        .with_message_id(short(message_id))
        .with_timestamp(now_secs())
}

/// Seconds since the Unix epoch.
pub fn now_secs() -> u64 {
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH);
    now.map(|d| d.as_secs()).unwrap_or(0)
}

/// A short string, cut at a character boundary to AMQP's 255-byte limit
/// rather than panicking inside lapin.
pub fn short(text: &str) -> ShortString {
    let mut end = text.len().min(255);
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    ShortString::from(&text[..end])
}

/// A string header value.
pub fn long_string(text: &str) -> AMQPValue {
    AMQPValue::LongString(LongString::from(text.as_bytes().to_vec()))
}

/// The header `name` as text, where it is a string.
pub fn header_str(properties: &BasicProperties, name: &str) -> Option<String> {
    let value = properties.headers().as_ref()?.inner().get(name)?;
    match value {
        AMQPValue::LongString(s) => Some(String::from_utf8_lossy(s.as_bytes()).into_owned()),
        AMQPValue::ShortString(s) => Some(s.as_str().to_owned()),
        _ => None,
    }
}

/// The header `name` as a non-negative integer, whatever integer type the
/// publisher chose; `None` when absent, negative or not an integer.
pub fn header_u32(properties: &BasicProperties, name: &str) -> Option<u32> {
    let value = properties.headers().as_ref()?.inner().get(name)?;
    let wide: i64 = match *value {
        AMQPValue::ShortShortInt(v) => v.into(),
        AMQPValue::ShortShortUInt(v) => v.into(),
        AMQPValue::ShortInt(v) => v.into(),
        AMQPValue::ShortUInt(v) => v.into(),
        AMQPValue::LongInt(v) => v.into(),
        AMQPValue::LongUInt(v) => v.into(),
        AMQPValue::LongLongInt(v) => v,
        AMQPValue::Timestamp(v) => i64::try_from(v).ok()?,
        _ => return None,
    };
    u32::try_from(wide).ok()
}

/// The AMQP `message_id` property, where set and not empty.
pub fn message_id(properties: &BasicProperties) -> Option<&str> {
    properties
        .message_id()
        .as_ref()
        .map(ShortString::as_str)
        .filter(|id| !id.is_empty())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Headers are read whatever integer or string type the publisher used.
    #[test]
    fn reads_headers_of_any_width() {
        let mut headers = FieldTable::default();
        headers.insert("a".into(), AMQPValue::ShortShortUInt(3));
        headers.insert("b".into(), AMQPValue::LongLongInt(-1));
        headers.insert("c".into(), long_string("why"));
        let properties = BasicProperties::default().with_headers(headers);
        assert_eq!(header_u32(&properties, "a"), Some(3));
        assert_eq!(header_u32(&properties, "b"), None);
        assert_eq!(header_u32(&properties, "missing"), None);
        assert_eq!(header_str(&properties, "c").as_deref(), Some("why"));
    }

    /// Overlong text is cut at a character boundary, not a panic.
    #[test]
    fn short_strings_are_cut_safely() {
        let text = "é".repeat(200);
        let cut = short(&text);
        assert!(cut.as_str().len() <= 255);
        assert!(text.starts_with(cut.as_str()));
    }
}
