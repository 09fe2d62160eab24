//! `concord`: the Concord server binary.
//!
//! `concord serve` starts a server configured by flags or `CONCORD_*`
//! environment variables (every `Config` limit has one), prints the URL it
//! listens on as its first line of standard output, logs structured events to
//! standard error, and shuts down gracefully on SIGINT or SIGTERM (flushing
//! the commit log). It is durable by default (`--data`, default
//! `./concord-data`); `--memory` keeps documents in memory only. If the
//! commit log fails, it closes every session and exits with an error, so a
//! supervisor restarts it on what is durable.
//!
//! `concord export` and `concord import` move documents in and out of a data
//! directory as JSON (`archive`).

use std::io::Write;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use clap::builder::BoolishValueParser;
use clap::{Args, Parser, Subcommand, ValueEnum};
use concord_engine::access::{
    DocAccess, DocGrant, Grant, Grants, MethodAction, Permissions, TopicAction,
};
use concord_server::auth::{self, JwtConfig, TokenRequest, TrustedProxy};
use concord_server::config::{self, Config, StorageConfig};
use concord_server::storage::SyncMode;
use concord_server::{archive, Rules, ServerBuilder, TlsConfig};

#[derive(Debug, Parser)]
#[command(name = "concord", version, about = "Concord: collaborative JSON state sync")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Serve the WebSocket endpoint (/ws), /healthz, /metrics, /docs and
    /// static files.
    Serve(Box<Serve>),
    /// Write every document of a data directory (at its newest version) as
    /// JSON. Safe while a server runs on the directory.
    Export(Export),
    /// Add the documents of an export to a data directory (created if
    /// missing). Refuses documents that already exist, all or nothing, and
    /// refuses to run while a server holds the directory.
    Import(Import),
    /// Mint an HS256 token signed with a secret file, for development and
    /// trying access control (printed on standard output).
    Token(Box<Token>),
}

#[derive(Debug, Args)]
struct Token {
    /// The HS256 secret (the file `serve --jwt-secret-file` reads; at least
    /// 32 bytes).
    #[arg(long)]
    secret_file: PathBuf,
    /// The subject: a stable user id.
    #[arg(long)]
    sub: String,
    /// A display name.
    #[arg(long)]
    name: Option<String>,
    /// How long the token is valid: seconds, or with a unit (90s, 15m, 8h, 7d).
    #[arg(long, default_value = "1h", value_parser = parse_duration)]
    ttl: Duration,
    /// Documents readable (an id glob: `*` within a segment, `**` across);
    /// repeat.
    #[arg(long = "read", value_name = "DOC_PATTERN")]
    read: Vec<String>,
    /// Documents writable, optionally only under pointer prefixes:
    /// `board:*` or `board:*=/shapes,/cursors/{sub}`; repeat.
    #[arg(long = "write", value_name = "DOC_PATTERN[=SCOPE,...]")]
    write: Vec<String>,
    /// Topic patterns subscribable (`*` one segment, `>` the rest); repeat.
    #[arg(long = "subscribe", value_name = "TOPIC_PATTERN")]
    subscribe: Vec<String>,
    /// Topic patterns publishable; repeat.
    #[arg(long = "publish", value_name = "TOPIC_PATTERN")]
    publish: Vec<String>,
    /// Method globs callable; repeat.
    #[arg(long = "call", value_name = "METHOD_PATTERN")]
    call: Vec<String>,
    /// Method globs a client may register; repeat.
    #[arg(long = "register", value_name = "METHOD_PATTERN")]
    register: Vec<String>,
    /// More grants as a JSON `concord` claim (docs/security.md), added to
    /// the flags' grants.
    #[arg(long)]
    grants: Option<String>,
    /// The `aud` claim.
    #[arg(long)]
    aud: Option<String>,
    /// The `iss` claim.
    #[arg(long)]
    iss: Option<String>,
}

