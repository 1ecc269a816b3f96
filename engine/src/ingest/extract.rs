//! An extractor's run: pages from the committed position on, cut into commit groups.
//!
//! The extractor starts where the table's latest commit of the source says, and reads
//! ahead of staging in a task of its own (at most [`READ_AHEAD_PAGES`] pages), so requests
//! overlap decoding and writing. A group ends after the page that brings it to the source's
//! records per commit; it commits the position of its last page. Pages are staged in order
//! and a page that cannot be staged ends the run's extraction after the pages before it
//! commit: a position covers every page before it, so none can be skipped. An extraction
//! that fails (the API is down) commits what came before, then stops the source with the
//! error; the next run resumes from the last commit. A group ends only after a page that is
//! a cut (a database transaction's last page): a group torn by an error is not committed.
//!
//! A run that starts the source over (`inlet resnapshot`) starts from the position the
//! extractor gives for it, and its first commit removes every file the table had: the rows
//! it lands replace the table's. A page whose rows are derived from the table
//! ([`crate::source::Derive`]) begins a group of its own, so it sees every page before it.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use tokio::sync::mpsc;
use tracing::{info, warn};

use super::position::{Cursor, PageCounts, SourceCommit};
use super::stage::{Feed, Staged, Unit, UnitInput};
use super::{FailedFile, More, Redo, SourceReport, SourceRun, StagedGroup};
use crate::error::{EngineError, Result};
use crate::source::{Extractor, Lag, Page, SourceError};

/// Pages fetched ahead of staging.
const READ_AHEAD_PAGES: usize = 4;

/// Runs one pass of an extractor: everything up to now, from where the table says.
pub(super) async fn ingest(
    run: &mut SourceRun<'_>,
    extractor: Arc<dyn Extractor>,
    redo: Option<Redo>,
    report: &mut SourceReport,
) -> Result<More> {
    let requests = Arc::new(AtomicU64::new(0));
    let lag = Arc::new(Mutex::new(None));
    let outcome = extract(run, extractor, redo, report, &requests, &lag).await;
    // Counted however the pass ended.
    report.requests += requests.load(Ordering::Relaxed);
    if let Some(lag) = lag.lock().ok().and_then(|l| *l) {
        report.lag = Some(lag);
    }
    outcome
}

