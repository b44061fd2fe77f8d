//! Shared pieces of the load generator: connecting to each kind of server,
//! timestamps carried in payloads, latency histograms, and reading the
//! machine and a server's memory.

pub mod report;

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use futures_util::{SinkExt, StreamExt};
use hdrhistogram::Histogram;
use serde::Serialize;
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::tungstenite::{Message, Utf8Bytes};
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

/// One client socket.
pub type Socket = WebSocketStream<MaybeTlsStream<TcpStream>>;

/// Which server is measured.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Target {
    /// Switchboard, through its token endpoint and protocol.
    Switchboard,
    /// The raw tokio-tungstenite fan-out server in this crate.
    Raw,
    /// A Socket.IO 4 server (Node.js), over its WebSocket transport.
    Socketio,
}

impl std::str::FromStr for Target {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "switchboard" => Ok(Target::Switchboard),
            "raw" => Ok(Target::Raw),
            "socketio" => Ok(Target::Socketio),
            other => Err(format!("unknown target {other}")),
        }
    }
}

/// Microseconds since the Unix epoch; carried in payloads as `"t"`.
pub fn now_micros() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_micros() as u64)
        .unwrap_or(0)
}

/// Finds `"t":<digits>` in a frame without parsing the whole JSON, so the
/// load generator spends its CPU on sockets, not on serde.
pub fn extract_stamp(text: &str) -> Option<u64> {
    extract_field(text, "\"t\":")
}

/// The unsigned integer right after `key` (for example `"s":`) in `text`.
pub fn extract_field(text: &str, key: &str) -> Option<u64> {
    let at = text.find(key)? + key.len();
    let digits: &str = &text[at..];
    let end = digits
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(digits.len());
    digits[..end].parse().ok()
}

/// A latency histogram in microseconds, 1 µs to 60 s.
pub fn histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 60_000_000, 3).expect("valid histogram bounds")
}

/// Latency percentiles, in milliseconds.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Percentiles {
    /// Number of samples.
    pub count: u64,
    /// Median.
    pub p50_ms: f64,
    /// 99th percentile.
    pub p99_ms: f64,
    /// 99.9th percentile.
    pub p999_ms: f64,
    /// Largest sample.
    pub max_ms: f64,
}

impl Percentiles {
    /// Summarizes a histogram of microseconds.
    pub fn of(h: &Histogram<u64>) -> Self {
        let ms = |us: u64| us as f64 / 1000.0;
        Percentiles {
            count: h.len(),
            p50_ms: ms(h.value_at_quantile(0.50)),
            p99_ms: ms(h.value_at_quantile(0.99)),
            p999_ms: ms(h.value_at_quantile(0.999)),
            max_ms: ms(h.max()),
        }
    }
}

/// The machine a run happened on.
#[derive(Debug, Clone, Serialize)]
pub struct Machine {
    /// Logical CPUs.
    pub cores: usize,
    /// Total memory, MiB.
    pub memory_mib: u64,
    /// `git rev-parse --short HEAD`, where available.
    pub commit: String,
}

impl Machine {
    /// Reads the current machine.
    pub fn read() -> Self {
        let cores = std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(0);
        let meminfo = std::fs::read_to_string("/proc/meminfo").unwrap_or_default();
        let memory_kib = field_kib(&meminfo, "MemTotal:").unwrap_or(0);
        let commit = std::process::Command::new("git")
            .args(["rev-parse", "--short", "HEAD"])
            .output()
            .ok()
            .filter(|o| o.status.success())
            .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
            .unwrap_or_else(|| "unknown".to_owned());
        Machine {
            cores,
            memory_mib: memory_kib / 1024,
            commit,
        }
    }
}

fn field_kib(text: &str, name: &str) -> Option<u64> {
    let line = text.lines().find(|l| l.starts_with(name))?;
    line[name.len()..]
        .trim()
        .trim_end_matches("kB")
        .trim()
        .parse()
        .ok()
}

/// Resident memory of process `pid` in KiB, from `/proc`.
pub fn rss_kib(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    field_kib(&status, "VmRSS:")
}

