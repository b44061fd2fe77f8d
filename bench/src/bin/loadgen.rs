//! The load generator: real WebSocket clients driving one scenario against
//! one server, printing a table and writing JSON.
//!
//! ```text
//! cargo run --release -p switchboard-bench --bin loadgen -- \
//!     --target switchboard --url http://127.0.0.1:8086 --server-pid PID \
//!     --scenario fanout --connections 2000 --json results.json
//! ```
//!
//! Scenarios: `idle`, `fanout`, `unicast` (through RabbitMQ), `reliable`
//! (through RabbitMQ, with client ACKs), `reqreply`. `bench/run.sh` runs the
//! whole suite; see docs/performance.md.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures_util::SinkExt;
use hdrhistogram::Histogram;
use lapin::options::{BasicPublishOptions, ConfirmSelectOptions};
use lapin::{BasicProperties, Connection, ConnectionProperties};
use serde::Serialize;
use serde_json::{Value, json};
use switchboard_bench::{
    BoxError, CpuMeter, Endpoint, Machine, Percentiles, Socket, Target, connect_many,
    extract_field, extract_stamp, histogram, next_text, now_micros, rss_kib,
};
use tokio::task::JoinSet;
use tokio_tungstenite::tungstenite::Message;

struct Args(HashMap<String, String>);

impl Args {
    fn parse() -> Result<Args, String> {
        let mut map = HashMap::new();
        let mut args = std::env::args().skip(1);
        while let Some(flag) = args.next() {
            let key = flag
                .strip_prefix("--")
                .ok_or(format!("unexpected argument {flag}"))?;
            let value = args.next().ok_or(format!("{flag} needs a value"))?;
            map.insert(key.to_owned(), value);
        }
        Ok(Args(map))
    }

    fn get<T: std::str::FromStr>(&self, key: &str, default: T) -> T {
        self.0
            .get(key)
            .and_then(|v| v.parse().ok())
            .unwrap_or(default)
    }

    fn list(&self, key: &str, default: &[u64]) -> Vec<u64> {
        match self.0.get(key) {
            Some(v) => v.split(',').filter_map(|x| x.trim().parse().ok()).collect(),
            None => default.to_vec(),
        }
    }
}

/// One rate step of a throughput scenario.
#[derive(Debug, Serialize)]
struct Step {
    label: String,
    rate_per_sec: u64,
    sent: u64,
    expected_deliveries: u64,
    deliveries: u64,
    deliveries_per_sec: f64,
    latency: Percentiles,
    /// CPU seconds the server used during the step (with `--server-pid`).
    server_cpu_secs: Option<f64>,
    /// CPU seconds the load generator used during the step.
    loadgen_cpu_secs: Option<f64>,
    /// CPU seconds the local RabbitMQ used during the step (RabbitMQ
    /// scenarios, when it runs on this machine).
    #[serde(skip_serializing_if = "Option::is_none")]
    broker_cpu_secs: Option<f64>,
    /// Ready messages in RabbitMQ's queues, sampled during the step
    /// (RabbitMQ scenarios).
    #[serde(skip_serializing_if = "Option::is_none")]
    queue_depth: Option<DepthSummary>,
}

/// Ready messages (stored, not yet handed to a consumer) sampled in the
/// queues a push passes through: the inbound queue, and for the reliable
/// scenario the sum over every user's inbox. A backlog that grows during a
/// step means the rate is not sustained.
#[derive(Debug, Clone, Copy, Default, Serialize)]
struct DepthSummary {
    samples: u64,
    inbound_max: u32,
    inbound_last: u32,
    inboxes_max: u32,
    inboxes_last: u32,
}

#[derive(Debug, Serialize)]
struct Report {
    scenario: String,
    target: Target,
    machine: Machine,
    params: Value,
    results: Value,
}

#[tokio::main]
async fn main() -> std::process::ExitCode {
    match run().await {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("loadgen: {err}");
            std::process::ExitCode::FAILURE
        }
    }
}

