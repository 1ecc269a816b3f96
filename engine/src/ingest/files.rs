//! A file source's run: the listing against the ledger, commit groups of new files.
//!
//! The ledger decides what is new: a listed file it does not hold is new; one it holds with
//! the same size and entity tag (or modification time) is ingested; one that changed since
//! is reported, and ingested again as new rows only with `allow_overwrites`. New files are
//! cut into commit groups by `max_files_per_commit` and `max_bytes_per_commit`, staged in
//! parallel, each standing alone: a file that cannot be read is reported and retried next
//! run, the others commit.

use std::collections::BTreeSet;
use std::sync::Arc;

use tracing::{info, warn};

use super::ledger::{FileStatus, Ledger, LedgerEntry};
use super::position::SourceCommit;
use super::stage::{Staged, Unit, UnitInput};
use super::{ChangedFile, FailedFile, More, Redo, SourceReport, SourceRun, StagedGroup};
use crate::error::{EngineError, Result};
use crate::source::{FileSource, Format, SourceFile};

/// Runs one pass of a file source.
pub(super) async fn ingest(
    run: &mut SourceRun<'_>,
    files: Arc<dyn FileSource>,
    format: Arc<dyn Format>,
    redo: Option<Redo>,
    report: &mut SourceReport,
) -> Result<More> {
    let name = run.name;
    let config =
        run.config.files().ok_or_else(|| EngineError::Internal(format!("source `{name}` is not a file source")))?;
    let mut ledger = Ledger::load(&run.table, &run.app_id).await?;
    let loaded_txn = ledger.txn_version;
    let listed = files.list().await.map_err(|error| EngineError::Source { source_name: name.to_owned(), error })?;
    report.files_listed += listed.len();

    let mut pending = Vec::new();
    // Files the ledger holds already: told to the source (a cleanup a crash cut short).
    let mut already = Vec::new();
    let mut passed_over = Vec::new();
    let settled_before = run.context.ingested_at_micros - i64::try_from(config.debounce_ms).unwrap_or(0) * 1000;
    for file in listed {
        if run.context.settle && !files.atomic() && file.modified_micros > settled_before {
            report.files_unsettled += 1;
            continue;
        }
        match ledger.status(&file) {
            FileStatus::New => pending.push((file, false)),
            FileStatus::Ingested => already.push(file),
            FileStatus::Changed { .. } if config.allow_overwrites => pending.push((file, true)),
            FileStatus::Changed { previous } => {
                warn!(source = %name, file = %file.path, "file changed after it was ingested; set allow_overwrites to ingest it again");
                passed_over.push(file.clone());
                report.changed_files.push(ChangedFile {
                    path: file.path.clone(),
                    size_bytes: file.size_bytes,
                    modified_micros: file.modified_micros,
                    previous_size_bytes: previous.size_bytes,
                    previous_modified_micros: previous.modified_micros,
                    etag: file.etag.clone(),
                    previous_etag: previous.etag.clone(),
                    previous_load_id: previous.load_id,
                });
            }
        }
    }
    release(files.as_ref(), name, &already).await;
    if !passed_over.is_empty()
        && let Err(err) = files.passed_over(&passed_over).await
    {
        warn!(source = %name, error = %err, "letting go of changed files failed");
    }

    // A group whose quarantine rows are committed already goes first, exactly as it was.
    let mut groups = Vec::new();
    let redo_units = redo.map(|r| r.units);
    if let Some(units) = &redo_units {
        // A source listing a slice (a queue) may not hold all of them now: look at everything.
        let missing: BTreeSet<&str> = units
            .iter()
            .map(String::as_str)
            .filter(|path| !pending.iter().any(|(f, _): &(SourceFile, bool)| f.path == *path))
            .collect();
        if !missing.is_empty() {
            let everything =
                files.list_all().await.map_err(|error| EngineError::Source { source_name: name.to_owned(), error })?;
            for file in everything {
                if missing.contains(file.path.as_str()) && ledger.status(&file) == FileStatus::New {
                    pending.push((file, false));
                }
            }
        }
        let (first, rest): (Vec<_>, Vec<_>) = pending.into_iter().partition(|(f, _)| units.contains(&f.path));
        info!(source = %name, files = first.len(), "finishing an interrupted commit");
        if !first.is_empty() {
            groups.push(first);
        }
        pending = rest;
    }
    groups.extend(commit_groups(pending, config.max_files_per_commit, config.max_bytes_per_commit));
    run.observer.source_planned(
        name,
        groups.iter().map(Vec::len).sum(),
        groups.iter().flatten().map(|(f, _)| f.size_bytes).sum(),
    );

    let parallel = if run.ordered() { 1 } else { run.context.parallel_files };
    for group in groups {
        let txn_version = ledger.txn_version + 1;
        let job = run.stage_job().await?;
        let checks = job.checks.clone();
        let units: Vec<Unit> = group
            .iter()
            .map(|(file, _)| Unit {
                name: file.path.clone(),
                page: None,
                size_bytes: file.size_bytes,
                input: UnitInput::File { files: files.clone(), format: format.clone(), file: file.clone() },
                position: None,
            })
            .collect();
        let mut feed = units.into_iter();
        let (outcomes, shared) = super::stage::stage_group(job, &mut feed, parallel, false, name, run.observer).await?;

        let mut data_adds = shared.data;
        let mut quarantine_adds = shared.quarantine;
        let mut entries = Vec::new();
        let mut committed = Vec::new();
        let mut reingested = 0;
        let mut stop: Option<EngineError> = None;
        for ((file, overwrite), outcome) in group.iter().zip(outcomes) {
            match outcome.staged {
                Staged::Done(staged) => {
                    data_adds.extend(staged.data_adds);
                    quarantine_adds.extend(staged.quarantine_adds);
                    reingested += usize::from(*overwrite);
                    committed.push(file.clone());
                    entries.push(LedgerEntry {
                        path: file.path.clone(),
                        size_bytes: file.size_bytes,
                        modified_micros: file.modified_micros,
                        etag: file.etag.clone(),
                        rows: staged.rows,
                        quarantined: staged.quarantined,
                        load_id: run.context.load_id.clone(),
                        txn_version,
                        table_version: 0,
                        ingested_at_micros: run.context.ingested_at_micros,
                    });
                }
                Staged::Unreadable(message) => {
                    warn!(source = %name, file = %file.path, error = %message, "file not ingested");
                    report.failed_files.push(FailedFile { path: file.path.clone(), error: message });
                }
                Staged::Stop(err) => {
                    stop.get_or_insert(err);
                }
            }
        }
        if let Some(err) = stop {
            return Err(err);
        }
        if entries.is_empty() {
            continue;
        }
        // Only the redo of an interrupted group finds its quarantine rows committed already;
        // any other group (the interrupted one's files all gone) commits its own.
        let redone = redo_units.as_ref().is_some_and(|units| group.iter().all(|(f, _)| units.contains(&f.path)));
        let quarantine_committed =
            redone && run.quarantine.app_version(&run.app_id).await?.is_some_and(|v| v >= txn_version);
        let record = SourceCommit {
            app_id: run.app_id.clone(),
            txn_version,
            load_id: run.context.load_id.clone(),
            files: entries,
            ..SourceCommit::default()
        };
        let group = StagedGroup {
            txn_version,
            data_adds,
            quarantine_adds,
            rows: record.rows(),
            quarantined: record.quarantined(),
            bytes: record.files.iter().map(|f| f.size_bytes).sum(),
            units: record.files.iter().map(|f| f.path.clone()).collect(),
            record: record.clone(),
            checks,
            quarantine_committed,
            removes: Vec::new(),
        };
        let version = run.publish(group, report).await?;
        report.files_ingested += record.files.len();
        report.files_reingested += reingested;
        ledger.record(&record, version);
        release(files.as_ref(), name, &committed).await;
    }

    report.table_version = run.table.version();
    report.quarantine_version = run.quarantine.version();
    // Keep the snapshot current after commits and replays, so the next lookup reads no old commits.
    // The snapshot only shortens the next lookup: failing to write it fails nothing.
    if run.table.exists()
        && (!ledger.snapshot_current || ledger.txn_version != loaded_txn)
        && let Err(error) = ledger.save(&run.table).await
    {
        warn!(source = %run.name, error = %error, "the ledger snapshot was not written; the next run reads the log");
    }
    Ok(if files.more() { More::Yes } else { More::No })
}

