//! The REST API source against a scripted server (`tests/servers/rest_server.py`): every
//! paginator and auth scheme, parent/child resources, incremental runs, retries and the rate
//! limit, bodies that do not parse, APIs that loop, `kill -9` during extraction, and no
//! secret anywhere. Every table is read back by DuckDB.

use inlet_tests::{RestServer, Scratch, files_containing, kill_runs, single_i64};
use serde_json::{Value, json};

/// A pipeline of REST sources: `(name, base_url, path, extra TOML)`.
fn pipeline(name: &str, sources: &[(&str, String, &str, String)]) -> String {
    let mut text = format!("[pipeline]\nname = \"{name}\"\n");
    for (source, base, path, extra) in sources {
        text.push_str(&format!(
            "\n[sources.{source}]\ntype = \"rest\"\ntarget = \"bronze.{source}\"\nbase_url = \"{base}\"\npath = \"{path}\"\n{extra}\n"
        ));
    }
    text
}

const TYPES: &str = r#"schema = { id = "bigint", updated_at = "timestamptz", amount = "double" }"#;

#[test]
fn every_paginator_lands_every_record_once() {
    let server = RestServer::start(&["--records", "300"]);
    let base = format!("{}/api/", server.url);
    // (source, path, settings, pages): 300 records, 40 a page.
    let cases = [
        (
            // A commit every 100 records or so: after the page that reaches it.
            "json_link",
            "json_link/items",
            "params = { per_page = 40 }\npaginator = { type = \"json_link\", next_url_path = \"links.next\" }\ndata_selector = \"data\"\nmax_records_per_commit = 100",
            8,
        ),
        (
            "header_link",
            "header_link/items",
            "params = { per_page = 40 }\npaginator = { type = \"header_link\" }\ndata_selector = \"$\"",
            8,
        ),
        (
            "cursor_get",
            "cursor/items",
            "params = { per_page = 40 }\npaginator = { type = \"cursor\", cursor_path = \"next_cursor\", cursor_param = \"cursor\" }\ndata_selector = \"items\"",
            8,
        ),
        (
            "cursor_post",
            "cursor/items",
            "method = \"post\"\njson = { per_page = 40 }\npaginator = { type = \"cursor\", cursor_path = \"next_cursor\", cursor_body_path = \"cursor\" }\ndata_selector = \"items\"",
            8,
        ),
        (
            "offset_total",
            "offset/items",
            "paginator = { type = \"offset\", limit = 40, total_path = \"total\" }\ndata_selector = \"items\"",
            8,
        ),
        (
            "offset_has_more",
            "offset/items",
            "params = { shape = \"has_more\" }\npaginator = { type = \"offset\", limit = 40, has_more_path = \"has_more\" }\ndata_selector = \"items\"",
            8,
        ),
        (
            "page_total",
            "page_number/items",
            "params = { page_size = 40 }\npaginator = { type = \"page_number\", total_path = \"total_pages\" }\ndata_selector = \"items\"",
            8,
        ),
        // No total: the empty page after the last one ends it.
        (
            "page_empty_end",
            "page_number/items",
            "params = { page_size = 40, shape = \"empty_end\" }\npaginator = { type = \"page_number\" }\ndata_selector = \"items\"",
            9,
        ),
        ("single", "single/items", "paginator = { type = \"single_page\" }", 1),
        // Neither paginator nor selector: found from the first response.
        ("auto_json", "json_link/items", "params = { per_page = 40 }", 8),
        ("auto_header", "header_link/items", "params = { per_page = 40 }", 8),
    ];
    let sources: Vec<(&str, String, &str, String)> =
        cases.iter().map(|(name, path, extra, _)| (*name, base.clone(), *path, format!("{extra}\n{TYPES}"))).collect();
    let scratch = Scratch::new();
    scratch.pipeline(&pipeline("paging", &sources));
    let run = scratch.run_ok();
    let expected_amount = 1.25 * (300 * 301 / 2) as f64;
    for (name, _, _, pages) in cases {
        let report = run.source(name);
        assert_eq!(report["rows"], 300, "{name}: {report}");
        assert_eq!(report["pages"], pages, "{name}: {report}");
        assert_eq!(report["quarantined"], 0, "{name}");
        let table = format!("bronze.{name}");
        assert_eq!(scratch.ids(&table), [300, 300, 1, 300], "{name}");
        let amount = scratch.duckdb(&table, "SELECT sum(amount) FROM {t}")[0][0].as_f64().unwrap();
        assert!((amount - expected_amount).abs() < 1e-6, "{name}: {amount}");
    }
    let commits: Vec<i64> =
        run.source("json_link")["commits"].as_array().unwrap().iter().map(|c| c["rows"].as_i64().unwrap()).collect();
    assert_eq!(commits, [120, 120, 60]);
    // The rows are the server's records, field for field (nested values as JSON text).
    let landed = scratch.duckdb(
        "bronze.json_link",
        "SELECT id, name, strftime(updated_at, '%Y-%m-%dT%H:%M:%SZ'), tags, owner, active, note FROM {t} ORDER BY id",
    );
    let records = server.records();
    assert_eq!(landed.len(), records.len());
    for (row, record) in landed.iter().zip(&records) {
        let expected = [
            record["id"].clone(),
            record["name"].clone(),
            record["updated_at"].clone(),
            Value::String(record["tags"].to_string()),
            Value::String(record["owner"].to_string()),
            record["active"].clone(),
            record["note"].clone(),
        ];
        assert_eq!(row.as_slice(), expected.as_slice());
    }
    // Where each row came from: the request (its page number in the sweep) and its place.
    let provenance = scratch.duckdb(
        "bronze.json_link",
        "SELECT count(DISTINCT _source_url), max(_source_page), max(_source_row), count(DISTINCT _load_id) FROM {t}",
    );
    assert_eq!(provenance[0], [json!(8), json!(8), json!(40), json!(1)]);
    let first = scratch.duckdb("bronze.json_link", "SELECT _source_url FROM {t} WHERE id = 1");
    let url = first[0][0].as_str().unwrap();
    assert!(url.starts_with(&format!("{}/api/json_link/items?", server.url)) && url.contains("per_page=40"), "{url}");
    // The POST cursor sent its token in the body.
    let posts = server.requests_to("/api/cursor/items");
    let tokens: Vec<&Value> = posts.iter().filter(|r| r["method"] == "POST").map(|r| &r["body"]["cursor"]).collect();
    assert_eq!(tokens.len(), 8);
    assert!(tokens[0].is_null() && tokens[1..].iter().all(|t| t.is_string()), "{tokens:?}");
}

