//! The dashboard's pages, rendered from the same views `/api/` returns.

use std::fmt::Write;
use std::sync::Arc;

use axum::extract::{Path, Query, State};
use axum::response::{Html, IntoResponse, Response};

use super::Dashboard;
use super::api::{self, ApiError, RunsQuery, SamplesQuery, VersionsQuery};
use super::html::{age, bars, esc, number, page, time, timeline, url_part};

/// A page, or the error that kept it from being made, as a page too.
fn respond(dashboard: &Dashboard, title: &str, body: Result<String, ApiError>) -> Response {
    let pipeline = &dashboard.pipeline.config.pipeline.name;
    match body {
        Ok(body) => Html(page(pipeline, title, &body)).into_response(),
        Err(ApiError(status, message)) => {
            let body = format!("<p class=\"error\" id=\"error\">{}</p>", esc(&message));
            (status, Html(page(pipeline, title, &body))).into_response()
        }
    }
}

/// `/`: the graph, then one row per source and table.
pub async fn pipeline(State(dashboard): State<Arc<Dashboard>>) -> Response {
    let body = async {
        let view = api::pipeline_view(&dashboard).await?;
        let mut body = super::graph::svg(&view);
        if !view.open_circuits.is_empty() {
            let _ = write!(body, "<p class=\"error\" id=\"circuits\">open circuits: {}</p>", esc(&view.open_circuits.join(", ")));
        }
        body.push_str(
            "<h2>Sources and tables</h2><table id=\"nodes\"><tr><th>kind</th><th>name</th><th>table</th><th>version</th>\
             <th>last run</th><th>age</th><th>SLA</th><th>backlog</th><th>rows</th><th>quarantined</th><th>last success</th><th>last error</th></tr>",
        );
        for node in &view.nodes {
            let s = &node.status;
            let state = super::graph::state(node);
            let _ = write!(
                body,
                "<tr class=\"{state}\" data-name=\"{name}\"><td>{kind}</td><td>{name}</td><td><a href=\"/tables/{href}\">{table}</a></td>\
                 <td class=\"num\">{version}</td><td>{state}</td><td class=\"num{stale}\">{age}</td><td class=\"num\">{sla}</td>\
                 <td class=\"num\">{backlog}</td><td class=\"num\">{rows}</td><td class=\"num\">{quarantined}</td><td>{success}</td>\
                 <td class=\"error\">{error}</td></tr>",
                kind = s.kind,
                name = esc(&s.name),
                href = url_part(&s.table),
                table = esc(&s.table),
                version = number(s.table_version),
                stale = if s.stale { " stale" } else { "" },
                age = age(s.age_secs) + if s.stale { " (stale)" } else { "" },
                sla = s.freshness_sla_secs.map_or_else(|| "-".to_owned(), |v| age(Some(v as i64))),
                backlog = s.backlog_files.map_or_else(|| "-".to_owned(), |b| b.to_string()),
                rows = number(s.last_rows),
                quarantined = number(s.last_quarantined),
                success = time(s.last_success_micros),
                error = esc(s.last_error.as_deref().unwrap_or("")),
            );
        }
        body.push_str("</table>");
        Ok(body)
    }
    .await;
    respond(&dashboard, "Pipeline", body)
}

