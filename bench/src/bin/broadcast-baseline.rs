//! `broadcast-baseline`: the floor that W1's server CPU per op is compared
//! with. A WebSocket server with no logic: it greets each connection with
//! `{"type":"welcome"}`, and for every text message it receives it acks the
//! sender with `{"type":"committed"}` and sends the message as is to every
//! other connection. No parsing, no documents, no validation — only what any
//! WebSocket fan-out server must do (accept, frame, read, write, schedule).
//!
//! Like `concord serve`, it prints `http://ADDR` as the first line of stdout
//! (`--listen 127.0.0.1:0` picks a free port). Each connection has a writer
//! task draining its own queue and flushing when the queue is empty, and
//! coalescing as the Concord session's writer does (after a flush that
//! emptied the queue, the next waits out the window, unless the sender's
//! own ack is queued); queues are unbounded (a baseline has no
//! slow-consumer policy).

use std::collections::HashMap;
use std::io::Write;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::Result;
use clap::Parser;
use futures_util::{SinkExt, StreamExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, Notify};
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::tungstenite::{Message, Utf8Bytes};

/// The allocator `concord` runs on, so the comparison is of the work done.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Most frames written before a flush, as in Concord's session writer.
const WRITER_BATCH_MESSAGES_MAX: usize = 64;
/// The same WebSocket buffers as `concord serve` (its `WS_READ_BUFFER_BYTES`
/// and `WS_WRITE_BUFFER_BYTES`), so the comparison is of the logic alone.
const READ_BUFFER_BYTES: usize = 8 * 1024;
const WRITE_BUFFER_BYTES: usize = 64 * 1024;

#[derive(Debug, Parser)]
#[command(name = "broadcast-baseline", about = "No-logic WebSocket broadcast server")]
struct Cli {
    #[arg(long, default_value = "127.0.0.1:0")]
    listen: String,
    /// As `concord serve --writer-coalesce-window-us` (same default).
    #[arg(long, default_value_t = 4_000)]
    writer_coalesce_window_us: u64,
}

type Peers = Arc<Mutex<HashMap<u64, mpsc::UnboundedSender<Message>>>>;

#[tokio::main]
async fn main() -> Result<()> {
    let cli = Cli::parse();
    let listener = TcpListener::bind(&cli.listen).await?;
    let address = listener.local_addr()?;
    {
        let mut stdout = std::io::stdout().lock();
        writeln!(stdout, "broadcast-baseline listening on http://{address}")?;
        stdout.flush()?;
    }
    let peers: Peers = Arc::default();
    let next_id = AtomicU64::new(0);
    loop {
        let (stream, _) = listener.accept().await?;
        let id = next_id.fetch_add(1, Ordering::Relaxed);
        let window = Duration::from_micros(cli.writer_coalesce_window_us);
        tokio::spawn(serve(stream, id, peers.clone(), window));
    }
}

async fn serve(stream: TcpStream, id: u64, peers: Peers, window: Duration) {
    let _ = stream.set_nodelay(true);
    let config = WebSocketConfig::default()
        .read_buffer_size(READ_BUFFER_BYTES)
        .write_buffer_size(WRITE_BUFFER_BYTES);
    let Ok(ws) = tokio_tungstenite::accept_async_with_config(stream, Some(config)).await else {
        return;
    };
    let (mut sink, mut source) = ws.split();
    let (queue, mut outbox) = mpsc::unbounded_channel::<Message>();
    let _ = queue.send(Message::text(r#"{"type":"welcome"}"#));
    if let Ok(mut peers) = peers.lock() {
        peers.insert(id, queue.clone());
    }
    let reply = Arc::new(Reply::default());
    let writer_reply = reply.clone();
    let writer = tokio::spawn(async move {
        let reply = writer_reply;
        let mut caught_up_at: Option<tokio::time::Instant> = None;
        while let Some(message) = outbox.recv().await {
            if let Some(flushed) = caught_up_at {
                tokio::select! {
                    () = tokio::time::sleep_until(flushed + window) => {}
                    () = reply.queued() => {}
                }
            }
            reply.taken();
            if sink.feed(message).await.is_err() {
                return;
            }
            let mut batched = 1;
            while batched < WRITER_BATCH_MESSAGES_MAX {
                let Ok(message) = outbox.try_recv() else { break };
                if sink.feed(message).await.is_err() {
                    return;
                }
                batched += 1;
            }
            if sink.flush().await.is_err() {
                return;
            }
            let backlog = batched == WRITER_BATCH_MESSAGES_MAX;
            caught_up_at = (!backlog && !window.is_zero()).then(tokio::time::Instant::now);
        }
    });
    let ack = Utf8Bytes::from_static(r#"{"type":"committed"}"#);
    while let Some(Ok(message)) = source.next().await {
        let Message::Text(text) = message else { continue };
        let _ = queue.send(Message::Text(ack.clone()));
        reply.queue();
        if let Ok(peers) = peers.lock() {
            for (peer, peer_queue) in peers.iter() {
                if *peer != id {
                    let _ = peer_queue.send(Message::Text(text.clone()));
                }
            }
        }
    }
    if let Ok(mut peers) = peers.lock() {
        peers.remove(&id);
    }
    drop(queue);
    writer.abort();
}

/// As Concord's `Outbox::push_reply`: the ack to the sender ends its
/// writer's coalescing wait, while the rebroadcasts may wait it out.
#[derive(Default)]
struct Reply {
    queued: AtomicBool,
    ready: Notify,
}

impl Reply {
    fn queue(&self) {
        self.queued.store(true, Ordering::Release);
        self.ready.notify_one();
    }

    async fn queued(&self) {
        loop {
            let ready = self.ready.notified();
            if self.queued.load(Ordering::Acquire) {
                return;
            }
            ready.await;
        }
    }

    fn taken(&self) {
        self.queued.store(false, Ordering::Release);
    }
}
