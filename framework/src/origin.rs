//! Which web pages may open a WebSocket: the `Origin` check of the upgrade.
//!
//! A browser sends `Origin` with every WebSocket upgrade and lets any page
//! open a socket to any host, so without this check a hostile page that got
//! hold of a connection URL could use it. `ws.allowed_origins` lists the
//! origins of the pages that may connect; an upgrade with any other `Origin`
//! is refused with HTTP 403 before the token is even looked at.
//!
//! What is allowed:
//!
//! - an empty list (the default) allows every origin;
//! - an upgrade without `Origin` is allowed: only browsers are made to send
//!   it, and a non-browser client can write any value it likes, so refusing
//!   its absence would stop apps and services without stopping anyone;
//! - `scheme://host[:port]` matches exactly (case-insensitive, default ports
//!   80 and 443 may be written or left out);
//! - `scheme://*.example.com` matches any subdomain of `example.com` (not
//!   `example.com` itself) on that scheme and port.

/// A malformed `ws.allowed_origins` entry.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("'{0}' is not scheme://host or scheme://host:port")]
pub struct OriginError(String);

#[derive(Debug, Clone, PartialEq, Eq)]
enum Pattern {
    /// A whole normalized origin.
    Exact(String),
    /// `scheme://*.suffix[:port]`: `prefix` is `scheme://`, `suffix` is
    /// `.example.com[:port]`.
    Subdomain { prefix: String, suffix: String },
}

/// The parsed `ws.allowed_origins`.
#[derive(Debug, Clone, Default)]
pub struct OriginPolicy {
    patterns: Vec<Pattern>,
    refuse_all: bool,
}

impl OriginPolicy {
    /// Parses the configured list.
    ///
    /// # Errors
    ///
    /// [`OriginError`] naming the first malformed entry.
    pub fn new(allowed: &[String]) -> Result<Self, OriginError> {
        let patterns = allowed
            .iter()
            .map(|entry| parse(entry).ok_or_else(|| OriginError(entry.clone())))
            .collect::<Result<_, _>>()?;
        Ok(OriginPolicy {
            patterns,
            refuse_all: false,
        })
    }

    /// A policy that refuses every upgrade carrying `Origin`; what a node
    /// falls back to if it is ever given a list that does not parse.
    pub fn refuse_browsers() -> Self {
        OriginPolicy {
            patterns: Vec::new(),
            refuse_all: true,
        }
    }

    /// Whether an upgrade carrying `origin` (the header's value, if any) may
    /// proceed.
    pub fn allows(&self, origin: Option<&str>) -> bool {
        if self.refuse_all {
            return origin.is_none();
        }
        if self.patterns.is_empty() {
            return true;
        }
        let Some(origin) = origin else { return true };
        let Some(origin) = normalize(origin) else {
            return false;
        };
        self.patterns.iter().any(|pattern| match pattern {
            Pattern::Exact(exact) => *exact == origin,
            Pattern::Subdomain { prefix, suffix } => origin
                .strip_prefix(prefix.as_str())
                .and_then(|rest| rest.strip_suffix(suffix.as_str()))
                .is_some_and(|label| !label.is_empty() && !label.contains(['/', ':'])),
        })
    }
}

fn parse(entry: &str) -> Option<Pattern> {
    let entry = entry.trim().trim_end_matches('/');
    let (scheme, host) = entry.split_once("://")?;
    match host.strip_prefix("*.") {
        Some(rest) => {
            let normalized = normalize(&format!("{scheme}://{rest}"))?;
            let (prefix, domain) = normalized.split_once("://")?;
            Some(Pattern::Subdomain {
                prefix: format!("{prefix}://"),
                suffix: format!(".{domain}"),
            })
        }
        None => normalize(entry).map(Pattern::Exact),
    }
}

/// `scheme://host[:port]` in lowercase without a default port, or `None`
/// when `origin` is not of that shape (a path, `null`, stray characters).
fn normalize(origin: &str) -> Option<String> {
    let origin = origin.to_ascii_lowercase();
    let (scheme, authority) = origin.split_once("://")?;
    let scheme_ok = !scheme.is_empty()
        && scheme
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "+-.".contains(c));
    let host_ok = |host: &str| {
        !host.is_empty()
            && host
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || "-.[]:".contains(c))
    };
    if !scheme_ok || !host_ok(authority) {
        return None;
    }
    let authority = match (scheme, authority.rsplit_once(':')) {
        ("http", Some((host, "80"))) | ("https", Some((host, "443"))) => host,
        _ => authority,
    };
    Some(format!("{scheme}://{authority}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy(list: &[&str]) -> OriginPolicy {
        let list: Vec<String> = list.iter().map(|s| s.to_string()).collect();
        OriginPolicy::new(&list).unwrap()
    }

    /// An empty list allows everything; a missing header is always allowed.
    #[test]
    fn empty_list_and_missing_header_allow() {
        assert!(policy(&[]).allows(Some("https://evil.example")));
        assert!(policy(&["https://app.example.com"]).allows(None));
    }

    /// Exact entries match case-insensitively, with default ports folded.
    #[test]
    fn exact_entries_match() {
        let p = policy(&["https://App.example.com:443", "http://localhost:3000"]);
        assert!(p.allows(Some("https://app.example.com")));
        assert!(p.allows(Some("http://localhost:3000")));
        assert!(!p.allows(Some("http://localhost:3001")));
        assert!(!p.allows(Some("http://app.example.com")));
        assert!(!p.allows(Some("https://app.example.com.evil.io")));
        assert!(!p.allows(Some("null")));
    }

    /// A wildcard matches subdomains only, on its scheme and port.
    #[test]
    fn wildcard_matches_subdomains() {
        let p = policy(&["https://*.example.com"]);
        assert!(p.allows(Some("https://a.example.com")));
        assert!(p.allows(Some("https://a.b.example.com")));
        assert!(!p.allows(Some("https://example.com")));
        assert!(!p.allows(Some("https://a.example.com:8443")));
        assert!(!p.allows(Some("https://badexample.com")));
        assert!(!p.allows(Some("http://a.example.com")));
    }

    /// Entries with a path or no scheme are refused at load.
    #[test]
    fn malformed_entries_are_refused() {
        for bad in ["example.com", "https://x.io/app", "https://", "://x"] {
            assert!(OriginPolicy::new(&[bad.to_string()]).is_err(), "{bad}");
        }
    }
}
