//! Keeping a table healthy: `inlet optimize` and `inlet vacuum`.
//!
//! - **Optimize** bin-packs small files into files of the target size (streaming them,
//!   `super::compact`; Z-order and tables it cannot read go through delta-rs) in
//!   one commit whose files are `dataChange = false`: incremental readers, the file ledger and
//!   the sources' `txn` see no new rows. It is planned on a snapshot; a concurrent append
//!   commits beside it, while a commit that removed files it rewrote makes it plan again.
//! - **Vacuum** deletes the files that versions older than the retention removed (delta-rs'
//!   "lite" vacuum, from the log's tombstones). A file no commit ever added (a group staged
//!   by a run still in flight, or by one that died) is left alone unless `--full`, and then
//!   only when older than the retention and a week (even when forced: a run in flight, or
//!   the next run finishing its group, keeps its files). `_inlet/` and `_delta_log/` are never touched.
//!   (The files an optimize wrote before losing a commit race are such files too.)

use std::collections::{BTreeMap, HashMap};
use std::num::NonZeroU64;

use deltalake::DeltaTableError;
use deltalake::kernel::transaction::{CommitProperties, TransactionError};
use deltalake::operations::optimize::OptimizeType;
use deltalake::operations::vacuum::VacuumMode;
use deltalake::table::config::TablePropertiesExt;
use serde::Serialize;
use tracing::info;

use super::compact::Attempt;
use super::{Table, data_writer_properties};
use crate::error::{EngineError, Result};

/// A full vacuum deletes a file no commit added only once it is at least this old, whatever
/// the retention: a run's staged group is committed (by the run, or by the next one finishing
/// it) only within 6 days of staging (`ingest::commit::FINISH_WITHIN_MS`), so a vacuum racing
/// a run never takes files it is about to commit.
pub const UNCOMMITTED_FLOOR_HOURS: i64 = 7 * 24;

/// Times an optimize that lost a commit race plans again.
const OPTIMIZE_ATTEMPTS: u32 = 5;

/// What `inlet optimize` does.
#[derive(Debug, Clone, Default)]
pub struct OptimizeOptions {
    /// Files are packed up to this size (default: the table's `delta.targetFileSize`, else
    /// 100 MiB).
    pub target_file_size_bytes: Option<u64>,
    /// Z-order the rows by these columns instead of bin-packing.
    pub zorder_by: Vec<String>,
    /// Only the partitions this predicate on partition columns selects: comparisons
    /// (`=`, `!=`, `<`, `<=`, `>`, `>=`) and `IN` / `NOT IN` lists joined by `AND`.
    pub partition_filter: Option<String>,
}

/// What an optimize did.
#[derive(Debug, Clone, Serialize)]
pub struct OptimizeReport {
    pub table: String,
    /// The version it committed; `None` when there was nothing to compact.
    pub version: Option<i64>,
    pub files_removed: u64,
    pub files_added: u64,
    pub bytes_removed: u64,
    pub bytes_added: u64,
}

/// What `inlet vacuum` does.
#[derive(Debug, Clone, Default)]
pub struct VacuumOptions {
    /// Files removed longer ago than this are deleted (default: the table's
    /// `delta.deletedFileRetentionDuration`, 168 hours unless set).
    pub retain_hours: Option<u64>,
    /// List what would be deleted; delete nothing.
    pub dry_run: bool,
    /// Allow a retention under the table's `delta.deletedFileRetentionDuration`.
    pub force: bool,
    /// Also delete files no commit ever added, older than the retention.
    pub full: bool,
}

/// What a vacuum deleted (or would).
#[derive(Debug, Clone, Serialize)]
pub struct VacuumReport {
    pub table: String,
    pub dry_run: bool,
    pub files: Vec<String>,
}

