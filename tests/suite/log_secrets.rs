//! No secret, API key or token ever reaches the log, even at TRACE.
//!
//! The node runs on its own thread and current-thread runtime, under a
//! capturing subscriber scoped to that thread, so the capture holds exactly
//! what the server logged; the test's own clients run elsewhere.

use std::io::Write;
use std::sync::{Arc, Mutex};

use serde_json::json;
use switchboard::{HandlerRegistry, Server};
use switchboard_tests::{Client, init_logging, test_config, unicast};

const SECRET: &str = "secret-9f3a7c1e5b2d4f6a8c0e";
const API_KEY: &str = "apikey-4d2b6f8a0c1e3a5b7d9f";
const WRONG_KEY: &str = "wrongkey-7e5c3a1f9d7b5e3c1a";

/// A `MakeWriter` target: every log line lands in one shared buffer.
#[derive(Clone, Default)]
struct Capture(Arc<Mutex<Vec<u8>>>);

impl Write for Capture {
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(bytes);
        Ok(bytes.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// A full scenario logged at TRACE (token issued, connect, reuse, bad token,
/// publish with a key, a wrong key, the configuration itself) leaves no
/// secret, key or token in the log.
#[tokio::test(flavor = "multi_thread", worker_threads = 1)]
async fn logs_never_contain_secrets_keys_or_tokens() {
    // The global subscriber (and its bridge from the `log` crate) first, so
    // that libraries' `log` records reach the capture too.
    init_logging();
    let capture = Capture::default();
    let mut config = test_config();
    config.auth.secret = Some(SECRET.into());
    config.auth.api_keys = vec![API_KEY.into()];

    // The node, on its own thread, under the capturing subscriber.
    let (addr_tx, addr_rx) = tokio::sync::oneshot::channel();
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let writer = capture.clone();
    let server_thread = std::thread::spawn(move || {
        let subscriber = tracing_subscriber::fmt()
            .with_max_level(tracing::Level::TRACE)
            .with_ansi(false)
            .with_writer(move || writer.clone())
            .finish();
        let _scope = tracing::subscriber::set_default(subscriber);
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        runtime.block_on(async move {
            tracing::info!(config = ?config, "configuration loaded");
            let registry = HandlerRegistry::from_linked().unwrap();
            let server = Server::bind(config, registry).await.unwrap();
            addr_tx.send(server.local_addr()).unwrap();
            server
                .serve(async move {
                    let _ = stop_rx.await;
                })
                .await;
        });
    });
    let base = format!("http://{}", addr_rx.await.unwrap());
    let http = reqwest::Client::new();

    // Token issue, with the key and with a wrong key.
    let url = format!("{base}/websocket/token?uniqueId=logs-1&clientType=H5");
    let answer: serde_json::Value = http
        .get(&url)
        .bearer_auth(API_KEY)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let socket_url = answer["data"].as_str().unwrap().to_owned();
    let token = socket_url.rsplit('/').next().unwrap().to_owned();
    let refused = http.get(&url).bearer_auth(WRONG_KEY).send().await.unwrap();
    assert_eq!(refused.status().as_u16(), 401);

    // Connect, reuse the token, and try a tampered one.
    let mut client = Client::try_connect(&socket_url, None).await.unwrap();
    assert_eq!(
        Client::try_connect(&socket_url, None).await.err(),
        Some(401)
    );
    let mut tampered = token.clone();
    tampered.replace_range(0..1, if token.starts_with('e') { "f" } else { "e" });
    let bad_url = socket_url.replace(&token, &tampered);
    assert_eq!(Client::try_connect(&bad_url, None).await.err(), Some(401));

    // Publish with the key; the client receives it.
    let publish = http
        .post(format!("{base}/api/publish"))
        .bearer_auth(API_KEY)
        .body(unicast("notice", "logs-1", json!({"n": 1})).to_string())
        .send()
        .await
        .unwrap();
    assert_eq!(publish.status().as_u16(), 200);
    client.recv_type("SERVER_TO_CLIENT").await;
    client.close_and_wait().await;

    stop_tx.send(()).unwrap();
    tokio::task::spawn_blocking(move || server_thread.join().unwrap())
        .await
        .unwrap();

    let text = String::from_utf8(capture.0.lock().unwrap().clone()).unwrap();
    assert!(
        text.contains("session connected"),
        "the capture saw the session:\n{text}"
    );
    assert!(
        text.contains("configuration loaded"),
        "the capture saw the config"
    );
    let (payload, signature) = token.split_once('.').unwrap();
    let (bad_payload, _) = tampered.split_once('.').unwrap();
    for (what, needle) in [
        ("secret", SECRET),
        ("api key", API_KEY),
        ("wrong api key", WRONG_KEY),
        ("token payload", payload),
        ("token signature", signature),
        ("tampered token", bad_payload),
    ] {
        assert!(
            !text.contains(needle),
            "the {what} appears in the log:\n{text}"
        );
    }
}
