//! The embedded backend: one SQLite file in WAL mode.
//!
//! Tables: `log` (one row per committed change; `seq`, the rowid, is the
//! global commit order, so a group commit appends to the end of the table)
//! with an index on `(doc, version)`, and `snapshots` (a document's value at
//! a version). Small pages keep a group commit's write small: it dirties
//! the table's last page and one index page per document it touches, and
//! each dirty page goes to the WAL whole. A snapshot lets
//! restart skip everything before it. When a snapshot is saved, the newest
//! snapshot at least `history_retained_commits` versions older becomes the
//! document's history base, and the log and snapshots before that base are
//! deleted: history stays readable for at least the last
//! `history_retained_commits` versions of every document.
//!
//! Every pragma that matters is set explicitly rather than trusting SQLite's
//! compile-time defaults.

use std::path::Path;

use concord_engine::patch;
use concord_engine::{Change, DocId, Limits, Patch, Pointer, TxId, Version};
use rusqlite::{params, Connection, OptionalExtension};
use serde_json::Value;

use super::{DocumentState, LogEntry, Recovered, RecoveredDoc, Storage, StorageError, SyncMode};

/// Name of the database file inside the data directory.
pub const DB_FILE_NAME: &str = "concord.sqlite3";
/// The schema this build writes, kept in `PRAGMA user_version`.
pub const SCHEMA_VERSION: i64 = 1;
/// Marks the file as Concord's (`PRAGMA application_id`, "CNCD").
const APPLICATION_ID: i64 = 0x434e_4344;
/// Past this size the WAL file is truncated after a checkpoint, so a burst
/// does not leave a huge file behind.
const WAL_SIZE_LIMIT_BYTES: i64 = 64 * 1024 * 1024;
/// How long a connection waits for another one's lock (the history reader
/// against the writer's checkpoint) before failing.
const BUSY_TIMEOUT_MS: i64 = 5_000;
/// Database page size, fixed when the file is created. A group commit
/// writes every page it dirties whole, so small pages keep its write (and
/// its fsync) small: with `examples/bench_append.rs` on the development
/// machine, 1 KiB pages made a 12-commit append about 20% faster than 4 KiB
/// ones.
const PAGE_BYTES: i64 = 1024;
/// Page cache per connection (SQLite's default is 2 MiB).
const CACHE_BYTES: i64 = 64 * 1024 * 1024;
/// Reads go through a memory map up to this size instead of a `read` call
/// per page, which is what makes a restart's reads cheap.
const MMAP_BYTES: i64 = 1024 * 1024 * 1024;

/// How to open the database.
#[derive(Debug, Clone, Copy)]
pub struct SqliteOptions {
    pub sync: SyncMode,
    /// Versions of each document kept readable through `document_at`.
    pub history_retained_commits: u64,
    /// Snapshots of a document closer together than this many versions are
    /// thinned out (the newest is always kept), so a document snapshotted
    /// often does not fill the disk with copies, while a history read still
    /// re-applies at most about twice this many changes.
    pub snapshot_spacing_commits: u64,
    /// The limits documents were committed under; history reads re-apply
    /// patches with them.
    pub limits: Limits,
}

/// The SQLite backend.
#[derive(Debug)]
pub struct SqliteStorage {
    conn: Connection,
    options: SqliteOptions,
}

