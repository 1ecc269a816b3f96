//! Seeing and being told: the dashboard of `inlet ui` and `inlet serve` in headless
//! Chromium and its `/api/` against the run history and the log; freshness SLAs; webhook
//! alerts to a real HTTP receiver; OpenLineage events validated with the official
//! `openlineage-python` client's event model.

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use inlet_tests::{Receiver, Scratch, artifacts, free_port, http, inlet_bin, python, workspace_root};
use serde_json::Value;

use crate::serve::Serve;

/// A source with a warned and a quarantining expectation, a silver table whose gate fails,
/// and a gold table with a freshness SLA it cannot meet.
const TROUBLED: &str = r#"
[pipeline]
name = "observed"

[sources.orders]
type = "files"
path = "landing"
format = "csv"
target = "bronze.orders"
schema = { order_id = "bigint", amount = "decimal(10,2)" }
freshness_sla_secs = 3600

[[sources.orders.expect]]
name = "order_id_present"
check = "not_null"
columns = ["order_id"]
on_violation = "quarantine"

[[sources.orders.expect]]
name = "status_known"
check = "accepted_values"
column = "status"
values = ["new", "paid"]
on_violation = "warn"

[tables."silver.orders"]
sql = "SELECT order_id AS id, amount, status FROM bronze.orders"

[[tables."silver.orders".expect]]
name = "amount_small"
rule = "amount < 100"
on_violation = "fail"

[tables."gold.counts"]
sql = "SELECT status, COUNT(*) AS orders FROM bronze.orders GROUP BY status"
freshness_sla_secs = 1
"#;

const ORDERS: &str = "order_id,amount,status\n1,10.00,new\n,20.00,new\n3,30.00,odd\n4,500.00,paid\n";

/// `inlet ui` on a free port until dropped.
struct Ui {
    child: Child,
    url: String,
}

impl Ui {
    fn start(scratch: &Scratch, listen: &str, env: &[(&str, &str)]) -> Ui {
        let mut child = Command::new(inlet_bin())
            .args(["ui", "inlet.toml", "--listen", listen])
            .current_dir(scratch.dir.path())
            .env("INLET_LOG", "warn")
            .envs(env.iter().copied())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap();
        let mut line = String::new();
        BufReader::new(child.stdout.take().unwrap()).read_line(&mut line).unwrap();
        let address = line.trim().rsplit("http://").next().unwrap().trim_end_matches('/').to_owned();
        assert!(address.contains(':'), "no address in {line:?}");
        Ui { child, url: format!("http://{address}") }
    }

    fn api(&self, path: &str) -> Value {
        api(&self.url, path)
    }
}

/// `GET <url><path>`, answered 200 with JSON.
fn api(url: &str, path: &str) -> Value {
    let (status, body) = http("GET", &format!("{url}{path}"), None);
    assert_eq!(status, 200, "GET {path}: {body}");
    serde_json::from_str(&body).unwrap_or_else(|e| panic!("GET {path}: not JSON ({e}): {body}"))
}

/// `GET <url><path>` until it is answered 200 with JSON on which `what` holds (within 60 s);
/// that JSON.
fn api_until(url: &str, path: &str, what: &str, holds: impl Fn(&Value) -> bool) -> Value {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let (status, body) = http("GET", &format!("{url}{path}"), None);
        if status == 200
            && let Ok(json) = serde_json::from_str::<Value>(&body)
            && holds(&json)
        {
            return json;
        }
        assert!(Instant::now() < deadline, "never within 60 s: {what}; GET {path}: HTTP {status}: {body}");
        std::thread::sleep(Duration::from_millis(200));
    }
}

