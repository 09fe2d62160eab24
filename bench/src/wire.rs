//! Raw protocol v1 over tokio-tungstenite, for the workloads that measure
//! single messages (docs/protocol.md). Only the fields a workload needs are
//! decoded; the rest of each message is skipped without allocating.

use std::borrow::Cow;
use std::time::Duration;

use anyhow::{anyhow, bail, Context, Result};
use futures_util::{SinkExt, StreamExt};
use serde::Deserialize;
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::tungstenite::{Message, Utf8Bytes};
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

/// Longest wait for any one message on a live connection before the run is
/// declared stuck (a lost change would otherwise hang it).
pub const MESSAGE_WAIT_MAX: Duration = Duration::from_secs(60);
/// Largest message accepted from the server, in bytes: a 16 MiB document's
/// snapshot, with room.
const INCOMING_MESSAGE_BYTES_MAX: usize = 64 * 1024 * 1024;
/// The read buffer of each session, in bytes. tungstenite zero-fills the
/// free part before every read, so its 128 KiB default costs the generator
/// CPU (and memory, with 10,000 sessions) for nothing.
pub const READ_BUFFER_BYTES: usize = 8 * 1024;

/// One WebSocket session, with the payload bytes it received.
#[derive(Debug)]
pub struct Conn {
    ws: WebSocketStream<MaybeTlsStream<TcpStream>>,
    /// Payload bytes of every text frame received (welcome included).
    pub bytes_received: u64,
}

/// The fields of a server message the workloads look at.
#[derive(Debug, Deserialize)]
pub struct Incoming<'a> {
    #[serde(rename = "type", borrow)]
    pub kind: Cow<'a, str>,
    #[serde(default)]
    pub version: Option<u64>,
    #[serde(default, borrow)]
    pub tx_id: Option<Cow<'a, str>>,
    /// A rebroadcast `commit` (the baseline server echoes commits as is).
    #[serde(default, borrow)]
    pub tx: Option<TxRef<'a>>,
}

#[derive(Debug, Deserialize)]
pub struct TxRef<'a> {
    #[serde(borrow)]
    pub tx_id: Cow<'a, str>,
}

impl<'a> Incoming<'a> {
    pub fn parse(text: &'a str) -> Result<Self> {
        serde_json::from_str(text).with_context(|| format!("undecodable message {text:.200}"))
    }

    /// The transaction a `change` (or a rebroadcast `commit`) carries.
    pub fn change_tx_id(&self) -> Option<&str> {
        match self.kind.as_ref() {
            "change" => self.tx_id.as_deref(),
            "commit" => self.tx.as_ref().map(|tx| tx.tx_id.as_ref()),
            _ => None,
        }
    }
}

impl Conn {
    /// Connects and waits for `welcome`.
    pub async fn connect(url: &str) -> Result<Self> {
        Self::connect_with(url, None).await
    }

    /// Connects, sends `token` in an `auth` message first when given (as a
    /// browser does), and waits for `welcome`.
    pub async fn connect_with(url: &str, token: Option<&str>) -> Result<Self> {
        let config = WebSocketConfig::default()
            .read_buffer_size(READ_BUFFER_BYTES)
            .max_message_size(Some(INCOMING_MESSAGE_BYTES_MAX))
            .max_frame_size(Some(INCOMING_MESSAGE_BYTES_MAX));
        let (ws, _) = tokio_tungstenite::connect_async_with_config(url, Some(config), true)
            .await
            .with_context(|| format!("connecting to {url}"))?;
        let mut conn = Self { ws, bytes_received: 0 };
        if let Some(token) = token {
            let auth = serde_json::json!({"type": "auth", "token": token});
            conn.send(auth.to_string()).await?;
        }
        let welcome = conn.next_text().await?;
        let kind = Incoming::parse(welcome.as_str())?.kind;
        if kind != "welcome" {
            bail!("expected welcome, got {kind}");
        }
        Ok(conn)
    }

    pub async fn send(&mut self, text: String) -> Result<()> {
        self.ws.send(Message::text(text)).await.context("sending")
    }

    /// The next text message (pings and pongs are skipped).
    pub async fn next_text(&mut self) -> Result<Utf8Bytes> {
        loop {
            let frame = tokio::time::timeout(MESSAGE_WAIT_MAX, self.ws.next())
                .await
                .map_err(|_| anyhow!("no message within {MESSAGE_WAIT_MAX:?}"))?;
            match frame {
                Some(Ok(Message::Text(text))) => {
                    self.bytes_received += text.len() as u64;
                    return Ok(text);
                }
                Some(Ok(Message::Ping(_) | Message::Pong(_))) => continue,
                Some(Ok(other)) => bail!("unexpected frame {other:?}"),
                Some(Err(error)) => return Err(error).context("receiving"),
                None => bail!("the server closed the connection"),
            }
        }
    }

    /// Opens `doc`; returns the snapshot message (if the reply had one) and
    /// the version in `opened`.
    pub async fn open(&mut self, doc: &str) -> Result<(Option<Utf8Bytes>, u64)> {
        self.send(format!(r#"{{"type":"open","doc":"{doc}"}}"#)).await?;
        let mut snapshot = None;
        loop {
            let text = self.next_text().await?;
            let message = Incoming::parse(text.as_str())?;
            match message.kind.as_ref() {
                "opened" => {
                    let version =
                        message.version.ok_or_else(|| anyhow!("opened without version"))?;
                    return Ok((snapshot, version));
                }
                "snapshot" => snapshot = Some(text.clone()),
                "change" => {}
                other => bail!("unexpected {other} in the reply to open: {:.200}", text.as_str()),
            }
        }
    }

    /// Commits `writes` (a JSON array) and waits for `committed`, skipping
    /// changes; returns the committed version.
    pub async fn commit_and_wait(&mut self, doc: &str, tx_id: &str, writes: &str) -> Result<u64> {
        self.send(format!(
            r#"{{"type":"commit","tx":{{"doc":"{doc}","tx_id":"{tx_id}","base":0,"writes":{writes}}}}}"#
        ))
        .await?;
        loop {
            let text = self.next_text().await?;
            let message = Incoming::parse(text.as_str())?;
            match message.kind.as_ref() {
                "committed" => return message.version.ok_or_else(|| anyhow!("no version")),
                "change" => {}
                _ => bail!("setup commit {tx_id} failed: {:.300}", text.as_str()),
            }
        }
    }

    /// Reads a document's current value with a fresh open.
    pub async fn read_document(&mut self, doc: &str) -> Result<serde_json::Value> {
        let (snapshot, _) = self.open(doc).await?;
        let snapshot = snapshot.ok_or_else(|| anyhow!("no snapshot for {doc}"))?;
        let mut message: serde_json::Value = serde_json::from_str(snapshot.as_str())?;
        Ok(message["value"].take())
    }

    pub async fn close(mut self) {
        let _ = self.ws.close(None).await;
    }
}

/// A tag unique to one run, so transaction ids never collide across runs.
pub fn run_tag() -> String {
    format!("{:08x}", rand::random::<u32>())
}
