//! `/api/`: the dashboard's data as JSON, each from the function the CLI uses for it.
//!
//! - `GET /api/pipeline`: every source and table with its status (as `inlet status
//!   --output json`), whether it runs now, and the edges of the graph.
//! - `GET /api/status`: `inlet status --output json`.
//! - `GET /api/tables/<name>?before=<version>&limit=<n>`: the table's schema, its upstream and
//!   downstream, and a page of its versions (as `inlet history --output json`), newest first;
//!   `next_before` pages on.
//! - `GET /api/runs?status=&table=&kind=&since=&until=&limit=&offset=`: a page of the run
//!   history (as `inlet runs --output json`), newest first; `more` says whether one follows.
//! - `GET /api/quarantine`: every table's quarantined rows by reason (as `inlet quarantine`).
//! - `GET /api/quarantine/<table>?reason=&limit=`: sample rows of one reason.

use std::collections::BTreeMap;
use std::sync::Arc;

use arrow::record_batch::RecordBatch;
use axum::Json;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use inlet_engine::audit::{RunFilter, RunRecord, VersionRecord};
use inlet_engine::status::Status;
use serde::{Deserialize, Serialize};

use super::Dashboard;

/// Versions on one page of a table, at most.
pub const MAX_PAGE: usize = 500;
/// The furthest a runs page may start (a page further on is asked for by time).
pub const MAX_OFFSET: usize = 10_000_000;
/// Versions on one page of a table, unless asked otherwise.
pub const DEFAULT_VERSIONS: usize = 50;

/// A failure of the API: its status and message.
pub struct ApiError(pub StatusCode, pub String);

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        (self.0, Json(serde_json::json!({ "error": self.1 }))).into_response()
    }
}

impl From<inlet_engine::EngineError> for ApiError {
    fn from(err: inlet_engine::EngineError) -> ApiError {
        let status = match err.kind() {
            inlet_engine::ErrorKind::User => StatusCode::BAD_REQUEST,
            _ => StatusCode::INTERNAL_SERVER_ERROR,
        };
        ApiError(status, err.to_string())
    }
}

type ApiResult<T> = Result<T, ApiError>;

/// One node of the graph: a source (its bronze table) or a derived table.
#[derive(Debug, Serialize)]
pub struct Node {
    #[serde(flatten)]
    pub status: Status,
    /// Part of the run in progress (`inlet serve`).
    pub running: bool,
    /// The tables it reads (derived tables).
    pub upstream: Vec<String>,
    /// How far behind its database a CDC source's last run under serve began.
    pub lag: Option<inlet_engine::source::Lag>,
}

#[derive(Debug, Serialize)]
pub struct PipelineView {
    pub pipeline: String,
    pub nodes: Vec<Node>,
    /// `[from, to]` by table name.
    pub edges: Vec<(String, String)>,
    pub open_circuits: Vec<String>,
}

pub async fn pipeline_view(dashboard: &Dashboard) -> ApiResult<PipelineView> {
    let pipeline = &dashboard.pipeline;
    let rows = status_rows(dashboard).await?;
    let running = dashboard.running();
    let mut edges = Vec::new();
    let nodes = rows
        .into_iter()
        .map(|status| {
            let upstream: Vec<String> = match status.kind {
                "table" => pipeline.dag.upstream(&status.name).cloned().collect(),
                _ => Vec::new(),
            };
            edges.extend(upstream.iter().map(|u| (u.clone(), status.table.clone())));
            let lag = match status.kind {
                "source" => dashboard.live.as_ref().and_then(|l| l.lag.lock().ok()?.get(&status.name).copied()),
                _ => None,
            };
            Node { running: running.contains(&status.name), status, upstream, lag }
        })
        .collect();
    let open_circuits =
        dashboard.live.as_ref().and_then(|l| l.open_circuits.lock().ok().map(|o| o.clone())).unwrap_or_default();
    Ok(PipelineView { pipeline: pipeline.config.pipeline.name.clone(), nodes, edges, open_circuits })
}

pub async fn pipeline(State(dashboard): State<Arc<Dashboard>>) -> ApiResult<Json<PipelineView>> {
    pipeline_view(&dashboard).await.map(Json)
}

pub async fn status(State(dashboard): State<Arc<Dashboard>>) -> ApiResult<Json<Vec<Status>>> {
    status_rows(&dashboard).await.map(Json)
}

