//! Writing a derived table's result: the `Writer` shared by every write mode, `append`,
//! `overwrite` and `replace_partitions`, and the helpers the keyed modes use.

use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;

use arrow::array::{ArrayRef, RecordBatch, StringArray, new_null_array};
use arrow::compute::{CastOptions, cast_with_options};
use arrow::datatypes::{DataType, Field, FieldRef, Schema, SchemaRef};
use deltalake::datafusion::error::DataFusionError;
use deltalake::datafusion::prelude::{DataFrame, SessionContext, lit};
use futures::StreamExt;

use crate::config::{OnNewColumns, TableConfig, WriteMode};
use crate::error::{EngineError, Result};
use crate::schema::delta_compatible;
use crate::table::{ActiveFile, CommitKind, Table};

use super::{CHANGE_TYPE, RowCounts, Window, quote};

/// The commit a write plans.
pub(crate) struct Planned {
    pub(crate) adds: Vec<deltalake::kernel::Add>,
    pub(crate) removes: Vec<deltalake::kernel::Remove>,
    /// Change data files, when the table records change data and the write rewrote rows.
    pub(crate) cdc: Vec<deltalake::kernel::AddCDCFile>,
    pub(crate) schema: Option<SchemaRef>,
    pub(crate) kind: CommitKind,
}

pub(crate) struct Written {
    pub(crate) rows: RowCounts,
    /// `None` when the result changes nothing.
    pub(crate) commit: Option<Planned>,
}

pub(crate) struct Writer<'a> {
    pub(crate) table: &'a str,
    pub(crate) config: &'a TableConfig,
    pub(crate) target: &'a Table,
    /// When the run started: the valid time of `scd2` rows without `sequence_by`.
    pub(crate) now_micros: i64,
    /// The table's expectations, applied to the query result.
    pub(crate) checks: Option<Arc<crate::expect::Checks>>,
    /// `replace_partitions` of one backfill window: the window is replaced even when the
    /// result has no rows for it.
    pub(crate) window: Option<Window>,
}

