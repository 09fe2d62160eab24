//! The HTTP shell: `ServerBuilder` and `RunningServer`, the routes
//! (`/ws`, `/healthz`, `/metrics`, static files), and the accept loop.
//!
//! The accept loop drives hyper directly (rather than `axum::serve`) so the
//! handshake timeout (`header_read_timeout`) and the connection bound are
//! ours to set. Every session task is tracked, so `shutdown` can tell each
//! session to close (`shutting_down`, then 1001) and wait for them to drain.

use std::collections::{HashMap, HashSet};
use std::future::Future;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use axum::extract::ws::WebSocketUpgrade;
use axum::extract::State;
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{Html, IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use concord_engine::certificate::CommittedTx;
use concord_engine::{DocId, Version};
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use serde_json::{json, Value};
use tokio::net::TcpListener;
use tokio::sync::{mpsc, Semaphore};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tower_http::services::ServeDir;

use crate::config::Config;
use crate::error::ServerError;
use crate::hub::{spawn_hub, HubCommand, HubLimits};
use crate::metrics::Metrics;
use crate::rpc::{CallContext, Mutation, MutatorCall, MutatorFn, Procedure, RpcError};
use crate::session;
use crate::shard::{spawn_shards, CommitLog, Documents, ShardSet};

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
        Self { config: Config::default(), procedures: HashMap::new(), duplicate: None }
    }

    /// Replaces the whole configuration.
    pub fn config(mut self, config: Config) -> Self {
        self.config = config;
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
        let bind_error = |source| ServerError::Bind { addr: format!("{addr:?}"), source };
        let listener = TcpListener::bind(&addr).await.map_err(bind_error)?;
        let local_addr = listener.local_addr().map_err(bind_error)?;
        let config = self.config;

        let metrics = Metrics::new()?;
        let commit_log = config.record_commit_log.then(|| CommitLog {
            entries: Arc::new(Mutex::new(Vec::new())),
            entries_max: config.commit_log_entries_max,
        });
        let (shards, shard_tasks) = spawn_shards(&config, &metrics, commit_log.clone());
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
        });
        let router = router(state.clone());
        let accept_task = tokio::spawn(accept_loop(listener, router, state.clone()));
        tracing::info!(%local_addr, "concord server listening");
        Ok(RunningServer {
            local_addr,
            state,
            accept_task,
            background: shard_tasks.into_iter().chain([hub_task]).collect(),
            commit_log,
            metrics,
            documents,
        })
    }
}

/// A server that is accepting connections. Dropping it without `shutdown`
/// leaves its tasks running until the runtime stops.
#[derive(Debug)]
pub struct RunningServer {
    local_addr: SocketAddr,
    state: Arc<ServerState>,
    accept_task: JoinHandle<()>,
    background: Vec<JoinHandle<()>>,
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

    /// The WebSocket endpoint, e.g. `ws://127.0.0.1:7700/ws`.
    pub fn ws_url(&self) -> String {
        format!("ws://{}/ws", self.local_addr)
    }

    /// The HTTP base URL, e.g. `http://127.0.0.1:7700`.
    pub fn http_url(&self) -> String {
        format!("http://{}", self.local_addr)
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

    /// Resolves once a shutdown has begun (e.g. for `main` to stop waiting).
    pub fn shutdown_started(&self) -> tokio_util::sync::WaitForCancellationFuture<'_> {
        self.state.shutdown.cancelled()
    }

    /// Graceful shutdown: stops accepting, tells every session
    /// `shutting_down` and closes it with 1001 after its queued messages are
    /// written, waits up to `shutdown_drain_timeout` for sessions to end,
    /// then stops the shards and the hub.
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
        // With durability, the shards flush their log here before stopping.
        for task in self.background {
            task.abort();
        }
        tracing::info!("concord server stopped");
    }
}

fn router(state: Arc<ServerState>) -> Router {
    let router = Router::new()
        .route("/ws", get(ws_handler))
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/metrics", get(metrics_handler));
    let router = match &state.config.static_dir {
        Some(dir) => router.fallback_service(ServeDir::new(dir)),
        None => router.route("/", get(|| async { Html(PLACEHOLDER_PAGE) })),
    };
    router.with_state(state)
}

async fn metrics_handler(State(state): State<Arc<ServerState>>) -> Response {
    let content_type = [(header::CONTENT_TYPE, "text/plain; version=0.0.4; charset=utf-8")];
    (content_type, state.metrics.render()).into_response()
}

async fn ws_handler(
    State(state): State<Arc<ServerState>>,
    headers: HeaderMap,
    upgrade: WebSocketUpgrade,
) -> Response {
    let config = &state.config;
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
        .write_buffer_size(config.ws_write_buffer_bytes)
        .max_write_buffer_size(write_buffer_max)
        .on_upgrade(move |socket| async move {
            session::run(socket, state, permit).await;
            drop(token);
        })
}

async fn accept_loop(listener: TcpListener, router: Router, state: Arc<ServerState>) {
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
        let service = TowerToHyperService::new(router.clone());
        let handshake_timeout = state.config.handshake_timeout;
        let shutdown = shutdown.clone();
        state.tracker.spawn(async move {
            let connection = hyper::server::conn::http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(handshake_timeout)
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
            drop(permit);
        });
    }
}
