//! The only module that writes Delta tables.
//!
//! A load is staged as Parquet files (through delta-rs' [`DeltaWriter`]) and published by
//! one commit that carries, together: the `add` actions, a `metaData` action when the
//! schema evolved, the source's `txn` action (app id, version) and the file ledger in the
//! commit's `commitInfo`. Files written by a load that never commits are unreferenced and
//! invisible to readers; `inlet vacuum --full` removes them once older than the retention.

mod checked;
mod compact;
mod deletion_vectors;
mod encoding;
mod key_scan;
mod maintenance;
mod stats;

use std::collections::HashMap;
use std::num::NonZeroU64;
use std::path::Path;
use std::sync::Arc;

use arrow::datatypes::SchemaRef;
use arrow::record_batch::RecordBatch;
use deltalake::datafile::writer::{DeltaWriter, WriterConfig};
use deltalake::kernel::engine::arrow_conversion::TryFromArrow;
use deltalake::kernel::transaction::{CommitBuilder, CommitProperties};
use deltalake::kernel::{Action, Add, AddCDCFile, MetadataExt, Remove, StructType, Transaction};
use deltalake::protocol::{DeltaOperation, SaveMode};
use deltalake::table::config::{TablePropertiesExt, TableProperty};
use deltalake::{DeltaTable, DeltaTableBuilder, DeltaTableError};
use object_store::ObjectStoreExt;
use url::Url;

pub(crate) use deletion_vectors::Marks;
pub use encoding::{data_writer_properties, file_writer_properties};
pub(crate) use key_scan::{Key, KeyScan, KeySet};
pub use maintenance::{OptimizeOptions, OptimizeReport, VacuumOptions, VacuumReport};

use crate::config::TableName;
use crate::error::{EngineError, Result};

/// Target size of the Parquet files inlet writes.
pub const TARGET_FILE_SIZE_BYTES: u64 = 128 * 1024 * 1024;

/// Resolves the lake root: a URL, or a path relative to the pipeline file's directory.
pub fn lake_url(base_dir: &Path, lake: &str) -> Result<Url> {
    if lake.contains("://") {
        let mut url = Url::parse(lake).map_err(|e| EngineError::Config {
            path: base_dir.join("inlet.toml"),
            message: format!("`pipeline.lake`: `{lake}` is not a valid URL: {e}"),
        })?;
        if !url.path().ends_with('/') {
            url.set_path(&format!("{}/", url.path()));
        }
        return Ok(url);
    }
    let path = crate::config::resolve_path(base_dir, lake);
    let path = std::path::absolute(&path).map_err(|source| EngineError::ReadConfig { path: path.clone(), source })?;
    Url::from_directory_path(&path).map_err(|()| EngineError::Config {
        path: base_dir.join("inlet.toml"),
        message: format!("`pipeline.lake`: `{}` is not a usable directory", path.display()),
    })
}

/// Where a table lives: `<lake>/<layer>/<name>/`.
pub fn table_url(lake: &Url, table: &TableName) -> Result<Url> {
    lake.join(&format!("{}/{}/", table.layer, table.name))
        .map_err(|e| EngineError::Internal(format!("joining `{lake}` and `{table}`: {e}")))
}

/// A table that may not exist yet.
pub struct Table {
    pub name: String,
    pub url: Url,
    delta: DeltaTable,
    /// `txn` versions looked up, by application id, with the table version they are of:
    /// each lookup replays the log, and a run asks about the same state several times.
    txns: std::sync::Mutex<std::collections::HashMap<String, TxnAt>>,
    /// Columns readers filter on (keys, sequence and cursor columns): every data file keeps
    /// their statistics, wherever they sit in the schema ([`stats_columns`]).
    filter_columns: Vec<String>,
}

/// A `txn` version looked up (`.1`), and the table version it is of (`.0`).
type TxnAt = (Option<i64>, Option<i64>);

impl Table {
    /// Opens the table at `url`, loading its latest version when it exists.
    pub async fn open(name: &str, url: Url) -> Result<Table> {
        let error =
            |source| EngineError::Delta { table: name.to_owned(), location: url.to_string(), source: Box::new(source) };
        let mut delta = DeltaTableBuilder::from_url(url.clone()).and_then(|b| b.build()).map_err(error)?;
        // Only load what exists: loading a location without a log is an error (and logged as one).
        if delta.log_store().is_delta_table_location().await.map_err(error)? {
            delta.load().await.map_err(error)?;
        }
        Ok(Table { name: name.to_owned(), url, delta, txns: Default::default(), filter_columns: Vec::new() })
    }

    fn error(&self, source: DeltaTableError) -> EngineError {
        EngineError::Delta { table: self.name.clone(), location: self.url.to_string(), source: Box::new(source) }
    }

