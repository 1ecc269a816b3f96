//! `[[pipeline.alerts]]`: webhooks `inlet serve` tells when something goes wrong, and when
//! it clears.
//!
//! Each alert is a condition on a subject (a source, a table): a run failed, a gate stopped
//! a commit, a table is older than its SLA, a source's circuit opened, a run quarantined
//! too much. A condition that starts holding sends `firing`; while it holds, it is sent
//! again at most every `min_interval_secs`; when it stops holding, `resolved` (unless
//! `resolved = false`). Deliveries run on a task of their own behind a bounded queue, with
//! a timeout and retries with backoff: a run never waits for a webhook, and a webhook that
//! is down costs a warning and a count in `inlet_alert_deliveries_failed_total`. URLs are
//! never logged whole: a webhook's path often is its secret.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use inlet_engine::config::{AlertConfig, AlertEvent, AlertFormat};
use inlet_engine::run::{Pipeline, RunReport};
use inlet_engine::transform::TableStatus;
use tokio::sync::mpsc;
use tokio::time::Instant;
use tracing::{debug, warn};

use crate::metrics::Metrics;

/// Deliveries waiting; when full, an alert is counted as failed rather than waited for.
const QUEUE: usize = 256;

/// What one observation says about one subject.
#[derive(Debug, Clone, PartialEq)]
pub struct Signal {
    pub event: AlertEvent,
    /// `source` or `table`.
    pub kind: &'static str,
    pub subject: String,
    pub state: Holds,
    /// What to tell (the error, the ages, the counts).
    pub message: String,
}

/// Whether a condition holds.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Holds {
    Yes,
    No,
    /// A share, held against each alert's `quarantine_ratio`.
    Ratio(f64),
}

struct Rule {
    config: AlertConfig,
    url: String,
    /// The URL as it may be shown: scheme and host.
    shown: String,
}

struct Firing {
    since: chrono::DateTime<chrono::Utc>,
    last_sent: Instant,
}

struct Delivery {
    rule: usize,
    event: AlertEvent,
    state: &'static str,
    body: serde_json::Value,
}

pub struct Alerter {
    pipeline: String,
    rules: Arc<Vec<Rule>>,
    firing: Mutex<HashMap<(usize, AlertEvent, String), Firing>>,
    /// One queue and one delivering task per webhook: one that hangs delays no other.
    queues: Vec<mpsc::Sender<Delivery>>,
    metrics: Arc<Metrics>,
}

impl Alerter {
    /// The pipeline's alerts, their deliveries on a task of their own; `None` without any.
    pub fn start(pipeline: &Pipeline, metrics: Arc<Metrics>) -> anyhow::Result<Option<Arc<Alerter>>> {
        let configs = &pipeline.config.pipeline.alerts;
        if configs.is_empty() {
            return Ok(None);
        }
        let mut rules = Vec::new();
        for (index, config) in configs.iter().enumerate() {
            let url = pipeline.env.resolve(&config.url).map_err(|name| {
                anyhow::anyhow!("`pipeline.alerts[{index}].url`: the environment variable `{name}` is not set")
            })?;
            let shown = redact(&url);
            rules.push(Rule { config: config.clone(), url, shown });
        }
        let rules = Arc::new(rules);
        let queues = (0..rules.len())
            .map(|_| {
                let (queue, receiver) = mpsc::channel(QUEUE);
                tokio::spawn(deliver(rules.clone(), receiver, metrics.clone()));
                queue
            })
            .collect();
        Ok(Some(Arc::new(Alerter {
            pipeline: pipeline.config.pipeline.name.clone(),
            rules,
            firing: Mutex::new(HashMap::new()),
            queues,
            metrics,
        })))
    }

