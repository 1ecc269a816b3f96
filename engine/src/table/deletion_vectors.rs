//! Deletion vectors: rows of a data file marked deleted without rewriting the file
//! (Delta's `deletionVectors` feature, on for tables with `delta.enableDeletionVectors`).
//!
//! - **Where rows are.** A row is named by its position in its Parquet file, counted over
//!   every row the file holds, deleted or not ([`super::key_scan`] finds them).
//! - **What is deleted already.** delta-rs reads each file's current deletion vector
//!   ([`Table::deleted_rows`]); a new vector is the union of it and the new positions.
//! - **Writing.** The kernel's [`StreamingDeletionVectorWriter`] serialises every new vector
//!   of a commit into one `deletion_vector_<uuid>.bin` at the table root (RoaringBitmapArray,
//!   size, CRC-32, as the protocol says), staged before the commit like a data file: a
//!   commit that fails leaves it unreferenced, for `inlet vacuum --full`.
//! - **The log.** Each file is removed as it was (with its old vector) and added again with
//!   the new one (`dataChange = true`), statistics marked `tightBounds = false`: its minimum
//!   and maximum may be those of a deleted row. `numRecords` still counts every row of the
//!   file. A file whose every row is deleted is only removed.

use std::collections::HashMap;

use delta_kernel::actions::deletion_vector_writer::{KernelDeletionVector, StreamingDeletionVectorWriter};
use deltalake::datafusion::prelude::SessionContext;
use deltalake::kernel::{Add, DeletionVectorDescriptor, StorageType};

use super::{ActiveFile, Table};
use crate::error::{EngineError, Result};

/// One file's rows to mark deleted.
pub(crate) struct Marks {
    pub(crate) file: ActiveFile,
    /// Its current deletion vector's positions.
    pub(crate) deleted: Vec<u64>,
    /// The positions to delete now.
    pub(crate) positions: Vec<u64>,
    /// Every row of the file.
    pub(crate) rows: u64,
}

impl Table {
    /// The positions each file with a deletion vector already marks deleted, by its path as
    /// [`ActiveFile::path`] has it: of `files` (URLs, as a scan's file column holds them), or
    /// of the whole table.
    pub(crate) async fn deleted_rows(&self, files: Option<Vec<String>>) -> Result<HashMap<String, Vec<u64>>> {
        let query_error = |source| EngineError::query(self.name.clone(), source);
        let mut builder = self.delta.table_provider();
        match files {
            Some(files) if files.is_empty() => return Ok(HashMap::new()),
            Some(files) => builder = builder.with_file_paths(files),
            None => {}
        }
        let scan = builder.build().await.map_err(query_error)?;
        let context = SessionContext::new();
        self.register_store(&context.state())?;
        let selections = scan.deletion_vectors(&context.state()).await.map_err(query_error)?;
        Ok(selections
            .into_iter()
            .map(|selection| {
                let deleted = selection
                    .keep_mask
                    .iter()
                    .enumerate()
                    .filter(|(_, keep)| !**keep)
                    .map(|(position, _)| position as u64)
                    .collect();
                (self.file_path_of(&selection.filepath), deleted)
            })
            .collect())
    }

    /// Writes the new deletion vectors of `marks` into one file and returns the actions
    /// that publish them: for each file its remove, and an add with the new vector unless
    /// every row of it is deleted.
    pub(crate) async fn mark_deleted(&self, marks: Vec<Marks>) -> Result<(Vec<Add>, Vec<deltalake::kernel::Remove>)> {
        let uuid = uuid::Uuid::new_v4();
        let relative = format!("deletion_vector_{uuid}.bin");
        let encoded = z85::encode(uuid.as_bytes());
        let mut bytes = Vec::new();
        let mut writer = StreamingDeletionVectorWriter::new(&mut bytes);
        let mut adds = Vec::new();
        let mut removes = Vec::with_capacity(marks.len());
        let kernel_error = |e: delta_kernel::Error| {
            EngineError::Internal(format!("writing deletion vector `{relative}` of `{}`: {e}", self.name))
        };
        for Marks { file, deleted, positions, rows } in marks {
            let mut vector = KernelDeletionVector::new();
            vector.add_deleted_row_indexes(deleted.into_iter().chain(positions));
            removes.push(file.remove);
            if vector.cardinality() >= rows {
                continue;
            }
            let written = writer.write_deletion_vector(vector).map_err(kernel_error)?;
            let mut add = file.add;
            add.deletion_vector = Some(DeletionVectorDescriptor {
                storage_type: StorageType::UuidRelativePath,
                path_or_inline_dv: encoded.clone(),
                offset: Some(written.offset),
                size_in_bytes: written.size_in_bytes,
                cardinality: written.cardinality,
            });
            add.data_change = true;
            add.modification_time = chrono::Utc::now().timestamp_millis();
            add.stats =
                Some(loose_bounds(add.stats.as_deref(), rows).map_err(|e| {
                    EngineError::Internal(format!("statistics of `{}` in `{}`: {e}", add.path, self.name))
                })?);
            adds.push(add);
        }
        writer.finalize().map_err(kernel_error)?;
        if !adds.is_empty() {
            self.write_side_file(&relative, bytes).await?;
        }
        Ok((adds, removes))
    }
}

