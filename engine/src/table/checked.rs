//! Commits that check what other writers committed meanwhile themselves.
//!
//! delta-rs' conflict checker lets a commit go past a concurrent one that removed, with
//! `dataChange = false`, a file it also removes: a compaction, which moved that file's rows
//! into a new file. For an overwrite, or another compaction, of the same files that means the
//! rows survive twice (deltalake-core's own test expects two such compactions to commit). So
//! these commits go to delta-rs with no retries: when another commit came first, the commits
//! in between are read here ([`crate::log`]) and checked for a removal of any of this
//! commit's files, a new schema or protocol, and a `txn` of the same application; only then
//! is the commit tried again on the newer version. Used for optimize, overwrites without a
//! predicate and updates in place. delta-rs' checker also looks at protocol and metadata
//! changes and `txn`s (checked here too, protocol and metadata more strictly), at files
//! added that a predicate of the commit would have read (an optimize and an overwrite read
//! none; an update of rows it selected leaves a row added meanwhile for the next one), and
//! at removals of any file of the snapshot (inlet's overwrites remove every file of it).

use std::collections::HashSet;

use deltalake::DeltaTableError;
use deltalake::kernel::Action;
use deltalake::kernel::transaction::{CommitBuilder, CommitProperties, TransactionError};
use deltalake::protocol::DeltaOperation;

use super::Table;
use crate::error::Result;
use crate::log::{LogCommit, percent_decode};

/// Times a checked commit is tried again on a newer version before it gives up.
const ATTEMPTS: usize = 20;

/// What a checked commit came to.
pub(crate) enum Checked {
    Committed(i64),
    /// Another commit stands in the way; the text says which and why.
    Conflict(String),
}

/// What a checked commit must not go past.
pub(crate) struct Guard<'a> {
    /// The files this commit removes (paths decoded, as in its `remove` actions).
    pub removing: HashSet<String>,
    /// The application whose `txn` this commit carries.
    pub app_id: Option<&'a str>,
}

impl Guard<'_> {
    /// Why `commit` (by another writer) conflicts with this one, if it does.
    fn conflict(&self, commit: &LogCommit) -> Option<String> {
        if let Some(removed) = commit.removes.iter().find(|r| self.removing.contains(&percent_decode(&r.path))) {
            return Some(format!("version {} removed `{}`, which this commit replaces", commit.version, removed.path));
        }
        if commit.changes_table {
            return Some(format!("version {} changed the table's schema, properties or protocol", commit.version));
        }
        if let Some(app_id) = self.app_id
            && commit.txns.iter().any(|(app, _)| app == app_id)
        {
            return Some(format!("version {} was committed by `{app_id}` too", commit.version));
        }
        None
    }
}

impl Table {
    /// Commits `actions` on the loaded version, checking every commit another writer made
    /// since against `guard` before trying again on top of it. The table is left loaded at
    /// the version committed (or the newest one read, after a conflict).
    pub(crate) async fn commit_checked(
        &mut self,
        actions: Vec<Action>,
        operation: DeltaOperation,
        properties: CommitProperties,
        guard: &Guard<'_>,
    ) -> Result<Checked> {
        for _ in 0..ATTEMPTS {
            let state = self.delta.snapshot().map_err(|e| self.error(e))?.clone();
            let base = state.version() as i64;
            let committed = CommitBuilder::from(properties.clone().with_max_retries(0))
                .with_actions(actions.clone())
                .build(Some(&state), self.delta.log_store(), operation.clone())
                .await;
            match committed {
                Ok(committed) => {
                    let version = committed.version;
                    self.delta.update_incremental(Some(version)).await.map_err(|e| self.error(e))?;
                    return Ok(Checked::Committed(version as i64));
                }
                Err(DeltaTableError::Transaction { source: TransactionError::MaxCommitAttempts(_) }) => {}
                Err(e) => return Err(self.error(e)),
            }
            // Another writer came first: read what it (and any other) committed since `base`.
            self.delta.update_incremental(None).await.map_err(|e| self.error(e))?;
            let latest = self.version().unwrap_or(base);
            for (version, commit) in crate::log::read_range(self, base + 1..=latest).await? {
                let Some(commit) = commit else {
                    return Ok(Checked::Conflict(format!("version {version} left the log before it could be checked")));
                };
                if let Some(why) = guard.conflict(&commit) {
                    return Ok(Checked::Conflict(why));
                }
            }
        }
        Ok(Checked::Conflict(format!("other writers kept committing first, {ATTEMPTS} times")))
    }
}
