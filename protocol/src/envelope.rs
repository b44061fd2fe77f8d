//! The unified JSON envelope that every frame and every broker message carries.
//!
//! One type, [`Envelope`], serves all three directions (client to server,
//! server to client, client to client) and the RabbitMQ contract. Parsing is
//! lenient where the protocol says so (absent optional fields read as null or
//! empty, unknown fields are ignored) and strict about types: a field of the
//! wrong JSON type makes the whole frame invalid, answered with
//! [`ErrorCode::InvalidMessage`].
//!
//! Serialization always writes every field, with `null` for an absent one, so
//! client authors see one stable shape.

use serde::{Deserialize, Deserializer, Serialize};
use serde_json::Value;

/// Longest accepted `messageId`, `correlationId`, `businessType`, tag or
/// business name, in bytes. Longer values make the envelope invalid.
pub const MAX_NAME_LEN: usize = 128;

/// Most entries accepted in `tags` or `businesses` of one envelope.
pub const MAX_TARGETS: usize = 64;

/// How a delivery is addressed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum SendType {
    /// Every session of `toUniqueId`.
    Unicast,
    /// Every session subscribed to any of `tags`.
    Tag,
    /// Every session subscribed to any of `businesses`.
    Business,
    /// Every session.
    Broadcast,
}

/// What an envelope is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum MessageType {
    /// A client's request for the handler of `businessType`.
    ClientToServer,
    /// A push from a handler or a backend service.
    ServerToClient,
    /// A client's message for other clients, relayed if the handler permits.
    ClientToClient,
    /// Adds to the session's `tags` and `businesses`.
    Subscribe,
    /// Removes from the session's `tags` and `businesses`.
    Unsubscribe,
    /// Acceptance (server to client) or receipt (client to server).
    Ack,
    /// Application-level keep-alive.
    Heartbeat,
    /// First frame of a connection.
    Connected,
    /// A refusal; `content` holds `code` and `message`.
    Error,
}

/// The protocol's error codes, sent in the `content.code` of an `ERROR` frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum ErrorCode {
    /// The frame is not a valid envelope, or breaks a rule of the protocol.
    InvalidMessage,
    /// No handler owns the envelope's `businessType`.
    UnknownBusinessType,
    /// The handler does not allow this message from this sender.
    Forbidden,
    /// A binary frame; only text frames are part of the protocol.
    UnsupportedFrame,
    /// The sender exceeded a rate limit.
    RateLimited,
    /// The handler failed; details are in the server's log only.
    HandlerFailed,
    /// The service cannot take the message now (broker unreachable, draining).
    Unavailable,
}

impl ErrorCode {
    /// The code as it appears on the wire.
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorCode::InvalidMessage => "INVALID_MESSAGE",
            ErrorCode::UnknownBusinessType => "UNKNOWN_BUSINESS_TYPE",
            ErrorCode::Forbidden => "FORBIDDEN",
            ErrorCode::UnsupportedFrame => "UNSUPPORTED_FRAME",
            ErrorCode::RateLimited => "RATE_LIMITED",
            ErrorCode::HandlerFailed => "HANDLER_FAILED",
            ErrorCode::Unavailable => "UNAVAILABLE",
        }
    }
}

impl std::fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A refusal in protocol terms: a code for programs and a message for people.
///
/// This is what reaches a client in an `ERROR` frame, a producer in a
/// `/api/publish` answer, and the `x-switchboard-reason` header of a
/// dead-lettered message. Never put internal error details in `message`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{code}: {message}")]
pub struct Refusal {
    /// The protocol error code.
    pub code: ErrorCode,
    /// A short explanation, safe to show to the sender.
    pub message: String,
}

impl Refusal {
    /// A refusal with the given code and message.
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        Refusal {
            code,
            message: message.into(),
        }
    }

    /// `INVALID_MESSAGE` with the given message.
    pub fn invalid(message: impl Into<String>) -> Self {
        Refusal::new(ErrorCode::InvalidMessage, message)
    }

    /// `FORBIDDEN` with the given message.
    pub fn forbidden(message: impl Into<String>) -> Self {
        Refusal::new(ErrorCode::Forbidden, message)
    }

    /// `UNKNOWN_BUSINESS_TYPE` naming the business type.
    pub fn unknown_business_type(business_type: &str) -> Self {
        Refusal::new(
            ErrorCode::UnknownBusinessType,
            format!("no handler owns businessType '{business_type}'"),
        )
    }
}

