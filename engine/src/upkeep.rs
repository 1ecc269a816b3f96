//! The pipeline's tables kept healthy (`[pipeline.maintenance]`): the log policy set as
//! table properties after each run, optimize and vacuum as `inlet optimize` / `inlet vacuum`
//! and `inlet serve`'s schedules run them, and auto-compaction of tables a run left with
//! too many small files.
//!
//! Every commit made here says who made it and why in `userMetadata`, and gets a row in the
//! run history, so `inlet history` still shows it after its commit file is cleaned up.

use std::collections::{BTreeSet, HashMap};

use serde::Serialize;
use tracing::{debug, info, warn};

use crate::error::Result;
use crate::run::{Pipeline, RunReport};
pub use crate::schedule::Action;
use crate::table::{OptimizeOptions, OptimizeReport, VacuumOptions, VacuumReport};

/// Every table the pipeline writes: each source's target and its quarantine, and the
/// derived tables (and theirs), in name order.
pub fn tables(pipeline: &Pipeline) -> Vec<String> {
    let mut tables = BTreeSet::new();
    let targets = pipeline.config.sources.values().map(|s| s.target().to_owned());
    for table in targets.chain(pipeline.dag.order().iter().cloned()) {
        if let Some(name) = crate::config::TableName::parse(&table) {
            tables.insert(name.quarantine().to_string());
        }
        tables.insert(table);
    }
    tables.into_iter().collect()
}

/// The tables a run committed to (data tables and quarantines).
pub fn committed_tables(report: &RunReport) -> Vec<String> {
    let mut tables = BTreeSet::new();
    for source in &report.sources {
        if !source.commits.is_empty() {
            tables.insert(source.table.clone());
            if source.quarantine_version.is_some()
                && let Some(name) = crate::config::TableName::parse(&source.table)
            {
                tables.insert(name.quarantine().to_string());
            }
        }
    }
    for table in &report.tables {
        if table.status == crate::transform::TableStatus::Committed {
            tables.insert(table.table.clone());
            if table.quarantined > 0
                && let Some(name) = crate::config::TableName::parse(&table.table)
            {
                tables.insert(name.quarantine().to_string());
            }
        }
    }
    tables.into_iter().collect()
}

fn user_metadata(summary: String) -> HashMap<String, serde_json::Value> {
    HashMap::from([("userMetadata".to_owned(), serde_json::Value::String(summary))])
}

/// Records a maintenance commit in the run history; a lost row loses no data, so it is a
/// warning, not a failure.
/// Then the commit files the log retention lets go are deleted.
async fn record(
    pipeline: &Pipeline,
    kind: &'static str,
    table: &str,
    versions: std::ops::RangeInclusive<i64>,
    started_micros: i64,
) {
    let name = &pipeline.config.pipeline.name;
    if let Err(err) = crate::audit::record_operation(&pipeline.lake, name, kind, table, versions, started_micros).await
    {
        warn!(table, kind, error = %err, "run history not written");
        return;
    }
    clean_log(pipeline, table).await;
}

/// Deletes `table`'s expired commit files, but none after the oldest version an incremental
/// append downstream last read: its next run reads the commits since (without them it
/// could not tell new rows from old and would have to refuse).
async fn clean_log(pipeline: &Pipeline, table: &str) {
    let cleaned = async {
        let opened = crate::query::open(&pipeline.lake, table).await?;
        let reads = crate::transform::appenders_reads(pipeline, &opened).await?;
        let keep_from = reads.iter().map(|(_, read)| *read).min();
        if let Some((downstream, read)) = reads.iter().min_by_key(|(_, read)| *read) {
            debug!(table, downstream, read, "commit files after the version an incremental append read are kept");
        }
        opened.clean_log(keep_from).await
    };
    match cleaned.await {
        Ok(0) => {}
        Ok(files) => info!(table, files, "expired commit files deleted"),
        Err(err) => warn!(table, error = %err, "expired commit files not deleted"),
    }
}

