//! `concord export` and `concord import`: documents as JSON, with their
//! versions.
//!
//! The format is one JSON object:
//!
//! ```json
//! {"format": "concord-export", "format_version": 1,
//!  "documents": [{"doc": "board-1", "version": 18, "value": {"shapes": {}}}]}
//! ```
//!
//! Export reads a consistent view of the data directory (one read
//! transaction), so it is safe while a server runs on it. Import adds
//! documents at the versions given — later commits continue from there — and
//! takes the data directory's lock, so it refuses to run beside a server. It
//! never overwrites: a document the directory already holds fails the whole
//! import, which is all or nothing. History before an imported version is
//! not available.

use std::collections::HashSet;
use std::io::Write;
use std::path::{Path, PathBuf};

use concord_engine::{Limits, Store, Version};
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::recovery::RecoveryError;
use crate::storage::{
    DataDir, DocumentState, SqliteOptions, SqliteStorage, Storage, StorageError, SyncMode,
    DB_FILE_NAME,
};

/// The `format` member of an export.
pub const EXPORT_FORMAT: &str = "concord-export";
/// The `format_version` this build writes and reads.
pub const EXPORT_FORMAT_VERSION: u32 = 1;

/// A whole export.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Export {
    pub format: String,
    pub format_version: u32,
    /// Sorted by document id.
    pub documents: Vec<DocumentState>,
}

/// Why an export or import failed.
#[derive(Debug, thiserror::Error)]
pub enum ArchiveError {
    #[error(transparent)]
    Storage(#[from] StorageError),
    #[error(transparent)]
    Recovery(#[from] RecoveryError),
    /// Export of a directory that holds no database.
    #[error("{0} holds no Concord database ({DB_FILE_NAME})")]
    NoDatabase(PathBuf),
    /// The import file is not JSON of the expected shape.
    #[error("not a Concord export: {0}")]
    Json(#[from] serde_json::Error),
    /// The import file is well-formed JSON but not importable.
    #[error("not importable: {0}")]
    Format(String),
    #[error("writing the export: {0}")]
    Io(#[from] std::io::Error),
}

/// Limits for re-applying logged patches: they were accepted under the
/// server's limits once, whatever those were; checking again could only
/// disagree with a differently configured server.
fn replay_limits() -> Limits {
    Limits { json_depth_max: usize::MAX, doc_size_bytes_max: usize::MAX, ..Limits::default() }
}

/// Reads every document in `data_dir` at its newest durable version.
pub fn export(data_dir: &Path) -> Result<Export, ArchiveError> {
    if !data_dir.join(DB_FILE_NAME).is_file() {
        return Err(ArchiveError::NoDatabase(data_dir.to_owned()));
    }
    let options = SqliteOptions {
        sync: SyncMode::Full,
        history_retained_commits: u64::MAX,
        snapshot_spacing_commits: crate::config::SNAPSHOT_EVERY_COMMITS,
        limits: replay_limits(),
    };
    let mut storage = SqliteStorage::open(data_dir, options)?;
    let recovered = storage.recover(0)?;
    let mut store = Store::new(replay_limits());
    let mut documents = Vec::with_capacity(recovered.docs.len());
    for doc in recovered.docs {
        store.restore(doc.doc.clone(), doc.snapshot, doc.snapshot_version);
        for change in &doc.tail {
            store.replay(change).map_err(RecoveryError::from)?;
        }
        let (value, version) = store.get(&doc.doc);
        documents.push(DocumentState { doc: doc.doc, version, value });
    }
    documents.sort_by(|a, b| a.doc.cmp(&b.doc));
    Ok(Export { format: EXPORT_FORMAT.into(), format_version: EXPORT_FORMAT_VERSION, documents })
}

/// Writes `export` as JSON to `out`.
pub fn write_export(export: &Export, out: impl Write) -> Result<(), ArchiveError> {
    let mut out = std::io::BufWriter::new(out);
    serde_json::to_writer(&mut out, export)?;
    out.write_all(b"\n")?;
    out.flush()?;
    Ok(())
}

/// Parses an export file's contents.
pub fn read_export(text: &str) -> Result<Export, ArchiveError> {
    let export: Export = serde_json::from_str(text)?;
    if export.format != EXPORT_FORMAT || export.format_version != EXPORT_FORMAT_VERSION {
        return Err(ArchiveError::Format(format!(
            "format {:?} version {}; this build reads {EXPORT_FORMAT:?} version \
             {EXPORT_FORMAT_VERSION}",
            export.format, export.format_version
        )));
    }
    Ok(export)
}

/// Adds the documents of `export` to `data_dir` (created if missing);
/// returns how many were imported. Fails, importing nothing, if a server
/// holds the directory or any document already exists there.
pub fn import(data_dir: &Path, export: &Export) -> Result<usize, ArchiveError> {
    let mut seen = HashSet::new();
    let mut documents = Vec::with_capacity(export.documents.len());
    for state in &export.documents {
        if !seen.insert(&state.doc) {
            return Err(ArchiveError::Format(format!("{} appears twice", state.doc)));
        }
        if state.version == Version::ZERO {
            // A document at version 0 is `{}` by definition: nothing to add.
            if state.value != Value::Object(Default::default()) {
                return Err(ArchiveError::Format(format!(
                    "{} is at version 0 but not {{}}",
                    state.doc
                )));
            }
            continue;
        }
        documents.push(state.clone());
    }
    let data_dir = DataDir::lock(data_dir)?;
    let options = SqliteOptions {
        sync: SyncMode::Full,
        history_retained_commits: u64::MAX,
        snapshot_spacing_commits: crate::config::SNAPSHOT_EVERY_COMMITS,
        limits: replay_limits(),
    };
    let mut storage = SqliteStorage::open(data_dir.path(), options)?;
    storage.import(&documents)?;
    Ok(documents.len())
}

#[cfg(test)]
mod tests {
    use concord_engine::DocId;
    use serde_json::json;

    use super::*;

    #[test]
    fn an_import_refuses_duplicates_and_a_locked_directory() {
        let dir = tempfile::tempdir().unwrap();
        let state = |doc: &str, version: u64, value: Value| DocumentState {
            doc: DocId::parse(doc).unwrap(),
            version: Version(version),
            value,
        };
        let export = Export {
            format: EXPORT_FORMAT.into(),
            format_version: EXPORT_FORMAT_VERSION,
            documents: vec![state("a", 3, json!({"x": 1})), state("b", 0, json!({}))],
        };
        assert_eq!(import(dir.path(), &export).unwrap(), 1);
        let twice = Export {
            documents: vec![state("c", 1, json!(1)), state("c", 2, json!(2))],
            ..export.clone()
        };
        assert!(matches!(import(dir.path(), &twice), Err(ArchiveError::Format(_))));
        assert!(matches!(
            import(dir.path(), &export),
            Err(ArchiveError::Storage(StorageError::AlreadyExists(_)))
        ));
        let held = DataDir::lock(dir.path()).unwrap();
        let fresh = Export { documents: vec![state("z", 1, json!(1))], ..export.clone() };
        assert!(matches!(
            import(dir.path(), &fresh),
            Err(ArchiveError::Storage(StorageError::Locked(_)))
        ));
        drop(held);
        let exported = export_round_trip(dir.path());
        assert_eq!(exported.documents, vec![state("a", 3, json!({"x": 1}))]);
    }

    fn export_round_trip(dir: &Path) -> Export {
        let mut bytes = Vec::new();
        write_export(&export(dir).unwrap(), &mut bytes).unwrap();
        read_export(std::str::from_utf8(&bytes).unwrap()).unwrap()
    }
}
