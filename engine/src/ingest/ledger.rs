//! The file ledger: which files of a source are in its table, kept in the table itself.
//!
//! Each commit of a source carries a Delta `txn` action (app id `inlet.<source>`, version
//! counting the source's commits) and, in `commitInfo["inlet"]`, the ledger entries of the
//! files it ingested. Both are written in the one atomic commit that adds the rows, so the
//! ledger can never disagree with the data.
//!
//! Checkpoints keep `txn` but drop `commitInfo`, and old JSON commits expire. So after a run
//! the ledger is also written as a snapshot beside the table
//! (`_inlet/ledger/<app id>.json`), stamped with the `txn` version and table version it
//! covers. Loading reads the snapshot and replays only the commits after it; the `txn`
//! version in the table state says whether anything is missing. The snapshot is a cache:
//! when it is behind, ahead (table restored) or of another table, it is reconciled or
//! rebuilt from the log, and a ledger that cannot be proven complete is an error, never a
//! guess.

use std::collections::HashMap;

use serde::{Deserialize, Serialize};

use super::position::{COMMIT_INFO_KEY, SourceCommit};
use crate::error::{EngineError, Result};
use crate::source::SourceFile;
use crate::table::Table;

/// One ingested file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LedgerEntry {
    pub path: String,
    pub size_bytes: u64,
    pub modified_micros: i64,
    /// Entity tag of the object ingested, when its store has them.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub etag: Option<String>,
    /// Rows written to the table.
    pub rows: u64,
    /// Records sent to quarantine.
    pub quarantined: u64,
    pub load_id: String,
    /// `txn` version of the commit that ingested the file.
    pub txn_version: i64,
    /// Table version of that commit (filled in when read back from the log).
    #[serde(default)]
    pub table_version: i64,
    /// When the run started, microseconds since the Unix epoch.
    pub ingested_at_micros: i64,
}

/// The ledger snapshot file.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Snapshot {
    format: u32,
    app_id: String,
    table_id: String,
    txn_version: i64,
    table_version: i64,
    entries: Vec<LedgerEntry>,
}

/// What the ledger says about a listed file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FileStatus {
    /// Not ingested yet.
    New,
    /// Ingested with the same size and entity tag, or (for stores without entity tags)
    /// modification time.
    Ingested,
    /// Ingested, but it has changed since.
    Changed { previous: LedgerEntry },
}

/// Whether a listed file is the version a ledger entry ingested: by entity tag when both
/// have one (an object rewritten with the same bytes keeps it, whatever its new time), else
/// by modification time (local files, and entries written before tags were kept).
fn same_version(entry: &LedgerEntry, file: &SourceFile) -> bool {
    match (&entry.etag, &file.etag) {
        (Some(ingested), Some(listed)) => ingested == listed,
        _ => entry.modified_micros == file.modified_micros,
    }
}

/// All entries of one source, with the latest entry per path.
#[derive(Debug, Clone, Default)]
pub struct Ledger {
    pub app_id: String,
    /// `txn` version covered.
    pub txn_version: i64,
    /// Table version covered.
    pub table_version: i64,
    entries: Vec<LedgerEntry>,
    latest: HashMap<String, usize>,
    /// Whether the snapshot on storage says exactly this (nothing was replayed).
    pub snapshot_current: bool,
}

impl Ledger {
    fn new(app_id: &str) -> Self {
        Ledger { app_id: app_id.to_owned(), txn_version: -1, table_version: -1, ..Default::default() }
    }

    fn push(&mut self, entry: LedgerEntry) {
        self.latest.insert(entry.path.clone(), self.entries.len());
        self.entries.push(entry);
    }

    /// Every entry, oldest first (a file ingested again after a change appears twice).
    pub fn entries(&self) -> &[LedgerEntry] {
        &self.entries
    }

    /// How a listed file relates to what was ingested.
    pub fn status(&self, file: &SourceFile) -> FileStatus {
        match self.latest.get(&file.path).map(|&i| &self.entries[i]) {
            None => FileStatus::New,
            Some(entry) if entry.size_bytes == file.size_bytes && same_version(entry, file) => FileStatus::Ingested,
            Some(entry) => FileStatus::Changed { previous: entry.clone() },
        }
    }

    /// Adds the entries of a commit this run made.
    pub fn record(&mut self, commit: &SourceCommit, table_version: i64) {
        for entry in &commit.files {
            let mut entry = entry.clone();
            entry.table_version = table_version;
            self.push(entry);
        }
        self.txn_version = commit.txn_version;
        self.table_version = table_version;
    }

