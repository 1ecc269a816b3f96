//! Contract tests every kind of source passes: files in a directory, objects under an S3
//! prefix, S3 event notifications on SQS and a REST API all land what is there once, make
//! no version when nothing is new, take only what is new, and lose and double nothing when
//! runs are killed with `kill -9` at random moments.

use std::ops::Range;

use inlet_tests::{RestServer, S3, Scratch, kill_runs, s3};

/// One kind of source, set up to serve numbered records (`id`, `name`).
trait Fixture {
    /// The `[sources.things]` section landing in `bronze.things`.
    fn source(&self) -> String;
    /// Makes records `ids` available, in several units (files, objects, pages).
    fn add(&mut self, scratch: &Scratch, ids: Range<u64>);
    /// How long after a run's first commit it is killed, in milliseconds, while it works (at
    /// its next commit if that comes sooner).
    fn kill_window(&self) -> Range<u64> {
        0..600
    }
    /// Checks what the source holds after everything landed (a queue: nothing).
    fn settled(&self, _scratch: &Scratch) {}
}

/// Runs the contract against `fixture`.
fn contract(fixture: &mut dyn Fixture) {
    let scratch = Scratch::new();
    scratch.pipeline(&format!("[pipeline]\nname = \"contract\"\n\n{}", fixture.source()));
    let landed = |n: i64| {
        assert_eq!(scratch.ids("bronze.things"), [n, n, 1, n], "{n} records once");
    };

    // What is there lands, once.
    fixture.add(&scratch, 1..201);
    let first = scratch.run_ok();
    assert_eq!(first.source("things")["rows"], 200);
    landed(200);
    // Nothing new: no version.
    let idle = scratch.run_ok();
    assert_eq!(idle.source("things")["rows"], 0);
    assert!(idle.source("things")["commits"].as_array().unwrap().is_empty(), "{}", idle.source("things"));
    assert_eq!(idle.source("things")["table_version"], first.source("things")["table_version"]);
    // Something new: only it.
    fixture.add(&scratch, 201..401);
    assert_eq!(scratch.run_ok().source("things")["rows"], 200);
    landed(400);
    // Runs killed at random moments while a bigger batch lands, then one to the end.
    fixture.add(&scratch, 401..2601);
    let rows = || scratch.duckdb_or_zero("bronze.things", "SELECT count(*) FROM {t}");
    let kills = kill_runs(scratch.dir.path(), 3, fixture.kill_window(), 0xc0_ffee, &rows, 2600);
    assert!(kills > 0, "no run was killed while it was working; the test proves nothing");
    scratch.run_ok();
    landed(2600);
    assert_eq!(scratch.run_ok().source("things")["rows"], 0);
    fixture.settled(&scratch);
}

/// CSV text of records `ids`, 50 to a unit: (unit number, text).
fn units(ids: Range<u64>) -> Vec<(u64, String)> {
    let ids: Vec<u64> = ids.collect();
    ids.chunks(50)
        .map(|chunk| {
            let mut text = String::from("id,name\n");
            for id in chunk {
                text.push_str(&format!("{id},thing {id}\n"));
            }
            (chunk[0], text)
        })
        .collect()
}

struct Files;

impl Fixture for Files {
    fn source(&self) -> String {
        "[sources.things]\ntype = \"files\"\npath = \"landing\"\nformat = \"csv\"\ntarget = \"bronze.things\"\nschema = { id = \"bigint\" }\nmax_files_per_commit = 2\n".to_owned()
    }

    // Local files land fast.
    fn kill_window(&self) -> Range<u64> {
        0..150
    }

    fn add(&mut self, scratch: &Scratch, ids: Range<u64>) {
        for (first, text) in units(ids) {
            scratch.write(&format!("landing/things-{first:06}.csv"), text);
        }
    }
}

/// Objects put through the S3 API, in one call.
fn put_objects(s3: &S3, bucket: &str, ids: Range<u64>) {
    let objects: Vec<(String, String)> =
        units(ids).into_iter().map(|(first, text)| (format!("in/things-{first:06}.csv"), text)).collect();
    let objects = serde_json::to_string(&objects).unwrap();
    s3.python(&format!(
        "for key, body in json.loads(r'''{objects}'''):\n    s3.put_object(Bucket='{bucket}', Key=key, Body=body.encode())"
    ));
}

