//! The one reader of a table's commits (`_delta_log/<version>.json`).
//!
//! Everything inlet needs from a commit is read here, once, into a [`LogCommit`]: the
//! `commitInfo` (time, operation, `userMetadata`, and the keys inlet writes into it: a
//! source's ledger or position, a derived table's lineage, a quarantine intent, a replay's
//! record, the quality gate's report), the `txn` actions, and the data files added and
//! removed. No other module parses commit files.
//!
//! Finding "the commit that carries X" is always the same question: which commit carries an
//! application's latest `txn` version. The version itself comes from the table state, which
//! survives checkpoints; the commit that carries it is the newest commit with a `txn` action
//! of that application, since every commit of an application carries one. [`commit_of_txn`]
//! reads backwards from the latest version until it meets that commit, so it reads only the
//! commits other writers made since, and never guesses: a commit file that has expired
//! after a checkpoint ends the search with [`TxnCommit::Expired`], and the caller falls back
//! to its side-file cache (stamped with the `txn` version it holds) or refuses.

use std::ops::RangeInclusive;

use futures::StreamExt;
use serde::Deserialize;
use serde::de::{DeserializeOwned, IgnoredAny};

use crate::error::{EngineError, Result};
use crate::table::Table;

/// Commit files read at once when reading a range or searching backwards.
const READS_AT_ONCE: usize = 8;

/// A data file a commit adds or removes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FileChange {
    /// As written in the log (percent-encoded).
    pub path: String,
    /// `dataChange`: false for files that only move rows (compaction).
    pub data_change: bool,
    /// Bytes, when the action says.
    pub size: Option<i64>,
}

/// What one commit says.
#[derive(Debug, Clone, Default)]
pub struct LogCommit {
    pub version: i64,
    /// Commit time, milliseconds since the epoch.
    pub timestamp_ms: Option<i64>,
    pub operation: Option<String>,
    pub user_metadata: Option<String>,
    /// `txn` actions: application id and version.
    pub txns: Vec<(String, i64)>,
    pub adds: Vec<FileChange>,
    pub removes: Vec<FileChange>,
    /// Whether it changes the table's metadata (schema, properties) or protocol.
    pub changes_table: bool,
    /// The whole `commitInfo`, inlet's keys included.
    info: serde_json::Map<String, serde_json::Value>,
}

/// One line of a commit file: the actions inlet reads; the others are skipped unparsed.
#[derive(Deserialize)]
struct Line {
    add: Option<PathAction>,
    remove: Option<PathAction>,
    txn: Option<TxnAction>,
    #[serde(rename = "metaData")]
    metadata: Option<IgnoredAny>,
    protocol: Option<IgnoredAny>,
    #[serde(rename = "commitInfo")]
    commit_info: Option<serde_json::Map<String, serde_json::Value>>,
}

#[derive(Deserialize)]
struct PathAction {
    path: String,
    #[serde(rename = "dataChange", default = "default_true")]
    data_change: bool,
    #[serde(default)]
    size: Option<i64>,
}

fn default_true() -> bool {
    true
}

#[derive(Deserialize)]
struct TxnAction {
    #[serde(rename = "appId")]
    app_id: String,
    version: i64,
}