/// Why `table` should not be compacted now: a derived table appends incrementally from it
/// and has not read its newest versions (the compaction would mix rows it has read with
/// rows it has not, and its next run would refuse). `None` when nothing stands in the way.
pub async fn compaction_deferred(pipeline: &Pipeline, table: &crate::table::Table) -> Result<Option<String>> {
    let Some(version) = table.version() else {
        return Ok(None);
    };
    // A quarantine whose replayed rows are not marked yet: the marking rewrites the files
    // they are in, which a compaction must not take first.
    if let Some(target) = table.name.strip_suffix(crate::config::QUARANTINE_SUFFIX) {
        let app = crate::replay::app_id(target);
        let landed = crate::query::open(&pipeline.lake, target).await?.app_version(&app).await?;
        let marked = table.app_version(&app).await?;
        if landed > marked {
            return Ok(Some(format!(
                "a replay of `{target}` landed rows its quarantine does not show as replayed yet: run `inlet replay {target}` first"
            )));
        }
    }
    Ok(crate::transform::lagging_appender(pipeline, table, version).await?.map(|(downstream, read)| {
        format!(
            "`{downstream}` appends incrementally from `{}` and has read it up to version {read} of {version}: run it first",
            table.name
        )
    }))
}

/// Optimizes `table`; `who` starts the commit's `userMetadata` (`inlet`, `inlet serve (scheduled)`).
/// Refused while an incremental append downstream has not read the table's newest versions
/// ([`compaction_deferred`]), unless `force` (that table then needs one run with
/// `incremental = false`).
pub async fn optimize(
    pipeline: &Pipeline,
    table: &str,
    options: &OptimizeOptions,
    who: &str,
    force: bool,
) -> Result<OptimizeReport> {
    let mut opened = crate::query::open(&pipeline.lake, table).await?;
    if !force && let Some(why) = compaction_deferred(pipeline, &opened).await? {
        return Err(crate::error::EngineError::Maintenance {
            table: table.to_owned(),
            message: format!("not compacted: {why} (or pass --force and run it once with `incremental = false`)"),
        });
    }
    let mut summary = format!("{who} optimize {table}");
    if let Some(filter) = &options.partition_filter {
        summary.push_str(&format!(" where {filter}"));
    }
    if !options.zorder_by.is_empty() {
        summary.push_str(&format!(" zorder by {}", options.zorder_by.join(", ")));
    }
    let started = chrono::Utc::now().timestamp_micros();
    let report = opened.optimize(options, user_metadata(summary)).await?;
    if let Some(version) = report.version {
        record(pipeline, "optimize", table, version..=version, started).await;
    }
    Ok(report)
}

/// Vacuums `table`; `who` starts the commits' `userMetadata`.
pub async fn vacuum(pipeline: &Pipeline, table: &str, options: &VacuumOptions, who: &str) -> Result<VacuumReport> {
    let mut opened = crate::query::open(&pipeline.lake, table).await?;
    let summary = format!(
        "{who} vacuum {table}{}{}",
        options.retain_hours.map(|h| format!(" retaining {h} hours")).unwrap_or_default(),
        if options.full { " (full)" } else { "" }
    );
    let started = chrono::Utc::now().timestamp_micros();
    let before = opened.version().unwrap_or(-1);
    let report = opened.vacuum(options, user_metadata(summary)).await;
    // Also when a full vacuum's second pass failed: the first pass's commits are recorded.
    if let Some(version) = opened.version().filter(|v| *v > before) {
        record(pipeline, "vacuum", table, before + 1..=version, started).await;
    }
    report
}

/// After a run has recorded its commits in the run history: the log policy set on the
/// tables it wrote, then their expired commit files deleted.
/// When the run history could not be written (`recorded` false), no commit file is deleted:
/// the next run's cleanup finds them again.
pub async fn after_run(pipeline: &Pipeline, report: &RunReport, recorded: bool) {
    let tables = committed_tables(report);
    apply_policy(pipeline, &tables).await;
    if !recorded {
        return;
    }
    for table in &tables {
        clean_log(pipeline, table).await;
    }
    // The run history's own log: it mirrors nothing, so only its retention holds it.
    clean_log(pipeline, crate::audit::RUNS_TABLE).await;
}

