//! The HTTP surface: token issue, the WebSocket upgrade, event publishing,
//! presence, metrics, liveness and readiness.
//!
//! Every JSON answer has the shape `{ "result", "description", "data" }`:
//! `result` is 0 on success and otherwise equals the HTTP status, so a caller
//! can branch on either.

use std::collections::{BTreeMap, HashMap};
use std::convert::Infallible;
use std::sync::Arc;

use serde::Serialize;
use serde_json::Value;
use warp::http::{HeaderMap, StatusCode};
use warp::reply::Response;
use warp::{Filter, Rejection, Reply};

use crate::envelope::{Envelope, MAX_NAME_LEN, MAX_TARGETS, Refusal};
use crate::limits::AdmissionError;
use crate::metrics::{Metrics, UpgradeRefusal};
use crate::node::Node;
use crate::replay::Claim;
use crate::session;
use crate::token::{Claims, TokenError, now_secs};
use crate::upgrade;

/// The JSON answer of the token and publish endpoints.
#[derive(Debug, Serialize)]
struct ApiAnswer {
    result: u16,
    description: String,
    data: Option<Value>,
}

pub(crate) fn answer(
    status: StatusCode,
    description: impl Into<String>,
    data: Option<Value>,
) -> Response {
    let result = if status.is_success() {
        0
    } else {
        status.as_u16()
    };
    let body = ApiAnswer {
        result,
        description: description.into(),
        data,
    };
    warp::reply::with_status(warp::reply::json(&body), status).into_response()
}

fn refused(status: StatusCode, refusal: &Refusal) -> Response {
    answer(
        status,
        format!("{}: {}", refusal.code, refusal.message),
        None,
    )
}

/// An upgrade refused before it happened, answered by [`recover`].
#[derive(Debug)]
struct UpgradeRefused(UpgradeRefusal);
impl warp::reject::Reject for UpgradeRefused {}

/// Counts and logs a refused upgrade, and makes its rejection.
fn refuse_upgrade(node: &Node, reason: UpgradeRefusal) -> Rejection {
    node.metrics().upgrade_refused(reason);
    tracing::debug!(target: "switchboard::http", reason = reason.label(), "upgrade refused");
    warp::reject::custom(UpgradeRefused(reason))
}

impl UpgradeRefused {
    fn status_and_description(&self) -> (StatusCode, &'static str) {
        match self.0 {
            UpgradeRefusal::Origin => (StatusCode::FORBIDDEN, "origin not allowed"),
            UpgradeRefusal::InvalidToken => (StatusCode::UNAUTHORIZED, "invalid token"),
            UpgradeRefusal::ExpiredToken => (StatusCode::UNAUTHORIZED, "token expired"),
            UpgradeRefusal::ReusedToken => (StatusCode::UNAUTHORIZED, "token already used"),
            UpgradeRefusal::UserSessionLimit => (
                StatusCode::TOO_MANY_REQUESTS,
                "too many sessions for this user",
            ),
            UpgradeRefusal::NodeFull => (
                StatusCode::SERVICE_UNAVAILABLE,
                "this node is at its connection limit",
            ),
            UpgradeRefusal::TokenCheckUnavailable => (
                StatusCode::SERVICE_UNAVAILABLE,
                "the token cannot be checked now; ask for a new one later",
            ),
            UpgradeRefusal::ShuttingDown => {
                (StatusCode::SERVICE_UNAVAILABLE, "the node is shutting down")
            }
        }
    }
}

