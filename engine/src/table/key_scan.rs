//! Where rows with given keys sit in a data file: its key columns read in file order (no
//! other column, no row skipped), each row's position counted over every row of the file.
//! What a merge into a table with deletion vectors marks ([`super::deletion_vectors`]).
//!
//! One `bigint` or `int` key (the common case) is looked up by value; any other keys in
//! Arrow's row format. The caller reads files on tasks of their own, a few at a time
//! (`transform::mark`), so a merge touching many files uses every core.

use std::sync::Arc;

use arrow::array::{ArrayRef, AsArray};
use arrow::compute::{CastOptions, cast_with_options};
use arrow::datatypes::{DataType, Int64Type};
use arrow::row::{RowConverter, SortField};
use deltalake::DeltaTableError;
use deltalake::logstore::ObjectStoreRef;
use futures::TryStreamExt;
use parquet::arrow::{ParquetRecordBatchStreamBuilder, ProjectionMask};

use super::compact::StoreFile;
use super::{ActiveFile, Table};
use crate::error::{EngineError, Result};

/// Rows per batch of key columns read.
const BATCH_ROWS: usize = 64 * 1024;
/// Key casts fail on a value the type cannot hold, rather than make it NULL (a key that
/// would then not be found).
const EXACT: CastOptions<'static> =
    CastOptions { safe: false, format_options: arrow::util::display::FormatOptions::new() };

/// The keys to find in one file, numbered from 0.
pub(crate) enum KeySet {
    /// One integer key, by value.
    Integer(hashbrown::HashMap<i64, usize>),
    /// Any keys, in the scan's row format.
    Rows(hashbrown::HashMap<Box<[u8]>, usize>),
}

/// One key of a [`KeyScan::collect`].
pub(crate) enum Key<'a> {
    Integer(i64),
    Row(&'a [u8]),
}

impl KeySet {
    pub(crate) fn len(&self) -> usize {
        match self {
            KeySet::Integer(keys) => keys.len(),
            KeySet::Rows(keys) => keys.len(),
        }
    }

    /// Adds `key` (numbered next) unless it is in the set already.
    pub(crate) fn insert(&mut self, key: Key<'_>) -> Result<()> {
        let next = self.len();
        match (self, key) {
            (KeySet::Integer(keys), Key::Integer(key)) => {
                keys.entry(key).or_insert(next);
            }
            (KeySet::Rows(keys), Key::Row(key)) => {
                keys.entry(Box::from(key)).or_insert(next);
            }
            _ => return Err(EngineError::Internal("a key of the wrong kind for its set".into())),
        }
        Ok(())
    }
}

/// Where the keys asked for sit in one data file.
#[derive(Debug, Default)]
pub(crate) struct KeyPositions {
    /// Every row of the file, deleted ones included.
    pub(crate) rows: u64,
    /// Positions of live rows whose key was asked for, ascending.
    pub(crate) positions: Vec<u64>,
    /// How many of the keys asked for were found on a live row.
    pub(crate) found: usize,
}

/// Finds keys of given columns and types in a table's data files.
pub(crate) struct KeyScan {
    table: String,
    store: ObjectStoreRef,
    /// Key columns and the type they are compared as.
    keys: Vec<(String, DataType)>,
    /// For [`KeySet::Rows`]; `None` for one integer key.
    converter: Option<RowConverter>,
    batch_rows: usize,
}

impl Table {
    /// A scan for keys of these columns, compared as these types.
    pub(crate) fn key_scan(&self, keys: Vec<(String, DataType)>) -> Result<Arc<KeyScan>> {
        let by_value =
            matches!(keys.as_slice(), [(_, DataType::Int64 | DataType::Int32 | DataType::Int16 | DataType::Int8)]);
        self.new_key_scan(keys, by_value)
    }

    /// A scan for keys of these columns in Arrow's row format of these types (a
    /// `RowConverter` of one `SortField` per key, default options), whatever they are: for
    /// callers that hold keys in that format already.
    pub(crate) fn key_scan_in_row_format(&self, keys: Vec<(String, DataType)>) -> Result<Arc<KeyScan>> {
        self.new_key_scan(keys, false)
    }

