//! What `inlet` prints: progress bars on a terminal, the run summary, the ledger listing.

use std::collections::HashMap;
use std::fmt::Write as _;
use std::io::IsTerminal;
use std::sync::Mutex;

use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};
use inlet_engine::ledger::LedgerEntry;
use inlet_engine::run::{RunObserver, RunReport, SourceReport};
use inlet_engine::transform::TableStatus;
use inlet_quality::Outcome;

/// `inlet history`: one block per version, newest first.
pub fn history(table: &str, records: &[inlet_engine::audit::VersionRecord], files: bool) -> String {
    let mut out = String::new();
    if records.is_empty() {
        let _ = writeln!(out, "{table}: no versions");
        return out;
    }
    for record in records {
        let when = record
            .timestamp_ms
            .and_then(chrono::DateTime::from_timestamp_millis)
            .map(|t| t.to_rfc3339_opts(chrono::SecondsFormat::Secs, true))
            .unwrap_or_else(|| "?".to_owned());
        let _ = writeln!(
            out,
            "v{:<5} {when}  {:<10} run {}  +{} -{} files{}",
            record.version,
            record.operation.as_deref().unwrap_or("?"),
            record.run_id.as_deref().unwrap_or("-"),
            record.files_added,
            record.files_removed,
            if record.from == "log" { String::new() } else { format!("  (from {})", record.from) },
        );
        if let Some(rows) = &record.rows {
            let _ = writeln!(out, "        rows {rows}");
        }
        if !record.upstream.is_empty() {
            let inputs: Vec<String> = record.upstream.iter().map(|(t, v)| format!("{t}@v{v}")).collect();
            let _ = writeln!(out, "        read {}", inputs.join(", "));
        }
        if !record.files.is_empty() {
            let _ = writeln!(out, "        ingested {} source files", record.files.len());
            if files {
                for file in &record.files {
                    let _ = writeln!(out, "          {file}");
                }
            }
        }
        if let Some(quality) = &record.quality {
            let _ = writeln!(out, "        {}", quality.summary());
        }
    }
    out
}

/// `inlet status`: a line per source and table.
pub fn status(rows: &[inlet_engine::status::Status]) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "{:<7} {:<24} {:>7} {:<11} {:>10} {:>9} {:>8}  {:<21} {:<21}",
        "kind", "name", "version", "last run", "fresh (s)", "sla (s)", "backlog", "last success", "last failure"
    );
    let number = |v: Option<i64>| v.map_or_else(|| "-".to_owned(), |v| v.to_string());
    for row in rows {
        let sla = match (row.freshness_sla_secs, row.stale) {
            (None, _) => "-".to_owned(),
            (Some(sla), true) => format!("{sla} STALE"),
            (Some(sla), false) => sla.to_string(),
        };
        let _ = writeln!(
            out,
            "{:<7} {:<24} {:>7} {:<11} {:>10} {:>9} {:>8}  {:<21} {:<21}",
            row.kind,
            row.name,
            number(row.table_version),
            row.outcome,
            number(row.age_secs),
            sla,
            row.backlog_files.map_or_else(|| "-".to_owned(), |v| v.to_string()),
            when(row.last_success_micros),
            when(row.last_failure_micros),
        );
        if let Some(error) = &row.last_error {
            let _ = writeln!(out, "        last error: {error}");
        }
    }
    out
}

/// A time in microseconds as RFC 3339 (seconds), `-` when unknown.
fn when(micros: Option<i64>) -> String {
    micros
        .and_then(chrono::DateTime::from_timestamp_micros)
        .map(|t| t.to_rfc3339_opts(chrono::SecondsFormat::Secs, true))
        .unwrap_or_else(|| "-".to_owned())
}

/// `inlet runs`: one line a run, its error under it.
pub fn runs(runs: &[inlet_engine::audit::RunRecord], offset: usize, more: bool) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "{:<21} {:<8} {:<28} {:<11} {:>7} {:>9} {:>11} {:>8}",
        "ended", "kind", "name", "status", "version", "rows", "quarantined", "seconds"
    );
    let number = |v: Option<i64>| v.map_or_else(|| "-".to_owned(), |v| v.to_string());
    for run in runs {
        let _ = writeln!(
            out,
            "{:<21} {:<8} {:<28} {:<11} {:>7} {:>9} {:>11} {:>8.1}",
            when(Some(run.ended_micros)),
            run.kind,
            run.name,
            run.status,
            number(run.table_version),
            number(run.rows_out),
            number(run.quarantined),
            (run.ended_micros - run.started_micros) as f64 / 1e6,
        );
        if let Some(error) = &run.error {
            let _ = writeln!(out, "    error: {error}");
        }
    }
    if more {
        let _ = writeln!(out, "(more: --offset {})", offset + runs.len());
    }
    out
}

/// `inlet backfill`: one line a window, then the totals.
pub fn backfill(report: &inlet_engine::backfill::BackfillReport) -> String {
    let mut out = String::new();
    for window in &report.windows {
        let r = &window.report;
        let status =
            serde_json::to_value(r.status).ok().and_then(|s| s.as_str().map(str::to_owned)).unwrap_or_default();
        let _ = write!(
            out,
            "{}  {:<10} {:>8}  +{} rows",
            window.window,
            status,
            r.table_version.map_or_else(|| "-".to_owned(), |v| format!("v{v}")),
            r.rows.inserted
        );
        if r.quarantined > 0 {
            let _ = write!(out, ", {} quarantined", r.quarantined);
        }
        if let Some(error) = &r.error {
            let _ = write!(out, "\n            error: {}", error.message);
        }
        out.push('\n');
    }
    let _ = writeln!(
        out,
        "{}: {} windows run, {} failed{}",
        report.table,
        report.windows.len(),
        report.failed(),
        if report.already_done.is_empty() {
            String::new()
        } else {
            format!(", {} already done", report.already_done.len())
        }
    );
    out
}

