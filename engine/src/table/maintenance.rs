//! Keeping a table healthy: `inlet optimize` and `inlet vacuum`, through delta-rs.
//!
//! - **Optimize** bin-packs small files into files of the target size (or Z-orders them) in
//!   one commit whose files are `dataChange = false`: incremental readers, the file ledger and
//!   the sources' `txn` see no new rows. It is planned on a snapshot; a concurrent append
//!   commits beside it, while a commit that removed files it rewrote makes it plan again.
//! - **Vacuum** deletes the files that versions older than the retention removed (delta-rs'
//!   "lite" vacuum, from the log's tombstones). A file no commit ever added (a group staged
//!   by a run still in flight, or by one that died) is left alone unless `--full`, and then
//!   only when older than the retention. `_inlet/` and `_delta_log/` are never touched.
//!   (The files an optimize wrote before losing a commit race are such files too.)

use std::collections::HashMap;
use std::num::NonZeroU64;

use deltalake::DeltaTableError;
use deltalake::kernel::transaction::CommitProperties;
use deltalake::operations::optimize::OptimizeType;
use deltalake::operations::vacuum::VacuumMode;
use serde::Serialize;
use tracing::info;

use super::{Table, data_writer_properties};
use crate::error::{EngineError, Result};

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
        let mut attempt = 0;
        loop {
            attempt += 1;
            let mut builder = self
                .delta
                .clone()
                .optimize()
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
                Err(DeltaTableError::Transaction { source }) if attempt < OPTIMIZE_ATTEMPTS => {
                    info!(table = %self.name, attempt, error = %source, "optimize lost a commit race; planning again");
                    self.delta.update_incremental(None).await.map_err(|e| self.error(e))?;
                }
                Err(e) => return Err(self.error(e)),
            }
        }
    }

    /// Deletes the files versions older than the retention removed (or lists them), never a
    /// file the current version or a retained one needs.
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
        let mut builder = self
            .delta
            .clone()
            .vacuum()
            .with_dry_run(options.dry_run)
            .with_enforce_retention_duration(!options.force)
            .with_mode(if options.full { VacuumMode::Full } else { VacuumMode::Lite })
            .with_commit_properties(CommitProperties::default().with_metadata(metadata));
        if let Some(hours) = options.retain_hours {
            // Beyond any table's age: nothing is old enough.
            let hours = i64::try_from(hours).unwrap_or(i64::MAX).min(i64::MAX / 3_600_000_000);
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
        info!(table = %self.name, dry_run = metrics.dry_run, files = metrics.files_deleted.len(), "vacuumed");
        Ok(VacuumReport { table: self.name.clone(), dry_run: metrics.dry_run, files: metrics.files_deleted })
    }
}