async fn run() -> Result<(), BoxError> {
    let args = Args::parse()?;
    if let Some(dir) = args.0.get("report") {
        let summary = switchboard_bench::report::write(std::path::Path::new(dir))?;
        println!("{summary}");
        return Ok(());
    }
    if let Some(n) = args.0.get("delete-inboxes") {
        let n: usize = n.parse().map_err(|_| "--delete-inboxes needs a number")?;
        return delete_inboxes(&args, n).await;
    }
    let target: Target = args.get("target", Target::Switchboard);
    let default_url = match target {
        Target::Switchboard => "http://127.0.0.1:8086",
        Target::Raw => "ws://127.0.0.1:9001",
        Target::Socketio => "ws://127.0.0.1:9002",
    };
    let endpoint = Endpoint {
        target,
        url: args
            .0
            .get("url")
            .cloned()
            .unwrap_or_else(|| default_url.to_owned()),
        api_key: args.0.get("api-key").cloned(),
    };
    let scenario: String = args.get("scenario", "idle".to_owned());
    let pid: u32 = args.get("server-pid", 0);
    let params = json!(args.0);

    let results = match scenario.as_str() {
        "idle" => idle(&endpoint, &args, pid).await?,
        "fanout" => fanout(&endpoint, &args, pid).await?,
        "unicast" | "reliable" => unicast(&endpoint, &args, pid, scenario == "reliable").await?,
        "reqreply" => reqreply(&endpoint, &args).await?,
        other => return Err(format!("unknown scenario {other}").into()),
    };

    let report = Report {
        scenario,
        target,
        machine: Machine::read(),
        params,
        results,
    };
    print_report(&report);
    if let Some(path) = args.0.get("json") {
        std::fs::write(path, serde_json::to_string_pretty(&report)?)?;
    }
    if args.get("require-deliveries", false) {
        require_deliveries(&report.results)?;
    }
    Ok(())
}

/// Fails when a step delivered nothing or no round trip completed: with
/// `--require-deliveries true` (the smoke run in CI) a scenario that
/// silently stopped working fails the build, though timings are not judged.
fn require_deliveries(results: &Value) -> Result<(), BoxError> {
    if let Some(steps) = results["steps"].as_array() {
        for step in steps {
            if step["deliveries"].as_u64().unwrap_or(0) == 0 {
                return Err(format!("step {} delivered nothing", step["label"]).into());
            }
        }
    }
    if results.get("round_trips").is_some() && results["round_trips"].as_u64().unwrap_or(0) == 0 {
        return Err("no round trip completed".into());
    }
    Ok(())
}

fn print_report(report: &Report) {
    let m = &report.machine;
    println!(
        "\n== {} on {:?} | {} cores, {} MiB | commit {} ==",
        report.scenario, report.target, m.cores, m.memory_mib, m.commit
    );
    println!("params: {}", report.params);
    if let Some(steps) = report.results.get("steps").and_then(Value::as_array) {
        println!(
            "{:<18} {:>8} {:>10} {:>12} {:>9} {:>9} {:>9} {:>9} {:>10}",
            "step",
            "rate/s",
            "deliveries",
            "deliv/s",
            "p50 ms",
            "p99 ms",
            "p99.9 ms",
            "max ms",
            "srv µs/dl"
        );
        for s in steps {
            let l = &s["latency"];
            println!(
                "{:<18} {:>8} {:>10} {:>12.0} {:>9.2} {:>9.2} {:>9.2} {:>9.2} {:>10.2}",
                s["label"].as_str().unwrap_or(""),
                s["rate_per_sec"],
                s["deliveries"],
                s["deliveries_per_sec"].as_f64().unwrap_or(0.0),
                l["p50_ms"].as_f64().unwrap_or(0.0),
                l["p99_ms"].as_f64().unwrap_or(0.0),
                l["p999_ms"].as_f64().unwrap_or(0.0),
                l["max_ms"].as_f64().unwrap_or(0.0),
                switchboard_bench::report::micros_per_delivery(s, "server_cpu_secs"),
            );
        }
    } else {
        println!(
            "{}",
            serde_json::to_string_pretty(&report.results).unwrap_or_default()
        );
    }
}