    /// Takes what `signals` say: sends what starts, repeats or clears. Never waits.
    pub fn observe(&self, signals: &[Signal]) {
        let now = Instant::now();
        let Ok(mut firing) = self.firing.lock() else { return };
        for signal in signals {
            for (index, rule) in self.rules.iter().enumerate() {
                if !rule.config.on.contains(&signal.event) {
                    continue;
                }
                let holds = match signal.state {
                    Holds::Yes => true,
                    Holds::No => false,
                    Holds::Ratio(ratio) => ratio > rule.config.quarantine_ratio,
                };
                let key = (index, signal.event, signal.subject.clone());
                let interval = Duration::from_secs(rule.config.min_interval_secs);
                let (state, since) = match (holds, firing.get(&key)) {
                    (true, None) => ("firing", chrono::Utc::now()),
                    (true, Some(state)) if now.duration_since(state.last_sent) >= interval => ("firing", state.since),
                    (true, Some(_)) | (false, None) => continue,
                    (false, Some(state)) => ("resolved", state.since),
                };
                // The condition's state moves on only once its message is queued: an alert the
                // queue had no room for is tried again at the next observation.
                if state == "firing" || rule.config.resolved {
                    let body = body(rule.config.format, &self.pipeline, signal, state, Some(since));
                    let delivery = Delivery { rule: index, event: signal.event, state, body };
                    if self.queues.get(index).is_none_or(|queue| queue.try_send(delivery).is_err()) {
                        warn!(event = signal.event.as_str(), subject = %signal.subject, url = %rule.shown, "alert queue full; alert dropped");
                        self.metrics.alert_failed(signal.event.as_str());
                        continue;
                    }
                }
                if state == "firing" {
                    firing.insert(key, Firing { since, last_sent: now });
                } else {
                    firing.remove(&key);
                }
            }
        }
    }
}

/// What a run says: each source and table that ran failed or not, its gate, its
/// quarantine's share.
pub fn signals_of_run(report: &RunReport) -> Vec<Signal> {
    let mut out = Vec::new();
    for source in &report.sources {
        let gate = source.failed_gate.as_ref().map(|q| q.summary());
        let outcome = RunOutcome {
            kind: "source",
            subject: &source.source,
            error: source.error.as_ref().filter(|_| gate.is_none()).map(|e| e.message.as_str()),
            ran: source.error.is_none(),
            checked: !source.commits.is_empty(),
            gate,
            // What a source saw: rows landed and rows quarantined, when it did not stop.
            seen: source.error.is_none().then_some((source.quarantined, source.rows + source.quarantined)),
        };
        outcome.signals(&mut out);
        // A source that ran without an error is not sitting out a cool-down.
        if source.error.is_none() {
            out.push(signal_of_circuit(&source.source, false));
        }
    }
    for table in &report.tables {
        let gate = table
            .quality
            .as_ref()
            .filter(|q| table.status == TableStatus::Failed && q.outcome == inlet_quality::Outcome::Failed)
            .map(|q| q.summary());
        let committed = table.status == TableStatus::Committed;
        let rows = &table.rows;
        let outcome = RunOutcome {
            kind: "table",
            subject: &table.table,
            error: table
                .error
                .as_ref()
                .filter(|_| table.status == TableStatus::Failed && gate.is_none())
                .map(|e| e.message.as_str()),
            ran: matches!(table.status, TableStatus::Committed | TableStatus::UpToDate),
            checked: committed,
            gate,
            seen: committed.then_some((
                table.quarantined,
                rows.inserted + rows.updated + rows.deleted + rows.unchanged + table.quarantined,
            )),
        };
        outcome.signals(&mut out);
    }
    out
}

/// One source's or table's run, in the terms its alerts use.
struct RunOutcome<'a> {
    kind: &'static str,
    subject: &'a str,
    /// The error of a run that failed other than at its gate.
    error: Option<&'a str>,
    /// It worked (committed, or found nothing to do).
    ran: bool,
    /// Rows went through its gate.
    checked: bool,
    /// The gate that stopped its commit, summed up.
    gate: Option<String>,
    /// Rows quarantined of rows seen, when those are counts to hold a ratio against.
    seen: Option<(u64, u64)>,
}