impl Table {
    /// Compacts (or Z-orders) the table's files in one commit that changes no row, carrying
    /// `metadata` in its `commitInfo`. Plans again, a few times, after losing a commit race.
    pub async fn optimize(
        &mut self,
        options: &OptimizeOptions,
        metadata: HashMap<String, serde_json::Value>,
    ) -> Result<OptimizeReport> {
        let maintenance_error = |message: String| EngineError::Maintenance { table: self.name.clone(), message };
        if !self.exists() {
            return Err(maintenance_error(format!("there is no table at {}", self.url)));
        }
        let target = match options.target_file_size_bytes {
            Some(bytes) => Some(
                NonZeroU64::new(bytes)
                    .ok_or_else(|| maintenance_error("--target-file-size-bytes must be above 0".into()))?,
            ),
            None => None,
        };
        let optimize_type = || {
            if options.zorder_by.is_empty() {
                OptimizeType::Compact
            } else {
                OptimizeType::ZOrder(options.zorder_by.clone())
            }
        };
        let partition_columns = self.partition_columns().unwrap_or_default();
        let filters = match &options.partition_filter {
            Some(text) => {
                partition_filters(text, &partition_columns).map_err(|m| maintenance_error(format!("--where: {m}")))?
            }
            None => Vec::new(),
        };
        let literals: Vec<deltalake::FilterLiteral<'_>> = filters
            .iter()
            .map(|(column, op, values)| {
                let value = match op {
                    deltalake::FilterOp::In | deltalake::FilterOp::NotIn => {
                        deltalake::FilterValue::Set(values.iter().map(String::as_str).collect())
                    }
                    _ => deltalake::FilterValue::Scalar(values[0].as_str()),
                };
                (column.as_str(), *op, value)
            })
            .collect();
        let target_bytes = match target {
            Some(target) => target.get(),
            None => self.target_file_size(),
        };
        let mut streaming = options.zorder_by.is_empty();
        let mut attempt = 0;
        loop {
            attempt += 1;
            let lost = if streaming {
                match self
                    .compact_once(target_bytes, &literals, options.partition_filter.clone(), metadata.clone())
                    .await?
                {
                    Attempt::Done(report) => {
                        info!(table = %self.name, removed = report.files_removed, added = report.files_added, version = ?report.version, "optimized");
                        return Ok(report);
                    }
                    Attempt::Lost(why) => why,
                    Attempt::Unsupported(why) => {
                        info!(table = %self.name, why, "compacting through delta-rs' optimize");
                        streaming = false;
                        attempt -= 1;
                        continue;
                    }
                }
            } else {
                let mut builder = self
                    .delta
                    .clone()
                    .optimize()
                    .with_filters(&literals)
                    .with_type(optimize_type())
                    .with_writer_properties(data_writer_properties())
                    .with_commit_properties(CommitProperties::default().with_metadata(metadata.clone()));
                if let Some(target) = target {
                    builder = builder.with_target_size(target);
                }
                match builder.await {
                    Ok((delta, metrics)) => {
                        let committed = metrics.num_files_removed > 0;
                        self.delta = delta;
                        let report = OptimizeReport {
                            table: self.name.clone(),
                            version: committed.then(|| self.version()).flatten(),
                            files_removed: metrics.num_files_removed,
                            files_added: metrics.num_files_added,
                            bytes_removed: metrics.files_removed.total_size as u64,
                            bytes_added: metrics.files_added.total_size as u64,
                        };
                        info!(table = %self.name, removed = report.files_removed, added = report.files_added, version = ?report.version, "optimized");
                        return Ok(report);
                    }
                    Err(DeltaTableError::Transaction {
                        source: source @ (TransactionError::CommitConflict(_) | TransactionError::MaxCommitAttempts(_)),
                    }) => source.to_string(),
                    Err(e) => return Err(self.error(e)),
                }
            };
            if attempt >= OPTIMIZE_ATTEMPTS {
                return Err(EngineError::Conflict {
                    table: self.name.clone(),
                    message: format!("optimize lost {attempt} commit races in a row; the last: {lost}"),
                });
            }
            info!(table = %self.name, attempt, why = %lost, "optimize lost a commit race; planning again");
            self.delta.update_incremental(None).await.map_err(|e| self.error(e))?;
        }
    }