/// The unified envelope. Field names on the wire are camelCase.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Envelope {
    /// Unique id; the server assigns one where the sender left it out.
    #[serde(default)]
    pub message_id: Option<String>,
    /// In an answer, the `messageId` it answers.
    #[serde(default)]
    pub correlation_id: Option<String>,
    /// How a delivery is addressed; a delivery without one is `UNICAST`.
    #[serde(default)]
    pub send_type: Option<SendType>,
    /// What the envelope is. Required in client frames; a service event
    /// without one is taken as `SERVER_TO_CLIENT`.
    #[serde(default)]
    pub message_type: Option<MessageType>,
    /// The business handler that owns the message.
    #[serde(default)]
    pub business_type: Option<String>,
    /// The sender's user id; set by the server for client frames.
    #[serde(default)]
    pub from_unique_id: Option<String>,
    /// The target user of a `UNICAST`.
    #[serde(default)]
    pub to_unique_id: Option<String>,
    /// The sender's client type; set by the server for client frames.
    #[serde(default)]
    pub from_client_type: Option<String>,
    /// Where given, narrows any send to sessions of this client type.
    #[serde(default)]
    pub to_client_type: Option<String>,
    /// Milliseconds since the Unix epoch; stamped by the server where absent.
    #[serde(default)]
    pub timestamp: Option<i64>,
    /// The business data, passed through untouched.
    #[serde(default)]
    pub content: Value,
    /// Targets of a `TAG` send, or the tags to change in `SUBSCRIBE`.
    #[serde(default, deserialize_with = "null_as_empty")]
    pub tags: Vec<String>,
    /// Targets of a `BUSINESS` send, or the businesses to change.
    #[serde(default, deserialize_with = "null_as_empty")]
    pub businesses: Vec<String>,
}

fn null_as_empty<'de, D: Deserializer<'de>>(de: D) -> Result<Vec<String>, D::Error> {
    Ok(Option::<Vec<String>>::deserialize(de)?.unwrap_or_default())
}

impl Envelope {
    /// An empty envelope of the given type, with every other field absent.
    pub fn new(message_type: MessageType) -> Self {
        Envelope {
            message_id: None,
            correlation_id: None,
            send_type: None,
            message_type: Some(message_type),
            business_type: None,
            from_unique_id: None,
            to_unique_id: None,
            from_client_type: None,
            to_client_type: None,
            timestamp: None,
            content: Value::Null,
            tags: Vec::new(),
            businesses: Vec::new(),
        }
    }

    /// Parses one envelope from JSON text.
    ///
    /// # Errors
    ///
    /// `INVALID_MESSAGE` when the text is not JSON, not an object, has a field
    /// of the wrong type, or breaks a size limit ([`MAX_NAME_LEN`],
    /// [`MAX_TARGETS`]). The message names the problem, never the content.
    pub fn parse(text: &str) -> Result<Envelope, Refusal> {
        Self::parse_bytes(text.as_bytes())
    }

    /// Like [`Envelope::parse`], for raw bytes that may not be UTF-8.
    ///
    /// # Errors
    ///
    /// As [`Envelope::parse`].
    pub fn parse_bytes(bytes: &[u8]) -> Result<Envelope, Refusal> {
        // serde also reads a struct from a JSON array of its fields in order;
        // the protocol's envelope is an object only.
        let first = bytes
            .iter()
            .find(|b| !matches!(b, b' ' | b'\t' | b'\n' | b'\r'));
        if first != Some(&b'{') {
            return Err(Refusal::invalid("not a valid envelope: not a JSON object"));
        }
        let envelope: Envelope = serde_json::from_slice(bytes).map_err(|err| describe(&err))?;
        envelope.check_limits()?;
        Ok(envelope)
    }

