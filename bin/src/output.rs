//! What `inlet` prints: progress bars on a terminal, the run summary, the ledger listing.

use std::collections::HashMap;
use std::fmt::Write as _;
use std::io::IsTerminal;
use std::sync::Mutex;

use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};
use inlet_engine::ledger::LedgerEntry;
use inlet_engine::run::{RunObserver, RunReport, SourceReport};
use inlet_engine::transform::TableStatus;

/// Progress bars per source, drawn only on a terminal.
pub struct Progress {
    bars: Option<MultiProgress>,
    by_source: Mutex<HashMap<String, ProgressBar>>,
}

impl Progress {
    pub fn new(human: bool) -> Self {
        let bars = (human && std::io::stderr().is_terminal())
            .then(|| MultiProgress::with_draw_target(ProgressDrawTarget::stderr()));
        Progress { bars, by_source: Mutex::new(HashMap::new()) }
    }

    pub fn finish(&self) {
        if let Ok(bars) = self.by_source.lock() {
            for bar in bars.values() {
                bar.finish_and_clear();
            }
        }
    }
}

impl RunObserver for Progress {
    fn source_planned(&self, source: &str, files: usize, bytes: u64) {
        let Some(multi) = &self.bars else {
            return;
        };
        if files == 0 {
            return;
        }
        let bar = multi.add(ProgressBar::new(bytes));
        let style = ProgressStyle::with_template("{prefix:>12} [{bar:30}] {bytes}/{total_bytes} {bytes_per_sec} {msg}")
            .unwrap_or_else(|_| ProgressStyle::default_bar())
            .progress_chars("=> ");
        bar.set_style(style);
        bar.set_prefix(source.to_owned());
        bar.set_message(format!("{files} files"));
        if let Ok(mut bars) = self.by_source.lock() {
            bars.insert(source.to_owned(), bar);
        }
    }

    fn file_staged(&self, source: &str, _file: &str, bytes: u64) {
        if let Ok(bars) = self.by_source.lock()
            && let Some(bar) = bars.get(source)
        {
            bar.inc(bytes);
        }
    }
}

/// The one-screen summary of a run.
pub fn summary(report: &RunReport) -> String {
    let mut out = String::new();
    let _ = writeln!(out, "pipeline {} load {} ({:.2}s)", report.pipeline, report.load_id, report.duration_secs);
    let _ = writeln!(
        out,
        "  {:<14} {:<24} {:>6} {:>10} {:>6} {:>10} {:>8} {:>7}",
        "source", "table", "files", "rows", "quar.", "bytes", "version", "secs"
    );
    for source in &report.sources {
        let _ = writeln!(
            out,
            "  {:<14} {:<24} {:>6} {:>10} {:>6} {:>10} {:>8} {:>7.2}",
            source.source,
            source.table,
            source.files_ingested,
            source.rows,
            source.quarantined,
            human_bytes(source.bytes),
            source.table_version.map_or_else(|| "-".to_owned(), |v| v.to_string()),
            source.seconds
        );
        notes(&mut out, source);
    }
    if !report.tables.is_empty() {
        let _ = writeln!(
            out,
            "  {:<32} {:<18} {:>9} {:>9} {:>9} {:>9} {:>8} {:>7}",
            "table", "write", "inserted", "updated", "deleted", "same", "version", "secs"
        );
        for table in &report.tables {
            let _ = writeln!(
                out,
                "  {:<32} {:<18} {:>9} {:>9} {:>9} {:>9} {:>8} {:>7.2}",
                table.table,
                table.write.as_str(),
                table.rows.inserted,
                table.rows.updated,
                table.rows.deleted,
                table.rows.unchanged,
                table.table_version.map_or_else(|| "-".to_owned(), |v| v.to_string()),
                table.seconds
            );
            match (&table.error, &table.reason) {
                (Some(error), _) => {
                    let _ = writeln!(out, "    error: {}", error.message);
                }
                (None, Some(reason)) => {
                    let status = match table.status {
                        TableStatus::UpToDate => "up to date",
                        _ => "skipped",
                    };
                    let _ = writeln!(out, "    {status}: {reason}");
                }
                (None, None) => {}
            }
        }
    }
    out
}

fn notes(out: &mut String, source: &SourceReport) {
    if source.files_ingested == 0 && source.error.is_none() && source.failed_files.is_empty() {
        let _ = writeln!(out, "    up to date ({} files listed, nothing new)", source.files_listed);
    }
    if source.quarantined > 0 {
        let _ = writeln!(out, "    {} records quarantined in {}__quarantine", source.quarantined, source.table);
    }
    if !source.added_columns.is_empty() {
        let _ = writeln!(out, "    columns added: {}", source.added_columns.join(", "));
    }
    if source.files_reingested > 0 {
        let _ = writeln!(out, "    {} changed files ingested again (allow_overwrites)", source.files_reingested);
    }
    for changed in &source.changed_files {
        let _ = writeln!(
            out,
            "    changed since ingestion, not ingested again: {} ({} -> {} bytes; set allow_overwrites = true to ingest it)",
            changed.path, changed.previous_size_bytes, changed.size_bytes
        );
    }
    for failed in &source.failed_files {
        let _ = writeln!(out, "    not ingested (retried next run): {}: {}", failed.path, failed.error);
    }
    if let Some(error) = &source.error {
        let _ = writeln!(out, "    error: {}", error.message);
    }
}

fn human_bytes(bytes: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut value = bytes as f64;
    let mut unit = 0;
    while value >= 1024.0 && unit < UNITS.len() - 1 {
        value /= 1024.0;
        unit += 1;
    }
    if unit == 0 { format!("{bytes} B") } else { format!("{value:.1} {}", UNITS[unit]) }
}

/// The ledger as a table.
pub fn ledger_table(entries: &[LedgerEntry]) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "{:<40} {:>10} {:>9} {:>6} {:>7} {:>5}  load_id",
        "path", "bytes", "rows", "quar.", "version", "txn"
    );
    for e in entries {
        let _ = writeln!(
            out,
            "{:<40} {:>10} {:>9} {:>6} {:>7} {:>5}  {}",
            e.path, e.size_bytes, e.rows, e.quarantined, e.table_version, e.txn_version, e.load_id
        );
    }
    let _ = writeln!(out, "{} files", entries.len());
    out
}
