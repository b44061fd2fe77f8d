//! `page_update`: one user's page updates another user's page, through the
//! gateway, with no backend code involved.
//!
//! A `CLIENT_TO_CLIENT` `UNICAST` with `toUniqueId` and an object `content`
//! is relayed to that user's sessions (narrowed by `toClientType`), with
//! `fromUniqueId` and `fromClientType` set by the server from the sender's
//! session. Any other send type is refused with `FORBIDDEN`: a page must not
//! be able to broadcast to everyone.

use switchboard::{BusinessHandler, ClientInfo, Envelope, Refusal, SendType, register_handler};

/// The handler.
#[derive(Debug, Default)]
pub struct PageUpdate;

#[switchboard::async_trait]
impl BusinessHandler for PageUpdate {
    async fn permit_relay(&self, _sender: &ClientInfo, message: &Envelope) -> Result<(), Refusal> {
        if message.effective_send_type() != SendType::Unicast {
            return Err(Refusal::forbidden(
                "page_update relays only UNICAST messages",
            ));
        }
        if !message.content.is_object() {
            return Err(Refusal::invalid(
                "page_update content must be a JSON object",
            ));
        }
        Ok(())
    }
}

register_handler! {
    business_type: "page_update",
    description: "relays one user's page update to another user's sessions",
    constructor: || Box::new(PageUpdate),
}
