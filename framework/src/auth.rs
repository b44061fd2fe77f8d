//! Who may ask for tokens and publish events.
//!
//! An [`Authenticator`] looks at the HTTP request headers of the token and
//! publish endpoints and says yes or no. The shipped [`ApiKeys`] checks
//! `Authorization: Bearer <key>` against the configured keys in constant
//! time; with no keys configured every caller is let in (and the server warns
//! at start). Authenticators are plugins, chosen by `auth.authenticator`:
//! see [`crate::authenticators`] for the registry and the shipped ones.

use subtle::ConstantTimeEq;

/// The request headers an [`Authenticator`] reads (the `http` crate's map),
/// re-exported so authenticator crates need not depend on warp.
pub use warp::http::HeaderMap;

/// Why a caller was refused. Shown to the caller; never includes a key.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    /// No credentials were sent.
    #[error("missing Authorization: Bearer <api key> header")]
    Missing,
    /// The credentials are not valid.
    #[error("invalid api key")]
    Invalid,
    /// A header that an authenticator requires is absent or empty.
    #[error("missing {0} header")]
    MissingHeader(String),
}

/// Decides whether a caller may use the token and publish endpoints.
pub trait Authenticator: Send + Sync + 'static {
    /// Checks the request's headers.
    ///
    /// # Errors
    ///
    /// An [`AuthError`]; the endpoint answers HTTP 401 with its message.
    fn authenticate(&self, headers: &HeaderMap) -> Result<(), AuthError>;

    /// Whether every caller is let in, for the start-up warning.
    fn is_open(&self) -> bool {
        false
    }
}

/// Checks `Authorization: Bearer <key>` against a list of keys.
pub struct ApiKeys {
    keys: Vec<Vec<u8>>,
}

impl ApiKeys {
    /// Accepts any of `keys`; an empty list lets every caller in.
    pub fn new(keys: &[String]) -> Self {
        ApiKeys {
            keys: keys.iter().map(|k| k.as_bytes().to_vec()).collect(),
        }
    }
}

impl Authenticator for ApiKeys {
    fn authenticate(&self, headers: &HeaderMap) -> Result<(), AuthError> {
        if self.keys.is_empty() {
            return Ok(());
        }
        let header = headers
            .get(warp::http::header::AUTHORIZATION)
            .ok_or(AuthError::Missing)?;
        let given = header.as_bytes();
        let given = given
            .strip_prefix(b"Bearer ")
            .or_else(|| given.strip_prefix(b"bearer "))
            .ok_or(AuthError::Invalid)?;
        // Compare against every key so the time taken does not say which
        // key, or how much of one, matched.
        let mut ok = subtle::Choice::from(0);
        for key in &self.keys {
            ok |= key.as_slice().ct_eq(given);
        }
        if bool::from(ok) {
            Ok(())
        } else {
            Err(AuthError::Invalid)
        }
    }

    fn is_open(&self) -> bool {
        self.keys.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(value: &str) -> HeaderMap {
        let mut map = HeaderMap::new();
        map.insert(warp::http::header::AUTHORIZATION, value.parse().unwrap());
        map
    }

    /// Only a configured key in a Bearer header passes.
    #[test]
    fn checks_bearer_keys() {
        let auth = ApiKeys::new(&["k1".into(), "k2".into()]);
        assert_eq!(auth.authenticate(&headers("Bearer k2")), Ok(()));
        assert_eq!(
            auth.authenticate(&headers("Bearer k3")),
            Err(AuthError::Invalid)
        );
        assert_eq!(auth.authenticate(&headers("k1")), Err(AuthError::Invalid));
        assert_eq!(
            auth.authenticate(&HeaderMap::new()),
            Err(AuthError::Missing)
        );
        assert!(ApiKeys::new(&[]).authenticate(&HeaderMap::new()).is_ok());
    }
}
