//! What a source commits beside its rows: where it stands.
//!
//! Every data commit of a source carries, in `commitInfo["inlet"]` ([`SourceCommit`]), the
//! source's position after that commit, together with the rows and the source's `txn`:
//! - a file source: the ledger entries of the files the commit ingested; the position is
//!   every entry ever committed ([`super::ledger::Ledger`]);
//! - an extractor: its position as it gave it (a cursor, a page token, an LSN); the
//!   position is the one the latest commit carries ([`Cursor`]).
//!
//! A restart resumes from what the table says, so a kill at any moment loses and doubles
//! nothing. Checkpoints drop `commitInfo` and old commit files expire, so each kind keeps a
//! cache beside the table, stamped with the `txn` version it holds; a cache that does not
//! match the table is never trusted over the log, and a position that cannot be proven is an
//! error, never a guess.

use serde::{Deserialize, Serialize};

use super::ledger::LedgerEntry;
use crate::error::{EngineError, Result};
use crate::log::TxnCommit;
use crate::table::Table;

/// Key of a source's commit record inside `commitInfo`.
pub const COMMIT_INFO_KEY: &str = "inlet";

/// What a source's data commit carries in `commitInfo["inlet"]`.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct SourceCommit {
    pub app_id: String,
    pub txn_version: i64,
    pub load_id: String,
    /// The files this commit ingested (file sources).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub files: Vec<LedgerEntry>,
    /// Where the source stands once this commit is in (extractors).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub position: Option<serde_json::Value>,
    /// What an extractor's commit holds (file sources count per file).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pages: Option<PageCounts>,
}

/// The pages an extractor's commit holds.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PageCounts {
    pub pages: u64,
    pub rows: u64,
    pub quarantined: u64,
    /// The first and last page's URL (secrets removed).
    pub first_url: String,
    pub last_url: String,
}

impl SourceCommit {
    /// Rows the commit wrote to the table.
    pub fn rows(&self) -> u64 {
        self.files.iter().map(|f| f.rows).sum::<u64>() + self.pages.as_ref().map_or(0, |p| p.rows)
    }

    /// Records the commit's group sent to quarantine.
    pub fn quarantined(&self) -> u64 {
        self.files.iter().map(|f| f.quarantined).sum::<u64>() + self.pages.as_ref().map_or(0, |p| p.quarantined)
    }

    /// Files or pages the commit holds.
    pub fn units(&self) -> usize {
        self.files.len() + self.pages.as_ref().map_or(0, |p| usize::try_from(p.pages).unwrap_or(usize::MAX))
    }
}

/// A path under the table root for a side file of `app_id` in `dir`.
pub(crate) fn side_file(dir: &str, app_id: &str) -> String {
    let safe: String = app_id
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() || c == '-' || c == '_' || c == '.' { c } else { '_' })
        .collect();
    format!("{dir}/{safe}.json")
}

/// The cache of an extractor's position beside its table.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct CursorSnapshot {
    format: u32,
    app_id: String,
    table_id: String,
    txn_version: i64,
    table_version: i64,
    position: serde_json::Value,
}

/// Where an extractor stands, as its table says.
#[derive(Debug, Clone, Default)]
pub struct Cursor {
    /// The source's last `txn` version (-1 before its first commit).
    pub txn_version: i64,
    /// The position its latest commit carries.
    pub position: Option<serde_json::Value>,
    /// Whether the cache beside the table says exactly this.
    pub cached: bool,
}