/// `inlet status`'s rows (the backlogs as listed at most 30 s ago), with what serve saw
/// succeed that the run history leaves out.
async fn status_rows(dashboard: &Dashboard) -> ApiResult<Vec<Status>> {
    let mut rows = inlet_engine::status::status_of(&dashboard.pipeline, None).await?;
    let backlogs = dashboard.backlogs().await?;
    for row in rows.iter_mut().filter(|r| r.kind == "source") {
        row.backlog_files = backlogs.get(&row.name).copied().flatten();
    }
    if let Some(live) = &dashboard.live {
        live.apply(&mut rows);
    }
    Ok(rows)
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VersionsQuery {
    pub before: Option<i64>,
    pub limit: Option<usize>,
}

#[derive(Debug, Serialize)]
pub struct Column {
    pub name: String,
    #[serde(rename = "type")]
    pub data_type: String,
    pub nullable: bool,
}

#[derive(Debug, Serialize)]
pub struct TableView {
    pub name: String,
    /// The source that lands it (bronze tables).
    pub source: Option<String>,
    pub version: Option<i64>,
    pub schema: Vec<Column>,
    pub upstream: Vec<String>,
    pub downstream: Vec<String>,
    /// The query (derived tables).
    pub sql: Option<String>,
    pub freshness_sla_secs: Option<u64>,
    /// Newest first.
    pub versions: Vec<VersionRecord>,
    /// `before` of the next (older) page, when there is one.
    pub next_before: Option<i64>,
}

/// Whether `name` is one of the pipeline's tables (a source's or a derived one).
fn known_table(dashboard: &Dashboard, name: &str) -> ApiResult<()> {
    let config = &dashboard.pipeline.config;
    if config.sources.values().any(|s| s.target() == name) || config.tables.contains_key(name) {
        Ok(())
    } else {
        Err(ApiError(StatusCode::NOT_FOUND, format!("`{name}` is not a table of pipeline `{}`", config.pipeline.name)))
    }
}

pub async fn table_view(dashboard: &Dashboard, name: &str, query: &VersionsQuery) -> ApiResult<TableView> {
    known_table(dashboard, name)?;
    let pipeline = &dashboard.pipeline;
    let limit = query.limit.unwrap_or(DEFAULT_VERSIONS).clamp(1, MAX_PAGE);
    let table = inlet_engine::query::open(&pipeline.lake, name).await?;
    let versions = inlet_engine::audit::history_page(&pipeline.lake, &table, query.before, limit).await?;
    let next_before = versions.last().map(|r| r.version).filter(|v| *v > 0);
    let schema = table
        .arrow_schema()?
        .map(|s| {
            s.fields()
                .iter()
                .map(|f| Column {
                    name: f.name().clone(),
                    data_type: f.data_type().to_string(),
                    nullable: f.is_nullable(),
                })
                .collect()
        })
        .unwrap_or_default();
    let config = pipeline.config.tables.get(name);
    // The query the pipeline loaded (and runs), not the file as it may be now.
    let sql = match pipeline.dag.node(name) {
        Some(inlet_engine::dag::NodeKind::Table { sql }) => Some(sql.clone()),
        _ => None,
    };
    let source = pipeline.source_for_table(name);
    Ok(TableView {
        name: name.to_owned(),
        source: source.map(|(n, _)| n.clone()),
        version: table.version(),
        schema,
        upstream: pipeline.dag.upstream(name).cloned().collect(),
        downstream: pipeline.dag.downstream(name).cloned().collect(),
        sql,
        freshness_sla_secs: config
            .and_then(|c| c.freshness_sla_secs)
            .or_else(|| source.and_then(|(_, s)| s.freshness_sla_secs())),
        versions,
        next_before,
    })
}

pub async fn table(
    State(dashboard): State<Arc<Dashboard>>,
    Path(name): Path<String>,
    Query(query): Query<VersionsQuery>,
) -> ApiResult<Json<TableView>> {
    table_view(&dashboard, &name, &query).await.map(Json)
}

#[derive(Debug, Default, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct RunsQuery {
    pub status: Option<String>,
    pub table: Option<String>,
    pub kind: Option<String>,
    /// RFC 3339 times or dates.
    pub since: Option<String>,
    pub until: Option<String>,
    pub limit: Option<usize>,
    pub offset: Option<usize>,
}

#[derive(Debug, Serialize)]
pub struct RunsView {
    pub runs: Vec<RunRecord>,
    pub offset: usize,
    pub limit: usize,
    pub more: bool,
}

/// A time parameter in microseconds.
fn micros(key: &str, text: Option<&str>) -> ApiResult<Option<i64>> {
    let Some(text) = text.filter(|t| !t.is_empty()) else { return Ok(None) };
    match inlet_engine::query::AsOf::parse(text) {
        Ok(inlet_engine::query::AsOf::Time(at)) => Ok(Some(at.timestamp_micros())),
        _ => Err(ApiError(StatusCode::BAD_REQUEST, format!("`{key}`: `{text}` is not an RFC 3339 time or a date"))),
    }
}