impl Writer<'_> {
    /// Writes a result with the table's strategy; plans the commit.
    pub(crate) async fn write(&self, context: &SessionContext, frame: DataFrame) -> Result<Written> {
        match self.config.write {
            WriteMode::Append | WriteMode::Overwrite | WriteMode::ReplacePartitions => {
                self.replace_or_append(frame).await
            }
            WriteMode::Merge => self.merge(context, frame).await,
            WriteMode::Scd2 => self.scd2(context, frame).await,
        }
    }

    pub(crate) fn sql_error(&self, source: DataFusionError) -> EngineError {
        EngineError::sql(self.table.to_owned(), source)
    }

    pub(crate) fn transform_error(&self, message: String) -> EngineError {
        EngineError::Transform { table: self.table.to_owned(), message }
    }

    /// The schema to write: the table's columns (with new result columns as
    /// `on_new_columns` says), or the result's for a new table or an overwrite. Returns the
    /// schema and whether it differs from the table's.
    pub(crate) fn plan_schema(&self, result: &Schema, replace: bool) -> Result<(SchemaRef, bool)> {
        let result_fields: Vec<FieldRef> = result
            .fields()
            .iter()
            .filter(|f| !f.name().starts_with("__inlet_"))
            .map(|f| Arc::new(Field::new(f.name(), delta_compatible(f.data_type()), true)))
            .collect();
        for column in self.config.keys.iter().chain(&self.config.partition_by).chain(&self.config.sequence_by) {
            if !result_fields.iter().any(|f| f.name() == column) {
                return Err(self.transform_error(format!("the query result has no column `{column}`")));
            }
        }
        let existing = self.target.arrow_schema()?;
        let Some(existing) = existing.filter(|_| !replace) else {
            let schema = Arc::new(Schema::new(result_fields));
            let changed = match self.target.arrow_schema()? {
                Some(old) => !same_columns(&old, &schema),
                None => true,
            };
            return Ok((schema, changed));
        };
        let mut fields: Vec<FieldRef> = existing.fields().iter().cloned().collect();
        let mut added = Vec::new();
        for field in &result_fields {
            if !fields.iter().any(|f| f.name() == field.name()) {
                added.push(field.clone());
            }
        }
        if !added.is_empty() {
            let names: Vec<&str> = added.iter().map(|f| f.name().as_str()).collect();
            match self.config.on_new_columns {
                OnNewColumns::Add => fields.extend(added.iter().cloned()),
                OnNewColumns::Ignore => {}
                OnNewColumns::Fail | OnNewColumns::Rescue => {
                    return Err(self.transform_error(format!(
                        "the query result has new columns {names:?} and `on_new_columns = \"{}\"`",
                        if self.config.on_new_columns == OnNewColumns::Fail { "fail" } else { "rescue" }
                    )));
                }
            }
        }
        let changed = fields.len() != existing.fields().len();
        Ok((Arc::new(Schema::new(fields)), changed))
    }

    pub(crate) fn check_partitioning(&self) -> Result<()> {
        let Some(existing) = self.target.partition_columns() else {
            return Ok(());
        };
        if existing != self.config.partition_by {
            return Err(self.transform_error(format!(
                "the table is partitioned by {existing:?} but `partition_by` says {:?}; overwrite it under a new name or change the config",
                self.config.partition_by
            )));
        }
        Ok(())
    }

    /// `append`, `overwrite` and `replace_partitions`: stream the result into new files.
    pub(super) async fn replace_or_append(&self, frame: DataFrame) -> Result<Written> {
        let replace = self.config.write == WriteMode::Overwrite;
        self.check_partitioning()?;
        let (schema, changed) = self.plan_schema(frame.schema().as_arrow(), replace)?;
        let factory = self.target.writer_factory(&self.config.partition_by);
        let (rows, adds) = self.write_frame_with(frame, &schema, factory, self.checks.clone()).await?;
        let counts = RowCounts { inserted: rows, ..RowCounts::default() };
        let schema = (changed || !self.target.exists()).then_some(schema);
        let planned = match self.config.write {
            WriteMode::Append if adds.is_empty() => None,
            WriteMode::Append => {
                Some(Planned { adds, removes: Vec::new(), cdc: Vec::new(), schema, kind: CommitKind::Append })
            }
            WriteMode::ReplacePartitions if adds.is_empty() && self.window.is_none() => None,
            WriteMode::ReplacePartitions => {
                let replaced: BTreeSet<Vec<(String, Option<String>)>> =
                    adds.iter().map(|a| sorted(&a.partition_values)).collect();
                let in_window = |values: &HashMap<String, Option<String>>| {
                    self.window.as_ref().is_some_and(|w| values.get(&w.column) == Some(&Some(w.value.clone())))
                };
                let removes: Vec<deltalake::kernel::Remove> = self
                    .target
                    .active_files()
                    .await?
                    .into_iter()
                    .filter(|f| replaced.contains(&sorted(&f.partition_values)) || in_window(&f.partition_values))
                    .map(|f| f.remove)
                    .collect();
                if adds.is_empty() && removes.is_empty() {
                    return Ok(Written { rows: counts, commit: None });
                }
                let predicate = match &self.window {
                    Some(w) => partition_predicate(&BTreeSet::from([vec![(w.column.clone(), Some(w.value.clone()))]])),
                    None => partition_predicate(&replaced),
                };
                Some(Planned {
                    adds,
                    removes,
                    cdc: Vec::new(),
                    schema,
                    kind: CommitKind::ReplacePartitions { predicate },
                })
            }
            _ => {
                let removes = self.target.active_files().await?.into_iter().map(|f| f.remove).collect();
                Some(Planned { adds, removes, cdc: Vec::new(), schema, kind: CommitKind::Overwrite })
            }
        };
        Ok(Written { rows: counts, commit: planned })
    }

    /// The result's batches in `schema`, less the rows its expectations drop or quarantine.
    pub(super) fn checked(&self, batches: Vec<RecordBatch>, schema: &SchemaRef) -> Result<Vec<RecordBatch>> {
        batches
            .iter()
            .map(|b| {
                let batch = conform_batch(b, schema, self.table)?;
                match &self.checks {
                    Some(checks) => checks.keep(&batch),
                    None => Ok(batch),
                }
            })
            .collect()
    }

    /// Runs `sql` and writes its result in `schema`, one writer per output partition of the
    /// plan, in parallel; returns the row count and the staged files.
    pub(crate) async fn write_sql(
        &self,
        context: &SessionContext,
        sql: &str,
        schema: &SchemaRef,
    ) -> Result<(u64, Vec<deltalake::kernel::Add>)> {
        let frame = context.sql(sql).await.map_err(|e| self.sql_error(e))?;
        self.write_frame(frame, schema).await
    }

    /// Writes a frame's result in `schema`, one writer per output partition, in parallel.
    pub(crate) async fn write_frame(
        &self,
        frame: DataFrame,
        schema: &SchemaRef,
    ) -> Result<(u64, Vec<deltalake::kernel::Add>)> {
        self.write_frame_with(frame, schema, self.target.writer_factory(&self.config.partition_by), None).await
    }

    /// Writes change data rows (the table's columns plus `_change_type`) as `cdc` files.
    pub(crate) async fn write_changes(
        &self,
        context: &SessionContext,
        sql: &str,
        schema: &SchemaRef,
    ) -> Result<Vec<deltalake::kernel::AddCDCFile>> {
        let frame = context.sql(sql).await.map_err(|e| self.sql_error(e))?;
        let factory = self.target.change_writer_factory(&self.config.partition_by);
        let (_, staged) = self.write_frame_with(frame, &change_schema(schema), factory, None).await?;
        Ok(crate::table::change_files(staged))
    }

    pub(super) async fn write_frame_with(
        &self,
        frame: DataFrame,
        schema: &SchemaRef,
        factory: crate::table::WriterFactory,
        checks: Option<Arc<crate::expect::Checks>>,
    ) -> Result<(u64, Vec<deltalake::kernel::Add>)> {
        let streams = frame.execute_stream_partitioned().await.map_err(|e| self.sql_error(e))?;
        let mut tasks = tokio::task::JoinSet::new();
        for mut stream in streams {
            let mut writer = factory.writer(schema.clone());
            let schema = schema.clone();
            let table = self.table.to_owned();
            let checks = checks.clone();
            tasks.spawn(async move {
                let mut rows = 0u64;
                while let Some(batch) = stream.next().await {
                    let written = match batch {
                        Ok(batch) => match conform_batch(&batch, &schema, &table).and_then(|batch| match &checks {
                            Some(checks) => checks.keep(&batch),
                            None => Ok(batch),
                        }) {
                            Ok(batch) => writer.write(&batch).await.map(|()| batch.num_rows() as u64),
                            Err(err) => Err(err),
                        },
                        Err(source) => Err(EngineError::sql(table.clone(), source)),
                    };
                    match written {
                        Ok(n) => rows += n,
                        Err(err) => {
                            writer.abort().await;
                            return Err(err);
                        }
                    }
                }
                Ok((rows, writer.close().await?))
            });
        }
        let mut rows = 0;
        let mut adds = Vec::new();
        while let Some(joined) = tasks.join_next().await {
            let (n, staged) =
                joined.map_err(|e| EngineError::Internal(format!("writer task of `{}` failed: {e}", self.table)))??;
            rows += n;
            adds.extend(staged);
        }
        Ok((rows, adds))
    }

    /// Runs a query and collects its result.
    pub(crate) async fn query(&self, context: &SessionContext, sql: &str) -> Result<Vec<RecordBatch>> {
        context.sql(sql).await.map_err(|e| self.sql_error(e))?.collect().await.map_err(|e| self.sql_error(e))
    }

    /// `delete_when` as a boolean SQL expression (false without it).
    pub(super) fn delete_flag(&self) -> String {
        match &self.config.delete_when {
            Some(condition) => format!("COALESCE(({}), false)", condition.get_ref()),
            None => "false".to_owned(),
        }
    }

    /// The first column of a query's result, as strings.
    pub(crate) async fn strings(&self, context: &SessionContext, sql: &str) -> Result<Vec<String>> {
        let batches = self.query(context, sql).await?;
        let mut out = Vec::new();
        for batch in &batches {
            let column = arrow::compute::cast(batch.column(0), &DataType::Utf8)
                .map_err(|e| EngineError::arrow("reading a string column", e))?;
            let Some(values) = column.as_any().downcast_ref::<StringArray>() else {
                continue;
            };
            out.extend(values.iter().flatten().map(str::to_owned));
        }
        Ok(out)
    }
}

