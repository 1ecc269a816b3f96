//! The dashboard: pages rendered on the server (`/`, `/tables/<name>`, `/runs`,
//! `/quarantine`) and the JSON they are made of under `/api/`. Read-only: only `GET`, and
//! the data comes from the functions the CLI uses (`status`, `history`, `runs`,
//! `quarantine`). No script and nothing fetched from elsewhere: each page is one HTML
//! document with its CSS and SVG inline.
//!
//! `inlet serve` mounts it on its listener; `inlet ui` serves it alone. Requests from
//! loopback pass; others need `Authorization: Bearer <token>` when `pipeline.serve.token`
//! names one.

mod api;
mod graph;
mod html;
mod pages;

use std::collections::{BTreeSet, HashMap};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use anyhow::Context;
use axum::Router;
use axum::extract::{ConnectInfo, Request, State};
use axum::http::{StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use inlet_engine::run::Pipeline;
use tracing::warn;

/// What a running `inlet serve` knows that the lake does not (yet).
#[derive(Default)]
pub struct Live {
    /// Sources and tables of the run in progress.
    pub running: Mutex<BTreeSet<String>>,
    /// Sources sitting out a cool-down.
    pub open_circuits: Mutex<Vec<String>>,
    /// When each table last ran successfully, microseconds: serve's runs that found nothing
    /// new are not in the run history, yet they keep a table fresh.
    pub last_success: Mutex<HashMap<String, i64>>,
    /// Whether a run has ended since the process started (until then, what the history
    /// says of the tables is all there is, and may be old).
    pub first_run_done: std::sync::atomic::AtomicBool,
    /// How far behind its database each CDC source's last run began.
    pub lag: Mutex<HashMap<String, inlet_engine::source::Lag>>,
}

impl Live {
    /// A run ended: its tables that committed or were up to date ran successfully.
    pub fn ran(&self, report: &inlet_engine::run::RunReport) {
        use inlet_engine::transform::TableStatus;
        self.first_run_done.store(true, std::sync::atomic::Ordering::SeqCst);
        if let Ok(mut lag) = self.lag.lock() {
            for source in &report.sources {
                if let Some(behind) = source.lag {
                    lag.insert(source.source.clone(), behind);
                }
            }
        }
        let Ok(mut last) = self.last_success.lock() else { return };
        for table in &report.tables {
            if matches!(table.status, TableStatus::Committed | TableStatus::UpToDate) {
                let ended = table.ended_micros();
                let slot = last.entry(table.table.clone()).or_insert(ended);
                *slot = (*slot).max(ended);
            }
        }
    }

    /// `rows` with what this process saw succeed.
    pub fn apply(&self, rows: &mut [inlet_engine::status::Status]) {
        let now_ms = chrono::Utc::now().timestamp_millis();
        let Ok(last) = self.last_success.lock() else { return };
        for row in rows.iter_mut().filter(|r| r.kind == "table") {
            if let Some(micros) = last.get(&row.name) {
                row.saw_success(*micros, now_ms);
            }
        }
    }
}

/// Files each file source holds that its ledger does not, by source.
type Backlogs = HashMap<String, Option<usize>>;

/// How long a listing of the sources' backlogs is shown before they are listed again.
const BACKLOG_TTL: std::time::Duration = std::time::Duration::from_secs(30);

/// The dashboard's state.
pub struct Dashboard {
    pub pipeline: Arc<Pipeline>,
    pub live: Option<Arc<Live>>,
    /// The sources' backlogs and when they were listed: a page lists each source at most
    /// every [`BACKLOG_TTL`], not at every request.
    backlogs: tokio::sync::Mutex<Option<(std::time::Instant, Backlogs)>>,
    /// The bearer token requests from elsewhere than loopback must carry.
    token: Option<String>,
}

impl Dashboard {
    /// The dashboard of `pipeline`; its token is read from the environment the pipeline
    /// carries (`pipeline.serve.token = "${env:NAME}"`).
    pub fn new(pipeline: Arc<Pipeline>, live: Option<Arc<Live>>) -> anyhow::Result<Dashboard> {
        let token = match pipeline.config.pipeline.serve.token.as_deref() {
            None => None,
            // Validation has made sure the token is a `${env:NAME}` reference.
            Some(reference) => Some(pipeline.env.resolve(reference).map_err(|name| {
                anyhow::anyhow!("`pipeline.serve.token`: the environment variable `{name}` is not set")
            })?),
        };
        Ok(Dashboard { pipeline, live, token, backlogs: tokio::sync::Mutex::new(None) })
    }

    /// Each file source's backlog, listed at most every [`BACKLOG_TTL`].
    async fn backlogs(&self) -> inlet_engine::Result<Backlogs> {
        let mut cached = self.backlogs.lock().await;
        if let Some((at, backlogs)) = cached.as_ref()
            && at.elapsed() < BACKLOG_TTL
        {
            return Ok(backlogs.clone());
        }
        let backlogs = inlet_engine::status::backlogs(&self.pipeline, &inlet_connectors::Connectors).await?;
        *cached = Some((std::time::Instant::now(), backlogs.clone()));
        Ok(backlogs)
    }

    /// Whether sources or tables are running now.
    fn running(&self) -> BTreeSet<String> {
        self.live.as_ref().and_then(|l| l.running.lock().ok().map(|r| r.clone())).unwrap_or_default()
    }
}

/// The dashboard's routes (pages and `/api/`), behind the token check.
pub fn router(dashboard: Arc<Dashboard>) -> Router {
    Router::new()
        .route("/", get(pages::pipeline))
        .route("/tables/{name}", get(pages::table))
        .route("/runs", get(pages::runs))
        .route("/quarantine", get(pages::quarantine))
        .route("/api/pipeline", get(api::pipeline))
        .route("/api/status", get(api::status))
        .route("/api/tables/{name}", get(api::table))
        .route("/api/runs", get(api::runs))
        .route("/api/quarantine", get(api::quarantine))
        .route("/api/quarantine/{name}", get(api::quarantine_samples))
        .route_layer(axum::middleware::from_fn_with_state(dashboard.clone(), authorize))
        .with_state(dashboard)
}

/// Loopback passes; anything else needs the bearer token, when there is one.
async fn authorize(
    State(dashboard): State<Arc<Dashboard>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    request: Request,
    next: Next,
) -> Response {
    if peer.ip().to_canonical().is_loopback() {
        return next.run(request).await;
    }
    let Some(token) = &dashboard.token else {
        return next.run(request).await;
    };
    let given = request.headers().get(header::AUTHORIZATION).and_then(|v| v.to_str().ok());
    match given.and_then(|v| v.strip_prefix("Bearer ")) {
        Some(bearer) if constant_time_eq(bearer.as_bytes(), token.as_bytes()) => next.run(request).await,
        _ => (StatusCode::UNAUTHORIZED, [(header::WWW_AUTHENTICATE, "Bearer")], "a bearer token is needed\n")
            .into_response(),
    }
}

/// Compares without returning early on the first difference.
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// Whether the dashboard on `address` would be open to the network: beyond loopback,
/// without a token.
pub fn exposed(address: SocketAddr, dashboard: &Dashboard) -> bool {
    !address.ip().to_canonical().is_loopback() && dashboard.token.is_none()
}

/// `inlet ui`: the dashboard alone, read-only, until SIGINT or SIGTERM.
pub async fn serve_read_only(pipeline: Pipeline, listen: Option<String>) -> anyhow::Result<()> {
    let open_allowed = pipeline.config.pipeline.serve.dashboard == Some(true);
    let listen = listen.unwrap_or_else(|| pipeline.config.pipeline.serve.listen.clone());
    let address: SocketAddr = listen.parse().with_context(|| format!("--listen `{listen}`"))?;
    let dashboard = Arc::new(Dashboard::new(Arc::new(pipeline), None)?);
    let listener = tokio::net::TcpListener::bind(address).await.with_context(|| format!("listening on {address}"))?;
    let address = listener.local_addr()?;
    if exposed(address, &dashboard) {
        // As serve does: open to the network only when asked for in so many words.
        anyhow::ensure!(
            open_allowed,
            "the dashboard would be open beyond loopback on {address}: set `pipeline.serve.token` (or `pipeline.serve.dashboard = true` to serve it open)"
        );
        warn!(%address, "the dashboard listens beyond loopback without `pipeline.serve.token`: anyone who reaches it can read it");
    }
    println!("inlet ui: http://{address}/");
    let app = router(dashboard).into_make_service_with_connect_info::<SocketAddr>();
    let mut terminate = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    axum::serve(listener, app)
        .with_graceful_shutdown(async move {
            tokio::select! {
                _ = terminate.recv() => {}
                _ = tokio::signal::ctrl_c() => {}
            }
        })
        .await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_compare_whole() {
        assert!(constant_time_eq(b"abc", b"abc"));
        assert!(!constant_time_eq(b"abc", b"abd"));
        assert!(!constant_time_eq(b"abc", b"abcd"));
    }
}