    /// Loads the ledger of `app_id` for `table`: snapshot plus the commits after it.
    pub async fn load(table: &Table, app_id: &str) -> Result<Ledger> {
        let Some(table_version) = table.version() else {
            return Ok(Ledger::new(app_id));
        };
        let txn_version = table.app_version(app_id).await?.unwrap_or(-1);
        let table_id = table.id().unwrap_or_default();
        let snapshot = match table.read_side_file(&snapshot_path(app_id)).await? {
            Some(bytes) => serde_json::from_slice::<Snapshot>(&bytes).ok(),
            None => None,
        };
        let mut ledger = Ledger::new(app_id);
        if let Some(snapshot) = snapshot.filter(|s| {
            s.format == 1
                && s.app_id == app_id
                && s.table_id == table_id
                && s.txn_version <= txn_version
                && s.table_version <= table_version
        }) {
            for entry in snapshot.entries {
                ledger.push(entry);
            }
            ledger.txn_version = snapshot.txn_version;
            ledger.table_version = snapshot.table_version;
        }
        if ledger.txn_version == txn_version {
            ledger.snapshot_current = ledger.txn_version >= 0;
            return Ok(ledger);
        }
        for (version, commit) in crate::log::read_range(table, (ledger.table_version + 1)..=table_version).await? {
            let Some(commit) = commit else {
                return Err(EngineError::Ledger {
                    table: table.name.clone(),
                    app_id: app_id.to_owned(),
                    message: format!(
                        "commit {version} is needed (ledger covers `txn` {} of {txn_version}) but its log file has expired; \
                         the ledger snapshot under `_inlet/ledger/` was removed or is stale",
                        ledger.txn_version
                    ),
                });
            };
            // Only this source's commits (its `txn` in them) are read: another writer's
            // commit information is none of the ledger's business.
            if commit.txn(app_id).is_none() {
                continue;
            }
            if let Some(source) = commit.info::<SourceCommit>(&table.name, COMMIT_INFO_KEY)?
                && source.app_id == app_id
            {
                ledger.record(&source, version);
            }
        }
        if ledger.txn_version != txn_version {
            return Err(EngineError::Ledger {
                table: table.name.clone(),
                app_id: app_id.to_owned(),
                message: format!(
                    "the log holds ledger entries up to `txn` {} but the table state says {txn_version}",
                    ledger.txn_version
                ),
            });
        }
        ledger.table_version = table_version;
        Ok(ledger)
    }

    /// Writes the snapshot, so the next load replays no old commits.
    pub async fn save(&self, table: &Table) -> Result<()> {
        let snapshot = Snapshot {
            format: 1,
            app_id: self.app_id.clone(),
            table_id: table.id().unwrap_or_default(),
            txn_version: self.txn_version,
            table_version: self.table_version,
            entries: self.entries.clone(),
        };
        let bytes =
            serde_json::to_vec(&snapshot).map_err(|e| EngineError::Internal(format!("serialising ledger: {e}")))?;
        table.write_side_file(&snapshot_path(&self.app_id), bytes).await
    }
}

fn snapshot_path(app_id: &str) -> String {
    super::position::side_file("_inlet/ledger", app_id)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(path: &str, size: u64, txn: i64) -> LedgerEntry {
        LedgerEntry {
            path: path.into(),
            size_bytes: size,
            modified_micros: 10,
            etag: None,
            rows: 3,
            quarantined: 0,
            load_id: "L".into(),
            txn_version: txn,
            table_version: 0,
            ingested_at_micros: 1,
        }
    }

    #[test]
    fn status_tracks_changes() {
        let mut ledger = Ledger::new("inlet.orders");
        ledger.record(
            &SourceCommit {
                app_id: "inlet.orders".into(),
                txn_version: 0,
                load_id: "L".into(),
                files: vec![entry("a.csv", 5, 0)],
                ..SourceCommit::default()
            },
            3,
        );
        let same = SourceFile::new("a.csv", 5, 10);
        assert_eq!(ledger.status(&same), FileStatus::Ingested);
        let grown = SourceFile { size_bytes: 6, ..same.clone() };
        assert!(matches!(ledger.status(&grown), FileStatus::Changed { .. }));
        let other = SourceFile { path: "b.csv".into(), ..same };
        assert_eq!(ledger.status(&other), FileStatus::New);
        assert_eq!(ledger.entries()[0].table_version, 3);
        assert_eq!(ledger.txn_version, 0);
    }

    #[test]
    fn entity_tags_decide_when_both_sides_have_one() {
        let mut ledger = Ledger::new("inlet.drops");
        let tagged = LedgerEntry { etag: Some("\"e1\"".into()), ..entry("a.csv", 5, 0) };
        ledger.record(
            &SourceCommit {
                app_id: "inlet.drops".into(),
                txn_version: 0,
                load_id: "L".into(),
                files: vec![tagged],
                ..SourceCommit::default()
            },
            1,
        );
        let listed =
            |etag: &str, modified| SourceFile { etag: Some(etag.into()), ..SourceFile::new("a.csv", 5, modified) };
        // Rewritten with the same bytes: a later time, the same tag.
        assert_eq!(ledger.status(&listed("\"e1\"", 99)), FileStatus::Ingested);
        // Same size and time, other content.
        assert!(matches!(ledger.status(&listed("\"e2\"", 10)), FileStatus::Changed { .. }));
        // An entry from before tags were kept falls back to the time.
        let mut old = Ledger::new("inlet.drops");
        old.record(
            &SourceCommit {
                app_id: "inlet.drops".into(),
                txn_version: 0,
                load_id: "L".into(),
                files: vec![entry("a.csv", 5, 0)],
                ..SourceCommit::default()
            },
            1,
        );
        assert_eq!(old.status(&listed("\"e1\"", 10)), FileStatus::Ingested);
        assert!(matches!(old.status(&listed("\"e1\"", 11)), FileStatus::Changed { .. }));
    }

    #[test]
    fn snapshot_paths_are_safe() {
        assert_eq!(snapshot_path("inlet.orders"), "_inlet/ledger/inlet.orders.json");
        assert_eq!(snapshot_path("a/b"), "_inlet/ledger/a_b.json");
    }
}