/// The `uniqueId` of the load generator's `i`th user.
fn user(i: usize) -> String {
    format!("bench-{i}")
}

/// Scenario 1: hold N idle sessions; memory per connection and connect rate.
async fn idle(endpoint: &Endpoint, args: &Args, pid: u32) -> Result<Value, BoxError> {
    let n: usize = args.get("connections", 10_000);
    let parallel: usize = args.get("parallel", 64);
    let before = if pid != 0 { rss_kib(pid) } else { None };
    let (sockets, took) = connect_many(endpoint, n, parallel, |i| (user(i), String::new())).await?;

    // Let the server settle (allocator, lazily grown buffers) before reading.
    let hold: u64 = args.get("hold-secs", 3);
    let mut readers = keep_reading(sockets);
    tokio::time::sleep(Duration::from_secs(hold)).await;
    let after = if pid != 0 { rss_kib(pid) } else { None };
    let per_conn = match (before, after) {
        (Some(b), Some(a)) if n > 0 => Some((a.saturating_sub(b)) as f64 / n as f64),
        _ => None,
    };
    readers.abort_all();
    Ok(json!({
        "connections": n,
        "connect_secs": took.as_secs_f64(),
        "connects_per_sec": n as f64 / took.as_secs_f64().max(1e-9),
        "rss_before_kib": before,
        "rss_after_kib": after,
        "rss_per_connection_kib": per_conn,
    }))
}

/// Reads (and discards) every frame on every socket, so the server never
/// sees a slow client; Socket.IO pings are answered.
fn keep_reading(sockets: Vec<Socket>) -> JoinSet<()> {
    let mut set = JoinSet::new();
    for mut ws in sockets {
        set.spawn(async move { while next_text(&mut ws).await.is_some() {} });
    }
    set
}

/// Most measured steps in one run.
const MAX_STEPS: usize = 64;

/// Receivers that record the latency of every stamped frame, per step: each
/// payload carries its step number as `"s"`, so a late frame of one step is
/// never counted in the next.
///
/// The load generator shares the machine with the server, so a receiver
/// spends as little as it can per frame: latencies are kept in a small local
/// batch and merged into one histogram per step (under a lock, once per
/// batch), and no timer is armed per frame. One full-range histogram per
/// receiver and step would be tens of gigabytes at 2,000 receivers.
struct Receivers {
    set: JoinSet<()>,
    shared: Arc<Shared>,
}

/// What the receivers fill in, per step.
struct Shared {
    counts: Vec<AtomicU64>,
    histograms: Vec<Mutex<Histogram<u64>>>,
    stop: AtomicBool,
}

/// Latencies a receiver keeps before merging them.
const BATCH: usize = 64;

/// How often an idle receiver merges what it has and looks at `stop`.
const TICK: Duration = Duration::from_millis(100);

impl Shared {
    /// Merges a receiver's batch of `(step, latency µs)` and empties it.
    fn merge(&self, batch: &mut Vec<(usize, u64)>) {
        batch.sort_unstable_by_key(|sample| sample.0);
        for run in batch.chunk_by(|a, b| a.0 == b.0) {
            let step = run[0].0;
            let mut histogram = self.histograms[step]
                .lock()
                .unwrap_or_else(|p| p.into_inner());
            for (_, micros) in run {
                let _ = histogram.record(*micros);
            }
            drop(histogram);
            self.counts[step].fetch_add(run.len() as u64, Ordering::Relaxed);
        }
        batch.clear();
    }
}

