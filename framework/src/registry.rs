//! The handler registry: which `businessType` is served by which handler.
//!
//! Handler crates register a [`HandlerDescriptor`] with
//! [`register_handler!`](crate::register_handler); the registrations of every
//! crate *linked* into the final binary are collected at start by
//! [`HandlerRegistry::from_linked`]. A crate that is only listed in
//! `Cargo.toml` but never named in code is not linked, and its registration
//! is absent: name each handler crate once (`use my_handler as _;`).

use std::collections::BTreeMap;
use std::sync::Arc;

use crate::envelope::Refusal;
use crate::handler::BusinessHandler;

/// One handler's registration: its business type, a one-line description,
/// the crate that registered it, and how to build it.
#[derive(Debug)]
pub struct HandlerDescriptor {
    /// The `businessType` this handler owns.
    pub business_type: &'static str,
    /// One line saying what the handler does, shown at start.
    pub description: &'static str,
    /// The registering crate's name, to report duplicates.
    pub crate_name: &'static str,
    /// Builds the handler; called once at start.
    pub constructor: fn() -> Box<dyn BusinessHandler>,
}

inventory::collect!(HandlerDescriptor);

/// Registers a handler for a business type. Use it once per handler, at the
/// top level of the handler crate:
///
/// ```
/// use switchboard::{BusinessHandler, register_handler};
///
/// struct Echo;
///
/// #[switchboard::async_trait]
/// impl BusinessHandler for Echo {}
///
/// register_handler! {
///     business_type: "echo",
///     description: "answers nothing, delivers events as addressed",
///     constructor: || Box::new(Echo),
/// }
/// ```
#[macro_export]
macro_rules! register_handler {
    (
        business_type: $business_type:expr,
        description: $description:expr,
        constructor: $constructor:expr $(,)?
    ) => {
        $crate::__private::inventory::submit! {
            $crate::HandlerDescriptor {
                business_type: $business_type,
                description: $description,
                crate_name: ::core::env!("CARGO_PKG_NAME"),
                constructor: $constructor,
            }
        }
    };
}

/// Why a registry could not be built.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RegistryError {
    /// Two registrations claim one business type.
    #[error("business type '{business_type}' is registered twice, by {first} and by {second}")]
    Duplicate {
        /// The contested business type.
        business_type: String,
        /// The crate of one registration.
        first: String,
        /// The crate of the other.
        second: String,
    },
    /// A business type is not a valid name.
    #[error(
        "business type '{business_type}' registered by {crate_name} is not 1 to 64 letters, \
         digits, '_', '-' or '.'"
    )]
    InvalidName {
        /// The bad name.
        business_type: String,
        /// The registering crate.
        crate_name: String,
    },
}

/// A registered handler, built and ready.
#[derive(Clone)]
pub struct Registered {
    /// Its registration.
    pub descriptor: &'static HandlerDescriptor,
    /// The handler.
    pub handler: Arc<dyn BusinessHandler>,
    /// Whether its pushes are reliable (read once from the handler).
    pub reliable: bool,
}

/// The handlers of one node, keyed by business type.
#[derive(Clone, Default)]
pub struct HandlerRegistry {
    handlers: BTreeMap<&'static str, Registered>,
}

impl std::fmt::Debug for HandlerRegistry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_list().entries(self.handlers.keys()).finish()
    }
}

impl HandlerRegistry {
    /// Builds every handler registered by the crates linked into this binary.
    ///
    /// # Errors
    ///
    /// [`RegistryError`] for a duplicate or badly named business type.
    pub fn from_linked() -> Result<Self, RegistryError> {
        Self::from_descriptors(inventory::iter::<HandlerDescriptor>)
    }

