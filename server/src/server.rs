//! The HTTP shell: `ServerBuilder` and `RunningServer`, the routes
//! (`/ws`, `/healthz`, `/metrics`, `/docs/{id}`, static files), the accept
//! loop, and startup and shutdown of storage.
//!
//! The accept loop drives hyper directly (rather than `axum::serve`) so the
//! handshake timeout (`header_read_timeout`) and the connection bound are
//! ours to set. Every session task is tracked, so `shutdown` can tell each
//! session to close (`shutting_down`, then 1001) and wait for them to drain;
//! then the shards finish their queues and wait until their log is durable,
//! and the storage thread saves pending snapshots and closes the database.
//!
//! With storage, `bind` recovers before it returns (in a blocking task): a
//! server that reports its address has every durable commit back.

use std::collections::{HashMap, HashSet};
use std::future::Future;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use axum::body::Bytes;
use axum::extract::ws::WebSocketUpgrade;
use axum::extract::{ConnectInfo, Path, Query, State};
use axum::http::{header, HeaderMap, StatusCode, Uri};
use axum::response::{Html, IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;
use concord_engine::access::{DocAccess, DocGrant, Grants, Identity};
use concord_engine::certificate::CommittedTx;
use concord_engine::{DocId, Version};
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use serde::Deserialize;
use serde_json::{json, Value};
use tokio::net::TcpListener;
use tokio::sync::{mpsc, Semaphore};
use tokio::task::JoinHandle;
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tower_http::services::ServeDir;

use crate::auth::{
    self, AuthFailures, AuthRefusal, AuthRequest, Authenticator, JwtAuthenticator, JwtConfig,
    TokenRequest,
};
use crate::config::{Config, StorageConfig};
use crate::durable;
use crate::error::ServerError;
use crate::hub::{spawn_hub, HubCommand, HubLimits};
use crate::metrics::Metrics;
use crate::recovery::{self, Recovery};
use crate::rpc::{CallContext, Mutation, MutatorCall, MutatorFn, Procedure, RpcError};
use crate::rules::{DocGlob, Enforcement, Guard, GuardCall, Rules, Veto};
use crate::session::{self, Frames, SessionAuth};
use crate::shard::{shard_index, spawn_shards, CommitLog, Documents, ShardSet, ShardStorage};
use crate::storage::{DataDir, SqliteOptions, SqliteStorage, Storage};

/// Most changes per document put back into the catch-up history after a
/// restart.
const RECOVERED_HISTORY_MAX: usize = 64;

/// The connection history reads (`GET /docs/{id}?version=N`) go through: a
/// second connection, so they never wait behind a group commit (WAL readers
/// do not block the writer), used only from blocking tasks.
type HistoryReader = Arc<Mutex<Box<dyn Storage>>>;

/// Shown at `/` until the web app exists (or when no `--static` is given).
const PLACEHOLDER_PAGE: &str = "<!doctype html>
<html lang=\"en\"><head><meta charset=\"utf-8\"><title>Concord</title></head>
<body><h1>Concord</h1>
<p>This server speaks Concord protocol v1 over a WebSocket at <code>/ws</code>.
Health: <a href=\"/healthz\">/healthz</a>. Metrics: <a href=\"/metrics\">/metrics</a>.</p>
<p>Serve a web app here with <code>concord serve --static DIR</code>.</p>
</body></html>
";

/// What every session and route shares.
pub(crate) struct ServerState {
    pub(crate) config: Config,
    pub(crate) shards: ShardSet,
    pub(crate) hub: mpsc::Sender<HubCommand>,
    pub(crate) procedures: HashMap<String, Procedure>,
    pub(crate) documents: Documents,
    pub(crate) metrics: Metrics,
    pub(crate) shutdown: CancellationToken,
    /// Permits for `sessions_max` concurrent sessions.
    pub(crate) sessions: Arc<Semaphore>,
    pub(crate) tracker: TaskTracker,
    /// Cancelled when a log append failed: sessions close (1011), new ones
    /// are refused, `/healthz` answers 503.
    pub(crate) storage_failed: CancellationToken,
    pub(crate) history: Option<HistoryReader>,
    /// The rules: sessions check server-only paths, shards the rest.
    pub(crate) enforcement: Arc<Enforcement>,
    /// Who sessions and HTTP requests are; `None`: an open server.
    pub(crate) authenticator: Option<Arc<dyn Authenticator>>,
    pub(crate) auth_failures: AuthFailures,
    /// When set, `/metrics` wants `Authorization: Bearer` with this token.
    pub(crate) metrics_token: Option<String>,
    /// The HS256 secret the demo token endpoint signs with (`--demo-auth`).
    pub(crate) demo_secret: Option<Vec<u8>>,
}

/// Why an authentication failed, as the session or route answers it.
#[derive(Debug)]
pub(crate) enum AuthFailure {
    /// The remote address failed too often this minute; the token was not
    /// looked at.
    RateLimited,
    Refused(AuthRefusal),
}

impl AuthFailure {
    pub(crate) fn message(&self) -> String {
        match self {
            AuthFailure::RateLimited => format!(
                "too many failed authentications from this address (over {} a minute); try later",
                auth::AUTH_FAILURES_PER_MINUTE_MAX
            ),
            AuthFailure::Refused(refusal) => format!("authentication failed: {refusal}"),
        }
    }
}

impl ServerState {
    /// Authenticates `token` for a request from `remote_addr`, counting and
    /// logging a failure (never the token). Only called when an
    /// authenticator is configured.
    pub(crate) async fn authenticate(
        &self,
        token: String,
        remote_addr: SocketAddr,
        origin: Option<String>,
    ) -> Result<Identity, AuthFailure> {
        let Some(authenticator) = &self.authenticator else {
            return Ok(Identity::anonymous());
        };
        let ip = remote_addr.ip();
        if self.auth_failures.blocked(ip, Instant::now()) {
            self.metrics.auth_failures.with_label_values(&["rate_limited"]).inc();
            tracing::info!(remote = %ip, reason = "rate_limited", "authentication refused");
            return Err(AuthFailure::RateLimited);
        }
        let request = AuthRequest { token, remote_addr, origin };
        match authenticator.authenticate(&request).await {
            Ok(identity) => Ok(identity),
            Err(refusal) => {
                self.auth_failures.record(ip, Instant::now());
                self.metrics.auth_failures.with_label_values(&[refusal.label()]).inc();
                tracing::info!(remote = %ip, reason = %refusal, "authentication refused");
                Err(AuthFailure::Refused(refusal))
            }
        }
    }
}

/// Configures and starts a server.
///
/// ```no_run
/// # async fn start() -> Result<(), concord_server::ServerError> {
/// use concord_server::{Config, Mutation, RpcError, ServerBuilder};
/// use serde_json::json;
///
/// let server = ServerBuilder::new()
///     .config(Config::default())
///     .procedure("echo", |_ctx, params| async move { Ok(params) })
///     .mutator("reset", |_call| Ok(Mutation { writes: vec![], result: json!(null) }))
///     .bind("127.0.0.1:0")
///     .await?;
/// println!("{}", server.ws_url());
/// server.shutdown().await;
/// # Ok(()) }
/// ```
#[must_use]
pub struct ServerBuilder {
    config: Config,
    procedures: HashMap<String, Procedure>,
    duplicate: Option<String>,
    authenticator: Option<Arc<dyn Authenticator>>,
    jwt: Option<JwtConfig>,
    metrics_token: Option<String>,
    demo_auth: bool,
    rules: Rules,
    guards: Vec<Guard>,
}

impl std::fmt::Debug for ServerBuilder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mut names: Vec<&String> = self.procedures.keys().collect();
        names.sort();
        f.debug_struct("ServerBuilder")
            .field("config", &self.config)
            .field("procedures", &names)
            .finish_non_exhaustive()
    }
}

