//! Durable storage for the authoritative store: the commit log and document
//! snapshots, behind the `Storage` trait so a distributed backend can replace
//! the embedded one without touching the engine or the shards.
//!
//! The embedded backend (`sqlite`) is SQLite in WAL mode: a group of commits
//! is one SQLite transaction, made durable by one fsync of the WAL, and a torn
//! write at the tail of the WAL is discarded by SQLite's own frame checksums
//! when the database is opened. So a crash at any instant leaves either the
//! whole group or none of it, and never prevents a start.
//!
//! Nothing here decides anything: the log holds what `Store::commit` already
//! decided, and recovery hands it back to `Store::replay` (see `recovery`).
//! The group-commit thread that drives a `Storage` is `durable`.

pub mod sqlite;

use std::fs::{File, OpenOptions, TryLockError};
use std::path::{Path, PathBuf};

use concord_engine::{Change, DocId, TxId, Version};
use serde_json::Value;

pub use sqlite::{SqliteOptions, SqliteStorage, DB_FILE_NAME};

// What the sequencer hands storage: defined beside it in the engine.
pub use concord_engine::sequencer::{DocumentState, LogEntry};

/// What a document looks like on disk: its newest snapshot and the log
/// entries after it, in version order.
#[derive(Debug, Clone, PartialEq)]
pub struct RecoveredDoc {
    pub doc: DocId,
    pub snapshot: Value,
    pub snapshot_version: Version,
    pub tail: Vec<Change>,
}

/// Everything a restart needs.
#[derive(Debug, Default)]
pub struct Recovered {
    pub docs: Vec<RecoveredDoc>,
    /// The most recent committed tx ids across all documents, oldest first,
    /// so deduplication survives the restart.
    pub recent_tx_ids: Vec<(TxId, DocId, Version)>,
}

/// How hard a group commit pushes data to disk.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum SyncMode {
    /// fsync before acknowledging: nothing acknowledged is lost on a crash or
    /// a power failure. The default.
    #[default]
    Full,
    /// Leave flushing to the OS: acknowledged commits survive a crash of the
    /// process but not of the machine. Faster; opt-in with `--sync off`.
    Off,
}

/// Storage failures. A failed append stops acknowledgements: the server
/// refuses to confirm what it could not make durable.
#[derive(Debug, thiserror::Error)]
pub enum StorageError {
    /// The database refused an operation (disk full, I/O error, corruption).
    #[error("storage: {0}")]
    Sqlite(#[from] rusqlite::Error),
    /// A stored row does not decode (written by something else, or damaged).
    #[error("storage: bad row for {doc} at {version}: {reason}")]
    BadRow { doc: String, version: u64, reason: String },
    /// The data directory or its lock file could not be created or opened.
    #[error("storage: {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// Another process (a running server, an import) holds the data
    /// directory.
    #[error("storage: {0} is in use by another concord process")]
    Locked(PathBuf),
    /// The database was written by a newer (or foreign) schema.
    #[error("storage: unknown schema version {0} (this build knows version {known})", known = sqlite::SCHEMA_VERSION)]
    Schema(i64),
    /// `import` of a document the data directory already holds.
    #[error("storage: {0} already exists; import only adds new documents")]
    AlreadyExists(DocId),
}

/// A backend for the commit log and snapshots. Every method is blocking:
/// the server calls them from its storage thread or a blocking task, never
/// from an async task.
pub trait Storage: Send + 'static {
    /// Appends a group of entries as one durable unit (all or none).
    fn append(&mut self, entries: &[LogEntry]) -> Result<(), StorageError>;
    /// Saves snapshots, and compacts what they make unnecessary beyond the
    /// retained history. Never needed for correctness, so it may be less
    /// durable than `append`: a lost snapshot only lengthens the next replay.
    fn save_snapshots(&mut self, snapshots: &[DocumentState]) -> Result<(), StorageError>;
    /// Reads everything back for a restart, as one consistent view.
    fn recover(&mut self, recent_tx_ids_max: usize) -> Result<Recovered, StorageError>;
    /// The value of `doc` at exactly `version`, if that version is durable
    /// and still in the retained history.
    fn document_at(&mut self, doc: &DocId, version: Version)
        -> Result<Option<Value>, StorageError>;
    /// The log entries of `doc` with versions in `after+1..=up_to` that are
    /// still retained, in version order.
    fn log(
        &mut self,
        doc: &DocId,
        after: Version,
        up_to: Version,
    ) -> Result<Vec<LogEntry>, StorageError>;
    /// Adds documents at the given versions (an import), all or none; a
    /// document the storage already holds is refused.
    fn import(&mut self, docs: &[DocumentState]) -> Result<(), StorageError>;
    /// Housekeeping the storage thread runs between group commits, after
    /// their acknowledgements are released, so it never delays one (SQLite:
    /// copying the WAL back into the database). Nothing by default.
    fn checkpoint(&mut self) -> Result<(), StorageError> {
        Ok(())
    }
}

/// Name of the lock file inside the data directory.
pub const LOCK_FILE_NAME: &str = "LOCK";

/// A data directory held exclusively by this process: two servers appending
/// to one log would each believe they own the versions they write. The lock
/// is an OS file lock, so it is released when the process dies, even by
/// `kill -9`.
#[derive(Debug)]
pub struct DataDir {
    path: PathBuf,
    /// Held, never read: the lock lives as long as this file handle.
    _lock: File,
}

impl DataDir {
    /// Creates `path` if needed and locks it.
    pub fn lock(path: &Path) -> Result<Self, StorageError> {
        let io = |source| StorageError::Io { path: path.to_owned(), source };
        std::fs::create_dir_all(path).map_err(io)?;
        let lock_path = path.join(LOCK_FILE_NAME);
        let file = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&lock_path)
            .map_err(|source| StorageError::Io { path: lock_path.clone(), source })?;
        match file.try_lock() {
            Ok(()) => Ok(Self { path: path.to_owned(), _lock: file }),
            Err(TryLockError::WouldBlock) => Err(StorageError::Locked(path.to_owned())),
            Err(TryLockError::Error(source)) => Err(StorageError::Io { path: lock_path, source }),
        }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }
}