impl SqliteStorage {
    /// Opens (creating if needed) the database in `dir`, which must exist.
    pub fn open(dir: &Path, options: SqliteOptions) -> Result<Self, StorageError> {
        let conn = Connection::open(dir.join(DB_FILE_NAME))?;
        conn.pragma_update(None, "busy_timeout", BUSY_TIMEOUT_MS)?;
        // Before anything creates the file; ignored for an existing one.
        conn.pragma_update(None, "page_size", PAGE_BYTES)?;
        conn.pragma_update(None, "journal_mode", "WAL")?;
        conn.pragma_update(None, "synchronous", synchronous(options.sync))?;
        conn.pragma_update(None, "journal_size_limit", WAL_SIZE_LIMIT_BYTES)?;
        // A negative cache size is in KiB.
        conn.pragma_update(None, "cache_size", -(CACHE_BYTES / 1024))?;
        conn.pragma_update(None, "mmap_size", MMAP_BYTES)?;
        // SQLite would checkpoint inside the COMMIT that crosses its
        // threshold, stalling that group's acknowledgements; the storage
        // thread calls `checkpoint` after releasing them instead.
        conn.pragma_update(None, "wal_autocheckpoint", 0)?;
        let version: i64 = conn.pragma_query_value(None, "user_version", |row| row.get(0))?;
        if version != 0 && version != SCHEMA_VERSION {
            return Err(StorageError::Schema(version));
        }
        conn.execute_batch(
            "CREATE TABLE IF NOT EXISTS log (
                 seq INTEGER PRIMARY KEY,
                 doc TEXT NOT NULL,
                 version INTEGER NOT NULL,
                 tx_id TEXT NOT NULL,
                 patch TEXT NOT NULL,
                 base INTEGER NOT NULL,
                 reads TEXT NOT NULL,
                 time_ms INTEGER NOT NULL,
                 author TEXT NOT NULL,
                 UNIQUE (doc, version)
             );
             CREATE TABLE IF NOT EXISTS snapshots (
                 doc TEXT NOT NULL,
                 version INTEGER NOT NULL,
                 value TEXT NOT NULL,
                 PRIMARY KEY (doc, version)
             ) WITHOUT ROWID;",
        )?;
        if version == 0 {
            conn.pragma_update(None, "application_id", APPLICATION_ID)?;
            conn.pragma_update(None, "user_version", SCHEMA_VERSION)?;
        }
        let history_retained_commits = options.history_retained_commits.max(1);
        Ok(Self { conn, options: SqliteOptions { history_retained_commits, ..options } })
    }
}

fn synchronous(sync: SyncMode) -> &'static str {
    match sync {
        // In WAL mode FULL syncs the WAL at every commit; NORMAL would not.
        SyncMode::Full => "FULL",
        SyncMode::Off => "OFF",
    }
}

fn latest_snapshot(
    conn: &Connection,
    doc: &str,
    at_most: u64,
) -> Result<Option<(u64, Value)>, StorageError> {
    let row: Option<(i64, String)> = conn
        .prepare_cached(
            "SELECT version, value FROM snapshots WHERE doc = ?1 AND version <= ?2
             ORDER BY version DESC LIMIT 1",
        )?
        .query_row(params![doc, to_sql(at_most)], |row| Ok((row.get(0)?, row.get(1)?)))
        .optional()?;
    row.map(|(version, value)| {
        let version = from_sql(version);
        let value = serde_json::from_str(&value).map_err(|e| bad_row(doc, version, e))?;
        Ok((version, value))
    })
    .transpose()
}

/// The changes of `doc` in `after+1..=up_to`: only what replay needs.
fn changes(
    conn: &Connection,
    doc: &DocId,
    after: u64,
    up_to: u64,
) -> Result<Vec<Change>, StorageError> {
    let mut statement = conn.prepare_cached(
        "SELECT version, tx_id, patch FROM log
         WHERE doc = ?1 AND version > ?2 AND version <= ?3 ORDER BY version",
    )?;
    let mut rows = statement.query(params![doc.as_str(), to_sql(after), to_sql(up_to)])?;
    let mut changes = Vec::new();
    while let Some(row) = rows.next()? {
        let version = from_sql(row.get(0)?);
        let bad = |e: &dyn std::fmt::Display| bad_row(doc.as_str(), version, e);
        let tx_id =
            TxId::parse(row.get_ref(1)?.as_str().map_err(|e| bad(&e))?).map_err(|e| bad(&e))?;
        let patch: Patch = serde_json::from_str(row.get_ref(2)?.as_str().map_err(|e| bad(&e))?)
            .map_err(|e| bad(&e))?;
        changes.push(Change { doc: doc.clone(), version: Version(version), tx_id, patch });
    }
    Ok(changes)
}

