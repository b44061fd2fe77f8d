//! `order_status`: a shopper's page asks where an order is, and learns at
//! once when it moves.
//!
//! This crate is written the way a business team writes a handler: one
//! struct, the hooks its scenario needs, one `register_handler!`. The
//! walk-through is in `docs/handler-guide.md`; the server that links it is
//! `src/main.rs`:
//!
//! ```text
//! cargo run -p switchboard-example-custom-handler
//! ```
//!
//! Two directions meet here:
//!
//! - **From the order service.** An event with `businessType`
//!   `order_status`, a `UNICAST` to the order's owner (`toUniqueId`), and
//!   `content` `{ "orderId": string, "status": one of STATUSES }`.
//!   [`OrderStatus::check_event`] refuses anything else before it is
//!   accepted; [`OrderStatus::on_event`] records the status and pushes the
//!   event to the owner's sessions.
//! - **From a client.** A `CLIENT_TO_SERVER` request with `content`
//!   `{ "orderId": string }` is answered with an `ACK`, then a
//!   `SERVER_TO_CLIENT` reply `{ "orderId", "status", "updatedAt" }` to the
//!   asking session. An order nobody reported is `"UNKNOWN"`; another user's
//!   order is refused with `FORBIDDEN`.
//!
//! The handler remembers statuses in memory, standing in for the order
//! service's database that a real handler would read. The map lives in one
//! process and is not bounded: with several nodes each one knows only the
//! events it consumed, and nothing survives a restart.
#![warn(missing_docs)]

use std::collections::HashMap;
use std::sync::{RwLock, RwLockReadGuard, RwLockWriteGuard};

use serde_json::{Value, json};
use switchboard::{
    BusinessHandler, Context, Envelope, HandlerError, Refusal, SendType, register_handler,
};

/// The business type this crate owns.
pub const BUSINESS_TYPE: &str = "order_status";

/// The statuses the order service may report.
pub const STATUSES: [&str; 5] = ["CREATED", "PAID", "SHIPPED", "DELIVERED", "CANCELLED"];

/// What the handler knows of one order.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Order {
    owner: String,
    status: String,
    /// The reporting event's `timestamp`, milliseconds since the Unix epoch.
    updated_at: i64,
}

/// The handler: the last reported status of every order it has seen.
#[derive(Debug, Default)]
pub struct OrderStatus {
    orders: RwLock<HashMap<String, Order>>,
}

impl OrderStatus {
    fn read(&self) -> RwLockReadGuard<'_, HashMap<String, Order>> {
        // Each critical section is one map operation, so a panic elsewhere
        // cannot leave the map half-changed: poison is safe to ignore.
        self.orders.read().unwrap_or_else(|p| p.into_inner())
    }

    fn write(&self) -> RwLockWriteGuard<'_, HashMap<String, Order>> {
        self.orders.write().unwrap_or_else(|p| p.into_inner())
    }

    /// Records `order` unless a newer report is already known. Returns
    /// whether it was recorded.
    ///
    /// Events arrive at least once and, across nodes, not always in order: a
    /// repeat is harmless, and an older report must not undo a newer one.
    fn record(&self, order_id: &str, order: Order) -> bool {
        let mut orders = self.write();
        if let Some(known) = orders.get(order_id)
            && known.updated_at > order.updated_at
        {
            return false;
        }
        orders.insert(order_id.to_owned(), order);
        true
    }
}

/// The string field `name` of `content`, or `INVALID_MESSAGE` naming it.
fn string_field<'a>(content: &'a Value, name: &str) -> Result<&'a str, Refusal> {
    content
        .get(name)
        .and_then(Value::as_str)
        .ok_or_else(|| Refusal::invalid(format!("content.{name} must be a string")))
}

#[switchboard::async_trait]
impl BusinessHandler for OrderStatus {
    /// Refuses an event that is not a `UNICAST` to the owner, or whose
    /// content lacks `orderId` or a known `status`. Runs before
    /// `/api/publish` answers, and again before [`OrderStatus::on_event`].
    fn check_event(&self, event: &Envelope) -> Result<(), Refusal> {
        if event.effective_send_type() != SendType::Unicast || event.to_unique_id.is_none() {
            return Err(Refusal::invalid(
                "an order_status event is a UNICAST to the order's owner (toUniqueId)",
            ));
        }
        string_field(&event.content, "orderId")?;
        let status = string_field(&event.content, "status")?;
        if !STATUSES.contains(&status) {
            return Err(Refusal::invalid(format!(
                "content.status must be one of {}",
                STATUSES.join(", ")
            )));
        }
        Ok(())
    }