    /// Loads an older version (time travel).
    pub async fn load_version(&mut self, version: i64) -> Result<()> {
        let wanted =
            u64::try_from(version).map_err(|_| EngineError::Internal(format!("negative version {version}")))?;
        match self.delta.load_version(wanted).await {
            Ok(()) => Ok(()),
            Err(e) => match self.oldest_commit().await {
                Some(oldest) if version < oldest => Err(EngineError::TimeTravel {
                    table: self.name.clone(),
                    message: format!(
                        "version {version} is no longer in the log: commit files older than the table's log retention (`delta.logRetentionDuration`) are deleted once a checkpoint covers them; the oldest version left is {oldest}"
                    ),
                }),
                _ => Err(self.error(e)),
            },
        }
    }

    /// The oldest version whose commit file is still in the log.
    async fn oldest_commit(&self) -> Option<i64> {
        use futures::TryStreamExt;
        let store = self.delta.log_store();
        let listed: Vec<deltalake::ObjectMeta> =
            store.object_store(None).list(Some(store.log_path())).try_collect().await.ok()?;
        listed.iter().filter_map(|meta| meta.location.filename()?.strip_suffix(".json")?.parse::<i64>().ok()).min()
    }

    /// Loads the latest version committed at or before `at` (time travel).
    /// Refuses a time before the oldest commit left in the log (delta-rs would load that
    /// commit's version instead).
    pub async fn load_at(&mut self, at: chrono::DateTime<chrono::Utc>) -> Result<()> {
        if let Some(oldest) = self.oldest_commit().await.filter(|v| *v > 0)
            && let Some(commit) = crate::log::read(self, oldest).await?
            && let Some(then) = commit.timestamp_ms.and_then(chrono::DateTime::from_timestamp_millis)
            && at < then
        {
            return Err(EngineError::TimeTravel {
                table: self.name.clone(),
                message: format!(
                    "{at} is before the oldest commit left in the log (version {oldest}, {then}): commit files older than the table's log retention (`delta.logRetentionDuration`) are deleted once a checkpoint covers them"
                ),
            });
        }
        self.delta.load_with_datetime(at).await.map_err(|e| self.error(e))
    }

    /// Restores the table to an earlier version (delta-rs `RESTORE`): one commit that adds
    /// back the files of that version and removes the others, carrying `metadata` (who, why).
    /// Refuses, naming a file, when a file of that version is gone (vacuumed).
    pub async fn restore(&mut self, to: RestoreTo, metadata: HashMap<String, serde_json::Value>) -> Result<i64> {
        if !self.exists() {
            return Err(EngineError::Restore {
                table: self.name.clone(),
                message: format!("there is no table at {}", self.url),
            });
        }
        let mut builder = self.delta.clone().restore();
        builder = match to {
            RestoreTo::Version(version) => builder.with_version_to_restore(
                u64::try_from(version).map_err(|_| EngineError::Internal(format!("negative version {version}")))?,
            ),
            RestoreTo::Time(at) => builder.with_datetime_to_restore(at),
        };
        let restored = builder
            .with_commit_properties(
                CommitProperties::default().with_metadata(metadata).with_cleanup_expired_logs(Some(false)),
            )
            .await
            .map_err(|e| match &e {
                DeltaTableError::GenericError { source } if source.to_string().contains("missing file") => {
                    EngineError::Restore {
                        table: self.name.clone(),
                        message: format!(
                            "{source}: files of that version were removed (VACUUM), so it can no longer be restored"
                        ),
                    }
                }
                _ => EngineError::Restore { table: self.name.clone(), message: e.to_string() },
            })?;
        self.delta = restored.0;
        self.version().ok_or_else(|| EngineError::Internal(format!("`{}` has no version after a restore", self.name)))
    }

    /// Every row of the loaded version, read through DataFusion, in no particular order.
    pub async fn read_all(&self) -> Result<Vec<RecordBatch>> {
        use deltalake::datafusion::prelude::SessionContext;
        let query_error = |source| EngineError::query(self.name.clone(), source);
        if !self.exists() {
            return Ok(Vec::new());
        }
        let context = SessionContext::new();
        self.delta.update_datafusion_session(&context.state()).map_err(|e| self.error(e))?;
        let provider = self.delta.table_provider().await.map_err(query_error)?;
        context.register_table("t", provider).map_err(query_error)?;
        let frame = context.sql("SELECT * FROM t").await.map_err(query_error)?;
        frame.collect().await.map_err(query_error)
    }

    /// The data files of the loaded version.
    pub async fn active_files(&self) -> Result<Vec<ActiveFile>> {
        use futures::TryStreamExt;
        let Ok(state) = self.delta.snapshot() else {
            return Ok(Vec::new());
        };
        let views: Vec<_> = state
            .snapshot()
            .file_views(self.delta.log_store().as_ref(), None)
            .try_collect()
            .await
            .map_err(|e| self.error(e))?;
        Ok(views
            .iter()
            .map(|view| ActiveFile {
                path: view.path().to_string(),
                partition_values: view.partition_values_map(),
                remove: view.remove_action(true),
                location: view.object_store_path(),
                // Every field of the add (row tracking and clustering ones too), for adding
                // the file again with a new deletion vector.
                #[allow(deprecated)]
                add: view.add_action(),
            })
            .collect())
    }

