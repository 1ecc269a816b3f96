//! A page's rows derived from its own table ([`Derive`]): SQL over the table as committed
//! (`now`) and at an earlier version (`before`), shaped as the page's columns.

use arrow::array::{ArrayRef, Int64Array, RecordBatch, new_null_array};
use deltalake::datafusion::prelude::SessionContext;

use crate::error::{EngineError, Result};
use crate::source::{Derive, RawChunk};
use crate::table::Table;

/// The rows `derive` gives over `table`, in the columns of `shape` (the page as the
/// extractor built it, without rows).
pub(super) async fn rows(table: &Table, shape: &RawChunk, derive: &Derive) -> Result<RawChunk> {
    let query_error = |e| EngineError::query(table.name.clone(), e);
    let context = SessionContext::new();
    let mut before = Table::open(&table.name, table.url.clone()).await?;
    before.load_version(derive.before_version).await?;
    before.register_store(&context.state())?;
    context.register_table("before", before.scan(None, None).await?).map_err(query_error)?;
    table.register_store(&context.state())?;
    context.register_table("now", table.scan(None, None).await?).map_err(query_error)?;
    let frame = context.sql(&derive.sql).await.map_err(query_error)?;
    let batches = frame.collect().await.map_err(query_error)?;
    let schema = shape.batch.schema();
    let mut shaped = Vec::with_capacity(batches.len());
    for batch in &batches {
        let columns = schema
            .fields()
            .iter()
            .map(|field| match batch.column_by_name(field.name()) {
                Some(column) => arrow::compute::cast(column, field.data_type())
                    .map_err(|e| EngineError::arrow(format!("`{}`: derived column `{}`", table.name, field.name()), e)),
                None => Ok(new_null_array(field.data_type(), batch.num_rows())),
            })
            .collect::<Result<Vec<ArrayRef>>>()?;
        shaped.push(
            RecordBatch::try_new(schema.clone(), columns)
                .map_err(|e| EngineError::arrow(format!("`{}`: derived rows", table.name), e))?,
        );
    }
    let batch = arrow::compute::concat_batches(&schema, &shaped)
        .map_err(|e| EngineError::arrow(format!("`{}`: derived rows", table.name), e))?;
    let rows = Int64Array::from_iter_values(1..=batch.num_rows() as i64);
    Ok(RawChunk { batch, rows, bad: Vec::new(), text: shape.text, raw_style: shape.raw_style })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::table::Commit;
    use arrow::array::{Array, StringArray};
    use arrow::datatypes::{DataType, Field, Schema};
    use std::sync::Arc;

    #[tokio::test]
    async fn derives_rows_from_the_table_then_and_now_in_the_page_columns() {
        let dir = tempfile::tempdir().unwrap();
        let url = url::Url::from_directory_path(dir.path()).unwrap();
        let mut table = Table::open("bronze.t", url).await.unwrap();
        let schema = Arc::new(Schema::new(vec![
            Field::new("id", DataType::Int64, true),
            Field::new("op", DataType::Utf8, true),
        ]));
        let batch = |ids: Vec<i64>| {
            RecordBatch::try_new(
                schema.clone(),
                vec![
                    Arc::new(Int64Array::from(ids.clone())) as ArrayRef,
                    Arc::new(StringArray::from(vec!["insert"; ids.len()])),
                ],
            )
            .unwrap()
        };
        for (version, ids) in [vec![1, 2, 3], vec![4]].into_iter().enumerate() {
            let mut writer = table.writer_factory(&[]).writer(schema.clone());
            writer.write(&batch(ids)).await.unwrap();
            let adds = writer.close().await.unwrap();
            table
                .commit(Commit::append(adds, Some(schema.clone()), "t", version as i64, Default::default()))
                .await
                .unwrap();
        }
        // The page: `id`, a text `op` and a column the SQL does not give.
        let shape_schema = Arc::new(Schema::new(vec![
            Field::new("op", DataType::Utf8, true),
            Field::new("id", DataType::Int32, true),
            Field::new("note", DataType::Utf8, true),
        ]));
        let shape = RawChunk {
            batch: RecordBatch::new_empty(shape_schema),
            rows: Int64Array::from(Vec::<i64>::new()),
            bad: Vec::new(),
            text: false,
            raw_style: crate::source::RawStyle::Json,
        };
        let derive = Derive {
            sql: "SELECT id, 'delete' AS op FROM now EXCEPT SELECT id, 'delete' AS op FROM before ORDER BY id".into(),
            before_version: 0,
        };
        let chunk = rows(&table, &shape, &derive).await.unwrap();
        assert_eq!(chunk.batch.num_rows(), 1);
        let ids = chunk.batch.column(1).as_any().downcast_ref::<arrow::array::Int32Array>().unwrap();
        assert_eq!(ids.value(0), 4);
        assert_eq!(chunk.batch.column(0).as_any().downcast_ref::<StringArray>().unwrap().value(0), "delete");
        assert!(chunk.batch.column(2).is_null(0));
        assert_eq!(chunk.rows.values(), &[1]);

        let bad = Derive { sql: "SELECT nope FROM now".into(), before_version: 0 };
        let error = rows(&table, &shape, &bad).await.unwrap_err().to_string();
        assert!(error.contains("bronze.t"), "{error}");
    }
}
