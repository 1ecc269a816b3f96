//! Values a change did not carry: a CDC change lists in `_unchanged_columns` the columns
//! PostgreSQL did not send (TOASTed values the update left alone). A `merge` or `scd2`
//! over such rows keeps, for each listed column, the value an earlier change of the key in
//! the same input gave, or else the table's current value: never the NULL the change holds.

use std::sync::Arc;

use arrow::array::{Array, ArrayRef, RecordBatch, StringArray, StringBuilder, UInt32Array};
use arrow::compute::{SortColumn, concat_batches, lexsort_to_indices, take};
use arrow::datatypes::SchemaRef;
use arrow::row::{RowConverter, SortField};
use deltalake::datafusion::datasource::MemTable;
use deltalake::datafusion::prelude::SessionContext;

use super::quote;
use super::write::Writer;
use crate::error::{EngineError, Result};

/// The column a change lists what it did not carry in, as a JSON array of names.
pub const UNCHANGED_COLUMNS: &str = "_unchanged_columns";

impl Writer<'_> {
    /// Registers the result as `__inlet_result`, its unchanged values filled in.
    pub(crate) async fn register_result(
        &self,
        context: &SessionContext,
        batches: Vec<RecordBatch>,
        schema: &SchemaRef,
        current_only: bool,
    ) -> Result<()> {
        let register = |batches: Vec<RecordBatch>| -> Result<()> {
            let result = MemTable::try_new(schema.clone(), vec![batches]).map_err(|e| self.sql_error(e))?;
            context.deregister_table("__inlet_result").map_err(|e| self.sql_error(e))?;
            context.register_table("__inlet_result", Arc::new(result)).map_err(|e| self.sql_error(e))?;
            Ok(())
        };
        if schema.index_of(UNCHANGED_COLUMNS).is_err() || batches.iter().all(|b| b.num_rows() == 0) {
            return register(batches);
        }
        let batch = concat_batches(schema, &batches).map_err(|e| EngineError::arrow("joining the result", e))?;
        let batch = self.fill_from_earlier(&batch)?;
        let unresolved = batch.column_by_name(UNCHANGED_COLUMNS).is_some_and(|c| c.null_count() < c.len());
        if !unresolved || !self.target.exists() {
            return register(vec![batch]);
        }
        // What is still missing comes from the table's current rows.
        register(vec![batch])?;
        let target = self.target.scan(None, None).await?;
        context.deregister_table("__inlet_current").map_err(|e| self.sql_error(e))?;
        context.register_table("__inlet_current", target).map_err(|e| self.sql_error(e))?;
        let existing = self.target.arrow_schema()?;
        let has = |name: &str| existing.as_ref().is_some_and(|s| s.index_of(name).is_ok());
        let keys = &self.config.keys;
        let columns: Vec<String> = schema
            .fields()
            .iter()
            .map(|field| {
                let name = field.name();
                let c = quote(name);
                if keys.contains(name) || name == UNCHANGED_COLUMNS || !has(name) {
                    format!("s.{c} AS {c}")
                } else {
                    let listed = serde_json::Value::String(name.clone()).to_string().replace('\'', "''");
                    format!(
                        "CASE WHEN strpos(coalesce(s.{u}, ''), '{listed}') > 0 THEN t.{c} ELSE s.{c} END AS {c}",
                        u = quote(UNCHANGED_COLUMNS)
                    )
                }
            })
            .collect();
        let on: Vec<String> = keys.iter().map(|k| format!("s.{k} = t.{k}", k = quote(k))).collect();
        let current = if current_only && has("_is_current") {
            "(SELECT * FROM __inlet_current WHERE _is_current)"
        } else {
            "__inlet_current"
        };
        let sql = format!(
            "SELECT {} FROM __inlet_result s LEFT JOIN {current} t ON {}",
            columns.join(", "),
            on.join(" AND ")
        );
        let filled = self.query(context, &sql).await?;
        let filled = self.checked(filled, schema)?;
        register(filled)
    }

    /// Fills each listed value from the latest earlier change of the key in `batch` that
    /// carried it (by `sequence_by`, else input order); what no earlier change carried stays
    /// listed.
    fn fill_from_earlier(&self, batch: &RecordBatch) -> Result<RecordBatch> {
        let schema = batch.schema();
        let rows = batch.num_rows();
        let key_columns: Vec<ArrayRef> =
            self.config.keys.iter().filter_map(|k| batch.column_by_name(k).cloned()).collect();
        let mut sort: Vec<SortColumn> =
            key_columns.iter().map(|c| SortColumn { values: c.clone(), options: None }).collect();
        if let Some(sequence) = self.config.sequence_by.as_ref().and_then(|s| batch.column_by_name(s)) {
            sort.push(SortColumn { values: sequence.clone(), options: None });
        }
        // The input order breaks ties (the sort is not stable by itself).
        sort.push(SortColumn { values: Arc::new(UInt32Array::from_iter_values(0..rows as u32)), options: None });
        let order = lexsort_to_indices(&sort, None).map_err(|e| EngineError::arrow("ordering changes", e))?;
        let converter = RowConverter::new(key_columns.iter().map(|c| SortField::new(c.data_type().clone())).collect())
            .map_err(|e| EngineError::arrow("comparing keys", e))?;
        let keys = converter.convert_columns(&key_columns).map_err(|e| EngineError::arrow("comparing keys", e))?;
        let Some(listed) =
            batch.column_by_name(UNCHANGED_COLUMNS).and_then(|c| c.as_any().downcast_ref::<StringArray>().cloned())
        else {
            return Ok(batch.clone());
        };
        // For each column, the row each row's value is taken from.
        let names: Vec<String> = schema.fields().iter().map(|f| f.name().clone()).collect();
        let mut sources: Vec<Vec<u32>> = names.iter().map(|_| (0..rows as u32).collect()).collect();
        let mut still: Vec<Option<String>> =
            (0..rows).map(|r| listed.is_valid(r).then(|| listed.value(r).to_owned())).collect();
        // The latest row of the key that carried each column.
        let mut carried: Vec<Option<u32>> = vec![None; names.len()];
        let mut previous: Option<u32> = None;
        for &row in order.values() {
            if previous.is_none_or(|p| keys.row(p as usize) != keys.row(row as usize)) {
                carried.iter_mut().for_each(|c| *c = None);
            }
            previous = Some(row);
            let missing: Vec<String> = still[row as usize]
                .as_deref()
                .and_then(|l| serde_json::from_str::<Vec<String>>(l).ok())
                .unwrap_or_default();
            let mut left = Vec::new();
            for (i, name) in names.iter().enumerate() {
                if missing.contains(name) {
                    match carried[i] {
                        Some(from) => sources[i][row as usize] = from,
                        None => left.push(name.clone()),
                    }
                } else {
                    carried[i] = Some(row);
                }
            }
            if !missing.is_empty() {
                still[row as usize] = (!left.is_empty()).then(|| serde_json::json!(left).to_string());
            }
        }
        let mut columns = Vec::with_capacity(names.len());
        for (i, name) in names.iter().enumerate() {
            if name == UNCHANGED_COLUMNS {
                let mut builder = StringBuilder::with_capacity(rows, 0);
                for value in &still {
                    builder.append_option(value.as_deref());
                }
                columns.push(Arc::new(builder.finish()) as ArrayRef);
                continue;
            }
            let indices = UInt32Array::from(sources[i].clone());
            columns.push(take(batch.column(i), &indices, None).map_err(|e| EngineError::arrow("filling values", e))?);
        }
        RecordBatch::try_new(schema, columns).map_err(|e| EngineError::arrow("filling values", e))
    }
}
