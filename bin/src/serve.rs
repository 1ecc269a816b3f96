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
    let shared = Arc::new(Shared { metrics: Metrics::new(), failing: Mutex::new(Vec::new()) });
    let listener = tokio::net::TcpListener::bind(listen).await.with_context(|| format!("listening on {listen}"))?;
    let address = listener.local_addr()?;
    let app = Router::new()
        .route("/health", get(|| async { "ok\n" }))
        .route("/ready", get(ready))
        .route("/metrics", get(metrics))
        .with_state(shared.clone());
    let server = tokio::spawn(async move { axum::serve(listener, app).await });
    println!("inlet serve: listening on http://{address}");

    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<()>();
    let mut watchers = Vec::new();
    let mut debounce_ms = u64::MAX;
    let mut reconcile_secs = u64::MAX;
    for (name, source) in &pipeline.config.sources {
        let root = inlet_engine::config::resolve_path(&pipeline.base_dir, &source.path);
        let events = tx.clone();
        let mut watcher = notify::recommended_watcher(move |event: notify::Result<notify::Event>| {
            if event.is_ok() {
                let _ = events.send(());
            }
        })?;
        watcher
            .watch(&root, RecursiveMode::Recursive)
            .with_context(|| format!("source `{name}`: watching {}", root.display()))?;
        watchers.push(watcher);
        debounce_ms = debounce_ms.min(source.debounce_ms);
        reconcile_secs = reconcile_secs.min(source.reconcile_interval_secs);
    }
    let debounce = Duration::from_millis(if debounce_ms == u64::MAX { 200 } else { debounce_ms });
    let mut reconcile =
        tokio::time::interval(Duration::from_secs(if reconcile_secs == u64::MAX { 300 } else { reconcile_secs }));
    reconcile.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut terminate = signal(SignalKind::terminate())?;
    let mut interrupt = signal(SignalKind::interrupt())?;
    // When files were left unsettled: look again once they may be.
    let mut recheck: Option<tokio::time::Instant> = None;
    let options = RunOptions { settle: true, ..RunOptions::default() };

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
                if unsettled > 0 {
                    recheck = Some(tokio::time::Instant::now() + debounce);
                }
            }
            Err(err) => {
                warn!(error = %err, "run failed");
                shared.metrics.record_error();
            }
        }
    }
    info!("signal: stopping");
    drop(watchers);
    server.abort();
    Ok(())
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