impl Drop for Ui {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Loads `url` in headless Chromium: the DOM after rendering; the screenshot is kept as
/// `<artifacts>/<name>.png`.
fn browse(url: &str, name: &str) -> String {
    let png = artifacts("dashboard").join(format!("{name}.png"));
    let _ = std::fs::remove_file(&png);
    let output = Command::new(workspace_root().join("tests/observe/browse.sh")).arg(url).arg(&png).output().unwrap();
    assert!(output.status.success(), "headless Chromium on {url} failed:\n{}", String::from_utf8_lossy(&output.stderr));
    assert!(std::fs::metadata(&png).is_ok_and(|m| m.len() > 1000), "no screenshot of {url}");
    String::from_utf8_lossy(&output.stdout).into_owned()
}

/// The one element of `dom` that starts with `<tag` and carries `attribute`, up to its
/// tag's end.
fn element<'a>(dom: &'a str, tag: &str, attribute: &str) -> &'a str {
    let found: Vec<&str> = dom
        .match_indices(&format!("<{tag}"))
        .map(|(at, _)| &dom[at..])
        .filter(|rest| rest[..rest.find('>').unwrap_or(rest.len())].contains(attribute))
        .collect();
    assert_eq!(found.len(), 1, "expected one <{tag} {attribute}> in the page, found {}", found.len());
    let rest = found[0];
    let end = rest.find(&format!("</{tag}>")).map_or(rest.len(), |e| e + tag.len() + 3);
    &rest[..end]
}

