//! Publishing a staged group: the quarantine commit with an intent, then the data commit.
//!
//! A group with quarantined records is published in two commits, both with the source's
//! `txn` version `t + 1`:
//! 1. the quarantine table: its rows, and an intent naming the group's units and carrying
//!    the data commit itself, staged (its `add` actions, schema and commit metadata);
//! 2. the data table: its rows, the evolved schema, the `txn` and the source's position.
//!
//! The data commit is the one that counts. A run that dies between the two leaves the
//! quarantine's `txn` ahead of the data's; the next run finds the intent and makes the data
//! commit it carries, exactly as it was staged, when nothing since changed the table's
//! schema or protocol and the staged files are still there ([`finish_interrupted`]). Otherwise it redoes the group from
//! the source (the intent's files, or the extractor's last committed position) without
//! committing its quarantine rows again. Either way no record is doubled or lost.

use std::collections::HashMap;

use arrow::datatypes::SchemaRef;
use deltalake::kernel::engine::arrow_conversion::{TryFromArrow, TryFromKernel};
use deltalake::kernel::{Add, Remove, StructType};
use serde::{Deserialize, Serialize};
use tracing::{info, warn};

use super::position::{COMMIT_INFO_KEY, SourceCommit};
use crate::error::{EngineError, Result};
use crate::log::TxnCommit;
use crate::schema::quarantine_schema;
use crate::table::{Commit, Table};

/// Key of the intent in a quarantine commit's `commitInfo`.
pub(crate) const INTENT_KEY: &str = "inlet_intent";

/// What a quarantine commit says about the data commit that follows it.
#[derive(Debug, Serialize, Deserialize)]
pub(crate) struct Intent {
    pub app_id: String,
    pub txn_version: i64,
    pub load_id: String,
    /// The group's units: file paths, or page URLs.
    #[serde(default)]
    pub files: Vec<String>,
    /// The data commit, staged (absent in intents written before it was kept).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub commit: Option<StagedCommit>,
}

/// A data commit, staged: what [`Table::commit`] gets, in a form the log can hold.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct StagedCommit {
    /// The table version the group was planned on; `None` when the table did not exist.
    pub base_version: Option<i64>,
    /// The table's id then: a table made anew since is not the one it was staged for.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub table_id: Option<String>,
    pub adds: Vec<Add>,
    /// The files of the base version it replaces (a source starting over).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub removes: Vec<Remove>,
    /// The table's schema when the commit creates the table or adds columns.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub schema: Option<StructType>,
    /// `commitInfo` of the data commit: the source's record, the gate's report, the summary.
    pub metadata: HashMap<String, serde_json::Value>,
}

/// A staged group, ready to publish.
pub(crate) struct Group {
    pub app_id: String,
    pub txn_version: i64,
    pub load_id: String,
    pub data_adds: Vec<Add>,
    pub quarantine_adds: Vec<Add>,
    /// The table's files the group replaces (a source starting over), else none.
    pub removes: Vec<Remove>,
    /// The full table schema when the table is new or the group brought columns.
    pub schema: Option<SchemaRef>,
    /// The source's record: ledger entries or position.
    pub record: SourceCommit,
    /// `commitInfo` beside the record: the gate's report and `userMetadata`.
    pub metadata: HashMap<String, serde_json::Value>,
    /// The group's units, named in the intent.
    pub units: Vec<String>,
    /// A redone group whose quarantine rows an interrupted run committed already.
    pub quarantine_committed: bool,
}

/// The versions a group's commits made.
pub(crate) struct Published {
    pub version: i64,
    pub quarantine_version: Option<i64>,
}

/// Publishes a group: its quarantine rows with the intent (unless committed already), then
/// its rows with the source's record.
pub(crate) async fn publish(table: &mut Table, quarantine: &mut Table, group: Group) -> Result<Published> {
    let Group {
        app_id,
        txn_version,
        load_id,
        data_adds,
        quarantine_adds,
        removes,
        schema,
        record,
        mut metadata,
        units,
        quarantine_committed,
    } = group;
    let record = serde_json::to_value(&record)
        .map_err(|e| EngineError::Internal(format!("serialising the commit record: {e}")))?;
    metadata.insert(COMMIT_INFO_KEY.to_owned(), record);
    let mut quarantine_version = None;
    if !quarantine_adds.is_empty() && !quarantine_committed {
        let staged = StagedCommit {
            base_version: table.version(),
            table_id: table.id(),
            adds: data_adds.clone(),
            removes: removes.clone(),
            schema: schema
                .as_ref()
                .map(|s| StructType::try_from_arrow(s.as_ref()))
                .transpose()
                .map_err(|e| EngineError::Internal(format!("schema of `{}`: {e}", table.name)))?,
            metadata: metadata.clone(),
        };
        let intent = Intent { app_id: app_id.clone(), txn_version, load_id, files: units, commit: Some(staged) };
        let intent =
            serde_json::to_value(&intent).map_err(|e| EngineError::Internal(format!("serialising the intent: {e}")))?;
        let schema = quarantine_schema_change(quarantine)?;
        let metadata = HashMap::from([(INTENT_KEY.to_owned(), intent)]);
        let version =
            quarantine.commit(Commit::append(quarantine_adds, schema, &app_id, txn_version, metadata)).await?;
        quarantine_version = Some(version);
    }
    let version =
        table.commit(Commit::append(data_adds, schema, &app_id, txn_version, metadata).replacing(removes)).await?;
    Ok(Published { version, quarantine_version })
}