/// Parses `90`, `90s`, `15m`, `8h` or `7d`.
fn parse_duration(raw: &str) -> Result<Duration, String> {
    let (number, unit) = match raw.char_indices().find(|(_, c)| !c.is_ascii_digit()) {
        Some((at, _)) => raw.split_at(at),
        None => (raw, "s"),
    };
    let value: u64 =
        number.parse().map_err(|_| format!("{raw:?} is not a duration like 90s, 15m, 8h, 7d"))?;
    let unit_secs = match unit {
        "s" => 1,
        "m" => 60,
        "h" => 3600,
        "d" => 86_400,
        _ => return Err(format!("unknown unit in {raw:?}: use s, m, h or d")),
    };
    value
        .checked_mul(unit_secs)
        .map(Duration::from_secs)
        .ok_or_else(|| format!("{raw:?} is too long"))
}

impl Token {
    fn grants(&self) -> anyhow::Result<Grants> {
        let mut grants: Grants = match &self.grants {
            Some(json) => serde_json::from_str(json).context("--grants is not a concord claim")?,
            None => Grants::default(),
        };
        for pattern in &self.read {
            grants.docs.push(DocGrant {
                pattern: pattern.clone(),
                access: DocAccess::Read,
                scopes: None,
            });
        }
        for spec in &self.write {
            let (pattern, scopes) = match spec.split_once('=') {
                Some((pattern, scopes)) => {
                    (pattern, Some(scopes.split(',').map(str::to_owned).collect()))
                }
                None => (spec.as_str(), None),
            };
            grants.docs.push(DocGrant {
                pattern: pattern.to_owned(),
                access: DocAccess::Write,
                scopes,
            });
        }
        let topic_grants =
            [(&self.subscribe, TopicAction::Subscribe), (&self.publish, TopicAction::Publish)];
        for (patterns, action) in topic_grants {
            for pattern in patterns {
                grants.topics.push(Grant { pattern: pattern.clone(), allow: vec![action] });
            }
        }
        let method_grants =
            [(&self.call, MethodAction::Call), (&self.register, MethodAction::Register)];
        for (patterns, action) in method_grants {
            for pattern in patterns {
                grants.methods.push(Grant { pattern: pattern.clone(), allow: vec![action] });
            }
        }
        // Refuse here what a server would refuse.
        Permissions::resolve(&grants, &self.sub).context("the grants")?;
        Ok(grants)
    }