impl Default for ServerBuilder {
    fn default() -> Self {
        Self::new()
    }
}

impl ServerBuilder {
    pub fn new() -> Self {
        Self {
            config: Config::default(),
            procedures: HashMap::new(),
            duplicate: None,
            authenticator: None,
            jwt: None,
            metrics_token: None,
            demo_auth: false,
            rules: Rules::none(),
            guards: Vec::new(),
        }
    }

    /// Requires every session (and `GET /docs`) to authenticate with a
    /// bearer token that `authenticator` accepts; its identity's
    /// permissions then decide what the session may do. Replaces `jwt`.
    pub fn authenticator(mut self, authenticator: impl Authenticator) -> Self {
        self.authenticator = Some(Arc::new(authenticator));
        self.jwt = None;
        self
    }

    /// Requires JWTs verified as `jwt` says (HS256 secret and/or a JWKS
    /// file of RS256/EdDSA keys). Replaces `authenticator`.
    pub fn jwt(mut self, jwt: JwtConfig) -> Self {
        self.jwt = Some(jwt);
        self.authenticator = None;
        self
    }

    /// Puts `/metrics` behind `Authorization: Bearer <token>`.
    pub fn metrics_token(mut self, token: impl Into<String>) -> Self {
        self.metrics_token = Some(token.into());
        self
    }

    /// The whiteboard's demo mode: `POST /demo/token` hands any visitor a
    /// token for `board:*` (write, or read with `"access": "read"`), signed
    /// with the JWT config's HS256 secret or, without one, a random secret
    /// made at start. Turns JWT authentication on. For trying access
    /// control, not for production: anyone who reaches the server gets a
    /// token.
    pub fn demo_auth(mut self, on: bool) -> Self {
        self.demo_auth = on;
        self
    }

    /// The schemas and server-only paths every commit is checked against
    /// (`concord serve --rules FILE`; see docs/security.md).
    pub fn rules(mut self, rules: Rules) -> Self {
        self.rules = rules;
        self
    }