/// The full log entries of `doc` in `after+1..=up_to`.
fn entries(
    conn: &Connection,
    doc: &DocId,
    after: u64,
    up_to: u64,
) -> Result<Vec<LogEntry>, StorageError> {
    let mut statement = conn.prepare_cached(
        "SELECT version, tx_id, patch, base, reads, time_ms, author FROM log
         WHERE doc = ?1 AND version > ?2 AND version <= ?3 ORDER BY version",
    )?;
    let mut rows = statement.query(params![doc.as_str(), to_sql(after), to_sql(up_to)])?;
    let mut entries = Vec::new();
    while let Some(row) = rows.next()? {
        let version = from_sql(row.get(0)?);
        let bad = |e: &dyn std::fmt::Display| bad_row(doc.as_str(), version, e);
        let tx_id =
            TxId::parse(row.get_ref(1)?.as_str().map_err(|e| bad(&e))?).map_err(|e| bad(&e))?;
        let patch: Patch = serde_json::from_str(row.get_ref(2)?.as_str().map_err(|e| bad(&e))?)
            .map_err(|e| bad(&e))?;
        let reads: Vec<Pointer> =
            serde_json::from_str(row.get_ref(4)?.as_str().map_err(|e| bad(&e))?)
                .map_err(|e| bad(&e))?;
        entries.push(LogEntry {
            change: Change { doc: doc.clone(), version: Version(version), tx_id, patch },
            base: Version(from_sql(row.get(3)?)),
            reads,
            time_ms: from_sql(row.get(5)?),
            author: row.get(6)?,
        });
    }
    Ok(entries)
}

/// Every document with a snapshot or a log row. The log side walks the
/// `(doc, version)` index one distinct document at a time (a skip scan), so
/// listing costs O(documents), not O(log rows): restart time must not grow
/// with the length of the retained history.
fn doc_ids(conn: &Connection) -> Result<Vec<String>, StorageError> {
    let mut statement = conn.prepare(
        "WITH RECURSIVE docs(doc) AS (
             SELECT MIN(doc) FROM log
             UNION ALL
             SELECT (SELECT MIN(doc) FROM log WHERE doc > docs.doc) FROM docs
             WHERE docs.doc IS NOT NULL
         )
         SELECT doc FROM docs WHERE doc IS NOT NULL
         UNION
         SELECT DISTINCT doc FROM snapshots",
    )?;
    let docs = statement.query_map([], |row| row.get(0))?.collect::<Result<_, _>>()?;
    Ok(docs)
}

/// True when `doc` has any row at all.
fn exists(conn: &Connection, doc: &str) -> Result<bool, StorageError> {
    let found: Option<i64> = conn
        .query_row(
            "SELECT 1 WHERE EXISTS (SELECT 1 FROM log WHERE doc = ?1)
                         OR EXISTS (SELECT 1 FROM snapshots WHERE doc = ?1)",
            params![doc],
            |row| row.get(0),
        )
        .optional()?;
    Ok(found.is_some())
}

impl Storage for SqliteStorage {
    fn append(&mut self, entries: &[LogEntry]) -> Result<(), StorageError> {
        let tx = self.conn.transaction()?;
        {
            let mut insert = tx.prepare_cached(
                "INSERT INTO log (doc, version, tx_id, base, reads, patch, time_ms, author)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
            )?;
            for entry in entries {
                let change = &entry.change;
                let bad = |e: serde_json::Error| bad_row(change.doc.as_str(), change.version.0, e);
                let patch = serde_json::to_string(&change.patch).map_err(bad)?;
                let reads = serde_json::to_string(&entry.reads).map_err(bad)?;
                insert.execute(params![
                    change.doc.as_str(),
                    to_sql(change.version.0),
                    change.tx_id.as_str(),
                    to_sql(entry.base.0),
                    reads,
                    patch,
                    to_sql(entry.time_ms),
                    entry.author,
                ])?;
            }
        }
        // One commit, one fsync of the WAL (with SyncMode::Full) for the group.
        tx.commit()?;
        Ok(())
    }

