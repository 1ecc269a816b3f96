//! `merge` and `scd2` into a table with deletion vectors: the rows a write replaces are
//! marked deleted in their files' deletion vectors, and the files stay as they are. Only the
//! new versions of the rows are written.

use std::collections::HashMap;
use std::sync::Arc;

use arrow::array::{Array, StringArray};
use arrow::compute::cast;
use arrow::datatypes::DataType;
use deltalake::datafusion::prelude::SessionContext;
use deltalake::kernel::{Add, Remove};
use futures::{StreamExt, TryStreamExt};
use tracing::debug;

use crate::error::{EngineError, Result};
use crate::table::{ActiveFile, KeyScan, KeySet, Marks};

use super::write::Writer;
use super::{FILE_COLUMN, OP_COLUMN, quote};

/// Files whose key columns are read at once, each on a task of its own.
const FILES_AT_ONCE: usize = 4;

impl Writer<'_> {
    /// Whether this write marks replaced rows in deletion vectors: the config asks for them,
    /// the table has them on, and every key is a column of the data files under its own name
    /// (a partition column is not, and a table that maps column names stores them under
    /// others; the config refuses a partition key, but a table may be partitioned otherwise
    /// than its config says until the merge checks it).
    pub(super) fn marks_rows(&self) -> bool {
        let partitions = self.target.partition_columns().unwrap_or_default();
        self.config.deletion_vectors
            && self.target.deletion_vectors()
            && !self.target.maps_column_names()
            && !self.config.keys.iter().any(|k| partitions.contains(k))
    }

    /// Marks deleted the live rows whose keys `__inlet_matched` updates or deletes, in the
    /// files it found them in. Returns the actions: each file removed and added again with
    /// its new deletion vector.
    pub(super) async fn mark_replaced(
        &self,
        context: &SessionContext,
        files: &[ActiveFile],
    ) -> Result<(Vec<Add>, Vec<Remove>)> {
        let keys = self.config.keys.iter().map(|k| quote(k)).collect::<Vec<_>>().join(", ");
        let changed = self
            .query(
                context,
                &format!("SELECT {FILE_COLUMN}, {keys} FROM __inlet_matched WHERE {OP_COLUMN} IN ('update', 'delete')"),
            )
            .await?;
        let Some(first) = changed.first() else {
            return Ok((Vec::new(), Vec::new()));
        };
        let key_types: Vec<(String, DataType)> = self
            .config
            .keys
            .iter()
            .enumerate()
            .map(|(i, key)| (key.clone(), first.schema().field(i + 1).data_type().clone()))
            .collect();
        let scan = self.target.key_scan(key_types)?;
        // Per file (by the URL the scan gives it), the keys to find in it.
        let mut wanted: HashMap<String, KeySet> = HashMap::new();
        for batch in &changed {
            let urls = cast(batch.column(0), &DataType::Utf8)
                .map_err(|e| EngineError::arrow(format!("file column of `{}`", self.table), e))?;
            let urls = urls
                .as_any()
                .downcast_ref::<StringArray>()
                .ok_or_else(|| EngineError::Internal(format!("`{}`: the file column is not text", self.table)))?;
            scan.collect(&batch.columns()[1..], |row, key| {
                if urls.is_null(row) {
                    return Err(EngineError::Internal(format!("`{}`: a matched row has no file", self.table)));
                }
                let url = urls.value(row);
                match wanted.get_mut(url) {
                    Some(keys) => keys.insert(key),
                    None => {
                        let mut keys = scan.new_set();
                        keys.insert(key)?;
                        wanted.insert(url.to_owned(), keys);
                        Ok(())
                    }
                }
            })?;
        }
        self.mark_keys(&scan, wanted, files).await
    }

    /// Marks deleted, in each file `wanted` names (by URL, as a scan's file column has it),
    /// the live rows whose keys it holds for that file; every key wanted in a file must be on
    /// a live row of it. Returns each file's remove and its add with the new deletion vector.
    pub(super) async fn mark_keys(
        &self,
        scan: &Arc<KeyScan>,
        wanted: HashMap<String, KeySet>,
        files: &[ActiveFile],
    ) -> Result<(Vec<Add>, Vec<Remove>)> {
        let by_path: HashMap<&str, &ActiveFile> = files.iter().map(|f| (f.path.as_str(), f)).collect();
        let mut chosen = Vec::with_capacity(wanted.len());
        let mut with_vectors = Vec::new();
        for (url, keys) in wanted {
            let path = self.target.file_path_of(&url);
            let file = by_path.get(path.as_str()).ok_or_else(|| {
                EngineError::Internal(format!("`{}`: scanned file `{url}` is not in the table", self.table))
            })?;
            if file.add.deletion_vector.is_some() {
                with_vectors.push(url);
            }
            chosen.push(((*file).clone(), keys));
        }
        let mut deleted = self.target.deleted_rows(Some(with_vectors)).await?;
        let marks: Vec<Marks> = futures::stream::iter(chosen)
            .map(|(file, keys)| {
                let deleted = match (deleted.remove(&file.path), &file.add.deletion_vector) {
                    (Some(deleted), _) => Ok(deleted),
                    (None, None) => Ok(Vec::new()),
                    (None, Some(_)) => Err(EngineError::Internal(format!(
                        "`{}`: the deletion vector of `{}` was not read",
                        self.table, file.path
                    ))),
                };
                let scan = Arc::clone(scan);
                let table = self.table.to_owned();
                async move {
                    let deleted = deleted?;
                    let task = tokio::spawn(async move {
                        let found = scan.positions(&file, &keys, &deleted).await?;
                        if found.found != keys.len() {
                            return Err(EngineError::Internal(format!(
                                "`{table}`: {} of the {} keys to mark deleted in `{}` are not on a live row of it",
                                keys.len() - found.found,
                                keys.len(),
                                file.path
                            )));
                        }
                        Ok(Marks { file, deleted, positions: found.positions, rows: found.rows })
                    });
                    task.await.map_err(|e| EngineError::Internal(format!("finding rows to mark: {e}")))?
                }
            })
            .buffered(FILES_AT_ONCE)
            .try_collect()
            .await?;
        let rows: usize = marks.iter().map(|m| m.positions.len()).sum();
        debug!(table = %self.table, files = marks.len(), rows, "rows to mark deleted found");
        self.target.mark_deleted(marks).await
    }
}