/// All routes of a node.
pub(crate) fn routes(
    node: Arc<Node>,
) -> impl Filter<Extract = (Response,), Error = Infallible> + Clone + Send + Sync + 'static {
    let with_node = {
        let node = node.clone();
        warp::any().map(move || node.clone())
    };

    let token = warp::path!("websocket" / "token")
        .and(warp::get())
        .and(
            warp::query::<HashMap<String, String>>()
                .or(warp::any().map(HashMap::new))
                .unify(),
        )
        .and(warp::header::headers_cloned())
        .and(with_node.clone())
        .map(issue_token);

    // Stateless checks come before the upgrade filter, so a bad token is a 401
    // even without upgrade headers; the token is spent only in `upgrade`,
    // once the request is a real upgrade.
    let socket = warp::path("socket")
        .and(token_segment())
        .and(warp::get())
        .and(warp::header::optional::<String>("origin"))
        .and(with_node.clone())
        .and_then(check_token)
        .and(upgrade::websocket())
        .and_then(upgrade);

    let presence = warp::path!("api" / "presence")
        .and(warp::get())
        .and(
            warp::query::<BTreeMap<String, String>>()
                .or(warp::any().map(BTreeMap::new))
                .unify(),
        )
        .and(warp::header::headers_cloned())
        .and(with_node.clone())
        .then(crate::presence::presence_endpoint);

    let metrics = warp::path!("metrics")
        .and(warp::get())
        .and(with_node.clone())
        .map(|node: Arc<Node>| {
            let body = node.metrics().render(
                node.broker().is_ready(),
                node.is_draining(),
                node.used_tokens().len(),
            );
            warp::reply::with_header(body, "content-type", Metrics::content_type()).into_response()
        });

    let publish_limit = node.config().ws.max_message_bytes as u64;
    let publish = warp::path!("api" / "publish")
        .and(warp::post())
        .and(warp::header::headers_cloned())
        .and(warp::body::content_length_limit(publish_limit))
        .and(warp::body::bytes())
        .and(with_node.clone())
        .then(publish_event);

    let healthz = warp::path!("healthz")
        .and(warp::get())
        .map(|| warp::reply::with_status("ok", StatusCode::OK).into_response());

    let readyz = warp::path!("readyz")
        .and(warp::get())
        .and(with_node)
        .map(|node: Arc<Node>| {
            if node.broker().is_ready() && !node.is_draining() {
                warp::reply::with_status("ready", StatusCode::OK).into_response()
            } else {
                warp::reply::with_status("not ready", StatusCode::SERVICE_UNAVAILABLE)
                    .into_response()
            }
        });

    token
        .or(socket)
        .unify()
        .or(publish)
        .unify()
        .or(healthz)
        .unify()
        .or(readyz)
        .unify()
        .or(presence)
        .unify()
        .or(metrics)
        .unify()
        .recover(recover)
        .unify()
}

fn issue_token(query: HashMap<String, String>, headers: HeaderMap, node: Arc<Node>) -> Response {
    if let Err(err) = node.authenticator().authenticate(&headers) {
        return answer(StatusCode::UNAUTHORIZED, err.to_string(), None);
    }
    if node.is_draining() {
        return answer(
            StatusCode::SERVICE_UNAVAILABLE,
            "the node is shutting down",
            None,
        );
    }
    // A full node sends token requests elsewhere rather than issue a URL
    // that its upgrade would refuse.
    if node.admission().is_full() {
        return answer(
            StatusCode::SERVICE_UNAVAILABLE,
            "this node is at its connection limit",
            None,
        );
    }
    let claims = match claims_from_query(&query, node.config().auth.token_ttl_secs) {
        Ok(claims) => claims,
        Err(why) => return answer(StatusCode::BAD_REQUEST, why, None),
    };
    let max_subscriptions = node.hub().max_subscriptions();
    if claims.tags.len() + claims.businesses.len() > max_subscriptions {
        return answer(
            StatusCode::BAD_REQUEST,
            format!("tags and businesses together may name at most {max_subscriptions}"),
            None,
        );
    }
    let Some(base) = public_base(node.config().server.public_url.as_deref(), &headers) else {
        return answer(StatusCode::BAD_REQUEST, "missing Host header", None);
    };
    let token = node.signer().sign(&claims);
    node.metrics().token_issued();
    tracing::debug!(
        target: "switchboard::http",
        unique_id = %claims.unique_id, client_type = %claims.client_type,
        "token issued"
    );
    answer(
        StatusCode::OK,
        "ok",
        Some(Value::String(format!("{base}/socket/{token}"))),
    )
}

/// Validates the token request's parameters into claims.
fn claims_from_query(query: &HashMap<String, String>, ttl_secs: u64) -> Result<Claims, String> {
    let unique_id = query.get("uniqueId").ok_or("missing parameter uniqueId")?;
    if !valid_unique_id(unique_id) {
        return Err("uniqueId must be 1 to 128 letters, digits or ._:@-".into());
    }
    let client_type = query
        .get("clientType")
        .ok_or("missing parameter clientType")?;
    let type_ok = |c: char| c.is_ascii_alphanumeric() || c == '_' || c == '-';
    if client_type.is_empty() || client_type.len() > 32 || !client_type.chars().all(type_ok) {
        return Err("clientType must be 1 to 32 letters, digits, _ or -".into());
    }
    let list = |name: &str| -> Result<Vec<String>, String> {
        let Some(raw) = query.get(name) else {
            return Ok(Vec::new());
        };
        let items: Vec<String> = raw
            .split(',')
            .filter(|s| !s.is_empty())
            .map(str::to_owned)
            .collect();
        if items.len() > MAX_TARGETS || items.iter().any(|i| i.len() > MAX_NAME_LEN) {
            return Err(format!(
                "{name} takes at most {MAX_TARGETS} names of at most {MAX_NAME_LEN} bytes"
            ));
        }
        Ok(items)
    };
    Ok(Claims {
        unique_id: unique_id.clone(),
        client_type: client_type.clone(),
        tags: list("tags")?,
        businesses: list("businesses")?,
        expires_at: now_secs() + ttl_secs,
        token_id: uuid::Uuid::new_v4().simple().to_string(),
    })
}