impl RunOutcome<'_> {
    fn signals(&self, out: &mut Vec<Signal>) {
        let (kind, subject) = (self.kind, self.subject);
        let signal =
            |event, state, message: String| Signal { event, kind, subject: subject.to_owned(), state, message };
        // A failed gate neither fires nor resolves `run_failed`.
        if let Some(error) = self.error {
            out.push(signal(AlertEvent::RunFailed, Holds::Yes, format!("{kind} `{subject}` failed: {error}")));
        } else if self.ran {
            out.push(signal(AlertEvent::RunFailed, Holds::No, format!("{kind} `{subject}` ran")));
        }
        // The gate passed only where rows went through it.
        match &self.gate {
            Some(summary) => out.push(signal(
                AlertEvent::GateFailed,
                Holds::Yes,
                format!("{kind} `{subject}`: the gate stopped the commit: {summary}"),
            )),
            None if self.checked => {
                out.push(signal(AlertEvent::GateFailed, Holds::No, format!("{kind} `{subject}`: the gate passed")))
            }
            None => {}
        }
        if let Some((quarantined, seen)) = self.seen.filter(|(_, seen)| *seen > 0) {
            let ratio = quarantined as f64 / seen as f64;
            let message =
                format!("{kind} `{subject}` quarantined {quarantined} of {seen} rows ({:.1}%)", ratio * 100.0);
            out.push(signal(AlertEvent::QuarantineRatio, Holds::Ratio(ratio), message));
        }
    }
}

/// What the status says of each source's and table's freshness against its SLA.
pub fn signals_of_status(rows: &[inlet_engine::status::Status]) -> Vec<Signal> {
    rows.iter()
        .filter_map(|row| {
            let sla = row.freshness_sla_secs?;
            let age = row.age_secs.map_or_else(|| "never".to_owned(), |a| format!("{a} s old"));
            Some(Signal {
                event: AlertEvent::FreshnessBreached,
                kind: row.kind,
                subject: row.name.clone(),
                state: yes(row.stale),
                message: format!("{} `{}` is {age}; its freshness SLA is {sla} s", row.kind, row.name),
            })
        })
        .collect()
}

/// A run of the pipeline as a whole could not be made (its tables could not be opened,
/// the lake is unreachable: `error`), or could (`None`): `run_failed` of subject
/// `pipeline`.
pub fn signal_of_pipeline_run(error: Option<&str>) -> Signal {
    Signal {
        event: AlertEvent::RunFailed,
        kind: "pipeline",
        subject: "pipeline".to_owned(),
        state: yes(error.is_some()),
        message: match error {
            Some(error) => format!("the pipeline could not run: {error}"),
            None => "the pipeline runs".to_owned(),
        },
    }
}

/// A source's circuit opened or closed.
pub fn signal_of_circuit(source: &str, open: bool) -> Signal {
    Signal {
        event: AlertEvent::CircuitOpen,
        kind: "source",
        subject: source.to_owned(),
        state: yes(open),
        message: if open {
            format!("source `{source}` kept failing: it is skipped for a cool-down")
        } else {
            format!("source `{source}` is tried again")
        },
    }
}

fn yes(holds: bool) -> Holds {
    if holds { Holds::Yes } else { Holds::No }
}

/// The body of an alert in `format`.
fn body(
    format: AlertFormat,
    pipeline: &str,
    signal: &Signal,
    state: &str,
    since: Option<chrono::DateTime<chrono::Utc>>,
) -> serde_json::Value {
    let at = chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true);
    match format {
        AlertFormat::Json => serde_json::json!({
            "pipeline": pipeline,
            "event": signal.event.as_str(),
            "state": state,
            "kind": signal.kind,
            "subject": signal.subject,
            "message": signal.message,
            "since": since.map(|s| s.to_rfc3339_opts(chrono::SecondsFormat::Millis, true)),
            "at": at,
        }),
        AlertFormat::Slack => {
            let mark = if state == "resolved" { ":white_check_mark: resolved" } else { ":rotating_light:" };
            serde_json::json!({
                "text": format!("{mark} *{pipeline}* {}: {}", signal.event.as_str(), signal.message),
            })
        }
    }
}

/// A URL as it may be logged: scheme, host and port; its path and query (where webhooks
/// keep their secrets) and any user info left out.
pub fn redact(url: &str) -> String {
    match url::Url::parse(url) {
        Ok(parsed) => {
            let port = parsed.port().map(|p| format!(":{p}")).unwrap_or_default();
            format!("{}://{}{port}/…", parsed.scheme(), parsed.host_str().unwrap_or(""))
        }
        Err(_) => "(a URL that does not parse)".to_owned(),
    }
}

