//! Ad-hoc SQL over the lake, optionally as of an earlier version or time (`inlet query`).
//!
//! The tables a query names (`<layer>.<name>`, quarantine tables, and `_inlet.runs`, the run
//! history) are opened at the version asked for and registered with DataFusion; nothing is
//! written.

use std::sync::Arc;

use arrow::record_batch::RecordBatch;
use deltalake::datafusion::catalog::MemorySchemaProvider;
use deltalake::datafusion::prelude::SessionContext;
use url::Url;

use crate::config::TableName;
use crate::error::{EngineError, Result};
use crate::table::{Table, table_url};

/// Which version of the tables a query reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AsOf {
    Latest,
    /// This version of every table the query names.
    Version(i64),
    /// The latest version of each table committed at or before this time.
    Time(chrono::DateTime<chrono::Utc>),
}

impl AsOf {
    /// `--as-of`: a version number or an RFC 3339 time (`2024-05-01T12:00:00Z`, or a date).
    pub fn parse(text: &str) -> std::result::Result<AsOf, String> {
        if let Ok(version) = text.parse::<i64>() {
            return if version >= 0 { Ok(AsOf::Version(version)) } else { Err("a version is 0 or more".to_owned()) };
        }
        if let Ok(at) = chrono::DateTime::parse_from_rfc3339(text) {
            return Ok(AsOf::Time(at.with_timezone(&chrono::Utc)));
        }
        if let Ok(day) = chrono::NaiveDate::parse_from_str(text, "%Y-%m-%d")
            && let Some(start) = day.and_hms_opt(0, 0, 0)
        {
            return Ok(AsOf::Time(start.and_utc()));
        }
        Err(format!("`{text}` is neither a version number nor an RFC 3339 time (e.g. 2024-05-01T12:00:00Z)"))
    }
}

/// Opens `<layer>.<name>` (or `_inlet.runs`) under `lake`.
pub async fn open(lake: &Url, name: &str) -> Result<Table> {
    if name == crate::audit::RUNS_TABLE {
        let url = lake
            .join(crate::audit::RUNS_PATH)
            .map_err(|e| EngineError::Internal(format!("joining `{lake}` and the run history: {e}")))?;
        return Table::open(name, url).await;
    }
    let base = name.strip_suffix(crate::config::QUARANTINE_SUFFIX).unwrap_or(name);
    let parsed = TableName::parse(base).map(|t| if base == name { t } else { t.quarantine() });
    let parsed = parsed.ok_or_else(|| EngineError::Config {
        path: std::path::PathBuf::from(lake.path()),
        message: format!("`{name}` is not a table name: `<layer>.<name>` (or `_inlet.runs`)"),
    })?;
    Table::open(name, table_url(lake, &parsed)?).await
}

/// Registers `provider` as `<layer>.<name>` (its layer a schema of the default catalog).
pub(crate) fn register(
    context: &SessionContext,
    name: &str,
    provider: Arc<dyn deltalake::datafusion::catalog::TableProvider>,
) -> Result<()> {
    let query_error = |source| EngineError::query("query".to_owned(), source);
    let catalog = context
        .catalog("datafusion")
        .ok_or_else(|| EngineError::Internal("DataFusion has no default catalog".into()))?;
    let (layer, short) = name.split_once('.').unwrap_or(("", name));
    if catalog.schema(layer).is_none() {
        catalog.register_schema(layer, Arc::new(MemorySchemaProvider::new())).map_err(query_error)?;
    }
    let schema = catalog.schema(layer).ok_or_else(|| EngineError::Internal(format!("schema `{layer}` vanished")))?;
    schema.register_table(short.to_owned(), provider).map_err(query_error)?;
    Ok(())
}

/// Runs `sql` over the lake's tables as of `as_of`: the result's columns and rows.
pub async fn run(lake: &Url, sql: &str, as_of: AsOf) -> Result<(arrow::datatypes::SchemaRef, Vec<RecordBatch>)> {
    let query_error = |source| EngineError::query("query".to_owned(), source);
    let names = crate::dag::references(sql)
        .map_err(|message| EngineError::Config { path: std::path::PathBuf::from("query"), message })?;
    let context = SessionContext::new();
    let queried: Vec<String> = names.to_vec();
    for name in names {
        let mut table = open(lake, &name).await?;
        if !table.exists() {
            return Err(EngineError::Config {
                path: std::path::PathBuf::from(lake.path()),
                message: format!("table `{name}` does not exist in {lake}"),
            });
        }
        match as_of {
            AsOf::Latest => {}
            AsOf::Version(version) => {
                if table.version().is_some_and(|latest| version > latest) {
                    return Err(EngineError::Config {
                        path: std::path::PathBuf::from(lake.path()),
                        message: format!(
                            "table `{name}` has no version {version} (latest: {}); a version applies to every table the query names, a time (`--as-of 2024-05-01T12:00:00Z`) to each its own",
                            table.version().unwrap_or_default()
                        ),
                    });
                }
                table.load_version(version).await?
            }
            AsOf::Time(at) => table.load_at(at).await?,
        }
        table.register_store(&context.state())?;
        register(&context, &name, table.scan(None, None).await?)?;
    }
    let frame = context.sql(sql).await.map_err(query_error)?;
    let schema = Arc::new(frame.schema().as_arrow().clone());
    let batches = frame.collect().await.map_err(|e| {
        // A file of an older version that is gone was vacuumed: that version cannot be read.
        if as_of != AsOf::Latest
            && crate::error::storage_failure(&e) == Some(crate::error::Lasting::Permanent)
            && e.to_string().contains("not found")
        {
            EngineError::TimeTravel {
                table: queried.join("`, `"),
                message: format!(
                    "{e}: a data file of that version is gone; VACUUM deletes the files versions older than the table's retention (`delta.deletedFileRetentionDuration`) removed, so those versions can no longer be read"
                ),
            }
        } else {
            query_error(e)
        }
    })?;
    Ok((schema, batches))
}

/// `sql` over one table already opened at the version to read, named `name` in it: the
/// table's log is not loaded a second time.
pub async fn run_on(table: &Table, name: &str, sql: &str) -> Result<(arrow::datatypes::SchemaRef, Vec<RecordBatch>)> {
    let query_error = |source| EngineError::query("query".to_owned(), source);
    let context = SessionContext::new();
    table.register_store(&context.state())?;
    register(&context, name, table.scan(None, None).await?)?;
    let frame = context.sql(sql).await.map_err(query_error)?;
    let schema = Arc::new(frame.schema().as_arrow().clone());
    let batches = frame.collect().await.map_err(query_error)?;
    Ok((schema, batches))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn as_of_is_a_version_or_a_time() {
        assert_eq!(AsOf::parse("3"), Ok(AsOf::Version(3)));
        assert!(matches!(AsOf::parse("2024-05-01T12:00:00Z"), Ok(AsOf::Time(_))));
        assert!(matches!(AsOf::parse("2024-05-01"), Ok(AsOf::Time(_))));
        assert!(AsOf::parse("-1").is_err());
        assert!(AsOf::parse("yesterday").unwrap_err().contains("RFC 3339"));
    }
}