/// `/tables/<name>`: versions over time, what each did, charts, the schema.
pub async fn table(
    State(dashboard): State<Arc<Dashboard>>,
    Path(name): Path<String>,
    Query(query): Query<VersionsQuery>,
) -> Response {
    let body = async {
        let view = api::table_view(&dashboard, &name, &query).await?;
        let mut body = String::new();
        let _ = write!(
            body,
            "<p id=\"summary\">version <b>{}</b>{}{} · upstream: {} · downstream: {}</p>",
            number(view.version),
            view.source.as_deref().map(|s| format!(" · source <b>{}</b>", esc(s))).unwrap_or_default(),
            view.freshness_sla_secs.map(|s| format!(" · freshness SLA {}", age(Some(s as i64)))).unwrap_or_default(),
            links(&view.upstream),
            links(&view.downstream),
        );
        let oldest_first: Vec<_> = view.versions.iter().rev().collect();
        let points: Vec<(i64, i64, &'static str)> =
            oldest_first.iter().filter_map(|r| r.timestamp_ms.map(|t| (r.version, t, version_class(r)))).collect();
        body.push_str("<h2>Versions over time</h2>");
        body.push_str(&timeline(&points));
        let rows: Vec<(String, i64)> = oldest_first.iter().map(|r| (format!("v{}", r.version), rows_written(r))).collect();
        let failures: Vec<(String, i64)> =
            oldest_first.iter().map(|r| (format!("v{}", r.version), quality_failures(r))).collect();
        body.push_str("<h2>Rows per version</h2>");
        body.push_str(&bars("rows-chart", "rows written", &rows, "#4c6ef5"));
        body.push_str("<h2>Quality failures per version</h2>");
        body.push_str(&bars("failures-chart", "rows failing an expectation", &failures, "#e03131"));
        body.push_str(
            "<h2>Versions</h2><table id=\"versions\"><tr><th>version</th><th>time</th><th>operation</th><th>rows</th>\
             <th>upstream versions</th><th>expectations</th><th>quarantined</th><th>files +/-</th><th>schema</th><th>run</th></tr>",
        );
        for record in &view.versions {
            let upstream: Vec<String> = record.upstream.iter().map(|(t, v)| format!("{t}@{v}")).collect();
            let expectations = record
                .quality
                .as_ref()
                .map(|q| {
                    q.expectations
                        .iter()
                        .map(|e| esc(&format!("{}: {} passed, {} failed ({:?})", e.name, e.passed, e.failed, e.outcome).to_lowercase()))
                        .collect::<Vec<_>>()
                        .join("<br>")
                })
                .unwrap_or_default();
            let _ = write!(
                body,
                "<tr id=\"v{v}\" class=\"{class}\" data-version=\"{v}\"><td class=\"num\">{v}</td><td>{time}</td><td>{op}</td><td>{rows}</td>\
                 <td>{upstream}</td><td>{expectations}</td><td class=\"num\">{quarantined}</td><td>{added}/{removed}</td><td>{schema}</td><td>{run}</td></tr>",
                v = record.version,
                class = version_class(record),
                time = time(record.timestamp_ms.map(|t| t * 1000)),
                op = esc(record.operation.as_deref().unwrap_or("-")),
                rows = esc(&record.rows.as_ref().map(|r| r.to_string()).unwrap_or_default()),
                upstream = esc(&upstream.join(", ")),
                expectations = expectations,
                quarantined = quarantined(record),
                added = record.files_added,
                removed = record.files_removed,
                schema = if record.schema_changed { "changed" } else { "" },
                run = esc(record.run_id.as_deref().unwrap_or("")),
            );
        }
        body.push_str("</table>");
        if let Some(before) = view.next_before {
            let _ = write!(body, "<p class=\"pager\"><a id=\"older\" href=\"/tables/{}?before={before}\">older versions</a></p>", url_part(&name));
        }
        body.push_str("<h2>Schema</h2><table id=\"schema\"><tr><th>column</th><th>type</th><th>nullable</th></tr>");
        for column in &view.schema {
            let _ = write!(
                body,
                "<tr><td>{}</td><td>{}</td><td>{}</td></tr>",
                esc(&column.name),
                esc(&column.data_type),
                column.nullable
            );
        }
        body.push_str("</table>");
        let changes: Vec<String> =
            view.versions.iter().filter(|r| r.schema_changed).map(|r| format!("<a href=\"#v{0}\">v{0}</a>", r.version)).collect();
        let _ = write!(body, "<p id=\"schema-changes\">schema or properties changed in: {}</p>", if changes.is_empty() { "none of these versions".to_owned() } else { changes.join(", ") });
        if let Some(sql) = &view.sql {
            let _ = write!(body, "<h2>Query</h2><pre id=\"sql\">{}</pre>", esc(sql));
        }
        let _ = write!(
            body,
            "<p><a href=\"/runs?table={0}\">runs of this table</a> · <a href=\"/quarantine#{0}\">its quarantine</a></p>",
            url_part(&name)
        );
        Ok(body)
    }
    .await;
    respond(&dashboard, &name, body)
}

fn links(tables: &[String]) -> String {
    if tables.is_empty() {
        return "-".to_owned();
    }
    tables.iter().map(|t| format!("<a href=\"/tables/{}\">{}</a>", url_part(t), esc(t))).collect::<Vec<_>>().join(", ")
}

/// Rows a version wrote: a source's `rows`, a derived table's inserted + updated + deleted.
fn rows_written(record: &inlet_engine::audit::VersionRecord) -> i64 {
    let Some(rows) = &record.rows else { return 0 };
    let get = |key: &str| rows.get(key).and_then(serde_json::Value::as_i64).unwrap_or(0);
    get("rows") + get("inserted") + get("updated") + get("deleted")
}

fn quarantined(record: &inlet_engine::audit::VersionRecord) -> i64 {
    let from_rows = record.rows.as_ref().and_then(|r| r.get("quarantined")).and_then(serde_json::Value::as_i64);
    from_rows.unwrap_or_else(|| {
        record.quality.as_ref().map_or(0, |q| q.expectations.iter().map(|e| e.quarantined as i64).sum())
    })
}

/// Rows that failed an expectation in a version.
fn quality_failures(record: &inlet_engine::audit::VersionRecord) -> i64 {
    record.quality.as_ref().map_or(0, |q| q.expectations.iter().map(|e| e.failed as i64).sum())
}

/// A version's colour: its expectations' outcome.
fn version_class(record: &inlet_engine::audit::VersionRecord) -> &'static str {
    match record.quality.as_ref().map(|q| q.outcome) {
        Some(inlet_quality::Outcome::Failed) => "failed",
        Some(inlet_quality::Outcome::Warned) if quarantined(record) > 0 => "quarantined",
        Some(inlet_quality::Outcome::Warned) => "warned",
        _ if quarantined(record) > 0 => "quarantined",
        _ => "ok",
    }
}

