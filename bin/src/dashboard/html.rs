//! The pieces every page is made of: escaping, the page around the content, times, small
//! SVG charts. Everything inline: a page is one document, with no script.

use std::fmt::Write;

/// Text made safe for HTML content and attribute values.
pub fn esc(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

/// A value for a URL's query or path segment.
pub fn url_part(text: &str) -> String {
    url::form_urlencoded::byte_serialize(text.as_bytes()).collect()
}

const STYLE: &str = "
body{font-family:system-ui,sans-serif;margin:0;color:#1d232b;background:#f6f7f9}
header{background:#17324d;color:#fff;padding:10px 20px;display:flex;gap:24px;align-items:center}
header a{color:#cfe3ff;text-decoration:none}header b{font-size:18px}
main{padding:16px 20px}h1{font-size:20px;margin:4px 0 12px}h2{font-size:16px;margin:20px 0 8px}
table{border-collapse:collapse;background:#fff;font-size:13px}
th,td{border:1px solid #dde1e6;padding:4px 8px;text-align:left;vertical-align:top}
th{background:#eef1f4}td.num{text-align:right}
.ok{background:#d8f3dc}.warned{background:#fff3bf}.quarantined{background:#ffe0b2}.failed{background:#ffc9c9}
.skipped,.never{background:#e9ecef}.running{background:#d0ebff}.stale{color:#c92a2a;font-weight:bold}
.error{color:#c92a2a;white-space:pre-wrap;max-width:700px}
svg text{font-family:system-ui,sans-serif}
form{margin:8px 0}input,select{margin-right:8px}
.pager a{margin-right:16px}pre{background:#fff;border:1px solid #dde1e6;padding:8px;overflow:auto}
";

/// A whole page: `title`, the navigation, and `body`.
pub fn page(pipeline: &str, title: &str, body: &str) -> String {
    format!(
        "<!DOCTYPE html><html lang=\"en\"><head><meta charset=\"utf-8\"><title>{title} · inlet {pipeline}</title>\
         <style>{STYLE}</style></head><body><header><b>inlet · {pipeline}</b><a href=\"/\">Pipeline</a>\
         <a href=\"/runs\">Runs</a><a href=\"/quarantine\">Quarantine</a></header><main><h1>{title}</h1>{body}</main></body></html>",
        pipeline = esc(pipeline),
        title = esc(title),
    )
}

/// Microseconds since the epoch as `2026-12-04 17:02:03Z`, `-` when unknown.
pub fn time(micros: Option<i64>) -> String {
    micros
        .and_then(chrono::DateTime::from_timestamp_micros)
        .map(|t| t.format("%Y-%m-%d %H:%M:%SZ").to_string())
        .unwrap_or_else(|| "-".to_owned())
}

/// Seconds as `42s`, `7m`, `3h`, `2d`.
pub fn age(secs: Option<i64>) -> String {
    match secs {
        None => "-".to_owned(),
        Some(s) if s < 120 => format!("{s}s"),
        Some(s) if s < 7200 => format!("{}m", s / 60),
        Some(s) if s < 172_800 => format!("{}h", s / 3600),
        Some(s) => format!("{}d", s / 86_400),
    }
}

pub fn number(value: Option<i64>) -> String {
    value.map_or_else(|| "-".to_owned(), |v| v.to_string())
}

/// A bar chart of `values` (oldest first), `label`s under the bars' titles.
pub fn bars(id: &str, title: &str, values: &[(String, i64)], colour: &str) -> String {
    let (width, height, pad) = (760.0_f64, 140.0_f64, 24.0_f64);
    let max = values.iter().map(|(_, v)| *v).max().unwrap_or(0).max(1) as f64;
    let step = if values.is_empty() { 0.0 } else { (width - 2.0 * pad) / values.len() as f64 };
    let mut svg = format!(
        "<svg id=\"{id}\" role=\"img\" aria-label=\"{title}\" width=\"{width}\" height=\"{height}\" \
         xmlns=\"http://www.w3.org/2000/svg\"><text x=\"{pad}\" y=\"14\" font-size=\"12\">{title} (max {max})</text>",
        title = esc(title),
    );
    for (index, (label, value)) in values.iter().enumerate() {
        let bar = (*value as f64 / max) * (height - 2.0 * pad);
        let x = pad + index as f64 * step;
        let _ = write!(
            svg,
            "<rect class=\"bar\" data-value=\"{value}\" x=\"{x:.1}\" y=\"{y:.1}\" width=\"{w:.1}\" height=\"{bar:.1}\" fill=\"{colour}\"><title>{label}: {value}</title></rect>",
            y = height - pad - bar,
            w = (step * 0.8).max(1.0),
            label = esc(label),
        );
    }
    let _ = write!(
        svg,
        "<line x1=\"{pad}\" y1=\"{y}\" x2=\"{x2}\" y2=\"{y}\" stroke=\"#889\"/></svg>",
        y = height - pad,
        x2 = width - pad
    );
    svg
}

/// Versions along a time axis: one dot per version, coloured by its outcome.
pub fn timeline(points: &[(i64, i64, &'static str)]) -> String {
    let (width, height, pad) = (760.0_f64, 70.0_f64, 24.0_f64);
    let mut svg = format!(
        "<svg id=\"timeline\" role=\"img\" aria-label=\"versions over time\" width=\"{width}\" height=\"{height}\" xmlns=\"http://www.w3.org/2000/svg\">"
    );
    let (Some(first), Some(last)) = (points.iter().map(|p| p.1).min(), points.iter().map(|p| p.1).max()) else {
        svg.push_str("</svg>");
        return svg;
    };
    let span = (last - first).max(1) as f64;
    let _ = write!(
        svg,
        "<line x1=\"{pad}\" y1=\"35\" x2=\"{x2}\" y2=\"35\" stroke=\"#889\"/>\
         <text x=\"{pad}\" y=\"62\" font-size=\"11\">{from}</text><text x=\"{x3}\" y=\"62\" font-size=\"11\">{to}</text>",
        x2 = width - pad,
        x3 = width - pad - 150.0,
        from = esc(&time(Some(first * 1000))),
        to = esc(&time(Some(last * 1000))),
    );
    for (version, at_ms, class) in points {
        let x = pad + (*at_ms - first) as f64 / span * (width - 2.0 * pad);
        let _ = write!(
            svg,
            "<a href=\"#v{version}\"><circle class=\"version {class}\" cx=\"{x:.1}\" cy=\"35\" r=\"5\" fill=\"{fill}\" stroke=\"#345\"><title>version {version}</title></circle></a>",
            fill = fill(class),
        );
    }
    svg.push_str("</svg>");
    svg
}

/// The colour of an outcome in SVG.
pub fn fill(outcome: &str) -> &'static str {
    match outcome {
        "ok" => "#b2f2bb",
        "warned" => "#ffec99",
        "quarantined" => "#ffc078",
        "failed" => "#ff8787",
        "running" => "#a5d8ff",
        _ => "#dee2e6",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn text_is_escaped() {
        assert_eq!(esc("<a href=\"x\">'&'</a>"), "&lt;a href=&quot;x&quot;&gt;&#39;&amp;&#39;&lt;/a&gt;");
        assert_eq!(url_part("a b&c"), "a+b%26c");
    }

    #[test]
    fn ages_read_at_a_glance() {
        assert_eq!(age(Some(5)), "5s");
        assert_eq!(age(Some(600)), "10m");
        assert_eq!(age(Some(10_800)), "3h");
        assert_eq!(age(Some(259_200)), "3d");
        assert_eq!(age(None), "-");
    }

    #[test]
    fn bars_scale_to_the_largest() {
        let svg = bars("rows", "rows", &[("v1".into(), 5), ("v2".into(), 10)], "#4c6ef5");
        assert_eq!(svg.matches("<rect").count(), 2);
        assert!(svg.contains("data-value=\"10\""));
    }
}
