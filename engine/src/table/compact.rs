//! Bin-packing compaction that streams: `inlet optimize` without `--zorder-by`.
//!
//! The plan follows delta-rs' (per partition, the files under the target size in commit
//! order, packed greedily into bins of at most the target; a bin of one file is left alone,
//! unless the file has a deletion vector).
//! The execution does not: each bin's files are fetched a few ahead (compressed), decoded a
//! batch at a time on a task of their own and streamed into one writer (inlet's own
//! [`super::WriterFactory`], so the new file is encoded and carries statistics as every file
//! inlet writes). Memory holds a few compressed files, two batches and a row group per bin
//! in flight, never a whole bin. The commit removes the bin's files and adds the new ones,
//! all `dataChange = false`, through [`super::checked`]: a concurrent append commits beside
//! it; a commit that removed one of its files (a merge, an overwrite, another compaction)
//! or changed the schema makes it plan again.
//!
//! A file with a deletion vector is always rewritten, alone if need be, without the rows its
//! vector deletes: compaction purges deletion vectors. Column-mapped tables are refused
//! (delta-rs refuses them too).

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use arrow::datatypes::SchemaRef;
use arrow::record_batch::RecordBatch;
use delta_kernel::expressions::Scalar;
use deltalake::DeltaTableError;
use deltalake::kernel::scalars::ScalarExt;
use deltalake::kernel::schema::cast::cast_record_batch;
use deltalake::kernel::schema::partitions::conjunction_to_kernel_predicate;
use deltalake::kernel::transaction::{CommitProperties, PROTOCOL};
use deltalake::kernel::{Action, Add, Remove, StructType};
use deltalake::logstore::ObjectStoreRef;
use deltalake::protocol::DeltaOperation;
use deltalake::table::state::DeltaTableState;
use futures::FutureExt;
use futures::future::BoxFuture;
use futures::stream::{self, BoxStream, StreamExt, TryStreamExt};
use indexmap::IndexMap;
use object_store::ObjectStoreExt;
use object_store::path::Path;
use parquet::arrow::ParquetRecordBatchStreamBuilder;
use parquet::arrow::arrow_reader::{ArrowReaderOptions, ParquetRecordBatchReaderBuilder};
use parquet::arrow::async_reader::AsyncFileReader;
use parquet::file::metadata::{ParquetMetaData, ParquetMetaDataReader};
use tracing::debug;

use super::checked::{Checked, Guard};
use super::{OptimizeReport, Table, WriterFactory};
use crate::error::{EngineError, Result};

/// Files up to this size are fetched whole (a few ahead of the one being decoded); larger
/// ones are read by ranges, a row group at a time.
const FETCH_WHOLE_BYTES: u64 = 4 * 1024 * 1024;
/// Files fetched ahead of the one being decoded, per bin.
const READ_AHEAD_FILES: usize = 4;
/// Rows per decoded batch.
const BATCH_ROWS: usize = 64 * 1024;
/// Decoded batches waiting for the writer, per bin.
const BATCHES_AHEAD: usize = 2;

/// A file a bin rewrites.
#[derive(Debug, Clone)]
struct Candidate {
    path: Path,
    /// The path as the log has it, decoded.
    log_path: String,
    size: u64,
    /// Its live row count, from the log's statistics, when they have one.
    rows: Option<u64>,
    remove: Remove,
    /// Whether it has a deletion vector: it is rewritten whatever its size.
    has_vector: bool,
    /// The rows its deletion vector deletes, ascending; they are left out.
    deleted: Option<Arc<Vec<u64>>>,
}

/// The files of one partition written together into one file.
struct Bin {
    partition: IndexMap<String, Scalar>,
    files: Vec<Candidate>,
}

