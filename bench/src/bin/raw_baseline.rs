//! The raw baseline: the smallest tokio WebSocket server that fans out.
//!
//! ```text
//! cargo run --release -p switchboard-bench --bin raw-baseline -- 127.0.0.1:9001
//! ```
//!
//! Every text frame a connection sends is queued for every other connection,
//! with no protocol, no registry and no broker. It shows the limit of the
//! machine and of tokio-tungstenite; Switchboard's numbers are reported as a
//! ratio to it. Like Switchboard, it keeps a bounded queue per connection and
//! drops a connection whose queue is full (with a close frame). The load
//! generator sends it the envelope Switchboard would deliver, so both
//! deliver frames of the same size.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};

use futures_util::{SinkExt, StreamExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;

type Peers = Arc<RwLock<HashMap<u64, mpsc::Sender<Message>>>>;

const QUEUE: usize = 256;

#[tokio::main]
async fn main() -> std::io::Result<()> {
    let addr = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "127.0.0.1:9001".to_owned());
    let listener = TcpListener::bind(&addr).await?;
    eprintln!("raw-baseline listening on {}", listener.local_addr()?);
    let peers: Peers = Arc::default();
    let ids = AtomicU64::new(0);
    loop {
        let (stream, _) = listener.accept().await?;
        let id = ids.fetch_add(1, Ordering::Relaxed);
        tokio::spawn(serve(stream, id, peers.clone()));
    }
}

async fn serve(stream: TcpStream, id: u64, peers: Peers) {
    let config = WebSocketConfig::default().max_message_size(Some(64 * 1024));
    let Ok(ws) = tokio_tungstenite::accept_async_with_config(stream, Some(config)).await else {
        return;
    };
    let (mut sink, mut stream) = ws.split();
    let (tx, mut rx) = mpsc::channel::<Message>(QUEUE);
    peers
        .write()
        .unwrap_or_else(|p| p.into_inner())
        .insert(id, tx);

    let writer = tokio::spawn(async move {
        while let Some(message) = rx.recv().await {
            if sink.feed(message).await.is_err() {
                return;
            }
            while let Ok(more) = rx.try_recv() {
                if sink.feed(more).await.is_err() {
                    return;
                }
            }
            if sink.flush().await.is_err() {
                return;
            }
        }
        // Dropped as a slow reader (its sender is gone): say so, as
        // Switchboard does with 4001.
        let _ = sink.send(Message::Close(None)).await;
    });

    while let Some(Ok(message)) = stream.next().await {
        if !message.is_text() {
            continue;
        }
        // Clone the senders under the lock, send outside it. A text message
        // clones by reference count, so the payload is shared.
        let targets: Vec<(u64, mpsc::Sender<Message>)> = {
            let peers = peers.read().unwrap_or_else(|p| p.into_inner());
            peers
                .iter()
                .filter(|(k, _)| **k != id)
                .map(|(k, v)| (*k, v.clone()))
                .collect()
        };
        let mut slow = Vec::new();
        for (peer, target) in targets {
            if let Err(mpsc::error::TrySendError::Full(_)) = target.try_send(message.clone()) {
                slow.push(peer);
            }
        }
        if !slow.is_empty() {
            let mut peers = peers.write().unwrap_or_else(|p| p.into_inner());
            for peer in slow {
                peers.remove(&peer);
            }
        }
    }
    peers.write().unwrap_or_else(|p| p.into_inner()).remove(&id);
    writer.abort();
}