    fn new_key_scan(&self, keys: Vec<(String, DataType)>, by_value: bool) -> Result<Arc<KeyScan>> {
        let converter = if by_value {
            None
        } else {
            Some(
                RowConverter::new(keys.iter().map(|(_, t)| SortField::new(t.clone())).collect())
                    .map_err(|e| EngineError::arrow(format!("key columns of `{}`", self.name), e))?,
            )
        };
        Ok(Arc::new(KeyScan {
            table: self.name.clone(),
            store: self.delta.object_store(),
            keys,
            converter,
            batch_rows: BATCH_ROWS,
        }))
    }
}

impl KeyScan {
    /// Calls `each` with every row's key of `columns` (one array per key column, of equal
    /// length), for adding it to a [`KeySet`] of this scan's kind.
    pub(crate) fn collect(
        &self,
        columns: &[ArrayRef],
        mut each: impl FnMut(usize, Key<'_>) -> Result<()>,
    ) -> Result<()> {
        match &self.converter {
            None => {
                let values = self.integers(&columns[0])?;
                for (row, value) in values.iter().enumerate() {
                    let Some(value) = value else {
                        return Err(EngineError::Internal(format!("`{}`: a NULL key to find", self.table)));
                    };
                    each(row, Key::Integer(value))?;
                }
            }
            Some(converter) => {
                let columns = self.typed(columns)?;
                let rows = converter
                    .convert_columns(&columns)
                    .map_err(|e| EngineError::arrow(format!("keys of `{}`", self.table), e))?;
                for (row, key) in rows.iter().enumerate() {
                    each(row, Key::Row(key.as_ref()))?;
                }
            }
        }
        Ok(())
    }

    /// An empty set of the kind this scan looks up.
    pub(crate) fn new_set(&self) -> KeySet {
        match self.converter {
            None => KeySet::Integer(hashbrown::HashMap::new()),
            Some(_) => KeySet::Rows(hashbrown::HashMap::new()),
        }
    }

    /// The live rows of `file` whose key is in `wanted`; `deleted` (ascending) are the rows
    /// its deletion vector deletes.
    pub(crate) async fn positions(&self, file: &ActiveFile, wanted: &KeySet, deleted: &[u64]) -> Result<KeyPositions> {
        let parquet_error = |source: parquet::errors::ParquetError| EngineError::Delta {
            table: self.table.clone(),
            location: file.path.clone(),
            source: Box::new(DeltaTableError::Parquet { source }),
        };
        let size = u64::try_from(file.add.size).map_err(|_| {
            EngineError::Internal(format!(
                "`{}`: the log gives `{}` a size of {}",
                self.table, file.path, file.add.size
            ))
        })?;
        let reader = StoreFile { store: self.store.clone(), path: file.location.clone(), size };
        let builder = ParquetRecordBatchStreamBuilder::new(reader).await.map_err(parquet_error)?;
        let mut indices = Vec::with_capacity(self.keys.len());
        for (key, _) in &self.keys {
            let index = builder.schema().index_of(key).map_err(|_| EngineError::Schema {
                table: self.table.clone(),
                message: format!("data file `{}` has no key column `{key}`", file.path),
            })?;
            indices.push(index);
        }
        let mask = ProjectionMask::roots(builder.parquet_schema(), indices);
        let mut stream =
            builder.with_projection(mask).with_batch_size(self.batch_rows).build().map_err(parquet_error)?;
        let mut result = KeyPositions::default();
        let mut deleted = deleted.iter().copied().peekable();
        let mut seen = vec![false; wanted.len()];
        let mut found = |position: u64, index: Option<usize>, result: &mut KeyPositions| {
            let Some(index) = index else {
                return;
            };
            while deleted.next_if(|d| *d < position).is_some() {}
            if deleted.peek() == Some(&position) {
                return;
            }
            result.positions.push(position);
            if let Some(seen) = seen.get_mut(index)
                && !std::mem::replace(seen, true)
            {
                result.found += 1;
            }
        };
        while let Some(batch) = stream.try_next().await.map_err(parquet_error)? {
            let mut columns = Vec::with_capacity(self.keys.len());
            for (key, _) in &self.keys {
                columns.push(batch.column_by_name(key).cloned().ok_or_else(|| {
                    EngineError::Internal(format!("`{}`: file `{}` read without `{key}`", self.table, file.path))
                })?);
            }
            match (wanted, &self.converter) {
                (KeySet::Integer(keys), None) => {
                    let values = self.integers(&columns[0])?;
                    for (offset, value) in values.iter().enumerate() {
                        let index = value.and_then(|v| keys.get(&v).copied());
                        found(result.rows + offset as u64, index, &mut result);
                    }
                }
                (KeySet::Rows(keys), Some(converter)) => {
                    let rows = converter
                        .convert_columns(&self.typed(&columns)?)
                        .map_err(|e| EngineError::arrow(format!("keys of `{}` in `{}`", file.path, self.table), e))?;
                    for (offset, row) in rows.iter().enumerate() {
                        let index = keys.get(row.as_ref()).copied();
                        found(result.rows + offset as u64, index, &mut result);
                    }
                }
                _ => return Err(EngineError::Internal("a key set of the wrong kind".into())),
            }
            result.rows += batch.num_rows() as u64;
        }
        Ok(result)
    }

    /// One integer key column as `bigint`.
    fn integers(&self, column: &ArrayRef) -> Result<arrow::array::Int64Array> {
        let column = cast_with_options(column, &DataType::Int64, &EXACT)
            .map_err(|e| EngineError::arrow(format!("key `{}` of `{}`", self.keys[0].0, self.table), e))?;
        Ok(column.as_primitive::<Int64Type>().clone())
    }

    /// Key columns as the types they are compared as.
    fn typed(&self, columns: &[ArrayRef]) -> Result<Vec<ArrayRef>> {
        columns
            .iter()
            .zip(&self.keys)
            .map(|(column, (key, data_type))| {
                cast_with_options(column, data_type, &EXACT)
                    .map_err(|e| EngineError::arrow(format!("key `{key}` of `{}`", self.table), e))
            })
            .collect()
    }
}

#[cfg(test)]
impl KeyScan {
    /// The same scan, reading batches of `rows` rows.
    pub(crate) fn with_batch_rows(self: Arc<Self>, rows: usize) -> Arc<Self> {
        let scan = Arc::try_unwrap(self).unwrap_or_else(|_| panic!("a shared key scan"));
        Arc::new(KeyScan { batch_rows: rows, ..scan })
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use arrow::array::{ArrayRef, Int64Array, StringArray};
    use arrow::datatypes::DataType;

    use super::KeySet;
    use crate::table::Table;

    #[tokio::test]
    async fn one_integer_key_is_looked_up_by_value_and_others_by_row() {
        let dir = tempfile::tempdir().unwrap();
        let table = Table::open("silver.t", url::Url::from_directory_path(dir.path()).unwrap()).await.unwrap();
        let scan = table.key_scan(vec![("id".into(), DataType::Int64)]).unwrap();
        let mut set = scan.new_set();
        let ids: ArrayRef = Arc::new(Int64Array::from(vec![3, 1, 3]));
        scan.collect(&[ids], |_, key| set.insert(key)).unwrap();
        let KeySet::Integer(keys) = &set else { panic!("not by value") };
        assert_eq!((keys.len(), keys[&3], keys[&1]), (2, 0, 1));

        let scan = table.key_scan(vec![("id".into(), DataType::Int64), ("k".into(), DataType::Utf8)]).unwrap();
        let mut set = scan.new_set();
        let ids: ArrayRef = Arc::new(Int64Array::from(vec![1, 1]));
        let names: ArrayRef = Arc::new(StringArray::from(vec!["a", "b"]));
        scan.collect(&[ids, names], |_, key| set.insert(key)).unwrap();
        assert!(matches!(&set, KeySet::Rows(keys) if keys.len() == 2));
    }
}