fn spawn_receivers(sockets: Vec<Socket>, ack: bool) -> Receivers {
    let shared = Arc::new(Shared {
        counts: (0..MAX_STEPS).map(|_| AtomicU64::new(0)).collect(),
        histograms: (0..MAX_STEPS).map(|_| Mutex::new(histogram())).collect(),
        stop: AtomicBool::new(false),
    });
    let mut set = JoinSet::new();
    for mut ws in sockets {
        let shared = shared.clone();
        set.spawn(async move {
            let mut batch = Vec::with_capacity(BATCH);
            let tick = tokio::time::sleep(TICK);
            tokio::pin!(tick);
            loop {
                let text = tokio::select! {
                    text = next_text(&mut ws) => match text {
                        Some(text) => text,
                        None => break,
                    },
                    () = &mut tick => {
                        shared.merge(&mut batch);
                        if shared.stop.load(Ordering::Relaxed) {
                            break;
                        }
                        tick.as_mut().reset(tokio::time::Instant::now() + TICK);
                        continue;
                    }
                };
                let Some(stamp) = extract_stamp(&text) else {
                    continue;
                };
                let step = extract_field(&text, "\"s\":").unwrap_or(0) as usize % MAX_STEPS;
                batch.push((step, now_micros().saturating_sub(stamp).max(1)));
                if batch.len() == BATCH {
                    shared.merge(&mut batch);
                }
                if ack && let Some(id) = message_id(&text) {
                    let receipt = json!({"messageType": "ACK", "correlationId": id});
                    if ws.send(Message::text(receipt.to_string())).await.is_err() {
                        break;
                    }
                }
            }
            shared.merge(&mut batch);
        });
    }
    Receivers { set, shared }
}

impl Receivers {
    /// Waits until step `step` saw `expected` frames or `grace` passed;
    /// returns how many it saw. Counts lag by at most one [`TICK`].
    async fn wait_step(&self, step: usize, expected: u64, grace: Duration) -> u64 {
        let deadline = Instant::now() + grace + TICK;
        let seen = || self.shared.counts[step].load(Ordering::Relaxed);
        while seen() < expected && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        seen()
    }

    /// Stops the receivers and fills in each step's latency from what they
    /// recorded for its number.
    async fn finish(mut self, steps: Vec<(usize, Step)>) -> Vec<Step> {
        self.shared.stop.store(true, Ordering::Relaxed);
        while self.set.join_next().await.is_some() {}
        let histograms = &self.shared.histograms;
        steps
            .into_iter()
            .map(|(i, mut step)| {
                let histogram = histograms[i].lock().unwrap_or_else(|p| p.into_inner());
                step.latency = Percentiles::of(&histogram);
                step
            })
            .collect()
    }
}

fn message_id(text: &str) -> Option<String> {
    let v: Value = serde_json::from_str(text).ok()?;
    v["messageId"].as_str().map(str::to_owned)
}

/// How a fan-out message is sent to each kind of server.
enum Publisher {
    Http {
        client: reqwest::Client,
        url: String,
        api_key: Option<String>,
    },
    Socket(Box<Socket>),
}

impl Publisher {
    async fn open(endpoint: &Endpoint) -> Result<Publisher, BoxError> {
        Ok(match endpoint.target {
            Target::Switchboard => Publisher::Http {
                client: reqwest::Client::new(),
                url: format!("{}/api/publish", endpoint.url),
                api_key: endpoint.api_key.clone(),
            },
            _ => {
                let http = reqwest::Client::new();
                Publisher::Socket(Box::new(
                    endpoint.connect(&http, "bench-publisher", "").await?,
                ))
            }
        })
    }
}