async fn extract(
    run: &mut SourceRun<'_>,
    extractor: Arc<dyn Extractor>,
    redo: Option<Redo>,
    report: &mut SourceReport,
    requests: &Arc<AtomicU64>,
    lag: &Arc<Mutex<Option<Lag>>>,
) -> Result<More> {
    let name = run.name;
    let source_error = |error: SourceError| EngineError::Source { source_name: name.to_owned(), error };
    let mut cursor = Cursor::load(&run.table, &run.app_id).await?;
    let loaded = cursor.clone();
    let records_per_commit = run.config.max_records_per_commit().unwrap_or(u64::MAX).max(1);
    // A pass planned again after a lost commit race starts over only if its replacing
    // commit is not in yet.
    let restart = run.context.restart && !report.started_over;
    let from = if restart {
        extractor.restart(cursor.position.clone(), run.table.version()).map_err(source_error)?
    } else {
        cursor.position.clone()
    };
    // Until the first commit of a run starting over: it removes what the table had.
    let mut replacing = restart && run.table.exists();
    let extraction = extractor.start(from).await.map_err(source_error)?;
    if restart {
        info!(source = %name, table = %run.target, version = ?run.table.version(), "starting the source over; its first commit replaces the table's rows");
    }
    let (tx, rx) = mpsc::channel(READ_AHEAD_PAGES);
    let reader = ReadAhead(tokio::spawn(read_ahead(extraction, tx, requests.clone(), lag.clone())));
    let mut feed = PageFeed {
        rx,
        limit: records_per_commit,
        taken: 0,
        pages_left: None,
        at_cut: true,
        cuts: Vec::new(),
        held: None,
        ended: false,
        error: None,
    };
    // An interrupted group's quarantine rows are committed already: its redo is cut to as
    // many pages, and skips them when it read the same pages.
    // A run starting over reads other pages than the interrupted group: its quarantine rows
    // are committed again rather than matched against it.
    let redo = redo.filter(|_| !restart);
    let redo_txn = redo.as_ref().map(|r| r.txn_version);
    let redo_units = redo.map(|r| r.units);
    loop {
        // A page derived from the table, held back until the pages before it committed.
        if let Some(page) = feed.held.as_mut()
            && let Some(derive) = page.derive.take()
        {
            page.chunk = super::derive::rows(&run.table, &page.chunk, &derive).await?;
        }
        let txn_version = cursor.txn_version + 1;
        feed.taken = 0;
        feed.cuts.clear();
        feed.pages_left = redo_units.as_ref().filter(|_| redo_txn == Some(txn_version)).map(Vec::len);
        let job = run.stage_job().await?;
        let checks = job.checks.clone();
        let (outcomes, shared) = super::stage::stage_group(job, &mut feed, 1, true, name, run.observer).await?;
        // The pages staged whole come first; the group commits them only if the last is a
        // cut. Otherwise it stopped inside a transaction (the extraction failed, or a later
        // page could not be staged): nothing of it is committed (its files are left
        // unreferenced) and the next run reads the transaction again whole.
        let staged = outcomes.iter().take_while(|o| matches!(o.staged, Staged::Done(_))).count();
        if staged > 0 && !feed.cuts.get(staged - 1).copied().unwrap_or(true) {
            let unreadable = outcomes.iter().find_map(|o| match &o.staged {
                Staged::Unreadable(message) => Some(format!("`{}`: {message}", o.name)),
                _ => None,
            });
            let error = feed.error.take().unwrap_or_else(|| {
                let why = unreadable.unwrap_or_else(|| "the extraction ended".to_owned());
                SourceError::user(format!("source `{name}`: a transaction could not be read whole: {why}"))
            });
            return Err(source_error(error));
        }
        let mut data_adds = shared.data;
        let mut quarantine_adds = shared.quarantine;
        let mut counts = PageCounts::default();
        let mut bytes = 0;
        let mut units = Vec::new();
        let mut position = None;
        let mut failed = None;
        for outcome in outcomes {
            match outcome.staged {
                Staged::Done(staged) => {
                    data_adds.extend(staged.data_adds);
                    quarantine_adds.extend(staged.quarantine_adds);
                    counts.pages += 1;
                    counts.rows += staged.rows;
                    counts.quarantined += staged.quarantined;
                    if counts.first_url.is_empty() {
                        counts.first_url.clone_from(&outcome.name);
                    }
                    counts.last_url.clone_from(&outcome.name);
                    bytes += outcome.size_bytes;
                    units.push(outcome.name);
                    position = outcome.position;
                }
                Staged::Unreadable(message) => {
                    failed = Some(FailedFile { path: outcome.name, error: message });
                    break;
                }
                Staged::Stop(err) => return Err(err),
            }
        }
        // Nothing landed and the position did not move: no version (a re-run with nothing
        // new makes none). A position that moved is committed, creating the table when the
        // pages said its columns (a database table with no rows yet).
        let moved = position.is_some() && (position != cursor.position || replacing);
        if counts.rows + counts.quarantined > 0 || (moved && (run.table.exists() || run.has_columns())) {
            let mut quarantine_committed = redo_txn == Some(txn_version)
                && run.quarantine.app_version(&run.app_id).await?.is_some_and(|v| v >= txn_version);
            if quarantine_committed && redo_units.as_ref() != Some(&units) {
                // The API gave other pages than the interrupted run read: their quarantine
                // rows are committed again rather than risk losing one.
                warn!(source = %name, txn_version, "the redone group read other pages than the interrupted one; its quarantine rows are committed again");
                quarantine_committed = false;
            }
            let pages = counts.pages;
            let removes = if replacing {
                run.table.active_files().await?.into_iter().map(|f| f.remove).collect()
            } else {
                Vec::new()
            };
            let record = SourceCommit {
                app_id: run.app_id.clone(),
                txn_version,
                load_id: run.context.load_id.clone(),
                position: position.clone(),
                pages: Some(counts.clone()),
                ..SourceCommit::default()
            };
            let group = StagedGroup {
                txn_version,
                data_adds,
                quarantine_adds,
                rows: counts.rows,
                quarantined: counts.quarantined,
                bytes,
                units,
                record,
                checks,
                quarantine_committed,
                removes,
            };
            run.publish(group, report).await?;
            report.started_over |= restart;
            replacing = false;
            report.pages += pages;
            cursor = Cursor { txn_version, position, cached: false };
        }
        if let Some(failed) = failed {
            warn!(source = %name, url = %failed.path, error = %failed.error, "page not ingested; the next run starts again at it");
            report.failed_files.push(failed);
            break;
        }
        if feed.ended {
            break;
        }
    }
    // Everything read was committed, or the run stops here: the extraction is not needed.
    drop(reader);
    report.position.clone_from(&cursor.position);
    report.table_version = run.table.version();
    report.quarantine_version = run.quarantine.version();
    // The cache only shortens the next run's search: failing to write it fails nothing.
    if run.table.exists()
        && (cursor.txn_version != loaded.txn_version || !loaded.cached)
        && let Err(error) = cursor.save(&run.table, &run.app_id).await
    {
        warn!(source = %name, error = %error, "the position cache was not written; the next run reads the log");
    }
    if let Some(error) = feed.error.take() {
        return Err(source_error(error));
    }
    Ok(More::No)
}