/// Sets `[pipeline.maintenance]`'s table properties on each of `tables` that exists and
/// differs. A table that cannot be set now (a race with a writer, the store) is tried after
/// the next run; it is logged, never a failure of the run.
async fn apply_policy(pipeline: &Pipeline, tables: &[String]) {
    let wanted = pipeline.config.pipeline.maintenance.table_properties();
    if wanted.is_empty() {
        return;
    }
    for table in tables {
        let started = chrono::Utc::now().timestamp_micros();
        let outcome = async {
            let mut opened = crate::query::open(&pipeline.lake, table).await?;
            let summary = format!("inlet set the table properties of {table} from [pipeline.maintenance]");
            let keys = opened.set_properties(&wanted, user_metadata(summary)).await?;
            Ok::<_, crate::error::EngineError>((!keys.is_empty()).then(|| opened.version()).flatten())
        }
        .await;
        match outcome {
            Ok(Some(version)) => record(pipeline, "properties", table, version..=version, started).await,
            Ok(None) => {}
            Err(err) => warn!(table, error = %err, "table properties not set; trying again after the next run"),
        }
    }
}

/// What auto-compaction or a scheduled action did to one table.
#[derive(Debug, Clone, Serialize)]
pub struct Upkept {
    pub table: String,
    pub action: &'static str,
    /// The version committed, if any.
    pub version: Option<i64>,
    pub files: u64,
    pub error: Option<String>,
    /// Why it was put off (a compaction an incremental append downstream would not survive).
    pub deferred: Option<String>,
}

impl Upkept {
    fn deferred(table: &str, action: &'static str, why: String) -> Upkept {
        Upkept { table: table.to_owned(), action, version: None, files: 0, error: None, deferred: Some(why) }
    }
}

/// Compacts each of `tables` holding more than `max_small_files` files under
/// `small_file_size_bytes` (when auto-compaction is on).
pub async fn compact_small_files(pipeline: &Pipeline, tables: &[String]) -> Vec<Upkept> {
    let section = &pipeline.config.pipeline.maintenance;
    let Some(max) = section.max_small_files else {
        return Vec::new();
    };
    let mut done = Vec::new();
    for table in tables {
        let small = async {
            let opened = crate::query::open(&pipeline.lake, table).await?;
            if !opened.exists() {
                return Ok((0, None));
            }
            let sizes = opened.active_files().await?.into_iter().map(|f| {
                let mut partition: Vec<_> = f.partition_values.into_iter().collect();
                partition.sort();
                (partition, f.remove.size)
            });
            // Files at the target size or over it are never packed: counting them would
            // compact after every run to no effect.
            let threshold = section.small_file_size_bytes.min(opened.target_file_size());
            let small = compactable_small_files(sizes, threshold);
            let deferred = if small > max { compaction_deferred(pipeline, &opened).await? } else { None };
            Ok::<_, crate::error::EngineError>((small, deferred))
        }
        .await;
        match small {
            Ok((small, Some(why))) => {
                info!(table, small, max, why, "auto-compaction deferred");
                done.push(Upkept::deferred(table, "optimize", why));
            }
            Ok((small, None)) if small > max => {
                info!(table, small, max, "auto-compacting");
                let outcome =
                    optimize(pipeline, table, &OptimizeOptions::default(), "inlet serve (auto-compaction)", true).await;
                done.push(upkept(table, "optimize", outcome.map(|r| (r.version, r.files_removed))));
            }
            Ok(_) => {}
            Err(err) => warn!(table, error = %err, "small files not counted"),
        }
    }
    done
}

/// Small files a compaction can merge: those under `threshold` bytes in partitions that
/// hold at least two of them (one small file alone in its partition stays as it is, so it
/// must not trigger a compaction after every run).
fn compactable_small_files<P: std::hash::Hash + Eq>(
    files: impl IntoIterator<Item = (P, Option<i64>)>,
    threshold: u64,
) -> usize {
    let mut by_partition: HashMap<P, usize> = HashMap::new();
    for (partition, size) in files {
        if size.is_some_and(|size| u64::try_from(size).is_ok_and(|size| size < threshold)) {
            *by_partition.entry(partition).or_default() += 1;
        }
    }
    by_partition.values().filter(|n| **n >= 2).sum()
}