/// What one compaction attempt came to.
pub(super) enum Attempt {
    Done(OptimizeReport),
    /// Another commit stands in the way (the text says which): plan again on the new version.
    Lost(String),
    /// A table this module does not rewrite; delta-rs' optimize does.
    Unsupported(&'static str),
}

impl Table {
    /// Plans, writes and commits one compaction of the loaded version: the partitions
    /// `literals` select (all when empty), files packed up to `target` bytes.
    pub(super) async fn compact_once(
        &mut self,
        target: u64,
        literals: &[deltalake::FilterLiteral<'_>],
        predicate_text: Option<String>,
        metadata: HashMap<String, serde_json::Value>,
    ) -> Result<Attempt> {
        let maintenance_error = |message: String| EngineError::Maintenance { table: self.name.clone(), message };
        let target_size = i64::try_from(target)
            .map_err(|_| maintenance_error(format!("a target file size of {target} bytes is too large")))?;
        let state = self.delta.snapshot().map_err(|e| self.error(e))?.clone();
        // What delta-rs checks before its own optimize writes anything: a table with a writer
        // feature it does not support is refused here, not after the bins are written.
        PROTOCOL.can_write_to(&state).map_err(|source| self.error(DeltaTableError::Transaction { source }))?;
        let read_version = state.version();
        let bins = self.plan(&state, target, literals).await?;
        let mut report = OptimizeReport {
            table: self.name.clone(),
            version: None,
            files_removed: 0,
            files_added: 0,
            bytes_removed: 0,
            bytes_added: 0,
        };
        if bins.is_empty() {
            return Ok(Attempt::Done(report));
        }
        let schema = state.snapshot().arrow_schema();
        let partition_columns = state.metadata().partition_columns().to_vec();
        let file_schema = Arc::new(arrow::datatypes::Schema::new(
            schema.fields().iter().filter(|f| !partition_columns.contains(f.name())).cloned().collect::<Vec<_>>(),
        ));
        if file_schema.fields().is_empty() {
            return Ok(Attempt::Unsupported("every column is a partition column"));
        }
        // One file per bin (a bin holds at most `target` bytes; encoding it again may take a
        // little more, which must not leave a small file behind).
        let factory = self.factory(&partition_columns, self.delta.object_store(), Some(target.saturating_mul(2)));
        let mut removes: Vec<Remove> = bins.iter().flat_map(|bin| bin.files.iter().map(|f| f.remove.clone())).collect();
        report.files_removed = removes.len() as u64;
        report.bytes_removed = bins.iter().flat_map(|bin| bin.files.iter().map(|f| f.size)).sum();
        let adds = self.write_bins(bins, &factory, &schema, &file_schema).await?;
        report.files_added = adds.len() as u64;
        report.bytes_added = adds.iter().map(|add| add.size.max(0) as u64).sum();

        let mut metadata = metadata;
        metadata.insert("readVersion".into(), read_version.into());
        // As Spark records an OPTIMIZE: counts as strings (DESCRIBE HISTORY reads a string map).
        metadata.insert(
            "operationMetrics".into(),
            serde_json::json!({
                "numRemovedFiles": report.files_removed.to_string(),
                "numAddedFiles": report.files_added.to_string(),
                "numRemovedBytes": report.bytes_removed.to_string(),
                "numAddedBytes": report.bytes_added.to_string(),
            }),
        );
        let properties = CommitProperties::default()
            .with_metadata(metadata)
            // As every inlet commit: the log is cleaned after the run history mirrors it.
            .with_cleanup_expired_logs(Some(false));
        // Removed now, not when planned: the retention counts from the commit.
        let now = chrono::Utc::now().timestamp_millis();
        for remove in &mut removes {
            remove.deletion_timestamp = Some(now);
        }
        let guard = Guard { removing: removes.iter().map(|r| r.path.clone()).collect::<HashSet<_>>(), app_id: None };
        let written: Vec<Path> = adds
            .iter()
            .map(|add| {
                let decoded = crate::log::percent_decode(&add.path);
                Path::parse(&decoded).unwrap_or_else(|_| Path::from(decoded.as_str()))
            })
            .collect();
        let actions: Vec<Action> = adds
            .into_iter()
            .map(|add| Action::Add(Add { data_change: false, ..add }))
            .chain(removes.into_iter().map(Action::Remove))
            .collect();
        let operation = DeltaOperation::Optimize { predicate: predicate_text, target_size };
        match self.commit_checked(actions, operation, properties, &guard).await? {
            Checked::Committed(version) => {
                report.version = Some(version);
                Ok(Attempt::Done(report))
            }
            Checked::Conflict(why) => {
                // Never referenced: gone now rather than left for `vacuum --full` in a week.
                let store = self.delta.object_store();
                for path in &written {
                    if let Err(e) = store.delete(path).await {
                        debug!(table = %self.name, path = %path, error = %e, "a file of a lost compaction stays");
                    }
                }
                Ok(Attempt::Lost(why))
            }
        }
    }

    /// The bins of `state`.
    async fn plan(
        &self,
        state: &DeltaTableState,
        target: u64,
        literals: &[deltalake::FilterLiteral<'_>],
    ) -> Result<Vec<Bin>> {
        if self.maps_column_names() {
            // delta-rs' optimize refuses these too.
            return Err(EngineError::Maintenance {
                table: self.name.clone(),
                message: "the table maps column names (delta.columnMapping.mode), which optimize cannot compact yet"
                    .into(),
            });
        }
        let table_schema = state.schema();
        let predicate = if literals.is_empty() {
            None
        } else {
            Some(Arc::new(conjunction_to_kernel_predicate(literals, table_schema.as_ref()).map_err(|e| self.error(e))?))
        };
        let partition_columns = state.metadata().partition_columns().to_vec();
        let schema_error = |message: String| EngineError::Schema { table: self.name.clone(), message };
        let mut views = state.snapshot().file_views(self.delta.log_store().as_ref(), predicate);
        let mut listed = Vec::new();
        let mut partitions: HashMap<Vec<Option<String>>, IndexMap<String, Scalar>> = HashMap::new();
        while let Some(view) = views.try_next().await.map_err(|e| self.error(e))? {
            let size = u64::try_from(view.size()).unwrap_or(0);
            // A file with a deletion vector is rewritten without its deleted rows, whatever
            // its size: that is how `inlet optimize` purges deletion vectors.
            let deletes = view.deletion_vector_descriptor();
            if size >= target && deletes.is_none() {
                continue;
            }
            let has_vector = deletes.is_some();
            // Grouped by typed value: `1` and `01`, or two spellings of a timestamp, are one
            // partition.
            let partition = typed_partition(&view.partition_values_map(), &partition_columns, table_schema.as_ref())
                .map_err(schema_error)?;
            let key: Vec<Option<String>> =
                partition.values().map(|value| (!value.is_null()).then(|| value.serialize())).collect();
            partitions.entry(key.clone()).or_insert(partition);
            let deleted_rows = deletes.map_or(0, |dv| dv.cardinality.max(0) as u64);
            let candidate = Candidate {
                path: view.object_store_path(),
                log_path: view.path().to_string(),
                size,
                rows: view.num_records().map(|n| (n as u64).saturating_sub(deleted_rows)),
                remove: view.remove_action(false),
                has_vector,
                deleted: None,
            };
            listed.push((key, candidate));
        }
        let any_vectors = listed.iter().any(|(_, candidate)| candidate.has_vector);
        let mut deleted = if !any_vectors { HashMap::new() } else { self.deleted_rows(None).await? };
        for (_, candidate) in &mut listed {
            candidate.deleted = deleted.remove(&candidate.log_path).map(Arc::new);
            if candidate.has_vector && candidate.deleted.is_none() {
                return Err(EngineError::Internal(format!(
                    "compacting `{}`: the deletion vector of `{}` was not read",
                    self.name, candidate.log_path
                )));
            }
        }
        // Listed newest first: oldest first keeps rows in the order they were committed.
        listed.reverse();
        let bins = plan_bins(listed, target, |candidate| candidate.size, |candidate| candidate.has_vector)
            .into_iter()
            .map(|(key, files)| Bin { partition: partitions[&key].clone(), files })
            .collect();
        Ok(bins)
    }

    /// Writes the bins, a few at a time on tasks of their own; returns the files written.
    /// On a failure the other bins stop and abort what they were writing before it returns
    /// (files already complete stay as unreferenced files for `inlet vacuum --full`).
    async fn write_bins(
        &self,
        bins: Vec<Bin>,
        factory: &WriterFactory,
        schema: &SchemaRef,
        file_schema: &SchemaRef,
    ) -> Result<Vec<Add>> {
        let in_flight = std::thread::available_parallelism().map_or(2, |n| n.get()).clamp(1, 4);
        let stop = Arc::new(AtomicBool::new(false));
        let mut tasks = tokio::task::JoinSet::new();
        let mut bins = bins.into_iter();
        let mut adds = Vec::new();
        let mut failed: Option<EngineError> = None;
        loop {
            while failed.is_none()
                && tasks.len() < in_flight
                && let Some(bin) = bins.next()
            {
                let job = BinJob {
                    table: self.name.clone(),
                    store: self.delta.object_store(),
                    factory: factory.clone(),
                    schema: schema.clone(),
                    file_schema: file_schema.clone(),
                    stop: stop.clone(),
                };
                tasks.spawn(job.run(bin));
            }
            let Some(joined) = tasks.join_next().await else {
                break;
            };
            let written = joined
                .map_err(|e| EngineError::Internal(format!("compacting `{}`: a task failed: {e}", self.name)))
                .and_then(|written| written);
            match written {
                Ok(written) => adds.extend(written),
                Err(e) => {
                    stop.store(true, Ordering::SeqCst);
                    failed.get_or_insert(e);
                }
            }
        }
        match failed {
            Some(e) => Err(e),
            None => Ok(adds),
        }
    }
}

/// What a bin's task needs of the table.
struct BinJob {
    table: String,
    store: ObjectStoreRef,
    factory: WriterFactory,
    /// The table's schema, partition columns included.
    schema: SchemaRef,
    /// What the data files hold: the schema without partition columns.
    file_schema: SchemaRef,
    /// Set when another bin failed: this one aborts its writer and stops.
    stop: Arc<AtomicBool>,
}

impl BinJob {
    async fn run(self, bin: Bin) -> Result<Vec<Add>> {
        debug!(table = %self.table, files = bin.files.len(), "compacting a bin");
        // Every row of the bin must be in the new file; the log's statistics say how many.
        let expected: Option<u64> = bin.files.iter().map(|f| f.rows).sum();
        let mut writer = self.factory.writer(self.schema.clone());
        // Decoding runs beside the writer, a couple of batches ahead.
        let (sender, mut batches) = tokio::sync::mpsc::channel::<Result<RecordBatch>>(BATCHES_AHEAD);
        let table = self.table.clone();
        let store = self.store.clone();
        let files = bin.files;
        let mut reader = tokio::spawn(async move {
            let mut decoded = stream::iter(files)
                .map(move |file| open(table.clone(), store.clone(), file, FETCH_WHOLE_BYTES, BATCH_ROWS))
                .buffered(READ_AHEAD_FILES)
                .try_flatten();
            while let Some(batch) = decoded.next().await {
                let failed = batch.is_err();
                // The writer hung up: it failed or stopped.
                if sender.send(batch).await.is_err() || failed {
                    return;
                }
            }
        });
        let written = async {
            while let Some(batch) = batches.recv().await {
                if self.stop.load(Ordering::SeqCst) {
                    return Err(EngineError::Internal(format!("compacting `{}`: stopped", self.table)));
                }
                let batch = cast_record_batch(&batch?, self.file_schema.clone(), false, true).map_err(|e| {
                    EngineError::Schema { table: self.table.clone(), message: format!("a data file: {e}") }
                })?;
                writer.write_partition(batch, &bin.partition).await?;
            }
            // The channel also closes when the reader panicked: only a reader that finished
            // means every batch came.
            (&mut reader)
                .await
                .map_err(|e| EngineError::Internal(format!("compacting `{}`: the reader failed: {e}", self.table)))?;
            if let Some(expected) = expected
                && writer.rows() != expected
            {
                return Err(EngineError::Internal(format!(
                    "compacting `{}`: read {} rows of files whose statistics count {expected}",
                    self.table,
                    writer.rows()
                )));
            }
            Ok(())
        }
        .await;
        drop(batches);
        reader.abort();
        match written {
            Ok(()) => writer.close().await,
            Err(e) => {
                writer.abort().await;
                Err(e)
            }
        }
    }
}

/// The batches of one file, decoded as they are asked for: fetched whole when small (the
/// future resolves once the bytes are in, so a few are fetched ahead), else read by ranges.
async fn open(
    table: String,
    store: ObjectStoreRef,
    file: Candidate,
    fetch_whole_bytes: u64,
    batch_rows: usize,
) -> Result<BoxStream<'static, Result<RecordBatch>>> {
    let deleted = file.deleted.clone();
    let stream = decode(table, store, file, fetch_whole_bytes, batch_rows).await?;
    Ok(match deleted {
        Some(deleted) => without_deleted(stream, deleted),
        None => stream,
    })
}

/// `batches` of one file (in file order) without the rows at the positions `deleted`
/// (ascending) names.
fn without_deleted(
    batches: BoxStream<'static, Result<RecordBatch>>,
    deleted: Arc<Vec<u64>>,
) -> BoxStream<'static, Result<RecordBatch>> {
    let mut start = 0_u64;
    let mut next = 0_usize;
    batches
        .map(move |batch| {
            let batch = batch?;
            let rows = batch.num_rows() as u64;
            let end = start + rows;
            let mut keep = vec![true; batch.num_rows()];
            let mut any = false;
            while let Some(&position) = deleted.get(next).filter(|p| **p < end) {
                if position >= start {
                    keep[(position - start) as usize] = false;
                    any = true;
                }
                next += 1;
            }
            start = end;
            if !any {
                return Ok(batch);
            }
            arrow::compute::filter_record_batch(&batch, &arrow::array::BooleanArray::from(keep))
                .map_err(|e| EngineError::arrow("leaving deleted rows out".to_owned(), e))
        })
        .boxed()
}

/// The batches of one file, every row of it.
async fn decode(
    table: String,
    store: ObjectStoreRef,
    file: Candidate,
    fetch_whole_bytes: u64,
    batch_rows: usize,
) -> Result<BoxStream<'static, Result<RecordBatch>>> {
    let location = file.path.to_string();
    let parquet_error = move |source: parquet::errors::ParquetError| EngineError::Delta {
        table: table.clone(),
        location: location.clone(),
        source: Box::new(DeltaTableError::Parquet { source }),
    };
    if file.size <= fetch_whole_bytes {
        let store_error = |source| EngineError::ObjectStore { path: file.path.to_string(), source: Box::new(source) };
        let bytes = store.get(&file.path).await.map_err(store_error)?.bytes().await.map_err(store_error)?;
        let reader = ParquetRecordBatchReaderBuilder::try_new(bytes)
            .and_then(|b| b.with_batch_size(batch_rows).build())
            .map_err(&parquet_error)?;
        let arrow_error =
            move |e: arrow::error::ArrowError| parquet_error(parquet::errors::ParquetError::ArrowError(e.to_string()));
        return Ok(stream::iter(reader).map(move |batch| batch.map_err(&arrow_error)).boxed());
    }
    let reader = StoreFile { store, path: file.path, size: file.size };
    let stream = ParquetRecordBatchStreamBuilder::new(reader)
        .await
        .and_then(|b| b.with_batch_size(batch_rows).build())
        .map_err(&parquet_error)?;
    Ok(stream.map_err(parquet_error).boxed())
}

