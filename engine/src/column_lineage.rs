//! Which upstream columns a derived table's columns are, where DataFusion's plan of its
//! query says so directly: a column passed through (renamed or not) projections, filters,
//! sorts, limits, joins, unions, window inputs and the group keys of aggregates. A computed
//! column has no entry. Read-only: the plan is made over empty tables of the upstream
//! tables' schemas, so no data is read.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use deltalake::datafusion::datasource::MemTable;
use deltalake::datafusion::logical_expr::{Distinct, Expr, JoinType, LogicalPlan};
use deltalake::datafusion::prelude::SessionContext;
use url::Url;

use crate::error::{EngineError, Result};

/// Output column -> the `(table, column)`s it is taken from.
pub type ColumnLineage = BTreeMap<String, Vec<(String, String)>>;

/// The column lineage of `sql` over the lake's tables.
pub async fn column_lineage(lake: &Url, sql: &str) -> Result<ColumnLineage> {
    let query_error = |source| EngineError::query("column lineage".to_owned(), source);
    let names = crate::dag::references(sql)
        .map_err(|message| EngineError::Config { path: std::path::PathBuf::from("query"), message })?;
    let context = SessionContext::new();
    for name in names {
        let table = crate::query::open(lake, &name).await?;
        let Some(schema) = table.arrow_schema()? else {
            return Err(EngineError::Internal(format!("table `{name}` does not exist yet")));
        };
        let empty = MemTable::try_new(schema, vec![vec![]]).map_err(query_error)?;
        crate::query::register(&context, &name, Arc::new(empty))?;
    }
    let plan = context.sql(sql).await.map_err(query_error)?.into_unoptimized_plan();
    let mut out = ColumnLineage::new();
    for (index, field) in plan.schema().fields().iter().enumerate() {
        let mut sources = BTreeSet::new();
        if trace(&plan, index, &mut sources) && !sources.is_empty() {
            out.insert(field.name().clone(), sources.into_iter().collect());
        }
    }
    Ok(out)
}

/// The table columns output column `index` of `plan` is taken from, into `found`; false
/// when it is computed (or the plan is not one followed).
fn trace(plan: &LogicalPlan, index: usize, found: &mut BTreeSet<(String, String)>) -> bool {
    match plan {
        LogicalPlan::Projection(projection) => match projection.expr.get(index).map(unalias) {
            Some(Expr::Column(column)) => match projection.input.schema().index_of_column(column) {
                Ok(at) => trace(&projection.input, at, found),
                Err(_) => false,
            },
            _ => false,
        },
        LogicalPlan::Filter(filter) => trace(&filter.input, index, found),
        LogicalPlan::Sort(sort) => trace(&sort.input, index, found),
        LogicalPlan::Limit(limit) => trace(&limit.input, index, found),
        LogicalPlan::SubqueryAlias(alias) => trace(&alias.input, index, found),
        LogicalPlan::Repartition(repartition) => trace(&repartition.input, index, found),
        LogicalPlan::Distinct(Distinct::All(input)) => trace(input, index, found),
        LogicalPlan::Window(window) if index < window.input.schema().fields().len() => {
            trace(&window.input, index, found)
        }
        LogicalPlan::Aggregate(aggregate) => match aggregate.group_expr.get(index).map(unalias) {
            Some(Expr::Column(column)) => match aggregate.input.schema().index_of_column(column) {
                Ok(at) => trace(&aggregate.input, at, found),
                Err(_) => false,
            },
            _ => false,
        },
        LogicalPlan::Join(join) => {
            let left = join.left.schema().fields().len();
            match join.join_type {
                JoinType::LeftSemi | JoinType::LeftAnti | JoinType::LeftMark => trace(&join.left, index, found),
                JoinType::RightSemi | JoinType::RightAnti | JoinType::RightMark => trace(&join.right, index, found),
                _ if index < left => trace(&join.left, index, found),
                _ => trace(&join.right, index - left, found),
            }
        }
        LogicalPlan::Union(union) => union.inputs.iter().all(|input| trace(input, index, found)),
        LogicalPlan::TableScan(scan) => {
            let Some(field) = scan.projected_schema.fields().get(index) else { return false };
            // `layer.name`, however the query qualified it.
            let table = match scan.table_name.schema() {
                Some(layer) => format!("{layer}.{}", scan.table_name.table()),
                None => scan.table_name.table().to_owned(),
            };
            found.insert((table, field.name().clone()));
            true
        }
        _ => false,
    }
}

fn unalias(expr: &Expr) -> &Expr {
    match expr {
        Expr::Alias(alias) => unalias(&alias.expr),
        other => other,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::table::{Commit, Table};
    use arrow::array::{Int64Array, RecordBatch, StringArray};
    use arrow::datatypes::{DataType, Field, Schema};

    async fn table(lake: &Url, name: &str, columns: &[&str]) {
        let parsed = crate::config::TableName::parse(name).unwrap();
        let mut table = Table::open(name, crate::table::table_url(lake, &parsed).unwrap()).await.unwrap();
        let fields: Vec<Field> = columns
            .iter()
            .map(|c| Field::new(*c, if c.ends_with("id") { DataType::Int64 } else { DataType::Utf8 }, true))
            .collect();
        let schema = Arc::new(Schema::new(fields));
        let arrays: Vec<arrow::array::ArrayRef> = schema
            .fields()
            .iter()
            .map(|f| -> arrow::array::ArrayRef {
                if f.data_type() == &DataType::Int64 {
                    Arc::new(Int64Array::from(vec![1]))
                } else {
                    Arc::new(StringArray::from(vec!["x"]))
                }
            })
            .collect();
        let batch = RecordBatch::try_new(schema.clone(), arrays).unwrap();
        let mut writer = table.writer_factory(&[]).writer(schema.clone());
        writer.write(&batch).await.unwrap();
        let adds = writer.close().await.unwrap();
        table.commit(Commit::append(adds, Some(schema), "test", 0, std::collections::HashMap::new())).await.unwrap();
    }

    #[tokio::test]
    async fn passed_through_columns_name_their_upstream_columns() {
        let dir = tempfile::tempdir().unwrap();
        let lake = Url::from_directory_path(dir.path()).unwrap();
        table(&lake, "bronze.orders", &["order_id", "customer_id", "status"]).await;
        table(&lake, "bronze.customers", &["customer_id", "name"]).await;
        let sql = "SELECT o.order_id AS id, c.name, upper(o.status) AS status, o.customer_id \
                   FROM bronze.orders o JOIN bronze.customers c ON o.customer_id = c.customer_id WHERE o.status <> 'x'";
        let lineage = column_lineage(&lake, sql).await.unwrap();
        assert_eq!(lineage["id"], vec![("bronze.orders".to_owned(), "order_id".to_owned())]);
        assert_eq!(lineage["name"], vec![("bronze.customers".to_owned(), "name".to_owned())]);
        assert_eq!(lineage["customer_id"], vec![("bronze.orders".to_owned(), "customer_id".to_owned())]);
        assert!(!lineage.contains_key("status"), "computed: {lineage:?}");
        let grouped =
            column_lineage(&lake, "SELECT status, count(*) AS n FROM bronze.orders GROUP BY status").await.unwrap();
        assert_eq!(grouped.keys().collect::<Vec<_>>(), vec!["status"]);
    }
}
