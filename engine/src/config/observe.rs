//! What `inlet` tells the world: `[[pipeline.alerts]]` (webhooks on failures, failed gates,
//! freshness breaches, open circuits and quarantine ratios) and `[pipeline.openlineage]`
//! (lineage events per source and table run). Secrets (a webhook URL with its token in it,
//! a lineage server's API key) are `${env:NAME}` references, resolved by `bin`.

use serde::{Deserialize, Serialize};

use super::rest::env_reference;

/// One `[[pipeline.alerts]]` entry: a webhook and what it is told.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AlertConfig {
    /// Where alerts are posted: an `http(s)://` URL, or `${env:NAME}` holding one (a Slack
    /// webhook's URL is itself a secret).
    pub url: String,
    /// The body: a Slack message, or inlet's own JSON.
    #[serde(default)]
    pub format: AlertFormat,
    /// The events that alert.
    pub on: Vec<AlertEvent>,
    /// The same alert (event and subject) is not sent again within this many seconds while
    /// it lasts.
    #[serde(default = "default_min_interval_secs")]
    pub min_interval_secs: u64,
    /// Send a "resolved" message when a condition clears.
    #[serde(default = "super::default_true")]
    pub resolved: bool,
    /// `quarantine_ratio`: a run whose quarantined rows exceed this share of its input.
    #[serde(default = "default_quarantine_ratio")]
    pub quarantine_ratio: f64,
    /// Each delivery attempt gives up after this long.
    #[serde(default = "default_timeout_ms")]
    pub timeout_ms: u64,
    /// Attempts per alert (retries with exponential backoff in between).
    #[serde(default = "default_max_attempts")]
    pub max_attempts: u32,
}

/// What an alert says about.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum AlertEvent {
    /// A source or table run failed.
    RunFailed,
    /// A gate (`on_violation = "fail"`) stopped a commit.
    GateFailed,
    /// A source or table is older than its `freshness_sla_secs`.
    FreshnessBreached,
    /// A source that kept failing is skipped for a cool-down.
    CircuitOpen,
    /// A run quarantined more than `quarantine_ratio` of its rows.
    QuarantineRatio,
}

impl AlertEvent {
    pub fn as_str(self) -> &'static str {
        match self {
            AlertEvent::RunFailed => "run_failed",
            AlertEvent::GateFailed => "gate_failed",
            AlertEvent::FreshnessBreached => "freshness_breached",
            AlertEvent::CircuitOpen => "circuit_open",
            AlertEvent::QuarantineRatio => "quarantine_ratio",
        }
    }
}

/// The body of an alert.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum AlertFormat {
    /// `{"text": ...}`, as Slack's incoming webhooks take.
    Slack,
    /// inlet's own object: event, state, pipeline, subject, message, time.
    #[default]
    Json,
}

/// `[pipeline.openlineage]`: where lineage events go (one of `url` and `file`).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OpenLineageSection {
    /// An OpenLineage HTTP endpoint; events are posted to `<url>/api/v1/lineage` unless the
    /// URL has a path of its own.
    pub url: Option<String>,
    /// A file events are appended to, one JSON object per line (relative to the pipeline
    /// file).
    pub file: Option<String>,
    /// The namespace of inlet's jobs; the pipeline's name when unset.
    pub namespace: Option<String>,
    /// `${env:NAME}` of a bearer API key the HTTP endpoint wants.
    pub api_key: Option<String>,
    /// Runs whose events wait to be sent; when full, a run's events are dropped (and
    /// counted), never waited for.
    #[serde(default = "default_queue_capacity")]
    pub queue_capacity: usize,
    /// Each HTTP delivery gives up after this long.
    #[serde(default = "default_timeout_ms")]
    pub timeout_ms: u64,
}

fn default_min_interval_secs() -> u64 {
    3600
}

fn default_quarantine_ratio() -> f64 {
    0.05
}

fn default_timeout_ms() -> u64 {
    5000
}

fn default_max_attempts() -> u32 {
    3
}

fn default_queue_capacity() -> usize {
    1000
}

/// Whether `url` is an `http(s)://` URL, or a whole `${env:NAME}` reference.
fn url_or_reference(url: &str) -> bool {
    env_reference(url).is_some() || url::Url::parse(url).is_ok_and(|u| matches!(u.scheme(), "http" | "https"))
}

