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