    fn mint(&self) -> anyhow::Result<String> {
        let secret = JwtConfig::read_secret(&self.secret_file)?;
        let request = TokenRequest {
            sub: self.sub.clone(),
            name: self.name.clone(),
            grants: self.grants()?,
            ttl: self.ttl,
            audience: self.aud.clone(),
            issuer: self.iss.clone(),
        };
        auth::mint_hs256(&secret, &request).map_err(|error| anyhow::anyhow!("signing: {error}"))
    }
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum Sync {
    /// fsync every group commit before acknowledging it.
    Full,
    /// Leave flushing to the OS: survives a crash of the process, not of the
    /// machine.
    Off,
}

#[derive(Debug, Args)]
struct Export {
    /// The data directory to read.
    #[arg(long, env = "CONCORD_DATA", default_value = config::DATA_DIR_DEFAULT)]
    data: PathBuf,
    /// Write here instead of standard output.
    #[arg(long)]
    out: Option<PathBuf>,
}

#[derive(Debug, Args)]
struct Import {
    /// The data directory to add the documents to.
    #[arg(long, env = "CONCORD_DATA", default_value = config::DATA_DIR_DEFAULT)]
    data: PathBuf,
    /// An export written by `concord export`.
    file: PathBuf,
}

#[derive(Debug, Args)]
struct Serve {
    /// Address to listen on (port 0 picks a free port). Without
    /// authentication, only a loopback address (see --insecure-open).
    #[arg(long, env = "CONCORD_LISTEN", default_value = "127.0.0.1:7700")]
    listen: String,
    /// Port to listen on, at --listen's host (`--port 8080` is
    /// `--listen 127.0.0.1:8080` by default).
    #[arg(long, env = "CONCORD_PORT")]
    port: Option<u16>,
    /// Require HS256 JWTs signed with the secret in this file (at least 32
    /// bytes).
    #[arg(long, env = "CONCORD_JWT_SECRET_FILE")]
    jwt_secret_file: Option<PathBuf>,
    /// Require JWTs signed by a RS256 or EdDSA key of this JWKS file
    /// (re-read when it changes and on SIGHUP).
    #[arg(long, env = "CONCORD_JWKS_FILE")]
    jwks_file: Option<PathBuf>,
    /// Tokens must carry this `aud`.
    #[arg(long, env = "CONCORD_JWT_AUDIENCE")]
    jwt_audience: Option<String>,
    /// Tokens must carry this `iss`.
    #[arg(long, env = "CONCORD_JWT_ISSUER")]
    jwt_issuer: Option<String>,
    /// Clock leeway for a token's `exp` and `nbf`, in seconds.
    #[arg(long, env = "CONCORD_JWT_LEEWAY_SECS", default_value_t = concord_server::auth::JWT_LEEWAY.as_secs())]
    jwt_leeway_secs: u64,
    /// How long a session whose token expired keeps going after it is told
    /// (`token_expired`) before it is closed (4004).
    #[arg(long, env = "CONCORD_TOKEN_EXPIRY_GRACE_MS", default_value_t = millis(config::TOKEN_EXPIRY_GRACE))]
    token_expiry_grace_ms: u64,
    /// Serve without authentication on a non-loopback address: anyone who
    /// reaches the port may read and write everything.
    #[arg(long, env = "CONCORD_INSECURE_OPEN", value_parser = BoolishValueParser::new())]
    insecure_open: bool,
    /// A reverse proxy (address or CIDR network) whose `X-Forwarded-For`
    /// names the client, for the per-address limit on failed
    /// authentications and the log; repeat, or comma-separate in the
    /// environment.
    #[arg(long = "trusted-proxy", env = "CONCORD_TRUSTED_PROXIES", value_delimiter = ',', value_parser = TrustedProxy::parse)]
    trusted_proxies: Vec<TrustedProxy>,
    /// Put /metrics behind `Authorization: Bearer` with the token in this file.
    #[arg(long, env = "CONCORD_METRICS_TOKEN_FILE")]
    metrics_token_file: Option<PathBuf>,
    /// The whiteboard's demo mode: POST /demo/token gives any visitor a
    /// token for board:* (write, or read-only for ?view). Turns
    /// authentication on; not for production. Also `--auth`, so that
    /// `scripts/serve.sh --auth` runs the whiteboard with it.
    #[arg(long, alias = "auth", env = "CONCORD_DEMO_AUTH", value_parser = BoolishValueParser::new())]
    demo_auth: bool,
    /// Directory served at / (the web app); without it, a placeholder page.
    #[arg(long = "static", env = "CONCORD_STATIC")]
    static_dir: Option<PathBuf>,
    /// Browser origins allowed to connect (repeat, or comma-separate in the
    /// environment); none means all.
    #[arg(long = "allowed-origin", env = "CONCORD_ALLOWED_ORIGINS", value_delimiter = ',')]
    allowed_origins: Vec<String>,
    /// Rules file (JSON) checked on every commit: schemas by document and
    /// pointer pattern, and server-only paths (docs/security.md).
    #[arg(long, env = "CONCORD_RULES")]
    rules: Option<PathBuf>,
    /// Log format on standard error.
    #[arg(long, env = "CONCORD_LOG_FORMAT", value_enum, default_value = "text")]
    log_format: LogFormat,
    /// Data directory for the commit log and snapshots (created if missing,
    /// locked while serving).
    #[arg(long, env = "CONCORD_DATA", default_value = config::DATA_DIR_DEFAULT)]
    data: PathBuf,
    /// Serve TLS (wss://, https://) with this PEM certificate chain; needs
    /// --tls-key. Without it the server speaks plain TCP (put a
    /// TLS-terminating proxy in front; docs/security.md).
    #[arg(long, env = "CONCORD_TLS_CERT", requires = "tls_key")]
    tls_cert: Option<PathBuf>,
    /// The PEM private key of --tls-cert.
    #[arg(long, env = "CONCORD_TLS_KEY", requires = "tls_cert")]
    tls_key: Option<PathBuf>,
    /// Keep documents in memory only: nothing survives a restart.
    #[arg(long, env = "CONCORD_MEMORY", value_parser = BoolishValueParser::new())]
    memory: bool,
    /// How a group commit reaches the disk before it is acknowledged.
    #[arg(long, env = "CONCORD_SYNC", value_enum, default_value = "full")]
    sync: Sync,
    /// Snapshot a document after this many of its commits (restart replays
    /// at most this many changes per document).
    #[arg(long, env = "CONCORD_SNAPSHOT_EVERY_COMMITS", default_value_t = config::SNAPSHOT_EVERY_COMMITS)]
    snapshot_every_commits: u64,
    /// Versions of each document kept in the log, readable as history.
    #[arg(long, env = "CONCORD_HISTORY_RETAINED_COMMITS", default_value_t = config::HISTORY_RETAINED_COMMITS)]
    history_retained_commits: u64,
    /// Shard tasks owning the documents [default: number of cores].
    #[arg(long, env = "CONCORD_SHARDS")]
    shards: Option<usize>,
    /// Largest protocol message a client may send, in bytes; larger ones are answered with
    /// `message_too_large`.
    #[arg(long, env = "CONCORD_MESSAGE_BYTES_MAX", default_value_t = config::MESSAGE_BYTES_MAX)]
    message_bytes_max: usize,
    /// Largest WebSocket message read at all, in bytes (at least --message-bytes-max); past it
    /// the session is closed with 1009.
    #[arg(long, env = "CONCORD_WS_MESSAGE_BYTES_MAX", default_value_t = config::WS_MESSAGE_BYTES_MAX)]
    ws_message_bytes_max: usize,
    /// Largest single WebSocket frame, in bytes.
    #[arg(long, env = "CONCORD_WS_FRAME_BYTES_MAX", default_value_t = config::WS_FRAME_BYTES_MAX)]
    ws_frame_bytes_max: usize,
    /// Deepest JSON nesting of a whole client message (the envelope adds up to 5 levels to a
    /// document value).
    #[arg(long, env = "CONCORD_MESSAGE_JSON_DEPTH_MAX", default_value_t = config::MESSAGE_JSON_DEPTH_MAX)]
    message_json_depth_max: usize,
    /// Most messages waiting in one session's outbound queue; past it the session is closed
    /// (4001) and its client resumes.
    #[arg(long, env = "CONCORD_OUTBOUND_QUEUE_MESSAGES_MAX", default_value_t = config::OUTBOUND_QUEUE_MESSAGES_MAX)]
    outbound_queue_messages_max: usize,
    /// Most bytes waiting in one session's outbound queue (one larger message is still admitted
    /// into an empty queue).
    #[arg(long, env = "CONCORD_OUTBOUND_QUEUE_BYTES_MAX", default_value_t = config::OUTBOUND_QUEUE_BYTES_MAX)]
    outbound_queue_bytes_max: usize,
    /// Most recent changes kept per document for catch-up after a reconnect (older resumes get
    /// a snapshot).
    #[arg(long, env = "CONCORD_CHANGE_HISTORY_MAX", default_value_t = config::CHANGE_HISTORY_MAX)]
    change_history_max: usize,
    /// Most bytes of encoded changes kept per document for catch-up.
    #[arg(long, env = "CONCORD_CHANGE_HISTORY_BYTES_MAX", default_value_t = config::CHANGE_HISTORY_BYTES_MAX)]
    change_history_bytes_max: usize,
    /// Most bytes of encoded snapshots each shard keeps, so sessions opening an unchanged
    /// document share one encoding.
    #[arg(long, env = "CONCORD_SNAPSHOT_CACHE_BYTES_MAX", default_value_t = config::SNAPSHOT_CACHE_BYTES_MAX)]
    snapshot_cache_bytes_max: usize,
    /// Most documents the server holds; a commit that would create one more is refused with
    /// `limit_reached`.
    #[arg(long, env = "CONCORD_DOCS_MAX", default_value_t = config::DOCS_MAX)]
    docs_max: usize,
    /// Sustained messages per second one session may send; past it messages are answered
    /// `rate_limited` and dropped.
    #[arg(long, env = "CONCORD_RATE_MESSAGES_PER_SECOND", default_value_t = config::RATE_MESSAGES_PER_SECOND)]
    rate_messages_per_second: u32,
    /// Messages one session may send in a burst above the sustained rate.
    #[arg(long, env = "CONCORD_RATE_BURST_MESSAGES_MAX", default_value_t = config::RATE_BURST_MESSAGES_MAX)]
    rate_burst_messages_max: u32,
    /// How long a busy session's writer gathers messages before writing them
    /// out together; 0 writes each at once.
    #[arg(long, env = "CONCORD_WRITER_COALESCE_WINDOW_US", default_value_t = micros(config::WRITER_COALESCE_WINDOW))]
    writer_coalesce_window_us: u64,
    /// Interval between the server's WebSocket pings, in milliseconds.
    #[arg(long, env = "CONCORD_PING_INTERVAL_MS", default_value_t = millis(config::PING_INTERVAL))]
    ping_interval_ms: u64,
    /// A session from which nothing (not even a pong) arrives for this long, in milliseconds,
    /// is closed with 4002.
    #[arg(long, env = "CONCORD_DEAD_PEER_TIMEOUT_MS", default_value_t = millis(config::DEAD_PEER_TIMEOUT))]
    dead_peer_timeout_ms: u64,
    /// Longest a client may take to send its WebSocket handshake (and, with authentication, its
    /// `auth` message), in milliseconds.
    #[arg(long, env = "CONCORD_HANDSHAKE_TIMEOUT_MS", default_value_t = millis(config::HANDSHAKE_TIMEOUT))]
    handshake_timeout_ms: u64,
    /// Longest a graceful shutdown (SIGTERM, SIGINT) waits for sessions to drain, in
    /// milliseconds.
    #[arg(long, env = "CONCORD_SHUTDOWN_DRAIN_TIMEOUT_MS", default_value_t = millis(config::SHUTDOWN_DRAIN_TIMEOUT))]
    shutdown_drain_timeout_ms: u64,
    /// Longest an RPC call (to a server procedure or a client callee) may take, in
    /// milliseconds.
    #[arg(long, env = "CONCORD_RPC_CALL_TIMEOUT_MS", default_value_t = millis(config::RPC_CALL_TIMEOUT))]
    rpc_call_timeout_ms: u64,
    /// Most RPC calls one session may have in flight.
    #[arg(long, env = "CONCORD_RPC_PENDING_CALLS_MAX", default_value_t = config::RPC_PENDING_CALLS_MAX)]
    rpc_pending_calls_max: usize,
    /// Most documents one session may have open.
    #[arg(long, env = "CONCORD_OPEN_DOCS_MAX", default_value_t = config::OPEN_DOCS_MAX)]
    open_docs_max: usize,
    /// Most topic subscriptions one session may hold.
    #[arg(long, env = "CONCORD_SUBSCRIPTIONS_MAX", default_value_t = config::SUBSCRIPTIONS_MAX)]
    subscriptions_max: usize,
    /// Most methods one session may register.
    #[arg(long, env = "CONCORD_REGISTERED_METHODS_MAX", default_value_t = config::REGISTERED_METHODS_MAX)]
    registered_methods_max: usize,
    /// Most concurrent WebSocket sessions.
    #[arg(long, env = "CONCORD_SESSIONS_MAX", default_value_t = config::SESSIONS_MAX)]
    sessions_max: usize,
    /// Most concurrent TCP connections still in their HTTP phase.
    #[arg(long, env = "CONCORD_CONNECTIONS_MAX", default_value_t = config::CONNECTIONS_MAX)]
    connections_max: usize,
    /// Most ops in one transaction's patch.
    #[arg(long, env = "CONCORD_PATCH_OPS_MAX", default_value_t = concord_engine::limits::PATCH_OPS_MAX)]
    patch_ops_max: usize,
    /// Most pointers in one transaction's read set.
    #[arg(long, env = "CONCORD_READ_SET_POINTERS_MAX", default_value_t = concord_engine::limits::READ_SET_POINTERS_MAX)]
    read_set_pointers_max: usize,
    /// Largest document, in bytes of its JSON encoding; a commit that would grow one past it is
    /// rejected.
    #[arg(long, env = "CONCORD_DOC_SIZE_BYTES_MAX", default_value_t = concord_engine::limits::DOC_SIZE_BYTES_MAX)]
    doc_size_bytes_max: usize,
    /// Transaction ids always remembered per shard, so that a resubmission
    /// gets its original outcome (docs/protocol.md, `outcome_unknown`).
    #[arg(long, env = "CONCORD_TX_DEDUP_ENTRIES_MAX", default_value_t = concord_engine::limits::TX_DEDUP_ENTRIES_MAX)]
    tx_dedup_entries_max: usize,
    /// Memory the rejections remembered in one generation of the dedup
    /// window may take before it turns over early.
    #[arg(long, env = "CONCORD_TX_DEDUP_REJECTION_BYTES_MAX", default_value_t = concord_engine::limits::TX_DEDUP_REJECTION_BYTES_MAX)]
    tx_dedup_rejection_bytes_max: usize,
    /// Memory one document's remembered removals may take before the oldest
    /// are forgotten (bases before them then get `stale`).
    #[arg(long, env = "CONCORD_REMOVED_PATHS_BYTES_MAX", default_value_t = concord_engine::limits::REMOVED_PATHS_BYTES_MAX)]
    removed_paths_bytes_max: usize,
}

fn millis(duration: Duration) -> u64 {
    u64::try_from(duration.as_millis()).unwrap_or(u64::MAX)
}

fn micros(duration: Duration) -> u64 {
    u64::try_from(duration.as_micros()).unwrap_or(u64::MAX)
}

impl Serve {
    fn config(&self) -> Config {
        let defaults = Config::default();
        let mut limits = defaults.limits;
        limits.patch_ops_max = self.patch_ops_max;
        limits.read_set_pointers_max = self.read_set_pointers_max;
        limits.doc_size_bytes_max = self.doc_size_bytes_max;
        limits.tx_dedup_entries_max = self.tx_dedup_entries_max;
        limits.tx_dedup_rejection_bytes_max = self.tx_dedup_rejection_bytes_max;
        limits.removed_paths_bytes_max = self.removed_paths_bytes_max;
        let storage = (!self.memory).then(|| StorageConfig {
            sync: match self.sync {
                Sync::Full => SyncMode::Full,
                Sync::Off => SyncMode::Off,
            },
            snapshot_every_commits: self.snapshot_every_commits,
            history_retained_commits: self.history_retained_commits,
            ..StorageConfig::new(&self.data)
        });
        Config {
            storage,
            shards: self.shards.unwrap_or(defaults.shards),
            limits,
            message_bytes_max: self.message_bytes_max,
            ws_message_bytes_max: self.ws_message_bytes_max,
            ws_frame_bytes_max: self.ws_frame_bytes_max,
            message_json_depth_max: self.message_json_depth_max,
            outbound_queue_messages_max: self.outbound_queue_messages_max,
            outbound_queue_bytes_max: self.outbound_queue_bytes_max,
            change_history_max: self.change_history_max,
            change_history_bytes_max: self.change_history_bytes_max,
            snapshot_cache_bytes_max: self.snapshot_cache_bytes_max,
            docs_max: self.docs_max,
            rate_messages_per_second: self.rate_messages_per_second,
            rate_burst_messages_max: self.rate_burst_messages_max,
            writer_coalesce_window: Duration::from_micros(self.writer_coalesce_window_us),
            ping_interval: Duration::from_millis(self.ping_interval_ms),
            dead_peer_timeout: Duration::from_millis(self.dead_peer_timeout_ms),
            handshake_timeout: Duration::from_millis(self.handshake_timeout_ms),
            shutdown_drain_timeout: Duration::from_millis(self.shutdown_drain_timeout_ms),
            rpc_call_timeout: Duration::from_millis(self.rpc_call_timeout_ms),
            rpc_pending_calls_max: self.rpc_pending_calls_max,
            open_docs_max: self.open_docs_max,
            subscriptions_max: self.subscriptions_max,
            registered_methods_max: self.registered_methods_max,
            sessions_max: self.sessions_max,
            connections_max: self.connections_max,
            allowed_origins: self.allowed_origins.clone(),
            static_dir: self.static_dir.clone(),
            token_expiry_grace: Duration::from_millis(self.token_expiry_grace_ms),
            trusted_proxies: self.trusted_proxies.clone(),
            insecure_open: self.insecure_open,
            tls: match (&self.tls_cert, &self.tls_key) {
                (Some(cert), Some(key)) => Some(TlsConfig::new(cert, key)),
                _ => None,
            },
            ..defaults
        }
    }
}

/// `listen` (`host:port`, `[v6]:port`, or a host alone) with its port set
/// to `port`.
fn with_port(listen: &str, port: u16) -> String {
    let host = match listen.rsplit_once(':') {
        Some((host, tail)) if !host.is_empty() && tail.bytes().all(|b| b.is_ascii_digit()) => host,
        _ => listen,
    };
    format!("{host}:{port}")
}

fn init_logging(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    // Colours only for a terminal: a log written to a file or a pipe (a
    // service manager's journal) must not carry escape codes.
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(ansi);
    match format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
}

/// mimalloc, not glibc's malloc: a commit's allocations and frees cost less,
/// and the store's allocations sit closer together, so a commit misses the
/// cache less (docs/benchmarks.md, "Ninth round").
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    match Cli::parse().command {
        Command::Serve(serve) => run(*serve).await,
        Command::Export(export) => {
            let exported = archive::export(&export.data)
                .with_context(|| format!("exporting {}", export.data.display()))?;
            match &export.out {
                Some(path) => {
                    let file = std::fs::File::create(path)
                        .with_context(|| format!("creating {}", path.display()))?;
                    archive::write_export(&exported, file)?;
                }
                None => archive::write_export(&exported, std::io::stdout().lock())?,
            }
            eprintln!("exported {} documents", exported.documents.len());
            Ok(())
        }
        Command::Import(import) => {
            let text = std::fs::read_to_string(&import.file)
                .with_context(|| format!("reading {}", import.file.display()))?;
            let exported = archive::read_export(&text)?;
            let count = archive::import(&import.data, &exported)
                .with_context(|| format!("importing into {}", import.data.display()))?;
            eprintln!("imported {count} documents into {}", import.data.display());
            Ok(())
        }
        Command::Token(token) => {
            let minted = token.mint()?;
            let mut stdout = std::io::stdout().lock();
            writeln!(stdout, "{minted}")?;
            Ok(())
        }
    }
}

