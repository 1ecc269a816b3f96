//! A derived table's inputs in its DataFusion session: each upstream table whole, or with
//! `incremental` only the files added since the version last read, or the rows its change
//! data feed says changed.

use std::collections::BTreeMap;
use std::sync::Arc;

use deltalake::datafusion::catalog::{MemorySchemaProvider, TableProvider};
use deltalake::datafusion::datasource::MemTable;
use deltalake::datafusion::error::DataFusionError;
use deltalake::datafusion::prelude::SessionContext;

use crate::config::{TableConfig, WriteMode};
use crate::error::{EngineError, Result};
use crate::table::Table;

use super::{CHANGE_TYPE, quote, table_name};

/// Registers every upstream table as `<layer>.<name>`; returns how many data files were
/// selected when reading incrementally.
pub(super) async fn register_upstream(
    context: &SessionContext,
    name: &str,
    tables: &BTreeMap<String, TableConfig>,
    upstream: &[Table],
    incremental_from: Option<&BTreeMap<String, i64>>,
) -> Result<usize> {
    let sql_error = |source: DataFusionError| EngineError::sql(name.to_owned(), source);
    let catalog = context
        .catalog("datafusion")
        .ok_or_else(|| EngineError::Internal("DataFusion has no default catalog".into()))?;
    let write = tables.get(name).map(|c| c.write).unwrap_or_default();
    let mut new_files = 0;
    for table in upstream {
        let table_ref = table_name(&table.name)?;
        if catalog.schema(&table_ref.layer).is_none() {
            catalog.register_schema(&table_ref.layer, Arc::new(MemorySchemaProvider::new())).map_err(sql_error)?;
        }
        table.register_store(&context.state())?;
        let since = incremental_from.and_then(|versions| versions.get(&table.name)).copied();
        let provider: Arc<dyn TableProvider> = match since {
            Some(since) => {
                let changes = crate::log::changes_since(table, since).await?;
                // Rows rewritten upstream: its change data feed, when whole, says which changed.
                // A snapshot must be read whole: the feed holds only what changed.
                let snapshot = tables.get(name).is_some_and(|c| c.write == WriteMode::Scd2 && c.source_is_snapshot);
                let feed = match (&changes, row_identity(tables.get(&table.name))) {
                    (Some(changes), Some(identity)) if changes.rewrites && !snapshot => {
                        match table.change_data(since, &context.state()).await? {
                            Some(feed) => Some(changed_rows(context, &table.name, feed, &identity).await?),
                            None => None,
                        }
                    }
                    _ => None,
                };
                if let Some(feed) = feed {
                    new_files += 1;
                    feed
                } else {
                    match changes {
                        Some(changes) if !changes.rewrites => {
                            new_files += changes.added.len();
                            if changes.added.is_empty() {
                                let full = table.scan(None, None).await?;
                                Arc::new(MemTable::try_new(full.schema(), vec![vec![]]).map_err(sql_error)?)
                            } else {
                                table.scan(Some(changes.added), None).await?
                            }
                        }
                        _ if write == WriteMode::Append => {
                            return Err(EngineError::Transform {
                                table: name.to_owned(),
                                message: format!(
                                    "upstream `{}` was rewritten (or its log expired) since version {since}: an incremental append cannot tell new rows from old; run it once with `incremental = false`",
                                    table.name
                                ),
                            });
                        }
                        // Merge and SCD2 are idempotent: re-reading everything is only slower.
                        _ => {
                            new_files += 1;
                            table.scan(None, None).await?
                        }
                    }
                }
            }
            None => {
                new_files += 1;
                table.scan(None, None).await?
            }
        };
        let schema = catalog
            .schema(&table_ref.layer)
            .ok_or_else(|| EngineError::Internal(format!("schema `{}` vanished", table_ref.layer)))?;
        schema.register_table(table_ref.name.clone(), provider).map_err(sql_error)?;
    }
    Ok(new_files)
}

/// What identifies a row of a derived table across versions, for reading its change data:
/// the keys of a merge table, the keys and `_valid_from` of an scd2 table.
pub(super) fn row_identity(config: Option<&TableConfig>) -> Option<Vec<String>> {
    let config = config?;
    match config.write {
        WriteMode::Merge if !config.keys.is_empty() => Some(config.keys.clone()),
        WriteMode::Scd2 if !config.keys.is_empty() => {
            Some(config.keys.iter().cloned().chain([super::scd2::VALID_FROM.to_owned()]).collect())
        }
        _ => None,
    }
}

/// The rows of an upstream table changed in its change data `feed`, as they are now: per
/// row (by `identity`) the latest insert or post-image, none for a row deleted last. The
/// table's own columns only, so the same SQL runs over it as over the whole table.
pub(super) async fn changed_rows(
    context: &SessionContext,
    table: &str,
    feed: Arc<dyn TableProvider>,
    identity: &[String],
) -> Result<Arc<dyn TableProvider>> {
    let sql_error = |source: DataFusionError| EngineError::sql(table.to_owned(), source);
    let feed_name = format!("__inlet_feed_{}", table.replace('.', "_"));
    context.register_table(feed_name.as_str(), feed).map_err(sql_error)?;
    let identity: Vec<String> = identity.iter().map(|c| quote(c)).collect();
    let sql = format!(
        "SELECT * EXCLUDE ({CHANGE_TYPE}, _commit_version, _commit_timestamp, __inlet_rn) FROM (SELECT *, ROW_NUMBER() OVER (PARTITION BY {} ORDER BY _commit_version DESC, CASE WHEN {CHANGE_TYPE} = 'delete' THEN 1 ELSE 0 END) AS __inlet_rn FROM {feed_name} WHERE {CHANGE_TYPE} IN ('insert', 'update_postimage', 'delete')) WHERE __inlet_rn = 1 AND {CHANGE_TYPE} <> 'delete'",
        identity.join(", ")
    );
    let frame = context.sql(&sql).await.map_err(sql_error)?;
    Ok(frame.into_view())
}