/// The statistics of a file of `rows` rows with deleted rows: the same, `tightBounds = false`
/// (its bounds may be a deleted row's), and `numRecords` (every row of the file), which a
/// reader needs to apply a deletion vector, even when the file had no statistics.
fn loose_bounds(stats: Option<&str>, rows: u64) -> serde_json::Result<String> {
    let mut value: serde_json::Value = match stats {
        Some(stats) => serde_json::from_str(stats)?,
        None => serde_json::json!({}),
    };
    if let Some(object) = value.as_object_mut() {
        object.insert("tightBounds".to_owned(), serde_json::Value::Bool(false));
        object.entry("numRecords").or_insert(serde_json::Value::from(rows));
    }
    serde_json::to_string(&value)
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;
    use std::sync::Arc;

    use arrow::array::{AsArray, Int64Array, RecordBatch};
    use arrow::datatypes::{DataType, Field, Int64Type, Schema};

    use super::{Marks, loose_bounds};
    use crate::table::{Commit, CommitKind, Table};

    /// A commit of `adds` and `removes` by app `test` at `txn`; creates the table with
    /// deletion vectors on.
    fn commit(adds: Vec<deltalake::kernel::Add>, removes: Vec<deltalake::kernel::Remove>, txn: i64) -> Commit {
        let schema = Arc::new(Schema::new(vec![Field::new("id", DataType::Int64, true)]));
        Commit {
            adds,
            removes,
            cdc: Vec::new(),
            partition_by: Vec::new(),
            change_data_feed: false,
            deletion_vectors: true,
            operation: CommitKind::Merge { predicate: "test".into() },
            schema: (txn == 1).then_some(schema),
            app_id: "test".into(),
            app_version: txn,
            metadata: HashMap::new(),
        }
    }

    async fn ids(table: &Table) -> Vec<i64> {
        let mut ids: Vec<i64> = table
            .read_all()
            .await
            .unwrap()
            .iter()
            .flat_map(|b| b.column(0).as_primitive::<Int64Type>().values().to_vec())
            .collect();
        ids.sort();
        ids
    }

    /// A merge that marks rows of a file a compaction removed meanwhile loses: committed,
    /// it would bring the file's rows back beside their compacted copies.
    #[tokio::test]
    async fn a_merge_that_a_compaction_beat_does_not_commit() {
        let dir = tempfile::tempdir().unwrap();
        let url = url::Url::from_directory_path(dir.path()).unwrap();
        let mut table = Table::open("silver.t", url.clone()).await.unwrap();
        let schema = Arc::new(Schema::new(vec![Field::new("id", DataType::Int64, true)]));
        for (txn, ids) in [(1, 0..10), (2, 10..20)] {
            let mut writer = table.writer_factory(&[]).writer(schema.clone());
            writer
                .write(
                    &RecordBatch::try_new(schema.clone(), vec![Arc::new(Int64Array::from_iter_values(ids))]).unwrap(),
                )
                .await
                .unwrap();
            table.commit(commit(writer.close().await.unwrap(), Vec::new(), txn)).await.unwrap();
        }
        let mut merging = Table::open("silver.t", url).await.unwrap();
        let compacted = table.compact_once(1 << 30, &[], None, HashMap::new()).await.unwrap();
        assert!(matches!(compacted, super::super::compact::Attempt::Done(_)));
        let scan = merging.key_scan(vec![("id".to_owned(), DataType::Int64)]).unwrap();
        let mut wanted = scan.new_set();
        scan.collect(&[Arc::new(Int64Array::from(vec![3])) as _], |_, key| wanted.insert(key)).unwrap();
        let mut marked = None;
        for file in merging.active_files().await.unwrap() {
            let found = scan.positions(&file, &wanted, &[]).await.unwrap();
            if found.found == 1 {
                marked = Some((file, found));
            }
        }
        let (file, found) = marked.unwrap();
        let marks = vec![Marks { file, deleted: Vec::new(), positions: found.positions, rows: found.rows }];
        let (adds, removes) = merging.mark_deleted(marks).await.unwrap();
        let lost = merging.commit(commit(adds, removes, 3)).await;
        assert!(matches!(lost, Err(crate::error::EngineError::ConcurrentCommit { .. })), "{lost:?}");
        table.delta.update_incremental(None).await.unwrap();
        assert_eq!(ids(&table).await, (0..20).collect::<Vec<_>>());
    }

    /// The table's only file, and where `ids` are in it with `deleted` deleted.
    async fn mark(
        table: &Table,
        scan: &crate::table::key_scan::KeyScan,
        ids: Vec<i64>,
        deleted: Vec<u64>,
    ) -> (crate::table::ActiveFile, Vec<u64>, crate::table::key_scan::KeyPositions) {
        let mut wanted = scan.new_set();
        scan.collect(&[Arc::new(Int64Array::from(ids)) as _], |_, key| wanted.insert(key)).unwrap();
        let file = table.active_files().await.unwrap().remove(0);
        let found = scan.positions(&file, &wanted, &deleted).await.unwrap();
        (file, deleted, found)
    }

    /// Keys found across batches, deleted rows skipped; vectors written, read back by
    /// delta-rs, grown by a second mark; a file whose every row goes is only removed.
    #[tokio::test]
    async fn marked_rows_are_found_by_key_written_read_back_and_grow() {
        let dir = tempfile::tempdir().unwrap();
        let url = url::Url::from_directory_path(dir.path()).unwrap();
        let mut table = Table::open("silver.t", url).await.unwrap();
        let schema = Arc::new(Schema::new(vec![Field::new("id", DataType::Int64, true)]));
        let mut writer = table.writer_factory(&[]).writer(schema.clone());
        let batch =
            RecordBatch::try_new(schema.clone(), vec![Arc::new(Int64Array::from_iter_values(0..5000))]).unwrap();
        writer.write(&batch).await.unwrap();
        table.commit(commit(writer.close().await.unwrap(), Vec::new(), 1)).await.unwrap();
        assert!(table.deletion_vectors());

        // Batches of 1024 rows, so keys are found across batch boundaries.
        let scan = table.key_scan(vec![("id".to_owned(), DataType::Int64)]).unwrap().with_batch_rows(1024);
        // Across 1024-row batches, ids ascending in the file: position = id.
        let (file, deleted, found) = mark(&table, &scan, vec![0, 1023, 1024, 2500, 4999, 7000], Vec::new()).await;
        assert_eq!((found.rows, found.found), (5000, 5));
        assert_eq!(found.positions, [0, 1023, 1024, 2500, 4999]);
        let (adds, removes) = table
            .mark_deleted(vec![Marks { file, deleted, positions: found.positions, rows: found.rows }])
            .await
            .unwrap();
        assert_eq!((adds.len(), removes.len()), (1, 1));
        assert_eq!(adds[0].deletion_vector.as_ref().map(|dv| dv.cardinality), Some(5));
        table.commit(commit(adds, removes, 2)).await.unwrap();
        let deleted = table.deleted_rows(None).await.unwrap();
        assert_eq!(deleted.values().next().unwrap(), &vec![0, 1023, 1024, 2500, 4999]);
        assert_eq!(ids(&table).await.len(), 4995);

        // Deleted rows are not found again; the vector grows.
        let already = deleted.into_values().next().unwrap();
        let (file, deleted, found) = mark(&table, &scan, vec![1023, 1, 3000], already).await;
        assert_eq!((found.found, found.positions.clone()), (2, vec![1, 3000]));
        let (adds, removes) = table
            .mark_deleted(vec![Marks { file, deleted, positions: found.positions, rows: found.rows }])
            .await
            .unwrap();
        assert_eq!(removes[0].deletion_vector.as_ref().map(|dv| dv.cardinality), Some(5));
        assert_eq!(adds[0].deletion_vector.as_ref().map(|dv| dv.cardinality), Some(7));
        table.commit(commit(adds, removes, 3)).await.unwrap();
        let expected: Vec<i64> = (0..5000).filter(|id| ![0, 1, 1023, 1024, 2500, 3000, 4999].contains(id)).collect();
        assert_eq!(ids(&table).await, expected);

        // Every row deleted: the file is removed, not added again.
        let (file, deleted, _) =
            mark(&table, &scan, Vec::new(), table.deleted_rows(None).await.unwrap().into_values().next().unwrap())
                .await;
        let rest: Vec<u64> = expected.iter().map(|id| *id as u64).collect();
        let (adds, removes) =
            table.mark_deleted(vec![Marks { file, deleted, positions: rest, rows: 5000 }]).await.unwrap();
        assert_eq!((adds.len(), removes.len()), (0, 1));
        table.commit(commit(adds, removes, 4)).await.unwrap();
        assert!(ids(&table).await.is_empty());
    }

    #[test]
    fn statistics_of_a_file_with_deletes_say_their_bounds_are_loose_and_count_every_row() {
        let stats = loose_bounds(Some(r#"{"numRecords":3,"minValues":{"id":1}}"#), 3).unwrap();
        let value: serde_json::Value = serde_json::from_str(&stats).unwrap();
        assert_eq!(value["tightBounds"], serde_json::Value::Bool(false));
        assert_eq!(value["numRecords"], 3);
        assert_eq!(value["minValues"]["id"], 1);
        let value: serde_json::Value = serde_json::from_str(&loose_bounds(None, 7).unwrap()).unwrap();
        assert_eq!(value, serde_json::json!({"numRecords": 7, "tightBounds": false}));
    }
}
