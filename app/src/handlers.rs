//! The handler crates linked into this binary, one line each.
//!
//! A crate that is only a dependency is not linked, and its
//! `register_handler!` would silently vanish; naming it here links it. Each
//! line follows the Cargo feature of the same name.

#[cfg(feature = "notice")]
use switchboard_notice as _;
#[cfg(feature = "page_update")]
use switchboard_page_update as _;
#[cfg(feature = "payment_callback")]
use switchboard_payment_callback as _;
#[cfg(feature = "qr_refresh")]
use switchboard_qr_refresh as _;

/// Called at start so this module, and with it the `use` lines above, is
/// part of the binary.
pub(crate) fn link() {}