/// Whether `unique_id` is 1 to 128 letters, digits or `._:@-`.
pub(crate) fn valid_unique_id(unique_id: &str) -> bool {
    let user_ok = |c: char| c.is_ascii_alphanumeric() || "._:@-".contains(c);
    !unique_id.is_empty() && unique_id.len() <= 128 && unique_id.chars().all(user_ok)
}

/// `ws://host` from the configured public URL or the request's Host header.
fn public_base(public_url: Option<&str>, headers: &HeaderMap) -> Option<String> {
    if let Some(url) = public_url {
        let url = url.trim_end_matches('/');
        let url = if let Some(rest) = url.strip_prefix("https://") {
            format!("wss://{rest}")
        } else if let Some(rest) = url.strip_prefix("http://") {
            format!("ws://{rest}")
        } else {
            url.to_owned()
        };
        return Some(url);
    }
    let host = headers.get(warp::http::header::HOST)?.to_str().ok()?;
    let host_ok = !host.is_empty()
        && host
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || ".-:[]".contains(c));
    host_ok.then(|| format!("ws://{host}"))
}

/// The path segment after `/socket/`: the token.
///
/// Read through `path::tail()` rather than `path!("socket" / String)`,
/// because warp's segment parameter logs the value it parses at TRACE
/// (`warp::filters::path`), and this value is a live token.
fn token_segment() -> impl Filter<Extract = (String,), Error = Rejection> + Clone {
    warp::path::tail().and_then(|tail: warp::path::Tail| async move {
        let token = tail.as_str();
        if token.is_empty() || token.contains('/') {
            Err(warp::reject::not_found())
        } else {
            Ok(token.to_owned())
        }
    })
}

/// The checks that need no state change, cheapest first: origin, drain,
/// node capacity, then the token's signature and expiry.
async fn check_token(
    token: String,
    origin: Option<String>,
    node: Arc<Node>,
) -> Result<(Arc<Node>, Claims), Rejection> {
    if !node.origins().allows(origin.as_deref()) {
        return Err(refuse_upgrade(&node, UpgradeRefusal::Origin));
    }
    if node.is_draining() {
        return Err(refuse_upgrade(&node, UpgradeRefusal::ShuttingDown));
    }
    if node.admission().is_full() {
        return Err(refuse_upgrade(&node, UpgradeRefusal::NodeFull));
    }
    match node.signer().verify(&token, now_secs()) {
        Ok(claims) => Ok((node, claims)),
        Err(TokenError::Expired) => Err(refuse_upgrade(&node, UpgradeRefusal::ExpiredToken)),
        Err(TokenError::Malformed | TokenError::BadSignature) => {
            Err(refuse_upgrade(&node, UpgradeRefusal::InvalidToken))
        }
    }
}

/// Takes the connection's place under the caps, spends the token, and
/// upgrades. The order matters: a connection refused for a cap keeps its
/// token unspent, and the place is held from here until the session ends.
async fn upgrade(
    (node, claims): (Arc<Node>, Claims),
    ws: upgrade::Upgrade,
) -> Result<Response, Rejection> {
    let permit = match node.admission().admit(&claims.unique_id) {
        Ok(permit) => permit,
        Err(AdmissionError::NodeFull) => {
            return Err(refuse_upgrade(&node, UpgradeRefusal::NodeFull));
        }
        Err(AdmissionError::UserFull) => {
            // DEBUG, not INFO: upgrades are not rate-limited, and the
            // metric already counts these.
            tracing::debug!(
                target: "switchboard::http",
                unique_id = %claims.unique_id, client_type = %claims.client_type,
                "upgrade refused: user at limits.max_sessions_per_user"
            );
            return Err(refuse_upgrade(&node, UpgradeRefusal::UserSessionLimit));
        }
    };

    match node
        .used_tokens()
        .claim(&claims.token_id, claims.expires_at, now_secs())
    {
        Claim::Fresh => {}
        Claim::Reused => return Err(refuse_upgrade(&node, UpgradeRefusal::ReusedToken)),
        Claim::Full => {
            tracing::warn!(
                target: "switchboard::http",
                "used-token record is at limits.max_used_tokens; refusing upgrades"
            );
            return Err(refuse_upgrade(&node, UpgradeRefusal::TokenCheckUnavailable));
        }
    }
    match node
        .broker()
        .claim_token(&claims.token_id, claims.expires_at)
        .await
    {
        Ok(true) => {}
        Ok(false) => return Err(refuse_upgrade(&node, UpgradeRefusal::ReusedToken)),
        Err(err) => {
            tracing::warn!(
                target: "switchboard::http",
                error = %err,
                "token claim not checked by the broker"
            );
            return Err(refuse_upgrade(&node, UpgradeRefusal::TokenCheckUnavailable));
        }
    }

    let ws = ws.max_message_size(node.config().ws.max_message_bytes);
    let tasks = node.session_tasks().clone();
    // The permit moves into the session and is dropped when it ends, or
    // with the callback if the upgrade never completes.
    Ok(ws.on_upgrade(&tasks, move |socket| async move {
        let _permit = permit;
        session::run(node, socket, claims).await;
    }))
}