/// A Parquet file of the table's store, read by ranges.
pub(super) struct StoreFile {
    pub(super) store: ObjectStoreRef,
    pub(super) path: Path,
    pub(super) size: u64,
}

impl AsyncFileReader for StoreFile {
    fn get_bytes(&mut self, range: std::ops::Range<u64>) -> BoxFuture<'_, parquet::errors::Result<bytes::Bytes>> {
        async move { Ok(self.store.get_range(&self.path, range).await?) }.boxed()
    }

    fn get_byte_ranges(
        &mut self,
        ranges: Vec<std::ops::Range<u64>>,
    ) -> BoxFuture<'_, parquet::errors::Result<Vec<bytes::Bytes>>> {
        async move { Ok(self.store.get_ranges(&self.path, &ranges).await?) }.boxed()
    }

    fn get_metadata<'a>(
        &'a mut self,
        _options: Option<&'a ArrowReaderOptions>,
    ) -> BoxFuture<'a, parquet::errors::Result<Arc<ParquetMetaData>>> {
        async move {
            let size = self.size;
            // The footer and, most often, the whole metadata in one request.
            let metadata =
                ParquetMetaDataReader::new().with_prefetch_hint(Some(64 * 1024)).load_and_finish(self, size).await?;
            Ok(Arc::new(metadata))
        }
        .boxed()
    }
}