    /// Adds a commit guard for the documents whose id matches `docs` (a
    /// glob: `*` any run without `/`, `**` any run). It runs on every
    /// commit to them, a client's or a mutator's, after the patch applied
    /// and the schemas passed, on the owning shard: an `Err(Veto)` refuses
    /// the commit (`rejected`, reason `vetoed`, with the veto's reason) and
    /// nothing changes. A guard that panics or takes longer than
    /// `rules::GUARD_TIME_BUDGET_MAX` vetoes too. Guards run in the order
    /// they were added; keep them quick and deterministic.
    pub fn guard<F>(mut self, docs: impl Into<String>, guard: F) -> Self
    where
        F: Fn(&GuardCall<'_>) -> Result<(), Veto> + Send + Sync + 'static,
    {
        let docs = DocGlob::new(&docs.into());
        self.guards.push(Guard { docs, guard: Arc::new(guard) });
        self
    }

    /// Replaces the whole configuration.
    pub fn config(mut self, config: Config) -> Self {
        self.config = config;
        self
    }

    /// Serves TLS with this certificate chain and key (PEM files), the same
    /// as setting `Config::tls` (so call it after [`ServerBuilder::config`]).
    /// `bind` fails with `ServerError::Tls` if they cannot be loaded.
    pub fn tls(mut self, tls: crate::tls::TlsConfig) -> Self {
        self.config.tls = Some(tls);
        self
    }

    /// Registers a server procedure callable by any client as JSON-RPC method
    /// `name`. `params` is `null` when the call has none. Runs in a task of
    /// the calling session under `rpc_call_timeout`.
    pub fn procedure<F, Fut>(mut self, name: impl Into<String>, handler: F) -> Self
    where
        F: Fn(CallContext, Value) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<Value, RpcError>> + Send + 'static,
    {
        let procedure: Procedure =
            Arc::new(move |context, params| Box::pin(handler(context, params)));
        self.add(name.into(), procedure);
        self
    }

    /// Registers a mutator: a procedure that runs a transaction on the
    /// authoritative store. Its params must be an object whose string member
    /// `doc` names the document; the mutator runs on the shard that owns it
    /// with the current value, and the writes it returns are committed and
    /// broadcast like a client's commit. The call answers
    /// `{"version": <committed version>, "result": <Mutation::result>}`, or
    /// error −32003 with the rejection when the patch does not apply.
    /// Keep mutators quick: the shard's other documents wait meanwhile.
    pub fn mutator<F>(mut self, name: impl Into<String>, mutator: F) -> Self
    where
        F: Fn(MutatorCall<'_>) -> Result<Mutation, RpcError> + Send + Sync + 'static,
    {
        let mutator: MutatorFn = Arc::new(mutator);
        let procedure: Procedure = Arc::new(move |context: CallContext, params: Value| {
            let mutator = mutator.clone();
            Box::pin(async move {
                let doc = params
                    .get("doc")
                    .and_then(Value::as_str)
                    .ok_or_else(|| {
                        RpcError::invalid_params("params must be an object with a string \"doc\"")
                    })
                    .and_then(|raw| {
                        DocId::parse(raw).map_err(|e| RpcError::invalid_params(e.to_string()))
                    })?;
                let (version, result) =
                    context.documents.mutate_with(&doc, context.session, params, mutator).await?;
                Ok(json!({"version": version, "result": result}))
            })
        });
        self.add(name.into(), procedure);
        self
    }

    fn add(&mut self, name: String, procedure: Procedure) {
        if self.procedures.insert(name.clone(), procedure).is_some() {
            self.duplicate.get_or_insert(name);
        }
    }

    /// Binds `addr` (e.g. `"127.0.0.1:0"` for any free port) and starts
    /// serving.
    pub async fn bind<A>(self, addr: A) -> Result<RunningServer, ServerError>
    where
        A: tokio::net::ToSocketAddrs + std::fmt::Debug,
    {
        if let Some(name) = self.duplicate {
            return Err(ServerError::DuplicateProcedure(name));
        }
        self.config.validate()?;
        let tls = self.config.tls.as_ref().map(crate::tls::acceptor).transpose()?;
        let mut jwt = self.jwt;
        let mut demo_secret = None;
        if self.demo_auth {
            let config = jwt.get_or_insert_with(JwtConfig::default);
            let secret = config
                .hs256_secret
                .get_or_insert_with(|| (0..32).map(|_| rand::random::<u8>()).collect());
            demo_secret = Some(secret.clone());
        }
        let authenticator = match (self.authenticator, jwt) {
            (Some(authenticator), _) => Some(authenticator),
            (None, Some(jwt)) => {
                let jwt = JwtAuthenticator::new(jwt).map_err(ServerError::Auth)?;
                Some(Arc::new(jwt) as Arc<dyn Authenticator>)
            }
            (None, None) => None,
        };
        let bind_error = |source| ServerError::Bind { addr: format!("{addr:?}"), source };
        let listener = TcpListener::bind(&addr).await.map_err(bind_error)?;
        let local_addr = listener.local_addr().map_err(bind_error)?;
        if authenticator.is_none() && !local_addr.ip().is_loopback() && !self.config.insecure_open {
            return Err(ServerError::InsecureOpen { addr: local_addr });
        }
        let config = self.config;

        let metrics = Metrics::new()?;
        let storage_failed = CancellationToken::new();
        let stop_shards = CancellationToken::new();
        let opened = match &config.storage {
            Some(storage) => Some(open_storage(&config, storage, &metrics, &storage_failed).await?),
            None => None,
        };
        let (recovery, shard_storage, storage_thread, history) = match opened {
            Some(opened) => (
                Some(opened.recovery),
                Some(opened.shard_storage),
                Some(opened.thread),
                Some(opened.history),
            ),
            None => (None, None, None, None),
        };
        let commit_log = config.record_commit_log.then(|| CommitLog {
            entries: Arc::new(Mutex::new(Vec::new())),
            entries_max: config.commit_log_entries_max,
        });
        let enforcement = Arc::new(Enforcement::new(
            self.rules,
            self.guards,
            Some(metrics.guard_failures.clone()),
        ));
        let (shards, shard_tasks) = spawn_shards(
            &config,
            &metrics,
            commit_log.clone(),
            enforcement.clone(),
            recovery,
            shard_storage,
            &stop_shards,
        );
        let reserved: Arc<HashSet<String>> = Arc::new(self.procedures.keys().cloned().collect());
        let hub_limits = HubLimits {
            subscriptions_max: config.subscriptions_max,
            registered_methods_max: config.registered_methods_max,
            rpc_pending_calls_max: config.rpc_pending_calls_max,
            rpc_call_timeout: config.rpc_call_timeout,
        };
        let (hub, hub_task) =
            spawn_hub(config.hub_queue_commands_max, hub_limits, reserved, metrics.clone());
        let documents = Documents { shards: shards.clone() };
        let state = Arc::new(ServerState {
            sessions: Arc::new(Semaphore::new(config.sessions_max)),
            config,
            shards,
            hub,
            procedures: self.procedures,
            documents: documents.clone(),
            metrics: metrics.clone(),
            shutdown: CancellationToken::new(),
            tracker: TaskTracker::new(),
            storage_failed,
            history,
            enforcement,
            authenticator,
            auth_failures: AuthFailures::default(),
            metrics_token: self.metrics_token,
            demo_secret,
        });
        let router = router(state.clone());
        let accept_task = tokio::spawn(accept_loop(listener, router, state.clone(), tls));
        tracing::info!(%local_addr, "concord server listening");
        Ok(RunningServer {
            local_addr,
            state,
            accept_task,
            shard_tasks,
            stop_shards,
            hub_task,
            storage_thread,
            commit_log,
            metrics,
            documents,
        })
    }
}

/// Storage opened and recovered, ready for the shards.
struct OpenedStorage {
    recovery: Recovery,
    shard_storage: ShardStorage,
    thread: std::thread::JoinHandle<()>,
    history: HistoryReader,
}

/// Locks the data directory, opens the database, rebuilds the stores from
/// it and starts the storage thread.
async fn open_storage(
    config: &Config,
    storage: &StorageConfig,
    metrics: &Metrics,
    failed: &CancellationToken,
) -> Result<OpenedStorage, ServerError> {
    let shards = config.shards;
    let options = SqliteOptions {
        sync: storage.sync,
        history_retained_commits: storage.history_retained_commits,
        snapshot_spacing_commits: storage.snapshot_every_commits,
        limits: config.limits,
    };
    let path = storage.data_dir.clone();
    // A client connected until the crash is a few changes behind: seed the
    // catch-up history with the newest changes only, so a restart does not
    // re-encode whole tails for it.
    let tail_kept_max = config.change_history_max.min(RECOVERED_HISTORY_MAX);
    let started = Instant::now();
    let opened = tokio::task::spawn_blocking(move || -> Result<_, ServerError> {
        let data_dir = DataDir::lock(&path)?;
        let mut writer = SqliteStorage::open(data_dir.path(), options)?;
        let recovery =
            recovery::recover(&mut writer, shards, options.limits, tail_kept_max, |doc| {
                shard_index(doc, shards)
            })?;
        let reader = SqliteStorage::open(data_dir.path(), options)?;
        Ok((data_dir, writer, reader, recovery))
    })
    .await;
    let (data_dir, writer, reader, recovery) = match opened {
        Ok(result) => result?,
        Err(join) => std::panic::resume_unwind(join.into_panic()),
    };
    let elapsed = started.elapsed();
    metrics.recovery_seconds.set(elapsed.as_secs_f64());
    metrics.recovery_replayed_commits.set(i64::try_from(recovery.replayed).unwrap_or(i64::MAX));
    tracing::info!(
        data_dir = %storage.data_dir.display(),
        documents = recovery.docs,
        replayed_commits = recovery.replayed,
        recovery_ms = elapsed.as_millis() as u64,
        "storage recovered"
    );
    let (links, thread) = durable::spawn(
        Box::new(writer),
        data_dir,
        storage.sync,
        shards,
        storage.queue_batches_max,
        metrics.clone(),
        failed.clone(),
    )
    .map_err(ServerError::StorageThread)?;
    let shard_storage = ShardStorage {
        links,
        snapshot_every_commits: storage.snapshot_every_commits,
        replay_commits_max: (storage.replay_commits_max / shards as u64).max(1),
    };
    let history: HistoryReader = Arc::new(Mutex::new(Box::new(reader)));
    Ok(OpenedStorage { recovery, shard_storage, thread, history })
}

/// A server that is accepting connections. Dropping it without `shutdown`
/// leaves its tasks running until the runtime stops.
#[derive(Debug)]
pub struct RunningServer {
    local_addr: SocketAddr,
    state: Arc<ServerState>,
    accept_task: JoinHandle<()>,
    shard_tasks: Vec<JoinHandle<()>>,
    /// Tells the shards to finish their queues, flush and stop.
    stop_shards: CancellationToken,
    hub_task: JoinHandle<()>,
    storage_thread: Option<std::thread::JoinHandle<()>>,
    commit_log: Option<CommitLog>,
    metrics: Metrics,
    documents: Documents,
}

impl std::fmt::Debug for ServerState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServerState").field("config", &self.config).finish_non_exhaustive()
    }
}