/// CPU time (user plus system, all threads) that process `pid` has used,
/// in seconds, from `/proc`; `None` for 0 or a process that is gone. Pass
/// `std::process::id()` for the load generator itself.
pub fn cpu_secs(pid: u32) -> Option<f64> {
    // Linux reports these in USER_HZ, which is 100 on every architecture
    // this runs on.
    const TICKS_PER_SEC: f64 = 100.0;
    if pid == 0 {
        return None;
    }
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the command name, which is in parentheses and may hold
    // spaces: state is the 1st, utime the 12th, stime the 13th.
    let rest = &stat[stat.rfind(')')? + 1..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let utime: u64 = fields.get(11)?.parse().ok()?;
    let stime: u64 = fields.get(12)?.parse().ok()?;
    Some((utime + stime) as f64 / TICKS_PER_SEC)
}

/// The pid of the local RabbitMQ (the Erlang VM `beam.smp` run by user
/// `rabbitmq`), found in `/proc`; `None` when there is none. Its CPU time is
/// recorded next to the server's, since on one machine they share the cores.
pub fn broker_pid() -> Option<u32> {
    let entries = std::fs::read_dir("/proc").ok()?;
    entries.flatten().find_map(|entry| {
        let pid: u32 = entry.file_name().to_str()?.parse().ok()?;
        let comm = std::fs::read_to_string(entry.path().join("comm")).ok()?;
        let cmdline = std::fs::read(entry.path().join("cmdline")).ok()?;
        let rabbit = cmdline.windows(6).any(|w| w == b"rabbit");
        (comm.trim() == "beam.smp" && rabbit).then_some(pid)
    })
}

/// CPU seconds of the server and of the load generator over one step.
#[derive(Debug, Clone, Copy)]
pub struct CpuMeter {
    server_pid: u32,
    server: Option<f64>,
    own: Option<f64>,
}

impl CpuMeter {
    /// Starts measuring; `server_pid` 0 measures the load generator only.
    pub fn start(server_pid: u32) -> Self {
        CpuMeter {
            server_pid,
            server: cpu_secs(server_pid),
            own: cpu_secs(std::process::id()),
        }
    }

    /// CPU seconds since [`CpuMeter::start`]: `(server, load generator)`.
    pub fn stop(&self) -> (Option<f64>, Option<f64>) {
        let since = |before: Option<f64>, pid: u32| Some(cpu_secs(pid)? - before?);
        (
            since(self.server, self.server_pid),
            since(self.own, std::process::id()),
        )
    }
}

/// How to reach a server.
#[derive(Debug, Clone)]
pub struct Endpoint {
    /// Which kind of server.
    pub target: Target,
    /// `http://host:port` for Switchboard; `ws://host:port` for the others.
    pub url: String,
    /// Bearer key for Switchboard's endpoints, if configured.
    pub api_key: Option<String>,
}

/// Errors while connecting a client.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

impl Endpoint {
    /// Opens one client connection as user `user` and waits until the server
    /// says it is ready (Switchboard's `CONNECTED`, Socket.IO's connect
    /// packet).
    pub async fn connect(
        &self,
        http: &reqwest::Client,
        user: &str,
        extra: &str,
    ) -> Result<Socket, BoxError> {
        match self.target {
            Target::Switchboard => {
                let url = format!(
                    "{}/websocket/token?uniqueId={user}&clientType=H5{extra}",
                    self.url
                );
                let mut request = http.get(url);
                if let Some(key) = &self.api_key {
                    request = request.bearer_auth(key);
                }
                let body: serde_json::Value = request.send().await?.json().await?;
                let ws_url = body["data"].as_str().ok_or("token response without data")?;
                let mut ws = open(ws_url).await?;
                let first = next_text(&mut ws).await.ok_or("closed before CONNECTED")?;
                if !first.contains("CONNECTED") {
                    return Err("first frame was not CONNECTED".into());
                }
                Ok(ws)
            }
            Target::Raw => open(&self.url).await,
            Target::Socketio => {
                let url = format!("{}/socket.io/?EIO=4&transport=websocket", self.url);
                let mut ws = open(&url).await?;
                let open = next_text(&mut ws).await.ok_or("closed before open")?;
                if !open.starts_with('0') {
                    return Err("no engine.io open packet".into());
                }
                ws.send(Message::text("40")).await?;
                let connect = next_text(&mut ws).await.ok_or("closed before connect")?;
                if !connect.starts_with("40") {
                    return Err("no socket.io connect packet".into());
                }
                Ok(ws)
            }
        }
    }
}

/// Read buffer of each client socket. tungstenite's default, 128 KiB, is
/// zero-filled on every read, which at thousands of sockets made the load
/// generator, not the server, the first thing to run out of CPU.
const CLIENT_READ_BUFFER: usize = 16 * 1024;

/// Opens one WebSocket client connection to `url`.
async fn open(url: &str) -> Result<Socket, BoxError> {
    let config = WebSocketConfig::default().read_buffer_size(CLIENT_READ_BUFFER);
    let (ws, _) = tokio_tungstenite::connect_async_with_config(url, Some(config), false).await?;
    Ok(ws)
}

/// The next text frame, answering Socket.IO's engine-level pings on the way.
/// The frame is returned as received, without a copy.
pub async fn next_text(ws: &mut Socket) -> Option<Utf8Bytes> {
    loop {
        match ws.next().await? {
            Ok(Message::Text(text)) => {
                if text.as_str() == "2" {
                    // Engine.IO ping: answer, or the server drops us.
                    ws.send(Message::text("3")).await.ok()?;
                    continue;
                }
                return Some(text);
            }
            Ok(Message::Close(_)) | Err(_) => return None,
            Ok(_) => continue,
        }
    }
}

/// Opens `count` connections with at most `parallel` handshakes at once.
/// Returns the sockets and the time it took.
pub async fn connect_many(
    endpoint: &Endpoint,
    count: usize,
    parallel: usize,
    user_of: impl Fn(usize) -> (String, String),
) -> Result<(Vec<Socket>, Duration), BoxError> {
    use futures_util::stream;
    let http = reqwest::Client::new();
    let started = std::time::Instant::now();
    let results: Vec<Result<Socket, BoxError>> = stream::iter(0..count)
        .map(|i| {
            let (user, extra) = user_of(i);
            let http = &http;
            async move { endpoint.connect(http, &user, &extra).await }
        })
        .buffer_unordered(parallel.max(1))
        .collect()
        .await;
    let elapsed = started.elapsed();
    let sockets = results.into_iter().collect::<Result<Vec<_>, _>>()?;
    Ok((sockets, elapsed))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The stamp is found in each server's framing.
    #[test]
    fn finds_stamps() {
        assert_eq!(extract_stamp(r#"{"content":{"t":123},"x":1}"#), Some(123));
        assert_eq!(extract_stamp(r#"42["msg",{"t":99}]"#), Some(99));
        assert_eq!(extract_stamp("{}"), None);
    }
}
