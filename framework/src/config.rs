//! Configuration: defaults, then a TOML file, then `SWITCHBOARD_` environment
//! variables (`__` between levels, so `SWITCHBOARD_SERVER__BIND` sets
//! `server.bind`).
//!
//! Every field documents its meaning, unit, default and what an unset or zero
//! value means. [`Config::load`] validates the result, and a bad value is an
//! error that names its key, so the binary can exit before it listens.

mod limits;
mod safety;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use figment::Figment;
use figment::providers::{Env, Format, Serialized, Toml};
use serde::{Deserialize, Deserializer, Serialize};

pub use limits::LimitsConfig;

/// Name of the file read from the working directory when no `--config` is
/// given. A missing default file is not an error.
pub const DEFAULT_FILE: &str = "switchboard.toml";

/// Prefix of the environment variables that override the file.
pub const ENV_PREFIX: &str = "SWITCHBOARD_";

/// The whole configuration of one node.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// HTTP listener and public address.
    pub server: ServerConfig,
    /// Message broker.
    pub broker: BrokerConfig,
    /// Token signing and API keys.
    pub auth: AuthConfig,
    /// WebSocket sessions.
    pub ws: WsConfig,
    /// This node's identity in a cluster.
    pub node: NodeConfig,
    /// Log output.
    pub log: LogConfig,
    /// Rate limits and caps per session, user and node.
    pub limits: LimitsConfig,
    /// Reliable business types: kept pushes, receipts, redelivery.
    pub reliable: ReliableConfig,
}

/// Settings of reliable business types (handlers whose `reliable()` is
/// true); see `docs/delivery-guarantees.md`.
///
/// With RabbitMQ these become the arguments of every user's inbox queue.
/// RabbitMQ refuses to redeclare a queue with other arguments, so changing
/// them later needs the existing `switchboard.inbox.*` queues deleted (or
/// drained) first.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ReliableConfig {
    /// Seconds a reliable push is kept for its user without a receipt;
    /// after that it is dropped, delivered or not. Default 86400 (24 h);
    /// 0 is refused.
    pub ttl_secs: u64,
    /// Most pushes kept for one user at once. A push beyond it is refused
    /// (the newest loses): its event is dead-lettered with reason
    /// `inbox full`. Default 10000; 0 is refused.
    pub max_pending_per_user: u32,
    /// Most pushes sent to one user's sessions and not yet acknowledged;
    /// further pushes wait in the inbox until a receipt arrives. It bounds
    /// what a node holds for a client that does not read or acknowledge.
    /// Default 100; 0 is refused; at most 65535.
    pub max_in_flight_per_user: u16,
    /// AMQP connections a node opens for its inbox consumers, besides its
    /// main one. Each online user's inbox is consumed on its own channel,
    /// spread over these connections: RabbitMQ allows 2047 channels per
    /// connection by default, so a node serves about 2,000 online users
    /// reliably per connection, and the client library's I/O thread costs
    /// grow with the channels of its connection. Default 4; 1 to 64.
    pub consumer_connections: u16,
}

impl Default for ReliableConfig {
    fn default() -> Self {
        ReliableConfig {
            ttl_secs: 86_400,
            max_pending_per_user: 10_000,
            max_in_flight_per_user: 100,
            consumer_connections: 4,
        }
    }
}

/// HTTP listener settings.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ServerConfig {
    /// Address and port to listen on. Default `127.0.0.1:8086`; port 0 picks
    /// a free port (the bound address is logged).
    pub bind: SocketAddr,
    /// Scheme and authority that clients use to reach this service, for
    /// example `wss://dws.example.com`; the token endpoint builds its
    /// connection URLs from it. Unset: taken from the request's `Host` header,
    /// with `ws://`. Set it behind a TLS-terminating proxy.
    pub public_url: Option<String>,
    /// Seconds that a drain on SIGTERM or SIGINT waits for sessions to close
    /// and in-flight work to finish before the process exits anyway.
    /// Default 10.
    pub shutdown_grace_secs: u64,
    /// Seconds over which a drain spreads the closing of sessions: each
    /// session closes (still with 1001) after its own random delay within
    /// this window, so that clients do not all reconnect to the remaining
    /// nodes in the same instant. Must be shorter than `shutdown_grace_secs`.
    /// Default 5; 0 closes every session at once.
    pub drain_spread_secs: u64,
    /// Seconds a client has to send the complete headers of an HTTP request
    /// (the WebSocket upgrade included), counted from opening the
    /// connection, from the request's first byte, or from the end of the
    /// previous request on it; a slower or silent client is disconnected.
    /// The same limit bounds reading the body and answering: a request not
    /// answered in time gets 408 and its connection is closed. So idle or
    /// trickling connections cannot pile up. Upgraded sessions are not
    /// affected. Default 30; 0 is refused.
    pub request_timeout_secs: u64,
}

