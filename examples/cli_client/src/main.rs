//! A command-line WebSocket client for trying Switchboard by hand.
//!
//! ```text
//! cargo run -p switchboard-example-cli -- --server http://127.0.0.1:8086 --user alice --client H5
//! ```
//!
//! It asks the server for a token, connects with it, prints every frame it
//! receives as one JSON line on stdout, and sends every line typed on stdin
//! as one text frame. Lines that start with `/` are shortcuts (type `/help`);
//! any other line is sent exactly as typed, so a malformed frame can be tried
//! too. Notes go to stderr, so stdout can be piped into `jq`.

use std::error::Error;
use std::process::ExitCode;

use futures_util::{SinkExt, StreamExt};
use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;

const USAGE: &str = "usage: switchboard-cli --user ID [--client TYPE] [--server URL]
                      [--tags a,b] [--businesses x,y] [--api-key KEY]

  --server URL       the service's HTTP address (default http://127.0.0.1:8086)
  --user ID          uniqueId to connect as (required)
  --client TYPE      clientType to connect as (default H5)
  --tags a,b         tags the session starts subscribed to
  --businesses x,y   businesses the session starts subscribed to
  --api-key KEY      sent as Authorization: Bearer KEY to the token endpoint";

const SHORTCUTS: &str = "shortcuts:
  /hb                  send a HEARTBEAT
  /qr                  ask qr_refresh for a new ticket (CLIENT_TO_SERVER)
  /sub a,b             subscribe to tags a and b
  /unsub a,b           unsubscribe from tags a and b
  /page USER {json}    relay a page_update to USER (CLIENT_TO_CLIENT)
  /ack ID              acknowledge the delivery whose messageId is ID
  /quit                close the connection (Ctrl-D does the same)
  any other line       sent as typed";

/// Command-line options.
#[derive(Debug)]
struct Options {
    server: String,
    user: String,
    client: String,
    tags: Option<String>,
    businesses: Option<String>,
    api_key: Option<String>,
}

/// What one typed line asks for.
#[derive(Debug, PartialEq)]
enum Input {
    /// Send this text as a frame.
    Send(String),
    /// Print the shortcuts.
    Help,
    /// Close the connection and exit.
    Quit,
}

#[tokio::main]
async fn main() -> ExitCode {
    let options = match parse_args(std::env::args().skip(1)) {
        Ok(Some(options)) => options,
        Ok(None) => {
            println!("{USAGE}\n\n{SHORTCUTS}");
            return ExitCode::SUCCESS;
        }
        Err(message) => {
            eprintln!("switchboard-cli: {message}\n\n{USAGE}");
            return ExitCode::from(2);
        }
    };
    match run(options).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("switchboard-cli: {err}");
            ExitCode::FAILURE
        }
    }
}

async fn run(options: Options) -> Result<(), Box<dyn Error>> {
    let url = fetch_connect_url(&options).await?;
    let (socket, _) = tokio_tungstenite::connect_async(url.as_str()).await?;
    eprintln!(
        "# connected as {}/{}; type /help for shortcuts",
        options.user, options.client
    );

    // Split so that reading the socket and reading stdin can wait together.
    // Reading keeps the socket answering the server's pings.
    let (mut sink, mut stream) = socket.split();
    let mut lines = BufReader::new(tokio::io::stdin()).lines();

    loop {
        tokio::select! {
            frame = stream.next() => match frame {
                Some(Ok(Message::Text(text))) => print_frame(&text),
                Some(Ok(Message::Close(frame))) => {
                    match frame {
                        Some(frame) => eprintln!(
                            "# closed by the server: {} {}",
                            u16::from(frame.code),
                            frame.reason
                        ),
                        None => eprintln!("# closed by the server"),
                    }
                    return Ok(());
                }
                Some(Ok(Message::Binary(bytes))) => {
                    eprintln!("# binary frame of {} bytes", bytes.len());
                }
                Some(Ok(_)) => {}
                Some(Err(err)) => return Err(format!("connection failed: {err}").into()),
                None => {
                    eprintln!("# connection ended");
                    return Ok(());
                }
            },
            line = lines.next_line() => {
                let input = match line? {
                    None => Input::Quit,
                    Some(line) if line.trim().is_empty() => continue,
                    Some(line) => match parse_line(&line) {
                        Ok(input) => input,
                        Err(message) => {
                            eprintln!("# {message}");
                            continue;
                        }
                    },
                };
                match input {
                    Input::Send(text) => sink.send(Message::text(text)).await?,
                    Input::Help => eprintln!("{SHORTCUTS}"),
                    Input::Quit => {
                        let bye = CloseFrame {
                            code: CloseCode::Normal,
                            reason: "bye".into(),
                        };
                        sink.send(Message::Close(Some(bye))).await?;
                        // Keep reading until the server answers the close.
                        while let Some(Ok(frame)) = stream.next().await {
                            if let Message::Text(text) = frame {
                                print_frame(&text);
                            }
                        }
                        return Ok(());
                    }
                }
            }
        }
    }
}

/// Asks the token endpoint for a connection URL.
async fn fetch_connect_url(options: &Options) -> Result<String, Box<dyn Error>> {
    let base = options.server.trim_end_matches('/');
    let mut url = reqwest::Url::parse(&format!("{base}/websocket/token"))?;
    {
        let mut query = url.query_pairs_mut();
        query.append_pair("uniqueId", &options.user);
        query.append_pair("clientType", &options.client);
        if let Some(tags) = &options.tags {
            query.append_pair("tags", tags);
        }
        if let Some(businesses) = &options.businesses {
            query.append_pair("businesses", businesses);
        }
    }

    let mut request = reqwest::Client::new().get(url);
    if let Some(key) = &options.api_key {
        request = request.bearer_auth(key);
    }
    let answer: Value = request.send().await?.json().await?;
    match answer["data"].as_str() {
        Some(url) if answer["result"] == 0 => Ok(url.to_owned()),
        _ => Err(format!(
            "token refused: result {}, {}",
            answer["result"], answer["description"]
        )
        .into()),
    }
}