#[test]
fn the_dashboard_shows_a_troubled_pipeline_and_its_api_agrees_with_the_cli() {
    let scratch = Scratch::new();
    scratch.pipeline(
        &TROUBLED.replace("name = \"observed\"", "name = \"observed\"\n\n[pipeline.serve]\nlisten = \"127.0.0.1:0\""),
    );
    scratch.write("landing/1.csv", ORDERS);
    // `inlet serve` lands the file; the silver gate fails; gold.counts commits, and one
    // second on it is past its SLA (nothing new upstream: serve has no reason to run it).
    let ui = Serve::start(&scratch);
    ui.wait_for("inlet_runs_total", 1.0);
    let url = ui.url();

    // The API is the CLI's data. Serve runs gold.counts at each wake-up (a file still settling
    // at start is taken a wake-up later) and counts those runs as fresh though its history
    // leaves out the ones that found nothing new, so the dashboard may know of a success the
    // CLI does not. Once the dashboard says gold.counts is past its SLA, the CLI, which knows
    // of no later success and asks later, must say so too.
    let row = |rows: &Value, name: &str| rows.as_array().and_then(|a| a.iter().find(|r| r["name"] == name).cloned());
    let status = api_until(&url, "/api/status", "the file landed and `gold.counts` is past its 1 s SLA", |rows| {
        row(rows, "orders").is_some_and(|r| r["outcome"] == "quarantined")
            && row(rows, "gold.counts").is_some_and(|r| r["stale"] == true)
    });
    let cli_status: Value = serde_json::from_str(&scratch.inlet(&["status", "--output", "json"]).stdout).unwrap();
    let key = |rows: &Value| -> Vec<(String, Value, Value, Value, Value)> {
        rows.as_array()
            .unwrap()
            .iter()
            .map(|r| {
                (
                    r["name"].as_str().unwrap().to_owned(),
                    r["table_version"].clone(),
                    r["outcome"].clone(),
                    r["stale"].clone(),
                    r["last_error"].clone(),
                )
            })
            .collect()
    };
    assert_eq!(key(&status), key(&cli_status));
    let by_name = |name: &str| status.as_array().unwrap().iter().find(|r| r["name"] == name).unwrap().clone();
    assert_eq!(by_name("orders")["outcome"], "quarantined", "{status}");
    assert_eq!(by_name("orders")["stale"], false);
    assert_eq!(by_name("silver.orders")["outcome"], "failed");
    assert!(by_name("silver.orders")["last_error"].as_str().unwrap().contains("amount_small"), "{status}");
    assert_eq!(by_name("gold.counts")["stale"], true, "past its 1 s SLA: {status}");
    assert_eq!(by_name("gold.counts")["freshness_sla_secs"], 1);

    let history: Value = serde_json::from_str(
        &scratch.inlet(&["history", "bronze.orders", "--output", "json", "--limit", "100"]).stdout,
    )
    .unwrap();
    let table = api(&url, "/api/tables/bronze.orders");
    assert_eq!(table["versions"], history, "the table's versions are `inlet history`'s");
    let log_versions = std::fs::read_dir(format!("{}/_delta_log", scratch.table("bronze.orders")))
        .unwrap()
        .filter(|e| e.as_ref().unwrap().file_name().to_string_lossy().ends_with(".json"))
        .count();
    assert_eq!(table["versions"].as_array().unwrap().len(), log_versions, "one version per commit of the log");
    assert!(table["schema"].as_array().unwrap().iter().any(|c| c["name"] == "status"));
    // Pages: one version at a time, newest first.
    let page = api(&url, "/api/tables/bronze.orders?limit=1");
    assert_eq!(page["versions"].as_array().unwrap().len(), 1);
    assert_eq!(page["versions"][0]["version"], history[0]["version"]);

    let runs = api(&url, "/api/runs?limit=500");
    let cli_runs: Value =
        serde_json::from_str(&scratch.inlet(&["runs", "--output", "json", "--limit", "500"]).stdout).unwrap();
    assert_eq!(runs["runs"], cli_runs);
    let history_rows = inlet_tests::duckdb(&format!(
        "SELECT count(*) FROM delta_scan('{}')",
        scratch.path("lake/_inlet/runs").display()
    ));
    assert_eq!(runs["runs"].as_array().unwrap().len() as i64, inlet_tests::single_i64(&history_rows));
    let failed = api(&url, "/api/runs?status=failed");
    assert!(
        failed["runs"].as_array().unwrap().iter().all(|r| r["status"] == "failed")
            && failed["runs"][0]["name"] == "silver.orders",
        "{failed}"
    );
    let quarantine = api(&url, "/api/quarantine");
    assert_eq!(quarantine["bronze.orders"][0]["reason"], "order_id_present", "{quarantine}");
    assert_eq!(quarantine["bronze.orders"][0]["rows"], 1);
    let samples = api(&url, "/api/quarantine/bronze.orders");
    assert_eq!(samples["rows"].as_array().unwrap().len(), 1, "{samples}");
    let (missing, _) = http("GET", &format!("{}/api/tables/bronze.nope", url), None);
    assert_eq!(missing, 404);
    let (post, _) = http("POST", &format!("{}/api/status", url), Some("{}".to_owned()));
    assert_eq!(post, 405, "read-only");

    // Every page, in a real browser.
    let dom = browse(&format!("{}/", url), "pipeline");
    assert!(element(&dom, "g", "data-name=\"orders\"").contains("data-state=\"quarantined\""));
    assert!(element(&dom, "g", "data-name=\"silver.orders\"").contains("data-state=\"failed\""));
    let gold = element(&dom, "g", "data-name=\"gold.counts\"");
    assert!(gold.contains("data-stale=\"true\"") && gold.contains("SLA 1s"), "{gold}");
    assert!(dom.contains("amount_small"), "the last error shows");
    assert_eq!(dom.matches("class=\"edge\"").count(), 2, "bronze.orders feeds silver and gold");

    let dom = browse(&format!("{}/tables/bronze.orders", url), "table-bronze-orders");
    let version = element(&dom, "tr", "data-version=\"0\"");
    assert!(version.contains("status_known:") && version.contains("1 failed (warned)"), "{version}");
    assert!(element(&dom, "svg", "id=\"timeline\"").contains("circle"));
    assert!(element(&dom, "svg", "id=\"rows-chart\"").contains("data-value=\"3\""));
    assert!(element(&dom, "svg", "id=\"failures-chart\"").contains("data-value=\"2\""), "one quarantined, one warned");
    assert!(element(&dom, "table", "id=\"schema\"").contains("amount"));

    let dom = browse(&format!("{}/tables/silver.orders", url), "table-silver-orders");
    assert!(element(&dom, "pre", "id=\"sql\"").contains("SELECT order_id AS id"));

    let dom = browse(&format!("{}/runs?status=failed", url), "runs-failed");
    let failed_run = element(&dom, "tr", "data-name=\"silver.orders\"");
    assert!(failed_run.contains("data-status=\"failed\"") && failed_run.contains("amount_small"), "{failed_run}");
    assert!(!dom.contains("data-status=\"committed\""), "the filter holds");
    let dom = browse(&format!("{}/runs", url), "runs");
    assert!(dom.contains("data-name=\"gold.counts\"") && dom.contains("data-status=\"committed\""));

    let dom = browse(&format!("{}/quarantine", url), "quarantine");
    let reasons = element(&dom, "table", "class=\"reasons\" data-table=\"bronze.orders\"");
    assert!(reasons.contains("data-reason=\"order_id_present\" data-rows=\"1\""), "{reasons}");
    assert!(element(&dom, "table", "class=\"samples\"").contains("\"amount\":20.00"), "the quarantined row shows");
}