impl Default for ServerConfig {
    fn default() -> Self {
        ServerConfig {
            bind: SocketAddr::from(([127, 0, 0, 1], 8086)),
            public_url: None,
            shutdown_grace_secs: 10,
            drain_spread_secs: 5,
            request_timeout_secs: 30,
        }
    }
}

/// Broker settings. Its `Debug` output hides the password in `url`.
#[derive(Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct BrokerConfig {
    /// Unset: the embedded in-process broker (one node, nothing survives a
    /// restart). An `amqp://user:pass@host:port/vhost` URL: RabbitMQ, which
    /// lets several nodes act as one service. Default unset.
    pub url: Option<String>,
    /// Most inbound events a node holds unacknowledged at once (the AMQP
    /// prefetch). Higher raises throughput and the work redone after a crash.
    /// Default 256; 0 is refused.
    pub prefetch: u16,
    /// Times a handler failure is retried before the event is dead-lettered.
    /// Default 3; 0 dead-letters on the first failure.
    pub max_retries: u32,
    /// Most publishes awaiting a broker confirm at once on this node; further
    /// publishes wait. Default 1024; 0 is refused.
    pub max_in_flight: usize,
    /// Seconds a publish waits for the broker (including a reconnect) before
    /// it fails to its caller with `UNAVAILABLE`. Default 5.
    pub publish_timeout_secs: u64,
}

impl Default for BrokerConfig {
    fn default() -> Self {
        BrokerConfig {
            url: None,
            prefetch: 256,
            max_retries: 3,
            max_in_flight: 1024,
            publish_timeout_secs: 5,
        }
    }
}

/// Token and API key settings. Its `Debug` output hides the secret and the
/// keys, so a logged configuration never leaks them.
#[derive(Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AuthConfig {
    /// Key that signs connection tokens; every node of a cluster needs the
    /// same one. Unset: a single node makes a random key at start and warns
    /// (tokens then die with the process). At least 16 bytes. Accepts a
    /// number from the environment as well as a string.
    #[serde(deserialize_with = "string_or_number_opt")]
    pub secret: Option<String>,
    /// Keys accepted in `Authorization: Bearer <key>` on the token and
    /// publish endpoints. Empty (the default): both endpoints are open and a
    /// warning is logged at start.
    #[serde(deserialize_with = "strings_or_numbers")]
    pub api_keys: Vec<String>,
    /// Seconds a token stays valid for connecting. Default 60; 0 is refused.
    /// A token connects once: a second upgrade with it is refused with 401.
    pub token_ttl_secs: u64,
    /// Which registered authenticator guards the token, publish and presence
    /// endpoints. Shipped: `api_key` (checks `auth.api_keys`) and
    /// `trusted_header` (trusts `auth.trusted_header` set by a gateway in
    /// front). Default `api_key`.
    pub authenticator: String,
    /// For the `trusted_header` authenticator: the request header that the
    /// upstream gateway sets to the authenticated caller, for example
    /// `X-Authenticated-User`. A request without it is refused with 401.
    /// Only safe behind a proxy that removes this header from what clients
    /// send and sets it itself. Default unset (required by that
    /// authenticator).
    pub trusted_header: Option<String>,
    /// With `broker.url` set, an `api_key` authenticator without keys (open
    /// endpoints) is refused at start unless this is `true`. Set it only when
    /// the network in front already decides who may reach the node.
    /// Default `false`.
    pub allow_open: bool,
    /// Free-form settings for a custom authenticator, read by its
    /// constructor (`[auth.options]` in TOML). The shipped authenticators
    /// read none. Default empty.
    pub options: BTreeMap<String, serde_json::Value>,
}