impl RunningServer {
    /// The address actually bound (with the real port when 0 was asked for).
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// The WebSocket endpoint, e.g. `ws://127.0.0.1:7700/ws`
    /// (`wss://` when serving TLS).
    pub fn ws_url(&self) -> String {
        let scheme = if self.state.config.tls.is_some() { "wss" } else { "ws" };
        format!("{scheme}://{}/ws", self.local_addr)
    }

    /// The HTTP base URL, e.g. `http://127.0.0.1:7700` (`https://` when
    /// serving TLS).
    pub fn http_url(&self) -> String {
        let scheme = if self.state.config.tls.is_some() { "https" } else { "http" };
        format!("{scheme}://{}", self.local_addr)
    }

    /// Every committed transaction so far, in commit order (per document;
    /// documents on different shards interleave in the order their shards
    /// committed them). Empty unless `Config::record_commit_log` is set.
    pub fn commit_log(&self) -> Vec<CommittedTx> {
        self.commit_log.as_ref().map_or_else(Vec::new, |log| {
            log.entries.lock().unwrap_or_else(|poisoned| poisoned.into_inner()).clone()
        })
    }

    /// The server's metrics (the same numbers `/metrics` renders).
    pub fn metrics(&self) -> &Metrics {
        &self.metrics
    }

