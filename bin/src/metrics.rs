//! Every metric `inlet serve` exports, declared in one place: names `inlet_<noun>_<unit>`,
//! counters with `_total` (added by the encoder), labels bounded by the pipeline's sources
//! and tables.

use std::collections::HashMap;
use std::sync::Mutex;
use std::sync::atomic::AtomicU64;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

use inlet_engine::run::RunReport;
use inlet_engine::transform::TableStatus;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct SourceLabel {
    pub source: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct TableLabel {
    pub table: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RuleLabel {
    pub table: String,
    /// An expectation's name, or `parse` for records that did not parse.
    pub rule: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct OutcomeLabel {
    /// `ok` or `failed`.
    pub outcome: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct MaintenanceLabel {
    pub table: String,
    /// `optimize` or `vacuum`.
    pub action: String,
    /// `ok` or `failed`.
    pub outcome: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct KindLabel {
    /// `source` or `table`.
    pub kind: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct AlertLabel {
    /// `run_failed`, `gate_failed`, `freshness_breached`, `circuit_open`, `quarantine_ratio`.
    pub event: String,
    /// `firing` or `resolved`.
    pub state: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct EventLabel {
    pub event: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct NameLabel {
    /// `source` or `table`.
    pub kind: String,
    pub name: String,
}

type Durations = Family<KindLabel, Histogram, fn() -> Histogram>;

fn durations() -> Histogram {
    Histogram::new(exponential_buckets(0.01, 2.0, 14))
}

pub struct Metrics {
    pub registry: Registry,
    files: Family<SourceLabel, Counter>,
    pages: Family<SourceLabel, Counter>,
    requests: Family<SourceLabel, Counter>,
    rows: Family<SourceLabel, Counter>,
    bytes: Family<SourceLabel, Counter>,
    quarantined: Family<RuleLabel, Counter>,
    commits: Family<TableLabel, Counter>,
    runs: Family<OutcomeLabel, Counter>,
    durations: Durations,
    backlog: Family<SourceLabel, Gauge>,
    replication_lag: Family<SourceLabel, Gauge>,
    replication_lag_seconds: Family<SourceLabel, Gauge<f64, AtomicU64>>,
    retained_wal: Family<SourceLabel, Gauge>,
    last_run: Gauge,
    retries: Family<SourceLabel, Counter>,
    circuit: Family<SourceLabel, Gauge>,
    conflicts: Family<TableLabel, Counter>,
    freshness: Family<TableLabel, Gauge<f64, AtomicU64>>,
    maintenance: Family<MaintenanceLabel, Counter>,
    alerts_sent: Family<AlertLabel, Counter>,
    alert_failures: Family<EventLabel, Counter>,
    freshness_age: Family<NameLabel, Gauge<f64, AtomicU64>>,
    freshness_sla: Family<NameLabel, Gauge>,
    freshness_breached: Family<NameLabel, Gauge>,
    lineage_events: Family<OutcomeLabel, Counter>,
    lineage_runs_dropped: Counter,
    /// Mirrors [`inlet_connectors::sqs::MALFORMED_MESSAGES`] at each scrape; `mirrored`
    /// is the value it last took, so concurrent scrapes add each message once.
    malformed: Counter,
    mirrored: AtomicU64,
    /// When each table was last committed to (ms since the epoch): freshness is computed
    /// from it at each scrape.
    last_commit_ms: Mutex<HashMap<String, i64>>,
}

impl Metrics {
    pub fn new() -> Metrics {
        let mut registry = Registry::default();
        let files = Family::<SourceLabel, Counter>::default();
        let pages = Family::<SourceLabel, Counter>::default();
        let requests = Family::<SourceLabel, Counter>::default();
        let rows = Family::<SourceLabel, Counter>::default();
        let bytes = Family::<SourceLabel, Counter>::default();
        let quarantined = Family::<RuleLabel, Counter>::default();
        let commits = Family::<TableLabel, Counter>::default();
        let runs = Family::<OutcomeLabel, Counter>::default();
        let durations: Durations = Family::new_with_constructor(durations);
        let backlog = Family::<SourceLabel, Gauge>::default();
        let replication_lag = Family::<SourceLabel, Gauge>::default();
        let replication_lag_seconds = Family::<SourceLabel, Gauge<f64, AtomicU64>>::default();
        let retained_wal = Family::<SourceLabel, Gauge>::default();
        let last_run = Gauge::default();
        let retries = Family::<SourceLabel, Counter>::default();
        let circuit = Family::<SourceLabel, Gauge>::default();
        let conflicts = Family::<TableLabel, Counter>::default();
        let freshness = Family::<TableLabel, Gauge<f64, AtomicU64>>::default();
        let malformed = Counter::default();
        let maintenance = Family::<MaintenanceLabel, Counter>::default();
        let alerts_sent = Family::<AlertLabel, Counter>::default();
        let alert_failures = Family::<EventLabel, Counter>::default();
        let freshness_age = Family::<NameLabel, Gauge<f64, AtomicU64>>::default();
        let freshness_sla = Family::<NameLabel, Gauge>::default();
        let freshness_breached = Family::<NameLabel, Gauge>::default();
        let lineage_events = Family::<OutcomeLabel, Counter>::default();
        let lineage_runs_dropped = Counter::default();
        registry.register("inlet_files_ingested", "Files ingested", files.clone());
        registry.register("inlet_pages_ingested", "Pages of an API committed", pages.clone());
        registry.register("inlet_requests", "Requests an extractor made, retries included", requests.clone());
        registry.register("inlet_rows_ingested", "Rows committed to bronze tables", rows.clone());
        registry.register("inlet_bytes_ingested", "Input bytes of the files ingested, as stored", bytes.clone());
        registry.register("inlet_rows_quarantined", "Rows sent to a quarantine, by rule", quarantined.clone());
        registry.register("inlet_commits", "Commits made to a table", commits.clone());
        registry.register("inlet_runs", "Runs of the pipeline, by outcome", runs.clone());
        registry.register("inlet_task_duration_seconds", "Time a source or a table took", durations.clone());
        registry.register(
            "inlet_backlog_files",
            "Files seen but not yet ingested (still being written, or unreadable)",
            backlog.clone(),
        );
        registry.register(
            "inlet_replication_lag_bytes",
            "WAL a database source had not landed when its last run began",
            replication_lag.clone(),
        );
        registry.register(
            "inlet_replication_lag_seconds",
            "Age of the oldest change a database source had not landed when its last run began",
            replication_lag_seconds.clone(),
        );
        registry.register(
            "inlet_replication_retained_wal_bytes",
            "WAL the database keeps for the source's replication slot",
            retained_wal.clone(),
        );
        registry.register("inlet_last_run_timestamp_seconds", "When the last run ended (Unix time)", last_run.clone());
        registry.register("inlet_retries", "Retries of a source after a retryable error", retries.clone());
        registry.register(
            "inlet_circuit_open",
            "1 while a source that kept failing is skipped for a cool-down",
            circuit.clone(),
        );
        registry.register(
            "inlet_commit_conflicts",
            "Commits that lost to another writer's (the work is retried)",
            conflicts.clone(),
        );
        registry.register(
            "inlet_table_freshness_seconds",
            "Seconds since the table's latest commit",
            freshness.clone(),
        );
        registry.register(
            "inlet_queue_messages_malformed",
            "Messages on a notification queue that were not S3 events (logged and deleted)",
            malformed.clone(),
        );
        registry.register(
            "inlet_maintenance_actions",
            "Optimizes and vacuums inlet serve ran (scheduled, or auto-compaction), by outcome",
            maintenance.clone(),
        );
        registry.register(
            "inlet_alerts_sent",
            "Alerts delivered to a webhook, by event and state",
            alerts_sent.clone(),
        );
        registry.register(
            "inlet_alert_deliveries_failed",
            "Alerts that could not be delivered after every attempt (or found the queue full)",
            alert_failures.clone(),
        );
        registry.register(
            "inlet_freshness_age_seconds",
            "Age of a source's newest committed data, or of a table's last successful run",
            freshness_age.clone(),
        );
        registry.register(
            "inlet_freshness_sla_seconds",
            "The freshness SLA of a source or table",
            freshness_sla.clone(),
        );
        registry.register(
            "inlet_freshness_sla_breached",
            "1 while a source or table is older than its freshness SLA",
            freshness_breached.clone(),
        );
        registry.register(
            "inlet_lineage_events",
            "OpenLineage events, by outcome: sent, or failed (not delivered)",
            lineage_events.clone(),
        );
        registry.register(
            "inlet_lineage_runs_dropped",
            "Runs whose OpenLineage events were dropped: the queue was full",
            lineage_runs_dropped.clone(),
        );
        Metrics {
            registry,
            alerts_sent,
            alert_failures,
            freshness_age,
            freshness_sla,
            freshness_breached,
            lineage_events,
            lineage_runs_dropped,
            files,
            pages,
            requests,
            rows,
            bytes,
            quarantined,
            commits,
            runs,
            durations,
            backlog,
            replication_lag,
            replication_lag_seconds,
            retained_wal,
            last_run,
            retries,
            circuit,
            conflicts,
            freshness,
            malformed,
            maintenance,
            mirrored: AtomicU64::new(0),
            last_commit_ms: Mutex::new(HashMap::new()),
        }
    }

    /// Starts the counters of every source and table at zero, so rates work from the first
    /// scrape.
    pub fn declare<'a>(&self, sources: impl Iterator<Item = &'a str>, tables: impl Iterator<Item = &'a str>) {
        for source in sources {
            let label = SourceLabel { source: source.to_owned() };
            let _ = self.retries.get_or_create(&label);
            let _ = self.circuit.get_or_create(&label);
        }
        for table in tables {
            let label = TableLabel { table: table.to_owned() };
            let _ = self.conflicts.get_or_create(&label);
            let _ = self.commits.get_or_create(&label);
        }
    }

    /// `table` was committed to at `ms` (since the epoch).
    pub fn committed_at(&self, table: &str, ms: i64) {
        if let Ok(mut last) = self.last_commit_ms.lock() {
            let slot = last.entry(table.to_owned()).or_insert(ms);
            *slot = (*slot).max(ms);
        }
    }

    /// Counts what a run did.
    pub fn record(&self, report: &RunReport) {
        let now_ms = chrono::Utc::now().timestamp_millis();
        let mut failed = false;
        let errors = report
            .sources
            .iter()
            .map(|s| (&s.table, &s.error))
            .chain(report.tables.iter().map(|t| (&t.table, &t.error)));
        for source in &report.sources {
            if source.conflicts > 0 {
                self.conflicts
                    .get_or_create(&TableLabel { table: source.table.clone() })
                    .inc_by(u64::from(source.conflicts));
            }
        }
        for (table, error) in errors {
            if error.as_ref().is_some_and(|e| e.conflict) {
                self.conflicts.get_or_create(&TableLabel { table: table.clone() }).inc();
            }
        }
        for source in &report.sources {
            let label = SourceLabel { source: source.source.clone() };
            self.files.get_or_create(&label).inc_by(source.files_ingested as u64);
            self.pages.get_or_create(&label).inc_by(source.pages);
            self.requests.get_or_create(&label).inc_by(source.requests);
            self.rows.get_or_create(&label).inc_by(source.rows);
            self.bytes.get_or_create(&label).inc_by(source.bytes);
            self.backlog.get_or_create(&label).set((source.files_unsettled + source.failed_files.len()) as i64);
            if let Some(lag) = source.lag {
                self.replication_lag.get_or_create(&label).set(lag.bytes as i64);
                self.replication_lag_seconds.get_or_create(&label).set(lag.seconds);
                self.retained_wal.get_or_create(&label).set(lag.retained_bytes as i64);
            }
            let table = TableLabel { table: source.table.clone() };
            self.commits.get_or_create(&table).inc_by(source.commits.len() as u64);
            if !source.commits.is_empty() {
                self.committed_at(&source.table, now_ms);
            }
            let mut by_rule: u64 = 0;
            for commit in &source.commits {
                for expectation in commit.quality.iter().flat_map(|q| &q.expectations) {
                    if expectation.quarantined > 0 {
                        let rule = RuleLabel { table: source.table.clone(), rule: expectation.name.clone() };
                        self.quarantined.get_or_create(&rule).inc_by(expectation.quarantined);
                        by_rule += expectation.quarantined;
                    }
                }
            }
            let parse = source.quarantined.saturating_sub(by_rule);
            if parse > 0 {
                let rule = RuleLabel { table: source.table.clone(), rule: "parse".to_owned() };
                self.quarantined.get_or_create(&rule).inc_by(parse);
            }
            self.durations.get_or_create(&KindLabel { kind: "source".to_owned() }).observe(source.seconds);
            failed |= source.error.is_some();
        }
        for table in &report.tables {
            if table.status == TableStatus::Committed {
                self.commits.get_or_create(&TableLabel { table: table.table.clone() }).inc();
                self.committed_at(&table.table, now_ms);
            }
            for expectation in table.quality.iter().flat_map(|q| &q.expectations) {
                if expectation.quarantined > 0 {
                    let rule = RuleLabel { table: table.table.clone(), rule: expectation.name.clone() };
                    self.quarantined.get_or_create(&rule).inc_by(expectation.quarantined);
                }
            }
            self.durations.get_or_create(&KindLabel { kind: "table".to_owned() }).observe(table.seconds);
            failed |= table.status == TableStatus::Failed;
        }
        let outcome = if failed { "failed" } else { "ok" };
        self.runs.get_or_create(&OutcomeLabel { outcome: outcome.to_owned() }).inc();
        self.last_run.set(chrono::Utc::now().timestamp());
    }

    /// A source is retried after a retryable error.
    pub fn retry(&self, source: &str) {
        self.retries.get_or_create(&SourceLabel { source: source.to_owned() }).inc();
    }

    /// A source's circuit opened (`true`) or closed.
    pub fn circuit(&self, source: &str, open: bool) {
        self.circuit.get_or_create(&SourceLabel { source: source.to_owned() }).set(i64::from(open));
    }

    /// What scheduled maintenance or auto-compaction did.
    pub fn maintained(&self, done: &[inlet_engine::upkeep::Upkept]) {
        for upkept in done {
            let outcome = match (&upkept.error, &upkept.deferred) {
                (Some(_), _) => "failed",
                (None, Some(_)) => "deferred",
                (None, None) => "ok",
            };
            let label = MaintenanceLabel {
                table: upkept.table.clone(),
                action: upkept.action.to_owned(),
                outcome: outcome.to_owned(),
            };
            self.maintenance.get_or_create(&label).inc();
        }
    }

    /// An alert was delivered (`state`: `firing` or `resolved`).
    pub fn alert_sent(&self, event: &str, state: &str) {
        self.alerts_sent.get_or_create(&AlertLabel { event: event.to_owned(), state: state.to_owned() }).inc();
    }

    /// An alert could not be delivered.
    pub fn alert_failed(&self, event: &str) {
        self.alert_failures.get_or_create(&EventLabel { event: event.to_owned() }).inc();
    }

    /// Where each source and table stands against its freshness SLA.
    pub fn freshness(&self, rows: &[inlet_engine::status::Status]) {
        for row in rows {
            let label = NameLabel { kind: row.kind.to_owned(), name: row.name.clone() };
            if let Some(age) = row.age_secs {
                self.freshness_age.get_or_create(&label).set(age as f64);
            }
            if let Some(sla) = row.freshness_sla_secs {
                self.freshness_sla.get_or_create(&label).set(i64::try_from(sla).unwrap_or(i64::MAX));
                self.freshness_breached.get_or_create(&label).set(i64::from(row.stale));
            }
        }
    }

    /// An OpenLineage event was `sent` or `failed`.
    pub fn lineage_event(&self, outcome: &str) {
        self.lineage_events.get_or_create(&OutcomeLabel { outcome: outcome.to_owned() }).inc();
    }

    /// A run's OpenLineage events found the queue full.
    pub fn lineage_run_dropped(&self) {
        self.lineage_runs_dropped.inc();
    }

    /// A run that could not start (the pipeline's tables could not be opened, ...).
    pub fn record_error(&self) {
        self.runs.get_or_create(&OutcomeLabel { outcome: "failed".to_owned() }).inc();
    }

    /// The Prometheus text exposition.
    pub fn encode(&self) -> String {
        let now_ms = chrono::Utc::now().timestamp_millis();
        if let Ok(last) = self.last_commit_ms.lock() {
            for (table, ms) in last.iter() {
                let age = (now_ms - ms).max(0) as f64 / 1000.0;
                self.freshness.get_or_create(&TableLabel { table: table.clone() }).set(age);
            }
        }
        let malformed = inlet_connectors::sqs::MALFORMED_MESSAGES.load(std::sync::atomic::Ordering::SeqCst);
        let before = self.mirrored.fetch_max(malformed, std::sync::atomic::Ordering::SeqCst);
        self.malformed.inc_by(malformed.saturating_sub(before));
        let mut out = String::new();
        if prometheus_client::encoding::text::encode(&mut out, &self.registry).is_err() {
            out.clear();
        }
        out
    }
}
