//! `notice`: any service tells users something, addressed any way the
//! protocol allows (`UNICAST`, `TAG`, `BUSINESS` or `BROADCAST`, narrowed by
//! `toClientType`).
//!
//! Best effort: a notice reaches the sessions connected when it is
//! delivered, and is not kept for users who are offline. Everything here is
//! the framework's default behaviour; the crate exists to name the business
//! type.

use switchboard::{BusinessHandler, register_handler};

/// The handler.
#[derive(Debug, Default)]
pub struct Notice;

#[switchboard::async_trait]
impl BusinessHandler for Notice {}

register_handler! {
    business_type: "notice",
    description: "delivers a service's notice as addressed, best effort",
    constructor: || Box::new(Notice),
}
