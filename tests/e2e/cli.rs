//! `inlet validate` and exit codes.

use inlet_tests::Scratch;

#[test]
fn validate_reports_line_and_key_without_touching_data() {
    let scratch = Scratch::new();
    scratch.pipeline(
        "[pipeline]\nname = \"x\"\n\n[sources.a]\ntype = \"files\"\npath = \"in\"\nformat = \"csv\"\ntarget = \"a\"\n",
    );
    let run = scratch.inlet(&["validate"]);
    assert_eq!(run.code, Some(1));
    assert!(run.stderr.contains("line 8") && run.stderr.contains("sources.a.target"), "{}", run.stderr);

    scratch.pipeline("[pipeline]\nname = \"x\"\n\n[sources.a]\ntype = \"files\"\npath = \"in\"\nformat = \"xml\"\ntarget = \"bronze.a\"\n");
    let run = scratch.inlet(&["validate"]);
    assert_eq!(run.code, Some(1));
    assert!(run.stderr.contains("line 7") && run.stderr.contains("xml"), "{}", run.stderr);

    scratch.pipeline("[pipeline]\nname = \"x\"\n\n[sources.a]\ntype = \"files\"\npath = \"in\"\nformat = \"csv\"\ntarget = \"bronze.a\"\nschema = { n = \"integr\" }\n");
    let run = scratch.inlet(&["validate"]);
    assert!(run.stderr.contains("sources.a.schema.n") && run.stderr.contains("integr"), "{}", run.stderr);

    scratch.pipeline("[pipeline]\nname = \"x\"\n\n[sources.a]\ntype = \"files\"\npath = \"in\"\nformat = \"csv\"\ntarget = \"bronze.a\"\n");
    let run = scratch.inlet(&["validate"]);
    assert_eq!(run.code, Some(0), "{}", run.stderr);
    assert!(run.stdout.contains("a -> bronze.a"));
    assert!(!scratch.path("lake").exists(), "validate does no IO beyond reading the file");
}

#[test]
fn a_missing_landing_directory_is_an_external_error() {
    let scratch = Scratch::new();
    scratch.pipeline("[pipeline]\nname = \"x\"\n\n[sources.a]\ntype = \"files\"\npath = \"nowhere\"\nformat = \"csv\"\ntarget = \"bronze.a\"\n");
    let run = scratch.inlet(&["run", "--output", "json"]);
    assert_eq!(run.code, Some(2), "{}", run.stdout);
    assert!(run.source("a")["error"]["message"].as_str().unwrap().contains("nowhere"));
    let missing = scratch.inlet(&["run", "other.toml"]);
    assert_eq!(missing.code, Some(1));
    assert!(missing.stderr.contains("other.toml"));
}

const SOURCE: &str = "[pipeline]\nname = \"dag\"\n[sources.orders]\ntype = \"files\"\npath = \"in\"\nformat = \"csv\"\ntarget = \"bronze.orders\"\n";

#[test]
fn validate_checks_the_table_graph_and_sql() {
    let scratch = Scratch::new();
    let cases = [
        (
            "[tables.\"silver.a\"]\nsql = \"SELECT * FROM silver.b\"\n[tables.\"silver.b\"]\nsql = \"SELECT * FROM silver.a\"\n",
            "cycle",
        ),
        ("[tables.\"silver.a\"]\nsql = \"SELECT * FROM bronze.nope\"\n", "`bronze.nope`"),
        ("[tables.\"silver.a\"]\nsql = \"SELECT * FROM bronze.orders WHERE\"\n", "silver.a"),
        ("[tables.\"silver.a\"]\nsql = \"SELECT 1\"\nwrite = \"merge\"\n", "needs at least one key"),
        ("[tables.\"silver.a\"]\nsql_file = \"models/missing.sql\"\n", "missing.sql"),
    ];
    for (tables, expected) in cases {
        scratch.pipeline(&format!("{SOURCE}{tables}"));
        let run = scratch.inlet(&["validate"]);
        assert_eq!(run.code, Some(1), "{tables}: {}{}", run.stdout, run.stderr);
        assert!(run.stderr.contains(expected), "{tables}: expected `{expected}` in:\n{}", run.stderr);
    }
    scratch.write("models/a.sql", "SELECT order_id FROM bronze.orders -- a model file\n");
    scratch.pipeline(&format!(
        "{SOURCE}[tables.\"silver.a\"]\nsql_file = \"models/a.sql\"\n[tables.\"gold.b\"]\nsql = \"SELECT count(*) AS n FROM silver.a\"\n"
    ));
    let run = scratch.inlet(&["validate"]);
    assert_eq!(run.code, Some(0), "{}", run.stderr);
    assert!(run.stdout.contains("gold.b (overwrite) <- silver.a"), "{}", run.stdout);
    let plan = scratch.inlet(&["plan", "--format", "dot"]);
    assert!(plan.stdout.contains("\"bronze.orders\" -> \"silver.a\";"), "{}", plan.stdout);
    assert!(plan.stdout.contains("\"silver.a\" -> \"gold.b\";"), "{}", plan.stdout);
    assert!(!scratch.path("lake").exists(), "validate and plan touch no data");
}

#[test]
fn a_failed_table_skips_its_descendants_not_its_siblings() {
    let scratch = Scratch::new();
    scratch.write("in/a.csv", "order_id,amount\n1,10\n1,11\n2,5\n");
    scratch.pipeline(&format!(
        "{SOURCE}
[tables.\"silver.dupes\"]
sql = \"SELECT order_id, amount FROM bronze.orders\"
write = \"merge\"
keys = [\"order_id\"]
[tables.\"gold.after_dupes\"]
sql = \"SELECT count(*) AS n FROM silver.dupes\"
[tables.\"gold.sibling\"]
sql = \"SELECT sum(amount) AS total FROM bronze.orders\"
"
    ));
    let run = scratch.inlet(&["run", "--output", "json"]);
    assert_eq!(run.code, Some(1), "{}", run.stdout);
    let report = run.report();
    let status = |name: &str| {
        report["tables"].as_array().unwrap().iter().find(|t| t["table"] == name).unwrap()["status"].clone()
    };
    assert_eq!(status("silver.dupes"), "failed");
    assert_eq!(status("gold.after_dupes"), "skipped");
    assert_eq!(status("gold.sibling"), "committed");
    assert!(!std::path::Path::new(&scratch.table("silver.dupes")).exists(), "a failed table publishes nothing");
    // `--select` runs a table and its ancestors only.
    let run = scratch.inlet(&["run", "--output", "json", "--select", "+gold.sibling"]);
    let tables: Vec<String> =
        run.report()["tables"].as_array().unwrap().iter().map(|t| t["table"].as_str().unwrap().to_owned()).collect();
    assert_eq!(tables, ["gold.sibling"]);
}

#[test]
fn logs_can_be_json_lines() {
    let scratch = Scratch::new();
    scratch.pipeline(
        "[pipeline]\nname = \"logs\"\n\n[sources.orders]\ntype = \"files\"\npath = \"landing\"\nformat = \"csv\"\ntarget = \"bronze.orders\"\n",
    );
    scratch.write("landing/a.csv", "id\n1\n");
    let run = scratch.inlet(&["run", "--log", "info", "--log-format", "json"]);
    assert_eq!(run.code, Some(0), "{}", run.stderr);
    let lines: Vec<serde_json::Value> =
        run.stderr.lines().map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}"))).collect();
    assert!(
        lines.iter().any(|l| l["fields"]["message"] == "committed" && l["fields"]["source"] == "orders"),
        "{}",
        run.stderr
    );
}
