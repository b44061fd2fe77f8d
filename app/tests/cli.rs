//! The `switchboard` binary as an operator runs it: a bad configuration
//! exits non-zero before listening with a message naming the key, the
//! environment overrides the file, and a node on port 0 serves and drains on
//! SIGTERM with exit code 0.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::PathBuf;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

/// How long the binary may take to exit or to start listening.
const DEADLINE: Duration = Duration::from_secs(15);

/// A TOML file in the temporary directory, removed when dropped.
struct TempToml(PathBuf);

impl TempToml {
    fn new(name: &str, text: &str) -> TempToml {
        let file = format!("switchboard-cli-{}-{name}.toml", std::process::id());
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

/// The binary with `args`, run in the temporary directory (so no stray
/// `switchboard.toml` is read) with none of this process's `SWITCHBOARD_`
/// variables and with INFO logs.
fn switchboard(args: &[&str]) -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_switchboard"));
    command
        .args(args)
        .current_dir(std::env::temp_dir())
        .env("RUST_LOG", "info")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    for (key, _) in std::env::vars() {
        if key.starts_with("SWITCHBOARD_") {
            command.env_remove(key);
        }
    }
    command
}

/// Waits for `child` to exit, killing it and failing after [`DEADLINE`].
fn wait_for_exit(child: &mut Child) -> ExitStatus {
    let deadline = Instant::now() + DEADLINE;
    loop {
        if let Some(status) = child.try_wait().expect("child can be waited for") {
            return status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("switchboard did not exit within {DEADLINE:?}");
        }
        // A plain test thread, not a runtime worker: polling the child's
        // exit status with a deadline is the point here.
        #[allow(clippy::disallowed_methods)]
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Runs the binary to its exit; returns the status and its stderr.
fn run_to_exit(mut command: Command) -> (ExitStatus, String) {
    let mut child = command.spawn().expect("the binary starts");
    let status = wait_for_exit(&mut child);
    let mut stderr = String::new();
    let _ = child
        .stderr
        .take()
        .expect("stderr is piped")
        .read_to_string(&mut stderr);
    (status, stderr)
}

/// A bad value in the config file exits non-zero before listening, with a
/// message that names the key.
#[test]
fn bad_config_value_exits_non_zero_naming_the_key() {
    let file = TempToml::new("bad", "[ws]\nmax_message_bytes = 10\n");
    let path = file.0.to_str().expect("UTF-8 path");
    let (status, stderr) = run_to_exit(switchboard(&["--config", path]));
    assert!(!status.success(), "exited with {status}");
    assert!(stderr.contains("ws.max_message_bytes"), "{stderr}");
    assert!(!stderr.contains("listening"), "{stderr}");
}

/// An unknown key in the config file exits non-zero naming it.
#[test]
fn unknown_config_key_exits_non_zero_naming_it() {
    let file = TempToml::new("unknown", "[server]\nbnid = \"127.0.0.1:0\"\n");
    let path = file.0.to_str().expect("UTF-8 path");
    let (status, stderr) = run_to_exit(switchboard(&["--config", path]));
    assert!(!status.success(), "exited with {status}");
    assert!(stderr.contains("bnid"), "{stderr}");
}

/// `--config` naming a file that does not exist exits non-zero naming it.
#[test]
fn missing_config_file_exits_non_zero() {
    let path = std::env::temp_dir().join("switchboard-cli-no-such-file.toml");
    let path = path.to_str().expect("UTF-8 path");
    let (status, stderr) = run_to_exit(switchboard(&["--config", path]));
    assert!(!status.success(), "exited with {status}");
    assert!(
        stderr.contains("switchboard-cli-no-such-file.toml"),
        "{stderr}"
    );
}

/// An environment variable overrides the file: a bad value from the
/// environment wins over a good one in the file, and its error names the key.
#[test]
fn environment_overrides_the_config_file() {
    let file = TempToml::new("env", "[ws]\nmax_message_bytes = 4096\n");
    let path = file.0.to_str().expect("UTF-8 path");
    let mut command = switchboard(&["--config", path]);
    command.env("SWITCHBOARD_WS__MAX_MESSAGE_BYTES", "10");
    let (status, stderr) = run_to_exit(command);
    assert!(!status.success(), "exited with {status}");
    assert!(stderr.contains("ws.max_message_bytes"), "{stderr}");
}

/// An unknown argument exits non-zero with the usage text.
#[test]
fn unknown_argument_exits_with_usage() {
    let (status, stderr) = run_to_exit(switchboard(&["--bogus"]));
    assert!(!status.success(), "exited with {status}");
    assert!(stderr.contains("usage: switchboard"), "{stderr}");
}

/// Started on port 0 (from the environment, over a bad file value that the
/// environment also fixes), the binary logs its address and handlers,
/// answers `/healthz`, and on SIGTERM drains and exits 0.
#[test]
fn serves_on_port_0_and_exits_0_on_sigterm() {
    let file = TempToml::new("serve", "[ws]\nmax_message_bytes = 10\n");
    let path = file.0.to_str().expect("UTF-8 path");
    let mut command = switchboard(&["--config", path]);
    command
        .env("SWITCHBOARD_SERVER__BIND", "127.0.0.1:0")
        .env("SWITCHBOARD_WS__MAX_MESSAGE_BYTES", "4096")
        .env("SWITCHBOARD_LOG__FORMAT", "json");
    let mut child = command.spawn().expect("the binary starts");

    // Read the JSON log lines on a thread, so waiting for one has a deadline.
    let (lines_tx, lines) = mpsc::channel::<serde_json::Value>();
    let stderr = child.stderr.take().expect("stderr is piped");
    let reader = std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            if let Ok(value) = serde_json::from_str(&line) {
                let _ = lines_tx.send(value);
            }
        }
    });
    let mut logged = Vec::new();
    let deadline = Instant::now() + DEADLINE;
    let addr = loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let Ok(line) = lines.recv_timeout(left) else {
            let _ = child.kill();
            panic!("no 'listening' line within {DEADLINE:?}: {logged:?}");
        };
        logged.push(line.clone());
        if line["fields"]["message"] == "listening" {
            break line["fields"]["addr"].as_str().expect("addr").to_owned();
        }
    };
    assert!(
        !addr.ends_with(":0"),
        "logged the requested, not the bound, port"
    );

    let mut stream = TcpStream::connect(&addr).expect("the port accepts");
    stream
        .set_read_timeout(Some(DEADLINE))
        .expect("timeout can be set");
    write!(
        stream,
        "GET /healthz HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )
    .expect("request sent");
    let mut response = String::new();
    let _ = stream.read_to_string(&mut response);
    assert!(response.starts_with("HTTP/1.1 200"), "{response}");

    let pid = child.id().to_string();
    let kill = Command::new("kill").args(["-TERM", &pid]).status();
    assert!(kill.expect("kill runs").success());
    let status = wait_for_exit(&mut child);
    assert!(status.success(), "exited with {status} after SIGTERM");

    reader.join().expect("log reader ends with the process");
    logged.extend(lines.try_iter());
    let mut handlers: Vec<&str> = logged
        .iter()
        .filter(|l| l["fields"]["message"] == "handler registered")
        .filter_map(|l| l["fields"]["business_type"].as_str())
        .collect();
    handlers.sort();
    assert_eq!(
        handlers,
        ["notice", "page_update", "payment_callback", "qr_refresh"]
    );
    assert!(
        logged.iter().any(|l| l["fields"]["message"] == "stopped"),
        "no 'stopped' line: {logged:?}"
    );
}