pub async fn runs_view(dashboard: &Dashboard, query: &RunsQuery) -> ApiResult<RunsView> {
    let nonempty = |v: &Option<String>| v.clone().filter(|s| !s.is_empty());
    let filter = RunFilter {
        status: nonempty(&query.status),
        name: nonempty(&query.table),
        kind: nonempty(&query.kind),
        since_micros: micros("since", query.since.as_deref())?,
        until_micros: micros("until", query.until.as_deref())?,
    };
    let limit = query.limit.unwrap_or(DEFAULT_VERSIONS).clamp(1, MAX_PAGE);
    let offset = query.offset.unwrap_or(0);
    if offset > MAX_OFFSET {
        return Err(ApiError(
            StatusCode::BAD_REQUEST,
            format!("`offset`: at most {MAX_OFFSET}; filter by time instead"),
        ));
    }
    let (runs, more) = inlet_engine::audit::runs(&dashboard.pipeline.lake, &filter, limit, offset).await?;
    Ok(RunsView { runs, offset, limit, more })
}

pub async fn runs(
    State(dashboard): State<Arc<Dashboard>>,
    Query(query): Query<RunsQuery>,
) -> ApiResult<Json<RunsView>> {
    runs_view(&dashboard, &query).await.map(Json)
}

/// The quarantined rows of each of the pipeline's tables, by reason (tables with none left
/// out).
pub async fn quarantine_view(dashboard: &Dashboard) -> ApiResult<BTreeMap<String, Vec<serde_json::Value>>> {
    let config = &dashboard.pipeline.config;
    let tables: Vec<String> =
        config.sources.values().map(|s| s.target().to_owned()).chain(config.tables.keys().cloned()).collect();
    let mut out = BTreeMap::new();
    for table in tables {
        let (_, batches) = inlet_engine::quarantine::summary(&dashboard.pipeline.lake, &table).await?;
        let rows = rows_json(&batches)?;
        if !rows.is_empty() {
            out.insert(table, rows);
        }
    }
    Ok(out)
}

pub async fn quarantine(
    State(dashboard): State<Arc<Dashboard>>,
) -> ApiResult<Json<BTreeMap<String, Vec<serde_json::Value>>>> {
    quarantine_view(&dashboard).await.map(Json)
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SamplesQuery {
    pub reason: Option<String>,
    pub limit: Option<usize>,
}

/// Sample rows of `table`'s quarantine for one reason (the first reason when none is given).
pub async fn samples_view(dashboard: &Dashboard, table: &str, query: &SamplesQuery) -> ApiResult<serde_json::Value> {
    known_table(dashboard, table)?;
    let lake = &dashboard.pipeline.lake;
    let reason = match &query.reason {
        Some(reason) => reason.clone(),
        None => {
            let (_, batches) = inlet_engine::quarantine::summary(lake, table).await?;
            match rows_json(&batches)?.first().and_then(|r| r["reason"].as_str().map(str::to_owned)) {
                Some(reason) => reason,
                None => return Ok(serde_json::json!({ "table": table, "reason": null, "columns": [], "rows": [] })),
            }
        }
    };
    let limit = query.limit.unwrap_or(20).clamp(1, 200);
    let (schema, batches) = inlet_engine::quarantine::samples(lake, table, &reason, limit).await?;
    // The columns from the schema: a row's JSON leaves its nulls out.
    let columns: Vec<&String> = schema.fields().iter().map(|f| f.name()).collect();
    Ok(serde_json::json!({ "table": table, "reason": reason, "columns": columns, "rows": rows_json(&batches)? }))
}

pub async fn quarantine_samples(
    State(dashboard): State<Arc<Dashboard>>,
    Path(name): Path<String>,
    Query(query): Query<SamplesQuery>,
) -> ApiResult<Json<serde_json::Value>> {
    samples_view(&dashboard, &name, &query).await.map(Json)
}

/// Rows of `batches` as JSON objects.
pub fn rows_json(batches: &[RecordBatch]) -> ApiResult<Vec<serde_json::Value>> {
    let mut writer = arrow_json::ArrayWriter::new(Vec::new());
    let batches: Vec<&RecordBatch> = batches.iter().filter(|b| b.num_rows() > 0).collect();
    if batches.is_empty() {
        return Ok(Vec::new());
    }
    let internal =
        |e: &dyn std::fmt::Display| ApiError(StatusCode::INTERNAL_SERVER_ERROR, format!("rows as JSON: {e}"));
    writer.write_batches(&batches).map_err(|e| internal(&e))?;
    writer.finish().map_err(|e| internal(&e))?;
    serde_json::from_slice(&writer.into_inner()).map_err(|e| internal(&e))
}