    /// Builds a registry from the given descriptors; used by
    /// [`HandlerRegistry::from_linked`] and by tests that want an exact set.
    ///
    /// # Errors
    ///
    /// As [`HandlerRegistry::from_linked`].
    pub fn from_descriptors(
        descriptors: impl IntoIterator<Item = &'static HandlerDescriptor>,
    ) -> Result<Self, RegistryError> {
        // Inventory's order is unspecified: sort so a duplicate is reported
        // the same way on every start.
        let mut descriptors: Vec<_> = descriptors.into_iter().collect();
        descriptors.sort_by_key(|d| (d.business_type, d.crate_name));

        let mut handlers = BTreeMap::new();
        for descriptor in descriptors {
            if !valid_business_type(descriptor.business_type) {
                return Err(RegistryError::InvalidName {
                    business_type: descriptor.business_type.to_owned(),
                    crate_name: descriptor.crate_name.to_owned(),
                });
            }
            if let Some(existing) = handlers.get(descriptor.business_type) {
                let existing: &Registered = existing;
                return Err(RegistryError::Duplicate {
                    business_type: descriptor.business_type.to_owned(),
                    first: existing.descriptor.crate_name.to_owned(),
                    second: descriptor.crate_name.to_owned(),
                });
            }
            let handler: Arc<dyn BusinessHandler> = Arc::from((descriptor.constructor)());
            let reliable = handler.reliable();
            handlers.insert(
                descriptor.business_type,
                Registered {
                    descriptor,
                    handler,
                    reliable,
                },
            );
        }
        Ok(HandlerRegistry { handlers })
    }

    /// The handler of `business_type`.
    ///
    /// # Errors
    ///
    /// `UNKNOWN_BUSINESS_TYPE` when no handler owns it.
    pub fn get(&self, business_type: &str) -> Result<&Registered, Refusal> {
        self.handlers
            .get(business_type)
            .ok_or_else(|| Refusal::unknown_business_type(business_type))
    }

    /// The registered business types, sorted.
    pub fn business_types(&self) -> Vec<&'static str> {
        self.handlers.keys().copied().collect()
    }

    /// The registrations, sorted by business type.
    pub fn descriptors(&self) -> impl Iterator<Item = &'static HandlerDescriptor> + '_ {
        self.handlers.values().map(|r| r.descriptor)
    }

    /// Whether `business_type` is registered and declares itself reliable.
    pub fn is_reliable(&self, business_type: &str) -> bool {
        self.handlers.get(business_type).is_some_and(|r| r.reliable)
    }

    /// Number of registered handlers.
    pub fn len(&self) -> usize {
        self.handlers.len()
    }

    /// Whether no handler is registered.
    pub fn is_empty(&self) -> bool {
        self.handlers.is_empty()
    }
}

fn valid_business_type(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 64
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.'))
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Nop;
    #[async_trait::async_trait]
    impl BusinessHandler for Nop {}

    static A: HandlerDescriptor = HandlerDescriptor {
        business_type: "same",
        description: "one",
        crate_name: "crate_a",
        constructor: || Box::new(Nop),
    };
    static B: HandlerDescriptor = HandlerDescriptor {
        business_type: "same",
        description: "two",
        crate_name: "crate_b",
        constructor: || Box::new(Nop),
    };
    static BAD: HandlerDescriptor = HandlerDescriptor {
        business_type: "has space",
        description: "bad",
        crate_name: "crate_c",
        constructor: || Box::new(Nop),
    };

    /// A duplicate business type fails and names both crates, in either order.
    #[test]
    fn duplicate_names_both_crates() {
        for order in [[&A, &B], [&B, &A]] {
            let err = HandlerRegistry::from_descriptors(order).unwrap_err();
            let text = err.to_string();
            assert!(
                text.contains("crate_a") && text.contains("crate_b"),
                "{text}"
            );
        }
    }

    /// A bad name is refused at start.
    #[test]
    fn invalid_name_is_refused() {
        let err = HandlerRegistry::from_descriptors([&BAD]).unwrap_err();
        assert!(matches!(err, RegistryError::InvalidName { .. }));
    }

    /// Lookups of unknown types give the protocol's error.
    #[test]
    fn unknown_lookup_is_typed() {
        let registry = HandlerRegistry::from_descriptors([&A]).unwrap();
        let err = registry.get("nope").err().unwrap();
        assert_eq!(err.code, crate::envelope::ErrorCode::UnknownBusinessType);
        assert_eq!(registry.business_types(), ["same"]);
    }
}
