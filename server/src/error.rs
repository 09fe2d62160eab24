//! The server library's error types: what can go wrong starting a server.
//! Errors a client causes are not here: they are protocol values
//! (`concord_engine::protocol::ErrorCode`) sent back over the session.

/// A configuration whose limits contradict each other.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid configuration: {0}")]
pub struct ConfigError(pub String);

/// Why a server could not start.
#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    /// The configuration is inconsistent.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// The listen address could not be bound.
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        addr: String,
        #[source]
        source: std::io::Error,
    },
    /// The metrics registry refused a metric (a bug in its definitions).
    #[error("metrics registry: {0}")]
    Metrics(#[from] prometheus::Error),
    /// A procedure or mutator name was registered twice on the builder.
    #[error("procedure {0:?} is registered twice")]
    DuplicateProcedure(String),
    /// The data directory could not be locked or its database opened.
    #[error(transparent)]
    Storage(#[from] crate::storage::StorageError),
    /// What storage holds could not be rebuilt into documents.
    #[error(transparent)]
    Recovery(#[from] crate::recovery::RecoveryError),
    /// The authenticator could not be set up (a key file).
    #[error(transparent)]
    Auth(crate::auth::AuthSetupError),
    /// No authentication is configured and the address is not loopback.
    #[error(
        "refusing to serve without authentication on {addr}, which is not a loopback address: \
         configure tokens (--jwt-secret-file or --jwks-file), listen on 127.0.0.1, or pass \
         --insecure-open to serve everyone everything"
    )]
    InsecureOpen { addr: std::net::SocketAddr },
    /// The storage thread could not be started.
    #[error("cannot start the storage thread: {0}")]
    StorageThread(#[source] std::io::Error),
}