/// Optimizes or vacuums every table the pipeline writes that exists (`inlet serve`'s
/// `optimize_schedule` and `vacuum_schedule`).
pub async fn every_table(pipeline: &Pipeline, action: Action) -> Vec<Upkept> {
    let started = chrono::Utc::now().timestamp_micros();
    let done = each_table(pipeline, action).await;
    // The pass itself, whatever it committed: serve starts the schedule from it.
    let failed: Vec<String> =
        done.iter().filter_map(|u| u.error.as_ref().map(|e| format!("{}: {e}", u.table))).collect();
    let status = if !failed.is_empty() {
        "failed"
    } else if done.iter().any(|u| u.version.is_some() || u.files > 0) {
        "committed"
    } else {
        "up_to_date"
    };
    let error = (!failed.is_empty()).then(|| failed.join("; "));
    let name = &pipeline.config.pipeline.name;
    if let Err(err) = crate::audit::record_pass(&pipeline.lake, name, action.name(), status, started, error).await {
        warn!(action = action.name(), error = %err, "scheduled pass not recorded in the run history");
    }
    done
}

async fn each_table(pipeline: &Pipeline, action: Action) -> Vec<Upkept> {
    let mut done = Vec::new();
    for table in tables(pipeline) {
        let opened = match crate::query::open(&pipeline.lake, &table).await {
            Ok(opened) => opened,
            Err(err) => {
                done.push(upkept(&table, action.name(), Err(err)));
                continue;
            }
        };
        if !opened.exists() {
            continue;
        }
        let who = "inlet serve (scheduled)";
        let outcome = match action {
            Action::Optimize => {
                match compaction_deferred(pipeline, &opened).await {
                    Ok(Some(why)) => {
                        info!(table, why, "scheduled optimize deferred");
                        done.push(Upkept::deferred(&table, action.name(), why));
                        continue;
                    }
                    Ok(None) => {}
                    Err(err) => {
                        done.push(upkept(&table, action.name(), Err(err)));
                        continue;
                    }
                }
                optimize(pipeline, &table, &OptimizeOptions::default(), who, true)
                    .await
                    .map(|r| (r.version, r.files_removed))
            }
            Action::Vacuum => {
                vacuum(pipeline, &table, &VacuumOptions::default(), who).await.map(|r| (None, r.files.len() as u64))
            }
        };
        done.push(upkept(&table, action.name(), outcome));
    }
    done
}

