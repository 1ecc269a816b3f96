//! `inlet-s3-bench`: objects of about 100 KB dropped into an S3 bucket (moto) and landed by
//! `inlet serve` in a bronze table on the same server, found through S3 event notifications
//! on SQS, then found by listing. Prints objects/s, MB/s and the latency from each
//! PutObject's return to the commit holding the object being visible in the table's log
//! (p50, p99).
//!
//! Needs moto (`scripts/test.sh` installs it into `.venv`) and the `inlet` binary beside this
//! one: `cargo build --release --workspace --bins`, then `inlet-s3-bench`.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use clap::Parser;
use futures::StreamExt;
use inlet_benches::{percentile, start_serve};
use object_store::aws::AmazonS3Builder;
use object_store::path::Path as StorePath;
use object_store::{ObjectStore, ObjectStoreExt};
use serde_json::Value;

#[derive(Parser)]
struct Args {
    #[arg(long, default_value_t = 1000)]
    objects: usize,
    /// Size of each object, roughly.
    #[arg(long, default_value_t = 100)]
    object_kb: usize,
    /// The virtualenv holding moto and boto3.
    #[arg(long, default_value = ".venv")]
    venv: PathBuf,
    #[arg(long, default_value = "/tmp/inlet-bench/s3")]
    dir: PathBuf,
}

/// Kills a child process when dropped.
struct Guard(Child);

impl Drop for Guard {
    fn drop(&mut self) {
        let _ = Command::new("kill").args(["-TERM", &self.0.id().to_string()]).status();
        let _ = self.0.wait();
    }
}

const ENV: [(&str, &str); 5] = [
    ("AWS_ALLOW_HTTP", "true"),
    ("AWS_REGION", "us-east-1"),
    ("AWS_DEFAULT_REGION", "us-east-1"),
    ("AWS_ACCESS_KEY_ID", "bench"),
    ("AWS_SECRET_ACCESS_KEY", "bench"),
];

fn free_port() -> anyhow::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

