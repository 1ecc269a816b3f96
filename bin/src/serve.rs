//! `inlet serve`: keeps the lake fresh until SIGINT or SIGTERM.
//!
//! File events (`notify`) are hints that something may have arrived; a periodic listing per
//! source catches what events miss. A trigger waits out the shortest `debounce_ms`, takes
//! every other trigger that came meanwhile (a burst is one run), and runs the pipeline: the
//! sources take only files that have not changed for their `debounce_ms` (a file still
//! being written is left for a re-check), then the derived tables refresh in DAG order
//! (those with nothing new upstream are skipped). Each run is `inlet run`: exactly once
//! comes from the tables' ledgers, so a restart needs no state of its own. A signal stops
//! taking work; a run in progress finishes its commits first.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::Context;
use axum::Router;
use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::get;
use inlet_engine::run::{Pipeline, Quiet, RunOptions};
use notify::{RecursiveMode, Watcher};
use tokio::signal::unix::{SignalKind, signal};
use tracing::{info, warn};

use crate::metrics::Metrics;

struct Shared {
    metrics: Metrics,
    /// Sources whose last run failed, with why.
    failing: Mutex<Vec<String>>,
    /// Sources skipped for a cool-down after failing `max_attempts` times in a row.
    open_circuits: Mutex<Vec<String>>,
}