    /// Checks the size limits that parsing checks ([`MAX_NAME_LEN`],
    /// [`MAX_TARGETS`], no empty names); for envelopes built in code.
    ///
    /// # Errors
    ///
    /// `INVALID_MESSAGE` naming the first field that breaks a limit.
    pub fn check_limits(&self) -> Result<(), Refusal> {
        let names = [
            ("messageId", &self.message_id),
            ("correlationId", &self.correlation_id),
            ("businessType", &self.business_type),
            ("fromUniqueId", &self.from_unique_id),
            ("toUniqueId", &self.to_unique_id),
            ("fromClientType", &self.from_client_type),
            ("toClientType", &self.to_client_type),
        ];
        for (field, value) in names {
            match value {
                Some(v) if v.is_empty() => {
                    return Err(Refusal::invalid(format!("{field} must not be empty")));
                }
                Some(v) if v.len() > MAX_NAME_LEN => {
                    return Err(Refusal::invalid(format!(
                        "{field} is longer than {MAX_NAME_LEN} bytes"
                    )));
                }
                _ => {}
            }
        }
        for (field, list) in [("tags", &self.tags), ("businesses", &self.businesses)] {
            if list.len() > MAX_TARGETS {
                return Err(Refusal::invalid(format!(
                    "{field} has more than {MAX_TARGETS} entries"
                )));
            }
            if list.iter().any(|t| t.is_empty() || t.len() > MAX_NAME_LEN) {
                return Err(Refusal::invalid(format!(
                    "each entry of {field} must be 1 to {MAX_NAME_LEN} bytes"
                )));
            }
        }
        Ok(())
    }

    /// The effective send type: `UNICAST` where none was given.
    pub fn effective_send_type(&self) -> SendType {
        self.send_type.unwrap_or(SendType::Unicast)
    }

    /// Checks that the envelope names whom to deliver to.
    ///
    /// # Errors
    ///
    /// `INVALID_MESSAGE` for a `UNICAST` without `toUniqueId`, a `TAG` without
    /// `tags`, or a `BUSINESS` without `businesses`.
    pub fn check_addressed(&self) -> Result<(), Refusal> {
        match self.effective_send_type() {
            SendType::Unicast if self.to_unique_id.is_none() => {
                Err(Refusal::invalid("a UNICAST needs toUniqueId"))
            }
            SendType::Tag if self.tags.is_empty() => Err(Refusal::invalid("a TAG send needs tags")),
            SendType::Business if self.businesses.is_empty() => {
                Err(Refusal::invalid("a BUSINESS send needs businesses"))
            }
            _ => Ok(()),
        }
    }

    /// Fills in `messageId` and `timestamp` where absent.
    pub fn stamp(&mut self) {
        if self.message_id.is_none() {
            self.message_id = Some(new_message_id());
        }
        if self.timestamp.is_none() {
            self.timestamp = Some(now_millis());
        }
    }

    /// The `messageId`, or the empty string where there is none.
    pub fn id(&self) -> &str {
        self.message_id.as_deref().unwrap_or("")
    }

    /// The `businessType`, or the empty string where there is none.
    pub fn business(&self) -> &str {
        self.business_type.as_deref().unwrap_or("")
    }

    /// Serializes to JSON text.
    pub fn to_json(&self) -> String {
        // Serializing this type cannot fail: every map key is a string and
        // `Value` holds only JSON.
        serde_json::to_string(self).unwrap_or_else(|_| String::from("{}"))
    }

    /// An `ACK` answering `message_id`.
    pub fn ack(message_id: &str) -> Envelope {
        let mut env = Envelope::new(MessageType::Ack);
        env.correlation_id = Some(message_id.to_owned());
        env.stamp();
        env
    }

    /// An `ERROR` carrying `refusal`, answering `correlation_id` where known.
    pub fn error(refusal: &Refusal, correlation_id: Option<&str>) -> Envelope {
        let mut env = Envelope::new(MessageType::Error);
        env.correlation_id = correlation_id.map(str::to_owned);
        env.content = serde_json::json!({
            "code": refusal.code.as_str(),
            "message": refusal.message,
        });
        env.stamp();
        env
    }
}

/// Says what is wrong with a frame without quoting it: serde's own messages
/// echo the offending value, which may be anything the client sent, and
/// this text reaches the client and the log.
fn describe(err: &serde_json::Error) -> Refusal {
    use serde_json::error::Category;
    let (line, column) = (err.line(), err.column());
    let what = match err.classify() {
        Category::Syntax | Category::Io => "not valid JSON",
        Category::Eof => "JSON ends too early",
        Category::Data => "a field has the wrong type or an unknown value",
    };
    Refusal::invalid(format!(
        "not a valid envelope: {what} (line {line}, column {column})"
    ))
}