struct S3Listing {
    s3: S3,
    bucket: String,
}

impl Fixture for S3Listing {
    fn source(&self) -> String {
        format!(
            "[sources.things]\ntype = \"files\"\npath = \"s3://{}/in/\"\nformat = \"csv\"\ntarget = \"bronze.things\"\nschema = {{ id = \"bigint\" }}\nmax_files_per_commit = 4\n",
            self.bucket
        )
    }

    fn add(&mut self, _: &Scratch, ids: Range<u64>) {
        put_objects(&self.s3, &self.bucket, ids);
    }
}

struct S3Queue {
    s3: S3,
    bucket: String,
    queue: String,
}

impl Fixture for S3Queue {
    fn source(&self) -> String {
        format!(
            "[sources.things]\ntype = \"files\"\npath = \"s3://{}/in/\"\nformat = \"csv\"\ntarget = \"bronze.things\"\nschema = {{ id = \"bigint\" }}\nmax_files_per_commit = 4\ndiscovery = \"notifications\"\nqueue_url = \"{}\"\nvisibility_timeout_secs = 5\n",
            self.bucket, self.queue
        )
    }

    fn add(&mut self, _: &Scratch, ids: Range<u64>) {
        put_objects(&self.s3, &self.bucket, ids);
    }

    /// Every message was settled through the queue: once the ones killed runs held are
    /// visible again, a run takes and deletes them (their files are in the table), and the
    /// queue is empty.
    fn settled(&self, scratch: &Scratch) {
        std::thread::sleep(std::time::Duration::from_secs(6));
        assert_eq!(scratch.run_ok().source("things")["rows"], 0);
        let left = self.s3.python(&format!(
            "a = sqs.get_queue_attributes(QueueUrl='{}', AttributeNames=['All'])['Attributes']\nprint(int(a['ApproximateNumberOfMessages']) + int(a['ApproximateNumberOfMessagesNotVisible']))",
            self.queue
        ));
        assert_eq!(left.trim(), "0", "messages left on the queue");
    }
}

struct Rest {
    server: RestServer,
}

impl Fixture for Rest {
    fn source(&self) -> String {
        format!(
            r#"[sources.things]
type = "rest"
target = "bronze.things"
base_url = "{}/api/"
path = "json_link/items"
params = {{ per_page = 20 }}
paginator = {{ type = "json_link", next_url_path = "links.next" }}
data_selector = "data"
primary_key = ["id"]
incremental = {{ cursor_path = "updated_at", initial_value = "2024-01-01T00:00:00Z", param = "since" }}
schema = {{ id = "bigint", updated_at = "timestamptz" }}
max_records_per_commit = 100
requests_per_second = 50
"#,
            self.server.url
        )
    }

    fn add(&mut self, _: &Scratch, ids: Range<u64>) {
        let added = self.server.call("POST", "/_admin/records", Some(serde_json::json!({"add": ids.end - ids.start})));
        let first = added["added"][0].as_u64().unwrap();
        assert_eq!(first, ids.start, "the server numbers records from 1 up");
    }
}

#[test]
fn files_in_a_directory_pass_the_source_contract() {
    contract(&mut Files);
}

#[test]
fn objects_under_an_s3_prefix_pass_the_source_contract() {
    let Some(s3) = s3("objects_under_an_s3_prefix_pass_the_source_contract") else { return };
    let bucket = s3.bucket("contract");
    contract(&mut S3Listing { s3, bucket });
}

#[test]
fn s3_notifications_on_sqs_pass_the_source_contract() {
    let Some(s3) = s3("s3_notifications_on_sqs_pass_the_source_contract") else { return };
    let bucket = s3.bucket("contract-q");
    let queue = s3.notification_queue(&bucket, &["s3:ObjectCreated:*"], "in/");
    contract(&mut S3Queue { s3, bucket, queue });
}

#[test]
fn a_rest_api_passes_the_source_contract() {
    contract(&mut Rest { server: RestServer::start(&["--records", "0"]) });
}