    fn save_snapshots(&mut self, snapshots: &[DocumentState]) -> Result<(), StorageError> {
        // A snapshot needs no fsync of its own: the WAL is one append-only
        // file, so the next durable append's fsync covers these frames too,
        // and a crash before it at worst loses the snapshot (a longer replay)
        // — a torn one is discarded by the WAL checksums.
        let relaxed = self.options.sync == SyncMode::Full;
        if relaxed {
            self.conn.pragma_update(None, "synchronous", "NORMAL")?;
        }
        let result = self.write_snapshots(snapshots);
        if relaxed {
            self.conn.pragma_update(None, "synchronous", synchronous(SyncMode::Full))?;
        }
        result
    }

    fn recover(&mut self, recent_tx_ids_max: usize) -> Result<Recovered, StorageError> {
        // One read transaction: a consistent view even while a server (or
        // an export of a live data directory) writes.
        let tx = self.conn.transaction()?;
        let mut recovered = Recovered::default();
        for raw in doc_ids(&tx)? {
            let (snapshot_version, snapshot) =
                latest_snapshot(&tx, &raw, u64::MAX >> 1)?.unwrap_or((0, empty()));
            let doc = DocId::parse(&raw).map_err(|e| bad_row(&raw, snapshot_version, e))?;
            let tail = changes(&tx, &doc, snapshot_version, u64::MAX >> 1)?;
            recovered.docs.push(RecoveredDoc {
                doc,
                snapshot,
                snapshot_version: Version(snapshot_version),
                tail,
            });
        }
        {
            let mut statement =
                tx.prepare("SELECT tx_id, doc, version FROM log ORDER BY seq DESC LIMIT ?1")?;
            let limit = i64::try_from(recent_tx_ids_max).unwrap_or(i64::MAX);
            let rows = statement.query_map(params![limit], |row| {
                Ok((row.get::<_, String>(0)?, row.get::<_, String>(1)?, row.get::<_, i64>(2)?))
            })?;
            for row in rows {
                let (tx_id, doc, version) = row?;
                let version = from_sql(version);
                let tx_id = TxId::parse(&tx_id).map_err(|e| bad_row(&doc, version, e))?;
                let doc = DocId::parse(&doc).map_err(|e| bad_row(&doc, version, e))?;
                recovered.recent_tx_ids.push((tx_id, doc, Version(version)));
            }
        }
        tx.commit()?;
        recovered.recent_tx_ids.reverse();
        Ok(recovered)
    }

    fn document_at(
        &mut self,
        doc: &DocId,
        version: Version,
    ) -> Result<Option<Value>, StorageError> {
        let tx = self.conn.transaction()?;
        let (base, mut value) = match latest_snapshot(&tx, doc.as_str(), version.0)? {
            Some(found) => found,
            None => {
                // Without a snapshot at or below `version`, the history must
                // start at the very beginning: `{}` at 0 followed by version 1
                // (an imported or compacted document has neither), or the
                // document was never written at all.
                let first: Option<i64> = tx
                    .query_row(
                        "SELECT MIN(version) FROM log WHERE doc = ?1",
                        params![doc.as_str()],
                        |row| row.get(0),
                    )
                    .optional()?
                    .flatten();
                let from_start = match first {
                    Some(first) => first == 1,
                    None => !exists(&tx, doc.as_str())?,
                };
                if !from_start {
                    return Ok(None);
                }
                (0, empty())
            }
        };
        let changes = changes(&tx, doc, base, version.0)?;
        tx.commit()?;
        // History is readable only where the log is complete from the base.
        let complete = changes.iter().zip(base + 1..).all(|(c, expected)| c.version.0 == expected)
            && changes.last().map_or(base, |c| c.version.0) == version.0;
        if !complete {
            return Ok(None);
        }
        // These patches were applied once under the server's limits; they
        // are re-applied under the same ones.
        let limits = self.options.limits;
        let mut size = patch::encoded_size_estimate(&value, usize::MAX);
        for change in &changes {
            let applied = patch::apply(&mut value, size, &change.patch, &limits)
                .map_err(|e| bad_row(doc.as_str(), change.version.0, e))?;
            size = size.saturating_add_signed(applied.size_delta_bytes as isize);
        }
        Ok(Some(value))
    }

