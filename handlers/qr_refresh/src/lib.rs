//! `qr_refresh`: a page showing a login or payment QR code asks for a fresh
//! one, and gets it back on the same socket.
//!
//! A `CLIENT_TO_SERVER` request (any `content`) is answered with an `ACK`,
//! then a `SERVER_TO_CLIENT` reply to the requesting session only, whose
//! `correlationId` is the request's `messageId` and whose `content` is
//! `{ "ticket", "qrContent", "expiresAt" }`. Every reply carries a new ticket.
//! Replies are live only: a session that dropped asks again.

use serde_json::json;
use switchboard::{BusinessHandler, Context, Envelope, HandlerError, register_handler};

/// How long a ticket stays valid, in milliseconds.
pub const TICKET_TTL_MS: i64 = 60_000;

/// The handler; stateless, since tickets are random.
#[derive(Debug, Default)]
pub struct QrRefresh;

#[switchboard::async_trait]
impl BusinessHandler for QrRefresh {
    async fn on_client_message(
        &self,
        ctx: &mut Context,
        _request: Envelope,
    ) -> Result<(), HandlerError> {
        let ticket = uuid::Uuid::new_v4().simple().to_string();
        let expires_at = switchboard::envelope::now_millis() + TICKET_TTL_MS;
        ctx.reply(json!({
            "ticket": ticket,
            "qrContent": format!("switchboard://qr/{ticket}"),
            "expiresAt": expires_at,
        }));
        Ok(())
    }
}

register_handler! {
    business_type: "qr_refresh",
    description: "answers a QR refresh request with a new ticket",
    constructor: || Box::new(QrRefresh),
}
