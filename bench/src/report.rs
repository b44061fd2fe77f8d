//! Turns a directory of loadgen JSON results into `summary.md` (tables and
//! ratios) and `plot.svg` (latency percentiles and memory per connection).

use std::fmt::Write as _;
use std::path::Path;

use serde_json::Value;

fn load(dir: &Path, name: &str) -> Option<Value> {
    let text = std::fs::read_to_string(dir.join(format!("{name}.json"))).ok()?;
    serde_json::from_str(&text).ok()
}

/// The best step of a throughput run: the highest delivery rate among steps
/// that delivered at least 95% of what they should.
fn best_step(report: &Value) -> Option<&Value> {
    let steps = report["results"]["steps"].as_array()?;
    steps
        .iter()
        .filter(|s| {
            let label = s["label"].as_str().unwrap_or("");
            let got = s["deliveries"].as_f64().unwrap_or(0.0);
            let want = s["expected_deliveries"].as_f64().unwrap_or(f64::MAX);
            !label.starts_with("tag") && got >= want * 0.95
        })
        .max_by(|a, b| {
            let rate = |s: &Value| s["deliveries_per_sec"].as_f64().unwrap_or(0.0);
            rate(a).total_cmp(&rate(b))
        })
}

fn num(v: &Value) -> f64 {
    v.as_f64().unwrap_or(f64::NAN)
}

/// CPU microseconds per delivery in a step of the process whose CPU
/// seconds are under `key`; NaN where not measured or nothing was delivered.
pub fn micros_per_delivery(step: &Value, key: &str) -> f64 {
    let deliveries = num(&step["deliveries"]);
    if deliveries > 0.0 {
        num(&step[key]) * 1e6 / deliveries
    } else {
        f64::NAN
    }
}

/// Server CPU microseconds per delivery in a step; NaN where not measured.
fn cpu_per_delivery(step: &Value) -> f64 {
    micros_per_delivery(step, "server_cpu_secs")
}

/// A Markdown table's header: `text` columns aligned left, then `numbers`
/// aligned right.
fn table_head(md: &mut String, text: &[&str], numbers: &[&str]) {
    let names: Vec<&str> = text.iter().chain(numbers).copied().collect();
    let _ = writeln!(md, "| {} |", names.join(" | "));
    let aligns: Vec<&str> = text
        .iter()
        .map(|_| "---")
        .chain(numbers.iter().map(|_| "---:"))
        .collect();
    let _ = writeln!(md, "| {} |", aligns.join(" | "));
}