/// Remove actions for the files named by a scan's file column.
pub(crate) fn removes_for(
    target: &Table,
    files: &[ActiveFile],
    touched: &[String],
) -> Result<Vec<deltalake::kernel::Remove>> {
    touched
        .iter()
        .map(|url| {
            let path = target.file_path_of(url);
            files.iter().find(|f| f.path == path).map(|f| f.remove.clone()).ok_or_else(|| {
                EngineError::Internal(format!("`{}`: scanned file `{url}` is not in the table", target.name))
            })
        })
        .collect()
}

pub(super) fn sorted(values: &HashMap<String, Option<String>>) -> Vec<(String, Option<String>)> {
    let mut pairs: Vec<(String, Option<String>)> = values.iter().map(|(k, v)| (k.clone(), v.clone())).collect();
    pairs.sort();
    pairs
}

/// The query result restricted to one window: `WHERE <column> = <day>`, the day cast to
/// the column's type (DataFusion pushes the filter down into the query).
pub(super) fn window_filter(frame: DataFrame, window: &Window) -> std::result::Result<DataFrame, DataFusionError> {
    let field = frame.schema().as_arrow().field_with_name(&window.column)?.clone();
    let value = deltalake::datafusion::logical_expr::cast(lit(window.value.clone()), field.data_type().clone());
    frame.filter(deltalake::datafusion::prelude::ident(&window.column).eq(value))
}