/// Delivers alerts one after the other: each POSTed with a timeout, tried again with
/// backoff up to `max_attempts` times.
async fn deliver(rules: Arc<Vec<Rule>>, mut queue: mpsc::Receiver<Delivery>, metrics: Arc<Metrics>) {
    let client = reqwest::Client::new();
    while let Some(delivery) = queue.recv().await {
        let Some(rule) = rules.get(delivery.rule) else { continue };
        let event = delivery.event.as_str();
        let mut attempt = 0;
        loop {
            attempt += 1;
            let sent = client
                .post(&rule.url)
                .timeout(Duration::from_millis(rule.config.timeout_ms))
                .header(reqwest::header::CONTENT_TYPE, "application/json")
                .body(delivery.body.to_string())
                .send()
                .await;
            let why = match sent {
                Ok(response) if response.status().is_success() => {
                    debug!(event, state = delivery.state, url = %rule.shown, "alert delivered");
                    metrics.alert_sent(event, delivery.state);
                    break;
                }
                Ok(response) => format!("answered {}", response.status()),
                // reqwest's errors name the URL: keep only what kind of failure it was.
                Err(err) => describe(err),
            };
            if attempt >= rule.config.max_attempts {
                warn!(event, state = delivery.state, url = %rule.shown, attempts = attempt, error = %why, "alert not delivered");
                metrics.alert_failed(event);
                break;
            }
            tokio::time::sleep(Duration::from_millis(250u64 << attempt.min(6))).await;
        }
    }
}