    /// The rows of one data file (a path as [`ActiveFile::path`] has it), in file order.
    pub async fn read_file(&self, path: &str) -> Result<Vec<RecordBatch>> {
        let location = object_store::path::Path::from(path);
        let store_error = |source| EngineError::ObjectStore { path: path.to_owned(), source: Box::new(source) };
        let bytes = self.delta.object_store().get(&location).await.map_err(store_error)?;
        let bytes = bytes.bytes().await.map_err(store_error)?;
        let reader = parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder::try_new(bytes)
            .and_then(|b| b.build())
            .map_err(|e| EngineError::Internal(format!("reading `{path}` of `{}`: {e}", self.name)))?;
        reader
            .collect::<std::result::Result<Vec<_>, _>>()
            .map_err(|e| EngineError::arrow(format!("reading `{path}`"), e))
    }

    /// The distinct non-NULL values of `column` as text (what `relationships` checks look up);
    /// none when the table does not exist yet.
    pub async fn column_text_values(&self, column: &str) -> Result<std::collections::HashSet<String>> {
        use arrow::array::{Array, StringArray};
        use deltalake::datafusion::prelude::SessionContext;
        let query_error = |source| EngineError::query(self.name.clone(), source);
        let mut values = std::collections::HashSet::new();
        if !self.exists() {
            return Ok(values);
        }
        let context = SessionContext::new();
        self.delta.update_datafusion_session(&context.state()).map_err(|e| self.error(e))?;
        let provider = self.delta.table_provider().await.map_err(query_error)?;
        context.register_table("t", provider).map_err(query_error)?;
        let quoted = format!("\"{}\"", column.replace('"', "\"\""));
        let sql = format!("SELECT DISTINCT CAST({quoted} AS VARCHAR) FROM t WHERE {quoted} IS NOT NULL");
        let batches = context.sql(&sql).await.map_err(query_error)?.collect().await.map_err(query_error)?;
        for batch in batches {
            let column = arrow::compute::cast(batch.column(0), &arrow::datatypes::DataType::Utf8)
                .map_err(|e| EngineError::arrow("relationship values", e))?;
            if let Some(text) = column.as_any().downcast_ref::<StringArray>() {
                values.extend(text.iter().flatten().map(str::to_owned));
            }
        }
        Ok(values)
    }

    /// The change data feed after `since` up to the loaded version, as a DataFusion table: the
    /// table's columns plus `_change_type`, `_commit_version` and `_commit_timestamp`. `None`
    /// when change data was not recorded for every version in between (not enabled at `since`,
    /// or turned off since), so the feed would not be whole.
    pub async fn change_data(
        &self,
        since: i64,
        session: &dyn deltalake::datafusion::catalog::Session,
    ) -> Result<Option<Arc<dyn deltalake::datafusion::catalog::TableProvider>>> {
        use deltalake::datafusion::catalog::TableProvider;
        let (Some(latest), Ok(since)) = (self.delta.version(), u64::try_from(since)) else {
            return Ok(None);
        };
        if !self.change_data_feed() || since >= latest {
            return Ok(None);
        }
        let mut then = self.delta.clone();
        if then.load_version(since).await.is_err()
            || !then.snapshot().is_ok_and(|state| state.table_config().enable_change_data_feed())
        {
            return Ok(None);
        }
        let builder = self.delta.clone().scan_cdf().with_starting_version(since + 1).with_ending_version(latest);
        let provider =
            deltalake::delta_datafusion::DeltaCdfTableProvider::try_new(builder).map_err(|e| self.error(e))?;
        // Planning reads the commits in between and fails when one turned change data off.
        match provider.scan(session, None, &[], None).await {
            Ok(_) => Ok(Some(Arc::new(provider))),
            Err(err) => {
                tracing::debug!(table = %self.name, since, error = %err, "change data feed not whole");
                Ok(None)
            }
        }
    }

    /// The table as a DataFusion table at the loaded version: all of it, or only `files`
    /// (paths as written in the log, or full URLs as a file column holds them); with
    /// `file_column`, each row's file URL in that column.
    pub async fn scan(
        &self,
        files: Option<Vec<String>>,
        file_column: Option<&str>,
    ) -> Result<Arc<dyn deltalake::datafusion::catalog::TableProvider>> {
        let query_error = |source| EngineError::query(self.name.clone(), source);
        let mut builder = self.delta.table_provider();
        if let Some(files) = files {
            builder = builder.with_file_paths(files);
        }
        if let Some(column) = file_column {
            builder = builder.with_file_column(column);
        }
        builder.await.map_err(query_error)
    }

    /// The path of a data file, as [`ActiveFile::path`] has it, from the URL a scan's file
    /// column holds.
    pub fn file_path_of(&self, url: &str) -> String {
        let relative = url.strip_prefix(self.url.as_str()).unwrap_or(url);
        crate::log::percent_decode(relative)
    }

    /// Makes the table's object store known to a DataFusion session, so it can scan it.
    pub fn register_store(&self, state: &dyn deltalake::datafusion::catalog::Session) -> Result<()> {
        self.delta.update_datafusion_session(state).map_err(|e| self.error(e))
    }