    /// Sets the Delta properties of `wanted` whose values differ from the table's, in one
    /// commit of their own carrying `metadata`; returns the keys it set. A table that does
    /// not exist yet is left alone (the run that creates it sets them after).
    pub async fn set_properties(
        &mut self,
        wanted: &BTreeMap<String, String>,
        metadata: HashMap<String, serde_json::Value>,
    ) -> Result<Vec<String>> {
        if !self.exists() || wanted.is_empty() {
            return Ok(Vec::new());
        }
        let state = self.delta.snapshot().map_err(|e| self.error(e))?;
        let current = state.metadata().configuration();
        let changed: HashMap<String, String> = wanted
            .iter()
            .filter(|(key, value)| current.get(*key) != Some(*value))
            .map(|(key, value)| (key.clone(), value.clone()))
            .collect();
        if changed.is_empty() {
            return Ok(Vec::new());
        }
        let mut keys: Vec<String> = changed.keys().cloned().collect();
        keys.sort();
        self.delta = self
            .delta
            .clone()
            .set_tbl_properties()
            .with_properties(changed)
            // The log is cleaned by `upkeep`, which keeps what lagging readers need.
            .with_commit_properties(
                CommitProperties::default().with_metadata(metadata).with_cleanup_expired_logs(Some(false)),
            )
            .await
            .map_err(|e| self.error(e))?;
        info!(table = %self.name, keys = ?keys, "table properties set");
        Ok(keys)
    }

    /// Deletes the files versions older than the retention removed (or lists them), never a
    /// file the current version or a retained one needs. With `full`, a second pass deletes
    /// files no commit added, once older than both the retention and [`UNCOMMITTED_FLOOR_HOURS`].
    pub async fn vacuum(
        &mut self,
        options: &VacuumOptions,
        metadata: HashMap<String, serde_json::Value>,
    ) -> Result<VacuumReport> {
        if !self.exists() {
            return Err(EngineError::Maintenance {
                table: self.name.clone(),
                message: format!("there is no table at {}", self.url),
            });
        }
        // Beyond any table's age: nothing is old enough.
        let retain_hours =
            options.retain_hours.map(|hours| i64::try_from(hours).unwrap_or(i64::MAX).min(i64::MAX / 3_600_000_000));
        let mut files = self.vacuum_pass(VacuumMode::Lite, retain_hours, options, metadata.clone()).await?;
        if options.full {
            // The retention given, else the table's, but never under the floor.
            let retention = retain_hours.unwrap_or_else(|| {
                self.delta.snapshot().map_or(UNCOMMITTED_FLOOR_HOURS, |state| {
                    (state.table_config().deleted_file_retention_duration().as_secs() / 3600) as i64
                })
            });
            let floor = retention.max(UNCOMMITTED_FLOOR_HOURS);
            let listed: std::collections::HashSet<String> = files.iter().cloned().collect();
            let more = self.vacuum_pass(VacuumMode::Full, Some(floor), options, metadata).await?;
            files.extend(more.into_iter().filter(|file| !listed.contains(file)));
        }
        info!(table = %self.name, dry_run = options.dry_run, files = files.len(), "vacuumed");
        Ok(VacuumReport { table: self.name.clone(), dry_run: options.dry_run, files })
    }

    async fn vacuum_pass(
        &mut self,
        mode: VacuumMode,
        retain_hours: Option<i64>,
        options: &VacuumOptions,
        metadata: HashMap<String, serde_json::Value>,
    ) -> Result<Vec<String>> {
        let mut builder = self
            .delta
            .clone()
            .vacuum()
            .with_dry_run(options.dry_run)
            .with_enforce_retention_duration(!options.force)
            .with_mode(mode)
            .with_commit_properties(CommitProperties::default().with_metadata(metadata));
        if let Some(hours) = retain_hours {
            builder = builder.with_retention_period(chrono::Duration::hours(hours));
        }
        let (delta, metrics) = builder.await.map_err(|e| match e {
            // delta-rs' own words name both retentions.
            DeltaTableError::GenericError { source } if source.to_string().contains("Invalid retention period") => {
                EngineError::Maintenance {
                    table: self.name.clone(),
                    message: format!(
                        "{source}: versions within the table's `delta.deletedFileRetentionDuration` could lose files; pass --force to vacuum anyway"
                    ),
                }
            }
            other => self.error(other),
        })?;
        self.delta = delta;
        Ok(metrics.files_deleted)
    }
}