    /// Read and mutate documents on the authoritative store.
    pub fn documents(&self) -> Documents {
        self.documents.clone()
    }

    /// A document's current value and version, read through its shard.
    pub async fn document(&self, doc: &DocId) -> Option<(Value, Version)> {
        self.documents.get(doc).await
    }

    /// Re-reads the authenticator's key material (the JWKS file): `concord
    /// serve` calls it on SIGHUP. The JWT authenticator also re-reads the
    /// file by itself when it changes.
    pub fn reload_auth(&self) -> Result<(), String> {
        match &self.state.authenticator {
            Some(authenticator) => authenticator.reload(),
            None => Ok(()),
        }
    }

    /// Resolves once a shutdown has begun (e.g. for `main` to stop waiting).
    pub fn shutdown_started(&self) -> tokio_util::sync::WaitForCancellationFuture<'_> {
        self.state.shutdown.cancelled()
    }

    /// Resolves if a commit log append fails. Acknowledgements have stopped
    /// and sessions are being closed (1011); the server should be shut down
    /// and restarted, which recovers everything that was durable.
    pub fn storage_failed(&self) -> tokio_util::sync::WaitForCancellationFuture<'_> {
        self.state.storage_failed.cancelled()
    }

    /// Graceful shutdown: stops accepting, tells every session
    /// `shutting_down` and closes it with 1001 after its queued messages are
    /// written, waits up to `shutdown_drain_timeout` for sessions to end,
    /// then lets the shards finish their queues and waits (up to
    /// `shutdown_flush_timeout`) until their log is durable, and closes the
    /// storage.
    pub async fn shutdown(self) {
        let state = &self.state;
        state.shutdown.cancel();
        let _ = self.accept_task.await;
        state.tracker.close();
        if tokio::time::timeout(state.config.shutdown_drain_timeout, state.tracker.wait())
            .await
            .is_err()
        {
            tracing::warn!("sessions did not drain in time; closing them");
        }
        self.stop_shards.cancel();
        let flush_timeout = state.config.shutdown_flush_timeout;
        let aborts: Vec<_> = self.shard_tasks.iter().map(JoinHandle::abort_handle).collect();
        let flushed = tokio::time::timeout(flush_timeout, async {
            for task in self.shard_tasks {
                let _ = task.await;
            }
        })
        .await
        .is_ok();
        self.hub_task.abort();
        if !flushed {
            tracing::error!(
                "the commit log did not flush in time; unflushed commits were never acknowledged"
            );
            for abort in aborts {
                abort.abort();
            }
        }
        if let Some(thread) = self.storage_thread {
            // The thread ends once every shard has dropped its link.
            let joined = tokio::task::spawn_blocking(move || thread.join());
            if tokio::time::timeout(flush_timeout, joined).await.is_err() {
                tracing::error!("the storage thread did not finish in time");
            }
        }
        tracing::info!("concord server stopped");
    }
}

fn router(state: Arc<ServerState>) -> Router {
    let router = Router::new()
        .route("/ws", get(ws_handler))
        .route("/healthz", get(healthz_handler))
        .route("/metrics", get(metrics_handler))
        .route("/docs/{*id}", get(document_handler))
        .route("/demo/config", get(demo_config_handler))
        .route("/demo/token", post(demo_token_handler));
    let router = match &state.config.static_dir {
        Some(dir) => router.fallback_service(ServeDir::new(dir)),
        None => router.route("/", get(|| async { Html(PLACEHOLDER_PAGE) })),
    };
    router.with_state(state)
}

async fn healthz_handler(State(state): State<Arc<ServerState>>) -> Response {
    if state.storage_failed.is_cancelled() {
        return (StatusCode::SERVICE_UNAVAILABLE, "storage failed\n").into_response();
    }
    "ok\n".into_response()
}

/// An error answer of the HTTP API: `{"code": ..., "message": ...}`.
fn json_error(status: StatusCode, code: &str, message: impl Into<String>) -> Response {
    (status, axum::Json(json!({"code": code, "message": message.into()}))).into_response()
}