/// Writes `summary.md` and `plot.svg` into `dir`; returns the summary text.
pub fn write(dir: &Path) -> std::io::Result<String> {
    let targets = ["switchboard", "raw", "socketio"];
    let mut md = String::new();
    let machine = ["idle-switchboard", "fanout-switchboard"]
        .iter()
        .find_map(|n| load(dir, n))
        .map(|r| r["machine"].clone())
        .unwrap_or(Value::Null);
    let _ = writeln!(
        md,
        "Machine: {} cores, {} MiB; commit {}.\n",
        machine["cores"], machine["memory_mib"], machine["commit"]
    );

    // Idle memory.
    let _ = writeln!(md, "### Idle connections\n");
    table_head(
        &mut md,
        &["server"],
        &["connections", "connects/s", "RSS per connection (KiB)"],
    );
    let mut memory = Vec::new();
    for t in targets {
        if let Some(r) = load(dir, &format!("idle-{t}")) {
            let res = &r["results"];
            let per = num(&res["rss_per_connection_kib"]);
            memory.push((t, per));
            let _ = writeln!(
                md,
                "| {t} | {} | {:.0} | {:.1} |",
                res["connections"],
                num(&res["connects_per_sec"]),
                per
            );
        }
    }

    // Fan-out.
    let _ = writeln!(md, "\n### Broadcast fan-out (best sustained step)\n");
    table_head(
        &mut md,
        &["server", "step"],
        &[
            "deliveries/s",
            "p50 ms",
            "p99 ms",
            "p99.9 ms",
            "max ms",
            "server CPU µs/delivery",
        ],
    );
    let mut fan = Vec::new();
    for t in targets {
        let Some(r) = load(dir, &format!("fanout-{t}")) else {
            continue;
        };
        let Some(s) = best_step(&r) else { continue };
        let l = &s["latency"];
        fan.push((
            t,
            num(&s["deliveries_per_sec"]),
            [num(&l["p50_ms"]), num(&l["p99_ms"]), num(&l["p999_ms"])],
        ));
        let _ = writeln!(
            md,
            "| {t} | {} | {:.0} | {:.2} | {:.2} | {:.2} | {:.2} | {:.2} |",
            s["label"].as_str().unwrap_or(""),
            num(&s["deliveries_per_sec"]),
            num(&l["p50_ms"]),
            num(&l["p99_ms"]),
            num(&l["p999_ms"]),
            num(&l["max_ms"]),
            cpu_per_delivery(s)
        );
    }
    let rate = |name: &str| fan.iter().find(|f| f.0 == name).map(|f| f.1);
    if let Some(sb) = rate("switchboard") {
        if let Some(raw) = rate("raw") {
            let _ = writeln!(md, "\nSwitchboard / raw baseline: {:.2}", sb / raw);
        }
        if let Some(sio) = rate("socketio") {
            let _ = writeln!(md, "\nSwitchboard / Socket.IO: {:.2}", sb / sio);
        }
    }

    // Every step of every throughput run.
    for name in [
        "fanout-switchboard",
        "fanout-raw",
        "fanout-socketio",
        "unicast-switchboard",
        "reliable-switchboard",
    ] {
        let Some(r) = load(dir, name) else { continue };
        let _ = writeln!(md, "\n### {name}, every step\n");
        table_head(
            &mut md,
            &["step"],
            &[
                "sent",
                "expected",
                "delivered",
                "deliveries/s",
                "p50 ms",
                "p99 ms",
                "p99.9 ms",
                "max ms",
                "server CPU µs/delivery",
            ],
        );
        for s in r["results"]["steps"].as_array().into_iter().flatten() {
            let l = &s["latency"];
            let _ = writeln!(
                md,
                "| {} | {} | {} | {} | {:.0} | {:.2} | {:.2} | {:.2} | {:.2} | {:.2} |",
                s["label"].as_str().unwrap_or(""),
                s["sent"],
                s["expected_deliveries"],
                s["deliveries"],
                num(&s["deliveries_per_sec"]),
                num(&l["p50_ms"]),
                num(&l["p99_ms"]),
                num(&l["p999_ms"]),
                num(&l["max_ms"]),
                cpu_per_delivery(s)
            );
        }
    }

    // Where the CPU of a push through RabbitMQ goes, and the backlog.
    for name in ["unicast-switchboard", "reliable-switchboard"] {
        let Some(r) = load(dir, name) else { continue };
        let _ = writeln!(md, "\n### {name}, CPU per push and queue depths\n");
        table_head(
            &mut md,
            &["step"],
            &[
                "deliveries/s",
                "server µs/push",
                "RabbitMQ µs/push",
                "load generator µs/push",
                "inbound ready, max",
                "inboxes ready, max",
            ],
        );
        for s in r["results"]["steps"].as_array().into_iter().flatten() {
            let per = |key: &str| micros_per_delivery(s, key);
            let d = &s["queue_depth"];
            let _ = writeln!(
                md,
                "| {} | {:.0} | {:.0} | {:.0} | {:.0} | {} | {} |",
                s["label"].as_str().unwrap_or(""),
                num(&s["deliveries_per_sec"]),
                per("server_cpu_secs"),
                per("broker_cpu_secs"),
                per("loadgen_cpu_secs"),
                d["inbound_max"],
                d["inboxes_max"]
            );
        }
    }

    // Request/reply.
    let _ = writeln!(md, "\n### Request/reply\n");
    table_head(
        &mut md,
        &["server"],
        &["clients", "round trips/s", "p50 ms", "p99 ms", "max ms"],
    );
    for t in targets {
        let Some(r) = load(dir, &format!("reqreply-{t}")) else {
            continue;
        };
        let res = &r["results"];
        let l = &res["latency"];
        let _ = writeln!(
            md,
            "| {t} | {} | {:.0} | {:.2} | {:.2} | {:.2} |",
            res["connections"],
            num(&res["round_trips_per_sec"]),
            num(&l["p50_ms"]),
            num(&l["p99_ms"]),
            num(&l["max_ms"])
        );
    }

    std::fs::write(dir.join("summary.md"), &md)?;
    std::fs::write(dir.join("plot.svg"), svg(&fan, &memory))?;
    Ok(md)
}

