//! Test support: start a real server on port 0 and talk to it with a small
//! raw WebSocket client (tokio-tungstenite), so the tests see exactly the
//! frames a client of docs/protocol.md would.

use std::future::Future;
use std::time::Duration;

use concord_server::{Config, RunningServer, ServerBuilder};
use futures_util::{SinkExt, StreamExt};
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

/// How long any single expected event may take before the test fails.
pub const STEP_TIMEOUT: Duration = Duration::from_secs(10);

pub async fn start(config: Config) -> RunningServer {
    ServerBuilder::new().config(config).bind("127.0.0.1:0").await.unwrap()
}

pub async fn start_default() -> RunningServer {
    start(Config::default()).await
}

/// Awaits `future`, failing the test after `STEP_TIMEOUT`.
pub async fn within<F: Future>(what: &str, future: F) -> F::Output {
    tokio::time::timeout(STEP_TIMEOUT, future)
        .await
        .unwrap_or_else(|_| panic!("timed out waiting for {what}"))
}

/// Waits until `condition` holds (checked every few milliseconds), failing
/// the test after `STEP_TIMEOUT`. For conditions no message announces, such
/// as a metric set by a task that has just finished.
pub async fn wait_until(what: &str, mut condition: impl FnMut() -> bool) {
    within(what, async {
        while !condition() {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
    .await;
}

/// A raw protocol client.
#[derive(Debug)]
pub struct Client {
    pub ws: WebSocketStream<MaybeTlsStream<TcpStream>>,
    pub session: String,
}

/// How a client's stream ended.
#[derive(Debug, PartialEq)]
pub enum End {
    Close(Option<u16>),
    Eof,
    Error,
}

impl Client {
    /// Connects and reads the `welcome`.
    pub async fn connect(server: &RunningServer) -> Client {
        Self::connect_url(&server.ws_url()).await
    }

    pub async fn connect_url(url: &str) -> Client {
        let (ws, _) = within("connect", tokio_tungstenite::connect_async(url)).await.unwrap();
        let mut client = Client { ws, session: String::new() };
        let welcome = client.recv().await;
        assert_eq!(welcome["type"], "welcome", "{welcome}");
        assert_eq!(welcome["protocol"], 1);
        client.session = welcome["session"].as_str().unwrap().to_owned();
        client
    }

    pub async fn send(&mut self, message: Value) {
        self.send_text(message.to_string()).await;
    }

    pub async fn send_text(&mut self, text: String) {
        within("send", self.ws.send(Message::text(text))).await.unwrap();
    }

    /// The next protocol message (text frame), skipping pings.
    pub async fn recv(&mut self) -> Value {
        loop {
            let frame = within("a message", self.ws.next()).await;
            match frame {
                Some(Ok(Message::Text(text))) => return serde_json::from_str(&text).unwrap(),
                Some(Ok(Message::Ping(_) | Message::Pong(_))) => continue,
                other => panic!("expected a text frame, got {other:?}"),
            }
        }
    }

    /// The next message, which must have `type` equal to `kind`.
    pub async fn expect(&mut self, kind: &str) -> Value {
        let message = self.recv().await;
        assert_eq!(message["type"], kind, "expected {kind}, got {message}");
        message
    }

    /// The next message, which must be an `error` with `code`.
    pub async fn expect_error(&mut self, code: &str) -> Value {
        let message = self.expect("error").await;
        assert_eq!(message["code"], code, "{message}");
        assert!(message["message"].as_str().is_some_and(|m| !m.is_empty()));
        message
    }

    /// Reads until the stream ends; what ended it.
    pub async fn until_end(&mut self) -> End {
        loop {
            match within("the stream to end", self.ws.next()).await {
                None => return End::Eof,
                Some(Err(_)) => return End::Error,
                Some(Ok(Message::Close(frame))) => {
                    return End::Close(frame.map(|f| u16::from(f.code)));
                }
                Some(Ok(_)) => continue,
            }
        }
    }

    /// Opens `doc` and reads the reply up to `opened`; returns the messages
    /// before `opened` and the opened version.
    pub async fn open(&mut self, doc: &str, version: Option<u64>) -> (Vec<Value>, u64) {
        let mut message = json!({"type": "open", "doc": doc});
        if let Some(version) = version {
            message["version"] = json!(version);
        }
        self.send(message).await;
        let mut before = Vec::new();
        loop {
            let message = self.recv().await;
            if message["type"] == "opened" {
                assert_eq!(message["doc"], doc);
                return (before, message["version"].as_u64().unwrap());
            }
            before.push(message);
        }
    }

    /// Sends a commit.
    pub async fn commit(&mut self, doc: &str, tx_id: &str, base: u64, reads: Value, writes: Value) {
        let tx =
            json!({"doc": doc, "tx_id": tx_id, "base": base, "reads": reads, "writes": writes});
        self.send(json!({"type": "commit", "tx": tx})).await;
    }

    /// Sends a JSON-RPC message.
    pub async fn rpc(&mut self, message: Value) {
        self.send(json!({"type": "rpc", "message": message})).await;
    }

    /// The next `rpc` message's JSON-RPC body.
    pub async fn expect_rpc(&mut self) -> Value {
        self.expect("rpc").await["message"].clone()
    }
}

/// A plain HTTP/1.1 GET; returns (status, body).
pub async fn http_get(addr: std::net::SocketAddr, path: &str) -> (u16, String) {
    http_request(addr, "GET", path, &[], "").await
}

/// A plain HTTP/1.1 request with `headers` and `body` (with its
/// `Content-Length` when not empty); returns (status, body).
pub async fn http_request(
    addr: std::net::SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &str,
) -> (u16, String) {
    within("an HTTP response", async {
        let mut stream = TcpStream::connect(addr).await.unwrap();
        let mut extra: String = headers.iter().map(|(k, v)| format!("{k}: {v}\r\n")).collect();
        if !body.is_empty() {
            extra.push_str(&format!("Content-Length: {}\r\n", body.len()));
        }
        let request = format!(
            "{method} {path} HTTP/1.1\r\nHost: {addr}\r\n{extra}Connection: close\r\n\r\n{body}"
        );
        stream.write_all(request.as_bytes()).await.unwrap();
        let mut response = Vec::new();
        stream.read_to_end(&mut response).await.unwrap();
        let response = String::from_utf8_lossy(&response).into_owned();
        let status = response.split(' ').nth(1).unwrap().parse().unwrap();
        let body = response.split_once("\r\n\r\n").map(|(_, b)| b.to_owned()).unwrap_or_default();
        (status, body)
    })
    .await
}

/// A running `concord serve` child process on port 0, killed when dropped.
#[allow(dead_code)] // Fields for the tests that need them.
pub struct Binary {
    pub child: tokio::process::Child,
    pub addr: std::net::SocketAddr,
    /// `ws://…/ws`, or `wss://…/ws` when it serves TLS.
    pub ws_url: String,
    /// The address line it printed.
    pub line: String,
}

impl Binary {
    /// Starts `concord serve --listen 127.0.0.1:0` with `args` and waits for
    /// its address line.
    pub async fn start(args: &[&str]) -> Binary {
        let mut command = Binary::command();
        command
            .args(["serve", "--listen", "127.0.0.1:0"])
            .args(args)
            .env("RUST_LOG", "warn")
            .stderr(std::process::Stdio::inherit());
        Binary::spawn(command).await
    }

    /// The `concord` binary, to start with [`Binary::spawn`].
    pub fn command() -> tokio::process::Command {
        tokio::process::Command::new(env!("CARGO_BIN_EXE_concord"))
    }

    /// Starts `command` (a `concord serve`; its standard error is left as
    /// the command says) and waits for its address line.
    pub async fn spawn(mut command: tokio::process::Command) -> Binary {
        use tokio::io::AsyncBufReadExt;
        let described = format!("{command:?}");
        let mut child =
            command.stdout(std::process::Stdio::piped()).kill_on_drop(true).spawn().unwrap();
        let stdout = child.stdout.take().unwrap();
        let mut lines = tokio::io::BufReader::new(stdout).lines();
        let line = within("the address line", lines.next_line()).await.unwrap();
        let line = line.unwrap_or_else(|| panic!("{described} exited before listening"));
        let (scheme, addr) = line
            .split_whitespace()
            .find_map(|word| {
                let plain = word.strip_prefix("http://").map(|addr| ("ws", addr));
                plain.or_else(|| word.strip_prefix("https://").map(|addr| ("wss", addr)))
            })
            .unwrap_or_else(|| panic!("no address in {line:?}"));
        let addr: std::net::SocketAddr = addr.parse().unwrap();
        Binary { child, addr, ws_url: format!("{scheme}://{addr}/ws"), line }
    }

    /// Sends SIGTERM, checks the process exits cleanly, and returns its
    /// standard error (empty unless it was piped).
    pub async fn terminate(mut self) -> String {
        use tokio::io::AsyncReadExt;
        let pid = self.child.id().unwrap().to_string();
        let killed = std::process::Command::new("kill").args(["-TERM", &pid]).status().unwrap();
        assert!(killed.success());
        let mut log = String::new();
        if let Some(mut stderr) = self.child.stderr.take() {
            within("the log", stderr.read_to_string(&mut log)).await.unwrap();
        }
        let status = within("the server to exit", self.child.wait()).await.unwrap();
        assert!(status.success(), "{status}");
        log
    }
}
