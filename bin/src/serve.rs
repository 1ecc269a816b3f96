//! `inlet serve`: keeps the lake fresh until SIGINT or SIGTERM.
//!
//! What starts work:
//! - `trigger = "watch"` sources: file events (`notify`) under their root are hints that
//!   something may have arrived; a listing every `reconcile_interval_secs` catches what
//!   events miss. An event waits out the shortest `debounce_ms` and takes every other event
//!   that came meanwhile (a burst is one run).
//! - `trigger = "schedule"` sources and `refresh = "schedule"` tables: their cron times
//!   ([`Scheduler`]; missed times coalesce, and one missed while the process was down runs
//!   at start).
//! - `manual` sources and tables: only `inlet run`.
//!
//! Each wake-up is one `inlet run` of the sources it concerns, the tables due, and every
//! `refresh = "on_upstream"` table (those with nothing new upstream finish at once), with
//! `pipeline.serve.max_concurrent_tasks` at a time. Sources take only files that have not
//! changed for their `debounce_ms` (a file still being written is looked at again later).
//! Exactly once comes from the tables' ledgers, so a restart needs no state of its own. A
//! signal stops taking work; a run in progress finishes its commits first.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::Context;
use axum::Router;
use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::get;
use inlet_engine::config::{Discovery, Refresh, Trigger};
use inlet_engine::run::{Pipeline, Quiet, RunOptions};
use inlet_engine::schedule::{Action, Scheduler, Task};
use notify::{RecursiveMode, Watcher};
use tokio::signal::unix::{SignalKind, signal};
use tokio::time::Instant;
use tracing::{info, warn};

use crate::alerts::{self, Alerter};
use crate::dashboard::{Dashboard, Live, exposed};
use crate::lineage::Lineage;
use crate::metrics::Metrics;
use crate::upkeeper::{Job, Upkeeper};

struct Shared {
    metrics: Arc<Metrics>,
    /// Sources whose last run failed, with why.
    failing: Mutex<BTreeMap<String, String>>,
    /// What runs now, and the sources skipped for a cool-down after failing `max_attempts`
    /// times in a row (the dashboard shows both).
    live: Arc<Live>,
}

/// A source's run of failures.
#[derive(Default)]
struct Health {
    failures: u32,
    open_until: Option<Instant>,
}

/// Exponential backoff with full jitter: a random delay up to `initial * 2^(attempt-1)`,
/// capped.
fn backoff(retry: &inlet_engine::config::RetrySection, attempt: u32) -> Duration {
    let ceiling = retry
        .initial_backoff_ms
        .saturating_mul(1u64 << attempt.saturating_sub(1).min(30))
        .min(retry.max_backoff_secs.saturating_mul(1000));
    Duration::from_millis(rand::random_range(0..=ceiling))
}

/// How often `serve` looks at a source's notification queue (each look long-polls briefly).
const NOTIFICATION_POLL_SECS: u64 = 1;

/// What wakes the loop: file events (with the paths they name), or nothing in particular.
type Wake = Vec<PathBuf>;