/// What a fan-out publisher sends to the raw baseline and to Socket.IO:
/// the envelope Switchboard delivers for `body` (a fresh `messageId`, a
/// timestamp, every field), so that the three servers deliver frames of the
/// same size and their clients parse the same text.
fn as_delivered(body: &Value) -> String {
    use switchboard_protocol::envelope::{Envelope, MessageType};
    let mut envelope: Envelope = serde_json::from_value(body.clone())
        .unwrap_or_else(|_| Envelope::new(MessageType::ServerToClient));
    envelope
        .message_type
        .get_or_insert(MessageType::ServerToClient);
    envelope.stamp();
    envelope.to_json()
}

/// Sends `rate` messages a second for `secs`, each built by `make` from
/// its stamp. HTTP publishes are pipelined (at most 256 in flight).
async fn send_at_rate(
    publisher: &mut Publisher,
    target: Target,
    rate: u64,
    secs: u64,
    make: &(dyn Fn(u64) -> Value + Sync),
) -> Result<u64, BoxError> {
    let total = rate * secs;
    let period = Duration::from_secs_f64(1.0 / rate.max(1) as f64);
    let mut ticker = tokio::time::interval(period);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
    let mut in_flight = JoinSet::new();
    for _ in 0..total {
        ticker.tick().await;
        let body = make(now_micros());
        match publisher {
            Publisher::Http {
                client,
                url,
                api_key,
            } => {
                while in_flight.len() >= 256 {
                    in_flight.join_next().await;
                }
                let mut request = client.post(url.as_str()).body(body.to_string());
                if let Some(key) = api_key {
                    request = request.bearer_auth(key);
                }
                in_flight.spawn(async move { request.send().await.map(|_| ()) });
            }
            Publisher::Socket(ws) => {
                let body = as_delivered(&body);
                let frame = match target {
                    Target::Socketio => format!("42[\"bcast\",{body}]"),
                    _ => body,
                };
                ws.send(Message::text(frame)).await?;
            }
        }
    }
    while in_flight.join_next().await.is_some() {}
    Ok(total)
}

/// Scenario 2: broadcast (and, on Switchboard, a tag send to a tenth of the
/// sessions) at increasing rates.
async fn fanout(endpoint: &Endpoint, args: &Args, pid: u32) -> Result<Value, BoxError> {
    let n: usize = args.get("connections", 2000);
    let secs: u64 = args.get("duration", 5);
    let rates = args.list("rates", &[10, 50, 100, 200, 400, 800]);
    let tag_every = 10;
    let (sockets, _) = connect_many(endpoint, n, 64, |i| {
        let extra = if i % tag_every == 0 {
            "&tags=bench-tag"
        } else {
            ""
        };
        (user(i), extra.to_owned())
    })
    .await?;
    let mut publisher = Publisher::open(endpoint).await?;
    let receivers = spawn_receivers(sockets, false);
    let mut steps = Vec::new();

    // One unmeasured second first: connections, caches and the publisher's
    // HTTP pool warm up before anything is counted.
    let warm = |t: u64| {
        json!({"businessType": "notice", "sendType": "BROADCAST",
                               "content": {"t": t, "s": 0}})
    };
    send_at_rate(&mut publisher, endpoint.target, 10, 1, &warm).await?;
    receivers
        .wait_step(0, 10 * n as u64, Duration::from_secs(5))
        .await;

    // The tag sends first: they reach a tenth of the sessions, so they stay
    // below the rate at which sessions fall behind and are closed, and the
    // broadcast steps after them find every session still there.
    let mut kinds = Vec::new();
    if endpoint.target == Target::Switchboard {
        kinds.push(("tag", n.div_ceil(tag_every) as u64));
    }
    kinds.push(("broadcast", n as u64));
    let mut step = 0usize;
    'kinds: for (kind, fan) in kinds {
        for &rate in &rates {
            step += 1;
            let make = |t: u64| match kind {
                "tag" => json!({"businessType": "notice", "sendType": "TAG",
                                "tags": ["bench-tag"], "content": {"t": t, "s": step}}),
                _ => json!({"businessType": "notice", "sendType": "BROADCAST",
                            "content": {"t": t, "s": step}}),
            };
            let started = Instant::now();
            let cpu = CpuMeter::start(pid);
            let sent = send_at_rate(&mut publisher, endpoint.target, rate, secs, &make).await?;
            let expected = sent * fan;
            let got = receivers
                .wait_step(step, expected, Duration::from_secs(5))
                .await;
            let elapsed = started.elapsed().as_secs_f64();
            let (server_cpu_secs, loadgen_cpu_secs) = cpu.stop();
            steps.push((
                step,
                Step {
                    label: format!("{kind}@{rate}"),
                    rate_per_sec: rate,
                    sent,
                    expected_deliveries: expected,
                    deliveries: got,
                    deliveries_per_sec: got as f64 / elapsed,
                    latency: Percentiles::default(),
                    server_cpu_secs,
                    loadgen_cpu_secs,
                    broker_cpu_secs: None,
                    queue_depth: None,
                },
            ));
            // Past saturation the numbers only measure the backlog.
            if got * 100 < expected * 95 {
                continue 'kinds;
            }
        }
    }
    let steps = receivers.finish(steps).await;
    Ok(json!({ "connections": n, "steps": steps }))
}