/// The problems of the alerts and lineage settings, each naming its key.
pub fn validate(alerts: &[AlertConfig], openlineage: Option<&OpenLineageSection>) -> Vec<String> {
    let mut problems = Vec::new();
    for (index, alert) in alerts.iter().enumerate() {
        let key = |field: &str| format!("`pipeline.alerts[{index}].{field}`");
        if !url_or_reference(&alert.url) {
            // The URL is not shown: it may hold a token.
            problems.push(format!("{}: must be an http(s):// URL or `${{env:NAME}}`", key("url")));
        }
        if alert.on.is_empty() {
            problems.push(format!(
                "{}: name at least one of run_failed, gate_failed, freshness_breached, circuit_open, quarantine_ratio",
                key("on")
            ));
        }
        if !(alert.quarantine_ratio > 0.0 && alert.quarantine_ratio <= 1.0) {
            problems.push(format!("{}: must be above 0 and at most 1", key("quarantine_ratio")));
        }
        if alert.timeout_ms == 0 || alert.max_attempts == 0 {
            problems.push(format!("{} and {}: must be at least 1", key("timeout_ms"), key("max_attempts")));
        }
    }
    if let Some(lineage) = openlineage {
        match (&lineage.url, &lineage.file) {
            (None, None) | (Some(_), Some(_)) => {
                problems.push("`pipeline.openlineage`: set one of `url` and `file`".to_owned())
            }
            (Some(url), None) if !url_or_reference(url) => {
                problems.push("`pipeline.openlineage.url`: must be an http(s):// URL or `${env:NAME}`".to_owned())
            }
            _ => {}
        }
        if lineage.api_key.as_deref().is_some_and(|key| env_reference(key).is_none()) {
            problems.push("`pipeline.openlineage.api_key`: a secret is `${env:NAME}`, never the value".to_owned());
        }
        if lineage.queue_capacity == 0 || lineage.timeout_ms == 0 {
            problems.push("`pipeline.openlineage.queue_capacity` and `timeout_ms`: must be at least 1".to_owned());
        }
    }
    problems
}

#[cfg(test)]
mod tests {
    use super::*;

    fn alert(toml_text: &str) -> AlertConfig {
        toml::from_str(toml_text).unwrap()
    }

    #[test]
    fn alerts_name_their_bad_keys_without_showing_the_url() {
        let good = alert("url = \"https://hooks.example.com/x\"\non = [\"run_failed\"]");
        assert!(validate(std::slice::from_ref(&good), None).is_empty());
        assert_eq!(good.min_interval_secs, 3600);
        assert!(good.resolved);
        let secret = alert("url = \"${env:SLACK_URL}\"\nformat = \"slack\"\non = [\"gate_failed\"]");
        assert!(validate(&[secret], None).is_empty());
        let bad = alert("url = \"ftp://user:s3cr3t@x\"\non = []\nquarantine_ratio = 2.0");
        let problems = validate(&[good, bad], None).join("\n");
        assert!(problems.contains("pipeline.alerts[1].url"), "{problems}");
        assert!(problems.contains("pipeline.alerts[1].on"), "{problems}");
        assert!(problems.contains("pipeline.alerts[1].quarantine_ratio"), "{problems}");
        assert!(!problems.contains("s3cr3t"), "{problems}");
        assert!(toml::from_str::<AlertConfig>("url = \"http://x\"\non = [\"nope\"]").is_err());
        assert!(toml::from_str::<AlertConfig>("url = \"http://x\"\non = [\"run_failed\"]\nretries = 2").is_err());
    }

    #[test]
    fn openlineage_takes_one_transport_and_keys_by_reference() {
        let parse = |text: &str| toml::from_str::<OpenLineageSection>(text).unwrap();
        assert!(validate(&[], Some(&parse("url = \"http://localhost:5000\""))).is_empty());
        assert!(validate(&[], Some(&parse("file = \"lineage.ndjson\"\nnamespace = \"prod\""))).is_empty());
        assert!(validate(&[], Some(&parse("namespace = \"prod\""))).join("").contains("one of `url` and `file`"));
        let key = validate(&[], Some(&parse("url = \"http://x\"\napi_key = \"abc\""))).join("");
        assert!(key.contains("api_key") && !key.contains("abc"), "{key}");
    }
}