/// A CSV body of about `kb` KB, its ids starting at `first`.
fn body(first: usize, kb: usize) -> Vec<u8> {
    let mut csv = String::from("order_id,customer_id,order_ts,amount\n");
    let mut id = first;
    while csv.len() < kb * 1024 {
        csv.push_str(&format!("{id},{},2024-05-01T12:{:02}:00Z,{}.{:02}\n", id % 9973, id % 60, id % 1000, id % 100));
        id += 1;
    }
    csv.into_bytes()
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let inlet = std::env::current_exe()?.with_file_name("inlet");
    if !inlet.exists() {
        bail!("{} not found: run `cargo build --release --workspace --bins` first", inlet.display());
    }
    let port = free_port()?;
    let endpoint = format!("http://127.0.0.1:{port}");
    let _moto = Guard(
        Command::new(args.venv.join("bin/moto_server"))
            .args(["-H", "127.0.0.1", "-p", &port.to_string()])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .context("starting moto (run scripts/test.sh once to install it into .venv)")?,
    );
    let started = Instant::now();
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        if started.elapsed() > Duration::from_secs(30) {
            bail!("moto did not start");
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    println!("{}", sqs_alone(&args, &endpoint)?);
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    for mode in ["notifications", "listing"] {
        let result = runtime.block_on(one_mode(&args, &inlet, &endpoint, mode))?;
        println!("{result}");
    }
    Ok(())
}

/// What moto's SQS alone costs for as many messages, with no inlet: boto3 sends S3-event
/// sized messages ten at a time, then receives and deletes them ten at a time. The floor
/// under notification mode on this server.
fn sqs_alone(args: &Args, endpoint: &str) -> anyhow::Result<String> {
    let script = format!(
        r#"
import boto3, time
sqs = boto3.client('sqs')
url = sqs.create_queue(QueueName='floor-{pid}')['QueueUrl']
body = 'x' * 900
began = time.time()
for i in range(0, {n}, 10):
    sqs.send_message_batch(QueueUrl=url, Entries=[{{'Id': str(j), 'MessageBody': body}} for j in range(min(10, {n} - i))])
sent = time.time() - began
began = time.time()
received = 0
while True:
    got = sqs.receive_message(QueueUrl=url, MaxNumberOfMessages=10, VisibilityTimeout=120).get('Messages', [])
    if not got:
        break
    received += len(got)
    sqs.delete_message_batch(QueueUrl=url, Entries=[{{'Id': str(j), 'ReceiptHandle': m['ReceiptHandle']}} for j, m in enumerate(got)])
print(f"moto's SQS alone (boto3, no inlet): {n} messages sent in {{sent:.1f}}s, {{received}} received and deleted in {{time.time() - began:.1f}}s")
sqs.delete_queue(QueueUrl=url)
"#,
        n = args.objects,
        pid = std::process::id()
    );
    let out = Command::new(args.venv.join("bin/python"))
        .arg("-c")
        .arg(&script)
        .env("AWS_ENDPOINT_URL", endpoint)
        .envs(ENV)
        .output()?;
    if !out.status.success() {
        bail!("the SQS floor failed: {}", String::from_utf8_lossy(&out.stderr));
    }
    Ok(String::from_utf8_lossy(&out.stdout).trim().to_owned())
}

async fn one_mode(args: &Args, inlet: &Path, endpoint: &str, mode: &str) -> anyhow::Result<String> {
    let bucket = format!("bench-{mode}-{}", std::process::id());
    // The bucket, the queue and the bucket's notifications of the landing prefix only (the
    // lake is in the same bucket), through the AWS API.
    let setup = format!(
        r#"
import boto3
s3 = boto3.client('s3'); sqs = boto3.client('sqs')
s3.create_bucket(Bucket='{bucket}')
url = sqs.create_queue(QueueName='{bucket}')['QueueUrl']
arn = sqs.get_queue_attributes(QueueUrl=url, AttributeNames=['QueueArn'])['Attributes']['QueueArn']
if '{mode}' == 'notifications':
    s3.put_bucket_notification_configuration(Bucket='{bucket}', NotificationConfiguration={{
        'QueueConfigurations': [{{'QueueArn': arn, 'Events': ['s3:ObjectCreated:*'],
            'Filter': {{'Key': {{'FilterRules': [{{'Name': 'prefix', 'Value': 'in/'}}]}}}}}}]}})
print(url)
"#
    );
    let out = Command::new(args.venv.join("bin/python"))
        .arg("-c")
        .arg(&setup)
        .env("AWS_ENDPOINT_URL", endpoint)
        .envs(ENV)
        .output()?;
    if !out.status.success() {
        bail!("setup failed: {}", String::from_utf8_lossy(&out.stderr));
    }
    let queue_url = String::from_utf8_lossy(&out.stdout).trim().to_owned();
    let discovery = match mode {
        "notifications" => {
            format!("discovery = \"notifications\"\nqueue_url = \"{queue_url}\"\nreconcile_interval_secs = 3600")
        }
        _ => "reconcile_interval_secs = 1".to_owned(),
    };
    let dir = args.dir.join(mode);
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir)?;
    std::fs::write(
        dir.join("inlet.toml"),
        format!(
            r#"[pipeline]
name = "s3-bench"
lake = "s3://{bucket}/lake"

[pipeline.serve]
listen = "127.0.0.1:0"

[sources.drops]
type = "files"
path = "s3://{bucket}/in/"
format = "csv"
target = "bronze.drops"
schema = {{ order_id = "bigint", customer_id = "bigint", order_ts = "timestamp", amount = "decimal(18,2)" }}
{discovery}
"#
        ),
    )?;
    let env: Vec<(&str, &str)> = ENV.iter().copied().chain([("AWS_ENDPOINT_URL", endpoint)]).collect();
    let (child, _) = start_serve(inlet, &dir, &env)?;
    let _serve = Guard(child);
    // Let its first look at the (empty) bucket pass.
    tokio::time::sleep(Duration::from_secs(2)).await;

    let store: Arc<dyn ObjectStore> = Arc::new(
        AmazonS3Builder::new()
            .with_endpoint(endpoint)
            .with_allow_http(true)
            .with_region("us-east-1")
            .with_access_key_id("bench")
            .with_secret_access_key("bench")
            .with_bucket_name(&bucket)
            .build()?,
    );
    let bodies: Vec<(String, Vec<u8>)> =
        (0..args.objects).map(|i| (format!("o-{i:05}.csv"), body(i * 10_000, args.object_kb))).collect();
    let bytes: usize = bodies.iter().map(|(_, b)| b.len()).sum();
    let began = Instant::now();
    // The puts, 8 at a time, while the log is watched.
    let put_store = store.clone();
    let puts = tokio::spawn(async move {
        futures::stream::iter(bodies)
            .map(|(name, body)| {
                let store = put_store.clone();
                async move {
                    store.put(&StorePath::from(format!("in/{name}")), body.into()).await.map(|_| (name, Instant::now()))
                }
            })
            .buffer_unordered(8)
            .collect::<Vec<_>>()
            .await
    });
    let mut seen: HashMap<String, Instant> = HashMap::new();
    let mut read: std::collections::HashSet<String> = std::collections::HashSet::new();
    let log = StorePath::from("lake/bronze/drops/_delta_log");
    while seen.len() < args.objects {
        if began.elapsed() > Duration::from_secs(900) {
            bail!("{mode}: only {} of {} objects landed", seen.len(), args.objects);
        }
        let listed: Vec<_> = store.list(Some(&log)).collect().await;
        let now = Instant::now();
        for meta in listed.into_iter().flatten() {
            let name = meta.location.to_string();
            if !name.ends_with(".json") || !read.insert(name) {
                continue;
            }
            let text = store.get(&meta.location).await?.bytes().await?;
            for line in String::from_utf8_lossy(&text).lines() {
                let Ok(action) = serde_json::from_str::<Value>(line) else { continue };
                for file in action.pointer("/commitInfo/inlet/files").and_then(Value::as_array).into_iter().flatten() {
                    if let Some(path) = file.get("path").and_then(Value::as_str) {
                        seen.entry(path.to_owned()).or_insert(now);
                    }
                }
            }
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let done = began.elapsed().as_secs_f64();
    let put_done: HashMap<String, Instant> = puts.await?.into_iter().collect::<Result<_, _>>()?;
    let mut latency: Vec<f64> =
        put_done.iter().filter_map(|(k, t)| seen.get(k).map(|s| s.duration_since(*t).as_secs_f64())).collect();
    Ok(format!(
        "{mode}: {} objects ({:.0} MB) in {done:.1}s: {:.0} objects/s, {:.1} MB/s; put-to-visible p50 {:.2}s p99 {:.2}s",
        args.objects,
        bytes as f64 / 1e6,
        args.objects as f64 / done,
        bytes as f64 / 1e6 / done,
        percentile(&mut latency, 0.5),
        percentile(&mut latency, 0.99)
    ))
}