impl std::fmt::Debug for AuthConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let hidden = |set: bool| if set { "<hidden>" } else { "<unset>" };
        f.debug_struct("AuthConfig")
            .field("secret", &hidden(self.secret.is_some()))
            .field(
                "api_keys",
                &format_args!("<{} hidden>", self.api_keys.len()),
            )
            .field("token_ttl_secs", &self.token_ttl_secs)
            .field("authenticator", &self.authenticator)
            .field("trusted_header", &self.trusted_header)
            .field("allow_open", &self.allow_open)
            .field("options", &format_args!("<{} hidden>", self.options.len()))
            .finish()
    }
}

impl Default for AuthConfig {
    fn default() -> Self {
        AuthConfig {
            secret: None,
            api_keys: Vec::new(),
            token_ttl_secs: 60,
            authenticator: String::from("api_key"),
            trusted_header: None,
            allow_open: false,
            options: BTreeMap::new(),
        }
    }
}

/// WebSocket session settings.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct WsConfig {
    /// Largest frame a client may send, in bytes; a larger one closes the
    /// connection with 1009. Default 65536; must be at least 1024.
    pub max_message_bytes: usize,
    /// Seconds between the server's pings. Default 20; 0 turns pings off
    /// (clients must then send `HEARTBEAT` to stay connected).
    pub ping_interval_secs: u64,
    /// Seconds a connection may stay silent (no frame, pong included) before
    /// the server drops it with close code 4000. Default 60; 0 turns the
    /// timeout off.
    pub idle_timeout_secs: u64,
    /// Frames queued for one session before it counts as a client that does
    /// not read and is closed with 4001. Bounds memory per connection;
    /// larger tolerates longer stalls. Default 256; 0 is refused.
    pub send_queue_len: usize,
    /// `Origin` values allowed to open a WebSocket, each `scheme://host` or
    /// `scheme://host:port`; `scheme://*.example.com` allows any subdomain.
    /// An upgrade whose `Origin` is not listed is refused with 403 before
    /// the upgrade, which stops other web sites from opening sockets with a
    /// user's token (cross-site WebSocket hijacking). A request without
    /// `Origin` (apps and services, which can write any `Origin` anyway) is
    /// allowed. Empty (the default): any origin is allowed, since tokens are
    /// short-lived, single-use and issued only to authenticated callers; set
    /// it wherever browsers connect.
    pub allowed_origins: Vec<String>,
}

impl Default for WsConfig {
    fn default() -> Self {
        WsConfig {
            max_message_bytes: 64 * 1024,
            ping_interval_secs: 20,
            idle_timeout_secs: 60,
            send_queue_len: 256,
            allowed_origins: Vec::new(),
        }
    }
}

/// Node identity.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct NodeConfig {
    /// Name of this node in logs and broker queue names. Unset: a random one
    /// is made at start. Letters, digits, `-` and `_`, at most 64.
    #[serde(deserialize_with = "string_or_number_opt")]
    pub id: Option<String>,
}

/// Log settings.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LogConfig {
    /// `text` (human-readable, the default) or `json` (one object a line).
    pub format: LogFormat,
    /// Filter in `tracing-subscriber` syntax, for example
    /// `info,switchboard::ws=debug`. `RUST_LOG`, where set, wins. Default
    /// `info,lapin=off`: lapin logs every broker disconnect at ERROR itself,
    /// and Switchboard's connection supervisor already reports it once, at
    /// WARN, under `switchboard::amqp`.
    pub filter: String,
}

impl Default for LogConfig {
    fn default() -> Self {
        LogConfig {
            format: LogFormat::Text,
            filter: String::from("info,lapin=off"),
        }
    }
}

/// Log line format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object a line.
    Json,
}

/// A configuration that cannot be used. The message names the key.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file named with `--config` does not exist.
    #[error("config file {0} does not exist")]
    MissingFile(PathBuf),
    /// A value could not be read into its field.
    #[error("{0}")]
    Parse(Box<figment::Error>),
    /// A value was read but is not acceptable.
    #[error("{key}: {reason}")]
    Invalid {
        /// The dotted key, for example `ws.max_message_bytes`.
        key: &'static str,
        /// What is wrong with it.
        reason: String,
    },
}