/// A source's run of failures.
#[derive(Default)]
struct Health {
    failures: u32,
    open_until: Option<tokio::time::Instant>,
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

/// Runs until a signal; returns once the last run has finished.
pub async fn serve(pipeline: Pipeline) -> anyhow::Result<()> {
    let listen: SocketAddr = pipeline
        .config
        .pipeline
        .serve
        .listen
        .parse()
        .with_context(|| format!("`pipeline.serve.listen` = `{}`", pipeline.config.pipeline.serve.listen))?;
    let shared = Arc::new(Shared {
        metrics: Metrics::new(),
        failing: Mutex::new(Vec::new()),
        open_circuits: Mutex::new(Vec::new()),
    });
    let listener = tokio::net::TcpListener::bind(listen).await.with_context(|| format!("listening on {listen}"))?;
    let address = listener.local_addr()?;
    let app = Router::new()
        .route("/health", get(health))
        .route("/ready", get(ready))
        .route("/metrics", get(metrics))
        .with_state(shared.clone());
    let server = tokio::spawn(async move { axum::serve(listener, app).await });
    println!("inlet serve: listening on http://{address}");

    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<()>();
    let events = tx.clone();
    let mut watcher = notify::recommended_watcher(move |event: notify::Result<notify::Event>| {
        if event.is_ok() {
            let _ = events.send(());
        }
    })?;
    // Roots not watched yet (a directory that does not exist yet is watched once it does;
    // until then the listings and the retries find its files).
    let mut unwatched = Vec::new();
    let mut debounce_ms = u64::MAX;
    let mut reconcile_secs = u64::MAX;
    for (name, source) in &pipeline.config.sources {
        unwatched.push((name.clone(), inlet_engine::config::resolve_path(&pipeline.base_dir, &source.path)));
        debounce_ms = debounce_ms.min(source.debounce_ms);
        reconcile_secs = reconcile_secs.min(source.reconcile_interval_secs);
    }
    watch(&mut watcher, &mut unwatched);
    let retry = pipeline.config.pipeline.retry.clone();
    let mut health: std::collections::HashMap<String, Health> = std::collections::HashMap::new();
    let debounce = Duration::from_millis(if debounce_ms == u64::MAX { 200 } else { debounce_ms });
    let mut reconcile =
        tokio::time::interval(Duration::from_secs(if reconcile_secs == u64::MAX { 300 } else { reconcile_secs }));
    reconcile.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut terminate = signal(SignalKind::terminate())?;
    let mut interrupt = signal(SignalKind::interrupt())?;
    // When to look again without an event: files left unsettled, a retry, a circuit closing.
    let mut recheck: Option<tokio::time::Instant> = None;

    loop {
        let until = recheck.unwrap_or_else(|| tokio::time::Instant::now() + Duration::from_secs(3600));
        tokio::select! {
            _ = terminate.recv() => break,
            _ = interrupt.recv() => break,
            _ = reconcile.tick() => {}
            _ = tokio::time::sleep_until(until), if recheck.is_some() => {}
            Some(()) = rx.recv() => {}
        }
        // Let the burst land, then take it in one run.
        tokio::select! {
            _ = terminate.recv() => break,
            _ = interrupt.recv() => break,
            _ = tokio::time::sleep(debounce) => {}
        }
        while rx.try_recv().is_ok() {}
        recheck = None;
        let now = tokio::time::Instant::now();
        let mut open = Vec::new();
        for (name, state) in &mut health {
            match state.open_until {
                Some(until) if until > now => {
                    open.push(name.clone());
                    recheck = Some(recheck.map_or(until, |r| r.min(until)));
                }
                Some(_) => {
                    state.open_until = None;
                    shared.metrics.circuit(name, false);
                }
                None => {}
            }
        }
        if let Ok(mut slot) = shared.open_circuits.lock() {
            slot.clone_from(&open);
        }
        let options = options_without(&pipeline, &open);
        match inlet_engine::run::run(&pipeline, &inlet_connectors::Connectors, Arc::new(Quiet), &options).await {
            Ok(report) => {
                shared.metrics.record(&report);
                let failing: Vec<String> = report
                    .sources
                    .iter()
                    .filter_map(|s| s.error.as_ref().map(|e| format!("{}: {}", s.source, e.message)))
                    .collect();
                if let Ok(mut slot) = shared.failing.lock() {
                    *slot = failing;
                }
                let unsettled: usize = report.sources.iter().map(|s| s.files_unsettled).sum();
                let committed = report.sources.iter().map(|s| s.commits.len()).sum::<usize>();
                info!(load = %report.load_id, committed, unsettled, "run done");
                let mut soon = |at: tokio::time::Instant| recheck = Some(recheck.map_or(at, |r| r.min(at)));
                if unsettled > 0 {
                    soon(tokio::time::Instant::now() + debounce);
                }
                for source in &report.sources {
                    let state = health.entry(source.source.clone()).or_default();
                    match &source.error {
                        Some(error) if error.retryable => {
                            state.failures += 1;
                            if state.failures >= retry.max_attempts {
                                warn!(source = %source.source, failures = state.failures, "circuit open");
                                let until = tokio::time::Instant::now() + Duration::from_secs(retry.max_backoff_secs);
                                state.open_until = Some(until);
                                state.failures = 0;
                                shared.metrics.circuit(&source.source, true);
                                if let Ok(mut open) = shared.open_circuits.lock() {
                                    open.push(source.source.clone());
                                }
                                soon(until);
                            } else {
                                shared.metrics.retry(&source.source);
                                soon(tokio::time::Instant::now() + backoff(&retry, state.failures));
                            }
                        }
                        // Not retryable (the input needs a decision): wait for new input.
                        Some(_) | None => state.failures = 0,
                    }
                }
                watch(&mut watcher, &mut unwatched);
            }
            Err(err) => {
                warn!(error = %err, "run failed");
                shared.metrics.record_error();
            }
        }
    }
    info!("signal: stopping");
    drop(watcher);
    server.abort();
    Ok(())
}

/// Watches the roots it can; keeps the others for later.
fn watch(watcher: &mut notify::RecommendedWatcher, unwatched: &mut Vec<(String, std::path::PathBuf)>) {
    unwatched.retain(|(name, root)| match watcher.watch(root, RecursiveMode::Recursive) {
        Ok(()) => false,
        Err(err) => {
            warn!(source = %name, root = %root.display(), error = %err, "not watched yet; listing only");
            true
        }
    });
}

/// Run options that leave out the sources whose circuit is open.
fn options_without(pipeline: &Pipeline, open: &[String]) -> RunOptions {
    let mut options = RunOptions { settle: true, ..RunOptions::default() };
    if open.is_empty() {
        return options;
    }
    let mut select: Vec<String> = pipeline
        .config
        .sources
        .iter()
        .filter(|(name, _)| !open.contains(name))
        .map(|(_, source)| source.target().to_owned())
        .collect();
    select.extend(pipeline.dag.order().iter().cloned());
    if select.is_empty() {
        // Nothing else to run: select a name no table has, so nothing runs.
        select.push(String::from("__inlet_nothing"));
    }
    options.select = select;
    options
}

async fn health(State(shared): State<Arc<Shared>>) -> String {
    let open = shared.open_circuits.lock().map(|o| o.clone()).unwrap_or_default();
    if open.is_empty() { "ok\n".to_owned() } else { format!("ok\nopen circuits: {}\n", open.join(", ")) }
}

async fn ready(State(shared): State<Arc<Shared>>) -> (StatusCode, String) {
    let failing = shared.failing.lock().map(|f| f.clone()).unwrap_or_default();
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