/// Tells the source that `files` are in the table. A cleanup that fails leaves the file;
/// the next run finds it in the ledger and tries again.
async fn release(files: &dyn FileSource, name: &str, done: &[SourceFile]) {
    if done.is_empty() {
        return;
    }
    if let Err(err) = files.done(done).await {
        warn!(source = %name, error = %err, "cleaning up ingested files failed; retried next run");
    }
}

/// Splits files into commit groups, in order, bounded by count and input bytes.
fn commit_groups(files: Vec<(SourceFile, bool)>, max_files: usize, max_bytes: u64) -> Vec<Vec<(SourceFile, bool)>> {
    let mut groups = Vec::new();
    let mut current: Vec<(SourceFile, bool)> = Vec::new();
    let mut bytes = 0u64;
    for file in files {
        if !current.is_empty() && (current.len() >= max_files || bytes.saturating_add(file.0.size_bytes) > max_bytes) {
            groups.push(std::mem::take(&mut current));
            bytes = 0;
        }
        bytes = bytes.saturating_add(file.0.size_bytes);
        current.push(file);
    }
    if !current.is_empty() {
        groups.push(current);
    }
    groups
}

#[cfg(test)]
mod tests {
    use super::*;

    fn file(path: &str, size: u64) -> (SourceFile, bool) {
        (SourceFile::new(path, size, 0), false)
    }

    #[test]
    fn groups_respect_count_and_bytes() {
        let files = vec![file("a", 10), file("b", 10), file("c", 10), file("d", 100), file("e", 1)];
        let groups = commit_groups(files.clone(), 2, 1000);
        assert_eq!(groups.iter().map(Vec::len).collect::<Vec<_>>(), vec![2, 2, 1]);
        let groups = commit_groups(files, 10, 25);
        let names: Vec<Vec<&str>> = groups.iter().map(|g| g.iter().map(|(f, _)| f.path.as_str()).collect()).collect();
        assert_eq!(names, vec![vec!["a", "b"], vec!["c"], vec!["d"], vec!["e"]]);
    }
}