/// Scenarios 3 and 4: a backend publishes UNICASTs to random users through
/// RabbitMQ with confirms; latency from publish to client receipt.
async fn unicast(
    endpoint: &Endpoint,
    args: &Args,
    pid: u32,
    reliable: bool,
) -> Result<Value, BoxError> {
    let n: usize = args.get("connections", 1000);
    let secs: u64 = args.get("duration", 5);
    let rates = args.list("rates", &[1000, 5000]);
    let amqp: String = args.get("amqp", "amqp://guest:guest@127.0.0.1:5672/%2f".to_owned());
    let business = if reliable {
        "payment_callback"
    } else {
        "notice"
    };

    let (sockets, _) = connect_many(endpoint, n, 64, |i| (user(i), String::new())).await?;
    let conn = Connection::connect(&amqp, ConnectionProperties::default()).await?;
    let inboxes = if reliable {
        (0..n)
            .map(|i| format!("switchboard.inbox.{}", user(i)))
            .collect()
    } else {
        Vec::new()
    };
    let depths = DepthSampler::start(amqp.clone(), inboxes);
    let broker = switchboard_bench::broker_pid().unwrap_or(0);
    let channel = conn.create_channel().await?;
    channel
        .confirm_select(ConfirmSelectOptions::default())
        .await?;
    let receivers = spawn_receivers(sockets, reliable);
    let mut steps = Vec::new();
    let mut seq: u64 = 0;

    // One push to every user first, unmeasured: inboxes are declared,
    // consumers and caches are warm before anything is counted.
    let failed = publish_unicasts(&channel, business, n, 1000, n as u64, 0, &mut seq).await?;
    receivers
        .wait_step(0, n as u64 - failed, Duration::from_secs(30))
        .await;

    for (i, rate) in rates.into_iter().enumerate() {
        let step = i + 1;
        let started = Instant::now();
        let cpu = CpuMeter::start(pid);
        let broker_cpu = CpuMeter::start(broker);
        depths.reset();
        let total = rate * secs;
        let failed = publish_unicasts(&channel, business, n, rate, total, step, &mut seq).await?;
        let expected = total - failed;
        let got = receivers
            .wait_step(step, expected, Duration::from_secs(10))
            .await;
        let elapsed = started.elapsed().as_secs_f64();
        let (server_cpu_secs, loadgen_cpu_secs) = cpu.stop();
        let (broker_cpu_secs, _) = broker_cpu.stop();
        steps.push((
            step,
            Step {
                label: format!("{business}@{rate}"),
                rate_per_sec: rate,
                sent: total,
                expected_deliveries: expected,
                deliveries: got,
                deliveries_per_sec: got as f64 / elapsed,
                latency: Percentiles::default(),
                server_cpu_secs,
                loadgen_cpu_secs,
                broker_cpu_secs,
                queue_depth: Some(depths.summary()),
            },
        ));
    }
    depths.stop();
    let steps = receivers.finish(steps).await;
    Ok(json!({ "connections": n, "steps": steps }))
}