/// `inlet <args>`, which must fail within 30 s (a command that should refuse to serve and
/// serves instead fails the test rather than hanging it); its stderr.
fn refused_within(scratch: &Scratch, args: &[&str]) -> inlet_tests::Run {
    let mut child = Command::new(inlet_bin())
        .args(args)
        .current_dir(scratch.dir.path())
        .env("INLET_LOG", "warn")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    while child.try_wait().unwrap().is_none() {
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("`inlet {}` did not refuse: it still runs after 30 s", args.join(" "));
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let run = inlet_tests::Run::from(child.wait_with_output().unwrap());
    assert_ne!(run.code, Some(0), "`inlet {}` should fail: {}", args.join(" "), run.stdout);
    run
}

/// The machine's first address that is not loopback.
fn outside_address() -> String {
    let output = Command::new("hostname").arg("-I").output().unwrap();
    let text = String::from_utf8_lossy(&output.stdout).into_owned();
    text.split_whitespace()
        .find(|a| a.parse::<std::net::Ipv4Addr>().is_ok_and(|ip| !ip.is_loopback()))
        .unwrap_or_else(|| panic!("this machine has no IPv4 address but loopback (`hostname -I`: {text:?})"))
        .to_owned()
}

#[test]
fn beyond_loopback_the_dashboard_wants_its_bearer_token() {
    let scratch = Scratch::new();
    scratch.pipeline(
        &TROUBLED.replace(
            "name = \"observed\"",
            "name = \"observed\"\n\n[pipeline.serve]\ntoken = \"${env:INLET_UI_TOKEN}\"",
        ),
    );
    let refused = refused_within(&scratch, &["ui", "inlet.toml", "--listen", "127.0.0.1:0"]);
    assert!(refused.stderr.contains("INLET_UI_TOKEN"), "{}", refused.stderr);

    // Without a token, the dashboard is not opened to the network unless asked for.
    let open = Scratch::new();
    open.pipeline(
        &TROUBLED.replace("name = \"observed\"", "name = \"observed\"\n\n[pipeline.serve]\nlisten = \"0.0.0.0:0\""),
    );
    let refused = refused_within(&open, &["ui", "inlet.toml"]);
    assert!(refused.stderr.contains("open beyond loopback"), "{}", refused.stderr);

    let ui = Ui::start(&scratch, "0.0.0.0:0", &[("INLET_UI_TOKEN", "s3cr3t-token")]);
    let port = ui.url.rsplit(':').next().unwrap().to_owned();
    let outside = format!("http://{}:{port}", outside_address());
    let (status, _) = http("GET", &format!("{outside}/api/status"), None);
    assert_eq!(status, 401, "no token from outside");
    let with_token = |token: &str| {
        let mut stream = std::net::TcpStream::connect(outside.trim_start_matches("http://")).unwrap();
        use std::io::{Read, Write};
        write!(
            stream,
            "GET /api/status HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {token}\r\nConnection: close\r\n\r\n"
        )
        .unwrap();
        let mut response = String::new();
        stream.read_to_string(&mut response).unwrap();
        response.split(' ').nth(1).and_then(|s| s.parse::<u16>().ok()).unwrap_or(0)
    };
    assert_eq!(with_token("wrong"), 401);
    assert_eq!(with_token("s3cr3t-token"), 200);
    assert!(ui.api("/api/status").is_array(), "loopback passes");
}

/// A pipeline that serve runs: a source whose landing directory is missing at first (its
/// runs fail), with a 2 s freshness SLA, and alerts to `receiver` (JSON and Slack) and to
/// a webhook nobody listens on.
fn alerting(receiver: &str, dead: &str) -> String {
    format!(
        r#"
[pipeline]
name = "alerting"

[pipeline.serve]
listen = "127.0.0.1:0"

[pipeline.retry]
max_attempts = 100
initial_backoff_ms = 100
max_backoff_secs = 1

[[pipeline.alerts]]
url = "{receiver}/json?token=s3cr3t"
format = "json"
on = ["run_failed", "gate_failed", "freshness_breached", "quarantine_ratio"]
min_interval_secs = 3600
quarantine_ratio = 0.2

[[pipeline.alerts]]
url = "${{env:SLACK_URL}}"
format = "slack"
on = ["run_failed"]

[[pipeline.alerts]]
url = "{dead}/down"
on = ["run_failed"]
timeout_ms = 500
max_attempts = 2

[sources.orders]
type = "files"
path = "landing"
format = "csv"
target = "bronze.orders"
schema = {{ order_id = "bigint", amount = "decimal(10,2)" }}
debounce_ms = 200
reconcile_interval_secs = 1
freshness_sla_secs = 6

[[sources.orders.expect]]
name = "order_id_present"
check = "not_null"
columns = ["order_id"]
on_violation = "quarantine"
"#
    )
}

/// Waits until `check` holds on what the receiver got.
fn wait_until(receiver: &Receiver, what: &str, check: impl Fn(&[Value]) -> bool) -> Vec<Value> {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let bodies = receiver.bodies("/json");
        if check(&bodies) {
            return bodies;
        }
        assert!(Instant::now() < deadline, "never: {what}; received:\n{:#?}", receiver.received());
        std::thread::sleep(Duration::from_millis(200));
    }
}

