//! Loading configuration from a file: values arrive, a missing explicit file
//! and bad values are errors that name the file or the key.
//!
//! These tests set no environment variables: the environment is shared by
//! every test in the process. The environment's override of the file is
//! proved on the real binary, in `app/tests/cli.rs`.

use std::path::PathBuf;

use switchboard::Config;
use switchboard::config::ConfigError;

/// A TOML file in the temporary directory, removed when dropped.
struct TempToml(PathBuf);

impl TempToml {
    fn new(name: &str, text: &str) -> TempToml {
        let file = format!("switchboard-suite-{}-{name}.toml", std::process::id());
        let path = std::env::temp_dir().join(file);
        std::fs::write(&path, text).expect("temp file is writable");
        TempToml(path)
    }
}

impl Drop for TempToml {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

/// The error text of loading `text` as the config file.
fn load_error(name: &str, text: &str) -> String {
    let file = TempToml::new(name, text);
    match Config::load(Some(&file.0)) {
        Ok(config) => panic!("{text:?} loaded: {config:?}"),
        Err(err) => err.to_string(),
    }
}

/// Values in the named file override the defaults; unnamed keys keep them.
#[test]
fn config_file_values_are_loaded() {
    let file = TempToml::new(
        "values",
        r#"
[server]
bind = "127.0.0.1:9123"
public_url = "wss://dws.example.com"

[auth]
secret = "a-secret-of-sixteen-bytes"
api_keys = ["k1", "k2"]
token_ttl_secs = 30

[ws]
ping_interval_secs = 5
idle_timeout_secs = 15

[node]
id = "node-a"
"#,
    );
    let config = Config::load(Some(&file.0)).expect("file loads");
    assert_eq!(config.server.bind.to_string(), "127.0.0.1:9123");
    assert_eq!(
        config.server.public_url.as_deref(),
        Some("wss://dws.example.com")
    );
    assert_eq!(config.auth.api_keys, ["k1", "k2"]);
    assert_eq!(config.auth.token_ttl_secs, 30);
    assert_eq!(config.ws.ping_interval_secs, 5);
    assert_eq!(config.ws.idle_timeout_secs, 15);
    assert_eq!(config.node.id.as_deref(), Some("node-a"));
    assert_eq!(config.ws.max_message_bytes, 65536, "default kept");
    assert!(config.broker.url.is_none(), "default kept");
}

/// An explicitly named file that does not exist is an error naming it.
#[test]
fn missing_config_file_is_an_error() {
    let path = std::env::temp_dir().join("switchboard-suite-no-such-file.toml");
    let err = Config::load(Some(&path)).expect_err("a missing file is an error");
    assert!(matches!(err, ConfigError::MissingFile(_)), "{err:?}");
    assert!(
        err.to_string()
            .contains("switchboard-suite-no-such-file.toml")
    );
}

/// A value out of range, of the wrong type, or under an unknown key is an
/// error whose message names the key.
#[test]
fn bad_values_are_errors_that_name_the_key() {
    let cases = [
        (
            "range",
            "[ws]\nmax_message_bytes = 10",
            "ws.max_message_bytes",
        ),
        ("ttl", "[auth]\ntoken_ttl_secs = 0", "auth.token_ttl_secs"),
        ("secret", "[auth]\nsecret = \"short\"", "auth.secret"),
        ("url", "[broker]\nurl = \"http://x\"", "broker.url"),
        (
            "public",
            "[server]\npublic_url = \"ftp://x\"",
            "server.public_url",
        ),
        ("node", "[node]\nid = \"has space\"", "node.id"),
        ("queue", "[ws]\nsend_queue_len = 0", "ws.send_queue_len"),
        (
            "ping",
            "[ws]\nping_interval_secs = 60",
            "ws.ping_interval_secs",
        ),
        (
            "type",
            "[ws]\nidle_timeout_secs = \"soon\"",
            "ws.idle_timeout_secs",
        ),
        ("bind", "[server]\nbind = \"nowhere\"", "server.bind"),
        (
            "unknown",
            "[ws]\nmax_mesage_bytes = 1",
            "ws.max_mesage_bytes",
        ),
        ("section", "[wss]\nx = 1", "wss"),
    ];
    for (name, text, key) in cases {
        let err = load_error(name, text);
        assert!(err.contains(key), "{text:?}: {err:?} does not name {key}");
    }
}

/// A file that is not TOML is an error.
#[test]
fn malformed_toml_is_an_error() {
    let err = load_error("syntax", "[ws\nmax_message_bytes = ");
    assert!(!err.is_empty());
}