/// Which partition column windows a `replace_partitions` table: its one date partition
/// column, else its one text partition column (holding `YYYY-MM-DD`).
pub fn window_column(schema: &Schema, partition_by: &[String]) -> std::result::Result<String, String> {
    let typed = |wanted: fn(&DataType) -> bool| -> Vec<&String> {
        partition_by.iter().filter(|c| schema.field_with_name(c).is_ok_and(|f| wanted(f.data_type()))).collect()
    };
    let dates = typed(|t| matches!(t, DataType::Date32 | DataType::Date64));
    let texts = typed(|t| matches!(t, DataType::Utf8 | DataType::LargeUtf8 | DataType::Utf8View));
    match (dates.as_slice(), texts.as_slice()) {
        ([one], _) | ([], [one]) => Ok((*one).clone()),
        ([], []) => Err(format!(
            "backfill windows are days of a date (or `YYYY-MM-DD` text) partition column, and none of {partition_by:?} is one"
        )),
        (many, _) if many.len() > 1 => {
            Err(format!("backfill cannot tell which date partition column of {many:?} is the day"))
        }
        (_, many) => Err(format!("backfill cannot tell which text partition column of {many:?} holds the day")),
    }
}

/// `a = 'x' AND b IS NULL OR ...`: the partitions a commit replaces, for the log.
pub(super) fn partition_predicate(partitions: &BTreeSet<Vec<(String, Option<String>)>>) -> String {
    partitions
        .iter()
        .map(|values| {
            values
                .iter()
                .map(|(column, value)| match value {
                    Some(v) => format!("{} = '{}'", quote(column), v.replace('\'', "''")),
                    None => format!("{} IS NULL", quote(column)),
                })
                .collect::<Vec<_>>()
                .join(" AND ")
        })
        .map(|p| format!("({p})"))
        .collect::<Vec<_>>()
        .join(" OR ")
}

/// The columns of change data files: the table's plus `_change_type`.
pub(crate) fn change_schema(schema: &SchemaRef) -> SchemaRef {
    let mut fields: Vec<_> = schema.fields().iter().cloned().collect();
    fields.push(Arc::new(Field::new(CHANGE_TYPE, DataType::Utf8, true)));
    Arc::new(Schema::new(fields))
}

pub(super) fn same_columns(a: &Schema, b: &Schema) -> bool {
    a.fields().len() == b.fields().len()
        && a.fields().iter().zip(b.fields()).all(|(x, y)| x.name() == y.name() && x.data_type() == y.data_type())
}