/// What an interrupted group left, and what became of it.
pub(crate) enum Interrupted {
    /// The data commit its intent staged is now in the table, at `version`.
    Finished { version: i64, record: Box<SourceCommit>, quality: Option<Box<inlet_quality::GateReport>> },
    /// Its staged commit cannot be made as it is (the table's schema changed, a file is gone
    /// or may be vacuumed, an intent from before they were kept): the group is redone from
    /// the source, without its quarantine rows, with `txn` version `txn_version`.
    Redo { txn_version: i64, units: Vec<String> },
}

/// Finishes the group a run left between its quarantine commit and its data commit, if any:
/// the quarantine's `txn` of `app_id` ahead of the data table's (`data_txn`).
pub(crate) async fn finish_interrupted(
    table: &mut Table,
    quarantine: &Table,
    app_id: &str,
    data_txn: i64,
) -> Result<Option<Interrupted>> {
    let Some(quarantine_txn) = quarantine.app_version(app_id).await? else {
        return Ok(None);
    };
    if quarantine_txn <= data_txn {
        return Ok(None);
    }
    let lost = |why: &str| EngineError::Ledger {
        table: quarantine.name.clone(),
        app_id: app_id.to_owned(),
        message: format!("quarantine `txn` {quarantine_txn} is ahead of the data table's {data_txn} but {why}"),
    };
    let (intent, written_ms) = match crate::log::commit_of_txn(quarantine, app_id, None).await? {
        TxnCommit::Found(commit) => (
            commit.info::<Intent>(&quarantine.name, INTENT_KEY)?.ok_or_else(|| lost("its commit has no intent"))?,
            commit.timestamp_ms,
        ),
        TxnCommit::Expired { .. } | TxnCommit::Never => return Err(lost("its commit cannot be found")),
    };
    // Staged files older than a VACUUM's default retention may go between the check that
    // they are there and the commit naming them: such a group is redone instead.
    let now_ms = chrono::Utc::now().timestamp_millis();
    let fresh = written_ms.is_some_and(|t| now_ms.saturating_sub(t) < FINISH_WITHIN_MS);
    if intent.app_id != app_id || intent.txn_version != quarantine_txn {
        return Err(lost(&format!(
            "its intent is for `{}` at {}, not this source's group",
            intent.app_id, intent.txn_version
        )));
    }
    if let Some(staged) = intent.commit
        && fresh
        && (staged.table_id.is_none() || staged.table_id == table.id())
        // A commit replacing the table's files applies only to the version it was planned on.
        && (staged.removes.is_empty() || table.version() == staged.base_version)
        && unchanged_since(table, staged.base_version).await
        && table.files_exist(&staged.adds).await?
    {
        let record = staged
            .metadata
            .get(COMMIT_INFO_KEY)
            .map(|r| serde_json::from_value::<SourceCommit>(r.clone()))
            .transpose()
            .map_err(|e| EngineError::Internal(format!("the intent's commit record: {e}")))?
            .ok_or_else(|| lost("its staged commit has no record"))?;
        let quality = staged
            .metadata
            .get(crate::expect::QUALITY_KEY)
            .and_then(|q| serde_json::from_value::<inlet_quality::GateReport>(q.clone()).ok());
        let schema = staged
            .schema
            .as_ref()
            .map(|s| arrow::datatypes::Schema::try_from_kernel(s).map(std::sync::Arc::new))
            .transpose()
            .map_err(|e| EngineError::Internal(format!("the intent's schema: {e}")))?;
        info!(table = %table.name, txn_version = quarantine_txn, files = staged.adds.len(), "publishing the data commit of an interrupted group");
        let version = table
            .commit(
                Commit::append(staged.adds, schema, app_id, quarantine_txn, staged.metadata).replacing(staged.removes),
            )
            .await?;
        return Ok(Some(Interrupted::Finished { version, record: Box::new(record), quality: quality.map(Box::new) }));
    }
    info!(table = %table.name, txn_version = quarantine_txn, units = intent.files.len(), "redoing an interrupted group");
    Ok(Some(Interrupted::Redo { txn_version: quarantine_txn, units: intent.files }))
}

/// How old an interrupted group's staged files may be to be committed: a day less than
/// the 7 days VACUUM keeps unreferenced files by default.
const FINISH_WITHIN_MS: i64 = 6 * 24 * 3600 * 1000;

/// The most commits since a staged commit's base that are read to tell whether it still
/// applies; beyond, the group is redone.
const UNCHANGED_SCAN_COMMITS: i64 = 1000;

/// Whether a blind append staged on `base` still applies to the table as it is: nothing
/// since changed its schema, properties or protocol (appends, an OPTIMIZE, a restore to the
/// same schema leave it applicable; its rows are in no commit yet).
/// A log that cannot be read here says "redo": redoing is always safe.
async fn unchanged_since(table: &Table, base: Option<i64>) -> bool {
    let (Some(base), Some(latest)) = (base, table.version()) else {
        return base == table.version();
    };
    if latest == base {
        return true;
    }
    if latest < base || latest - base > UNCHANGED_SCAN_COMMITS {
        return false;
    }
    match crate::log::read_range(table, base + 1..=latest).await {
        Ok(commits) => commits.iter().all(|(_, commit)| commit.as_ref().is_some_and(|c| !c.changes_table)),
        Err(error) => {
            warn!(table = %table.name, error = %error, "the log since the interrupted group cannot be read; redoing it");
            false
        }
    }
}

/// The quarantine schema when the table lacks it (new, or from before `_error_rule`).
pub(crate) fn quarantine_schema_change(quarantine: &Table) -> Result<Option<SchemaRef>> {
    let wanted = quarantine_schema();
    match quarantine.arrow_schema()? {
        Some(existing) if wanted.fields().iter().all(|f| existing.field_with_name(f.name()).is_ok()) => Ok(None),
        _ => Ok(Some(wanted)),
    }
}