/// Runs until a signal; returns once the last run has finished.
pub async fn serve(pipeline: Pipeline) -> anyhow::Result<()> {
    let pipeline = Arc::new(pipeline);
    let config = &pipeline.config;
    let listen: SocketAddr = config
        .pipeline
        .serve
        .listen
        .parse()
        .with_context(|| format!("`pipeline.serve.listen` = `{}`", config.pipeline.serve.listen))?;
    let shared = Arc::new(Shared {
        metrics: Arc::new(Metrics::new()),
        failing: Mutex::new(BTreeMap::new()),
        live: Arc::new(Live::default()),
    });
    let listener = tokio::net::TcpListener::bind(listen).await.with_context(|| format!("listening on {listen}"))?;
    let address = listener.local_addr()?;
    let mut app = Router::new()
        .route("/health", get(health))
        .route("/ready", get(ready))
        .route("/metrics", get(metrics))
        .with_state(shared.clone());
    if config.pipeline.serve.dashboard != Some(false) {
        let dashboard = Arc::new(Dashboard::new(pipeline.clone(), Some(shared.live.clone()))?);
        match (exposed(address, &dashboard), config.pipeline.serve.dashboard) {
            (false, _) => app = app.merge(crate::dashboard::router(dashboard)),
            (true, Some(true)) => {
                warn!(%address, "the dashboard listens beyond loopback without `pipeline.serve.token`: anyone who reaches it can read it");
                app = app.merge(crate::dashboard::router(dashboard));
            }
            (true, _) => warn!(
                %address,
                "the dashboard is not served: it would be open beyond loopback; set `pipeline.serve.token` (or `dashboard = true`)"
            ),
        }
    }
    let app = app.into_make_service_with_connect_info::<SocketAddr>();
    let server = tokio::spawn(async move { axum::serve(listener, app).await });
    println!("inlet serve: listening on http://{address}");
    let alerter = Alerter::start(&pipeline, shared.metrics.clone())?;
    let lineage = Lineage::start(pipeline.clone(), Some(shared.metrics.clone()))?;
    let freshness = watch_freshness(pipeline.clone(), shared.metrics.clone(), alerter.clone(), shared.live.clone());

    shared.metrics.declare(
        config.sources.keys().map(String::as_str),
        config.sources.values().map(|s| s.target()).chain(pipeline.dag.order().iter().map(String::as_str)),
    );
    // Where each source and table stands: freshness for the metrics, last runs for the
    // schedules (a schedule missed while the process was down runs at once).
    let mut last_runs = HashMap::new();
    match inlet_engine::status::status(&pipeline, &inlet_connectors::Connectors).await {
        Ok(rows) => {
            for row in rows {
                if let Some(ms) = row.last_commit_ms {
                    shared.metrics.committed_at(&row.table, ms);
                }
                let task = if row.kind == "source" { Task::Source(row.name) } else { Task::Table(row.name) };
                if let Some(at) = row.last_success_micros.and_then(chrono::DateTime::from_timestamp_micros) {
                    last_runs.insert(task, at);
                }
            }
        }
        Err(err) => warn!(error = %err, "status not read; schedules start from now"),
    }
    match inlet_engine::status::last_maintenance(&pipeline).await {
        Ok(last) => {
            for action in [Action::Optimize, Action::Vacuum] {
                if let Some(at) = last.get(action.name()).copied().and_then(chrono::DateTime::from_timestamp_micros) {
                    last_runs.insert(Task::Maintenance(action), at);
                }
            }
        }
        Err(err) => warn!(error = %err, "last maintenance not read; its schedules start from now"),
    }
    let mut scheduler = Scheduler::new(config, chrono::Utc::now(), &last_runs).map_err(anyhow::Error::msg)?;

    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<Wake>();
    let mut watcher = notify::recommended_watcher(move |event: notify::Result<notify::Event>| {
        // Only what can bring new bytes: reads (inlet's own listings and decoding among
        // them) and removals must not wake the loop, or every run would trigger the next.
        if let Ok(event) = event
            && !matches!(event.kind, notify::EventKind::Access(_) | notify::EventKind::Remove(_))
        {
            let _ = tx.send(event.paths);
        }
    })?;
    // Watched sources by root. A root that does not exist yet is watched once it does;
    // until then the listings and the retries find its files.
    let watched = || config.sources.iter().filter_map(|(name, s)| s.files().map(|f| (name, f)));
    let roots: Vec<(String, PathBuf)> = watched()
        // Object-store prefixes have no file events: their listings find what arrives.
        .filter(|(_, s)| s.trigger == Trigger::Watch && !s.on_s3())
        .map(|(name, s)| {
            // Absolute, so the paths events name (under the path watched) compare with it.
            let root = inlet_engine::config::resolve_path(&pipeline.base_dir, &s.path);
            (name.clone(), std::path::absolute(&root).unwrap_or(root))
        })
        .collect();
    let mut unwatched = roots.clone();
    watch(&mut watcher, &mut unwatched);
    let debounce = Duration::from_millis(
        watched().filter(|(_, s)| s.trigger == Trigger::Watch).map(|(_, s)| s.debounce_ms).min().unwrap_or(200),
    );
    let retry = config.pipeline.retry.clone();
    let now = Instant::now();
    // Every watched source is listed at start, then every `reconcile_interval_secs`.
    let mut reconcile: HashMap<String, Instant> =
        watched().filter(|(_, s)| s.trigger == Trigger::Watch).map(|(name, _)| (name.clone(), now)).collect();
    // A database source that watches is read every `poll_interval_ms` (CDC: its slot).
    reconcile.extend(
        config
            .sources
            .iter()
            .filter(|(_, s)| s.postgres().is_some() && s.trigger() == Trigger::Watch)
            .map(|(name, _)| (name.clone(), now)),
    );
    // Sources and tables to look at again (files still being written, a retry, a circuit
    // closing), and when.
    let mut pending: HashMap<Task, Instant> = HashMap::new();
    // Runs of failures, by source and by table (only sources open a circuit).
    let mut health: HashMap<Task, Health> = HashMap::new();
    let mut terminate = signal(SignalKind::terminate())?;
    let mut interrupt = signal(SignalKind::interrupt())?;
    let upkeeper = Upkeeper::start(pipeline.clone(), shared.metrics.clone());

    loop {
        let scheduled = scheduler.next_due().map(|at| {
            let wait = (at - chrono::Utc::now()).to_std().unwrap_or_default();
            Instant::now() + wait
        });
        let wake = reconcile.values().chain(pending.values()).copied().chain(scheduled).min();
        let mut dirty: BTreeSet<String> = BTreeSet::new();
        tokio::select! {
            _ = terminate.recv() => break,
            _ = interrupt.recv() => break,
            _ = sleep_until_or_forever(wake) => {}
            Some(paths) = rx.recv() => {
                mark(&roots, &paths, &mut dirty);
                // Let the burst land, then take it in one run.
                tokio::select! {
                    _ = terminate.recv() => break,
                    _ = interrupt.recv() => break,
                    _ = tokio::time::sleep(debounce) => {}
                }
            }
        }
        while let Ok(paths) = rx.try_recv() {
            mark(&roots, &paths, &mut dirty);
        }
        let now = Instant::now();
        for (name, at) in &mut reconcile {
            if *at <= now {
                dirty.insert(name.clone());
                // A queue is polled all the time (its source lists the prefix itself, every
                // `reconcile_interval_secs`); a directory is listed every interval.
                let source = config.sources.get(name);
                let interval = match (source.and_then(|s| s.files()), source.and_then(|s| s.postgres())) {
                    (Some(files), _) => Duration::from_secs(match files.discovery {
                        Discovery::Notifications => NOTIFICATION_POLL_SECS,
                        Discovery::Listing => files.reconcile_interval_secs,
                    }),
                    (None, Some(pg)) => Duration::from_millis(pg.poll_interval_ms),
                    (None, None) => Duration::from_secs(300),
                };
                *at = now + interval;
            }
        }
        let mut due_tables = BTreeSet::new();
        for task in scheduler.due(chrono::Utc::now()) {
            match task {
                Task::Source(name) => {
                    dirty.insert(name);
                }
                Task::Table(name) => {
                    due_tables.insert(name);
                }
                Task::Maintenance(action) => upkeeper.push(Job::Every(action)),
            }
        }
        pending.retain(|task, at| {
            if *at > now {
                return true;
            }
            match task {
                Task::Source(name) => dirty.insert(name.clone()),
                Task::Table(name) => due_tables.insert(name.clone()),
                Task::Maintenance(_) => false,
            };
            false
        });

        // Sources whose circuit is open sit out their cool-down.
        let mut open = Vec::new();
        for (task, state) in &mut health {
            let Task::Source(name) = task else { continue };
            match state.open_until {
                Some(until) if until > now => {
                    open.push(name.clone());
                    dirty.remove(name);
                    pending.insert(Task::Source(name.clone()), until);
                }
                Some(_) => {
                    state.open_until = None;
                    shared.metrics.circuit(name, false);
                    if let Some(alerter) = &alerter {
                        alerter.observe(&[alerts::signal_of_circuit(name, false)]);
                    }
                }
                None => {}
            }
        }
        if let Ok(mut slot) = shared.live.open_circuits.lock() {
            slot.clone_from(&open);
        }
        if dirty.is_empty() && due_tables.is_empty() {
            continue;
        }
        let options = run_options(&pipeline, &dirty, &due_tables);
        if let Ok(mut running) = shared.live.running.lock() {
            running.extend(dirty.iter().cloned());
            running.extend(options.select.iter().filter(|t| pipeline.config.tables.contains_key(*t)).cloned());
        }
        let outcome = inlet_engine::run::run(&pipeline, &inlet_connectors::Connectors, Arc::new(Quiet), &options).await;
        if let Ok(mut running) = shared.live.running.lock() {
            running.clear();
        }
        match outcome {
            Ok(report) => {
                shared.metrics.record(&report);
                shared.live.ran(&report);
                if let Some(alerter) = &alerter {
                    alerter.observe(&alerts::signals_of_run(&report));
                    alerter.observe(&[alerts::signal_of_pipeline_run(None)]);
                }
                if let Some(lineage) = &lineage {
                    lineage.run_done(&report, options.record_idle);
                }
                if config.pipeline.maintenance.max_small_files.is_some() {
                    upkeeper.push(Job::Compact(inlet_engine::upkeep::committed_tables(&report)));
                }
                // A run holds only the sources that woke: the others keep their state.
                if let Ok(mut failing) = shared.failing.lock() {
                    for source in &report.sources {
                        match &source.error {
                            Some(e) => failing.insert(source.source.clone(), e.message.clone()),
                            None => failing.remove(&source.source),
                        };
                    }
                }
                let committed = report.sources.iter().map(|s| s.commits.len()).sum::<usize>();
                info!(load = %report.load_id, sources = report.sources.len(), tables = report.tables.len(), committed, "run done");
                let mut soon = |task: Task, at: Instant| {
                    let slot = pending.entry(task).or_insert(at);
                    *slot = (*slot).min(at);
                };
                for source in &report.sources {
                    let task = Task::Source(source.source.clone());
                    if source.files_unsettled > 0 {
                        soon(task.clone(), Instant::now() + debounce);
                    }
                    let state = health.entry(task.clone()).or_default();
                    match &source.error {
                        Some(error) if error.retryable => {
                            state.failures += 1;
                            if state.failures >= retry.max_attempts {
                                warn!(source = %source.source, failures = state.failures, "circuit open");
                                let until = Instant::now() + Duration::from_secs(retry.max_backoff_secs);
                                state.open_until = Some(until);
                                state.failures = 0;
                                shared.metrics.circuit(&source.source, true);
                                if let Some(alerter) = &alerter {
                                    alerter.observe(&[alerts::signal_of_circuit(&source.source, true)]);
                                }
                                if let Ok(mut open) = shared.live.open_circuits.lock() {
                                    open.push(source.source.clone());
                                }
                                soon(task, until);
                            } else {
                                shared.metrics.retry(&source.source);
                                soon(task, Instant::now() + backoff(&retry, state.failures));
                            }
                        }
                        // Not retryable (the input needs a decision): wait for new input.
                        Some(_) | None => state.failures = 0,
                    }
                }
                // A table that lost a race with another writer (or the store) is tried again.
                for table in &report.tables {
                    let task = Task::Table(table.table.clone());
                    if table.error.as_ref().is_some_and(|e| e.retryable) {
                        let state = health.entry(task.clone()).or_default();
                        state.failures = (state.failures + 1).min(retry.max_attempts);
                        soon(task, Instant::now() + backoff(&retry, state.failures));
                    } else if table.error.is_none() {
                        health.remove(&task);
                    }
                }
                watch(&mut watcher, &mut unwatched);
            }
            Err(err) => {
                warn!(error = %err, "run failed");
                shared.metrics.record_error();
                if let Some(alerter) = &alerter {
                    alerter.observe(&[alerts::signal_of_pipeline_run(Some(&err.to_string()))]);
                }
                let again = Instant::now() + backoff(&retry, 1);
                for name in dirty {
                    pending.insert(Task::Source(name), again);
                }
                for name in due_tables {
                    pending.insert(Task::Table(name), again);
                }
            }
        }
    }
    info!("signal: stopping");
    drop(watcher);
    upkeeper.stop().await;
    if let Some(freshness) = freshness {
        freshness.abort();
    }
    if let Some(lineage) = lineage {
        lineage.close(Duration::from_secs(5)).await;
    }
    server.abort();
    Ok(())
}

