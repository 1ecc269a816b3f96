//! `[pipeline.openlineage]`: OpenLineage events of every source and table run, sent over
//! HTTP or appended to a file (one JSON object a line).
//!
//! A run hands its report over when it ends ([`Lineage::run_done`]): a `try_send` on a
//! bounded queue of runs (`queue_capacity`), so a run never waits (a full queue drops the
//! run's events and counts the run in `inlet_lineage_runs_dropped_total`). A task of its own reads what the
//! events need (schemas, the files each version added, the queries and their column
//! lineage), builds them ([`events`]) and delivers them in order, each START before its
//! end; a lineage server that is down costs a few retries on that task and a warning.
//!
//! Like the run history, the events mirror runs that did something: `inlet serve` leaves
//! out the sources and tables a wake-up found nothing new for.

mod events;

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use inlet_engine::run::{Pipeline, RunReport};
use inlet_engine::transform::TableStatus;
use tokio::io::AsyncWriteExt;
use tokio::sync::mpsc;
use tracing::{debug, warn};

use crate::metrics::Metrics;
use events::{Builder, Extra};

enum Transport {
    Http { client: reqwest::Client, url: String, shown: String, api_key: Option<String>, timeout: Duration },
    File { path: PathBuf },
}

pub struct Lineage {
    queue: mpsc::Sender<RunReport>,
    worker: tokio::task::JoinHandle<()>,
    metrics: Option<Arc<Metrics>>,
    /// Set while deliveries fail (cleared by one that gets through).
    failing: Arc<AtomicBool>,
}

impl Lineage {
    /// The pipeline's lineage emitter, `None` without `[pipeline.openlineage]`.
    pub fn start(pipeline: Arc<Pipeline>, metrics: Option<Arc<Metrics>>) -> anyhow::Result<Option<Lineage>> {
        let Some(config) = pipeline.config.pipeline.openlineage.clone() else {
            return Ok(None);
        };
        let secret = |reference: &str, key: &str| -> anyhow::Result<String> {
            pipeline.env.resolve(reference).map_err(|name| {
                anyhow::anyhow!("`pipeline.openlineage.{key}`: the environment variable `{name}` is not set")
            })
        };
        let transport = match (&config.url, &config.file) {
            (Some(url), _) => {
                let mut url = secret(url, "url")?;
                // A server's root takes events at the spec's endpoint.
                if url::Url::parse(&url).is_ok_and(|u| u.path() == "/" || u.path().is_empty()) {
                    url = format!("{}/api/v1/lineage", url.trim_end_matches('/'));
                }
                let api_key = config.api_key.as_deref().map(|k| secret(k, "api_key")).transpose()?;
                Transport::Http {
                    client: reqwest::Client::new(),
                    shown: crate::alerts::redact(&url),
                    url,
                    api_key,
                    timeout: Duration::from_millis(config.timeout_ms),
                }
            }
            (None, Some(file)) => {
                Transport::File { path: inlet_engine::config::resolve_path(&pipeline.base_dir, file) }
            }
            (None, None) => anyhow::bail!("`pipeline.openlineage`: set one of `url` and `file`"),
        };
        let namespace = config.namespace.clone().unwrap_or_else(|| pipeline.config.pipeline.name.clone());
        let (queue, receiver) = mpsc::channel(config.queue_capacity);
        let failing = Arc::new(AtomicBool::new(false));
        let worker = tokio::spawn(work(pipeline, namespace, transport, receiver, metrics.clone(), failing.clone()));
        Ok(Some(Lineage { queue, worker, metrics, failing }))
    }

    /// A run ended; `record_idle`: whether sources and tables that found nothing to do
    /// have events too (`inlet run`), or not (`inlet serve`). Never waits.
    pub fn run_done(&self, report: &RunReport, record_idle: bool) {
        // What has events: like the run history, what did something (or everything, for
        // `inlet run`), and never a table skipped without running.
        let sources: Vec<_> = report.sources.iter().filter(|s| record_idle || !s.is_idle()).cloned().collect();
        let tables: Vec<_> = report
            .tables
            .iter()
            .filter(|t| record_idle || t.status != TableStatus::UpToDate)
            .filter(|t| t.status != TableStatus::Skipped || t.error.is_some())
            .cloned()
            .collect();
        if sources.is_empty() && tables.is_empty() {
            return;
        }
        let load_id = report.load_id.clone();
        let report = RunReport {
            pipeline: report.pipeline.clone(),
            load_id: report.load_id.clone(),
            started_at: report.started_at.clone(),
            duration_secs: report.duration_secs,
            sources,
            tables,
        };
        if self.queue.try_send(report).is_err() {
            warn!(load = %load_id, "lineage queue full; the run's events are dropped");
            if let Some(metrics) = &self.metrics {
                metrics.lineage_run_dropped();
            }
        }
    }

    /// Sends what is queued, waiting at most `limit`, and not at all once deliveries fail:
    /// a lineage server that is down costs an exit no more than one delivery's timeout.
    pub async fn close(self, limit: Duration) {
        drop(self.queue);
        let deadline = tokio::time::Instant::now() + limit;
        let mut worker = self.worker;
        loop {
            tokio::select! {
                _ = &mut worker => return,
                _ = tokio::time::sleep(Duration::from_millis(50)) => {}
            }
            let failing = self.failing.load(Ordering::SeqCst);
            if failing || tokio::time::Instant::now() >= deadline {
                worker.abort();
                if failing {
                    warn!("lineage events not delivered: the lineage server fails; the rest are left at exit");
                } else {
                    warn!(seconds = limit.as_secs(), "lineage events still unsent at exit; left");
                }
                return;
            }
        }
    }
}

