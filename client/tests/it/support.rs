//! Test support: a real `concord-server` on port 0, client configurations
//! with short timeouts, and a TCP proxy between a client and the server that
//! a test can freeze (hold server-to-client bytes) and sever (drop every
//! connection at once) to cut sockets and lose acknowledgements on purpose.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use concord_client::{Client, ClientConfig};
use concord_engine::certificate::{self, Certificate};
use concord_engine::DocId;
use concord_server::{Config, RunningServer, ServerBuilder};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

pub fn doc_id(raw: &str) -> DocId {
    DocId::parse(raw).unwrap()
}

/// A server that records its commit log for the certificate checker.
pub async fn start_server() -> RunningServer {
    start_server_with(Config::default()).await
}

pub async fn start_server_with(config: Config) -> RunningServer {
    let config = Config { record_commit_log: true, ..config };
    ServerBuilder::new().config(config).bind("127.0.0.1:0").await.unwrap()
}

/// Reconnects within milliseconds, so resume tests run fast.
pub fn fast_config() -> ClientConfig {
    ClientConfig {
        reconnect_backoff_initial: Duration::from_millis(5),
        reconnect_backoff_max: Duration::from_millis(50),
        ..ClientConfig::default()
    }
}

pub async fn connect(url: &str) -> Client {
    Client::connect_with(url, fast_config()).await.unwrap()
}

/// Checks the server's commit log (serializable, no transaction id twice)
/// and that replaying it ends at the server's current value of `docs`.
pub async fn certify(server: &RunningServer, docs: &[&str]) -> Certificate {
    let mut finals = HashMap::new();
    for doc in docs {
        let (value, _) = server.document(&doc_id(doc)).await.unwrap();
        finals.insert(doc_id(doc), value);
    }
    let log = server.commit_log();
    certificate::check(&log, &finals).unwrap_or_else(|violation| panic!("{violation}"))
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    Flowing,
    /// Server-to-client bytes are held (not dropped) until thawed.
    Frozen,
    Severed,
}

/// A TCP proxy to the server. `freeze`, `thaw` and `sever` act on the
/// connections open at the time; later connections flow normally.
pub struct Proxy {
    addr: SocketAddr,
    connections: Arc<Mutex<Vec<watch::Sender<Mode>>>>,
}

impl Proxy {
    pub async fn start(upstream: SocketAddr) -> Proxy {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let connections: Arc<Mutex<Vec<watch::Sender<Mode>>>> = Arc::default();
        let registry = connections.clone();
        tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                let Ok(server) = TcpStream::connect(upstream).await else { continue };
                let _ = client.set_nodelay(true);
                let _ = server.set_nodelay(true);
                let (mode, watcher) = watch::channel(Mode::Flowing);
                registry.lock().unwrap().push(mode);
                tokio::spawn(relay(client, server, watcher));
            }
        });
        Proxy { addr, connections }
    }

    pub fn url(&self) -> String {
        format!("ws://{}/ws", self.addr)
    }

    /// Holds everything the server sends on the current connections.
    pub fn freeze(&self) {
        self.set(Mode::Frozen);
    }

    /// Releases what `freeze` held, in order.
    pub fn thaw(&self) {
        self.set(Mode::Flowing);
    }

    /// Drops every current connection, discarding whatever was held.
    pub fn sever(&self) {
        self.set(Mode::Severed);
        self.connections.lock().unwrap().clear();
    }

    fn set(&self, mode: Mode) {
        for connection in self.connections.lock().unwrap().iter() {
            connection.send_replace(mode);
        }
    }
}

async fn relay(client: TcpStream, server: TcpStream, mode: watch::Receiver<Mode>) {
    let (client_read, client_write) = client.into_split();
    let (server_read, server_write) = server.into_split();
    let mut severed = mode.clone();
    tokio::select! {
        () = pump(client_read, server_write, None) => {}
        () = pump(server_read, client_write, Some(mode)) => {}
        _ = severed.wait_for(|mode| *mode == Mode::Severed) => {}
    }
    // Dropping the halves closes both sockets.
}

/// Copies bytes one way; with `mode`, waits while frozen before writing.
async fn pump(
    mut from: tokio::net::tcp::OwnedReadHalf,
    mut to: tokio::net::tcp::OwnedWriteHalf,
    mut mode: Option<watch::Receiver<Mode>>,
) {
    let mut buffer = vec![0; 64 * 1024];
    loop {
        let read = match from.read(&mut buffer).await {
            Ok(0) | Err(_) => return,
            Ok(read) => read,
        };
        if let Some(mode) = &mut mode {
            match mode.wait_for(|mode| *mode != Mode::Frozen).await {
                Ok(mode) if *mode == Mode::Flowing => {}
                _ => return,
            }
        }
        if to.write_all(&buffer[..read]).await.is_err() {
            return;
        }
    }
}
