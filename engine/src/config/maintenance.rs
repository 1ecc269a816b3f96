//! `[pipeline.maintenance]`: how the pipeline's tables are kept healthy.
//!
//! - The log policy (`checkpoint_interval`, `log_retention_hours`,
//!   `deleted_file_retention_hours`) becomes the tables' own Delta properties, so every
//!   writer and reader (Spark, Trino, delta-rs) follows the same rules: a checkpoint every
//!   N commits, commit files kept that long once a checkpoint covers them, removed data
//!   files kept that long for time travel before a vacuum may delete them. Unset keys leave
//!   a table's properties as they are (Delta's defaults: 100 commits, 720 hours, 168 hours).
//! - `inlet serve` optimizes and vacuums every table on `optimize_schedule` and
//!   `vacuum_schedule`, and compacts a table as soon as a run leaves it with more than
//!   `max_small_files` files under `small_file_size_bytes`.

use std::collections::BTreeMap;

use serde::Deserialize;
use toml::Spanned;

/// `[pipeline.maintenance]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MaintenanceSection {
    /// Commits between checkpoints (`delta.checkpointInterval`).
    pub checkpoint_interval: Option<u64>,
    /// Commit files older than this, below a checkpoint, are deleted after a commit
    /// (`delta.logRetentionDuration`).
    pub log_retention_hours: Option<u64>,
    /// Files a commit removed stay this long for time travel (`delta.deletedFileRetentionDuration`):
    /// a vacuum's default retention.
    pub deleted_file_retention_hours: Option<u64>,
    /// `inlet serve`: cron expression (UTC) of an optimize of every table.
    pub optimize_schedule: Option<Spanned<String>>,
    /// `inlet serve`: cron expression (UTC) of a vacuum of every table.
    pub vacuum_schedule: Option<Spanned<String>>,
    /// `inlet serve`: a table a run leaves with more small files than this is compacted
    /// right after the run. Unset: no auto-compaction.
    pub max_small_files: Option<usize>,
    /// What counts as a small file.
    #[serde(default = "default_small_file_size_bytes")]
    pub small_file_size_bytes: u64,
}

impl Default for MaintenanceSection {
    fn default() -> Self {
        MaintenanceSection {
            checkpoint_interval: None,
            log_retention_hours: None,
            deleted_file_retention_hours: None,
            optimize_schedule: None,
            vacuum_schedule: None,
            max_small_files: None,
            small_file_size_bytes: default_small_file_size_bytes(),
        }
    }
}

/// The longest retention accepted, in hours (100 years).
const MAX_RETENTION_HOURS: u64 = 100 * 365 * 24;

fn default_small_file_size_bytes() -> u64 {
    16 * 1024 * 1024
}

impl MaintenanceSection {
    /// The Delta table properties the section sets, by key, in the form Spark and Trino
    /// parse (`interval 720 hours`).
    pub fn table_properties(&self) -> BTreeMap<String, String> {
        let mut properties = BTreeMap::new();
        if let Some(interval) = self.checkpoint_interval {
            properties.insert("delta.checkpointInterval".to_owned(), interval.to_string());
        }
        if let Some(hours) = self.log_retention_hours {
            properties.insert("delta.logRetentionDuration".to_owned(), format!("interval {hours} hours"));
        }
        if let Some(hours) = self.deleted_file_retention_hours {
            properties.insert("delta.deletedFileRetentionDuration".to_owned(), format!("interval {hours} hours"));
        }
        properties
    }

    /// What serde cannot check.
    pub(super) fn validate(&self, at: &dyn Fn(&Spanned<String>, &str, String) -> String) -> Vec<String> {
        let mut problems = Vec::new();
        if self.checkpoint_interval == Some(0) {
            problems.push("`pipeline.maintenance.checkpoint_interval`: must be at least 1".to_owned());
        }
        if self.max_small_files == Some(0) {
            problems.push("`pipeline.maintenance.max_small_files`: must be at least 1".to_owned());
        }
        // Delta's interval parsers count in nanoseconds: a century is plenty, and far from
        // overflowing them.
        for (key, hours) in [
            ("log_retention_hours", self.log_retention_hours),
            ("deleted_file_retention_hours", self.deleted_file_retention_hours),
        ] {
            if hours.is_some_and(|hours| hours > MAX_RETENTION_HOURS) {
                problems.push(format!("`pipeline.maintenance.{key}`: at most {MAX_RETENTION_HOURS} (100 years)"));
            }
        }
        if self.small_file_size_bytes == 0 {
            problems.push("`pipeline.maintenance.small_file_size_bytes`: must be at least 1".to_owned());
        }
        for (key, schedule) in
            [("optimize_schedule", &self.optimize_schedule), ("vacuum_schedule", &self.vacuum_schedule)]
        {
            if let Some(schedule) = schedule
                && let Err(message) = crate::schedule::Schedule::parse(schedule.get_ref())
            {
                problems.push(at(schedule, &format!("pipeline.maintenance.{key}"), message));
            }
        }
        problems
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_keys_given_become_properties() {
        let section: MaintenanceSection = toml::from_str("checkpoint_interval = 10\nlog_retention_hours = 48").unwrap();
        assert_eq!(
            section.table_properties(),
            BTreeMap::from([
                ("delta.checkpointInterval".to_owned(), "10".to_owned()),
                ("delta.logRetentionDuration".to_owned(), "interval 48 hours".to_owned()),
            ])
        );
        assert!(MaintenanceSection::default().table_properties().is_empty());
        assert!(toml::from_str::<MaintenanceSection>("log_retention_days = 2").is_err());
        let huge: MaintenanceSection = toml::from_str("deleted_file_retention_hours = 9999999999").unwrap();
        let problems = huge.validate(&|_, key, message| format!("{key}: {message}"));
        assert!(problems.iter().any(|p| p.contains("deleted_file_retention_hours")), "{problems:?}");
        let fine: MaintenanceSection = toml::from_str("log_retention_hours = 0").unwrap();
        assert!(fine.validate(&|_, key, message| format!("{key}: {message}")).is_empty());
    }
}