/// `GET /docs/{id}`: the document's current durable value and version;
/// with `?version=N`, its value at version `N` while that is still in the
/// log's retained history. Read-only.
async fn document_handler(
    State(state): State<Arc<ServerState>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    Path(raw): Path<String>,
    headers: HeaderMap,
    uri: Uri,
) -> Response {
    let doc = match DocId::parse(&raw) {
        Ok(doc) => doc,
        Err(error) => return json_error(StatusCode::BAD_REQUEST, "bad_id", error.to_string()),
    };
    if state.authenticator.is_some() {
        let peer = request_addr(&state, peer, &headers);
        let identity = match authenticate_http(&state, &headers, peer).await {
            Ok(identity) => identity,
            Err(refusal) => return refusal,
        };
        // The same answer whether or not the document exists.
        if identity.permissions.doc(&doc).is_none() {
            let message = format!("no grant of this token allows reading {doc}");
            return json_error(StatusCode::FORBIDDEN, "forbidden", message);
        }
    }
    let mut version = None;
    for pair in uri.query().unwrap_or_default().split('&').filter(|pair| !pair.is_empty()) {
        match pair.split_once('=') {
            Some(("version", raw)) => match raw.parse::<u64>() {
                Ok(parsed) => version = Some(Version(parsed)),
                Err(_) => {
                    let message = format!("version must be an unsigned integer, not {raw:?}");
                    return json_error(StatusCode::BAD_REQUEST, "bad_message", message);
                }
            },
            _ => {
                let message = format!("unknown query parameter {pair:?}; only version=N");
                return json_error(StatusCode::BAD_REQUEST, "bad_message", message);
            }
        }
    }
    let Some((value, current)) = state.documents.get(&doc).await else {
        return json_error(StatusCode::SERVICE_UNAVAILABLE, "shutting_down", "not serving");
    };
    let found = |version: Version, value: Value| {
        axum::Json(json!({"doc": doc, "version": version, "value": value})).into_response()
    };
    let unavailable = |why: &str| {
        json_error(StatusCode::NOT_FOUND, "version_unavailable", format!("{doc}: {why}"))
    };
    let wanted = match version {
        None => return found(current, value),
        Some(wanted) if wanted == current => return found(current, value),
        Some(wanted) if wanted > current => {
            return unavailable(&format!("version {wanted} is newer than the current {current}"))
        }
        Some(wanted) => wanted,
    };
    let Some(history) = state.history.clone() else {
        return unavailable("an in-memory server keeps no history");
    };
    let lookup = doc.clone();
    let read = tokio::task::spawn_blocking(move || {
        let mut reader = history.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        reader.document_at(&lookup, wanted)
    })
    .await;
    match read {
        Ok(Ok(Some(value))) => found(wanted, value),
        Ok(Ok(None)) => {
            unavailable(&format!("version {wanted} is no longer in the retained history"))
        }
        Ok(Err(error)) => {
            tracing::error!(%error, %doc, "history read failed");
            json_error(StatusCode::INTERNAL_SERVER_ERROR, "storage_error", error.to_string())
        }
        Err(_) => json_error(StatusCode::INTERNAL_SERVER_ERROR, "storage_error", "read panicked"),
    }
}

/// The token of an `Authorization: Bearer` header: `Ok(None)` without
/// the header, `Err` for one that is not a bearer token.
pub(crate) fn bearer_token(headers: &HeaderMap) -> Result<Option<String>, String> {
    let Some(value) = headers.get(header::AUTHORIZATION) else { return Ok(None) };
    let value = value.to_str().map_err(|_| "the Authorization header is not ASCII".to_owned())?;
    let (scheme, token) = value.split_once(' ').unwrap_or((value, ""));
    if !scheme.eq_ignore_ascii_case("bearer") || token.trim().is_empty() {
        return Err("the Authorization header must be \"Bearer <token>\"".to_owned());
    }
    Ok(Some(token.trim().to_owned()))
}

/// Where a request comes from, for the failed-authentication limit and the
/// log: the peer, or behind a trusted proxy the client it forwarded for.
fn request_addr(state: &ServerState, peer: SocketAddr, headers: &HeaderMap) -> SocketAddr {
    let trusted = &state.config.trusted_proxies;
    if trusted.is_empty() {
        return peer;
    }
    let forwarded = headers.get_all("x-forwarded-for").iter().filter_map(|v| v.to_str().ok());
    let forwarded: Vec<&str> = forwarded.collect();
    SocketAddr::new(auth::client_addr(peer, trusted, forwarded.into_iter()), 0)
}

/// The HTTP answer to a failed authentication.
fn auth_failure_response(failure: &AuthFailure) -> Response {
    let (status, code) = match failure {
        AuthFailure::RateLimited => (StatusCode::TOO_MANY_REQUESTS, "rate_limited"),
        AuthFailure::Refused(AuthRefusal::Expired) => (StatusCode::UNAUTHORIZED, "token_expired"),
        AuthFailure::Refused(AuthRefusal::Invalid(_)) => (StatusCode::UNAUTHORIZED, "unauthorized"),
    };
    let mut response = json_error(status, code, failure.message());
    if status == StatusCode::UNAUTHORIZED {
        let challenge = axum::http::HeaderValue::from_static("Bearer error=\"invalid_token\"");
        response.headers_mut().insert(header::WWW_AUTHENTICATE, challenge);
    }
    response
}