/// Where sources and tables with a `freshness_sla_secs` stand, looked at every quarter of
/// the shortest SLA (between 1 and 30 s) on a task of its own: the freshness metrics, and
/// `freshness_breached` alerts. `None` when nothing has an SLA.
fn watch_freshness(
    pipeline: Arc<Pipeline>,
    metrics: Arc<Metrics>,
    alerter: Option<Arc<Alerter>>,
    live: Arc<Live>,
) -> Option<tokio::task::JoinHandle<()>> {
    let config = &pipeline.config;
    let shortest = config
        .sources
        .values()
        .filter_map(|s| s.freshness_sla_secs())
        .chain(config.tables.values().filter_map(|t| t.freshness_sla_secs))
        .min()?;
    let every = Duration::from_secs((shortest / 4).clamp(1, 30));
    Some(tokio::spawn(async move {
        let mut tick = tokio::time::interval(every);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            // Until the first run ends, the history's last successes may be old: a table
            // that ran minutes before a restart is not reported stale.
            if !live.first_run_done.load(std::sync::atomic::Ordering::SeqCst) {
                continue;
            }
            // No backlogs: a freshness check lists no source.
            match inlet_engine::status::status_of(&pipeline, None).await {
                Ok(mut rows) => {
                    live.apply(&mut rows);
                    metrics.freshness(&rows);
                    if let Some(alerter) = &alerter {
                        alerter.observe(&alerts::signals_of_status(&rows));
                    }
                }
                Err(err) => warn!(error = %err, "freshness not read"),
            }
        }
    }))
}