async fn publish_event(headers: HeaderMap, body: bytes::Bytes, node: Arc<Node>) -> Response {
    if let Err(err) = node.authenticator().authenticate(&headers) {
        return answer(StatusCode::UNAUTHORIZED, err.to_string(), None);
    }
    let metrics = node.metrics();
    let event = match Envelope::parse_bytes(&body) {
        Ok(event) => event,
        Err(refusal) => {
            metrics.event_published("refused");
            return refused(StatusCode::BAD_REQUEST, &refusal);
        }
    };
    match node.accept_service_event(event).await {
        Ok(message_id) => {
            metrics.event_published("accepted");
            answer(
                StatusCode::OK,
                "ok",
                Some(serde_json::json!({ "messageId": message_id })),
            )
        }
        Err(refusal) if refusal.code == crate::envelope::ErrorCode::Unavailable => {
            metrics.event_published("unavailable");
            refused(StatusCode::SERVICE_UNAVAILABLE, &refusal)
        }
        Err(refusal) => {
            metrics.event_published("refused");
            refused(StatusCode::BAD_REQUEST, &refusal)
        }
    }
}

async fn recover(rejection: Rejection) -> Result<Response, Infallible> {
    let (status, description) = if let Some(refused) = rejection.find::<UpgradeRefused>() {
        let (status, description) = refused.status_and_description();
        (status, description.to_owned())
    } else if rejection.is_not_found() {
        (StatusCode::NOT_FOUND, "no such endpoint".to_owned())
    } else if rejection.find::<warp::reject::PayloadTooLarge>().is_some() {
        (
            StatusCode::PAYLOAD_TOO_LARGE,
            "body larger than ws.max_message_bytes".to_owned(),
        )
    } else if rejection.find::<warp::reject::MethodNotAllowed>().is_some() {
        (
            StatusCode::METHOD_NOT_ALLOWED,
            "method not allowed".to_owned(),
        )
    } else if rejection.find::<warp::reject::LengthRequired>().is_some() {
        (
            StatusCode::LENGTH_REQUIRED,
            "content-length required".to_owned(),
        )
    } else {
        // Missing upgrade headers, a malformed query and the like. warp's
        // rejection text names internals, so it stays in the debug log.
        tracing::debug!(target: "switchboard::http", rejection = ?rejection, "request rejected");
        (StatusCode::BAD_REQUEST, "bad request".to_owned())
    };
    Ok(answer(status, description, None))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn query(pairs: &[(&str, &str)]) -> HashMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    /// Identity parameters are checked against the protocol's character sets.
    #[test]
    fn validates_token_parameters() {
        assert!(
            claims_from_query(&query(&[("uniqueId", "u@x.io"), ("clientType", "H5")]), 60).is_ok()
        );
        assert!(claims_from_query(&query(&[("clientType", "H5")]), 60).is_err());
        assert!(
            claims_from_query(&query(&[("uniqueId", "a b"), ("clientType", "H5")]), 60).is_err()
        );
        assert!(
            claims_from_query(&query(&[("uniqueId", "u"), ("clientType", "H.5")]), 60).is_err()
        );
        let long = "x".repeat(129);
        assert!(
            claims_from_query(&query(&[("uniqueId", &long), ("clientType", "H5")]), 60).is_err()
        );
        let claims = claims_from_query(
            &query(&[
                ("uniqueId", "u"),
                ("clientType", "H5"),
                ("tags", "a,b"),
                ("businesses", "p"),
            ]),
            60,
        )
        .unwrap();
        assert_eq!(claims.tags, ["a", "b"]);
        assert_eq!(claims.businesses, ["p"]);
    }

    /// The public URL wins over Host, with http(s) mapped to ws(s).
    #[test]
    fn builds_public_base() {
        let mut headers = HeaderMap::new();
        headers.insert(warp::http::header::HOST, "127.0.0.1:9".parse().unwrap());
        assert_eq!(public_base(None, &headers).unwrap(), "ws://127.0.0.1:9");
        assert_eq!(
            public_base(Some("https://x.io/"), &headers).unwrap(),
            "wss://x.io"
        );
        assert_eq!(
            public_base(Some("wss://x.io:8086"), &headers).unwrap(),
            "wss://x.io:8086"
        );
    }
}