    /// Partition columns of the loaded version, when the table exists.
    pub fn partition_columns(&self) -> Option<Vec<String>> {
        self.delta.snapshot().ok().map(|s| s.metadata().partition_columns().to_vec())
    }

    /// The size `inlet optimize` packs files up to: `delta.targetFileSize`, else 100 MiB.
    pub fn target_file_size(&self) -> u64 {
        self.delta.snapshot().map_or(100 * 1024 * 1024, |state| state.table_config().target_file_size().get())
    }

    /// Whether the table has a first commit.
    pub fn exists(&self) -> bool {
        self.delta.version().is_some()
    }

    /// Latest loaded version.
    pub fn version(&self) -> Option<i64> {
        self.delta.version().and_then(|v| i64::try_from(v).ok())
    }

    /// The table's id (from its `metaData`), when it exists.
    pub fn id(&self) -> Option<String> {
        self.delta.snapshot().ok().map(|s| s.metadata().id().to_owned())
    }

    /// Arrow schema of the latest version.
    pub fn arrow_schema(&self) -> Result<Option<SchemaRef>> {
        match self.delta.snapshot() {
            Ok(state) => Ok(Some(state.snapshot().arrow_schema())),
            Err(_) => Ok(None),
        }
    }

    /// Last `txn` version of an application id, from the table state (survives checkpoints).
    pub async fn app_version(&self, app_id: &str) -> Result<Option<i64>> {
        let Ok(state) = self.delta.snapshot() else {
            return Ok(None);
        };
        let at = self.version();
        let known = self.txns.lock().unwrap_or_else(|e| e.into_inner()).get(app_id).copied();
        if let Some((of, txn)) = known
            && of == at
        {
            return Ok(txn);
        }
        let txn =
            state.transaction_version(self.delta.log_store().as_ref(), app_id).await.map_err(|e| self.error(e))?;
        self.txns.lock().unwrap_or_else(|e| e.into_inner()).insert(app_id.to_owned(), (at, txn));
        Ok(txn)
    }

    /// Raw bytes of a commit file, `None` when it no longer exists (expired after a checkpoint).
    /// Only [`crate::log`] reads them.
    pub(crate) async fn commit_bytes(&self, version: i64) -> Result<Option<Vec<u8>>> {
        let version =
            u64::try_from(version).map_err(|_| EngineError::Internal(format!("negative version {version}")))?;
        let bytes = self.delta.log_store().read_commit_entry(version).await.map_err(|e| self.error(e))?;
        Ok(bytes.map(|b| b.to_vec()))
    }

    /// Reads a side file stored under the table root (e.g. `_inlet/...`); `None` when absent.
    pub async fn read_side_file(&self, relative: &str) -> Result<Option<Vec<u8>>> {
        let path = object_store::path::Path::from(relative);
        match self.delta.object_store().get(&path).await {
            Ok(result) => {
                let bytes = result.bytes().await.map_err(|source| EngineError::ObjectStore {
                    path: relative.to_owned(),
                    source: Box::new(source),
                })?;
                Ok(Some(bytes.to_vec()))
            }
            Err(object_store::Error::NotFound { .. }) => Ok(None),
            Err(source) => Err(EngineError::ObjectStore { path: relative.to_owned(), source: Box::new(source) }),
        }
    }

    /// Deletes the commit files older than `delta.logRetentionDuration` that a checkpoint
    /// covers (when `delta.enableExpiredLogCleanup` allows), keeping every commit from
    /// `keep_from` on (a version a reader still needs the commits after); returns how many.
    pub async fn clean_log(&self, keep_from: Option<i64>) -> Result<usize> {
        let Ok(state) = self.delta.snapshot() else {
            return Ok(0);
        };
        if !state.table_config().enable_expired_log_cleanup() {
            return Ok(0);
        }
        let cutoff_millis =
            chrono::Utc::now().timestamp_millis() - state.table_config().log_retention_duration().as_millis() as i64;
        // Only files before a checkpoint at or under this version go.
        let keep = match keep_from.map(|v| u64::try_from(v).unwrap_or(0)) {
            Some(version) => version.min(state.version()),
            None => state.version(),
        };
        deltalake::checkpoints::cleanup_expired_logs_for(keep, self.delta.log_store().as_ref(), cutoff_millis, None)
            .await
            .map_err(|e| self.error(e))
    }

    /// Writes a checkpoint of the loaded version (tests: the log as it is after one).
    #[cfg(test)]
    pub(crate) async fn checkpoint(&self) -> Result<()> {
        deltalake::checkpoints::create_checkpoint(&self.delta, None).await.map_err(|e| self.error(e))
    }

    /// Whether every one of these staged files is still in storage (a file an interrupted
    /// run staged may have been vacuumed since).
    pub async fn files_exist(&self, adds: &[Add]) -> Result<bool> {
        use futures::StreamExt;
        let store = self.delta.object_store();
        let found: Vec<Result<bool>> = futures::stream::iter(adds)
            .map(|add| {
                let store = store.clone();
                async move {
                    let path = object_store::path::Path::from(crate::log::percent_decode(&add.path));
                    match store.head(&path).await {
                        Ok(_) => Ok(true),
                        Err(object_store::Error::NotFound { .. }) => Ok(false),
                        Err(source) => {
                            Err(EngineError::ObjectStore { path: add.path.clone(), source: Box::new(source) })
                        }
                    }
                }
            })
            .buffer_unordered(8)
            .collect()
            .await;
        let mut all = true;
        for exists in found {
            all &= exists?;
        }
        Ok(all)
    }