impl Config {
    /// Loads defaults, then `file` (or `switchboard.toml` in the working
    /// directory if it exists), then the environment, and validates.
    ///
    /// # Errors
    ///
    /// [`ConfigError::MissingFile`] when `file` is given and absent,
    /// [`ConfigError::Parse`] when a value has the wrong type or an unknown
    /// key is present, [`ConfigError::Invalid`] when a value is out of range.
    pub fn load(file: Option<&Path>) -> Result<Config, ConfigError> {
        let mut figment = Figment::from(Serialized::defaults(Config::default()));
        match file {
            Some(path) => {
                // figment silently skips a missing file; an explicit one must exist.
                if !path.is_file() {
                    return Err(ConfigError::MissingFile(path.to_owned()));
                }
                figment = figment.merge(Toml::file_exact(path));
            }
            None => {
                if Path::new(DEFAULT_FILE).is_file() {
                    figment = figment.merge(Toml::file_exact(DEFAULT_FILE));
                }
            }
        }
        figment = figment.merge(Env::prefixed(ENV_PREFIX).split("__"));
        Config::from_figment(figment)
    }

    /// Extracts and validates a configuration from any figment; used by
    /// [`Config::load`] and by tests that build their own sources.
    ///
    /// # Errors
    ///
    /// As [`Config::load`].
    pub fn from_figment(figment: Figment) -> Result<Config, ConfigError> {
        let config: Config = figment
            .extract()
            .map_err(|err| ConfigError::Parse(Box::new(err)))?;
        config.validate()?;
        Ok(config)
    }

    /// Checks ranges and formats that serde cannot.
    ///
    /// # Errors
    ///
    /// [`ConfigError::Invalid`] naming the first bad key.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let invalid = |key, reason: &str| {
            Err(ConfigError::Invalid {
                key,
                reason: reason.to_owned(),
            })
        };
        if let Some(url) = &self.server.public_url {
            let ok = ["ws://", "wss://", "http://", "https://"]
                .iter()
                .any(|scheme| url.starts_with(scheme) && url.len() > scheme.len());
            if !ok {
                return invalid(
                    "server.public_url",
                    "must start with ws://, wss://, http:// or https://",
                );
            }
        }
        if let Some(url) = &self.broker.url
            && !(url.starts_with("amqp://") || url.starts_with("amqps://"))
        {
            return invalid("broker.url", "must be an amqp:// or amqps:// URL, or unset");
        }
        if self.broker.prefetch == 0 {
            return invalid("broker.prefetch", "must be at least 1");
        }
        if self.broker.max_in_flight == 0 {
            return invalid("broker.max_in_flight", "must be at least 1");
        }
        if self.reliable.ttl_secs == 0 {
            return invalid("reliable.ttl_secs", "must be at least 1");
        }
        // RabbitMQ takes the TTL in milliseconds as a signed 32-bit number
        // for `x-expires`, which is twice the TTL.
        if self.reliable.ttl_secs > 1_000_000 {
            return invalid("reliable.ttl_secs", "must be at most 1000000");
        }
        if self.reliable.max_pending_per_user == 0 {
            return invalid("reliable.max_pending_per_user", "must be at least 1");
        }
        if self.reliable.max_in_flight_per_user == 0 {
            return invalid("reliable.max_in_flight_per_user", "must be at least 1");
        }
        if !(1..=64).contains(&self.reliable.consumer_connections) {
            return invalid("reliable.consumer_connections", "must be 1 to 64");
        }
        if let Some(secret) = &self.auth.secret
            && secret.len() < 16
        {
            return invalid("auth.secret", "must be at least 16 bytes");
        }
        if self.auth.api_keys.iter().any(|k| k.trim().is_empty()) {
            return invalid("auth.api_keys", "keys must not be empty");
        }
        if self.auth.token_ttl_secs == 0 {
            return invalid("auth.token_ttl_secs", "must be at least 1");
        }
        if self.ws.max_message_bytes < 1024 {
            return invalid("ws.max_message_bytes", "must be at least 1024");
        }
        if self.ws.send_queue_len == 0 {
            return invalid("ws.send_queue_len", "must be at least 1");
        }
        if self.ws.idle_timeout_secs != 0
            && self.ws.ping_interval_secs != 0
            && self.ws.ping_interval_secs >= self.ws.idle_timeout_secs
        {
            return invalid(
                "ws.ping_interval_secs",
                "must be shorter than ws.idle_timeout_secs, or pongs cannot keep a session alive",
            );
        }
        if self.server.request_timeout_secs == 0 {
            return invalid("server.request_timeout_secs", "must be at least 1");
        }
        if self.server.drain_spread_secs != 0
            && self.server.drain_spread_secs >= self.server.shutdown_grace_secs
        {
            return invalid(
                "server.drain_spread_secs",
                "must be shorter than server.shutdown_grace_secs, or sessions would be cut off",
            );
        }
        if let Err(err) = crate::origin::OriginPolicy::new(&self.ws.allowed_origins) {
            return invalid("ws.allowed_origins", &err.to_string());
        }
        self.limits.validate(self.ws.max_message_bytes)?;
        safety::validate(self)?;
        if let Some(id) = &self.node.id {
            let ok = !id.is_empty()
                && id.len() <= 64
                && id
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_');
            if !ok {
                return invalid("node.id", "must be 1 to 64 letters, digits, '-' or '_'");
            }
        }
        Ok(())
    }
}

