//! The HTTP surface: token issue, the WebSocket upgrade, event publishing,
//! liveness and readiness.
//!
//! Every JSON answer has the shape `{ "result", "description", "data" }`:
//! `result` is 0 on success and otherwise equals the HTTP status, so a caller
//! can branch on either.

use std::collections::HashMap;
use std::convert::Infallible;
use std::sync::Arc;

use serde::Serialize;
use serde_json::Value;
use warp::http::{HeaderMap, StatusCode};
use warp::reply::Response;
use warp::{Filter, Rejection, Reply};

use crate::envelope::{Envelope, MAX_NAME_LEN, MAX_TARGETS, Refusal};
use crate::node::Node;
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

fn answer(status: StatusCode, description: impl Into<String>, data: Option<Value>) -> Response {
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

/// A token that failed verification, turned into 401 by [`recover`].
#[derive(Debug)]
struct BadToken(TokenError);
impl warp::reject::Reject for BadToken {}

/// The node is draining or full, turned into 503 by [`recover`].
#[derive(Debug)]
struct Draining;
impl warp::reject::Reject for Draining {}

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

    let socket = warp::path!("socket" / String)
        .and(warp::get())
        .and(with_node.clone())
        .and_then(check_token)
        .and(upgrade::websocket())
        .map(
            |(node, claims): (Arc<Node>, Claims), ws: upgrade::Upgrade| {
                let ws = ws.max_message_size(node.config().ws.max_message_bytes);
                let tasks = node.session_tasks().clone();
                ws.on_upgrade(&tasks, move |socket| session::run(node, socket, claims))
            },
        );

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
    let claims = match claims_from_query(&query, node.config().auth.token_ttl_secs) {
        Ok(claims) => claims,
        Err(why) => return answer(StatusCode::BAD_REQUEST, why, None),
    };
    let Some(base) = public_base(node.config().server.public_url.as_deref(), &headers) else {
        return answer(StatusCode::BAD_REQUEST, "missing Host header", None);
    };
    let token = node.signer().sign(&claims);
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
    let user_ok = |c: char| c.is_ascii_alphanumeric() || "._:@-".contains(c);
    if unique_id.is_empty() || unique_id.len() > 128 || !unique_id.chars().all(user_ok) {
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

async fn check_token(token: String, node: Arc<Node>) -> Result<(Arc<Node>, Claims), Rejection> {
    if node.is_draining() {
        return Err(warp::reject::custom(Draining));
    }
    match node.signer().verify(&token, now_secs()) {
        Ok(claims) => Ok((node, claims)),
        Err(err) => {
            tracing::debug!(target: "switchboard::http", error = %err, "token refused");
            Err(warp::reject::custom(BadToken(err)))
        }
    }
}

async fn publish_event(headers: HeaderMap, body: bytes::Bytes, node: Arc<Node>) -> Response {
    if let Err(err) = node.authenticator().authenticate(&headers) {
        return answer(StatusCode::UNAUTHORIZED, err.to_string(), None);
    }
    let event = match Envelope::parse_bytes(&body) {
        Ok(event) => event,
        Err(refusal) => return refused(StatusCode::BAD_REQUEST, &refusal),
    };
    match node.accept_service_event(event).await {
        Ok(message_id) => answer(
            StatusCode::OK,
            "ok",
            Some(serde_json::json!({ "messageId": message_id })),
        ),
        Err(refusal) if refusal.code == crate::envelope::ErrorCode::Unavailable => {
            refused(StatusCode::SERVICE_UNAVAILABLE, &refusal)
        }
        Err(refusal) => refused(StatusCode::BAD_REQUEST, &refusal),
    }
}

async fn recover(rejection: Rejection) -> Result<Response, Infallible> {
    let (status, description) = if let Some(BadToken(err)) = rejection.find() {
        let why = match err {
            TokenError::Expired => "token expired",
            TokenError::Malformed | TokenError::BadSignature => "invalid token",
        };
        (StatusCode::UNAUTHORIZED, why.to_owned())
    } else if rejection.find::<Draining>().is_some() {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            "the node is shutting down".to_owned(),
        )
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
