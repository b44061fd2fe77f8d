//! The authenticator registry: which [`Authenticator`] guards the token,
//! publish and presence endpoints.
//!
//! Authenticators are registered the way handlers are: a crate submits an
//! [`AuthenticatorDescriptor`] with
//! [`register_authenticator!`](crate::register_authenticator), and the node
//! builds the one named by `auth.authenticator` at start. As with handlers,
//! a crate that registers one must be linked into the binary (`use my_auth
//! as _;`), or its registration is absent.
//!
//! Shipped:
//!
//! - **`api_key`** (the default): `Authorization: Bearer <key>` must carry
//!   one of `auth.api_keys`, compared in constant time. With no keys, every
//!   caller is let in and the node warns at start; a cluster refuses that
//!   unless `auth.allow_open = true`.
//! - **`trusted_header`**: the request must carry the header named by
//!   `auth.trusted_header` (for example `X-Authenticated-User`), which an
//!   upstream gateway sets after it authenticated the caller. The node
//!   cannot tell a header set by the gateway from one a client wrote, so
//!   this is safe **only** when every request reaches the node through a
//!   proxy that removes the header from what clients send and sets it
//!   itself, and the node's port is reachable from nowhere else.
//!
//! A custom authenticator reads its settings from `[auth.options]`:
//!
//! ```
//! use switchboard::auth::{AuthError, Authenticator, HeaderMap};
//! use switchboard::register_authenticator;
//!
//! struct Office;
//!
//! impl Authenticator for Office {
//!     fn authenticate(&self, headers: &HeaderMap) -> Result<(), AuthError> {
//!         match headers.get("x-office") {
//!             Some(value) if value == "hq" => Ok(()),
//!             _ => Err(AuthError::MissingHeader("X-Office".into())),
//!         }
//!     }
//! }
//!
//! register_authenticator! {
//!     name: "office",
//!     description: "lets in requests from the head office",
//!     constructor: |_config| Ok(Box::new(Office)),
//! }
//! ```

use std::sync::Arc;

use warp::http::header::HeaderName;

use crate::auth::{ApiKeys, AuthError, Authenticator, HeaderMap};
use crate::config::{Config, ConfigError};

/// One authenticator's registration: its name in `auth.authenticator`, a
/// one-line description, the crate that registered it, and how to build it.
#[derive(Debug)]
pub struct AuthenticatorDescriptor {
    /// The value of `auth.authenticator` that selects it.
    pub name: &'static str,
    /// One line saying what it checks.
    pub description: &'static str,
    /// The registering crate's name, to report duplicates.
    pub crate_name: &'static str,
    /// Builds it from the configuration; called at load (to validate) and at
    /// start. Returns a [`ConfigError::Invalid`] naming the key it dislikes.
    pub constructor: fn(&Config) -> Result<Box<dyn Authenticator>, ConfigError>,
}

inventory::collect!(AuthenticatorDescriptor);

/// Registers an authenticator under a name. Use it once per
/// authenticator, at the top level of its crate; see the
/// [module docs](crate::authenticators) for an example.
#[macro_export]
macro_rules! register_authenticator {
    (
        name: $name:expr,
        description: $description:expr,
        constructor: $constructor:expr $(,)?
    ) => {
        $crate::__private::inventory::submit! {
            $crate::AuthenticatorDescriptor {
                name: $name,
                description: $description,
                crate_name: ::core::env!("CARGO_PKG_NAME"),
                constructor: $constructor,
            }
        }
    };
}

/// Why no authenticator could be chosen.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AuthenticatorError {
    /// No linked crate registered the configured name.
    #[error("unknown authenticator '{name}'; registered: {known}")]
    Unknown {
        /// The configured name.
        name: String,
        /// The registered names, comma-separated.
        known: String,
    },
    /// Two registrations claim one name.
    #[error("authenticator '{name}' is registered twice, by {first} and by {second}")]
    Duplicate {
        /// The contested name.
        name: String,
        /// The crate of one registration.
        first: String,
        /// The crate of the other.
        second: String,
    },
}

/// Every linked registration, sorted by name.
pub fn descriptors() -> Vec<&'static AuthenticatorDescriptor> {
    // Inventory's order is unspecified: sort so listings and duplicate
    // reports are the same on every start.
    let mut all: Vec<_> = inventory::iter::<AuthenticatorDescriptor>
        .into_iter()
        .collect();
    all.sort_by_key(|d| (d.name, d.crate_name));
    all
}

/// The registration of `name`.
///
/// # Errors
///
/// [`AuthenticatorError::Unknown`] when none is linked,
/// [`AuthenticatorError::Duplicate`] when two crates claim it.
pub fn lookup(name: &str) -> Result<&'static AuthenticatorDescriptor, AuthenticatorError> {
    let all = descriptors();
    let mut found = all.iter().filter(|d| d.name == name);
    match (found.next(), found.next()) {
        (Some(one), None) => Ok(one),
        (Some(first), Some(second)) => Err(AuthenticatorError::Duplicate {
            name: name.to_owned(),
            first: first.crate_name.to_owned(),
            second: second.crate_name.to_owned(),
        }),
        (None, _) => Err(AuthenticatorError::Unknown {
            name: name.to_owned(),
            known: all.iter().map(|d| d.name).collect::<Vec<_>>().join(", "),
        }),
    }
}

