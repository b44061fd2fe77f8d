//! Presence: is a user connected, and on what clients.
//!
//! `GET /api/presence?uniqueId=U`, guarded by the same authenticator as
//! `/api/publish`, answers
//!
//! ```json
//! { "result": 0, "description": "ok",
//!   "data": { "uniqueId": "U", "online": true, "sessions": { "H5": 2, "APP": 1 } } }
//! ```
//!
//! `sessions` counts the user's open sessions by client type, on every node.
//! Each node knows only its own sessions; the broker's
//! [`Broker::presence`](crate::broker::Broker::presence) adds the other
//! nodes' counts (the embedded broker has none to add). The answer is a
//! snapshot: a session may open or close right after it.

use std::collections::BTreeMap;
use std::sync::Arc;

use serde::{Deserialize, Serialize};
use warp::http::{HeaderMap, StatusCode};
use warp::reply::Response;

use crate::node::Node;
use crate::routes::{answer, valid_unique_id};

/// A user's open sessions, by client type.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Presence {
    /// Open sessions per client type; a type with none is absent.
    pub sessions: BTreeMap<String, usize>,
}

impl Presence {
    /// Whether the user has at least one open session.
    pub fn online(&self) -> bool {
        self.sessions.values().any(|&n| n > 0)
    }

    /// Adds `other`'s counts, for merging the answers of several nodes.
    pub fn merge(&mut self, other: &Presence) {
        for (client_type, n) in &other.sessions {
            *self.sessions.entry(client_type.clone()).or_default() += n;
        }
    }
}

/// Serves `GET /api/presence`.
pub(crate) async fn presence_endpoint(
    query: BTreeMap<String, String>,
    headers: HeaderMap,
    node: Arc<Node>,
) -> Response {
    if let Err(err) = node.authenticator().authenticate(&headers) {
        return answer(StatusCode::UNAUTHORIZED, err.to_string(), None);
    }
    let Some(unique_id) = query.get("uniqueId") else {
        return answer(StatusCode::BAD_REQUEST, "missing parameter uniqueId", None);
    };
    if !valid_unique_id(unique_id) {
        return answer(
            StatusCode::BAD_REQUEST,
            "uniqueId must be 1 to 128 letters, digits or ._:@-",
            None,
        );
    }
    match node.presence(unique_id).await {
        Ok(presence) => answer(
            StatusCode::OK,
            "ok",
            Some(serde_json::json!({
                "uniqueId": unique_id,
                "online": presence.online(),
                "sessions": presence.sessions,
            })),
        ),
        Err(err) => {
            tracing::warn!(
                target: "switchboard::http",
                error = %err,
                "presence not available"
            );
            answer(
                StatusCode::SERVICE_UNAVAILABLE,
                "presence is not available now",
                None,
            )
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Merging adds counts per client type.
    #[test]
    fn merge_adds_counts() {
        let mut a = Presence::default();
        assert!(!a.online());
        let b = Presence {
            sessions: [("H5".to_owned(), 2)].into(),
        };
        let c = Presence {
            sessions: [("H5".to_owned(), 1), ("APP".to_owned(), 1)].into(),
        };
        a.merge(&b);
        a.merge(&c);
        assert!(a.online());
        assert_eq!(a.sessions["H5"], 3);
        assert_eq!(a.sessions["APP"], 1);
    }
}