fn upkept(table: &str, action: &'static str, outcome: Result<(Option<i64>, u64)>) -> Upkept {
    match outcome {
        Ok((version, files)) => {
            info!(table, action, files, version = ?version, "maintenance done");
            Upkept { table: table.to_owned(), action, version, files, error: None, deferred: None }
        }
        Err(err) => {
            warn!(table, action, error = %err, "maintenance failed");
            Upkept {
                table: table.to_owned(),
                action,
                version: None,
                files: 0,
                error: Some(err.to_string()),
                deferred: None,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::{Action, compactable_small_files};

    /// A pipeline with no sources or tables, its lake in a temporary directory.
    fn empty_pipeline() -> (tempfile::TempDir, crate::run::Pipeline) {
        let dir = tempfile::tempdir().unwrap();
        let text = "[pipeline]\nname = \"p\"\nlake = \"lake\"\n";
        let config = crate::config::parse(text, &dir.path().join("inlet.toml")).unwrap();
        let pipeline = crate::run::Pipeline::new(config, dir.path().to_owned()).unwrap();
        (dir, pipeline)
    }

    fn id_schema() -> arrow::datatypes::SchemaRef {
        std::sync::Arc::new(arrow::datatypes::Schema::new(vec![arrow::datatypes::Field::new(
            "id",
            arrow::datatypes::DataType::Int64,
            true,
        )]))
    }

    /// A scheduled pass is recorded whatever it committed, and only passes start serve's
    /// schedules: a manual optimize of one table is not one.
    #[tokio::test]
    async fn scheduled_passes_are_recorded_and_read_back_apart_from_manual_optimizes() {
        let (_dir, pipeline) = empty_pipeline();
        // Nothing recorded yet.
        assert!(crate::status::last_maintenance(&pipeline).await.unwrap().is_empty());
        let before = chrono::Utc::now().timestamp_micros();
        // A pipeline with no tables: the pass commits nothing, and is recorded all the same.
        assert!(super::every_table(&pipeline, Action::Optimize).await.is_empty());
        let last = crate::status::last_maintenance(&pipeline).await.unwrap();
        assert!(last.get("optimize").is_some_and(|at| *at >= before), "{last:?}");
        assert!(!last.contains_key("vacuum"), "{last:?}");
        // A manual optimize's row (kind optimize, one table) does not move the pass.
        let name = crate::config::TableName::parse("bronze.t").unwrap();
        let mut table = crate::table::Table::open("bronze.t", crate::table::table_url(&pipeline.lake, &name).unwrap())
            .await
            .unwrap();
        let commit = crate::table::Commit::append(Vec::new(), Some(id_schema()), "test", 1, Default::default());
        table.commit(commit).await.unwrap();
        let passed = last["optimize"];
        let now = chrono::Utc::now().timestamp_micros();
        crate::audit::record_operation(&pipeline.lake, "p", "optimize", "bronze.t", 0..=0, now).await.unwrap();
        let last = crate::status::last_maintenance(&pipeline).await.unwrap();
        assert_eq!(last.get("optimize"), Some(&passed), "{last:?}");
        super::every_table(&pipeline, Action::Vacuum).await;
        let last = crate::status::last_maintenance(&pipeline).await.unwrap();
        assert_eq!(last.get("optimize"), Some(&passed), "{last:?}");
        assert!(last.get("vacuum").is_some_and(|at| *at >= passed), "{last:?}");
    }

    /// A quarantine is not compacted between a replay landing its rows and marking them.
    #[tokio::test]
    async fn a_quarantine_with_replayed_rows_not_yet_marked_waits() {
        let (_dir, pipeline) = empty_pipeline();
        let schema = id_schema();
        let name = crate::config::TableName::parse("bronze.t").unwrap();
        let open = |name: crate::config::TableName| {
            let url = crate::table::table_url(&pipeline.lake, &name).unwrap();
            async move { crate::table::Table::open(&name.to_string(), url).await }
        };
        let app = crate::replay::app_id("bronze.t");
        let mut target = open(name.clone()).await.unwrap();
        let mut quarantine = open(name.quarantine()).await.unwrap();
        assert_eq!(quarantine.name, "bronze.t__quarantine");
        let commit = |app: &str, txn| {
            crate::table::Commit::append(Vec::new(), Some(schema.clone()), app, txn, Default::default())
        };
        quarantine.commit(commit("inlet.source.t", 1)).await.unwrap();
        target.commit(commit(&app, 1)).await.unwrap();
        let deferred = super::compaction_deferred(&pipeline, &quarantine).await.unwrap();
        assert!(deferred.is_some_and(|why| why.contains("inlet replay bronze.t")));
        quarantine.commit(commit(&app, 1)).await.unwrap();
        assert_eq!(super::compaction_deferred(&pipeline, &quarantine).await.unwrap(), None);
        assert_eq!(super::compaction_deferred(&pipeline, &target).await.unwrap(), None);
    }

    #[test]
    fn a_small_file_alone_in_its_partition_is_not_compactable() {
        let files = [("a", Some(10)), ("a", Some(20)), ("b", Some(5)), ("c", Some(500)), ("c", Some(7)), ("d", None)];
        // `a`'s two small files merge; `b`'s and `c`'s single small file stay as they are.
        assert_eq!(compactable_small_files(files, 100), 2);
        assert_eq!(compactable_small_files(files, 1000), 4);
        assert_eq!(compactable_small_files(files, 1), 0);
    }
}