impl Cursor {
    /// Reads the position of `app_id` in `table`: from the cache when it holds the table's
    /// `txn` version, else from the commit that carries that version.
    pub async fn load(table: &Table, app_id: &str) -> Result<Cursor> {
        let Some(txn_version) = table.app_version(app_id).await? else {
            return Ok(Cursor { txn_version: -1, position: None, cached: false });
        };
        let table_id = table.id().unwrap_or_default();
        let snapshot = match table.read_side_file(&side_file(CURSOR_DIR, app_id)).await? {
            Some(bytes) => serde_json::from_slice::<CursorSnapshot>(&bytes)
                .ok()
                .filter(|s| s.format == 1 && s.app_id == app_id && s.table_id == table_id),
            None => None,
        };
        if let Some(snapshot) = &snapshot
            && snapshot.txn_version == txn_version
        {
            return Ok(Cursor { txn_version, position: Some(snapshot.position.clone()), cached: true });
        }
        let after = snapshot.as_ref().filter(|s| s.txn_version < txn_version).map(|s| s.table_version);
        let refused =
            |message: String| EngineError::Ledger { table: table.name.clone(), app_id: app_id.to_owned(), message };
        match crate::log::commit_of_txn(table, app_id, after).await? {
            TxnCommit::Found(commit) => {
                let source = commit.info::<SourceCommit>(&table.name, COMMIT_INFO_KEY)?;
                match source.and_then(|s| s.position) {
                    Some(position) => Ok(Cursor { txn_version, position: Some(position), cached: false }),
                    None => Err(refused(format!(
                        "commit {} carries `txn` {txn_version} but no position: was this source a file source before?",
                        commit.version
                    ))),
                }
            }
            TxnCommit::Expired { .. } => Err(refused(format!(
                "the commit of `txn` {txn_version} has expired from the log and `{}` does not hold it, so where \
                 the source stands cannot be proven",
                side_file(CURSOR_DIR, app_id)
            ))),
            TxnCommit::Never => Ok(Cursor { txn_version: -1, position: None, cached: false }),
        }
    }

    /// Writes the cache, so the next load reads no commit.
    pub async fn save(&self, table: &Table, app_id: &str) -> Result<()> {
        let (Some(position), Some(table_version)) = (&self.position, table.version()) else {
            return Ok(());
        };
        let snapshot = CursorSnapshot {
            format: 1,
            app_id: app_id.to_owned(),
            table_id: table.id().unwrap_or_default(),
            txn_version: self.txn_version,
            table_version,
            position: position.clone(),
        };
        let bytes =
            serde_json::to_vec(&snapshot).map_err(|e| EngineError::Internal(format!("serialising position: {e}")))?;
        table.write_side_file(&side_file(CURSOR_DIR, app_id), bytes).await
    }
}

/// Where the extractors' position caches live, under the table root.
const CURSOR_DIR: &str = "_inlet/position";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_commit_record_counts_files_or_pages() {
        let entry = |rows, quarantined| LedgerEntry {
            path: "a".into(),
            size_bytes: 1,
            modified_micros: 0,
            etag: None,
            rows,
            quarantined,
            load_id: "L".into(),
            txn_version: 0,
            table_version: 0,
            ingested_at_micros: 0,
        };
        let files = SourceCommit { files: vec![entry(3, 1), entry(4, 0)], ..Default::default() };
        assert_eq!((files.rows(), files.quarantined(), files.units()), (7, 1, 2));
        let pages = SourceCommit {
            pages: Some(PageCounts { pages: 5, rows: 40, quarantined: 2, ..Default::default() }),
            position: Some(serde_json::json!({"cursor": 1})),
            ..Default::default()
        };
        assert_eq!((pages.rows(), pages.quarantined(), pages.units()), (40, 2, 5));
        // Commits written before positions existed read as file commits.
        let old: SourceCommit =
            serde_json::from_str(r#"{"app_id":"inlet.a","txn_version":1,"load_id":"L","files":[]}"#).unwrap();
        assert!(old.position.is_none() && old.pages.is_none());
    }

    #[test]
    fn side_files_have_safe_names() {
        assert_eq!(side_file("_inlet/ledger", "inlet.orders"), "_inlet/ledger/inlet.orders.json");
        assert_eq!(side_file("_inlet/position", "a/b"), "_inlet/position/a_b.json");
    }
}