/// A failed request in words, its URL (which may carry a secret) left out.
pub(crate) fn describe(err: reqwest::Error) -> String {
    if err.is_timeout() {
        "timed out".to_owned()
    } else if err.is_connect() {
        "could not connect".to_owned()
    } else {
        err.without_url().to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_are_shown_without_their_secrets() {
        assert_eq!(redact("https://hooks.slack.com/services/T0/B0/s3cr3t"), "https://hooks.slack.com/…");
        assert_eq!(redact("http://user:pw@127.0.0.1:8080/x?token=t"), "http://127.0.0.1:8080/…");
        assert!(!redact("not a url s3cr3t").contains("s3cr3t"));
    }

    #[test]
    fn slack_and_json_bodies() {
        let signal = Signal {
            event: AlertEvent::RunFailed,
            kind: "source",
            subject: "orders".into(),
            state: Holds::Yes,
            message: "source `orders` failed: boom".into(),
        };
        let slack = body(AlertFormat::Slack, "shop", &signal, "firing", None);
        assert!(slack["text"].as_str().unwrap().contains("run_failed"));
        let json = body(AlertFormat::Json, "shop", &signal, "resolved", None);
        assert_eq!(
            (json["event"].as_str(), json["state"].as_str(), json["subject"].as_str()),
            (Some("run_failed"), Some("resolved"), Some("orders"))
        );
    }

    fn alerter(config: &str) -> (Alerter, mpsc::Receiver<Delivery>) {
        let config: AlertConfig = toml::from_str(config).unwrap();
        let rule = Rule { url: config.url.clone(), shown: redact(&config.url), config };
        let (queue, receiver) = mpsc::channel(16);
        let alerter = Alerter {
            pipeline: "shop".into(),
            rules: Arc::new(vec![rule]),
            firing: Mutex::new(HashMap::new()),
            queues: vec![queue],
            metrics: Arc::new(Metrics::new()),
        };
        (alerter, receiver)
    }

    fn failed(subject: &str, holds: Holds) -> Signal {
        Signal {
            event: AlertEvent::RunFailed,
            kind: "source",
            subject: subject.into(),
            state: holds,
            message: String::new(),
        }
    }

    fn sent(receiver: &mut mpsc::Receiver<Delivery>) -> Vec<(String, &'static str)> {
        let mut out = Vec::new();
        while let Ok(d) = receiver.try_recv() {
            out.push((d.body["subject"].as_str().unwrap_or_default().to_owned(), d.state));
        }
        out
    }

    #[test]
    fn an_alert_fires_once_within_its_interval_then_resolves() {
        let (alerter, mut receiver) =
            alerter("url = \"http://127.0.0.1:1/\"\non = [\"run_failed\"]\nmin_interval_secs = 3600");
        alerter.observe(&[failed("a", Holds::Yes), failed("b", Holds::No)]);
        assert_eq!(sent(&mut receiver), vec![("a".to_owned(), "firing")]);
        alerter.observe(&[failed("a", Holds::Yes)]);
        assert!(sent(&mut receiver).is_empty(), "repeated within the interval");
        alerter.observe(&[failed("a", Holds::No)]);
        assert_eq!(sent(&mut receiver), vec![("a".to_owned(), "resolved")]);
        alerter.observe(&[failed("a", Holds::No)]);
        assert!(sent(&mut receiver).is_empty());
        // Events the alert is not on are not sent.
        alerter.observe(&[Signal { event: AlertEvent::GateFailed, ..failed("a", Holds::Yes) }]);
        assert!(sent(&mut receiver).is_empty());
    }

    #[test]
    fn a_lasting_condition_is_repeated_after_its_interval_and_ratios_meet_their_threshold() {
        let (alerter, mut receiver) = alerter(
            "url = \"http://x/\"\non = [\"run_failed\", \"quarantine_ratio\"]\nmin_interval_secs = 0\nquarantine_ratio = 0.5\nresolved = false",
        );
        alerter.observe(&[failed("a", Holds::Yes)]);
        alerter.observe(&[failed("a", Holds::Yes)]);
        assert_eq!(sent(&mut receiver).len(), 2);
        alerter.observe(&[failed("a", Holds::No)]);
        assert!(sent(&mut receiver).is_empty(), "resolved = false");
        let ratio = |r| Signal { event: AlertEvent::QuarantineRatio, ..failed("q", Holds::Ratio(r)) };
        alerter.observe(&[ratio(0.4)]);
        assert!(sent(&mut receiver).is_empty());
        alerter.observe(&[ratio(0.6)]);
        assert_eq!(sent(&mut receiver), vec![("q".to_owned(), "firing")]);
    }

    #[test]
    fn a_run_fails_or_fails_its_gate_or_quarantines_too_much() {
        use inlet_engine::run::{ReportedError, SourceReport};
        use inlet_engine::transform::TableReport;
        let error = ReportedError::from(&inlet_engine::EngineError::Internal("boom".into()));
        let gate = inlet_quality::GateReport { outcome: inlet_quality::Outcome::Failed, expectations: vec![] };
        let broken = SourceReport { source: "broken".into(), error: Some(error.clone()), ..Default::default() };
        let gated = SourceReport {
            source: "gated".into(),
            error: Some(error.clone()),
            failed_gate: Some(gate.clone()),
            ..Default::default()
        };
        let idle = SourceReport { source: "idle".into(), ..Default::default() };
        let mut table = TableReport::new("silver.t", Default::default());
        table.status = TableStatus::Failed;
        table.error = Some(error);
        table.quality = Some(gate);
        let mut quarantining = TableReport::new("silver.q", Default::default());
        quarantining.status = TableStatus::Committed;
        quarantining.rows.inserted = 3;
        quarantining.quarantined = 1;
        let report = RunReport {
            pipeline: "p".into(),
            load_id: "l".into(),
            started_at: String::new(),
            duration_secs: 0.0,
            sources: vec![broken, gated, idle],
            tables: vec![table, quarantining],
        };
        let signals = signals_of_run(&report);
        let of = |event: AlertEvent, subject: &str| -> Vec<Holds> {
            signals.iter().filter(|s| s.event == event && s.subject == subject).map(|s| s.state).collect()
        };
        assert_eq!(of(AlertEvent::RunFailed, "broken"), vec![Holds::Yes]);
        assert_eq!(of(AlertEvent::RunFailed, "gated"), vec![], "a failed gate is not a failed run");
        assert_eq!(of(AlertEvent::GateFailed, "gated"), vec![Holds::Yes]);
        assert_eq!(of(AlertEvent::RunFailed, "idle"), vec![Holds::No]);
        assert_eq!(of(AlertEvent::GateFailed, "idle"), vec![], "no rows went through the gate");
        assert_eq!(of(AlertEvent::CircuitOpen, "idle"), vec![Holds::No]);
        assert_eq!(of(AlertEvent::GateFailed, "silver.t"), vec![Holds::Yes]);
        assert_eq!(of(AlertEvent::RunFailed, "silver.t"), vec![]);
        assert_eq!(of(AlertEvent::QuarantineRatio, "silver.q"), vec![Holds::Ratio(0.25)]);
        assert_eq!(of(AlertEvent::GateFailed, "silver.q"), vec![Holds::No]);
    }
}
