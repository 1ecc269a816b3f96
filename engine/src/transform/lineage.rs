//! A derived table's lineage: what each committing run read (upstream versions, SQL and
//! settings hashes) and wrote, in its commit's `commitInfo["inlet_transform"]`, with a side
//! file that caches the last one.

use std::collections::{BTreeMap, HashMap};

use serde::{Deserialize, Serialize};
use tracing::info;

use crate::config::{TableConfig, WriteMode};
use crate::error::{EngineError, Result};
use crate::run::Pipeline;
use crate::table::{Commit, Table};

use super::RowCounts;

/// Key of the lineage in a transform commit's `commitInfo`.
pub const LINEAGE_KEY: &str = "inlet_transform";
/// Side file holding the last lineage, for when old commits have expired.
pub(super) const LINEAGE_FILE: &str = "_inlet/lineage.json";

/// What a table read and wrote: recorded in each of its commits.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Lineage {
    pub run_id: String,
    pub table: String,
    pub write: WriteMode,
    /// The table's `txn` version this lineage belongs to.
    pub txn_version: i64,
    pub sql: String,
    /// SHA-256 of the SQL text, hex.
    pub sql_hash: String,
    /// Version of every upstream table read.
    pub upstream: BTreeMap<String, i64>,
    /// Id (`metaData.id`) of every upstream table read: a recreated table starts over.
    #[serde(default)]
    pub upstream_ids: BTreeMap<String, String>,
    /// SHA-256 of the table's write settings (mode, keys, sequence, deletes, partitions, ...).
    #[serde(default)]
    pub config_hash: String,
    pub incremental: bool,
    pub rows: RowCounts,
    /// Quarantine files this run staged, published right after its commit (a run that dies
    /// in between has the next one publish them).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub quarantine: Vec<deltalake::kernel::Add>,
    /// The backfill window this run replaced (`inlet backfill`); its `upstream` is then the
    /// last full run's, so a full run still sees what changed since that.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub window: Option<String>,
}

/// Publishes rows a derived table's run quarantined, after the table's commit, with the
/// table's app id and `txn` version (so it happens once).
pub(super) async fn commit_quarantine(
    quarantine: &mut Table,
    adds: Vec<deltalake::kernel::Add>,
    app_id: &str,
    txn_version: i64,
) -> Result<i64> {
    let schema = crate::ingest::quarantine_schema_change(quarantine)?;
    quarantine.commit(Commit::append(adds, schema, app_id, txn_version, HashMap::new())).await
}

/// A run that died between the table's commit and its quarantine commit left the
/// quarantine's files staged and named in its lineage: publish them now.
pub(super) async fn finish_quarantine(last: Option<&Lineage>, quarantine: &mut Table, app_id: &str) -> Result<()> {
    let Some(last) = last.filter(|l| !l.quarantine.is_empty()) else {
        return Ok(());
    };
    if quarantine.app_version(app_id).await?.is_some_and(|v| v >= last.txn_version) {
        return Ok(());
    }
    info!(table = %last.table, files = last.quarantine.len(), "publishing the quarantine of an interrupted run");
    commit_quarantine(quarantine, last.quarantine.clone(), app_id, last.txn_version).await?;
    Ok(())
}

/// The write settings a result depends on, as text: a change re-runs the table.
pub(super) fn config_fingerprint(config: &TableConfig) -> String {
    format!(
        "write={:?};keys={:?};sequence_by={:?};delete_when={:?};incremental={};partition_by={:?};track_columns={:?};deletes={:?};snapshot={};on_new_columns={:?}",
        config.write,
        config.keys,
        config.sequence_by,
        config.delete_when.as_ref().map(|d| d.get_ref()),
        config.incremental,
        config.partition_by,
        config.track_columns,
        config.deletes,
        config.source_is_snapshot,
        config.on_new_columns
    )
}

pub(super) fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// The lineage of the table's last committing run (`txn` version `txn`): from the side
/// file when it belongs to that version, else from that commit in the log.
pub(super) async fn last_lineage(target: &Table, app_id: &str, txn: Option<i64>) -> Result<Option<Lineage>> {
    let Some(txn) = txn else {
        return Ok(None);
    };
    if let Some(bytes) = target.read_side_file(LINEAGE_FILE).await?
        && let Ok(lineage) = serde_json::from_slice::<Lineage>(&bytes)
        && lineage.txn_version == txn
    {
        return Ok(Some(lineage));
    }
    let lost = |why: String| EngineError::Ledger {
        table: target.name.clone(),
        app_id: app_id.to_owned(),
        message: format!("the lineage of `txn` version {txn} is not in `{LINEAGE_FILE}`, and {why}"),
    };
    match crate::log::commit_of_txn(target, app_id, None).await? {
        crate::log::TxnCommit::Found(commit) => match commit.info::<Lineage>(&target.name, LINEAGE_KEY)? {
            Some(lineage) if lineage.txn_version == txn => Ok(Some(lineage)),
            Some(lineage) => {
                Err(lost(format!("commit {} holds the lineage of `txn` {}", commit.version, lineage.txn_version)))
            }
            None => Err(lost(format!("commit {} carries no lineage", commit.version))),
        },
        crate::log::TxnCommit::Expired { .. } => Err(lost("its commit has expired from the log".to_owned())),
        crate::log::TxnCommit::Never => Ok(None),
    }
}

pub(super) async fn save_lineage(target: &Table, lineage: &Lineage) -> Result<()> {
    if !target.exists() {
        return Ok(());
    }
    let bytes = serde_json::to_vec_pretty(lineage).map_err(|e| EngineError::Internal(format!("lineage: {e}")))?;
    target.write_side_file(LINEAGE_FILE, bytes).await
}

/// A derived table that appends incrementally from `upstream` and has not read it up to
/// `version` yet, with the version it last read. Compacting `upstream` now would put the
/// rows that table has not read into files that also hold rows it has, and its next run
/// would have to refuse (an incremental append cannot tell them apart). `None` when every
/// such table has caught up, or will read `upstream` whole anyway (never ran, the table was
/// recreated since).
pub async fn lagging_appender(pipeline: &Pipeline, upstream: &Table, version: i64) -> Result<Option<(String, i64)>> {
    Ok(appenders_reads(pipeline, upstream).await?.into_iter().find(|(_, read)| *read < version))
}

/// Each derived table that appends incrementally from `upstream`, with the version of it
/// that table last read: its next run reads `upstream`'s commits after that one. Tables
/// that will read `upstream` whole anyway (never ran, `upstream` recreated since) are not
/// listed.
pub async fn appenders_reads(pipeline: &Pipeline, upstream: &Table) -> Result<Vec<(String, i64)>> {
    let mut reads = Vec::new();
    for name in pipeline.dag.downstream(&upstream.name) {
        let Some(config) = pipeline.config.tables.get(name) else { continue };
        if config.write != WriteMode::Append || !config.incremental {
            continue;
        }
        let target = Table::open(name, crate::table::table_url(&pipeline.lake, &super::table_name(name)?)?).await?;
        if !target.exists() {
            continue;
        }
        let app_id = super::app_id(name);
        let txn = target.app_version(&app_id).await?;
        let Some(last) = last_lineage(&target, &app_id, txn).await? else { continue };
        let same_table = last.upstream_ids.get(&upstream.name).is_none_or(|id| Some(id) == upstream.id().as_ref());
        if let Some(read) = last.upstream.get(&upstream.name).copied().filter(|_| same_table) {
            reads.push((name.clone(), read));
        }
    }
    Ok(reads)
}
