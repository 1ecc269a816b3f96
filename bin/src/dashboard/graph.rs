//! The pipeline's graph as SVG: sources in the first column, each derived table one column
//! right of the furthest table it reads; each node coloured by its last outcome and linking
//! to its table's page.

use std::collections::HashMap;
use std::fmt::Write;

use super::api::{Node, PipelineView};
use super::html::{age, esc, fill, number, url_part};

const WIDTH: f64 = 250.0;
const HEIGHT: f64 = 96.0;
const GAP_X: f64 = 70.0;
const GAP_Y: f64 = 24.0;

/// What a node shows as its state: `running` while it runs, else its last outcome.
pub fn state(node: &Node) -> &'static str {
    if node.running { "running" } else { node.status.outcome }
}

/// The column of each node, by table name.
fn columns(view: &PipelineView) -> HashMap<&str, usize> {
    let mut column: HashMap<&str, usize> = HashMap::new();
    // Nodes come in run order (sources, then tables in DAG order): upstream first.
    for node in &view.nodes {
        let at = node.upstream.iter().filter_map(|u| column.get(u.as_str())).map(|c| c + 1).max().unwrap_or(0);
        let at = if node.status.kind == "source" { 0 } else { at.max(1) };
        column.insert(node.status.table.as_str(), at);
    }
    column
}

pub fn svg(view: &PipelineView) -> String {
    let column = columns(view);
    let mut rows_used: HashMap<usize, usize> = HashMap::new();
    let mut place: HashMap<&str, (f64, f64)> = HashMap::new();
    for node in &view.nodes {
        let c = column.get(node.status.table.as_str()).copied().unwrap_or(0);
        let r = rows_used.entry(c).or_insert(0);
        place.insert(
            node.status.table.as_str(),
            (10.0 + c as f64 * (WIDTH + GAP_X), 10.0 + *r as f64 * (HEIGHT + GAP_Y)),
        );
        *r += 1;
    }
    let columns_n = rows_used.keys().max().map_or(1, |c| c + 1);
    let rows_n = rows_used.values().max().copied().unwrap_or(1);
    let (w, h) = (20.0 + columns_n as f64 * (WIDTH + GAP_X), 20.0 + rows_n as f64 * (HEIGHT + GAP_Y));
    let mut out = format!(
        "<svg id=\"dag\" role=\"img\" aria-label=\"pipeline graph\" width=\"{w}\" height=\"{h}\" xmlns=\"http://www.w3.org/2000/svg\">\
         <defs><marker id=\"arrow\" viewBox=\"0 0 10 10\" refX=\"10\" refY=\"5\" markerWidth=\"8\" markerHeight=\"8\" orient=\"auto\">\
         <path d=\"M0,0 L10,5 L0,10 z\" fill=\"#556\"/></marker></defs>"
    );
    for (from, to) in &view.edges {
        let (Some((x1, y1)), Some((x2, y2))) = (place.get(from.as_str()), place.get(to.as_str())) else { continue };
        let _ = write!(
            out,
            "<path class=\"edge\" data-from=\"{f}\" data-to=\"{t}\" d=\"M{a:.1},{b:.1} C{c:.1},{b:.1} {d:.1},{e:.1} {g:.1},{e:.1}\" \
             fill=\"none\" stroke=\"#556\" marker-end=\"url(#arrow)\"/>",
            f = esc(from),
            t = esc(to),
            a = x1 + WIDTH,
            b = y1 + HEIGHT / 2.0,
            c = x1 + WIDTH + GAP_X / 2.0,
            d = x2 - GAP_X / 2.0,
            e = y2 + HEIGHT / 2.0,
            g = x2,
        );
    }
    for node in &view.nodes {
        let Some((x, y)) = place.get(node.status.table.as_str()).copied() else { continue };
        let status = &node.status;
        let state = state(node);
        let title = if status.kind == "source" {
            format!("{} → {}", status.name, status.table)
        } else {
            status.table.clone()
        };
        let freshness = match status.freshness_sla_secs {
            Some(sla) => format!("fresh {} / SLA {}", age(status.age_secs), age(Some(sla as i64))),
            None => format!("fresh {}", age(status.age_secs)),
        };
        let backlog = match (status.backlog_files, node.lag) {
            (Some(files), _) => format!(" · backlog {files} files"),
            (None, Some(lag)) => format!(" · lag {} KiB, {:.0}s", lag.bytes / 1024, lag.seconds),
            (None, None) => String::new(),
        };
        let rows =
            format!("rows {} · quarantined {}{backlog}", number(status.last_rows), number(status.last_quarantined));
        // The error of a run that failed after the last success: a node that ran since shows none.
        let failing = status.last_failure_micros > status.last_success_micros;
        let error: String = status.last_error.as_deref().filter(|_| failing).unwrap_or("").chars().take(44).collect();
        let _ = write!(
            out,
            "<a href=\"/tables/{href}\"><g class=\"node {state}{stale}\" data-name=\"{name}\" data-table=\"{table}\" data-kind=\"{kind}\" data-state=\"{state}\" data-stale=\"{stale_flag}\">\
             <rect x=\"{x}\" y=\"{y}\" width=\"{WIDTH}\" height=\"{HEIGHT}\" rx=\"8\" fill=\"{fill}\" stroke=\"{stroke}\" stroke-width=\"{sw}\"/>\
             <text x=\"{tx}\" y=\"{y1}\" font-size=\"13\" font-weight=\"bold\">{title}</text>\
             <text x=\"{tx}\" y=\"{y2}\" font-size=\"11\">{state} · v{version}</text>\
             <text x=\"{tx}\" y=\"{y3}\" font-size=\"11\" fill=\"{fresh_fill}\">{freshness}</text>\
             <text x=\"{tx}\" y=\"{y4}\" font-size=\"11\">{rows}</text>\
             <text x=\"{tx}\" y=\"{y5}\" font-size=\"10\" fill=\"#c92a2a\">{error}</text></g></a>",
            href = url_part(&status.table),
            name = esc(&status.name),
            table = esc(&status.table),
            kind = status.kind,
            stale = if status.stale { " stale" } else { "" },
            stale_flag = status.stale,
            fill = fill(state),
            stroke = if status.stale { "#c92a2a" } else { "#345" },
            sw = if status.stale { 3 } else { 1 },
            tx = x + 10.0,
            y1 = y + 18.0,
            y2 = y + 35.0,
            y3 = y + 51.0,
            y4 = y + 67.0,
            y5 = y + 84.0,
            title = esc(&title),
            version = number(status.table_version),
            fresh_fill = if status.stale { "#c92a2a" } else { "#1d232b" },
            freshness = esc(&freshness),
            rows = esc(&rows),
            error = esc(&error),
        );
    }
    out.push_str("</svg>");
    out
}