async fn work(
    pipeline: Arc<Pipeline>,
    namespace: String,
    transport: Transport,
    mut queue: mpsc::Receiver<RunReport>,
    metrics: Option<Arc<Metrics>>,
    failing: Arc<AtomicBool>,
) {
    let builder = Builder { pipeline: &pipeline, namespace };
    // Once a delivery failed, each event is tried once until one gets through: a server
    // that is down costs no retries per event.
    let mut down = false;
    let mut undelivered = 0u64;
    while let Some(report) = queue.recv().await {
        let extra = extra(&pipeline, &report).await;
        let [pipeline_start, pipeline_end] = builder.pipeline_run(&report);
        let mut runs = vec![vec![pipeline_start]];
        runs.extend(report.sources.iter().flat_map(|s| builder.source(&report.load_id, s, &extra)));
        runs.extend(report.tables.iter().flat_map(|t| builder.table(&report.load_id, t, &extra)));
        runs.push(vec![pipeline_end]);
        for event in runs.into_iter().flatten() {
            let outcome = match send(&transport, &event, if down { 1 } else { 3 }).await {
                Ok(()) => {
                    down = false;
                    failing.store(false, Ordering::SeqCst);
                    "sent"
                }
                Err(why) => {
                    // Every attempt failed: `close` stops waiting from now on.
                    failing.store(true, Ordering::SeqCst);
                    if !down {
                        warn!(error = %why, "lineage event not delivered; later events are tried once until one is");
                    }
                    down = true;
                    undelivered += 1;
                    "failed"
                }
            };
            if let Some(metrics) = &metrics {
                metrics.lineage_event(outcome);
            }
        }
        debug!(load = %report.load_id, "lineage events sent");
    }
    if undelivered > 0 {
        warn!(events = undelivered, "lineage events not delivered");
    }
}

/// Delivers one event: POSTed (up to `attempts` times) or appended to the file.
async fn send(transport: &Transport, event: &serde_json::Value, attempts: u32) -> Result<(), String> {
    match transport {
        Transport::File { path } => {
            let mut line = serde_json::to_vec(event).map_err(|e| e.to_string())?;
            line.push(b'\n');
            let mut file = tokio::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(path)
                .await
                .map_err(|e| format!("{}: {e}", path.display()))?;
            file.write_all(&line).await.map_err(|e| format!("{}: {e}", path.display()))?;
            file.flush().await.map_err(|e| format!("{}: {e}", path.display()))
        }
        Transport::Http { client, url, shown, api_key, timeout } => {
            let mut why = String::new();
            for attempt in 0..attempts {
                if attempt > 0 {
                    tokio::time::sleep(Duration::from_millis(200 << attempt)).await;
                }
                let mut request = client
                    .post(url)
                    .timeout(*timeout)
                    .header(reqwest::header::CONTENT_TYPE, "application/json")
                    .body(event.to_string());
                if let Some(key) = api_key {
                    request = request.bearer_auth(key);
                }
                match request.send().await {
                    Ok(response) if response.status().is_success() => return Ok(()),
                    Ok(response) => why = format!("{shown} answered {}", response.status()),
                    Err(err) => why = format!("{shown}: {}", crate::alerts::describe(err)),
                }
            }
            Err(why)
        }
    }
}

/// What the events need beyond the report, read from the tables and the queries; what
/// cannot be read is left out of the events (and logged), never a reason to drop them.
async fn extra(pipeline: &Pipeline, report: &RunReport) -> Extra {
    let mut extra = Extra::default();
    let mut written: Vec<(String, Vec<i64>)> =
        report.sources.iter().map(|s| (s.table.clone(), s.commits.iter().map(|c| c.table_version).collect())).collect();
    written.extend(report.tables.iter().map(|t| {
        let versions =
            if t.status == TableStatus::Committed { t.table_version.into_iter().collect() } else { Vec::new() };
        (t.table.clone(), versions)
    }));
    for (table, versions) in written {
        let opened = match inlet_engine::query::open(&pipeline.lake, &table).await {
            Ok(opened) => opened,
            Err(err) => {
                debug!(table = %table, error = %err, "lineage: table not read");
                continue;
            }
        };
        if let Ok(Some(schema)) = opened.arrow_schema() {
            extra.schemas.insert(
                table.clone(),
                schema.fields().iter().map(|f| (f.name().clone(), f.data_type().to_string())).collect(),
            );
        }
        let (mut bytes, mut files) = (0, 0);
        for version in versions {
            if let Ok(Some(commit)) = inlet_engine::log::read(&opened, version).await {
                bytes += commit.adds.iter().filter_map(|a| a.size).sum::<i64>();
                files += commit.adds.len();
            }
        }
        extra.written.insert(table, (bytes, files));
    }
    for table in report.tables.iter().filter(|t| t.status != TableStatus::Skipped) {
        // The query the run ran, as the pipeline loaded it.
        let Some(inlet_engine::dag::NodeKind::Table { sql }) = pipeline.dag.node(&table.table) else { continue };
        match inlet_engine::column_lineage::column_lineage(&pipeline.lake, sql).await {
            Ok(lineage) => {
                extra.columns.insert(table.table.clone(), lineage);
            }
            Err(err) => debug!(table = %table.table, error = %err, "lineage: no column lineage"),
        }
        extra.sql.insert(table.table.clone(), sql.clone());
    }
    extra
}