/// Authenticates an HTTP request by its `Authorization: Bearer` header.
async fn authenticate_http(
    state: &ServerState,
    headers: &HeaderMap,
    peer: SocketAddr,
) -> Result<Identity, Response> {
    let unauthorized = |message: String| {
        let mut response = json_error(StatusCode::UNAUTHORIZED, "unauthorized", message);
        let challenge = axum::http::HeaderValue::from_static("Bearer");
        response.headers_mut().insert(header::WWW_AUTHENTICATE, challenge);
        response
    };
    let token = match bearer_token(headers) {
        Ok(Some(token)) => token,
        Ok(None) => {
            return Err(unauthorized("this server wants Authorization: Bearer <token>".into()))
        }
        Err(message) => return Err(unauthorized(message)),
    };
    let origin = headers.get(header::ORIGIN).and_then(|o| o.to_str().ok()).map(str::to_owned);
    state.authenticate(token, peer, origin).await.map_err(|failure| auth_failure_response(&failure))
}

/// Compares two byte strings in time that depends only on their lengths.
fn same_secret(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

async fn metrics_handler(State(state): State<Arc<ServerState>>, headers: HeaderMap) -> Response {
    if let Some(expected) = &state.metrics_token {
        let allowed = matches!(bearer_token(&headers), Ok(Some(token)) if same_secret(token.as_bytes(), expected.as_bytes()));
        if !allowed {
            let message = "/metrics wants Authorization: Bearer <the metrics token>";
            return json_error(StatusCode::UNAUTHORIZED, "unauthorized", message);
        }
    }
    let content_type = [(header::CONTENT_TYPE, "text/plain; version=0.0.4; charset=utf-8")];
    (content_type, state.metrics.render()).into_response()
}

/// The query of a `/ws` request: `batch=1` asks for batched frames
/// (docs/protocol.md, section 1). Other parameters are ignored.
#[derive(Debug, Deserialize)]
struct SessionQuery {
    batch: Option<String>,
    token: Option<String>,
    access_token: Option<String>,
}

/// `GET /demo/config`: whether the whiteboard should ask `/demo/token` for
/// tokens.
async fn demo_config_handler(State(state): State<Arc<ServerState>>) -> Response {
    axum::Json(json!({"auth": state.demo_secret.is_some()})).into_response()
}

/// Most bytes of a demo visitor's name or subject id.
const DEMO_NAME_BYTES_MAX: usize = 64;
/// How long a demo token lasts.
const DEMO_TOKEN_TTL: std::time::Duration = std::time::Duration::from_secs(3600);

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct DemoTokenRequest {
    name: String,
    #[serde(default)]
    sub: Option<String>,
    #[serde(default = "demo_write")]
    access: DocAccess,
}

fn demo_write() -> DocAccess {
    DocAccess::Write
}

/// `POST /demo/token` (`--demo-auth` only): a token for `board:*` with the
/// access asked for, for the name given; the subject is the one given
/// (kept by the page across reloads) or a new random one.
async fn demo_token_handler(State(state): State<Arc<ServerState>>, body: Bytes) -> Response {
    let Some(secret) = &state.demo_secret else {
        return json_error(StatusCode::NOT_FOUND, "not_found", "the demo auth mode is off");
    };
    let request: DemoTokenRequest = match serde_json::from_slice(&body) {
        Ok(request) => request,
        Err(error) => return json_error(StatusCode::BAD_REQUEST, "bad_message", error.to_string()),
    };
    let valid = |text: &str| {
        !text.is_empty() && text.len() <= DEMO_NAME_BYTES_MAX && !text.chars().any(char::is_control)
    };
    let sub = request.sub.unwrap_or_else(|| format!("demo-{:016x}", rand::random::<u64>()));
    if !valid(&request.name) || !valid(&sub) {
        let message =
            format!("name and sub are 1-{DEMO_NAME_BYTES_MAX} bytes, no control characters");
        return json_error(StatusCode::BAD_REQUEST, "bad_message", message);
    }
    let grants = Grants {
        docs: vec![DocGrant { pattern: "board:*".into(), access: request.access, scopes: None }],
        ..Grants::default()
    };
    let token_request = TokenRequest {
        sub: sub.clone(),
        name: Some(request.name.clone()),
        grants,
        ttl: DEMO_TOKEN_TTL,
        audience: None,
        issuer: None,
    };
    match auth::mint_hs256(secret, &token_request) {
        Ok(token) => axum::Json(json!({
            "token": token,
            "sub": sub,
            "name": request.name,
            "expires_in": DEMO_TOKEN_TTL.as_secs(),
        }))
        .into_response(),
        Err(error) => json_error(StatusCode::INTERNAL_SERVER_ERROR, "internal", error),
    }
}

async fn ws_handler(
    State(state): State<Arc<ServerState>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    Query(query): Query<SessionQuery>,
    headers: HeaderMap,
    upgrade: WebSocketUpgrade,
) -> Response {
    let config = &state.config;
    let frames = match query.batch.as_deref() {
        None | Some("0") => Frames::Single,
        Some("1") => Frames::Batched,
        Some(_) => return (StatusCode::BAD_REQUEST, "batch must be 0 or 1\n").into_response(),
    };
    if query.token.is_some() || query.access_token.is_some() {
        let message = "a token in the URL is not accepted (URLs end up in logs): send it in the \
                       Authorization header or as the first message, {\"type\":\"auth\"}";
        return json_error(StatusCode::BAD_REQUEST, "unauthorized", message);
    }
    if let Some(origin) = headers.get(header::ORIGIN) {
        let allowed = config.allowed_origins.is_empty()
            || origin
                .to_str()
                .is_ok_and(|origin| config.allowed_origins.iter().any(|o| o == origin));
        if !allowed {
            return (StatusCode::FORBIDDEN, "origin not allowed\n").into_response();
        }
    }
    if state.shutdown.is_cancelled() {
        return (StatusCode::SERVICE_UNAVAILABLE, "shutting down\n").into_response();
    }
    if state.storage_failed.is_cancelled() {
        return (StatusCode::SERVICE_UNAVAILABLE, "storage failed\n").into_response();
    }
    let origin = headers.get(header::ORIGIN).and_then(|o| o.to_str().ok()).map(str::to_owned);
    let peer = request_addr(&state, peer, &headers);
    // The header, when present, decides: a bad one is refused before the
    // upgrade, and the session then takes no `auth` message.
    let auth = match (&state.authenticator, bearer_token(&headers)) {
        (None, _) => SessionAuth::Open,
        (Some(_), Err(message)) => {
            return json_error(StatusCode::UNAUTHORIZED, "unauthorized", message);
        }
        (Some(_), Ok(None)) => SessionAuth::FirstMessage { remote_addr: peer, origin },
        (Some(_), Ok(Some(token))) => match state.authenticate(token, peer, origin).await {
            Ok(identity) => SessionAuth::Header(identity),
            Err(failure) => return auth_failure_response(&failure),
        },
    };
    let Ok(permit) = state.sessions.clone().try_acquire_owned() else {
        return (StatusCode::SERVICE_UNAVAILABLE, "too many sessions\n").into_response();
    };
    // The write buffer holds at most one message beyond `write_buffer_size`
    // because the writer flushes; the biggest message is a snapshot.
    let write_buffer_max = config.ws_write_buffer_bytes
        + config.outbound_queue_bytes_max.max(2 * config.limits.doc_size_bytes_max);
    let token = state.tracker.token();
    upgrade
        .max_message_size(config.ws_message_bytes_max)
        .max_frame_size(config.ws_frame_bytes_max)
        .read_buffer_size(config.ws_read_buffer_bytes)
        .write_buffer_size(config.ws_write_buffer_bytes)
        .max_write_buffer_size(write_buffer_max)
        .on_upgrade(move |socket| async move {
            session::run(socket, state, permit, frames, auth, peer).await;
            drop(token);
        })
}

async fn accept_loop(
    listener: TcpListener,
    router: Router,
    state: Arc<ServerState>,
    tls: Option<TlsAcceptor>,
) {
    let connections = Arc::new(Semaphore::new(state.config.connections_max));
    let shutdown = state.shutdown.clone();
    loop {
        let permit = tokio::select! {
            () = shutdown.cancelled() => break,
            permit = connections.clone().acquire_owned() => match permit {
                Ok(permit) => permit,
                Err(_) => break,
            },
        };
        let (stream, peer) = tokio::select! {
            () = shutdown.cancelled() => break,
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(error) => {
                    // Typically out of file descriptors: back off briefly
                    // instead of spinning.
                    tracing::warn!(%error, "accept failed");
                    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let _ = stream.set_nodelay(true);
        // Routes that authenticate see the peer's address.
        let service =
            TowerToHyperService::new(router.clone().layer(axum::Extension(ConnectInfo(peer))));
        let handshake_timeout = state.config.handshake_timeout;
        let shutdown = shutdown.clone();
        let tls = tls.clone();
        let failures = state.metrics.tls_handshake_failures.clone();
        state.tracker.spawn(async move {
            let Some(tls) = tls else {
                serve_connection(stream, service, handshake_timeout, peer, &shutdown).await;
                drop(permit);
                return;
            };
            // The TLS handshake counts against the handshake timeout; the
            // HTTP request gets what is left of it.
            let started = std::time::Instant::now();
            let handshake = tokio::time::timeout(handshake_timeout, tls.accept(stream));
            let stream = tokio::select! {
                accepted = handshake => match accepted {
                    Ok(Ok(stream)) => stream,
                    Ok(Err(error)) => {
                        tracing::debug!(%peer, %error, "TLS handshake failed");
                        failures.inc();
                        return;
                    }
                    Err(_) => {
                        tracing::debug!(%peer, "TLS handshake timed out");
                        failures.inc();
                        return;
                    }
                },
                () = shutdown.cancelled() => return,
            };
            let left = handshake_timeout.saturating_sub(started.elapsed());
            let left = left.max(std::time::Duration::from_millis(1));
            serve_connection(stream, service, left, peer, &shutdown).await;
            drop(permit);
        });
    }
}

/// Serves HTTP/1.1 (and WebSocket upgrades) on one accepted connection,
/// plain or TLS, until it ends or the server shuts down.
async fn serve_connection<S>(
    stream: S,
    service: TowerToHyperService<Router>,
    header_read_timeout: std::time::Duration,
    peer: SocketAddr,
    shutdown: &CancellationToken,
) where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let connection = hyper::server::conn::http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(header_read_timeout)
        .serve_connection(TokioIo::new(stream), service)
        .with_upgrades();
    tokio::pin!(connection);
    tokio::select! {
        result = connection.as_mut() => {
            if let Err(error) = result {
                tracing::debug!(%peer, %error, "connection ended with an error");
            }
        }
        () = shutdown.cancelled() => {
            connection.as_mut().graceful_shutdown();
            let _ = connection.await;
        }
    }
}