/// Two bar charts side by side: fan-out latency percentiles per server, and
/// resident memory per idle connection.
fn svg(fan: &[(&str, f64, [f64; 3])], memory: &[(&str, f64)]) -> String {
    let mut s = String::new();
    let (w, h) = (900.0, 360.0);
    let _ = writeln!(
        s,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{w}" height="{h}" font-family="sans-serif" font-size="12">"#
    );
    let _ = writeln!(s, r#"<rect width="{w}" height="{h}" fill="white"/>"#);
    let colors = ["#4c78a8", "#f58518", "#e45756"];

    // Left: latency percentiles (ms) at the best fan-out step.
    let max_lat = fan
        .iter()
        .flat_map(|f| f.2)
        .filter(|v| v.is_finite())
        .fold(1.0, f64::max);
    let (x0, y0, ph) = (60.0, 300.0, 240.0);
    let _ = writeln!(
        s,
        r#"<text x="{x0}" y="30" font-size="14">Fan-out latency at best sustained step (ms)</text>"#
    );
    for (i, (name, _, p)) in fan.iter().enumerate() {
        let gx = x0 + i as f64 * 120.0;
        for (j, v) in p.iter().enumerate() {
            let bh = if v.is_finite() { v / max_lat * ph } else { 0.0 };
            let x = gx + j as f64 * 30.0;
            let _ = writeln!(
                s,
                r#"<rect x="{x}" y="{}" width="26" height="{bh}" fill="{}"/><text x="{x}" y="{}" font-size="10">{v:.1}</text>"#,
                y0 - bh,
                colors[j],
                y0 - bh - 3.0
            );
        }
        let _ = writeln!(s, r#"<text x="{gx}" y="{}">{name}</text>"#, y0 + 16.0);
    }
    for (j, label) in ["p50", "p99", "p99.9"].iter().enumerate() {
        let x = x0 + j as f64 * 60.0;
        let _ = writeln!(
            s,
            r#"<rect x="{x}" y="330" width="10" height="10" fill="{}"/><text x="{}" y="339">{label}</text>"#,
            colors[j],
            x + 14.0
        );
    }

    // Right: memory per idle connection (KiB).
    let max_mem = memory
        .iter()
        .map(|m| m.1)
        .filter(|v| v.is_finite())
        .fold(1.0, f64::max);
    let x1 = 520.0;
    let _ = writeln!(
        s,
        r#"<text x="{x1}" y="30" font-size="14">Resident memory per idle connection (KiB)</text>"#
    );
    for (i, (name, v)) in memory.iter().enumerate() {
        let bh = if v.is_finite() { v / max_mem * ph } else { 0.0 };
        let x = x1 + i as f64 * 110.0;
        let _ = writeln!(
            s,
            r#"<rect x="{x}" y="{}" width="60" height="{bh}" fill="{}"/><text x="{x}" y="{}">{v:.1}</text><text x="{x}" y="{}">{name}</text>"#,
            y0 - bh,
            colors[0],
            y0 - bh - 3.0,
            y0 + 16.0
        );
    }
    let _ = writeln!(s, "</svg>");
    s
}