/// Best effort to find the `messageId` of a frame that failed to parse, so
/// the `ERROR` can name it in `correlationId`.
pub fn salvage_message_id(text: &str) -> Option<String> {
    #[derive(Deserialize)]
    struct IdOnly {
        #[serde(rename = "messageId")]
        message_id: Option<Value>,
    }
    let id: IdOnly = serde_json::from_str(text).ok()?;
    match id.message_id? {
        Value::String(s) if !s.is_empty() && s.len() <= MAX_NAME_LEN => Some(s),
        _ => None,
    }
}

/// A fresh message id (a random UUID).
pub fn new_message_id() -> String {
    uuid::Uuid::new_v4().to_string()
}

/// Milliseconds since the Unix epoch.
pub fn now_millis() -> i64 {
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH);
    now.map(|d| d.as_millis() as i64).unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Absent optional fields read as null or empty, unknown ones are ignored.
    #[test]
    fn lenient_about_absent_and_unknown_fields() {
        let env = Envelope::parse(r#"{"messageType":"HEARTBEAT","extra":1,"tags":null}"#)
            .expect("parses");
        assert_eq!(env.message_type, Some(MessageType::Heartbeat));
        assert!(env.tags.is_empty());
        assert_eq!(env.content, Value::Null);
    }

    /// A field of the wrong type makes the frame invalid.
    #[test]
    fn strict_about_types() {
        let err = Envelope::parse(r#"{"messageType":"HEARTBEAT","timestamp":"x"}"#).unwrap_err();
        assert_eq!(err.code, ErrorCode::InvalidMessage);
        let err = Envelope::parse(r#"{"messageType":"NOPE"}"#).unwrap_err();
        assert_eq!(err.code, ErrorCode::InvalidMessage);
        let err = Envelope::parse("[1,2]").unwrap_err();
        assert_eq!(err.code, ErrorCode::InvalidMessage);
    }

    /// Only a JSON object is an envelope: an array of the fields in order,
    /// which serde would read into the struct, is refused.
    #[test]
    fn only_objects_are_envelopes() {
        for text in [
            "[]",
            r#"[null, null, "UNICAST", "HEARTBEAT"]"#,
            " \n[]",
            "5",
            "",
        ] {
            let err = Envelope::parse(text).unwrap_err();
            assert_eq!(err.code, ErrorCode::InvalidMessage, "{text}");
        }
        assert!(Envelope::parse(" \r\n\t{\"messageType\":\"HEARTBEAT\"}").is_ok());
    }

    /// Too many targets are refused before anything looks at them.
    #[test]
    fn refuses_oversized_target_lists() {
        let tags: Vec<String> = (0..=MAX_TARGETS).map(|i| format!("t{i}")).collect();
        let text = serde_json::json!({"messageType": "SUBSCRIBE", "tags": tags}).to_string();
        assert_eq!(
            Envelope::parse(&text).unwrap_err().code,
            ErrorCode::InvalidMessage
        );
    }

    /// Deep nesting hits serde_json's recursion limit instead of the stack.
    #[test]
    fn deep_nesting_is_an_error_not_a_crash() {
        let text = format!(
            r#"{{"messageType":"HEARTBEAT","content":{}{}}}"#,
            "[".repeat(100_000),
            "]".repeat(100_000)
        );
        assert_eq!(
            Envelope::parse(&text).unwrap_err().code,
            ErrorCode::InvalidMessage
        );
    }

    /// Every field is written, absent ones as null.
    #[test]
    fn serializes_every_field() {
        let v: Value = serde_json::from_str(&Envelope::ack("m1").to_json()).unwrap();
        assert_eq!(v["messageType"], "ACK");
        assert_eq!(v["correlationId"], "m1");
        assert!(v.get("toUniqueId").is_some_and(Value::is_null));
        assert!(v["messageId"].is_string());
    }

    /// The id of a broken frame is recovered where possible.
    #[test]
    fn salvages_message_id() {
        assert_eq!(
            salvage_message_id(r#"{"messageId":"abc","messageType":5}"#).as_deref(),
            Some("abc")
        );
        assert_eq!(salvage_message_id("{"), None);
    }
}
