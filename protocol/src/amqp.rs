//! The RabbitMQ names and conventions of the contract.
//!
//! Services in any language reach the gateway through these exchanges and
//! queues alone; `docs/rabbitmq.md` describes the topology and the
//! guarantees. Everything here is a constant so that a rename is a compile
//! error on both sides, never a silent split.
//!
//! | name | kind | purpose |
//! | --- | --- | --- |
//! | [`INBOUND_EXCHANGE`] | durable topic exchange | services publish events, routing key = `businessType` |
//! | [`INBOUND_QUEUE`] | durable queue with a single active consumer, bound with `#` | one gateway node at a time processes events, in order; the others stand by |
//! | [`OUTBOUND_EXCHANGE`] | durable topic exchange | handlers forward client messages to services, routing key = `businessType` |
//! | [`DEAD_EXCHANGE`] / [`DEAD_QUEUE`] | durable fanout exchange and queue | events that can never succeed, with [`HEADER_REASON`] |
//! | [`DELIVER_EXCHANGE`] | durable direct exchange | deliveries between gateway nodes |
//! | [`node_queue`] | one exclusive queue per node | bound with [`DELIVER_ALL_KEY`] and [`user_routing_key`] per local user |
//! | [`INBOX_EXCHANGE`] | durable direct exchange | reliable pushes, routing key = `uniqueId` |
//! | [`inbox_queue`] | one durable queue per user with reliable pushes | kept pushes of one user until acknowledged |

/// Durable topic exchange that services publish events to; routing key =
/// the envelope's `businessType`.
pub const INBOUND_EXCHANGE: &str = "switchboard.inbound";

/// Durable queue bound to [`INBOUND_EXCHANGE`] with [`INBOUND_BINDING_KEY`],
/// declared with `x-single-active-consumer`: every gateway node subscribes,
/// RabbitMQ feeds one at a time, so events are taken in publication order
/// and a standby takes over (with the unacknowledged events, in order) when
/// the active node goes away.
pub const INBOUND_QUEUE: &str = "switchboard.inbound.events";

/// The binding key of [`INBOUND_QUEUE`]: every business type.
pub const INBOUND_BINDING_KEY: &str = "#";

/// Durable topic exchange that carries client messages forwarded by handlers
/// to backend services; routing key = `businessType`. Services bind their
/// own durable queues to it.
pub const OUTBOUND_EXCHANGE: &str = "switchboard.outbound";

/// Durable fanout exchange for events that can never succeed.
pub const DEAD_EXCHANGE: &str = "switchboard.dead";

/// Durable queue bound to [`DEAD_EXCHANGE`]; an operator inspects it.
pub const DEAD_QUEUE: &str = "switchboard.dead";

/// Durable direct exchange that carries deliveries between gateway nodes.
pub const DELIVER_EXCHANGE: &str = "switchboard.deliver";

/// Prefix of each node's own delivery queue; see [`node_queue`].
pub const NODE_QUEUE_PREFIX: &str = "switchboard.node.";

/// Routing key of deliveries that every node must see (`TAG`, `BUSINESS`,
/// `BROADCAST`); every node queue is bound with it.
pub const DELIVER_ALL_KEY: &str = "all";

/// Prefix of the routing key of a `UNICAST` delivery; see
/// [`user_routing_key`].
pub const USER_KEY_PREFIX: &str = "user.";

/// Header of a dead letter: why it was dead-lettered, in words
/// (`"<CODE>: <explanation>"`).
pub const HEADER_REASON: &str = "x-switchboard-reason";

/// Header of a dead letter: the protocol error code alone, for programs
/// (`INVALID_MESSAGE`, `UNKNOWN_BUSINESS_TYPE`, `FORBIDDEN`,
/// `HANDLER_FAILED`, ...).
pub const HEADER_REASON_CODE: &str = "x-switchboard-reason-code";

/// Header of a dead letter and of a retried event: the routing key the
/// producer published the event with.
pub const HEADER_ROUTING_KEY: &str = "x-switchboard-routing-key";

/// Header of a retried event: how many times processing has failed so far.
/// Absent on an event as its producer published it.
pub const HEADER_ATTEMPTS: &str = "x-switchboard-attempts";

/// Header of a dead letter: the id of the gateway node that dead-lettered it.
pub const HEADER_NODE: &str = "x-switchboard-node";

/// Header that marks a message between gateway nodes on [`DELIVER_EXCHANGE`]
/// that is not an envelope for sessions; its value says what it is
/// ([`KIND_PRESENCE_QUERY`], [`KIND_PRESENCE_ANSWER`]).
pub const HEADER_KIND: &str = "x-switchboard-kind";

/// [`HEADER_KIND`] of a presence question: "which sessions of this user do
/// you hold?", routed with [`user_routing_key`] to the nodes that hold the
/// user, answered through RabbitMQ's direct reply-to.
pub const KIND_PRESENCE_QUERY: &str = "presence-query";

/// [`HEADER_KIND`] of the answer to a presence question.
pub const KIND_PRESENCE_ANSWER: &str = "presence-answer";

/// RabbitMQ's direct reply-to pseudo-queue: consumed without acks by the
/// asker, set as `reply_to` of a question; no queue is declared for it.
pub const DIRECT_REPLY_TO: &str = "amq.rabbitmq.reply-to";

/// The `content_type` of every message the gateway publishes and expects.
pub const CONTENT_TYPE_JSON: &str = "application/json";

/// `delivery_mode` of a message that is written to disk in a durable queue.
pub const PERSISTENT: u8 = 2;

/// `delivery_mode` of a message kept in memory only.
pub const TRANSIENT: u8 = 1;

/// Durable direct exchange that carries reliable pushes to the users'
/// inboxes; routing key = the user's `uniqueId`.
pub const INBOX_EXCHANGE: &str = "switchboard.inbox";

/// Prefix of each user's inbox queue; see [`inbox_queue`].
pub const INBOX_QUEUE_PREFIX: &str = "switchboard.inbox.";

/// The name of user `unique_id`'s inbox queue: `switchboard.inbox.<uniqueId>`,
/// bound to [`INBOX_EXCHANGE`] with the `uniqueId` as key.
pub fn inbox_queue(unique_id: &str) -> String {
    format!("{INBOX_QUEUE_PREFIX}{unique_id}")
}

/// The name of node `node_id`'s delivery queue: `switchboard.node.<node_id>`.
pub fn node_queue(node_id: &str) -> String {
    format!("{NODE_QUEUE_PREFIX}{node_id}")
}

/// The routing key of a `UNICAST` delivery to `unique_id`:
/// `user.<uniqueId>`. A node queue carries this binding for each user with a
/// session on that node.
pub fn user_routing_key(unique_id: &str) -> String {
    format!("{USER_KEY_PREFIX}{unique_id}")
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Routing keys fit AMQP's 255-byte short strings for the longest ids
    /// the protocol allows.
    #[test]
    fn keys_fit_short_strings() {
        let longest = "u".repeat(crate::envelope::MAX_NAME_LEN);
        assert!(user_routing_key(&longest).len() <= 255);
        assert!(node_queue(&"n".repeat(64)).len() <= 255);
        assert_eq!(user_routing_key("u-1"), "user.u-1");
        assert_eq!(node_queue("a"), "switchboard.node.a");
        assert!(inbox_queue(&longest).len() <= 255);
    }
}