    /// Records the reported status, then pushes the event to the owner. A
    /// report older than the one already known is accepted without a push.
    async fn on_event(&self, ctx: &mut Context, event: Envelope) -> Result<(), HandlerError> {
        // `check_event` passed for this event just before, so these only
        // fail if the two hooks disagree.
        let order_id = string_field(&event.content, "orderId")?;
        let order = Order {
            owner: event.to_unique_id.clone().unwrap_or_default(),
            status: string_field(&event.content, "status")?.to_owned(),
            updated_at: event
                .timestamp
                .unwrap_or_else(switchboard::envelope::now_millis),
        };

        // Record before delivering, so a client that sees the push and asks
        // at once gets the new status. `record` takes and drops its lock
        // before the await below.
        if !self.record(order_id, order) {
            return Ok(());
        }
        ctx.deliver(event).await
    }

    /// Answers `{ "orderId" }` with the order's status for its owner.
    async fn on_client_message(
        &self,
        ctx: &mut Context,
        request: Envelope,
    ) -> Result<(), HandlerError> {
        let order_id = string_field(&request.content, "orderId")?;
        let asker = ctx
            .sender()
            .ok_or_else(|| HandlerError::failed("client request without a sender"))?;

        // Clone out of the map so no lock is held while the reply is built.
        let known = self.read().get(order_id).cloned();
        let reply = match known {
            Some(order) if order.owner != asker.unique_id => {
                return Err(Refusal::forbidden("this order belongs to another user").into());
            }
            Some(order) => json!({
                "orderId": order_id,
                "status": order.status,
                "updatedAt": order.updated_at,
            }),
            None => json!({ "orderId": order_id, "status": "UNKNOWN", "updatedAt": null }),
        };
        ctx.reply(reply);
        Ok(())
    }
}

register_handler! {
    business_type: BUSINESS_TYPE,
    description: "answers order status requests and pushes order updates to the owner",
    constructor: || Box::new(OrderStatus::default()),
}

#[cfg(test)]
mod tests {
    use super::*;
    use switchboard::MessageType;

    fn event(to: Option<&str>, content: Value) -> Envelope {
        let mut env = Envelope::new(MessageType::ServerToClient);
        env.business_type = Some(BUSINESS_TYPE.into());
        env.to_unique_id = to.map(String::from);
        env.content = content;
        env
    }

    fn order(status: &str, updated_at: i64) -> Order {
        Order {
            owner: "alice".into(),
            status: status.into(),
            updated_at,
        }
    }

    /// Only a UNICAST to the owner with orderId and a known status passes.
    #[test]
    fn check_event_wants_owner_order_and_known_status() {
        let handler = OrderStatus::default();
        let good = json!({ "orderId": "A-1", "status": "PAID" });
        assert!(
            handler
                .check_event(&event(Some("alice"), good.clone()))
                .is_ok()
        );
        assert!(handler.check_event(&event(None, good.clone())).is_err());

        let mut broadcast = event(Some("alice"), good);
        broadcast.send_type = Some(SendType::Broadcast);
        assert!(handler.check_event(&broadcast).is_err());

        let lost = json!({ "orderId": "A-1", "status": "LOST" });
        let err = handler
            .check_event(&event(Some("alice"), lost))
            .unwrap_err();
        assert!(err.message.contains("PAID"), "{}", err.message);
        let no_id = json!({ "status": "PAID" });
        assert!(handler.check_event(&event(Some("alice"), no_id)).is_err());
    }

    /// A repeated report is harmless; an older one does not undo a newer one.
    #[test]
    fn record_keeps_the_newest_report() {
        let handler = OrderStatus::default();
        assert!(handler.record("A-1", order("PAID", 20)));
        assert!(handler.record("A-1", order("PAID", 20)));
        assert!(!handler.record("A-1", order("CREATED", 10)));
        assert_eq!(handler.read()["A-1"], order("PAID", 20));
        assert!(handler.record("A-1", order("SHIPPED", 30)));
        assert_eq!(handler.read()["A-1"].status, "SHIPPED");
    }
}