/// A batch in `schema`: columns by name, cast to the table's types, missing ones null.
pub(crate) fn conform_batch(batch: &RecordBatch, schema: &SchemaRef, table: &str) -> Result<RecordBatch> {
    let options = CastOptions { safe: false, ..Default::default() };
    let rows = batch.num_rows();
    let columns = schema
        .fields()
        .iter()
        .map(|field| match batch.column_by_name(field.name()) {
            Some(column) if column.data_type() == field.data_type() => Ok(column.clone()),
            Some(column) => {
                cast_with_options(column, field.data_type(), &options).map_err(|e| EngineError::Transform {
                    table: table.to_owned(),
                    message: format!(
                        "column `{}` of the result ({}) does not fit the table's {}: {e}",
                        field.name(),
                        column.data_type(),
                        field.data_type()
                    ),
                })
            }
            None => Ok(new_null_array(field.data_type(), rows)),
        })
        .collect::<Result<Vec<ArrayRef>>>()?;
    RecordBatch::try_new(schema.clone(), columns).map_err(|e| EngineError::arrow("conforming a result batch", e))
}

pub(super) fn first_count(batches: &[RecordBatch]) -> i64 {
    batches
        .iter()
        .find(|b| b.num_rows() > 0)
        .and_then(|b| b.column(0).as_any().downcast_ref::<arrow::array::Int64Array>().map(|a| a.value(0)))
        .unwrap_or(0)
}

pub(crate) fn op_counts(batches: &[RecordBatch]) -> HashMap<String, u64> {
    let mut counts = HashMap::new();
    for batch in batches {
        let (Some(ops), Some(n)) = (
            arrow::compute::cast(batch.column(0), &DataType::Utf8).ok(),
            batch.column(1).as_any().downcast_ref::<arrow::array::Int64Array>(),
        ) else {
            continue;
        };
        let Some(ops) = ops.as_any().downcast_ref::<StringArray>() else {
            continue;
        };
        for i in 0..batch.num_rows() {
            *counts.entry(ops.value(i).to_owned()).or_insert(0) += u64::try_from(n.value(i)).unwrap_or(0);
        }
    }
    counts
}

/// `k=1 (2 rows), ...` for error messages.
pub(super) fn describe_rows(batches: &[RecordBatch]) -> Option<String> {
    let options = arrow::util::display::FormatOptions::default();
    let mut rows = Vec::new();
    for batch in batches {
        let schema = batch.schema();
        let formatters: Vec<_> = batch
            .columns()
            .iter()
            .filter_map(|c| arrow::util::display::ArrayFormatter::try_new(c.as_ref(), &options).ok())
            .collect();
        for row in 0..batch.num_rows() {
            let last = formatters.len().saturating_sub(1);
            let key: Vec<String> = formatters[..last]
                .iter()
                .enumerate()
                .map(|(i, f)| format!("{}={}", schema.field(i).name(), f.value(row)))
                .collect();
            let count = formatters.get(last).map(|f| f.value(row).to_string()).unwrap_or_default();
            rows.push(format!("{} ({count} rows)", key.join(", ")));
        }
    }
    (!rows.is_empty()).then(|| rows.join("; "))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_window_column_is_the_one_date_or_text_partition_column() {
        let schema = Schema::new(vec![
            Field::new("country", DataType::Utf8, true),
            Field::new("day", DataType::Date32, true),
            Field::new("n", DataType::Int64, true),
        ]);
        let pick =
            |columns: &[&str]| window_column(&schema, &columns.iter().map(|c| c.to_string()).collect::<Vec<_>>());
        assert_eq!(pick(&["country", "day"]).unwrap(), "day");
        assert_eq!(pick(&["country"]).unwrap(), "country");
        assert!(pick(&["n"]).unwrap_err().contains("none of"));
        let texts = Schema::new(vec![Field::new("a", DataType::Utf8, true), Field::new("b", DataType::Utf8, true)]);
        let err = window_column(&texts, &["a".to_owned(), "b".to_owned()]).unwrap_err();
        assert!(err.contains("cannot tell"), "{err}");
    }

    #[test]
    fn partition_predicates_quote() {
        let partitions =
            BTreeSet::from([vec![("day".to_owned(), Some("2024-01-01".to_owned()))], vec![("day".to_owned(), None)]]);
        assert_eq!(partition_predicate(&partitions), "(\"day\" IS NULL) OR (\"day\" = '2024-01-01')");
    }
}