/// `/runs`: the run history, filtered, a page at a time.
pub async fn runs(State(dashboard): State<Arc<Dashboard>>, Query(query): Query<RunsQuery>) -> Response {
    let body = async {
        let view = api::runs_view(&dashboard, &query).await?;
        let value = |v: &Option<String>| esc(v.as_deref().unwrap_or(""));
        let mut body = String::new();
        let statuses = ["", "committed", "up_to_date", "failed", "skipped"];
        let options: String = statuses
            .iter()
            .map(|s| {
                let selected = if query.status.as_deref().unwrap_or("") == *s { " selected" } else { "" };
                format!("<option value=\"{s}\"{selected}>{}</option>", if s.is_empty() { "any status" } else { s })
            })
            .collect();
        let _ = write!(
            body,
            "<form id=\"filter\" method=\"get\" action=\"/runs\"><select name=\"status\">{options}</select>\
             <input name=\"table\" placeholder=\"source or table\" value=\"{table}\"><input name=\"since\" placeholder=\"since (2026-01-31)\" value=\"{since}\">\
             <input name=\"until\" placeholder=\"until\" value=\"{until}\"><button type=\"submit\">filter</button></form>",
            table = value(&query.table),
            since = value(&query.since),
            until = value(&query.until),
        );
        body.push_str(
            "<table id=\"runs\"><tr><th>ended</th><th>kind</th><th>name</th><th>status</th><th>version</th><th>rows in</th>\
             <th>rows out</th><th>quarantined</th><th>seconds</th><th>run</th><th>error</th></tr>",
        );
        for run in &view.runs {
            let class = match run.status.as_str() {
                "failed" => "failed",
                "skipped" => "skipped",
                _ if run.quarantined.unwrap_or(0) > 0 => "quarantined",
                _ => "ok",
            };
            let _ = write!(
                body,
                "<tr class=\"run {class}\" data-status=\"{status}\" data-name=\"{name}\"><td>{ended}</td><td>{kind}</td><td>{name}</td><td>{status}</td>\
                 <td class=\"num\">{version}</td><td class=\"num\">{rows_in}</td><td class=\"num\">{rows_out}</td><td class=\"num\">{quarantined}</td>\
                 <td class=\"num\">{secs:.1}</td><td>{run_id}</td><td class=\"error\">{error}</td></tr>",
                ended = time(Some(run.ended_micros)),
                kind = esc(&run.kind),
                name = esc(&run.name),
                status = esc(&run.status),
                version = number(run.table_version),
                rows_in = number(run.rows_in),
                rows_out = number(run.rows_out),
                quarantined = number(run.quarantined),
                secs = (run.ended_micros - run.started_micros) as f64 / 1e6,
                run_id = esc(&run.run_id),
                error = esc(run.error.as_deref().unwrap_or("")),
            );
        }
        body.push_str("</table><p class=\"pager\">");
        let mut link = |offset: usize, id: &str, text: &str| {
            let next = RunsQuery { offset: Some(offset), ..query.clone() };
            let encoded = query_string(&next);
            let _ = write!(body, "<a id=\"{id}\" href=\"/runs?{encoded}\">{text}</a>");
        };
        if view.offset > 0 {
            link(view.offset.saturating_sub(view.limit), "newer", "newer runs");
        }
        if view.more {
            link(view.offset + view.limit, "older", "older runs");
        }
        body.push_str("</p>");
        Ok(body)
    }
    .await;
    respond(&dashboard, "Runs", body)
}