/// A partition's values, typed as the table's schema has its partition columns.
fn typed_partition(
    raw: &HashMap<String, Option<String>>,
    partition_columns: &[String],
    schema: &StructType,
) -> std::result::Result<IndexMap<String, Scalar>, String> {
    let mut values = IndexMap::with_capacity(partition_columns.len());
    for column in partition_columns {
        let field = schema.field(column).ok_or_else(|| format!("partition column `{column}` is not in the schema"))?;
        let value = match raw.get(column) {
            Some(Some(text)) => field
                .data_type()
                .as_primitive_opt()
                .ok_or_else(|| format!("partition column `{column}` is not of a primitive type"))?
                .parse_scalar(text)
                .map_err(|e| format!("partition column `{column}`: value `{text}`: {e}"))?,
            Some(None) => Scalar::Null(field.data_type().clone()),
            None => return Err(format!("a file has no value for partition column `{column}`")),
        };
        values.insert(column.clone(), value);
    }
    Ok(values)
}

/// Packs files into bins: per partition key, the files smaller than `target` (and those
/// that must be rewritten, `purge`) in the order given, a bin closed when the next file
/// would take it past `target`. A bin of one file would rewrite it as it is, so there are
/// none, unless that file must be rewritten.
fn plan_bins<K: Ord + Clone, T>(
    files: Vec<(K, T)>,
    target: u64,
    size: impl Fn(&T) -> u64,
    purge: impl Fn(&T) -> bool,
) -> Vec<(K, Vec<T>)> {
    let mut partitions: BTreeMap<K, Vec<T>> = BTreeMap::new();
    for (key, file) in files {
        if size(&file) < target || purge(&file) {
            partitions.entry(key).or_default().push(file);
        }
    }
    let mut bins = Vec::new();
    for (key, files) in partitions {
        let mut bin: Vec<T> = Vec::new();
        let mut bytes = 0;
        for file in files {
            let file_bytes = size(&file);
            if !bin.is_empty() && bytes + file_bytes > target {
                bins.push((key.clone(), std::mem::take(&mut bin)));
                bytes = 0;
            }
            bytes += file_bytes;
            bin.push(file);
        }
        bins.push((key, bin));
    }
    bins.retain(|(_, bin)| bin.len() > 1 || bin.iter().any(&purge));
    bins
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;
    use std::sync::Arc;

    use arrow::array::{Array, AsArray, Int64Array, StringArray};
    use arrow::datatypes::{DataType, Field, Int64Type, Schema};
    use arrow::record_batch::RecordBatch;

    use super::{Attempt, Candidate, open, plan_bins, typed_partition};
    use crate::table::{Commit, Table};

    fn plan(files: &[(&str, u64)], target: u64) -> Vec<(String, Vec<u64>)> {
        let files = files.iter().map(|(key, size)| (key.to_string(), *size)).collect();
        plan_bins(files, target, |size| *size, |_| false)
    }

    #[test]
    fn files_with_deletion_vectors_are_rewritten_alone_or_above_the_target() {
        // (size, has a deletion vector) per file, one partition each.
        let files = vec![
            ("a".to_owned(), (10, false)),
            ("b".to_owned(), (500, true)),
            ("c".to_owned(), (10, true)),
            ("d".to_owned(), (500, false)),
        ];
        let bins = plan_bins(files, 100, |f| f.0, |f| f.1);
        let bins: Vec<(String, Vec<u64>)> =
            bins.into_iter().map(|(k, files)| (k, files.iter().map(|f| f.0).collect())).collect();
        assert_eq!(bins, [("b".to_owned(), vec![500]), ("c".to_owned(), vec![10])]);
    }

    #[test]
    fn bins_pack_small_files_of_one_partition_up_to_the_target_in_order() {
        // Files at or over the target stay; bins close before passing it; a bin of one is dropped.
        let bins = plan(&[("a", 40), ("a", 100), ("a", 50), ("a", 10), ("a", 60), ("a", 30)], 100);
        assert_eq!(bins, vec![("a".to_owned(), vec![40, 50, 10]), ("a".to_owned(), vec![60, 30])]);
        let lonely = plan(&[("a", 40), ("a", 70)], 100);
        assert!(lonely.is_empty(), "{lonely:?}");
        // Partitions never mix, and each is packed on its own.
        let bins = plan(&[("b", 10), ("a", 10), ("b", 20), ("a", 95), ("c", 5)], 100);
        assert_eq!(bins, vec![("b".to_owned(), vec![10, 20])]);
        let bins = plan(&[("b", 10), ("a", 10), ("b", 20), ("a", 5)], 100);
        assert_eq!(bins, vec![("a".to_owned(), vec![10, 5]), ("b".to_owned(), vec![10, 20])]);
        assert!(plan(&[], 100).is_empty());
    }

    /// Commits one file of `ids` (with a `note` column when `notes` is given, which evolves
    /// the schema) as `app` at `txn`; returns the version.
    async fn append(table: &mut Table, ids: &[i64], notes: Option<&[&str]>, txn: i64) -> i64 {
        let mut fields = vec![Field::new("id", DataType::Int64, true)];
        let mut columns: Vec<arrow::array::ArrayRef> = vec![Arc::new(Int64Array::from(ids.to_vec()))];
        if let Some(notes) = notes {
            fields.push(Field::new("note", DataType::Utf8, true));
            columns.push(Arc::new(StringArray::from(notes.to_vec())));
        }
        let schema = Arc::new(Schema::new(fields));
        let mut writer = table.writer_factory(&[]).writer(schema.clone());
        writer.write(&RecordBatch::try_new(schema.clone(), columns).unwrap()).await.unwrap();
        let adds = writer.close().await.unwrap();
        let evolves =
            table.arrow_schema().unwrap().is_none_or(|current| current.fields().len() != schema.fields().len());
        table.commit(Commit::append(adds, evolves.then_some(schema), "test", txn, HashMap::new())).await.unwrap()
    }

    /// Every `(id, note)` of the loaded version, sorted.
    async fn rows(table: &Table) -> Vec<(i64, Option<String>)> {
        let mut rows = Vec::new();
        for batch in table.read_all().await.unwrap() {
            let ids = batch.column_by_name("id").unwrap().as_primitive::<Int64Type>();
            let notes = batch.column_by_name("note").map(|c| arrow::compute::cast(c, &DataType::Utf8).unwrap());
            for i in 0..batch.num_rows() {
                let note = notes.as_ref().and_then(|n| n.is_valid(i).then(|| n.as_string::<i32>().value(i).to_owned()));
                rows.push((ids.value(i), note));
            }
        }
        rows.sort();
        rows
    }

    async fn scratch() -> (tempfile::TempDir, url::Url) {
        let dir = tempfile::tempdir().unwrap();
        let url = url::Url::from_directory_path(dir.path()).unwrap();
        (dir, url)
    }

    #[tokio::test]
    async fn a_compaction_keeps_every_row_fills_new_columns_and_commits_beside_an_append() {
        let (_dir, url) = scratch().await;
        let mut table = Table::open("bronze.t", url.clone()).await.unwrap();
        append(&mut table, &[1, 2], None, 1).await;
        append(&mut table, &[3], None, 2).await;
        append(&mut table, &[4, 5], Some(&["four", "five"]), 3).await;
        // Another writer appends after this handle loaded its version.
        let mut other = Table::open("bronze.t", url.clone()).await.unwrap();
        let appended = append(&mut other, &[6], Some(&["six"]), 4).await;
        let Attempt::Done(report) = table.compact_once(1 << 20, &[], None, HashMap::new()).await.unwrap() else {
            panic!("a concurrent append must not stop a compaction");
        };
        // (A concurrent schema change would: the files would no longer match the table.)
        assert_eq!((report.files_removed, report.files_added, report.version), (3, 1, Some(appended + 1)));
        let mut latest = Table::open("bronze.t", url).await.unwrap();
        latest.delta.update_incremental(None).await.unwrap();
        assert_eq!(latest.active_files().await.unwrap().len(), 2, "the compacted file and the appended one");
        let want = vec![
            (1, None),
            (2, None),
            (3, None),
            (4, Some("four".to_owned())),
            (5, Some("five".to_owned())),
            (6, Some("six".to_owned())),
        ];
        assert_eq!(rows(&latest).await, want);
        // The commit changes no data, and its files carry statistics.
        let log = latest.commit_bytes(appended + 1).await.unwrap().unwrap();
        let actions: Vec<serde_json::Value> =
            log.split(|b| *b == b'\n').filter(|l| !l.is_empty()).map(|l| serde_json::from_slice(l).unwrap()).collect();
        let adds: Vec<_> = actions.iter().filter_map(|a| a.get("add")).collect();
        let removes: Vec<_> = actions.iter().filter_map(|a| a.get("remove")).collect();
        assert_eq!((adds.len(), removes.len()), (1, 3));
        assert!(adds.iter().chain(&removes).all(|a| a["dataChange"] == false), "{actions:?}");
        let stats: serde_json::Value = serde_json::from_str(adds[0]["stats"].as_str().unwrap()).unwrap();
        assert_eq!((stats["numRecords"].as_i64(), stats["minValues"]["id"].as_i64()), (Some(5), Some(1)), "{stats}");
        assert_eq!(stats["nullCount"]["note"].as_i64(), Some(3), "{stats}");
        // The appended file and the compacted one pack together; then nothing is left: no commit.
        let Attempt::Done(again) = latest.compact_once(1 << 20, &[], None, HashMap::new()).await.unwrap() else {
            panic!("nothing stops this compaction");
        };
        assert_eq!((again.files_removed, again.files_added, again.version), (2, 1, Some(appended + 2)));
        let Attempt::Done(last) = latest.compact_once(1 << 20, &[], None, HashMap::new()).await.unwrap() else {
            panic!("nothing to compact is done");
        };
        assert_eq!((last.files_removed, last.version), (0, None));
        assert_eq!(rows(&latest).await, want);
    }

    #[tokio::test]
    async fn a_compaction_that_a_concurrent_rewrite_beat_plans_again() {
        let (_dir, url) = scratch().await;
        let mut table = Table::open("bronze.t", url.clone()).await.unwrap();
        append(&mut table, &[1], None, 1).await;
        append(&mut table, &[2], None, 2).await;
        append(&mut table, &[3], None, 3).await;
        // Another writer replaces the first file (as a merge does) after this handle loaded.
        let mut other = Table::open("bronze.t", url.clone()).await.unwrap();
        let mut first = None;
        for file in other.active_files().await.unwrap() {
            let batches = other.read_file(&file.path).await.unwrap();
            if batches[0].column(0).as_primitive::<Int64Type>().value(0) == 1 {
                first = Some(file);
            }
        }
        let schema = other.arrow_schema().unwrap().unwrap();
        let mut writer = other.writer_factory(&[]).writer(schema.clone());
        writer.write(&RecordBatch::try_new(schema, vec![Arc::new(Int64Array::from(vec![10]))]).unwrap()).await.unwrap();
        let adds = writer.close().await.unwrap();
        let removes = vec![first.unwrap().remove];
        other.commit(Commit::append(adds, None, "test", 4, HashMap::new()).replacing(removes)).await.unwrap();
        let stale = table.compact_once(1 << 20, &[], None, HashMap::new()).await.unwrap();
        let Attempt::Lost(why) = stale else { panic!("a file it rewrote was removed: it must lose") };
        assert!(why.contains("version 3 removed"), "{why}");
        // `optimize` plans again on the new version.
        let report = table.optimize(&Default::default(), HashMap::new()).await.unwrap();
        assert_eq!((report.files_removed, report.files_added), (3, 1));
        assert_eq!(rows(&table).await, vec![(2, None), (3, None), (10, None)]);
    }

    #[tokio::test]
    async fn two_compactions_of_the_same_files_commit_once() {
        let (dir, url) = scratch().await;
        let mut first = Table::open("bronze.t", url.clone()).await.unwrap();
        for (txn, id) in [1, 2, 3].into_iter().enumerate() {
            append(&mut first, &[id], None, txn as i64).await;
        }
        let mut second = Table::open("bronze.t", url.clone()).await.unwrap();
        let Attempt::Done(done) = first.compact_once(1 << 20, &[], None, HashMap::new()).await.unwrap() else {
            panic!("the first compaction has no rival");
        };
        assert_eq!(done.files_removed, 3);
        // delta-rs' checker would let this one commit too (its removes are dataChange=false).
        let Attempt::Lost(why) = second.compact_once(1 << 20, &[], None, HashMap::new()).await.unwrap() else {
            panic!("the second compaction of the same files must lose");
        };
        assert!(why.contains("version 3 removed"), "{why}");
        // The losing compaction's file is deleted: the three small files and the winner's remain.
        let on_disk = std::fs::read_dir(dir.path())
            .unwrap()
            .flatten()
            .filter(|e| e.file_name().to_string_lossy().ends_with(".parquet"))
            .count();
        assert_eq!(on_disk, 4);
        let report = second.optimize(&Default::default(), HashMap::new()).await.unwrap();
        assert_eq!((report.files_removed, report.version), (0, None), "planned again: nothing left");
        assert_eq!(rows(&second).await, vec![(1, None), (2, None), (3, None)]);
    }

    #[tokio::test]
    async fn an_overwrite_planned_before_a_compaction_loses_to_it() {
        let (_dir, url) = scratch().await;
        let mut compactor = Table::open("bronze.t", url.clone()).await.unwrap();
        append(&mut compactor, &[1], None, 1).await;
        append(&mut compactor, &[2], None, 2).await;
        let mut overwriter = Table::open("bronze.t", url.clone()).await.unwrap();
        let removes: Vec<_> = overwriter.active_files().await.unwrap().into_iter().map(|f| f.remove).collect();
        let schema = overwriter.arrow_schema().unwrap().unwrap();
        let mut writer = overwriter.writer_factory(&[]).writer(schema.clone());
        writer.write(&RecordBatch::try_new(schema, vec![Arc::new(Int64Array::from(vec![9]))]).unwrap()).await.unwrap();
        let adds = writer.close().await.unwrap();
        let Attempt::Done(_) = compactor.compact_once(1 << 20, &[], None, HashMap::new()).await.unwrap() else {
            panic!("nothing stands in the compaction's way");
        };
        // delta-rs would commit the overwrite and keep rows 1 and 2 alive in the compacted file.
        let lost = overwriter.commit(Commit::append(adds, None, "test", 3, HashMap::new()).replacing(removes)).await;
        assert!(lost.as_ref().is_err_and(|e| e.is_conflict() && e.is_retryable()), "{lost:?}");
        compactor.delta.update_incremental(None).await.unwrap();
        assert_eq!(rows(&compactor).await, vec![(1, None), (2, None)]);
    }

    #[tokio::test]
    async fn a_large_file_is_read_by_ranges_with_the_same_rows() {
        let (_dir, url) = scratch().await;
        let mut table = Table::open("bronze.t", url).await.unwrap();
        append(&mut table, &(0..5000).collect::<Vec<_>>(), None, 1).await;
        let file = table.active_files().await.unwrap().remove(0);
        let size = file.remove.size.unwrap() as u64;
        let candidate = Candidate {
            path: object_store::path::Path::from(file.path.as_str()),
            log_path: file.path.clone(),
            size,
            rows: Some(5000),
            remove: file.remove,
            has_vector: false,
            deleted: None,
        };
        // Deleted rows at the start, the end and across batch boundaries are left out.
        let deleted: Vec<u64> = vec![0, 1, 1023, 1024, 2500, 4999];
        for (deleted, fetch_whole_bytes) in
            [(None, 0), (None, u64::MAX), (Some(deleted.clone()), 0), (Some(deleted), u64::MAX)]
        {
            let mut candidate = candidate.clone();
            candidate.deleted = deleted.clone().map(Arc::new);
            let batches: Vec<RecordBatch> = futures::TryStreamExt::try_collect(
                open("bronze.t".into(), table.delta.object_store(), candidate, fetch_whole_bytes, 1024).await.unwrap(),
            )
            .await
            .unwrap();
            let ids: Vec<i64> =
                batches.iter().flat_map(|b| b.column(0).as_primitive::<Int64Type>().values().to_vec()).collect();
            let expected: Vec<i64> =
                (0..5000).filter(|id| !deleted.as_ref().is_some_and(|d| d.contains(&(*id as u64)))).collect();
            assert_eq!(ids, expected, "fetch whole up to {fetch_whole_bytes} bytes, deleted {deleted:?}");
        }
    }

    #[test]
    fn partitions_group_by_typed_value() {
        use deltalake::kernel::scalars::ScalarExt;
        use deltalake::kernel::{DataType as DeltaType, StructField, StructType};
        let schema = StructType::try_new([
            StructField::nullable("n", DeltaType::INTEGER),
            StructField::nullable("day", DeltaType::DATE),
            StructField::nullable("at", DeltaType::TIMESTAMP),
        ])
        .unwrap();
        let columns = ["n".to_owned(), "day".to_owned(), "at".to_owned()];
        let key = |n: Option<&str>, day: &str, at: &str| {
            let raw = HashMap::from([
                ("n".to_owned(), n.map(str::to_owned)),
                ("day".to_owned(), Some(day.to_owned())),
                ("at".to_owned(), Some(at.to_owned())),
            ]);
            let typed = typed_partition(&raw, &columns, &schema).unwrap();
            typed.values().map(|v| (!v.is_null()).then(|| v.serialize())).collect::<Vec<_>>()
        };
        let one = key(Some("01"), "2024-01-01", "2024-01-01 00:00:00");
        assert_eq!(one, key(Some("1"), "2024-01-01", "2024-01-01 00:00:00.000000"));
        assert_ne!(one, key(None, "2024-01-01", "2024-01-01 00:00:00"));
        assert_ne!(one, key(Some("1"), "2024-01-02", "2024-01-01 00:00:00"));
        let missing = typed_partition(&HashMap::new(), &columns, &schema).unwrap_err();
        assert!(missing.contains("no value for partition column `n`"), "{missing}");
        let wrong = typed_partition(&HashMap::from([("n".to_owned(), Some("x".to_owned()))]), &columns[..1], &schema)
            .unwrap_err();
        assert!(wrong.contains("`n`") && wrong.contains("`x`"), "{wrong}");
    }
}
