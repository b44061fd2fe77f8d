//! Checks that refuse unsafe combinations of otherwise valid keys, and the
//! `Debug` output that keeps secrets out of logs.
//!
//! One node on the embedded broker may run open for a developer; a cluster
//! (`broker.url` set) may not, because its nodes are reachable behind a load
//! balancer and must agree on the token key.

use super::{BrokerConfig, Config, ConfigError};

/// Builds the configured authenticator (so a bad `auth.*` key fails at load)
/// and refuses what is unsafe for a cluster.
pub(super) fn validate(config: &Config) -> Result<(), ConfigError> {
    let authenticator = crate::authenticators::build(config)?;
    if config.broker.url.is_none() {
        return Ok(());
    }

    // Without a shared key, a token issued by one node fails on every other.
    if config.auth.secret.is_none() {
        return Err(ConfigError::Invalid {
            key: "auth.secret",
            reason: "is required when broker.url is set: every node must sign and verify \
                     tokens with the same key"
                .to_owned(),
        });
    }
    // Used-token records in RabbitMQ live a fixed time; a token must not
    // outlive the record that says it was used.
    let record = crate::broker::amqp::tokens::RECORD_LIFETIME.as_secs();
    if config.auth.token_ttl_secs > record {
        return Err(ConfigError::Invalid {
            key: "auth.token_ttl_secs",
            reason: format!("may be at most {record} when broker.url is set"),
        });
    }
    if authenticator.is_open() && !config.auth.allow_open {
        let key = if config.auth.authenticator == "api_key" {
            "auth.api_keys"
        } else {
            "auth.authenticator"
        };
        return Err(ConfigError::Invalid {
            key,
            reason: "leaves the token, publish and presence endpoints open while broker.url \
                     is set; configure keys, or set auth.allow_open = true if the network in \
                     front decides who may call"
                .to_owned(),
        });
    }
    Ok(())
}

impl std::fmt::Debug for BrokerConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BrokerConfig")
            .field("url", &self.url.as_deref().map(redact_url))
            .field("prefetch", &self.prefetch)
            .field("max_retries", &self.max_retries)
            .field("max_in_flight", &self.max_in_flight)
            .field("publish_timeout_secs", &self.publish_timeout_secs)
            .finish_non_exhaustive()
    }
}

/// `amqp://user:pass@host/vhost` with the password replaced, for logs.
pub(crate) fn redact_url(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_owned();
    };
    let (authority, path) = match rest.find('/') {
        Some(at) => rest.split_at(at),
        None => (rest, ""),
    };
    match authority.rsplit_once('@') {
        Some((userinfo, host)) => {
            let user = userinfo.split_once(':').map_or(userinfo, |(user, _)| user);
            format!("{scheme}://{user}:<hidden>@{host}{path}")
        }
        None => url.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use figment::Figment;
    use figment::providers::{Format, Serialized, Toml};

    /// The shipped production sample is valid once the environment supplies
    /// its secrets, and refused, naming the key, while one is missing.
    #[test]
    fn production_sample_is_valid_with_its_secrets() {
        let text = include_str!("../../../deploy/switchboard.production.toml");
        let base = || {
            Figment::from(Serialized::defaults(Config::default()))
                .merge(Toml::string(text))
                .merge(Serialized::default(
                    "broker.url",
                    "amqp://u:p@rabbit:5672/sb",
                ))
                .merge(Serialized::default("node.id", "edge-1"))
        };
        let err = Config::from_figment(base()).unwrap_err().to_string();
        assert!(err.starts_with("auth.secret:"), "{err}");
        let err =
            Config::from_figment(base().merge(Serialized::default("auth.secret", "s".repeat(32))))
                .unwrap_err()
                .to_string();
        assert!(err.starts_with("auth.api_keys:"), "{err}");

        let config = Config::from_figment(
            base()
                .merge(Serialized::default("auth.secret", "s".repeat(32)))
                .merge(Serialized::default("auth.api_keys", ["k-1", "k-2"])),
        )
        .unwrap();
        assert_eq!(config.server.drain_spread_secs, 20);
        assert_eq!(config.ws.allowed_origins.len(), 2);
        assert_eq!(config.log.format, super::super::LogFormat::Json);
    }

    /// Passwords in broker URLs never reach `Debug` output.
    #[test]
    fn redacts_url_passwords() {
        assert_eq!(
            redact_url("amqp://guest:s3cret@10.0.0.1:5672/%2f"),
            "amqp://guest:<hidden>@10.0.0.1:5672/%2f"
        );
        assert_eq!(redact_url("amqp://host/vh"), "amqp://host/vh");
        let config = BrokerConfig {
            url: Some("amqp://u:pw-123@h".into()),
            ..BrokerConfig::default()
        };
        assert!(!format!("{config:?}").contains("pw-123"));
    }
}
