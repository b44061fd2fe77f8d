//! Upgrades that may be refused, clients that leave on purpose, and reading
//! `/metrics`.

use futures_util::{SinkExt, StreamExt};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;

use crate::{Client, DEADLINE};

impl Client {
    /// Connects to `url`, sending `Origin` when given, and waits for
    /// `CONNECTED`; a refused upgrade returns its HTTP status.
    pub async fn try_connect(url: &str, origin: Option<&str>) -> Result<Client, u16> {
        let mut request = url.into_client_request().expect("a valid URL");
        if let Some(origin) = origin {
            let value = origin.parse().expect("a valid header value");
            request.headers_mut().insert("origin", value);
        }
        match tokio_tungstenite::connect_async(request).await {
            Ok((ws, _)) => {
                let mut client = Client {
                    ws,
                    connected: serde_json::Value::Null,
                };
                let first = client.recv().await;
                assert_eq!(first["messageType"], "CONNECTED", "first frame: {first}");
                client.connected = first["content"].clone();
                Ok(client)
            }
            Err(tokio_tungstenite::tungstenite::Error::Http(response)) => {
                Err(response.status().as_u16())
            }
            Err(other) => panic!("upgrade failed without an HTTP answer: {other}"),
        }
    }

    /// Sends raw text; `false` once the connection is gone (for tests in
    /// which the server may close mid-stream).
    pub async fn try_send_text(&mut self, text: String) -> bool {
        self.ws.send(Message::text(text)).await.is_ok()
    }

    /// Sends `envelope` and returns the first frame that answers it (its
    /// `correlationId` is the envelope's `messageId`), whatever its type.
    pub async fn request_any(&mut self, envelope: serde_json::Value) -> serde_json::Value {
        let id = envelope["messageId"]
            .as_str()
            .expect("request has a messageId")
            .to_owned();
        self.send(&envelope).await;
        loop {
            let frame = self.recv().await;
            if frame["correlationId"] == id.as_str() {
                return frame;
            }
        }
    }

    /// Closes from the client side and waits (at most [`DEADLINE`]) until
    /// the server has ended the connection.
    pub async fn close_and_wait(mut self) {
        let _ = self.ws.send(Message::Close(None)).await;
        let drained = async { while let Some(Ok(_)) = self.ws.next().await {} };
        tokio::time::timeout(DEADLINE, drained)
            .await
            .expect("the server ends a closed connection");
    }
}

/// The value of one series in Prometheus text, for example
/// `switchboard_session_ends_total{reason="shutdown"}`; 0 when absent.
pub fn metric(text: &str, series: &str) -> f64 {
    text.lines()
        .filter(|line| !line.starts_with('#'))
        .find_map(|line| {
            let (name, value) = line.rsplit_once(' ')?;
            (name == series).then(|| value.parse().ok())?
        })
        .unwrap_or(0.0)
}