    /// Writes a side file atomically (readers see the old or the new content).
    pub async fn write_side_file(&self, relative: &str, bytes: Vec<u8>) -> Result<()> {
        let path = object_store::path::Path::from(relative);
        self.delta
            .object_store()
            .put(&path, bytes.into())
            .await
            .map_err(|source| EngineError::ObjectStore { path: relative.to_owned(), source: Box::new(source) })?;
        Ok(())
    }

    /// Makes writers of Parquet data files for this table, split by `partition_by`.
    pub fn writer_factory(&self, partition_by: &[String]) -> WriterFactory {
        self.factory(partition_by, self.delta.object_store(), None)
    }

    /// Makes writers of change data files (`_change_data/`, with a `_change_type` column);
    /// [`change_files`] turns what they stage into `cdc` actions.
    pub fn change_writer_factory(&self, partition_by: &[String]) -> WriterFactory {
        let store = object_store::prefix::PrefixStore::new(self.delta.object_store(), CHANGE_DATA_DIR);
        self.factory(partition_by, Arc::new(store), None)
    }

    /// Whether the loaded version records change data (`delta.enableChangeDataFeed`).
    pub fn change_data_feed(&self) -> bool {
        self.delta.snapshot().is_ok_and(|state| state.table_config().enable_change_data_feed())
    }

    /// Turns on `delta.enableChangeDataFeed` (upgrading the protocol as needed) in a commit of
    /// its own; a no-op when the table does not exist yet or records change data already.
    pub async fn enable_change_data_feed(&mut self) -> Result<()> {
        if !self.exists() || self.change_data_feed() {
            return Ok(());
        }
        self.set_property(TableProperty::EnableChangeDataFeed).await
    }

    /// Whether the table maps column names to other names in its data files
    /// (`delta.columnMapping.mode` other than `none`).
    pub(crate) fn maps_column_names(&self) -> bool {
        self.delta.snapshot().is_ok_and(|state| {
            state
                .metadata()
                .configuration()
                .get("delta.columnMapping.mode")
                .is_some_and(|mode| !mode.eq_ignore_ascii_case("none"))
        })
    }

    /// Whether writes may mark deleted rows in deletion vectors (`delta.enableDeletionVectors`).
    pub fn deletion_vectors(&self) -> bool {
        self.delta.snapshot().is_ok_and(|state| state.table_config().enable_deletion_vectors == Some(true))
    }

    /// Turns on `delta.enableDeletionVectors` (upgrading the protocol to reader 3 / writer 7
    /// with the `deletionVectors` feature) in a commit of its own; a no-op when the table
    /// does not exist yet or has them on already.
    pub async fn enable_deletion_vectors(&mut self) -> Result<()> {
        if !self.exists() || self.deletion_vectors() {
            return Ok(());
        }
        self.set_property(TableProperty::EnableDeletionVectors).await
    }

    /// Sets a boolean table property to `true` in a commit of its own.
    async fn set_property(&mut self, property: TableProperty) -> Result<()> {
        let wanted = std::collections::BTreeMap::from([(property.as_ref().to_owned(), "true".to_owned())]);
        self.set_properties(&wanted, HashMap::new()).await.map(drop)
    }

    /// Columns readers filter on: the files written from now on keep their statistics even
    /// past the table's first `delta.dataSkippingNumIndexedCols` columns.
    pub fn keep_stats_for(&mut self, columns: impl IntoIterator<Item = String>) {
        self.filter_columns.extend(columns);
    }

    /// The first-N rule (`delta.dataSkippingNumIndexedCols` as set: `-1` is every column,
    /// `None` here; unset is 32) and the columns `delta.dataSkippingStatsColumns` declares.
    fn stats_settings(&self) -> (Option<usize>, Option<Vec<Vec<String>>>) {
        let Ok(state) = self.delta.snapshot() else {
            return (Some(32), None);
        };
        let indexed = match state.metadata().configuration().get("delta.dataSkippingNumIndexedCols") {
            Some(n) => usize::try_from(n.trim().parse::<i64>().unwrap_or(32)).ok(),
            None => Some(32),
        };
        let declared = state
            .table_config()
            .data_skipping_stats_columns
            .as_ref()
            .map(|columns| columns.iter().map(|c| c.path().to_vec()).collect());
        (indexed, declared)
    }

    /// The `delta.dataSkippingStatsColumns` a commit of `schema` should set so that readers
    /// find the statistics of the columns they filter on ([`stats::stats_property`]).
    fn stats_property(&self, schema: &arrow::datatypes::Schema, partition_by: &[String]) -> Option<String> {
        let (indexed, declared) = self.stats_settings();
        stats::stats_property(schema, indexed, declared.as_deref(), partition_by, &self.filter_columns)
    }