async fn run(serve: Serve) -> anyhow::Result<()> {
    init_logging(serve.log_format);
    let rules = match &serve.rules {
        Some(path) => Rules::load(path).with_context(|| format!("loading {}", path.display()))?,
        None => Rules::none(),
    };
    let mut builder =
        ServerBuilder::new().config(serve.config()).rules(rules).demo_auth(serve.demo_auth);
    if serve.jwt_secret_file.is_some() || serve.jwks_file.is_some() {
        let hs256_secret =
            serve.jwt_secret_file.as_deref().map(JwtConfig::read_secret).transpose()?;
        builder = builder.jwt(JwtConfig {
            hs256_secret,
            jwks_file: serve.jwks_file.clone(),
            audience: serve.jwt_audience.clone(),
            issuer: serve.jwt_issuer.clone(),
            leeway: Some(Duration::from_secs(serve.jwt_leeway_secs)),
        });
    }
    if let Some(path) = &serve.metrics_token_file {
        let token = std::fs::read_to_string(path)
            .with_context(|| format!("reading the metrics token {}", path.display()))?;
        builder = builder.metrics_token(token.trim());
    }
    let listen = match serve.port {
        Some(port) => with_port(&serve.listen, port),
        None => serve.listen.clone(),
    };
    let server = builder
        .bind(listen.as_str())
        .await
        .with_context(|| format!("starting the server on {listen}"))?;
    let mut signals = Signals::install()?;
    // The first line of standard output is the contract for scripts and
    // tests that start us on port 0.
    let mut stdout = std::io::stdout().lock();
    let http = server.http_url();
    writeln!(stdout, "concord listening on {http} (WebSocket: {})", server.ws_url())?;
    stdout.flush()?;
    drop(stdout);
    let failed = tokio::select! {
        signal = signals.shutdown(&server) => { signal?; false }
        () = server.storage_failed() => true,
    };
    if failed {
        tracing::error!("storage failed; shutting down so a restart can recover");
    } else {
        tracing::info!("shutdown requested; draining sessions");
    }
    server.shutdown().await;
    if failed {
        anyhow::bail!("the commit log failed; unacknowledged commits were not kept (see the log)");
    }
    Ok(())
}