async fn sleep_until_or_forever(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

/// Marks the watched sources under any of `paths` (all of them when the event names none).
fn mark(roots: &[(String, PathBuf)], paths: &[PathBuf], dirty: &mut BTreeSet<String>) {
    for (name, root) in roots {
        if paths.is_empty() || paths.iter().any(|p| p.starts_with(root) || root.starts_with(p)) {
            dirty.insert(name.clone());
        }
    }
}

/// Watches the roots it can; keeps the others for later.
fn watch(watcher: &mut notify::RecommendedWatcher, unwatched: &mut Vec<(String, PathBuf)>) {
    unwatched.retain(|(name, root)| match watcher.watch(root, RecursiveMode::Recursive) {
        Ok(()) => false,
        Err(err) => {
            warn!(source = %name, root = %root.display(), error = %err, "not watched yet; listing only");
            true
        }
    });
}

/// One run: the `sources`, the tables due on their schedule, and every table refreshed on
/// upstream commits (those with nothing new upstream finish at once, up to date).
fn run_options(pipeline: &Pipeline, sources: &BTreeSet<String>, due_tables: &BTreeSet<String>) -> RunOptions {
    let config = &pipeline.config;
    let mut select: Vec<String> = config
        .sources
        .iter()
        .filter(|(name, _)| sources.contains(*name))
        .map(|(_, source)| source.target().to_owned())
        .collect();
    select.extend(
        pipeline
            .dag
            .order()
            .iter()
            .filter(|t| {
                due_tables.contains(*t)
                    || config.tables.get(*t).is_some_and(|table| table.refresh == Refresh::OnUpstream)
            })
            .cloned(),
    );
    RunOptions {
        select,
        settle: true,
        jobs: config.pipeline.serve.max_concurrent_tasks,
        // Serve looks often: the history keeps what did something or failed.
        record_idle: false,
        // The next poll takes what a queue still holds, after the tables had their turn.
        drain: false,
        ..RunOptions::default()
    }
}

async fn health(State(shared): State<Arc<Shared>>) -> String {
    let open = shared.live.open_circuits.lock().map(|o| o.clone()).unwrap_or_default();
    if open.is_empty() { "ok\n".to_owned() } else { format!("ok\nopen circuits: {}\n", open.join(", ")) }
}

async fn ready(State(shared): State<Arc<Shared>>) -> (StatusCode, String) {
    let failing: Vec<String> = shared
        .failing
        .lock()
        .map(|f| f.iter().map(|(source, why)| format!("{source}: {why}")).collect())
        .unwrap_or_default();
    if failing.is_empty() {
        (StatusCode::OK, "ready\n".to_owned())
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, format!("failing sources:\n{}\n", failing.join("\n")))
    }
}

async fn metrics(State(shared): State<Arc<Shared>>) -> ([(axum::http::header::HeaderName, &'static str); 1], String) {
    (
        [(axum::http::header::CONTENT_TYPE, "application/openmetrics-text; version=1.0.0; charset=utf-8")],
        shared.metrics.encode(),
    )
}