    /// Writers of files of `target` bytes (default: the table's `delta.targetFileSize`, at
    /// most [`TARGET_FILE_SIZE_BYTES`]).
    fn factory(
        &self,
        partition_by: &[String],
        store: deltalake::logstore::ObjectStoreRef,
        target: Option<u64>,
    ) -> WriterFactory {
        let partition_by = partition_by.to_vec();
        let (num_indexed_cols, default_target) = match self.delta.snapshot() {
            Ok(state) => (
                state.table_config().num_indexed_cols(),
                state.table_config().target_file_size().get().min(TARGET_FILE_SIZE_BYTES),
            ),
            Err(_) => (Default::default(), TARGET_FILE_SIZE_BYTES),
        };
        let target = target.unwrap_or(default_target);
        let (indexed, declared) = self.stats_settings();
        let filter_columns = self.filter_columns.clone();
        let config = move |schema: SchemaRef, first: &RecordBatch| {
            let stats = stats::stats_columns(&schema, indexed, declared.as_deref(), &partition_by, &filter_columns);
            WriterConfig::new(
                schema,
                partition_by.clone(),
                Some(encoding::file_writer_properties(first)),
                NonZeroU64::new(target),
                None,
                num_indexed_cols,
                stats,
            )
        };
        WriterFactory { table: self.name.clone(), store, config: Arc::new(config) }
    }

    /// Publishes staged files, the optional new schema, the source's `txn` and the ledger in
    /// one commit. Creates the table when it does not exist. Returns the new version.
    pub async fn commit(&mut self, load: Commit) -> Result<i64> {
        let Commit {
            adds,
            removes,
            cdc,
            schema,
            partition_by,
            change_data_feed,
            deletion_vectors,
            operation,
            app_id,
            app_version,
            metadata,
        } = load;
        let properties = CommitProperties::default()
            .with_application_transaction(Transaction::new_with_last_update(
                &app_id,
                app_version,
                Some(chrono::Utc::now().timestamp_millis()),
            ))
            .with_metadata(metadata)
            // Commit files are cleaned up after the run has mirrored them in the run history
            // (`upkeep::after_run`), never in the middle of a run.
            .with_cleanup_expired_logs(Some(false));
        let actions: Vec<Action> = adds
            .into_iter()
            .map(Action::Add)
            .chain(removes.into_iter().map(Action::Remove))
            .chain(cdc.into_iter().map(Action::Cdc))
            .collect();
        let struct_type = match &schema {
            Some(schema) => {
                Some(StructType::try_from_arrow(schema.as_ref()).map_err(|e| self.error(DeltaTableError::from(e)))?)
            }
            None => None,
        };
        if !self.exists() {
            let struct_type = struct_type
                .ok_or_else(|| EngineError::Internal(format!("creating `{}` without a schema", self.name)))?;
            let mut create = self.delta.create();
            if change_data_feed {
                create = create.with_configuration_property(TableProperty::EnableChangeDataFeed, Some("true"));
            }
            if deletion_vectors {
                create = create.with_configuration_property(TableProperty::EnableDeletionVectors, Some("true"));
            }
            if let Some(schema) = &schema
                && let Some(columns) = self.stats_property(schema, &partition_by)
            {
                create = create.with_configuration_property(TableProperty::DataSkippingStatsColumns, Some(columns));
            }
            let delta = create
                .with_columns(struct_type.fields().cloned())
                .with_partition_columns(partition_by.clone())
                .with_save_mode(SaveMode::ErrorIfExists)
                .with_actions(actions)
                // A create has no snapshot to check conflicts against: a commit retried at the
                // next version would publish the same files twice. Losing the race is an error.
                .with_commit_properties(properties.with_max_retries(0))
                .await;
            let delta = match delta {
                Ok(delta) => delta,
                // Another writer created the table first: this group is redone on the next run.
                Err(_) if self.delta.log_store().is_delta_table_location().await.unwrap_or(false) => {
                    return Err(EngineError::ConcurrentCommit {
                        table: self.name.clone(),
                        app_id,
                        version: app_version,
                    });
                }
                Err(e) => return Err(self.error(e)),
            };
            self.delta = delta;
        } else {
            let state = self.delta.snapshot().map_err(|e| self.error(e))?.clone();
            let mut actions = actions;
            // The new schema, and the statistics columns readers should look for in it.
            let current = match &schema {
                Some(schema) => Some(schema.clone()),
                None => self.arrow_schema()?,
            };
            let stats_columns =
                current.and_then(|current| self.stats_property(&current, state.metadata().partition_columns()));
            if struct_type.is_some() || stats_columns.is_some() {
                let mut metadata = state.metadata().clone();
                if let Some(struct_type) = struct_type {
                    metadata = metadata.with_schema(&struct_type).map_err(|e| self.error(e.into()))?;
                }
                if let Some(columns) = stats_columns {
                    let key = TableProperty::DataSkippingStatsColumns.as_ref().to_owned();
                    metadata = metadata.add_config_key(key, columns).map_err(|e| self.error(e.into()))?;
                }
                actions.push(Action::Metadata(metadata));
            }
            let name = self.name.clone();
            let concurrent =
                || EngineError::ConcurrentCommit { table: name.clone(), app_id: app_id.clone(), version: app_version };
            if matches!(operation, CommitKind::Overwrite | CommitKind::Update { .. }) {
                // delta-rs lets an overwrite, or an update in place, go past a compaction of
                // the files it replaces, which would keep their rows alive (unchanged) in the
                // compacted file: checked here.
                let removing = actions
                    .iter()
                    .filter_map(|action| match action {
                        Action::Remove(remove) => Some(remove.path.clone()),
                        _ => None,
                    })
                    .collect();
                let guard = checked::Guard { removing, app_id: Some(&app_id) };
                let operation = operation.delta_operation(&partition_by);
                match self.commit_checked(actions, operation, properties, &guard).await? {
                    checked::Checked::Committed(_) => {}
                    checked::Checked::Conflict(why) => {
                        tracing::info!(table = %self.name, why, "commit lost to another writer");
                        return Err(concurrent());
                    }
                }
            } else {
                let committed = CommitBuilder::from(properties)
                    .with_actions(actions)
                    .build(Some(&state), self.delta.log_store(), operation.delta_operation(&partition_by))
                    .await
                    .map_err(|e| match e {
                        DeltaTableError::Transaction { .. } => concurrent(),
                        other => self.error(other),
                    })?;
                // Up to this commit, not the latest: what another writer committed since was
                // not planned against, so the next commit must be checked against it.
                self.delta.update_incremental(Some(committed.version)).await.map_err(|e| self.error(e))?;
            }
        }
        self.version().ok_or_else(|| EngineError::Internal(format!("`{}` has no version after a commit", self.name)))
    }
}