impl LogCommit {
    /// Parses a commit file of `table` (newline-delimited actions). A line that is not JSON
    /// is an error naming the table and version: a log inlet cannot read is never guessed at.
    pub fn parse(table: &str, version: i64, bytes: &[u8]) -> Result<LogCommit> {
        let mut commit = LogCommit { version, ..Default::default() };
        for (number, line) in bytes.split(|b| *b == b'\n').enumerate() {
            if line.trim_ascii().is_empty() {
                continue;
            }
            let line: Line = serde_json::from_slice(line).map_err(|e| {
                EngineError::Internal(format!(
                    "commit {version} of `{table}`: line {} is not an action: {e}",
                    number + 1
                ))
            })?;
            if let Some(add) = line.add {
                commit.adds.push(FileChange { path: add.path, data_change: add.data_change, size: add.size });
            }
            if let Some(remove) = line.remove {
                commit.removes.push(FileChange {
                    path: remove.path,
                    data_change: remove.data_change,
                    size: remove.size,
                });
            }
            if line.metadata.is_some() || line.protocol.is_some() {
                commit.changes_table = true;
            }
            if let Some(txn) = line.txn {
                commit.txns.push((txn.app_id, txn.version));
            }
            if let Some(info) = line.commit_info {
                commit.timestamp_ms = info.get("timestamp").and_then(serde_json::Value::as_i64);
                commit.operation = info.get("operation").and_then(|o| o.as_str()).map(str::to_owned);
                commit.user_metadata = info.get("userMetadata").and_then(|u| u.as_str()).map(str::to_owned);
                commit.info = info;
            }
        }
        Ok(commit)
    }

    /// The `txn` version this commit records for `app_id`.
    pub fn txn(&self, app_id: &str) -> Option<i64> {
        self.txns.iter().find(|(app, _)| app == app_id).map(|(_, version)| *version)
    }

    /// The raw value of `commitInfo[key]`.
    pub fn info_value(&self, key: &str) -> Option<&serde_json::Value> {
        self.info.get(key)
    }

    /// `commitInfo[key]` as `T`; `None` when absent, an error naming the table and version
    /// when it is there but not a `T`.
    pub fn info<T: DeserializeOwned>(&self, table: &str, key: &str) -> Result<Option<T>> {
        let Some(value) = self.info.get(key) else {
            return Ok(None);
        };
        T::deserialize(value).map(Some).map_err(|e| {
            EngineError::Internal(format!(
                "commit {} of `{table}`: `commitInfo.{key}` is unreadable: {e}",
                self.version
            ))
        })
    }
}

/// The commit of `version`, `None` when its file is gone (expired after a checkpoint).
pub async fn read(table: &Table, version: i64) -> Result<Option<LogCommit>> {
    match table.commit_bytes(version).await? {
        Some(bytes) => LogCommit::parse(&table.name, version, &bytes).map(Some),
        None => Ok(None),
    }
}

/// The commits of `versions`, oldest first, [`READS_AT_ONCE`] read at a time; `None` for a
/// version whose file is gone.
pub async fn read_range(table: &Table, versions: RangeInclusive<i64>) -> Result<Vec<(i64, Option<LogCommit>)>> {
    futures::stream::iter(versions)
        .map(|version| async move { read(table, version).await.map(|commit| (version, commit)) })
        .buffered(READS_AT_ONCE)
        .collect::<Vec<_>>()
        .await
        .into_iter()
        .collect()
}

/// Where the commit of an application's latest `txn` is.
#[derive(Debug)]
pub enum TxnCommit {
    /// The application never committed to this table.
    Never,
    /// The commit, read.
    Found(Box<LogCommit>),
    /// The commit's file has expired (log cleanup after a checkpoint).
    Expired { txn_version: i64 },
}

/// The commit carrying `app_id`'s latest `txn` version in the loaded version of `table`.
///
/// Reads backwards from the loaded version, [`READS_AT_ONCE`] commits at a time, to the
/// first commit with a `txn` of `app_id`; `after` (a table version known to be older than
/// that commit, e.g. from a cache) ends the search early. The search reads only commits
/// made after the application's last one, so it is short unless other writers were busy,
/// and it cannot run past the log: an expired file ends it.
pub async fn commit_of_txn(table: &Table, app_id: &str, after: Option<i64>) -> Result<TxnCommit> {
    let Some(txn_version) = table.app_version(app_id).await? else {
        return Ok(TxnCommit::Never);
    };
    let Some(latest) = table.version() else {
        return Ok(TxnCommit::Never);
    };
    let floor = after.map_or(0, |v| v + 1).max(0);
    let mut upper = latest;
    while upper >= floor {
        let lower = (upper - READS_AT_ONCE as i64 + 1).max(floor);
        let mut window = read_range(table, lower..=upper).await?;
        window.reverse();
        for (_, commit) in window {
            let Some(commit) = commit else {
                return Ok(TxnCommit::Expired { txn_version });
            };
            match commit.txn(app_id) {
                Some(version) if version == txn_version => return Ok(TxnCommit::Found(Box::new(commit))),
                Some(version) => {
                    return Err(EngineError::Ledger {
                        table: table.name.clone(),
                        app_id: app_id.to_owned(),
                        message: format!(
                            "the table state says `txn` {txn_version} but its newest commit with a `txn` of this \
                             application (version {}) has {version}",
                            commit.version
                        ),
                    });
                }
                None => {}
            }
        }
        upper = lower - 1;
    }
    // Searched down to `after`: the cache that gave it claimed too much.
    Ok(TxnCommit::Expired { txn_version })
}