/// A runs query as URL parameters (empty ones left out).
fn query_string(query: &RunsQuery) -> String {
    let mut out = url::form_urlencoded::Serializer::new(String::new());
    let pairs = [
        ("status", query.status.clone()),
        ("table", query.table.clone()),
        ("kind", query.kind.clone()),
        ("since", query.since.clone()),
        ("until", query.until.clone()),
        ("limit", query.limit.map(|v| v.to_string())),
        ("offset", query.offset.map(|v| v.to_string())),
    ];
    for (key, value) in pairs {
        if let Some(value) = value.filter(|v| !v.is_empty()) {
            out.append_pair(key, &value);
        }
    }
    out.finish()
}

/// `/quarantine`: each table's quarantined rows by rule or error code, with samples of the
/// reason asked for (`?table=&reason=`), else of each table's first reason.
pub async fn quarantine(State(dashboard): State<Arc<Dashboard>>, Query(query): Query<QuarantineQuery>) -> Response {
    let body = async {
        let view = api::quarantine_view(&dashboard).await?;
        let mut body = String::new();
        if view.is_empty() {
            body.push_str("<p id=\"empty\">nothing is quarantined</p>");
        }
        for (table, reasons) in &view {
            let _ = write!(
                body,
                "<h2 id=\"{t}\">{t}</h2><table class=\"reasons\" data-table=\"{t}\"><tr><th>reason</th><th>code</th><th>rows</th><th>loads</th><th>first</th><th>last</th><th>example</th></tr>",
                t = esc(table)
            );
            for reason in reasons {
                let text = |key: &str| reason.get(key).map(|v| v.as_str().map_or_else(|| v.to_string(), str::to_owned)).unwrap_or_default();
                let _ = write!(
                    body,
                    "<tr class=\"reason\" data-reason=\"{r}\" data-rows=\"{rows}\"><td><a href=\"/quarantine?table={ut}&amp;reason={ur}#{t}\">{r}</a></td><td>{code}</td><td class=\"num\">{rows}</td>\
                     <td class=\"num\">{loads}</td><td>{first}</td><td>{last}</td><td class=\"error\">{example}</td></tr>",
                    r = esc(&text("reason")),
                    ut = url_part(table),
                    ur = url_part(&text("reason")),
                    t = esc(table),
                    code = esc(&text("code")),
                    rows = esc(&text("rows")),
                    loads = esc(&text("loads")),
                    first = esc(&text("first_at")),
                    last = esc(&text("last_at")),
                    example = esc(&text("example")),
                );
            }
            body.push_str("</table>");
            // The reason asked for, else the table's first one, from the summary already read.
            let asked = if query.table.as_deref() == Some(table.as_str()) { query.reason.clone() } else { None };
            let reason = asked.or_else(|| reasons.first().and_then(|r| r["reason"].as_str()).map(str::to_owned));
            let samples = api::samples_view(&dashboard, table, &SamplesQuery { reason, limit: Some(5) }).await?;
            let rows = samples["rows"].as_array().cloned().unwrap_or_default();
            let columns: Vec<String> = samples["columns"]
                .as_array()
                .map(|c| c.iter().filter_map(|v| v.as_str().map(str::to_owned)).collect())
                .unwrap_or_default();
            if !rows.is_empty() {
                let _ = write!(
                    body,
                    "<p>samples of <b>{}</b>:</p><table class=\"samples\" data-table=\"{}\"><tr>{}</tr>",
                    esc(samples["reason"].as_str().unwrap_or("")),
                    esc(table),
                    columns.iter().map(|c| format!("<th>{}</th>", esc(c))).collect::<String>()
                );
                for row in &rows {
                    body.push_str("<tr class=\"sample\">");
                    for column in &columns {
                        let value = row.get(column.as_str()).map(|v| v.as_str().map_or_else(|| v.to_string(), str::to_owned));
                        let _ = write!(body, "<td>{}</td>", esc(&value.unwrap_or_default()));
                    }
                    body.push_str("</tr>");
                }
                body.push_str("</table>");
            }
        }
        Ok(body)
    }
    .await;
    respond(&dashboard, "Quarantine", body)
}

#[derive(Debug, Default, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct QuarantineQuery {
    pub table: Option<String>,
    pub reason: Option<String>,
}