    fn log(
        &mut self,
        doc: &DocId,
        after: Version,
        up_to: Version,
    ) -> Result<Vec<LogEntry>, StorageError> {
        entries(&self.conn, doc, after.0, up_to.0)
    }

    fn checkpoint(&mut self) -> Result<(), StorageError> {
        // PASSIVE never waits for the history reader; what it cannot copy
        // now, the next checkpoint does.
        self.conn.query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |_| Ok(()))?;
        Ok(())
    }

    fn import(&mut self, docs: &[DocumentState]) -> Result<(), StorageError> {
        let tx = self.conn.transaction()?;
        for state in docs {
            if exists(&tx, state.doc.as_str())? {
                return Err(StorageError::AlreadyExists(state.doc.clone()));
            }
            let encoded = serde_json::to_string(&state.value)
                .map_err(|e| bad_row(state.doc.as_str(), state.version.0, e))?;
            tx.execute(
                "INSERT INTO snapshots (doc, version, value) VALUES (?1, ?2, ?3)",
                params![state.doc.as_str(), to_sql(state.version.0), encoded],
            )?;
        }
        tx.commit()?;
        Ok(())
    }
}

impl SqliteStorage {
    fn write_snapshots(&mut self, snapshots: &[DocumentState]) -> Result<(), StorageError> {
        let retained = self.options.history_retained_commits;
        let tx = self.conn.transaction()?;
        for DocumentState { doc, version, value } in snapshots {
            let encoded =
                serde_json::to_string(value).map_err(|e| bad_row(doc.as_str(), version.0, e))?;
            tx.execute(
                "INSERT OR REPLACE INTO snapshots (doc, version, value) VALUES (?1, ?2, ?3)",
                params![doc.as_str(), to_sql(version.0), encoded],
            )?;
            // The newest snapshot at or before the retained window is the
            // base that history reads start from; everything older can go.
            let keep_from = version.0.saturating_sub(retained);
            let base: Option<i64> = tx
                .query_row(
                    "SELECT MAX(version) FROM snapshots WHERE doc = ?1 AND version <= ?2",
                    params![doc.as_str(), to_sql(keep_from)],
                    |row| row.get(0),
                )
                .optional()?
                .flatten();
            if let Some(base) = base {
                tx.execute(
                    "DELETE FROM snapshots WHERE doc = ?1 AND version < ?2",
                    params![doc.as_str(), base],
                )?;
                tx.execute(
                    "DELETE FROM log WHERE doc = ?1 AND version <= ?2",
                    params![doc.as_str(), base],
                )?;
            }
            // The previous snapshot is redundant when the one before it is
            // within the spacing of this one: history reads can start from
            // the older one just as well. (Never the base: it has none before.)
            let previous: Vec<i64> = tx
                .prepare_cached(
                    "SELECT version FROM snapshots WHERE doc = ?1 AND version < ?2
                     ORDER BY version DESC LIMIT 2",
                )?
                .query_map(params![doc.as_str(), to_sql(version.0)], |row| row.get(0))?
                .collect::<Result<_, _>>()?;
            if let [newer, older] = previous[..] {
                let spacing = to_sql(self.options.snapshot_spacing_commits);
                if to_sql(version.0).saturating_sub(older) < spacing {
                    tx.execute(
                        "DELETE FROM snapshots WHERE doc = ?1 AND version = ?2",
                        params![doc.as_str(), newer],
                    )?;
                }
            }
        }
        tx.commit()?;
        Ok(())
    }
}

fn empty() -> Value {
    Value::Object(Default::default())
}

