//! `payment_callback`: a payment service reports an order's result, and the
//! payer's open pages and apps learn it at once.
//!
//! An event must be a `UNICAST` (or name no `sendType`) with `toUniqueId` =
//! the payer and `content` holding at least string `orderId` and `status`;
//! anything else is refused before it is accepted (`/api/publish` answers
//! with a non-zero `result`; from RabbitMQ it is dead-lettered). An accepted
//! event becomes a `SERVER_TO_CLIENT` push to the payer's sessions, narrowed
//! by `toClientType` where given. The business type is reliable.

use switchboard::{BusinessHandler, Envelope, Refusal, SendType, register_handler};

/// The handler; delivery is the framework's default, as addressed.
#[derive(Debug, Default)]
pub struct PaymentCallback;

#[switchboard::async_trait]
impl BusinessHandler for PaymentCallback {
    fn reliable(&self) -> bool {
        true
    }

    fn check_event(&self, event: &Envelope) -> Result<(), Refusal> {
        if event.effective_send_type() != SendType::Unicast {
            return Err(Refusal::invalid(
                "a payment result is a UNICAST to the payer",
            ));
        }
        if event.to_unique_id.is_none() {
            return Err(Refusal::invalid(
                "a payment result needs toUniqueId (the payer)",
            ));
        }
        for field in ["orderId", "status"] {
            if !event.content.get(field).is_some_and(|v| v.is_string()) {
                return Err(Refusal::invalid(format!(
                    "content.{field} must be a string"
                )));
            }
        }
        Ok(())
    }
}

register_handler! {
    business_type: "payment_callback",
    description: "pushes a payment result to the payer's sessions, reliably",
    constructor: || Box::new(PaymentCallback),
}

#[cfg(test)]
mod tests {
    use super::*;
    use switchboard::MessageType;

    fn event(to: Option<&str>, content: serde_json::Value) -> Envelope {
        let mut env = Envelope::new(MessageType::ServerToClient);
        env.to_unique_id = to.map(String::from);
        env.content = content;
        env
    }

    /// Only an addressed event with orderId and status is accepted.
    #[test]
    fn checks_payer_and_order() {
        let handler = PaymentCallback;
        let ok = serde_json::json!({"orderId": "A-1", "status": "PAID"});
        assert!(handler.check_event(&event(Some("u"), ok.clone())).is_ok());
        assert!(handler.check_event(&event(None, ok)).is_err());
        let no_order = serde_json::json!({"status": "PAID"});
        assert!(handler.check_event(&event(Some("u"), no_order)).is_err());
    }
}