/// What happened to a table between two versions.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Changes {
    /// Data files added, in commit order, paths as written in the log.
    pub added: Vec<String>,
    /// Whether the rows added are not simply the new rows: a commit removed data
    /// (overwrite, merge, delete), or a file added was since compacted away.
    pub rewrites: bool,
}

/// Data files added after `version` up to the loaded version of `table`; `None` when a
/// commit in between is no longer in the log (expired after a checkpoint), or the table
/// was recreated since (its versions start again).
pub async fn changes_since(table: &Table, version: i64) -> Result<Option<Changes>> {
    let mut changes = Changes::default();
    let Some(latest) = table.version() else {
        return Ok(Some(changes));
    };
    if latest < version {
        return Ok(None);
    }
    let mut removed = std::collections::HashSet::new();
    for (_, commit) in read_range(table, (version + 1)..=latest).await? {
        let Some(commit) = commit else {
            return Ok(None);
        };
        changes.added.extend(commit.adds.into_iter().filter(|a| a.data_change).map(|a| a.path));
        for remove in commit.removes {
            changes.rewrites |= remove.data_change;
            removed.insert(remove.path);
        }
    }
    // A compaction removes without changing data, but the rows of the files it removed
    // now sit in files that also hold old rows.
    changes.rewrites |= changes.added.iter().any(|a| removed.contains(a) || removed.contains(&percent_decode(a)));
    Ok(Some(changes))
}