/// Accepts a string or a number: environment values that look like numbers
/// arrive as numbers, and a secret such as `1234567890123456` must still load.
fn string_or_number_opt<'de, D: Deserializer<'de>>(de: D) -> Result<Option<String>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Loose {
        S(String),
        U(u64),
        I(i64),
        F(f64),
    }
    Ok(Option::<Loose>::deserialize(de)?.map(|v| match v {
        Loose::S(s) => s,
        Loose::U(u) => u.to_string(),
        Loose::I(i) => i.to_string(),
        Loose::F(f) => f.to_string(),
    }))
}

fn strings_or_numbers<'de, D: Deserializer<'de>>(de: D) -> Result<Vec<String>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Loose {
        S(String),
        U(u64),
        I(i64),
    }
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum OneOrMany {
        Many(Vec<Loose>),
        One(Loose),
    }
    let text = |v: Loose| match v {
        Loose::S(s) => s,
        Loose::U(u) => u.to_string(),
        Loose::I(i) => i.to_string(),
    };
    Ok(match OneOrMany::deserialize(de)? {
        OneOrMany::Many(list) => list.into_iter().map(text).collect(),
        // A single key from the environment; commas separate several.
        OneOrMany::One(one) => text(one).split(',').map(|s| s.trim().to_owned()).collect(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use figment::providers::Toml;

    fn from_toml(text: &str) -> Result<Config, ConfigError> {
        let figment =
            Figment::from(Serialized::defaults(Config::default())).merge(Toml::string(text));
        Config::from_figment(figment)
    }

    /// The defaults match the operator contract.
    #[test]
    fn defaults_match_the_contract() {
        let config = from_toml("").unwrap();
        assert_eq!(config.server.bind.to_string(), "127.0.0.1:8086");
        assert_eq!(config.ws.max_message_bytes, 65536);
        assert_eq!(config.ws.ping_interval_secs, 20);
        assert_eq!(config.ws.idle_timeout_secs, 60);
        assert_eq!(config.auth.token_ttl_secs, 60);
        assert!(config.broker.url.is_none());
    }

    /// A bad value's error names its key.
    #[test]
    fn errors_name_the_key() {
        let err = from_toml("[ws]\nmax_message_bytes = 10")
            .unwrap_err()
            .to_string();
        assert!(err.contains("ws.max_message_bytes"), "{err}");
        let err = from_toml("[server]\nbind = \"nope\"")
            .unwrap_err()
            .to_string();
        assert!(err.contains("bind"), "{err}");
        let err = from_toml("[ws]\nmax_mesage_bytes = 10")
            .unwrap_err()
            .to_string();
        assert!(err.contains("max_mesage_bytes"), "{err}");
    }

    /// Numeric secrets and single-string key lists load.
    #[test]
    fn loose_secrets_and_keys() {
        let config = from_toml("[auth]\nsecret = 12345678901234567\napi_keys = \"a,b\"").unwrap();
        assert_eq!(config.auth.secret.as_deref(), Some("12345678901234567"));
        assert_eq!(config.auth.api_keys, ["a", "b"]);
    }
}