/// Publishes `total` unicasts of `business` at `rate` a second to users of
/// `n`, persistent, through `switchboard.inbound`, stamped for `step`, and
/// waits for their confirms; how many RabbitMQ did not confirm.
async fn publish_unicasts(
    channel: &lapin::Channel,
    business: &str,
    n: usize,
    rate: u64,
    total: u64,
    step: usize,
    seq: &mut u64,
) -> Result<u64, BoxError> {
    let period = Duration::from_secs_f64(1.0 / rate as f64);
    let mut ticker = tokio::time::interval(period);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
    let mut confirms = JoinSet::new();
    let mut failed = 0u64;
    for _ in 0..total {
        ticker.tick().await;
        *seq += 1;
        let to = user((*seq as usize * 7919) % n);
        let body = json!({
            "messageId": format!("bench-{}", *seq),
            "businessType": business,
            "sendType": "UNICAST",
            "toUniqueId": to,
            "content": {"t": now_micros(), "s": step, "orderId": format!("O-{}", *seq),
                        "status": "PAID"},
        })
        .to_string();
        let props = BasicProperties::default()
            .with_delivery_mode(2)
            .with_content_type("application/json".into());
        let confirm = channel
            .basic_publish(
                "switchboard.inbound".into(),
                business.into(),
                BasicPublishOptions::default(),
                body.as_bytes(),
                props,
            )
            .await?;
        while confirms.len() >= 2048 {
            if let Some(Ok(false)) = confirms.join_next().await {
                failed += 1;
            }
        }
        confirms.spawn(async move { confirm.await.is_ok_and(|c| c.is_ack()) });
    }
    while let Some(result) = confirms.join_next().await {
        if !matches!(result, Ok(true)) {
            failed += 1;
        }
    }
    Ok(failed)
}

/// Deletes the inboxes of the first `n` bench users, which would otherwise
/// stay in RabbitMQ for twice `reliable.ttl_secs` (a durable queue each,
/// recovered one by one when RabbitMQ restarts). Run after the server
/// stopped, or its consumers would declare them again.
async fn delete_inboxes(args: &Args, n: usize) -> Result<(), BoxError> {
    let amqp: String = args.get("amqp", "amqp://guest:guest@127.0.0.1:5672/%2f".to_owned());
    let conn = Connection::connect(&amqp, ConnectionProperties::default()).await?;
    let channel = conn.create_channel().await?;
    for i in 0..n {
        let queue = format!("switchboard.inbox.{}", user(i));
        channel
            .queue_delete(
                queue.as_str().into(),
                lapin::options::QueueDeleteOptions::default(),
            )
            .await?;
    }
    println!("deleted {n} bench inboxes");
    Ok(())
}

/// Samples queue depths on its own connection with passive declarations
/// (which report a queue's ready messages).
struct DepthSampler {
    summary: Arc<Mutex<DepthSummary>>,
    task: tokio::task::JoinHandle<()>,
}