/// Pages of the extraction, as they arrive, cut into groups of `limit` records.
struct PageFeed {
    rx: mpsc::Receiver<std::result::Result<Page, SourceError>>,
    /// Records per group, and taken in this group so far.
    limit: u64,
    taken: u64,
    /// Pages this group may still take (a redone group takes the interrupted one's count).
    pages_left: Option<usize>,
    /// Whether the last page taken is a cut: a group ends only there.
    at_cut: bool,
    /// Whether each page of the group is a cut, in order.
    cuts: Vec<bool>,
    /// A page derived from the table: it ends the group before it, and is the next group's
    /// first once its rows are derived.
    held: Option<Page>,
    /// Whether the extraction has ended (every page read, or `error`).
    ended: bool,
    error: Option<SourceError>,
}

#[async_trait::async_trait]
impl Feed for PageFeed {
    async fn next_unit(&mut self) -> Option<Unit> {
        if self.ended || (self.at_cut && (self.taken >= self.limit || self.pages_left == Some(0))) {
            return None;
        }
        let next = match self.held.take() {
            Some(page) => Some(Ok(page)),
            None => self.rx.recv().await,
        };
        match next {
            Some(Ok(page)) if page.derive.is_some() => {
                self.held = Some(page);
                None
            }
            Some(Ok(page)) => {
                self.taken += (page.chunk.batch.num_rows() + page.chunk.bad.len()) as u64;
                self.pages_left = self.pages_left.map(|n| n.saturating_sub(1));
                self.at_cut = page.cut;
                self.cuts.push(page.cut);
                Some(Unit {
                    name: page.url,
                    page: Some(page.number),
                    size_bytes: page.bytes,
                    input: UnitInput::Decoded(page.chunk),
                    position: Some(page.position),
                })
            }
            Some(Err(error)) => {
                self.ended = true;
                self.error = Some(error);
                None
            }
            None => {
                self.ended = true;
                None
            }
        }
    }
}

/// Reads pages into `tx` until the extraction ends or the receiver goes, counting requests.
async fn read_ahead(
    mut extraction: Box<dyn crate::source::Extraction>,
    tx: mpsc::Sender<std::result::Result<Page, SourceError>>,
    requests: Arc<AtomicU64>,
    lag: Arc<Mutex<Option<Lag>>>,
) {
    loop {
        let next = extraction.next_page().await;
        requests.store(extraction.requests(), Ordering::Relaxed);
        if let (Some(now), Ok(mut slot)) = (extraction.lag(), lag.lock()) {
            *slot = Some(now);
        }
        match next {
            Ok(Some(page)) => {
                if tx.send(Ok(page)).await.is_err() {
                    break;
                }
            }
            Ok(None) => break,
            Err(error) => {
                let _ = tx.send(Err(error)).await;
                break;
            }
        }
    }
}

/// The read-ahead task, stopped when the run is done with it (early or not).
struct ReadAhead(tokio::task::JoinHandle<()>);

impl Drop for ReadAhead {
    fn drop(&mut self) {
        self.0.abort();
    }
}