fn count(bodies: &[Value], event: &str, state: &str) -> usize {
    bodies.iter().filter(|b| b["event"] == event && b["state"] == state).count()
}

#[test]
fn serve_alerts_once_resolves_and_shrugs_off_a_dead_webhook() {
    let receiver = Receiver::start(&[]);
    let dead = format!("http://127.0.0.1:{}", free_port());
    let scratch = Scratch::new();
    scratch.pipeline(&alerting(&receiver.url, &dead));
    let slack = format!("{}/slack/T000/B000/s3cr3t", receiver.url);
    // Everything serve logs, at debug level, is kept to look for the webhooks' secrets.
    let serve = Serve::start_logged(&scratch, &[("SLACK_URL", &slack)], "debug");

    // The landing directory is missing: every run fails, one alert says so; nothing ever
    // landed, so the source is past its SLA too.
    serve.wait_for("inlet_retries_total", 3.0);
    let bodies = wait_until(&receiver, "run_failed and freshness_breached firing", |b| {
        count(b, "run_failed", "firing") == 1 && count(b, "freshness_breached", "firing") == 1
    });
    let alert = bodies.iter().find(|b| b["event"] == "run_failed").unwrap();
    assert_eq!(
        (alert["pipeline"].as_str(), alert["subject"].as_str(), alert["kind"].as_str()),
        (Some("alerting"), Some("orders"), Some("source"))
    );
    assert!(alert["message"].as_str().unwrap().contains("landing"), "{alert}");
    serve.wait_for("inlet_retries_total", 8.0);
    let bodies = receiver.bodies("/json");
    assert_eq!(count(&bodies, "run_failed", "firing"), 1, "not repeated within min_interval_secs");
    assert_eq!(count(&bodies, "freshness_breached", "firing"), 1, "not repeated within min_interval_secs");
    let slack_bodies = receiver.bodies("/slack/");
    assert_eq!(slack_bodies.len(), 1, "{slack_bodies:?}");
    assert!(slack_bodies[0]["text"].as_str().unwrap().contains("run_failed"));

    // Files arrive: the run works (the dead webhook notwithstanding), the failure and the
    // breach resolve; one row in four is quarantined, over the 20% the alert allows.
    scratch.write("landing/1.csv", "order_id,amount\n1,1.00\n,2.00\n3,3.00\n4,4.00\n");
    serve.wait_for("inlet_rows_ingested_total", 3.0);
    wait_until(&receiver, "run_failed and freshness resolved, quarantine_ratio firing", |b| {
        count(b, "run_failed", "resolved") == 1
            && count(b, "freshness_breached", "resolved") == 1
            && count(b, "quarantine_ratio", "firing") == 1
    });
    serve.wait_for("inlet_alert_deliveries_failed_total", 1.0);
    assert!(serve.metric("inlet_alerts_sent_total") >= 5.0);

    // Nothing lands for longer than the 6 s SLA: breached again; new data resolves it.
    wait_until(&receiver, "freshness_breached firing again", |b| count(b, "freshness_breached", "firing") == 2);
    assert_eq!(serve.metric("inlet_freshness_sla_breached"), 1.0);
    scratch.write("landing/2.csv", "order_id,amount\n5,5.00\n6,6.00\n7,7.00\n8,8.00\n9,9.00\n");
    let bodies = wait_until(&receiver, "freshness and ratio resolved", |b| {
        count(b, "freshness_breached", "resolved") == 2 && count(b, "quarantine_ratio", "resolved") == 1
    });
    assert_eq!(count(&bodies, "run_failed", "firing"), 1);
    assert_eq!(scratch.rows_and_distinct("bronze.orders", "order_id").0, 8, "runs went on, webhook down or not");
    // The webhooks' secrets (a token in a query, a Slack URL's path) stay out of what serve
    // shows and logs; the dead webhook's failures are in the log, by host.
    let (_, metrics) = serve.get("/metrics");
    assert!(!metrics.contains("s3cr3t"));
    drop(serve);
    let log = std::fs::read_to_string(scratch.path("serve.log")).unwrap();
    assert!(log.contains("alert not delivered"), "the log was captured: {log}");
    assert!(!log.contains("s3cr3t") && !log.contains("B000"), "a webhook secret in the log:\n{log}");
}