/// Builds the authenticator that `auth.authenticator` names.
///
/// # Errors
///
/// A [`ConfigError::Invalid`] naming `auth.authenticator` for an unknown or
/// duplicate name, or the key the constructor refused.
pub fn build(config: &Config) -> Result<Arc<dyn Authenticator>, ConfigError> {
    let descriptor = lookup(&config.auth.authenticator).map_err(|err| ConfigError::Invalid {
        key: "auth.authenticator",
        reason: err.to_string(),
    })?;
    (descriptor.constructor)(config).map(Arc::from)
}

/// Trusts an identity header that an upstream gateway sets. See the module
/// docs for when that is safe.
#[derive(Debug, Clone)]
pub struct TrustedHeader {
    header: HeaderName,
}

/// Longest identity value accepted, in bytes.
const MAX_IDENTITY_LEN: usize = 256;

impl TrustedHeader {
    /// Requires the header `name` on every request.
    ///
    /// # Errors
    ///
    /// When `name` is not a valid HTTP header name.
    pub fn new(name: &str) -> Result<Self, warp::http::header::InvalidHeaderName> {
        Ok(TrustedHeader {
            header: HeaderName::from_bytes(name.as_bytes())?,
        })
    }
}

impl Authenticator for TrustedHeader {
    fn authenticate(&self, headers: &HeaderMap) -> Result<(), AuthError> {
        // Exactly one non-empty, printable value: a repeated header means
        // something in front added one instead of replacing it.
        let mut values = headers.get_all(&self.header).iter();
        let ok = match (values.next(), values.next()) {
            (Some(value), None) => {
                let bytes = value.as_bytes();
                !bytes.is_empty()
                    && bytes.len() <= MAX_IDENTITY_LEN
                    && bytes.iter().all(|b| b.is_ascii_graphic())
            }
            _ => false,
        };
        if ok {
            Ok(())
        } else {
            Err(AuthError::MissingHeader(self.header.as_str().to_owned()))
        }
    }
}

crate::register_authenticator! {
    name: "api_key",
    description: "Authorization: Bearer <key> must carry one of auth.api_keys",
    constructor: |config| Ok(Box::new(ApiKeys::new(&config.auth.api_keys))),
}

crate::register_authenticator! {
    name: "trusted_header",
    description: "trusts the auth.trusted_header identity set by a gateway in front",
    constructor: |config| {
        let invalid = |reason: &str| ConfigError::Invalid {
            key: "auth.trusted_header",
            reason: reason.to_owned(),
        };
        let name = config
            .auth
            .trusted_header
            .as_deref()
            .ok_or_else(|| invalid("is required by the trusted_header authenticator"))?;
        let header = TrustedHeader::new(name).map_err(|_| invalid("is not a valid header name"))?;
        Ok(Box::new(header))
    },
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(authenticator: &str, header: Option<&str>) -> Config {
        let mut config = Config::default();
        config.auth.authenticator = authenticator.into();
        config.auth.trusted_header = header.map(String::from);
        config
    }

    /// The shipped authenticators are registered and sorted.
    #[test]
    fn shipped_authenticators_are_registered() {
        let names: Vec<_> = descriptors().iter().map(|d| d.name).collect();
        assert!(names.contains(&"api_key") && names.contains(&"trusted_header"));
        let mut sorted = names.clone();
        sorted.sort();
        assert_eq!(names, sorted);
    }

    /// An unknown name is a typed error that lists what is registered.
    #[test]
    fn unknown_name_lists_the_registered_ones() {
        let err = lookup("nope").unwrap_err();
        assert!(
            matches!(&err, AuthenticatorError::Unknown { known, .. } if known.contains("api_key"))
        );
        let err = build(&config("nope", None)).err().unwrap().to_string();
        assert!(err.starts_with("auth.authenticator:"), "{err}");
    }

    /// `trusted_header` needs its header name and then requires the header.
    #[test]
    fn trusted_header_requires_the_header() {
        let err = build(&config("trusted_header", None)).err().unwrap();
        assert!(err.to_string().starts_with("auth.trusted_header:"), "{err}");

        let auth = build(&config("trusted_header", Some("X-Authenticated-User"))).unwrap();
        let mut headers = HeaderMap::new();
        assert!(auth.authenticate(&headers).is_err());
        headers.insert("x-authenticated-user", "".parse().unwrap());
        assert!(auth.authenticate(&headers).is_err());
        headers.insert("x-authenticated-user", "alice".parse().unwrap());
        assert_eq!(auth.authenticate(&headers), Ok(()));
        headers.append("x-authenticated-user", "mallory".parse().unwrap());
        assert!(auth.authenticate(&headers).is_err());
        assert!(!auth.is_open());
    }
}