#[test]
fn auth_schemes_and_no_secret_anywhere() {
    let server = RestServer::start(&["--records", "120", "--token-ttl", "1"]);
    let env = [
        ("API_TOKEN", "s3cr3t-bearer-token"),
        ("BASIC_PASSWORD", "s3cr3t-basic-pass"),
        ("API_KEY", "s3cr3t-api-key"),
        ("OAUTH_ID", "inlet-client"),
        ("OAUTH_SECRET", "s3cr3t-client-secret"),
    ];
    let paging = "params = { per_page = 20 }\npaginator = { type = \"json_link\", next_url_path = \"links.next\" }\ndata_selector = \"data\"";
    let with = |auth: &str| format!("{paging}\nauth = {auth}\n{TYPES}");
    let base = |scheme: &str| format!("{}/auth/{scheme}/", server.url);
    let sources = [
        ("bearer", base("bearer"), "items", with(r#"{ type = "bearer", token = "${env:API_TOKEN}" }"#)),
        (
            "basic",
            base("basic"),
            "items",
            with(r#"{ type = "basic", username = "inlet-user", password = "${env:BASIC_PASSWORD}" }"#),
        ),
        (
            "key_header",
            base("api_key_header"),
            "items",
            with(r#"{ type = "api_key", name = "X-API-Key", api_key = "${env:API_KEY}" }"#),
        ),
        (
            "key_query",
            base("api_key_query"),
            "items",
            with(r#"{ type = "api_key", name = "api_key", api_key = "${env:API_KEY}", location = "query" }"#),
        ),
        (
            "oauth",
            base("oauth"),
            "items",
            // 6 pages at 4 a second outlive a 1 s token: it is renewed on the way.
            format!(
                "{}\nrequests_per_second = 4",
                with(&format!(
                    r#"{{ type = "oauth2_client_credentials", token_url = "{}/oauth/token", client_id = "${{env:OAUTH_ID}}", client_secret = "${{env:OAUTH_SECRET}}" }}"#,
                    server.url
                ))
            ),
        ),
    ];
    // A parent behind a query key whose next links repeat it, and a child committing at every
    // page: the parent's next link, in every position committed, must not hold the key.
    let family = [
        (
            "key_repos",
            base("api_key_query"),
            "repos",
            format!(
                "params = {{ per_page = 2 }}\n{}\nauth = {}",
                paging.replace("params = { per_page = 20 }\n", ""),
                r#"{ type = "api_key", name = "api_key", api_key = "${env:API_KEY}", location = "query" }"#
            ),
        ),
        (
            "key_children",
            format!("{}/api/", server.url),
            "repos/{resources.key_repos.name}/issues",
            format!(
                "parent = \"key_repos\"\nmax_records_per_commit = 1\nparams = {{ per_page = 4 }}\n{}",
                paging.replace("params = { per_page = 20 }\n", "")
            ),
        ),
    ];
    let scratch = Scratch::new();
    scratch.pipeline(&pipeline("auth", &[sources.to_vec(), family.to_vec()].concat()));
    let first = scratch.inlet_env(&["run", "--output", "json"], &env, "debug");
    assert_eq!(first.code, Some(0), "{}\n{}", first.stdout, first.stderr);
    for (name, ..) in &sources {
        assert_eq!(first.source(name)["rows"], 120, "{name}");
        assert_eq!(scratch.ids(&format!("bronze.{name}")), [120, 120, 1, 120], "{name}");
    }
    assert_eq!(first.source("key_repos")["rows"], 4);
    assert_eq!(first.source("key_children")["rows"], 50);
    assert!(first.source("key_children")["commits"].as_array().unwrap().len() > 4, "a commit per page");
    let state = server.call("GET", "/_admin/state", None);
    assert!(state["tokens_issued"].as_i64().unwrap() >= 2, "the expired token was renewed: {state}");

    // A token revoked during a run: refused with 401, renewed, and the request goes through.
    let lasting = RestServer::start(&["--records", "120", "--token-ttl", "300"]);
    let revoked = Scratch::new();
    revoked.pipeline(&pipeline(
        "revoked",
        &[(
            "oauth",
            format!("{}/auth/oauth/", lasting.url),
            "items",
            format!(
                "{}\nrequests_per_second = 2",
                with(&format!(
                    r#"{{ type = "oauth2_client_credentials", token_url = "{}/oauth/token", client_id = "${{env:OAUTH_ID}}", client_secret = "${{env:OAUTH_SECRET}}", client_auth_basic = true }}"#,
                    lasting.url
                ))
            ),
        )],
    ));
    let child = std::process::Command::new(inlet_tests::inlet_bin())
        .args(["run", "--output", "json"])
        .current_dir(revoked.dir.path())
        .envs(env.iter().copied())
        .env("INLET_LOG", "debug")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    // Revoked once a first page came with the first token.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    while !lasting.requests().iter().any(|r| r["path"] == "/auth/oauth/items" && r["status"] == 200) {
        assert!(std::time::Instant::now() < deadline, "no page came");
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    lasting.call("POST", "/_admin/revoke_tokens", None);
    let second = child.wait_with_output().unwrap();
    assert!(second.status.success(), "{}", String::from_utf8_lossy(&second.stderr));
    assert_eq!(revoked.duckdb("bronze.oauth", "SELECT count(*) FROM {t}")[0][0], 120);
    // The server logs a request once it has answered it: wait for the lines of the last ones.
    let answered = lasting.call("GET", "/_admin/state", None)["requests"].as_u64().unwrap() as usize;
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while lasting.requests().len() < answered {
        assert!(std::time::Instant::now() < deadline, "{answered} requests answered, fewer logged");
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    let log = lasting.requests();
    let revoked_at =
        log.iter().find(|r| r["path"] == "/_admin/revoke_tokens").map(|r| r["t"].as_f64().unwrap()).unwrap();
    // inlet's requests in the order it sent them, one at a time (so by arrival). A page in
    // flight when the tokens were revoked may pass with the old token even if it arrived
    // after the revocation did: the revocation shows from the first page refused on.
    let mut sent: Vec<(String, i64, f64)> = log
        .iter()
        .filter(|r| !r["path"].as_str().unwrap().starts_with("/_admin"))
        .map(|r| (r["path"].as_str().unwrap().to_owned(), r["status"].as_i64().unwrap(), r["t"].as_f64().unwrap()))
        .collect();
    sent.sort_by(|a, b| a.2.total_cmp(&b.2));
    let refused = sent.iter().position(|r| r.1 == 401).unwrap_or_else(|| panic!("no page refused: {sent:?}"));
    let after: Vec<(&str, i64)> =
        sent[refused..].iter().take(3).map(|(path, status, _)| (path.as_str(), *status)).collect();
    assert_eq!(after, [("/auth/oauth/items", 401), ("/oauth/token", 200), ("/auth/oauth/items", 200)], "{sent:?}");
    assert!(sent[refused + 1].2 > revoked_at, "the token was renewed after the revocation: {sent:?}");
    let second = inlet_tests::Run::from(second);

    // A key in the query is masked where a URL is shown, and never kept.
    let urls = scratch.duckdb("bronze.key_query", "SELECT DISTINCT _source_url FROM {t}");
    assert!(urls.iter().all(|u| u[0].as_str().unwrap().contains("api_key=***")), "{urls:?}");

    // No secret anywhere: logs, reports, the history, the status, the lake's files.
    // The Basic credentials as they go over the wire, the user's and the OAuth client's.
    let basic = "aW5sZXQtdXNlcjpzM2NyM3QtYmFzaWMtcGFzcw==";
    let client = "aW5sZXQtY2xpZW50OnMzY3IzdC1jbGllbnQtc2VjcmV0";
    let mut outputs = vec![first.stdout, first.stderr, second.stdout, second.stderr];
    for args in [
        vec!["history", "bronze.oauth", "--output", "json"],
        vec!["audit", "bronze.key_query", "--version", "0"],
        vec!["status"],
        vec!["files", "bronze.key_query"],
        vec!["query", "SELECT * FROM _inlet.runs", "--output", "json"],
    ] {
        let run = scratch.inlet_env(&args, &env, "debug");
        assert_eq!(run.code, Some(0), "{args:?}: {}", run.stderr);
        outputs.extend([run.stdout, run.stderr]);
    }
    for output in &outputs {
        assert!(
            !output.contains("s3cr3t") && !output.contains(basic) && !output.contains(client),
            "a secret in the output:\n{output}"
        );
    }
    for dir in [scratch.dir.path(), revoked.dir.path()] {
        let leaks = files_containing(dir, &["s3cr3t", basic, client]);
        assert!(leaks.is_empty(), "secrets written to {leaks:?}");
    }

    // A secret that is not set stops the source, naming the variable and nothing else.
    let missing = scratch.inlet_env(&["run", "--output", "json", "--source", "bearer"], &env[1..], "warn");
    assert_ne!(missing.code, Some(0));
    let error = missing.source("bearer")["error"]["message"].as_str().unwrap().to_owned();
    assert!(error.contains("API_TOKEN") && error.contains("not set"), "{error}");
    // A secret written in the file is refused before anything runs.
    scratch.pipeline(&pipeline(
        "auth",
        &[("bearer", base("bearer"), "items", with(r#"{ type = "bearer", token = "s3cr3t-bearer-token" }"#))],
    ));
    let literal = scratch.inlet(&["validate"]);
    assert_eq!(literal.code, Some(1));
    assert!(
        literal.stderr.contains("sources.bearer.auth.token") && literal.stderr.contains("${env:NAME}"),
        "{}",
        literal.stderr
    );
    assert!(!literal.stderr.contains("s3cr3t"), "{}", literal.stderr);
}

#[test]
fn credentials_keep_to_the_apis_own_site_across_links_and_redirects() {
    // Two servers on two ports: two sites.
    let home = RestServer::start(&["--records", "60"]);
    let other = RestServer::start(&["--records", "60"]);
    let env = [("API_TOKEN", "s3cr3t-bearer-token")];
    let settings = |params: String| {
        format!(
            "params = {{ per_page = 20, {params} }}\npaginator = {{ type = \"json_link\", next_url_path = \"links.next\" }}\ndata_selector = \"data\"\nauth = {{ type = \"bearer\", token = \"${{env:API_TOKEN}}\" }}\nmax_retries = 0"
        )
    };
    let faults = format!("{}/faults/", home.url);
    let sources = [
        // The first page links to the other site: followed, without the token.
        (
            "elsewhere",
            faults.clone(),
            "elsewhere/items",
            settings(format!("elsewhere = \"{}/api/json_link/items\"", other.url)),
        ),
        // A redirect on the same site: followed, the token with it (the page asks for it).
        (
            "same_site",
            faults.clone(),
            "redirect/items",
            settings(format!("code = 307, to = \"{}/auth/bearer/items?per_page=20\"", home.url)),
        ),
        // A redirect to the other site: not followed; the run says so.
        (
            "cross_site",
            faults.clone(),
            "redirect/items",
            settings(format!("code = 302, to = \"{}/api/json_link/items?per_page=21\"", other.url)),
        ),
    ];
    let scratch = Scratch::new();
    scratch.pipeline(&pipeline("sites", &sources));
    let run = scratch.inlet_env(&["run", "--output", "json"], &env, "warn");
    assert_eq!(run.code, Some(2), "{}\n{}", run.stdout, run.stderr);
    for name in ["elsewhere", "same_site"] {
        assert_eq!(run.source(name)["error"], Value::Null, "{name}: {}", run.stdout);
        assert_eq!(scratch.ids(&format!("bronze.{name}")), [60, 60, 1, 60], "{name}");
    }
    let error = run.source("cross_site")["error"]["message"].as_str().unwrap().to_owned();
    assert!(error.contains("HTTP 302"), "{error}");
    // What each site was sent.
    let sent = |server: &RestServer, path: &str| -> Vec<Value> {
        server.requests().iter().filter(|r| r["path"] == path).map(|r| r["auth"].clone()).collect()
    };
    assert_eq!(sent(&home, "/faults/elsewhere/items"), [Value::from("bearer")]);
    let followed = sent(&other, "/api/json_link/items");
    assert_eq!(followed, vec![Value::Null; 2], "the other site got no token");
    assert_eq!(sent(&home, "/auth/bearer/items"), vec![Value::from("bearer"); 3]);
    assert!(
        other.requests().iter().all(|r| r["query"]["per_page"] != "21"),
        "a redirect to the other site was followed"
    );
}

#[test]
fn child_resources_read_each_parent_and_keep_a_cursor_per_parent() {
    let server = RestServer::start(&[]);
    let paging = "paginator = { type = \"json_link\", next_url_path = \"links.next\" }\ndata_selector = \"data\"";
    let sources = [
        ("repos", format!("{}/api/", server.url), "repos", format!("params = {{ per_page = 2 }}\n{paging}")),
        (
            "repo_issues",
            format!("{}/api/", server.url),
            "repos/{resources.repos.name}/issues",
            format!(
                "parent = \"repos\"\ninclude_from_parent = [\"id\", \"owner.login\"]\nparams = {{ per_page = 4 }}\n{paging}\nprimary_key = [\"id\"]\nincremental = {{ cursor_path = \"updated_at\", initial_value = \"2024-01-01T00:00:00Z\", param = \"since\" }}\nschema = {{ id = \"bigint\", updated_at = \"timestamptz\" }}"
            ),
        ),
    ];
    let scratch = Scratch::new();
    scratch.pipeline(&pipeline("children", &sources));
    let run = scratch.run_ok();
    assert_eq!(run.source("repos")["rows"], 4);
    assert_eq!(run.source("repo_issues")["rows"], 50);
    // Each issue carries its parent's values.
    let per_repo = scratch.duckdb(
        "bronze.repo_issues",
        "SELECT _repos_name, _repos_id, _repos_owner_login, count(*), count(DISTINCT id), min(id), max(id) FROM {t} GROUP BY ALL ORDER BY 1",
    );
    let expected: Vec<Vec<Value>> = (1..=4)
        .map(|k: i64| {
            let name = format!("repo-{}", char::from(b'a' + k as u8 - 1));
            vec![
                json!(name),
                json!(k),
                json!("org"),
                json!(5 * k),
                json!(5 * k),
                json!(k * 1000 + 1),
                json!(k * 1000 + 5 * k),
            ]
        })
        .collect();
    assert_eq!(per_repo, expected);

    // The second run asks each parent's issues from that parent's own cursor, and lands nothing.
    let before = server.requests().len();
    let version = single_i64(&scratch.duckdb("bronze.repo_issues", "SELECT count(*) FROM {t}"));
    let again = scratch.run_ok();
    assert_eq!(again.source("repo_issues")["rows"], 0);
    assert!(again.source("repo_issues")["commits"].as_array().unwrap().is_empty(), "no new version");
    assert_eq!(single_i64(&scratch.duckdb("bronze.repo_issues", "SELECT count(*) FROM {t}")), version);
    let since: Vec<(String, String)> = server.requests()[before..]
        .iter()
        .filter(|r| r["path"].as_str().unwrap().ends_with("/issues"))
        .map(|r| (r["path"].as_str().unwrap().to_owned(), r["query"]["since"].as_str().unwrap().to_owned()))
        .collect();
    let minutes = |id: i64| {
        (chrono::DateTime::parse_from_rfc3339("2024-01-01T00:00:00Z").unwrap() + chrono::Duration::minutes(id))
            .to_utc()
            .format("%Y-%m-%dT%H:%M:%SZ")
            .to_string()
    };
    for k in 1..=4i64 {
        let name = format!("repo-{}", char::from(b'a' + k as u8 - 1));
        let path = format!("/api/repos/{name}/issues");
        assert!(since.contains(&(path.clone(), minutes(k * 1000 + 5 * k))), "{path} from its last issue: {since:?}");
    }
}

#[test]
fn a_child_that_cannot_go_on_holds_up_no_other_parent() {
    let server = RestServer::start(&[]);
    let paging = "paginator = { type = \"json_link\", next_url_path = \"links.next\" }\ndata_selector = \"data\"";
    let sources = [
        ("repos", format!("{}/api/", server.url), "repos", format!("params = {{ per_page = 2 }}\n{paging}")),
        // Every child's first page is a 200 error object: no records, no link.
        (
            "stuck",
            format!("{}/faults/", server.url),
            "malformed/items",
            format!(
                "parent = \"repos\"\nparams = {{ repo = \"{{resources.repos.name}}\", per_page = 5, bad_page = 1, kind = \"error\" }}\n{paging}"
            ),
        ),
    ];
    let scratch = Scratch::new();
    scratch.pipeline(&pipeline("stuck", &sources));
    for round in 0..2 {
        let before = server.requests_to("/faults/malformed/items").len();
        let run = scratch.inlet(&["run", "--output", "json"]);
        assert_eq!(run.code, Some(2), "{}", run.stdout);
        assert!(run.source("stuck")["error"]["message"].as_str().unwrap().contains("HTTP 200"), "{}", run.stdout);
        // Each parent's child was tried, each run: one stuck child holds up none of the others.
        let asked: std::collections::BTreeSet<String> = server.requests_to("/faults/malformed/items")[before..]
            .iter()
            .map(|r| r["query"]["repo"].as_str().unwrap().to_owned())
            .collect();
        assert_eq!(asked.len(), 4, "round {round}: {asked:?}");
        // One quarantined body per child, not one more for trying again.
        let bodies = scratch.duckdb("bronze.stuck__quarantine", "SELECT count(*) FROM {t}");
        assert_eq!(bodies[0][0], 4, "round {round}");
    }
}

#[test]
fn children_stuck_mid_sweep_go_on_next_run_beside_cursors_like_theirs() {
    let server = RestServer::start(&["--records", "90"]);
    // Every child's second page is a 200 error object the first time it is asked for; the
    // children page by cursor tokens that are the same for every parent.
    let sources = [
        (
            "repos",
            format!("{}/api/", server.url),
            "repos",
            "params = { per_page = 2 }\npaginator = { type = \"json_link\", next_url_path = \"links.next\" }\ndata_selector = \"data\"".to_owned(),
        ),
        (
            "issues",
            format!("{}/faults/", server.url),
            "malformed_cursor/items",
            "parent = \"repos\"\nparams = { repo = \"{resources.repos.name}\", per_page = 30, bad_page = 2, kind = \"error\", times = 1 }\npaginator = { type = \"cursor\", cursor_path = \"next_cursor\", cursor_param = \"cursor\" }\ndata_selector = \"items\"".to_owned(),
        ),
    ];
    let scratch = Scratch::new();
    scratch.pipeline(&pipeline("stuck_cursor", &sources));
    let first = scratch.inlet(&["run", "--output", "json"]);
    assert_eq!(first.code, Some(2), "{}", first.stdout);
    let parents = scratch.duckdb("bronze.repos", "SELECT count(*) FROM {t}")[0][0].as_i64().unwrap();
    assert_eq!(parents, 4);
    let per_parent = || {
        scratch.duckdb(
            "bronze.issues",
            "SELECT _repos_name, count(*), count(DISTINCT id), min(id), max(id) FROM {t} GROUP BY ALL ORDER BY 1",
        )
    };
    let landed = per_parent();
    assert_eq!(landed.len() as i64, parents, "{landed:?}");
    assert!(landed.iter().all(|row| row[1] == 30 && row[4] == 30), "{landed:?}");
    // The next run takes each child on from its stuck page: the pages other children asked
    // for with the same tokens are no loop of its own.
    let second = scratch.run_ok();
    assert_eq!(second.source("issues")["error"], Value::Null, "{}", second.stdout);
    let landed = per_parent();
    assert_eq!(landed.len() as i64, parents, "{landed:?}");
    for row in &landed {
        assert_eq!(row[1..], [90, 90, 1, 90].map(Value::from), "{landed:?}");
    }
}

#[test]
fn incremental_runs_take_only_what_is_new_and_nothing_twice_at_the_boundary() {
    let server = RestServer::start(&["--records", "200"]);
    let base = format!("{}/api/", server.url);
    let incremental = |extra: &str| {
        format!(
            "params = {{ per_page = 30 }}\npaginator = {{ type = \"json_link\", next_url_path = \"links.next\" }}\ndata_selector = \"data\"\nprimary_key = [\"id\"]\n{TYPES}\nincremental = {{ cursor_path = \"updated_at\", param = \"since\", {extra} }}"
        )
    };
    let sources = [
        // Two and a half minutes of lag: each run asks again for the last three records.
        (
            "items",
            base.clone(),
            "json_link/items",
            incremental("initial_value = \"2024-01-01T00:00:00Z\", lag_secs = 150"),
        ),
        // A bounded backfill of half an hour, kept apart from any other cursor.
        (
            "window",
            base.clone(),
            "json_link/items",
            incremental(
                "initial_value = \"2024-01-01T00:30:00Z\", end_value = \"2024-01-01T01:00:00Z\", end_param = \"until\"",
            ),
        ),
    ];
    // An API that leaves empty fields out answers `{}` when nothing is new: an empty page.
    let terse = (
        "terse",
        base.clone(),
        "cursor/items",
        "params = { per_page = 30, omit_empty = 1 }\npaginator = { type = \"cursor\", cursor_path = \"next_cursor\", cursor_param = \"cursor\" }\ndata_selector = \"items\"\nprimary_key = [\"id\"]\nincremental = { cursor_path = \"updated_at\", param = \"since\", initial_value = \"2100-01-01T00:00:00Z\" }".to_owned(),
    );
    let scratch = Scratch::new();
    scratch.pipeline(&pipeline("incremental", &[sources.to_vec(), vec![terse]].concat()));
    let first = scratch.run_ok();
    assert_eq!(first.source("terse")["rows"], 0);
    assert_eq!(first.source("terse")["error"], Value::Null);
    assert_eq!(first.source("items")["rows"], 200);
    assert_eq!(first.source("window")["rows"], 30);
    assert_eq!(scratch.ids("bronze.window"), [30, 30, 30, 59]);

    // Nothing new: the lag window's records come back and are recognised; no version.
    let before = server.requests().len();
    let idle = scratch.run_ok();
    for name in ["items", "window"] {
        assert_eq!(idle.source(name)["rows"], 0, "{name}");
        assert!(idle.source(name)["commits"].as_array().unwrap().is_empty(), "{name}: no new version");
    }
    let asked: Vec<Value> = server.requests()[before..]
        .iter()
        .filter(|r| r["query"]["until"].is_null() && r["path"] == "/api/json_link/items")
        .map(|r| r["query"]["since"].clone())
        .collect();
    // Record 200 is the newest (00:00 + 200 min = 03:20); less 150 s.
    assert_eq!(asked, [json!("2024-01-01T03:17:30Z")]);

    // New records: only they land.
    server.call("POST", "/_admin/records", Some(json!({"add": 5})));
    let more = scratch.run_ok();
    assert_eq!(more.source("items")["rows"], 5);
    assert_eq!(more.source("window")["rows"], 0);
    // Changed records land again, as new versions.
    server.call("POST", "/_admin/records", Some(json!({"touch": [3, 7], "minutes": 5})));
    let changed = scratch.run_ok();
    assert_eq!(changed.source("items")["rows"], 2);
    let counts = scratch
        .duckdb("bronze.items", "SELECT count(*), count(DISTINCT id), count(DISTINCT (id, updated_at)) FROM {t}");
    assert_eq!(counts[0], [json!(207), json!(205), json!(207)]);
    // The position is in the table: a cursor and the records within its lag.
    let files = scratch.inlet(&["files", "bronze.items"]);
    let position: Value = serde_json::from_str(&files.stdout).unwrap();
    let stream = &position["position"]["streams"][""];
    assert!(stream["cursor"].is_string() && stream["sweep"].is_null(), "{position}");
    assert!(!stream["boundary"].as_object().unwrap().is_empty(), "{position}");
}

#[test]
fn retries_back_off_honour_retry_after_and_keep_to_the_rate_limit() {
    let server = RestServer::start(&["--records", "90"]);
    // Each source tags its requests, so the server's log tells them apart.
    let paging = |tag: &str, params: &str| {
        format!(
            "params = {{ tag = \"{tag}\", {params} }}\npaginator = {{ type = \"json_link\", next_url_path = \"links.next\" }}\ndata_selector = \"data\"\nretry_initial_backoff_ms = 50\n{TYPES}"
        )
    };
    let faults = format!("{}/faults/", server.url);
    let sources = [
        ("too_many", faults.clone(), "429/items", paging("too_many", "per_page = 30, times = 1, retry_after = 1")),
        ("dated", faults.clone(), "429/items", paging("dated", "per_page = 30, times = 1, retry_after = \"date\"")),
        ("errors", faults.clone(), "500/items", paging("errors", "per_page = 30, times = 2")),
        (
            "timeouts",
            faults.clone(),
            "hang/items",
            format!("{}\nrequest_timeout_secs = 1", paging("timeouts", "per_page = 30, hang_secs = 4, times = 1")),
        ),
        ("resets", faults.clone(), "reset/items", paging("resets", "per_page = 30, times = 1")),
        (
            "paced",
            format!("{}/api/", server.url),
            "json_link/items",
            format!("{}\nrequests_per_second = 8", paging("paced", "per_page = 5")),
        ),
    ];
    let scratch = Scratch::new();
    scratch.pipeline(&pipeline("retries", &sources));
    let run = scratch.run_ok();
    for (name, ..) in &sources {
        assert_eq!(scratch.ids(&format!("bronze.{name}")), [90, 90, 1, 90], "{name}");
    }
    let log = server.requests();
    let at = |r: &Value| r["t"].as_f64().unwrap();
    let tagged = |tag: &str| -> Vec<&Value> { log.iter().filter(|r| r["query"]["tag"] == tag).collect() };
    let page_of = |r: &Value| r["query"]["page"].as_str().unwrap_or("1").to_owned();
    for (name, first_status, retries) in
        [("too_many", 429, 1), ("dated", 429, 1), ("errors", 500, 2), ("timeouts", 200, 1), ("resets", 0, 1)]
    {
        let requests = tagged(name);
        assert_eq!(requests.len(), 3 * (1 + retries), "{name}: 3 pages, each failing {retries} times first");
        assert_eq!(run.source(name)["requests"], requests.len() as i64, "{name}");
        for page in ["1", "2", "3"] {
            // In the order they arrived (a hung request is logged when it answers).
            let mut tries: Vec<&&Value> = requests.iter().filter(|r| page_of(r) == page).collect();
            tries.sort_by(|a, b| at(a).total_cmp(&at(b)));
            assert_eq!(tries.len(), 1 + retries, "{name} page {page}: {tries:?}");
            assert_eq!(tries[0]["status"], first_status, "{name} page {page}: {tries:?}");
            assert_eq!(tries.last().unwrap()["status"], 200, "{name} page {page}");
            // `Retry-After` is waited out before the next try of the same page.
            let waited = at(tries[1]) - at(tries[0]);
            match name {
                "too_many" => assert!(waited >= 0.95, "page {page}: retried {waited:.3} s after a 429 asking 1 s"),
                "dated" => assert!(waited >= 1.0, "page {page}: an HTTP date 2 to 3 s ahead, waited {waited:.3} s"),
                "timeouts" => assert!(waited >= 0.95, "page {page}: a hung request given up after {waited:.3} s"),
                _ => {}
            }
        }
    }
    // The rate limit, measured on the server: 8 a second, so any 9 requests in a row span a
    // second, less what arrival times jitter on a busy machine (the reader service's JVMs
    // share its 2 cores: one late arrival shortens the window after it by its delay), and
    // unpaced they would arrive within milliseconds. The first is left out: it alone opened
    // a connection, so it arrives late by more than the jitter.
    let paced: Vec<f64> = tagged("paced").into_iter().map(at).collect();
    assert_eq!(paced.len(), 18);
    for nine in paced[1..].windows(9) {
        assert!(nine[8] - nine[0] >= 0.5, "9 requests within {:.3} s at 8 a second", nine[8] - nine[0]);
    }
    assert!(paced[17] - paced[1] >= 16.0 / 8.0 - 0.25, "17 requests at 8/s took {:.2} s", paced[17] - paced[1]);

    // Failing for good: the error names the request and the status, is retryable, and what
    // came before is committed.
    let scratch = Scratch::new();
    scratch.pipeline(&pipeline(
        "down",
        &[("down", faults, "500/items", format!("{}\nmax_retries = 2", paging("down", "times = 100, status = 503")))],
    ));
    let failed = scratch.inlet(&["run", "--output", "json"]);
    assert_eq!(failed.code, Some(2), "{}", failed.stdout);
    let error = &failed.source("down")["error"];
    assert_eq!(error["kind"], "external");
    assert_eq!(error["retryable"], true);
    let message = error["message"].as_str().unwrap();
    assert!(message.contains("HTTP 503") && message.contains("/faults/500/items"), "{message}");
}

#[test]
fn bodies_that_do_not_parse_are_quarantined_with_their_url_and_status() {
    let server = RestServer::start(&["--records", "200"]);
    let faults = format!("{}/faults/", server.url);
    let links = "paginator = { type = \"json_link\", next_url_path = \"links.next\" }\ndata_selector = \"data\"";
    let offsets = "paginator = { type = \"offset\", limit = 50, maximum_offset = 200 }\ndata_selector = \"items\"";
    let sources = [
        // Its next link is in the broken body: the sweep cannot go on past it.
        (
            "linked",
            faults.clone(),
            "malformed/items",
            format!("params = {{ per_page = 50, bad_page = 2, kind = \"syntax\" }}\n{links}\n{TYPES}"),
        ),
        // Offsets need no body to go on: the broken page is quarantined and the rest lands.
        (
            "shaped",
            faults.clone(),
            "malformed_offset/items",
            format!("params = {{ bad_page = 2, kind = \"shape\" }}\n{offsets}\n{TYPES}"),
        ),
        (
            "html",
            faults.clone(),
            "malformed_offset/items",
            format!("params = {{ bad_page = 3, kind = \"html\" }}\n{offsets}\n{TYPES}"),
        ),
        // With a total to read, the broken body leaves the next page unknown: the sweep stops.
        (
            "totalled",
            faults.clone(),
            "malformed_offset/items",
            format!(
                "params = {{ bad_page = 3, kind = \"truncated\" }}\npaginator = {{ type = \"offset\", limit = 50, total_path = \"total\" }}\ndata_selector = \"items\"\n{TYPES}"
            ),
        ),
        // Records that are not objects, or whose values do not parse.
        ("records", faults.clone(), "badrecords/items", format!("params = {{ per_page = 100 }}\n{links}\n{TYPES}")),
        // A 200 error object, once: no records and no link is not the last page.
        (
            "errored",
            faults.clone(),
            "malformed/items",
            format!("params = {{ per_page = 50, bad_page = 2, kind = \"error\", times = 1 }}\n{links}\n{TYPES}"),
        ),
    ];
    let scratch = Scratch::new();
    scratch.pipeline(&pipeline("bodies", &sources));
    let first = scratch.inlet(&["run", "--output", "json"]);
    assert_eq!(first.code, Some(2), "the linked source stops: {}", first.stdout);
    let linked = first.source("linked");
    let message = linked["error"]["message"].as_str().unwrap();
    assert!(message.contains("/faults/malformed/items") && message.contains("HTTP 200"), "{message}");
    assert_eq!(scratch.ids("bronze.linked"), [50, 50, 1, 50]);
    let quarantined = |table: &str| {
        scratch.duckdb(
            &format!("bronze.{table}__quarantine"),
            "SELECT _error_code, _source_row, _error_message, length(_raw_record) > 0 FROM {t} ORDER BY ALL",
        )
    };
    let linked_bad = quarantined("linked");
    assert_eq!(linked_bad.len(), 1);
    assert_eq!(linked_bad[0][0], "json_syntax");
    let why = linked_bad[0][2].as_str().unwrap();
    assert!(why.contains("HTTP 200") && why.contains("page=2"), "{why}");
    let totalled = first.source("totalled");
    assert_eq!(totalled["error"]["kind"], "external", "{totalled}");
    assert_eq!(scratch.ids("bronze.totalled"), [100, 100, 1, 100]);
    for name in ["shaped", "html"] {
        assert_eq!(first.source(name)["error"], Value::Null, "{name}");
        assert_eq!(scratch.ids(&format!("bronze.{name}"))[0], 150, "{name}: three good pages of four");
        let bad = quarantined(name);
        assert_eq!(bad.len(), 1, "{name}");
        assert_eq!(bad[0][0], if name == "shaped" { "json_shape" } else { "json_syntax" }, "{name}");
    }
    // 200 records: 5 bare strings, 15 bad ids, 7 bad timestamps, 3 of them both.
    assert_eq!(first.source("records")["rows"], 176);
    assert_eq!(first.source("records")["quarantined"], 24);
    let codes = scratch.duckdb(
        "bronze.records__quarantine",
        "SELECT _error_code, count(*), count(DISTINCT (_source_file, _source_row)) FROM {t} GROUP BY 1 ORDER BY 1",
    );
    assert_eq!(codes, [vec![json!("json_shape"), json!(5), json!(5)], vec![json!("type_parse"), json!(19), json!(19)]]);

    let errored = first.source("errored");
    let message = errored["error"]["message"].as_str().unwrap();
    assert!(message.contains("HTTP 200") && message.contains("page=2"), "{message}");
    assert_eq!(scratch.ids("bronze.errored"), [50, 50, 1, 50], "the sweep stays at the error, nothing skipped");
    assert_eq!(quarantined("errored").len(), 1);
    assert_eq!(quarantined("errored")[0][0], "json_shape");

    // Again: the broken page is read again and still broken; it is not quarantined twice.
    let second = scratch.inlet(&["run", "--output", "json", "--source", "linked"]);
    assert_eq!(second.code, Some(2));
    assert_eq!(quarantined("linked").len(), 1);
    assert_eq!(scratch.ids("bronze.linked"), [50, 50, 1, 50]);
    // A whole body is not a record: replay leaves it where it is.
    let replay = scratch.inlet(&["replay", "bronze.shaped", "--output", "json"]);
    assert_eq!(replay.code, Some(0), "{}", replay.stderr);
    let report: Value = serde_json::from_str(&replay.stdout).unwrap();
    assert_eq!((report["landed"].as_i64(), report["still_quarantined"].as_i64()), (Some(0), Some(1)), "{report}");
    assert_eq!(scratch.ids("bronze.shaped")[0], 150);
    // The API answers again: the sweep goes on from the page that failed.
    let recovered = scratch.inlet(&["run", "--output", "json", "--source", "errored"]);
    assert_eq!(recovered.code, Some(0), "{}", recovered.stdout);
    assert_eq!(scratch.ids("bronze.errored"), [200, 200, 1, 200]);
}

#[test]
fn an_api_that_gives_the_same_next_page_again_is_stopped_not_followed() {
    let server = RestServer::start(&["--records", "200"]);
    let scratch = Scratch::new();
    scratch.pipeline(&pipeline(
        "loop",
        &[(
            "looping",
            format!("{}/faults/", server.url),
            "repeat/items",
            format!("params = {{ per_page = 20 }}\npaginator = {{ type = \"json_link\", next_url_path = \"links.next\" }}\ndata_selector = \"data\"\n{TYPES}"),
        )],
    ));
    let started = std::time::Instant::now();
    let run = scratch.inlet(&["run", "--output", "json"]);
    assert!(started.elapsed() < std::time::Duration::from_secs(30));
    assert_eq!(run.code, Some(2), "{}", run.stdout);
    let message = run.source("looping")["error"]["message"].as_str().unwrap().to_owned();
    assert!(
        message.contains("/faults/repeat/items") && message.contains("page=2") && message.contains("next page"),
        "{message}"
    );
    assert_eq!(run.source("looping")["error"]["retryable"], false);
    assert_eq!(scratch.ids("bronze.looping"), [20, 20, 1, 20], "the page before the loop is committed");
    assert!(server.requests_to("/faults/repeat/items").len() <= 3);

    // Page 3 links back to page 1 (the very URL asked first): the first run lands pages 1
    // and 2 and stops at 3; a run after it, resuming at page 3, stops there at once, landing
    // nothing again. (A loop is known by a URL asked before: a link to the same page under
    // another URL is a page like any other.)
    let back = Scratch::new();
    back.pipeline(&pipeline(
        "loop",
        &[(
            "looping",
            format!("{}/faults/", server.url),
            "repeat/items",
            format!("params = {{ page = 1, per_page = 20, loop_at = 3, back_to = 1 }}\npaginator = {{ type = \"json_link\", next_url_path = \"links.next\" }}\ndata_selector = \"data\"\n{TYPES}"),
        )],
    ));
    for _ in 0..2 {
        let before = server.requests_to("/faults/repeat/items").len();
        let run = back.inlet(&["run", "--output", "json"]);
        assert_eq!(run.code, Some(2), "{}", run.stdout);
        assert!(run.source("looping")["error"]["message"].as_str().unwrap().contains("again"), "{}", run.stdout);
        assert_eq!(back.ids("bronze.looping"), [40, 40, 1, 40], "pages 1 and 2, once");
        assert!(server.requests_to("/faults/repeat/items").len() - before <= 3);
    }
}

#[test]
fn kill_nine_during_extraction_loses_and_doubles_nothing() {
    let server = RestServer::start(&["--records", "3000"]);
    let scratch = Scratch::new();
    let common = format!("max_records_per_commit = 60\nrequests_per_second = 60\n{TYPES}");
    scratch.pipeline(&pipeline(
        "kill",
        &[
            // Pages followed by link, some records quarantined: groups with intents.
            (
                "linked",
                format!("{}/faults/", server.url),
                "badrecords/items",
                format!(
                    "params = {{ per_page = 20 }}\npaginator = {{ type = \"json_link\", next_url_path = \"links.next\" }}\ndata_selector = \"data\"\nprimary_key = [\"id\"]\nincremental = {{ cursor_path = \"updated_at\", initial_value = \"2024-01-01T00:00:00Z\", param = \"since\" }}\n{common}"
                ),
            ),
            // Incremental by cursor, paged by offset.
            (
                "cursored",
                format!("{}/api/", server.url),
                "offset/items",
                format!(
                    "paginator = {{ type = \"offset\", limit = 25, total_path = \"total\" }}\ndata_selector = \"items\"\nprimary_key = [\"id\"]\nincremental = {{ cursor_path = \"updated_at\", initial_value = \"2024-01-01T00:00:00Z\", param = \"since\", lag_secs = 600 }}\n{common}"
                ),
            ),
        ],
    ));
    let landed = || {
        scratch.duckdb_or_zero("bronze.linked", "SELECT count(*) FROM {t}")
            + scratch.duckdb_or_zero("bronze.cursored", "SELECT count(*) FROM {t}")
    };
    let good = (1..=3000i64).filter(|i| i % 40 != 0 && i % 10 != 0 && i % 25 != 0).count() as i64;
    let kills = kill_runs(scratch.dir.path(), 4, 0..1500, 0x5e57, &landed, good + 3000);
    assert!(kills > 0, "no run was killed while it was working; the test proves nothing");
    scratch.run_ok();
    // Both are incremental: a run with nothing new lands nothing, and quarantines nothing
    // again at the boundary.
    let last = scratch.run_ok();
    for name in ["linked", "cursored"] {
        assert_eq!(last.source(name)["rows"], 0, "{name}");
        assert_eq!(last.source(name)["quarantined"], 0, "{name}");
    }

    // Every good record once; every bad one once in quarantine.
    let good: Vec<i64> = (1..=3000).filter(|i| i % 40 != 0 && i % 10 != 0 && i % 25 != 0).collect();
    let landed = scratch.duckdb("bronze.linked", "SELECT id FROM {t} ORDER BY id");
    let landed: Vec<i64> = landed.iter().map(|r| r[0].as_i64().unwrap()).collect();
    assert_eq!(landed, good);
    let bad = 3000 - good.len() as i64;
    assert_eq!(scratch.rows_and_distinct("bronze.linked__quarantine", "(_source_file, _source_row)"), (bad, bad));
    assert_eq!(scratch.ids("bronze.cursored"), [3000, 3000, 1, 3000]);
}

/// json-server (npm), a REST server nobody here wrote: its `Link` headers, its `_gte`
/// filter for the incremental window, its data read back whole.
#[test]
fn a_third_party_server_json_server_is_read_whole_then_incrementally() {
    let Some(bin) = std::env::var("INLET_JSON_SERVER").ok().filter(|b| !b.is_empty()) else {
        assert!(
            std::env::var_os("INLET_REQUIRE_SERVICES").is_none(),
            "INLET_JSON_SERVER is not set: scripts/test.sh installs json-server and sets it"
        );
        eprintln!("skipped: no json-server (run scripts/test.sh)");
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let make_db = inlet_tests::workspace_root().join("tests/servers/json-server/make_db.py");
    let made = std::process::Command::new(inlet_tests::python())
        .arg(&make_db)
        .args(["--records", "237", "--out"])
        .arg(dir.path().join("db.json"))
        .status()
        .unwrap();
    assert!(made.success());
    let expected: Value = serde_json::from_slice(&std::fs::read(dir.path().join("db.json")).unwrap()).unwrap();
    let expected = expected["tickets"].as_array().unwrap().clone();
    let port = inlet_tests::free_port();
    /// Stops json-server however the test ends.
    struct Stopped(std::process::Child);
    impl Drop for Stopped {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
    let _server = Stopped(
        std::process::Command::new(&bin)
            .args(["--host", "127.0.0.1", "--port", &port.to_string(), "--read-only", "--ng", "--quiet", "db.json"])
            .current_dir(dir.path())
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .spawn()
            .unwrap(),
    );
    let url = format!("http://127.0.0.1:{port}");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err()
        || inlet_tests::http("GET", &format!("{url}/tickets?_limit=1"), None).0 != 200
    {
        assert!(std::time::Instant::now() < deadline, "json-server did not start");
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    let scratch = Scratch::new();
    scratch.pipeline(&pipeline(
        "tickets",
        &[(
            "tickets",
            format!("{url}/"),
            "tickets",
            r#"params = { _page = 1, _limit = 50, _sort = "updated_at,id", _order = "asc,asc" }
paginator = { type = "header_link" }
data_selector = "$"
primary_key = ["id"]
incremental = { cursor_path = "updated_at", initial_value = "2024-01-01T00:00:00Z", param = "updated_at_gte" }
schema = { id = "bigint", updated_at = "timestamptz" }"#
                .to_owned(),
        )],
    ));
    let first = scratch.run_ok();
    let again = scratch.run_ok();
    assert_eq!(first.source("tickets")["rows"], 237);
    assert_eq!(first.source("tickets")["pages"], 5);
    let landed = scratch.duckdb(
        "bronze.tickets",
        "SELECT id, subject, priority, strftime(updated_at, '%Y-%m-%dT%H:%M:%SZ'), requester, tags FROM {t} ORDER BY id",
    );
    assert_eq!(landed.len(), expected.len());
    for (row, ticket) in landed.iter().zip(&expected) {
        let want = [
            ticket["id"].clone(),
            ticket["subject"].clone(),
            ticket["priority"].clone(),
            ticket["updated_at"].clone(),
            Value::String(ticket["requester"].to_string()),
            Value::String(ticket["tags"].to_string()),
        ];
        assert_eq!(row.as_slice(), want.as_slice());
    }
    // The second run asks from the last cursor (`_gte`: the last ticket comes back) and
    // lands nothing.
    assert_eq!(again.source("tickets")["rows"], 0);
    assert!(again.source("tickets")["commits"].as_array().unwrap().is_empty());
    // One request, one page: json-server did the filtering (without `updated_at_gte` it
    // would have served all five pages again).
    assert_eq!(again.source("tickets")["requests"], 1, "{}", again.stdout);
}

/// `inlet serve` polls a REST source on its schedule: what the API gains lands, once.
#[test]
fn serve_polls_a_rest_source_on_its_schedule() {
    let server = RestServer::start(&["--records", "100"]);
    let scratch = Scratch::new();
    let mut text = pipeline(
        "polled",
        &[(
            "items",
            format!("{}/api/", server.url),
            "json_link/items",
            format!(
                "params = {{ per_page = 25 }}\npaginator = {{ type = \"json_link\", next_url_path = \"links.next\" }}\ndata_selector = \"data\"\nprimary_key = [\"id\"]\nincremental = {{ cursor_path = \"updated_at\", initial_value = \"2024-01-01T00:00:00Z\", param = \"since\" }}\n{TYPES}\nschedule = \"* * * * * *\""
            ),
        )],
    );
    text = text.replace("name = \"polled\"\n", "name = \"polled\"\n\n[pipeline.serve]\nlisten = \"127.0.0.1:0\"\n");
    scratch.pipeline(&text);
    let mut serve = crate::serve::Serve::start(&scratch);
    serve.wait_for("inlet_rows_ingested_total", 100.0);
    server.call("POST", "/_admin/records", Some(json!({"add": 30})));
    serve.wait_for("inlet_rows_ingested_total", 130.0);
    assert!(serve.metric("inlet_pages_ingested_total") >= 5.0);
    assert!(serve.metric("inlet_requests_total") >= 5.0);
    assert_eq!(serve.signal("-TERM"), Some(0));
    assert_eq!(scratch.ids("bronze.items"), [130, 130, 1, 130]);
}

/// A REST source's quarantine replays like a file source's: rows an expectation held back
/// land once it is fixed, with where they came from; records that did not parse are
/// decoded again from their JSON.
#[test]
fn a_rest_sources_quarantine_replays_into_its_table() {
    let server = RestServer::start(&["--records", "100"]);
    let scratch = Scratch::new();
    let source = |limit: u32| {
        pipeline(
            "replayed",
            &[(
                "items",
                format!("{}/faults/", server.url),
                "badrecords/items",
                format!(
                    "params = {{ per_page = 25 }}\npaginator = {{ type = \"json_link\", next_url_path = \"links.next\" }}\ndata_selector = \"data\"\n{TYPES}\n\n[[sources.items.expect]]\nname = \"small\"\nrule = \"amount < {limit}\"\non_violation = \"quarantine\"\n"
                ),
            )],
        )
    };
    scratch.pipeline(&source(50));
    let run = scratch.run_ok();
    // 100 records: 12 do not parse; of the 88 others, those of amount 50 and over (id 40 on).
    let good: Vec<i64> = (1..=100).filter(|i| i % 40 != 0 && i % 10 != 0 && i % 25 != 0).collect();
    let small = good.iter().filter(|i| **i * 5 < 200).count() as i64;
    assert_eq!(run.source("items")["rows"], small);
    assert_eq!(run.source("items")["quarantined"], 100 - small);
    scratch.pipeline(&source(1000));
    let replay = scratch.inlet(&["replay", "bronze.items", "--output", "json"]);
    assert_eq!(replay.code, Some(0), "{}", replay.stderr);
    let report: Value = serde_json::from_str(&replay.stdout).unwrap();
    assert_eq!(report["landed"], good.len() as i64 - small, "{report}");
    let landed = scratch.duckdb("bronze.items", "SELECT id FROM {t} ORDER BY id");
    assert_eq!(landed.iter().map(|r| r[0].as_i64().unwrap()).collect::<Vec<_>>(), good);
    let provenance = scratch.duckdb(
        "bronze.items",
        "SELECT count(*) FILTER (WHERE _source_url LIKE '%/faults/badrecords/items%'), count(*) FILTER (WHERE _source_row IS NULL) FROM {t}",
    );
    assert_eq!(provenance[0], [json!(good.len()), json!(0)]);
    // Once only.
    let again = scratch.inlet(&["replay", "bronze.items", "--output", "json"]);
    let report: Value = serde_json::from_str(&again.stdout).unwrap();
    assert_eq!(report["landed"], 0, "{report}");
}