/// The signals `concord serve` answers, installed before the address line
/// is printed so that a signal sent as soon as it appears is never missed
/// (the default action would kill the process without a graceful shutdown).
struct Signals {
    #[cfg(unix)]
    interrupt: tokio::signal::unix::Signal,
    #[cfg(unix)]
    terminate: tokio::signal::unix::Signal,
    #[cfg(unix)]
    hangup: tokio::signal::unix::Signal,
}

impl Signals {
    fn install() -> anyhow::Result<Self> {
        #[cfg(unix)]
        {
            use tokio::signal::unix::{signal, SignalKind};
            Ok(Self {
                interrupt: signal(SignalKind::interrupt()).context("installing SIGINT handler")?,
                terminate: signal(SignalKind::terminate()).context("installing SIGTERM handler")?,
                hangup: signal(SignalKind::hangup()).context("installing SIGHUP handler")?,
            })
        }
        #[cfg(not(unix))]
        Ok(Self {})
    }

    /// Resolves on SIGINT (Ctrl-C) or SIGTERM; on SIGHUP, re-reads the
    /// authenticator's keys and goes on waiting.
    async fn shutdown(&mut self, server: &concord_server::RunningServer) -> anyhow::Result<()> {
        #[cfg(unix)]
        loop {
            tokio::select! {
                _ = self.interrupt.recv() => return Ok(()),
                _ = self.terminate.recv() => return Ok(()),
                _ = self.hangup.recv() => match server.reload_auth() {
                    Ok(()) => tracing::info!("SIGHUP: authentication keys reloaded"),
                    Err(error) => {
                        tracing::error!(%error, "SIGHUP: keys not reloaded; the old keys stay");
                    }
                },
            }
        }
        #[cfg(not(unix))]
        {
            let _ = server;
            tokio::signal::ctrl_c().await.context("waiting for Ctrl-C")
        }
    }
}