/// What a restore goes back to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RestoreTo {
    Version(i64),
    /// The latest version committed at or before this time.
    Time(chrono::DateTime<chrono::Utc>),
}

/// What one commit publishes.
pub struct Commit {
    pub adds: Vec<Add>,
    /// Files replaced or deleted by this commit.
    pub removes: Vec<Remove>,
    /// Change data files: with them, readers of the change data feed read these rows for
    /// this version instead of taking the adds as inserts and the removes as deletes.
    pub cdc: Vec<AddCDCFile>,
    /// Partition columns, used when the commit creates the table.
    pub partition_by: Vec<String>,
    /// Creates the table with `delta.enableChangeDataFeed = true`.
    pub change_data_feed: bool,
    /// Creates the table with `delta.enableDeletionVectors = true`.
    pub deletion_vectors: bool,
    pub operation: CommitKind,
    /// The full table schema when it changed (or the table is new).
    pub schema: Option<SchemaRef>,
    pub app_id: String,
    pub app_version: i64,
    /// Goes into `commitInfo`.
    pub metadata: HashMap<String, serde_json::Value>,
}

impl Commit {
    /// New rows and nothing else: an append by `app_id` at `txn` version `app_version`.
    pub fn append(
        adds: Vec<Add>,
        schema: Option<SchemaRef>,
        app_id: &str,
        app_version: i64,
        metadata: HashMap<String, serde_json::Value>,
    ) -> Commit {
        Commit {
            adds,
            removes: Vec::new(),
            cdc: Vec::new(),
            partition_by: Vec::new(),
            change_data_feed: false,
            deletion_vectors: false,
            operation: CommitKind::Append,
            schema,
            app_id: app_id.to_owned(),
            app_version,
            metadata,
        }
    }

    /// The same commit, also removing `removes` (the rows it replaces): an overwrite.
    pub fn replacing(mut self, removes: Vec<Remove>) -> Commit {
        if !removes.is_empty() {
            self.operation = CommitKind::Overwrite;
        }
        self.removes = removes;
        self
    }
}

/// The operation a commit records in the log (what `DESCRIBE HISTORY` shows).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CommitKind {
    Append,
    Overwrite,
    /// Overwrite of some partitions; the predicate names them.
    ReplacePartitions {
        predicate: String,
    },
    /// Upsert or history update by key; the predicate is the key match.
    Merge {
        predicate: String,
    },
    /// Rows changed in place (files rewritten), e.g. quarantine rows marked replayed.
    Update {
        predicate: String,
    },
}

impl CommitKind {
    fn delta_operation(&self, partition_by: &[String]) -> DeltaOperation {
        let partition_by = (!partition_by.is_empty()).then(|| partition_by.to_vec());
        match self {
            CommitKind::Append => DeltaOperation::Write { mode: SaveMode::Append, partition_by, predicate: None },
            CommitKind::Overwrite => DeltaOperation::Write { mode: SaveMode::Overwrite, partition_by, predicate: None },
            CommitKind::ReplacePartitions { predicate } => {
                DeltaOperation::Write { mode: SaveMode::Overwrite, partition_by, predicate: Some(predicate.clone()) }
            }
            // No read predicate: the whole table counts as read, so any concurrent data
            // change is a conflict (the join text is not a predicate over the table).
            CommitKind::Merge { predicate } => DeltaOperation::Merge {
                predicate: None,
                merge_predicate: Some(predicate.clone()),
                matched_predicates: Vec::new(),
                not_matched_predicates: Vec::new(),
                not_matched_by_source_predicates: Vec::new(),
            },
            CommitKind::Update { predicate } => DeltaOperation::Update { predicate: Some(predicate.clone()) },
        }
    }
}

