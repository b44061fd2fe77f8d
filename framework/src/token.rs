//! Connection tokens: signed, expiring, verifiable by any node that shares
//! the secret.
//!
//! A token is `base64url(claims JSON) "." base64url(HMAC-SHA256(claims))`,
//! short enough for a URL path segment. We do not use JWT: a JWT crate brings
//! RSA and elliptic-curve code we never need, and only our own nodes ever
//! read these tokens. The MAC is checked in constant time before the claims
//! are parsed, so a tampered token never reaches the JSON parser.

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use hmac::{Hmac, Mac};
use serde::{Deserialize, Serialize};
use sha2::Sha256;

type HmacSha256 = Hmac<Sha256>;

/// Longest token accepted for verification, in bytes. Anything longer is
/// refused without decoding. The largest token the endpoint issues (64 tags
/// and 64 businesses of 128 bytes each) is about 23 KiB.
const MAX_TOKEN_LEN: usize = 32 * 1024;

/// What a token grants: who connects, from what client, with which initial
/// subscriptions, until when.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Claims {
    /// The user (`uniqueId`).
    #[serde(rename = "u")]
    pub unique_id: String,
    /// The client type (`clientType`).
    #[serde(rename = "c")]
    pub client_type: String,
    /// Tags the session starts subscribed to.
    #[serde(rename = "t", default, skip_serializing_if = "Vec::is_empty")]
    pub tags: Vec<String>,
    /// Businesses the session starts subscribed to.
    #[serde(rename = "b", default, skip_serializing_if = "Vec::is_empty")]
    pub businesses: Vec<String>,
    /// Expiry, seconds since the Unix epoch.
    #[serde(rename = "e")]
    pub expires_at: u64,
    /// A unique id of this token.
    #[serde(rename = "j")]
    pub token_id: String,
}

/// Why a token was refused. The variants are for logs; clients only ever see
/// HTTP 401.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum TokenError {
    /// Not of the token's shape, or too long.
    #[error("malformed token")]
    Malformed,
    /// The signature does not match: tampered, or signed with another key.
    #[error("bad token signature")]
    BadSignature,
    /// Correctly signed, but past its expiry.
    #[error("token expired")]
    Expired,
}

/// Signs and verifies tokens with one secret.
#[derive(Clone)]
pub struct TokenSigner {
    key: Vec<u8>,
}

impl std::fmt::Debug for TokenSigner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never print the key.
        f.write_str("TokenSigner { .. }")
    }
}

impl TokenSigner {
    /// A signer for `secret`.
    pub fn new(secret: &[u8]) -> Self {
        TokenSigner {
            key: secret.to_vec(),
        }
    }

    /// A signer with a random 32-byte secret, for a single node.
    pub fn random() -> Self {
        let key: [u8; 32] = rand::random();
        TokenSigner { key: key.to_vec() }
    }

    fn mac(&self) -> HmacSha256 {
        // HMAC accepts keys of any length, so this cannot fail.
        HmacSha256::new_from_slice(&self.key).expect("HMAC takes any key length")
    }

    /// Signs `claims` into a token.
    pub fn sign(&self, claims: &Claims) -> String {
        let payload = serde_json::to_vec(claims).unwrap_or_default();
        let payload = URL_SAFE_NO_PAD.encode(payload);
        let mut mac = self.mac();
        mac.update(payload.as_bytes());
        let sig = URL_SAFE_NO_PAD.encode(mac.finalize().into_bytes());
        format!("{payload}.{sig}")
    }

    /// Verifies `token` and returns its claims if it is genuine and not
    /// expired at `now` (seconds since the Unix epoch).
    ///
    /// # Errors
    ///
    /// [`TokenError`] saying why the token is refused.
    pub fn verify(&self, token: &str, now: u64) -> Result<Claims, TokenError> {
        if token.len() > MAX_TOKEN_LEN {
            return Err(TokenError::Malformed);
        }
        let (payload, sig) = token.split_once('.').ok_or(TokenError::Malformed)?;
        let sig = URL_SAFE_NO_PAD
            .decode(sig)
            .map_err(|_| TokenError::Malformed)?;
        let mut mac = self.mac();
        mac.update(payload.as_bytes());
        // `verify_slice` compares in constant time.
        mac.verify_slice(&sig)
            .map_err(|_| TokenError::BadSignature)?;
        let payload = URL_SAFE_NO_PAD
            .decode(payload)
            .map_err(|_| TokenError::Malformed)?;
        let claims: Claims = serde_json::from_slice(&payload).map_err(|_| TokenError::Malformed)?;
        if claims.expires_at <= now {
            return Err(TokenError::Expired);
        }
        Ok(claims)
    }
}

/// Seconds since the Unix epoch.
pub fn now_secs() -> u64 {
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH);
    now.map(|d| d.as_secs()).unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn claims(expires_at: u64) -> Claims {
        Claims {
            unique_id: "user-1".into(),
            client_type: "H5".into(),
            tags: vec!["a".into()],
            businesses: vec![],
            expires_at,
            token_id: "j1".into(),
        }
    }

    /// A signed token verifies and returns its claims.
    #[test]
    fn round_trip() {
        let signer = TokenSigner::new(b"0123456789abcdef");
        let token = signer.sign(&claims(200));
        assert_eq!(signer.verify(&token, 100).unwrap(), claims(200));
    }

    /// Expired, tampered, foreign and garbage tokens are refused.
    #[test]
    fn refusals() {
        let signer = TokenSigner::new(b"0123456789abcdef");
        let token = signer.sign(&claims(200));
        assert_eq!(signer.verify(&token, 200), Err(TokenError::Expired));

        let mut tampered = token.clone().into_bytes();
        tampered[3] ^= 1;
        let tampered = String::from_utf8(tampered).unwrap();
        assert_eq!(signer.verify(&tampered, 100), Err(TokenError::BadSignature));

        let other = TokenSigner::new(b"fedcba9876543210");
        assert_eq!(other.verify(&token, 100), Err(TokenError::BadSignature));
        assert_eq!(signer.verify("garbage", 100), Err(TokenError::Malformed));
        assert_eq!(signer.verify("a.!!", 100), Err(TokenError::Malformed));
    }
}