/// Decodes `%xx` escapes of a path as written in the log.
pub(crate) fn percent_decode(path: &str) -> String {
    percent_encoding::percent_decode_str(path).decode_utf8_lossy().into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    const COMMIT: &[u8] = br#"{"commitInfo":{"timestamp":1700000000000,"operation":"WRITE","userMetadata":"hi","inlet":{"app_id":"inlet.a","txn_version":3}}}
{"txn":{"appId":"inlet.a","version":3,"lastUpdated":1}}
{"add":{"path":"x%20y.parquet","size":1,"dataChange":true,"stats":"{\"numRecords\":2}"}}
{"remove":{"path":"old.parquet","dataChange":false}}
{"cdc":{"path":"_change_data/c.parquet","size":1,"dataChange":false}}
{"metaData":{"id":"t"}}

"#;

    #[test]
    fn reads_what_a_commit_says() {
        let commit = LogCommit::parse("bronze.a", 4, COMMIT).unwrap();
        assert_eq!(commit.version, 4);
        assert_eq!(commit.timestamp_ms, Some(1_700_000_000_000));
        assert_eq!(commit.operation.as_deref(), Some("WRITE"));
        assert_eq!(commit.user_metadata.as_deref(), Some("hi"));
        assert_eq!(commit.txn("inlet.a"), Some(3));
        assert_eq!(commit.txn("inlet.b"), None);
        assert_eq!(commit.adds, vec![FileChange { path: "x%20y.parquet".into(), data_change: true, size: Some(1) }]);
        assert_eq!(commit.removes, vec![FileChange { path: "old.parquet".into(), data_change: false, size: None }]);
        assert!(commit.changes_table);
        assert!(!LogCommit::parse("bronze.a", 5, br#"{"add":{"path":"a","dataChange":true}}"#).unwrap().changes_table);
        assert!(commit.info_value("inlet").is_some());
        #[derive(Deserialize)]
        struct Inlet {
            txn_version: i64,
        }
        assert_eq!(commit.info::<Inlet>("bronze.a", "inlet").unwrap().unwrap().txn_version, 3);
        assert!(commit.info::<Inlet>("bronze.a", "absent").unwrap().is_none());
        // Present but of another shape: an error, not a silent `None`.
        assert!(commit.info::<Vec<i64>>("bronze.a", "inlet").is_err());
    }

    /// A table in a temporary directory, and a way to commit to it as an application.
    struct Scratch {
        dir: tempfile::TempDir,
        table: Table,
    }

    impl Scratch {
        async fn new() -> Scratch {
            let dir = tempfile::tempdir().unwrap();
            let url = url::Url::from_directory_path(dir.path()).unwrap();
            let table = Table::open("bronze.t", url).await.unwrap();
            Scratch { dir, table }
        }

        /// A commit of no rows by `app` at `txn`, with `commitInfo[key] = value`.
        async fn commit(&mut self, app: &str, txn: i64, key: &str, value: serde_json::Value) -> i64 {
            let schema = std::sync::Arc::new(arrow::datatypes::Schema::new(vec![arrow::datatypes::Field::new(
                "id",
                arrow::datatypes::DataType::Int64,
                true,
            )]));
            self.table
                .commit(crate::table::Commit {
                    adds: Vec::new(),
                    removes: Vec::new(),
                    cdc: Vec::new(),
                    partition_by: Vec::new(),
                    change_data_feed: false,
                    deletion_vectors: false,
                    operation: crate::table::CommitKind::Append,
                    schema: (!self.table.exists()).then_some(schema),
                    app_id: app.to_owned(),
                    app_version: txn,
                    metadata: std::collections::HashMap::from([(key.to_owned(), value)]),
                })
                .await
                .unwrap()
        }

        fn expire(&self, version: i64) {
            std::fs::remove_file(self.dir.path().join(format!("_delta_log/{version:020}.json"))).unwrap();
        }
    }

    #[tokio::test]
    async fn the_commit_of_a_txn_is_found_past_other_writers_and_checkpoints() {
        let mut scratch = Scratch::new().await;
        assert!(matches!(commit_of_txn(&scratch.table, "a", None).await.unwrap(), TxnCommit::Never));
        scratch.commit("a", 0, "mark", serde_json::json!("a0")).await;
        for txn in 0..5 {
            scratch.commit("b", txn, "mark", serde_json::json!(format!("b{txn}"))).await;
        }
        let a1 = scratch.commit("a", 1, "mark", serde_json::json!("a1")).await;
        // More other writers than READS_AT_ONCE, so the search takes several windows.
        for txn in 5..17 {
            scratch.commit("b", txn, "mark", serde_json::json!(format!("b{txn}"))).await;
        }
        let found = |outcome: TxnCommit| match outcome {
            TxnCommit::Found(commit) => (commit.version, commit.info_value("mark").cloned()),
            other => panic!("{other:?}"),
        };
        assert_eq!(found(commit_of_txn(&scratch.table, "a", None).await.unwrap()), (a1, Some(serde_json::json!("a1"))));
        assert_eq!(found(commit_of_txn(&scratch.table, "b", None).await.unwrap()).1, Some(serde_json::json!("b16")));
        // The table keeps the versions it looked up only for the state they are of.
        assert_eq!(scratch.table.app_version("b").await.unwrap(), Some(16));
        scratch.commit("b", 17, "mark", serde_json::json!("b17")).await;
        assert_eq!(scratch.table.app_version("b").await.unwrap(), Some(17));
        // A checkpoint keeps the `txn` versions; the commits it covers are still read.
        scratch.table.checkpoint().await.unwrap();
        let reopened = Table::open("bronze.t", scratch.table.url.clone()).await.unwrap();
        assert_eq!(found(commit_of_txn(&reopened, "a", None).await.unwrap()).0, a1);
        // Once a's commit has expired, the search says so instead of guessing.
        scratch.expire(a1);
        let reopened = Table::open("bronze.t", scratch.table.url.clone()).await.unwrap();
        assert_eq!(reopened.app_version("a").await.unwrap(), Some(1));
        assert!(matches!(commit_of_txn(&reopened, "a", None).await.unwrap(), TxnCommit::Expired { txn_version: 1 }));
        // b's commit is still there.
        assert_eq!(found(commit_of_txn(&reopened, "b", None).await.unwrap()).1, Some(serde_json::json!("b17")));
        // A search bounded below the commit finds nothing: expired, not another commit.
        assert!(matches!(
            commit_of_txn(&reopened, "b", Some(reopened.version().unwrap())).await.unwrap(),
            TxnCommit::Expired { .. }
        ));
        let changes = changes_since(&reopened, 0).await.unwrap();
        assert_eq!(changes, None, "a commit in between expired");
    }

    #[tokio::test]
    async fn an_extractors_position_survives_log_cleanup_through_its_cache_and_is_refused_without_it() {
        use crate::ingest::position::{COMMIT_INFO_KEY, Cursor};
        let mut scratch = Scratch::new().await;
        let record = |txn: i64, cursor: &str| serde_json::json!({"app_id": "inlet.api", "txn_version": txn, "load_id": "L", "position": {"cursor": cursor}});
        scratch.commit("inlet.api", 0, COMMIT_INFO_KEY, record(0, "c0")).await;
        let first = scratch.commit("inlet.api", 1, COMMIT_INFO_KEY, record(1, "c1")).await;
        scratch.commit("other", 0, "mark", serde_json::json!("x")).await;
        let cursor = Cursor::load(&scratch.table, "inlet.api").await.unwrap();
        assert_eq!((cursor.txn_version, cursor.position.clone()), (1, Some(serde_json::json!({"cursor": "c1"}))));
        assert!(!cursor.cached);
        cursor.save(&scratch.table, "inlet.api").await.unwrap();
        // After a checkpoint and the cleanup of the commit, the cache holds the position.
        scratch.table.checkpoint().await.unwrap();
        scratch.expire(first);
        let reopened = Table::open("bronze.t", scratch.table.url.clone()).await.unwrap();
        let cached = Cursor::load(&reopened, "inlet.api").await.unwrap();
        assert!(cached.cached);
        assert_eq!(cached.position, Some(serde_json::json!({"cursor": "c1"})));
        // A newer commit: read from the log, past the cache.
        let mut scratch = Scratch { dir: scratch.dir, table: reopened };
        let second = scratch.commit("inlet.api", 2, COMMIT_INFO_KEY, record(2, "c2")).await;
        scratch.commit("other", 1, "mark", serde_json::json!("y")).await;
        let newer = Cursor::load(&scratch.table, "inlet.api").await.unwrap();
        assert_eq!(newer.position, Some(serde_json::json!({"cursor": "c2"})));
        // That commit expires too before the cache caught up: refused, never guessed.
        scratch.table.checkpoint().await.unwrap();
        scratch.expire(second);
        let reopened = Table::open("bronze.t", scratch.table.url.clone()).await.unwrap();
        let err = Cursor::load(&reopened, "inlet.api").await.unwrap_err();
        assert!(err.to_string().contains("cannot be proven"), "{err}");
    }

    #[test]
    fn a_line_that_is_not_an_action_is_an_error_naming_the_commit() {
        let err = LogCommit::parse("bronze.a", 9, b"{\"add\":{\"path\":\"a\"}}\nnot json\n").unwrap_err();
        assert!(err.to_string().contains("commit 9 of `bronze.a`: line 2"), "{err}");
    }
}