impl DepthSampler {
    fn start(amqp: String, inboxes: Vec<String>) -> DepthSampler {
        let summary = Arc::new(Mutex::new(DepthSummary::default()));
        let shared = summary.clone();
        let task = tokio::spawn(async move {
            let Ok(conn) = Connection::connect(&amqp, ConnectionProperties::default()).await else {
                return;
            };
            let mut channel = None;
            let mut round = 0u64;
            loop {
                // A declaration that fails (a queue that does not exist yet)
                // closes its channel; the next sample opens another.
                if !channel
                    .as_ref()
                    .is_some_and(|c: &lapin::Channel| c.status().connected())
                {
                    channel = conn.create_channel().await.ok();
                }
                // The inbound queue every quarter second; the inboxes (one
                // declaration each) every second.
                round += 1;
                if let Some(ch) = &channel {
                    let inbound = ready(ch, "switchboard.inbound.events").await;
                    let mut total = None;
                    if round.is_multiple_of(4) {
                        let mut sum = 0u32;
                        for queue in &inboxes {
                            sum = sum.saturating_add(ready(ch, queue).await.unwrap_or(0));
                        }
                        total = Some(sum);
                    }
                    if let Some(inbound) = inbound {
                        let mut s = shared.lock().unwrap_or_else(|p| p.into_inner());
                        s.samples += 1;
                        s.inbound_last = inbound;
                        s.inbound_max = s.inbound_max.max(inbound);
                        if let Some(total) = total {
                            s.inboxes_last = total;
                            s.inboxes_max = s.inboxes_max.max(total);
                        }
                    }
                }
                tokio::time::sleep(Duration::from_millis(250)).await;
            }
        });
        DepthSampler { summary, task }
    }

    fn reset(&self) {
        *self.summary.lock().unwrap_or_else(|p| p.into_inner()) = DepthSummary::default();
    }

    fn summary(&self) -> DepthSummary {
        *self.summary.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn stop(self) {
        self.task.abort();
    }
}

/// Ready messages in `queue`, by a passive declaration.
async fn ready(channel: &lapin::Channel, queue: &str) -> Option<u32> {
    let passive = lapin::options::QueueDeclareOptions {
        passive: true,
        ..Default::default()
    };
    let declared = channel
        .queue_declare(queue.into(), passive, lapin::types::FieldTable::default())
        .await
        .ok()?;
    Some(declared.message_count())
}

/// Scenario 5: request/reply round trips (`qr_refresh` on Switchboard, a
/// `req`/`res` event pair on Socket.IO).
async fn reqreply(endpoint: &Endpoint, args: &Args) -> Result<Value, BoxError> {
    let n: usize = args.get("connections", 100);
    let secs: u64 = args.get("duration", 5);
    let (sockets, _) = connect_many(endpoint, n, 64, |i| (user(i), String::new())).await?;
    let target = endpoint.target;
    let deadline = Instant::now() + Duration::from_secs(secs);
    let mut set = JoinSet::new();
    for mut ws in sockets {
        set.spawn(async move {
            let mut h = histogram();
            let mut seq = 0u64;
            while Instant::now() < deadline {
                seq += 1;
                let started = Instant::now();
                let frame = match target {
                    Target::Socketio => format!("42[\"req\",{{\"n\":{seq}}}]"),
                    _ => json!({"messageId": format!("r{seq}"), "messageType": "CLIENT_TO_SERVER",
                                "businessType": "qr_refresh", "content": {}})
                    .to_string(),
                };
                if ws.send(Message::text(frame)).await.is_err() {
                    break;
                }
                // Wait for the reply proper (Switchboard sends an ACK first);
                // an ERROR instead (a refusal) or silence ends the client's run.
                loop {
                    let next = tokio::time::timeout(Duration::from_secs(5), next_text(&mut ws));
                    let Ok(Some(text)) = next.await else {
                        return h;
                    };
                    if text.contains("\"ERROR\"") {
                        return h;
                    }
                    let done = match target {
                        Target::Socketio => text.starts_with("42[\"res\""),
                        _ => text.contains("\"SERVER_TO_CLIENT\""),
                    };
                    if done {
                        break;
                    }
                }
                let _ = h.record(started.elapsed().as_micros().max(1) as u64);
            }
            h
        });
    }
    let mut all = histogram();
    while let Some(Ok(h)) = set.join_next().await {
        let _ = all.add(&h);
    }
    Ok(json!({
        "connections": n,
        "round_trips": all.len(),
        "round_trips_per_sec": all.len() as f64 / secs as f64,
        "latency": Percentiles::of(&all),
    }))
}