/// A data file of the loaded version.
#[derive(Debug, Clone)]
pub struct ActiveFile {
    /// Relative to the table root, decoded (as stored).
    pub path: String,
    pub partition_values: HashMap<String, Option<String>>,
    /// The action that removes it.
    pub remove: Remove,
    /// Where it is in the table's object store.
    pub location: object_store::path::Path,
    /// The action that added it, its deletion vector included.
    pub add: Add,
}

/// Makes [`FileWriter`]s for one table; cheap to clone and send to other tasks.
#[derive(Clone)]
pub struct WriterFactory {
    table: String,
    store: deltalake::logstore::ObjectStoreRef,
    /// The writer's settings for a schema, given the first batch written (which sets the
    /// columns' encodings, [`encoding::file_writer_properties`]).
    config: WriterSettings,
}

type WriterSettings = Arc<dyn Fn(SchemaRef, &RecordBatch) -> WriterConfig + Send + Sync>;

impl WriterFactory {
    /// A writer staging files with `schema`.
    pub fn writer(&self, schema: SchemaRef) -> FileWriter {
        FileWriter {
            table: self.table.clone(),
            store: self.store.clone(),
            config: self.config.clone(),
            writer: None,
            schema,
            rows: 0,
        }
    }
}

/// Stages Parquet files for one table; nothing is visible until [`Table::commit`].
pub struct FileWriter {
    table: String,
    store: deltalake::logstore::ObjectStoreRef,
    config: WriterSettings,
    /// Started by the first batch written.
    writer: Option<DeltaWriter>,
    schema: SchemaRef,
    rows: u64,
}

impl FileWriter {
    pub fn schema(&self) -> &SchemaRef {
        &self.schema
    }

    pub fn rows(&self) -> u64 {
        self.rows
    }

    /// Buffers a batch; full files are uploaded as they fill.
    pub async fn write(&mut self, batch: &RecordBatch) -> Result<()> {
        if batch.num_rows() == 0 {
            return Ok(());
        }
        let writer = self.started(batch);
        writer.write(batch).await.map_err(|source| EngineError::Delta {
            table: self.table.clone(),
            location: String::new(),
            source: Box::new(source),
        })?;
        self.rows += batch.num_rows() as u64;
        Ok(())
    }

    /// Buffers a batch of rows of one partition (`partition`, typed, in the table's partition
    /// column order); the batch need not hold the partition columns.
    pub(crate) async fn write_partition(
        &mut self,
        batch: RecordBatch,
        partition: &indexmap::IndexMap<String, delta_kernel::expressions::Scalar>,
    ) -> Result<()> {
        if batch.num_rows() == 0 {
            return Ok(());
        }
        let rows = batch.num_rows() as u64;
        let writer = self.started(&batch);
        writer.write_partition(batch, partition).await.map_err(|source| EngineError::Delta {
            table: self.table.clone(),
            location: String::new(),
            source: Box::new(source),
        })?;
        self.rows += rows;
        Ok(())
    }

    /// The Parquet writer, started with encodings chosen from `first` when it is the first
    /// batch.
    fn started(&mut self, first: &RecordBatch) -> &mut DeltaWriter {
        let (store, config, schema) = (&self.store, &self.config, &self.schema);
        self.writer.get_or_insert_with(|| DeltaWriter::new(store.clone(), config(schema.clone(), first)))
    }

    /// Flushes and returns the staged files.
    pub async fn close(mut self) -> Result<Vec<Add>> {
        let Some(writer) = self.writer.take() else {
            return Ok(Vec::new());
        };
        if self.rows == 0 {
            writer.abort().await.map_err(|source| EngineError::Delta {
                table: self.table.clone(),
                location: String::new(),
                source: Box::new(source),
            })?;
            return Ok(Vec::new());
        }
        writer.close().await.map_err(|source| EngineError::Delta {
            table: self.table.clone(),
            location: String::new(),
            source: Box::new(source),
        })
    }

    /// Drops what was staged (completed files stay as unreferenced orphans).
    pub async fn abort(mut self) {
        if let Some(writer) = self.writer.take() {
            let _ = writer.abort().await;
        }
    }
}

/// Where change data files live, under the table root (as the protocol has it).
const CHANGE_DATA_DIR: &str = "_change_data";

/// The `cdc` actions of files staged by a [`Table::change_writer_factory`] writer.
pub fn change_files(staged: Vec<Add>) -> Vec<AddCDCFile> {
    staged
        .into_iter()
        .map(|add| AddCDCFile {
            path: format!("{CHANGE_DATA_DIR}/{}", add.path),
            size: add.size,
            partition_values: add.partition_values,
            data_change: false,
            tags: None,
        })
        .collect()
}