/// `inlet audit`: one version in full.
pub fn audit(table: &str, record: &inlet_engine::audit::VersionRecord) -> String {
    let mut out = history(table, std::slice::from_ref(record), true);
    if let Some(text) = &record.user_metadata {
        let _ = writeln!(out, "        userMetadata: {text}");
    }
    if let Some(quality) = &record.quality {
        let _ = writeln!(out, "        expectations:");
        for e in &quality.expectations {
            let _ = writeln!(
                out,
                "          {:<24} {:<10} {:<8} checked {} passed {} failed {} dropped {} quarantined {}{}",
                e.name,
                e.action.as_str(),
                format!("{:?}", e.outcome).to_lowercase(),
                e.rows_checked,
                e.passed,
                e.failed,
                e.dropped,
                e.quarantined,
                if e.sample_keys.is_empty() { String::new() } else { format!("  e.g. {}", e.sample_keys.join("; ")) }
            );
            let _ = writeln!(out, "            rule: {}", e.rule);
        }
    }
    out
}

/// Prints a query's result: a table, or `csv` / `json` / `parquet` to stdout or a file.
pub fn query_result(
    schema: &arrow::datatypes::SchemaRef,
    batches: &[arrow::record_batch::RecordBatch],
    output: &[String],
) -> anyhow::Result<()> {
    use std::io::Write as _;
    let format = output.first().map(String::as_str).unwrap_or("table");
    let path = output.get(1);
    if format == "parquet" {
        let Some(path) = path else {
            anyhow::bail!("`--output parquet` needs a file: `--output parquet out.parquet`");
        };
        let file = std::fs::File::create(path).map_err(|e| anyhow::anyhow!("creating `{path}`: {e}"))?;
        let mut writer = parquet::arrow::ArrowWriter::try_new(file, schema.clone(), None)?;
        for batch in batches {
            writer.write(batch)?;
        }
        writer.close()?;
        return Ok(());
    }
    let mut sink: Box<dyn std::io::Write> = match path {
        Some(path) => Box::new(std::io::BufWriter::new(
            std::fs::File::create(path).map_err(|e| anyhow::anyhow!("creating `{path}`: {e}"))?,
        )),
        None => Box::new(std::io::stdout().lock()),
    };
    match format {
        "table" => writeln!(sink, "{}", arrow::util::pretty::pretty_format_batches(batches)?)?,
        "csv" => {
            let mut writer = arrow_csv::WriterBuilder::new().with_header(true).build(&mut sink);
            for batch in batches {
                writer.write(batch)?;
            }
        }
        "json" => {
            let mut writer = arrow_json::ArrayWriter::new(&mut sink);
            for batch in batches {
                writer.write(batch)?;
            }
            writer.finish()?;
            writeln!(sink)?;
        }
        other => anyhow::bail!("unknown output `{other}`: table, csv, json or parquet"),
    }
    sink.flush()?;
    Ok(())
}

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
        // A later pass over the same source (a queue drained slice by slice) extends its bar.
        if let Ok(bars) = self.by_source.lock()
            && let Some(bar) = bars.get(source)
        {
            bar.inc_length(bytes);
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
        "source", "table", "units", "rows", "quar.", "bytes", "version", "secs"
    );
    for source in &report.sources {
        // Files of a file source; pages of an extractor.
        let units = if source.kind == "files" { source.files_ingested as u64 } else { source.pages };
        let _ = writeln!(
            out,
            "  {:<14} {:<24} {:>6} {:>10} {:>6} {:>10} {:>8} {:>7.2}",
            source.source,
            source.table,
            units,
            source.rows,
            source.quarantined,
            human_bytes(source.bytes),
            source.table_version.map_or_else(|| "-".to_owned(), |v| v.to_string()),
            source.seconds
        );
        notes(&mut out, source);
        for commit in &source.commits {
            if let Some(quality) = commit.quality.as_ref().filter(|q| q.outcome == Outcome::Warned) {
                let _ = writeln!(out, "    v{}: {}", commit.table_version, quality.summary());
            }
        }
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
            if let Some(quality) = table.quality.as_ref().filter(|q| q.outcome == Outcome::Warned) {
                let _ = writeln!(out, "    {}", quality.summary());
            }
            if table.quarantined > 0 {
                let _ = writeln!(out, "    {} rows quarantined to {}__quarantine", table.quarantined, table.table);
            }
        }
    }
    out
}

fn notes(out: &mut String, source: &SourceReport) {
    let idle = source.commits.is_empty() && source.error.is_none() && source.failed_files.is_empty();
    if idle && source.kind == "files" {
        let _ = writeln!(out, "    up to date ({} files listed, nothing new)", source.files_listed);
    } else if idle {
        let _ = writeln!(out, "    up to date ({} requests, nothing new)", source.requests);
    } else if source.kind != "files" {
        let _ = writeln!(out, "    {} pages from {} requests", source.pages, source.requests);
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
        let how = match (&changed.previous_etag, &changed.etag) {
            (Some(before), Some(now)) if changed.previous_size_bytes == changed.size_bytes => {
                format!("etag {before} -> {now}")
            }
            _ => format!("{} -> {} bytes", changed.previous_size_bytes, changed.size_bytes),
        };
        let _ = writeln!(
            out,
            "    changed since ingestion, not ingested again: {} ({how}; set allow_overwrites = true to ingest it)",
            changed.path
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