/// Prints a received text frame as one line. The server sends compact JSON,
/// printed as it came (field order kept); anything spread over several lines
/// is compacted first.
fn print_frame(text: &str) {
    if !text.contains('\n') {
        println!("{text}");
    } else if let Ok(value) = serde_json::from_str::<Value>(text) {
        println!("{value}");
    } else {
        println!("{}", text.replace('\n', " "));
    }
}

/// Turns a typed line into what to do; shortcuts become envelopes.
fn parse_line(line: &str) -> Result<Input, String> {
    let line = line.trim();
    if !line.starts_with('/') {
        return Ok(Input::Send(line.to_owned()));
    }
    let (command, rest) = line.split_once(' ').unwrap_or((line, ""));
    let rest = rest.trim();
    let names = |rest: &str| -> Vec<String> {
        rest.split(',')
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .map(str::to_owned)
            .collect()
    };

    let envelope = match command {
        "/help" => return Ok(Input::Help),
        "/quit" => return Ok(Input::Quit),
        "/hb" => json!({ "messageType": "HEARTBEAT" }),
        "/qr" => json!({
            "messageType": "CLIENT_TO_SERVER",
            "businessType": "qr_refresh",
            "content": {},
        }),
        "/sub" | "/unsub" if rest.is_empty() => return Err(format!("{command} needs tags")),
        "/sub" => json!({ "messageType": "SUBSCRIBE", "tags": names(rest) }),
        "/unsub" => json!({ "messageType": "UNSUBSCRIBE", "tags": names(rest) }),
        "/ack" if rest.is_empty() => return Err("/ack needs a messageId".into()),
        "/ack" => json!({ "messageType": "ACK", "correlationId": rest }),
        "/page" => {
            let (user, content) = rest.split_once(' ').ok_or("usage: /page USER {json}")?;
            let content: Value = serde_json::from_str(content.trim())
                .map_err(|err| format!("/page content is not JSON: {err}"))?;
            json!({
                "messageType": "CLIENT_TO_CLIENT",
                "businessType": "page_update",
                "sendType": "UNICAST",
                "toUniqueId": user,
                "content": content,
            })
        }
        other => return Err(format!("unknown shortcut {other}; type /help")),
    };

    // Every shortcut names its frame, so the ACK or ERROR can be matched.
    let mut envelope = envelope;
    envelope["messageId"] = Value::String(uuid::Uuid::new_v4().to_string());
    Ok(Input::Send(envelope.to_string()))
}

/// `Ok(None)` for `--help`.
fn parse_args(mut args: impl Iterator<Item = String>) -> Result<Option<Options>, String> {
    let mut server = String::from("http://127.0.0.1:8086");
    let mut user = None;
    let mut client = String::from("H5");
    let (mut tags, mut businesses, mut api_key) = (None, None, None);

    while let Some(arg) = args.next() {
        if arg == "-h" || arg == "--help" {
            return Ok(None);
        }
        let mut value = || args.next().ok_or(format!("{arg} needs a value"));
        match arg.as_str() {
            "--server" => server = value()?,
            "--user" => user = Some(value()?),
            "--client" => client = value()?,
            "--tags" => tags = Some(value()?),
            "--businesses" => businesses = Some(value()?),
            "--api-key" => api_key = Some(value()?),
            other => return Err(format!("unknown argument {other}")),
        }
    }
    Ok(Some(Options {
        server,
        user: user.ok_or("--user is required")?,
        client,
        tags,
        businesses,
        api_key,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sent(line: &str) -> Value {
        match parse_line(line).unwrap() {
            Input::Send(text) => serde_json::from_str(&text).unwrap(),
            other => panic!("expected a frame, got {other:?}"),
        }
    }

    /// Shortcuts become envelopes with a messageId; other lines pass as typed.
    #[test]
    fn shortcuts_become_envelopes() {
        let qr = sent("/qr");
        assert_eq!(qr["messageType"], "CLIENT_TO_SERVER");
        assert_eq!(qr["businessType"], "qr_refresh");
        assert!(qr["messageId"].is_string());

        assert_eq!(sent("/sub a, b")["tags"], json!(["a", "b"]));
        assert_eq!(sent("/page bob {\"x\":1}")["toUniqueId"], "bob");
        assert_eq!(sent("/ack m-1")["correlationId"], "m-1");
        assert_eq!(
            parse_line("not json").unwrap(),
            Input::Send("not json".into())
        );
        assert!(parse_line("/page bob").is_err());
        assert!(parse_line("/nope").is_err());
    }

    /// `--user` is required; the rest have defaults.
    #[test]
    fn parses_arguments() {
        let args = |list: &[&str]| parse_args(list.iter().map(|s| s.to_string()));
        let options = args(&["--user", "alice"]).unwrap().unwrap();
        assert_eq!(options.server, "http://127.0.0.1:8086");
        assert_eq!(options.client, "H5");
        assert!(args(&["--client", "APP"]).is_err());
        assert!(args(&["--user"]).is_err());
        assert!(args(&["--help"]).unwrap().is_none());
    }
}