fn bad_row(doc: &str, version: u64, reason: impl std::fmt::Display) -> StorageError {
    StorageError::BadRow { doc: doc.to_owned(), version, reason: reason.to_string() }
}

/// SQLite integers are i64; versions and times stay far below 2^63.
fn to_sql(value: u64) -> i64 {
    i64::try_from(value).unwrap_or(i64::MAX)
}

fn from_sql(value: i64) -> u64 {
    u64::try_from(value).unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use concord_engine::store::Commit;
    use concord_engine::{Store, Transaction};
    use serde_json::json;

    use super::*;

    fn options(history_retained_commits: u64) -> SqliteOptions {
        SqliteOptions {
            sync: SyncMode::Full,
            history_retained_commits,
            snapshot_spacing_commits: 4,
            limits: Limits::default(),
        }
    }

    fn commit_n(store: &mut Store, doc: &DocId, n: u64) -> Vec<LogEntry> {
        (0..n)
            .map(|i| {
                let base = store.version(doc);
                let tx = Transaction {
                    doc: doc.clone(),
                    tx_id: TxId::parse(&format!("t{i}")).unwrap(),
                    base,
                    reads: vec![Pointer::parse("/n").unwrap()],
                    writes: serde_json::from_value(
                        json!([{"op": "incr", "path": "/n", "value": 1}]),
                    )
                    .unwrap(),
                };
                let Commit::Applied { change: Some(change), .. } = store.commit(tx) else {
                    panic!("the commit must apply")
                };
                let reads = vec![Pointer::parse("/n").unwrap()];
                LogEntry { change, base, reads, time_ms: i, author: "test".into() }
            })
            .collect()
    }

    fn snapshot(doc: &DocId, version: u64, value: Value) -> DocumentState {
        DocumentState { doc: doc.clone(), version: Version(version), value }
    }

    #[test]
    fn recovers_snapshot_plus_tail_and_reads_history() {
        let dir = tempfile::tempdir().unwrap();
        let doc = DocId::parse("d").unwrap();
        let mut store = Store::new(Limits::default());
        let entries = commit_n(&mut store, &doc, 20);
        {
            let mut storage = SqliteStorage::open(dir.path(), options(5)).unwrap();
            storage.append(&entries[..12]).unwrap();
            storage.save_snapshots(&[snapshot(&doc, 12, json!({"n": 12}))]).unwrap();
            storage.append(&entries[12..]).unwrap();
        }
        let mut storage = SqliteStorage::open(dir.path(), options(5)).unwrap();
        let recovered = storage.recover(3).unwrap();
        assert_eq!(recovered.docs.len(), 1);
        let rd = &recovered.docs[0];
        assert_eq!((rd.snapshot_version, &rd.snapshot), (Version(12), &json!({"n": 12})));
        let tail: Vec<u64> = rd.tail.iter().map(|c| c.version.0).collect();
        assert_eq!(tail, (13..=20).collect::<Vec<_>>());
        let ids: Vec<&str> = recovered.recent_tx_ids.iter().map(|(t, _, _)| t.as_str()).collect();
        assert_eq!(ids, ["t17", "t18", "t19"]);
        // The full entry, reads included, comes back as it went in.
        let logged = storage.log(&doc, Version(0), Version(20)).unwrap();
        assert_eq!(logged, entries);
        assert_eq!(storage.document_at(&doc, Version(15)).unwrap(), Some(json!({"n": 15})));
        assert_eq!(storage.document_at(&doc, Version(20)).unwrap(), Some(json!({"n": 20})));
        assert_eq!(storage.document_at(&doc, Version(0)).unwrap(), Some(json!({})));
        // With 5 commits retained, the snapshot at 12 compacted nothing yet
        // (no snapshot at or before 7): version 3 is still readable.
        assert_eq!(storage.document_at(&doc, Version(3)).unwrap(), Some(json!({"n": 3})));
        storage.save_snapshots(&[snapshot(&doc, 20, json!({"n": 20}))]).unwrap();
        // Now the base is the snapshot at 12: older history is gone.
        assert_eq!(storage.document_at(&doc, Version(3)).unwrap(), None);
        assert_eq!(storage.document_at(&doc, Version(0)).unwrap(), None);
        assert_eq!(storage.document_at(&doc, Version(12)).unwrap(), Some(json!({"n": 12})));
        assert_eq!(storage.document_at(&doc, Version(16)).unwrap(), Some(json!({"n": 16})));
        assert_eq!(storage.document_at(&doc, Version(21)).unwrap(), None, "not yet written");
        let unknown = DocId::parse("never").unwrap();
        assert_eq!(storage.document_at(&unknown, Version(0)).unwrap(), Some(json!({})));
        assert_eq!(storage.document_at(&unknown, Version(1)).unwrap(), None);
    }

    #[test]
    fn frequent_snapshots_are_thinned_and_history_stays_readable() {
        let dir = tempfile::tempdir().unwrap();
        let doc = DocId::parse("d").unwrap();
        let mut store = Store::new(Limits::default());
        let entries = commit_n(&mut store, &doc, 40);
        let mut storage = SqliteStorage::open(dir.path(), options(1000)).unwrap();
        storage.append(&entries).unwrap();
        for v in 1..=40 {
            storage.save_snapshots(&[snapshot(&doc, v, json!({"n": v}))]).unwrap();
        }
        let versions: Vec<i64> = storage
            .conn
            .prepare("SELECT version FROM snapshots ORDER BY version")
            .unwrap()
            .query_map([], |row| row.get(0))
            .unwrap()
            .collect::<Result<_, _>>()
            .unwrap();
        // Spacing 4: no two kept snapshots but the newest closer than that
        // to the one before the previous, so about one in every 2-4 versions.
        assert!(versions.len() <= 40 / 2 + 2, "{versions:?}");
        assert_eq!(versions.last(), Some(&40), "the newest is always kept");
        assert!(versions.windows(3).all(|w| w[2] - w[0] >= 4), "{versions:?}");
        for v in 0..=40 {
            let value = if v == 0 { json!({}) } else { json!({"n": v}) };
            assert_eq!(storage.document_at(&doc, Version(v)).unwrap(), Some(value), "at {v}");
        }
        assert_eq!(storage.recover(1).unwrap().docs[0].snapshot_version, Version(40));
    }

    #[test]
    fn import_adds_new_documents_only_and_all_or_none() {
        let dir = tempfile::tempdir().unwrap();
        let mut storage = SqliteStorage::open(dir.path(), options(100)).unwrap();
        let a = DocId::parse("a").unwrap();
        let b = DocId::parse("b").unwrap();
        storage.import(&[snapshot(&a, 7, json!({"x": 1}))]).unwrap();
        let again = storage.import(&[snapshot(&b, 1, json!({})), snapshot(&a, 9, json!({}))]);
        assert!(matches!(again, Err(StorageError::AlreadyExists(doc)) if doc == a));
        let recovered = storage.recover(10).unwrap();
        let docs: Vec<(&str, u64)> =
            recovered.docs.iter().map(|d| (d.doc.as_str(), d.snapshot_version.0)).collect();
        assert_eq!(docs, [("a", 7)], "b was not imported: the import is all or none");
        // History before the imported version is unknown, not `{}`.
        assert_eq!(storage.document_at(&a, Version(0)).unwrap(), None);
        assert_eq!(storage.document_at(&a, Version(7)).unwrap(), Some(json!({"x": 1})));
    }

    #[test]
    fn a_database_from_a_newer_schema_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        drop(SqliteStorage::open(dir.path(), options(100)).unwrap());
        let conn = Connection::open(dir.path().join(DB_FILE_NAME)).unwrap();
        conn.pragma_update(None, "user_version", 99).unwrap();
        drop(conn);
        let refused = SqliteStorage::open(dir.path(), options(100));
        assert!(matches!(refused, Err(StorageError::Schema(99))), "{refused:?}");
    }
}