/// Parses `--where` into partition filters: `column op value` comparisons and `IN` lists,
/// joined by `AND`, on partition columns only (values as partition values are written).
fn partition_filters(
    text: &str,
    partition_columns: &[String],
) -> std::result::Result<Vec<(String, deltalake::FilterOp, Vec<String>)>, String> {
    use deltalake::FilterOp;
    use deltalake::datafusion::sql::sqlparser::ast::{BinaryOperator, Expr, UnaryOperator, Value};
    use deltalake::datafusion::sql::sqlparser::dialect::GenericDialect;
    use deltalake::datafusion::sql::sqlparser::parser::Parser;

    let expr = Parser::new(&GenericDialect {})
        .try_with_sql(text)
        .and_then(|mut parser| parser.parse_expr())
        .map_err(|e| format!("`{text}` is not a predicate: {e}"))?;
    let column = |expr: &Expr| -> std::result::Result<String, String> {
        let name = match expr {
            Expr::Identifier(ident) => ident.value.clone(),
            other => return Err(format!("`{other}` is not a column name")),
        };
        if partition_columns.contains(&name) {
            Ok(name)
        } else if partition_columns.is_empty() {
            Err(format!("the table has no partition columns, so `{name}` cannot select files to compact"))
        } else {
            Err(format!("`{name}` is not a partition column (those are {})", partition_columns.join(", ")))
        }
    };
    let value = |expr: &Expr| -> std::result::Result<String, String> {
        match expr {
            Expr::Value(value) => match &value.value {
                Value::SingleQuotedString(s) | Value::DoubleQuotedString(s) => Ok(s.clone()),
                Value::Number(n, _) => Ok(n.clone()),
                Value::Boolean(b) => Ok(b.to_string()),
                other => Err(format!("`{other}` is not a partition value")),
            },
            Expr::UnaryOp { op: UnaryOperator::Minus, expr } => value_of_negative(expr),
            other => Err(format!("`{other}` is not a literal")),
        }
    };
    fn value_of_negative(expr: &Expr) -> std::result::Result<String, String> {
        match expr {
            Expr::Value(value) => match &value.value {
                Value::Number(n, _) => Ok(format!("-{n}")),
                other => Err(format!("`-{other}` is not a partition value")),
            },
            other => Err(format!("`-{other}` is not a literal")),
        }
    }
    let mut conjuncts = vec![expr];
    let mut filters = Vec::new();
    while let Some(expr) = conjuncts.pop() {
        match expr {
            Expr::BinaryOp { left, op: BinaryOperator::And, right } => {
                conjuncts.push(*right);
                conjuncts.push(*left);
            }
            Expr::Nested(inner) => conjuncts.push(*inner),
            Expr::BinaryOp { left, op, right } => {
                let op = match op {
                    BinaryOperator::Eq => FilterOp::Eq,
                    BinaryOperator::NotEq => FilterOp::Ne,
                    BinaryOperator::Lt => FilterOp::Lt,
                    BinaryOperator::LtEq => FilterOp::Le,
                    BinaryOperator::Gt => FilterOp::Gt,
                    BinaryOperator::GtEq => FilterOp::Ge,
                    other => return Err(format!("`{other}` is not supported (use =, !=, <, <=, >, >=, IN, AND)")),
                };
                filters.push((column(&left)?, op, vec![value(&right)?]));
            }
            Expr::InList { expr, list, negated } => {
                let values = list.iter().map(&value).collect::<std::result::Result<Vec<_>, _>>()?;
                filters.push((column(&expr)?, if negated { FilterOp::NotIn } else { FilterOp::In }, values));
            }
            other => return Err(format!("`{other}` is not supported (use =, !=, <, <=, >, >=, IN, AND)")),
        }
    }
    Ok(filters)
}

#[cfg(test)]
mod tests {
    use deltalake::FilterOp;

    use super::partition_filters;

    #[test]
    fn a_where_becomes_partition_filters_on_partition_columns_only() {
        let columns = vec!["day".to_owned(), "region".to_owned()];
        let filters = partition_filters("day >= '2026-01-01' AND (region IN ('eu', 'us'))", &columns).unwrap();
        assert_eq!(
            filters,
            vec![
                ("day".to_owned(), FilterOp::Ge, vec!["2026-01-01".to_owned()]),
                ("region".to_owned(), FilterOp::In, vec!["eu".to_owned(), "us".to_owned()]),
            ]
        );
        assert_eq!(partition_filters("day != -3", &columns).unwrap()[0].2, vec!["-3".to_owned()]);
        let not_partition = partition_filters("amount > 3", &columns).unwrap_err();
        assert!(not_partition.contains("`amount` is not a partition column"), "{not_partition}");
        assert!(partition_filters("day = '1' OR day = '2'", &columns).unwrap_err().contains("OR"));
        assert!(partition_filters("day = ", &columns).unwrap_err().contains("not a predicate"));
        assert!(partition_filters("day = '1'", &[]).unwrap_err().contains("no partition columns"));
    }
}