#[test]
fn an_open_circuit_alerts_and_resolves_when_it_closes() {
    let receiver = Receiver::start(&[]);
    let scratch = Scratch::new();
    let pipeline = alerting(&receiver.url, &format!("http://127.0.0.1:{}", free_port()))
        .replace(
            "max_attempts = 100\ninitial_backoff_ms = 100\nmax_backoff_secs = 1",
            "max_attempts = 2\ninitial_backoff_ms = 50\nmax_backoff_secs = 2",
        )
        .replace(
            "on = [\"run_failed\", \"gate_failed\", \"freshness_breached\", \"quarantine_ratio\"]",
            "on = [\"circuit_open\"]",
        );
    scratch.pipeline(&pipeline);
    let serve = Serve::start_with(&scratch, &[("SLACK_URL", &format!("{}/slack", receiver.url))]);
    serve.wait_for("inlet_circuit_open", 1.0);
    let bodies = wait_until(&receiver, "circuit_open firing", |b| count(b, "circuit_open", "firing") == 1);
    assert_eq!(bodies.iter().find(|b| b["event"] == "circuit_open").unwrap()["subject"], "orders");
    // The cool-down ends: the circuit closes (the source is tried again), which resolves it.
    wait_until(&receiver, "circuit_open resolved", |b| count(b, "circuit_open", "resolved") >= 1);
    assert!(receiver.bodies("/json").iter().all(|b| b["event"] == "circuit_open"), "only what the alert is on");
}

/// Runs the official client's event model over the events in `file`; its summary.
fn validate_lineage(file: &std::path::Path) -> Value {
    let output = Command::new(python())
        .arg(workspace_root().join("tests/observe/openlineage_check.py"))
        .arg(file)
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "openlineage_check: {}\n{}",
        String::from_utf8_lossy(&output.stderr),
        std::fs::read_to_string(file).unwrap_or_default()
    );
    serde_json::from_slice(&output.stdout).unwrap()
}

/// The runs of `summary` whose job is `job`.
fn runs_of<'a>(summary: &'a Value, job: &str) -> Vec<&'a Value> {
    summary["runs"].as_object().unwrap().values().filter(|r| r["job"] == job).collect()
}

#[test]
fn every_run_emits_openlineage_events_the_official_client_accepts() {
    let receiver = Receiver::start(&[]);
    let scratch = Scratch::new();
    let pipeline = TROUBLED.replace(
        "name = \"observed\"",
        &format!("name = \"observed\"\n\n[pipeline.openlineage]\nurl = \"{}/\"\nnamespace = \"shop\"", receiver.url),
    );
    scratch.pipeline(&pipeline);
    scratch.write("landing/1.csv", ORDERS);
    let run = scratch.inlet(&["run", "--output", "json"]);
    assert_eq!(run.code, Some(1), "{}", run.stderr);

    let received = receiver.received();
    assert!(received.iter().all(|r| r["path"] == "/api/v1/lineage"), "{received:?}");
    let file = scratch.write("received.json", serde_json::to_vec(&received).unwrap());
    let summary = validate_lineage(&file);
    let bronze = runs_of(&summary, "shop/observed.bronze.orders");
    assert_eq!(bronze.len(), 1, "{summary}");
    assert_eq!(bronze[0]["types"], serde_json::json!(["START", "COMPLETE"]));
    let written = run.source("orders")["table_version"].as_i64().unwrap();
    assert_eq!(bronze[0]["outputs"][0]["version"], written.to_string(), "{summary}");
    let silver = runs_of(&summary, "shop/observed.silver.orders");
    assert_eq!(silver[0]["types"], serde_json::json!(["START", "FAIL"]), "the failed gate fails the run");
    let checks = runs_of(&summary, "shop/observed.silver.orders.expectations");
    assert_eq!(checks[0]["types"], serde_json::json!(["START", "FAIL"]));
    assert_eq!(runs_of(&summary, "shop/observed")[0]["types"], serde_json::json!(["START", "FAIL"]));

    // What the events say, beyond their shape.
    let events: Vec<Value> = received.iter().map(|r| r["body"].clone()).collect();
    let end_of =
        |job: &str| events.iter().find(|e| e["job"]["name"] == job && e["eventType"] != "START").unwrap().clone();
    let gold = end_of("observed.gold.counts");
    assert_eq!(gold["eventType"], "COMPLETE");
    assert_eq!(gold["run"]["facets"]["parent"]["run"]["runId"], run.report()["load_id"]);
    assert!(gold["job"]["facets"]["sql"]["query"].as_str().unwrap().contains("GROUP BY status"));
    let input = &gold["inputs"][0];
    assert!(input["name"].as_str().unwrap().ends_with("lake/bronze/orders"), "{input}");
    assert_eq!(input["facets"]["version"]["datasetVersion"], written.to_string());
    let output = &gold["outputs"][0];
    assert_eq!(output["outputFacets"]["outputStatistics"]["rowCount"], 3, "new, odd, paid: {output}");
    assert!(output["outputFacets"]["outputStatistics"]["size"].as_i64().unwrap() > 0);
    let lineage = &output["facets"]["columnLineage"]["fields"];
    assert_eq!(lineage["status"]["inputFields"][0]["field"], "status", "{lineage}");
    assert!(lineage.get("orders").is_none(), "a count is computed, not passed through");
    let fields: Vec<&str> =
        output["facets"]["schema"]["fields"].as_array().unwrap().iter().map(|f| f["name"].as_str().unwrap()).collect();
    assert_eq!(fields, ["status", "orders"]);
    let failed = end_of("observed.silver.orders");
    assert!(failed["run"]["facets"]["errorMessage"]["message"].as_str().unwrap().contains("amount_small"));
    let assertions = &end_of("observed.bronze.orders.expectations")["inputs"][0]["inputFacets"]["dataQualityAssertions"]
        ["assertions"];
    let status_known = assertions.as_array().unwrap().iter().find(|a| a["assertion"] == "status_known").unwrap();
    assert_eq!(status_known["success"], false, "a warned expectation had failing rows");

    // To a file, the same; and a lineage server that is down fails nothing.
    let scratch = Scratch::new();
    scratch.pipeline(
        &TROUBLED
            .replace("name = \"observed\"", "name = \"observed\"\n\n[pipeline.openlineage]\nfile = \"lineage.ndjson\""),
    );
    scratch.write("landing/1.csv", ORDERS);
    assert_eq!(scratch.inlet(&["run"]).code, Some(1));
    let summary = validate_lineage(&scratch.path("lineage.ndjson"));
    assert_eq!(runs_of(&summary, "observed/observed.gold.counts").len(), 1, "{summary}");

    let scratch = Scratch::new();
    let dead = format!("http://127.0.0.1:{}", free_port());
    scratch.pipeline(&pipeline.replace(&receiver.url, &dead).replace("[[tables.\"silver.orders\".expect]]\nname = \"amount_small\"\nrule = \"amount < 100\"\non_violation = \"fail\"", ""));
    scratch.write("landing/1.csv", ORDERS);
    let run = scratch.inlet(&["run", "--output", "json"]);
    assert_eq!(run.code, Some(0), "{}", run.stderr);
    assert!(run.stderr.contains("lineage events not delivered"), "{}", run.stderr);
}
