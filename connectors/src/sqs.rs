//! S3 drops announced by S3 event notifications on an SQS queue (`discovery =
//! "notifications"`).
//!
//! A listing returns the objects that messages announced (looked up with HEAD, so they are
//! described exactly as a listing of the prefix would; an object deleted before it was read
//! is dropped), plus a full listing of the prefix every `reconcile_interval_secs`, since
//! notifications are not guaranteed. A message is deleted only once every object it names
//! is in the table ([`Source::done`]) or was passed over, or when it names nothing to
//! ingest: `s3:TestEvent`, `ObjectRemoved`, objects outside the prefix or pattern, objects
//! already gone. Duplicate events for one object are one file; the ledger decides whether it
//! is new. A message that is not an S3 event is logged, counted and deleted (the queue's
//! dead-letter policy never sees it loop). While messages are held, their visibility is
//! extended; those of files that were not ingested (unreadable, still being written, a
//! failed gate) are released when the run ends and come back after the visibility timeout.
//! At most [`MAX_IN_FLIGHT`] messages are held at once.

use std::collections::{BTreeSet, HashMap};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock, Weak};
use std::time::{Duration, Instant};

use aws_sdk_sqs::Client;
use aws_sdk_sqs::types::{ChangeMessageVisibilityBatchRequestEntry, DeleteMessageBatchRequestEntry};
use futures::StreamExt;
use inlet_engine::source::{FileSource, Input, SourceError, SourceFile};
use serde::Deserialize;
use tracing::{debug, info, warn};

use crate::Error;
use crate::s3::S3Prefix;

/// Messages held at once (about 1,000 objects in flight).
pub const MAX_IN_FLIGHT: usize = 1000;
/// Visibility calls (ten messages each) in flight at once.
const VISIBILITY_CALLS_AT_ONCE: usize = 8;
/// How long the first receive of a listing waits for a message (long polling).
const WAIT_SECS: i32 = 1;
/// How long one listing keeps receiving from a queue that keeps filling.
const RECEIVE_BUDGET: Duration = Duration::from_secs(1);

/// Messages not S3 events, seen by this process (for metrics and tests).
pub static MALFORMED_MESSAGES: AtomicU64 = AtomicU64::new(0);

/// An S3 prefix whose new objects are announced on an SQS queue.
pub struct S3Notifications {
    objects: S3Prefix,
    queue_url: String,
    /// The process's SQS client, once the first call loaded the AWS config.
    client: tokio::sync::OnceCell<Client>,
    reconcile: Duration,
    /// How long a received message stays invisible to other consumers; renewed every
    /// quarter of it while held.
    visibility_secs: i32,
    held: Arc<Mutex<Held>>,
    /// The task renewing held messages' visibility, once there are any: handed what the
    /// source still holds when it goes, which it releases after any renewal in flight.
    renewal: Mutex<Option<tokio::sync::mpsc::UnboundedSender<Vec<String>>>>,
    /// Whether the last receive stopped with full batches still coming (at its time budget
    /// or the bound on messages held).
    more: std::sync::atomic::AtomicBool,
    /// Messages deleted by this source: a listing that settled nothing made no progress.
    deleted: AtomicU64,
    /// Messages one listing takes at most: one commit's worth, within [`MAX_IN_FLIGHT`].
    per_listing: usize,
}

/// Messages received and not deleted yet.
#[derive(Default)]
struct Held {
    /// Receipt handle -> the files of that message not done yet.
    messages: HashMap<String, BTreeSet<String>>,
}

impl S3Notifications {
    /// `per_listing` bounds the messages one listing takes (a source's
    /// `max_files_per_commit`); [`MAX_IN_FLIGHT`] bounds it in any case.
    pub fn new(
        objects: S3Prefix,
        queue_url: &str,
        reconcile: Duration,
        visibility: Duration,
        per_listing: usize,
    ) -> Result<Self, Error> {
        Ok(S3Notifications {
            objects,
            queue_url: queue_url.to_owned(),
            client: tokio::sync::OnceCell::new(),
            reconcile,
            visibility_secs: i32::try_from(visibility.as_secs()).unwrap_or(i32::MAX).clamp(4, 43_200),
            held: Arc::new(Mutex::new(Held::default())),
            renewal: Mutex::new(None),
            more: std::sync::atomic::AtomicBool::new(false),
            deleted: AtomicU64::new(0),
            per_listing: per_listing.clamp(1, MAX_IN_FLIGHT),
        })
    }

    /// The SQS client.
    async fn client(&self) -> Result<Client, Error> {
        self.client.get_or_try_init(|| sqs_client(&self.objects)).await.cloned()
    }

    /// Receives what the queue has (waiting briefly for the first message), up to the bound.
    async fn receive(&self) -> Result<Vec<aws_sdk_sqs::types::Message>, Error> {
        let client = self.client().await?;
        let queue = self.queue_url.clone();
        let room = self.per_listing.saturating_sub(self.lock()?.messages.len());
        let visibility = self.visibility_secs;
        let (received, more) = self
            .objects
            .run(async move {
                let mut received = Vec::new();
                let mut more = false;
                let mut wait = WAIT_SECS;
                let began = Instant::now();
                // Until the queue has no full batch left, or for at most a second: a queue that
                // keeps filling is taken a slice at a time, so its first objects do not wait
                // for its last.
                while received.len() < room && began.elapsed() < RECEIVE_BUDGET {
                    let asked = 10.min(i32::try_from(room - received.len()).unwrap_or(10));
                    let batch = client
                        .receive_message()
                        .queue_url(&queue)
                        .max_number_of_messages(asked)
                        .wait_time_seconds(wait)
                        .visibility_timeout(visibility)
                        .send()
                        .await
                        .map_err(|e| queue_error(&queue, "receiving", &e))?;
                    let messages = batch.messages.unwrap_or_default();
                    let full = i32::try_from(messages.len()).is_ok_and(|n| n >= asked);
                    received.extend(messages);
                    more = full;
                    if !full {
                        break;
                    }
                    wait = 0;
                }
                Ok::<_, Error>((received, more))
            })
            .await??;
        self.more.store(more, Ordering::SeqCst);
        Ok(received)
    }

    /// Deletes messages (in batches of ten).
    async fn delete(&self, receipts: Vec<String>) -> Result<(), Error> {
        if receipts.is_empty() {
            return Ok(());
        }
        self.deleted.fetch_add(receipts.len() as u64, Ordering::SeqCst);
        let client = self.client().await?;
        let queue = self.queue_url.clone();
        self.objects
            .run(async move {
                for chunk in receipts.chunks(10) {
                    let entries: Vec<DeleteMessageBatchRequestEntry> = chunk
                        .iter()
                        .enumerate()
                        .filter_map(|(i, r)| {
                            DeleteMessageBatchRequestEntry::builder().id(i.to_string()).receipt_handle(r).build().ok()
                        })
                        .collect();
                    let out = client
                        .delete_message_batch()
                        .queue_url(&queue)
                        .set_entries(Some(entries))
                        .send()
                        .await
                        .map_err(|e| queue_error(&queue, "deleting messages", &e))?;
                    if !out.failed.is_empty() {
                        warn!(queue = %queue, failed = out.failed.len(), "some messages not deleted; they come back");
                    }
                }
                Ok::<_, Error>(())
            })
            .await?
    }

    fn lock(&self) -> Result<std::sync::MutexGuard<'_, Held>, Error> {
        self.held.lock().map_err(|_| Error::Internal("notification state lock poisoned".into()))
    }

    /// Marks `files` done; deletes the messages left with nothing pending.
    async fn settle(&self, files: &[SourceFile]) -> Result<(), Error> {
        let finished: Vec<String> = {
            let mut held = self.lock()?;
            let paths: BTreeSet<&str> = files.iter().map(|f| f.path.as_str()).collect();
            let mut finished = Vec::new();
            held.messages.retain(|receipt, pending| {
                pending.retain(|p| !paths.contains(p.as_str()));
                if pending.is_empty() {
                    finished.push(receipt.clone());
                    false
                } else {
                    true
                }
            });
            finished
        };
        self.delete(finished).await
    }

    /// Keeps held messages invisible while this source lives, renewing them every quarter
    /// of the visibility timeout (one task per source, started with the first message held).
    /// When the source goes, the task releases what it still held: after any renewal in
    /// flight, so none can hide them again.
    async fn keep_alive(&self) -> Result<(), Error> {
        let client = self.client().await?;
        let mut renewal =
            self.renewal.lock().map_err(|_| Error::Internal("notification state lock poisoned".into()))?;
        if renewal.is_some() {
            return Ok(());
        }
        let (release, mut released) = tokio::sync::mpsc::unbounded_channel::<Vec<String>>();
        let held: Weak<Mutex<Held>> = Arc::downgrade(&self.held);
        let queue = self.queue_url.clone();
        let visibility = self.visibility_secs;
        let every = Duration::from_millis(u64::try_from(visibility).unwrap_or(4) * 250);
        crate::s3::io_runtime()?.spawn(async move {
            let mut ticks = tokio::time::interval_at(tokio::time::Instant::now() + every, every);
            ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tokio::select! {
                    biased;
                    receipts = released.recv() => {
                        if let Some(receipts) = receipts
                            && let Err(e) = set_visibility(&client, &queue, &receipts, 0).await
                        {
                            warn!(queue = %queue, error = %e, "messages not released; they come back after their timeout");
                        }
                        return;
                    }
                    _ = ticks.tick() => {
                        // The source is gone: its release is on the channel already.
                        let Some(held) = held.upgrade() else { continue };
                        let receipts: Vec<String> = match held.lock() {
                            Ok(h) => h.messages.keys().cloned().collect(),
                            Err(_) => continue,
                        };
                        drop(held);
                        if let Err(e) = set_visibility(&client, &queue, &receipts, visibility).await {
                            warn!(queue = %queue, error = %e, "visibility not extended");
                        }
                    }
                }
            }
        });
        *renewal = Some(release);
        Ok(())
    }

    /// Whether the prefix is due a full listing (once per `reconcile` per process and queue).
    fn listing_due(&self) -> bool {
        static LISTED: OnceLock<Mutex<HashMap<String, Instant>>> = OnceLock::new();
        let Ok(mut listed) = LISTED.get_or_init(Default::default).lock() else { return true };
        let now = Instant::now();
        match listed.get(&self.queue_url) {
            Some(at) if now.duration_since(*at) < self.reconcile => false,
            _ => {
                listed.insert(self.queue_url.clone(), now);
                true
            }
        }
    }
}

/// The process's SQS client: the AWS config (credential chain, region, endpoint) is loaded
/// once, not each time a run makes its source (every second under `serve`), on the S3
/// runtime its connections live on.
async fn sqs_client(objects: &S3Prefix) -> Result<Client, Error> {
    static CLIENT: OnceLock<Client> = OnceLock::new();
    if let Some(client) = CLIENT.get() {
        return Ok(client.clone());
    }
    let runtime = crate::s3::io_runtime()?;
    let config = objects.run(aws_config::load_defaults(aws_config::BehaviorVersion::latest())).await?;
    let client = {
        let _entered = runtime.enter();
        Client::new(&config)
    };
    Ok(CLIENT.get_or_init(|| client).clone())
}

/// The part of an S3 event notification inlet reads.
#[derive(Deserialize)]
struct Notification {
    #[serde(rename = "Records", default)]
    records: Option<Vec<Record>>,
    #[serde(rename = "Event", default)]
    event: Option<String>,
}

#[derive(Deserialize)]
struct Record {
    #[serde(rename = "eventName")]
    event_name: String,
    s3: RecordS3,
}

#[derive(Deserialize)]
struct RecordS3 {
    bucket: RecordBucket,
    object: RecordObject,
}

#[derive(Deserialize)]
struct RecordBucket {
    name: String,
}

#[derive(Deserialize)]
struct RecordObject {
    key: String,
}

/// What one message says.
#[derive(Debug, PartialEq, Eq)]
enum Announced {
    /// Objects created, by (bucket, key); nothing else the message says matters.
    Created(Vec<(String, String)>),
    /// Nothing to ingest (a test event, removals).
    Nothing,
    Malformed(String),
}

fn parse(body: &str) -> Announced {
    let notification: Notification = match serde_json::from_str(body) {
        Ok(n) => n,
        Err(e) => return Announced::Malformed(format!("not an S3 event: {e}")),
    };
    match (notification.records, notification.event) {
        (Some(records), _) => {
            let created: Vec<(String, String)> = records
                .into_iter()
                .filter(|r| r.event_name.starts_with("ObjectCreated:"))
                .map(|r| (r.s3.bucket.name, decode_key(&r.s3.object.key)))
                .collect();
            if created.is_empty() { Announced::Nothing } else { Announced::Created(created) }
        }
        (None, Some(event)) if event == "s3:TestEvent" => Announced::Nothing,
        _ => Announced::Malformed("neither `Records` nor `s3:TestEvent`".to_owned()),
    }
}

/// Keys in S3 events are URL-encoded, with `+` for a space.
fn decode_key(key: &str) -> String {
    let spaced = key.replace('+', " ");
    percent_encoding::percent_decode_str(&spaced).decode_utf8_lossy().into_owned()
}

/// A queue call's failure: the user's to fix when the queue does not exist or the
/// credentials are refused, else the service's (retried).
fn queue_error<E>(queue: &str, action: &str, err: &aws_sdk_sqs::error::SdkError<E>) -> Error
where
    E: std::error::Error + aws_sdk_sqs::error::ProvideErrorMetadata + 'static,
{
    let code = err.as_service_error().and_then(|e| e.code()).unwrap_or_default();
    let user = matches!(
        code,
        "AWS.SimpleQueueService.NonExistentQueue"
            | "QueueDoesNotExist"
            | "AccessDenied"
            | "AccessDeniedException"
            | "InvalidAddress"
            | "InvalidClientTokenId"
            | "InvalidSecurity"
            | "SignatureDoesNotMatch"
            | "UnrecognizedClientException"
    );
    Error::Queue { queue: queue.to_owned(), message: format!("{action}: {}", error_text(err)), user }
}

fn error_text<E: std::error::Error + 'static>(err: &aws_sdk_sqs::error::SdkError<E>) -> String {
    match err {
        aws_sdk_sqs::error::SdkError::ServiceError(service) => service.err().to_string(),
        other => format!("{}", aws_sdk_sqs::error::DisplayErrorContext(other)),
    }
}

#[async_trait::async_trait]
impl FileSource for S3Notifications {
    async fn list(&self) -> Result<Vec<SourceFile>, SourceError> {
        Ok(self.announced().await?)
    }

    /// The prefix as listed: the queue is not touched.
    async fn peek(&self) -> Result<Vec<SourceFile>, SourceError> {
        Ok(self.objects.list_objects().await?)
    }

    fn atomic(&self) -> bool {
        true
    }

    async fn list_all(&self) -> Result<Vec<SourceFile>, SourceError> {
        Ok(self.objects.list_objects().await?)
    }

    /// The queue had more, this listing's messages were settled (some deleted, none still
    /// held for a file that failed or is not ingested yet): draining on would only take the
    /// same failing messages back.
    fn more(&self) -> bool {
        self.more.load(Ordering::SeqCst)
            && self.deleted.load(Ordering::SeqCst) > 0
            && self.held.lock().is_ok_and(|held| held.messages.is_empty())
    }

    async fn open(&self, file: &SourceFile) -> Result<Input, SourceError> {
        Ok(self.objects.open_object(file).await?)
    }

    async fn done(&self, files: &[SourceFile]) -> Result<(), SourceError> {
        self.objects.clean(files).await?;
        Ok(self.settle(files).await?)
    }

    async fn passed_over(&self, files: &[SourceFile]) -> Result<(), SourceError> {
        Ok(self.settle(files).await?)
    }
}

impl S3Notifications {
    /// The objects messages announced (held until they are in the table), and the whole
    /// prefix when a reconciling listing is due.
    async fn announced(&self) -> Result<Vec<SourceFile>, Error> {
        let messages = self.receive().await?;
        let mut done_receipts = Vec::new();
        let mut announced: BTreeSet<String> = BTreeSet::new();
        let mut held: Vec<(String, BTreeSet<String>)> = Vec::new();
        for message in messages {
            let Some(receipt) = message.receipt_handle else { continue };
            let body = message.body.unwrap_or_default();
            match parse(&body) {
                Announced::Created(objects) => {
                    let paths: BTreeSet<String> = objects
                        .into_iter()
                        .filter(|(bucket, _)| bucket == self.objects.bucket())
                        .filter_map(|(_, key)| self.objects.accept(&key))
                        .collect();
                    if paths.is_empty() {
                        debug!(queue = %self.queue_url, "event for objects outside the source");
                        done_receipts.push(receipt);
                    } else {
                        announced.extend(paths.iter().cloned());
                        held.push((receipt, paths));
                    }
                }
                Announced::Nothing => done_receipts.push(receipt),
                Announced::Malformed(why) => {
                    MALFORMED_MESSAGES.fetch_add(1, Ordering::Relaxed);
                    warn!(queue = %self.queue_url, error = %why, body = %body.chars().take(200).collect::<String>(), "malformed message deleted");
                    done_receipts.push(receipt);
                }
            }
        }
        // Held (and renewed) from now on, while the objects are looked up.
        if !held.is_empty() {
            self.lock()?.messages.extend(held);
            self.keep_alive().await?;
        }
        // Describe each announced object as a listing would; one deleted since is dropped.
        let mut files: HashMap<String, SourceFile> = HashMap::new();
        let mut gone = Vec::new();
        let paths: Vec<String> = announced.into_iter().collect();
        for (path, found) in self.objects.head_all(&paths).await? {
            match found {
                Some(file) => {
                    files.insert(path, file);
                }
                None => gone.push(SourceFile::new(path, 0, 0)),
            }
        }
        self.delete(done_receipts).await?;
        if !gone.is_empty() {
            info!(queue = %self.queue_url, objects = gone.len(), "announced objects deleted before they were read");
            self.settle(&gone).await?;
        }
        if self.listing_due() {
            for file in self.objects.list_objects().await? {
                files.entry(file.path.clone()).or_insert(file);
            }
        }
        let mut files: Vec<SourceFile> = files.into_values().collect();
        files.sort_by(|a, b| a.modified_micros.cmp(&b.modified_micros).then_with(|| a.path.cmp(&b.path)));
        Ok(files)
    }
}

impl Drop for S3Notifications {
    /// Messages of files not ingested go back to the queue at once, not after a timeout.
    fn drop(&mut self) {
        let receipts: Vec<String> = match self.held.lock() {
            Ok(mut held) => held.messages.drain().map(|(r, _)| r).collect(),
            Err(_) => return,
        };
        // Messages are held only once the renewal task runs; it releases them.
        if let Ok(mut renewal) = self.renewal.lock()
            && let Some(release) = renewal.take()
        {
            let _ = release.send(receipts);
        }
    }
}

/// Sets the visibility timeout of messages, in batches of ten, several batches at once; a
/// failed batch does not stop the others.
async fn set_visibility(client: &Client, queue: &str, receipts: &[String], secs: i32) -> Result<(), String> {
    let batches: Vec<Vec<ChangeMessageVisibilityBatchRequestEntry>> = receipts
        .chunks(10)
        .map(|chunk| {
            chunk
                .iter()
                .enumerate()
                .filter_map(|(i, r)| {
                    ChangeMessageVisibilityBatchRequestEntry::builder()
                        .id(i.to_string())
                        .receipt_handle(r)
                        .visibility_timeout(secs)
                        .build()
                        .ok()
                })
                .collect()
        })
        .collect();
    let count = batches.len();
    let failed: Vec<String> = futures::stream::iter(batches)
        .map(|entries| {
            let call = client.change_message_visibility_batch().queue_url(queue).set_entries(Some(entries));
            async move { call.send().await.map(|_| ()).map_err(|e| error_text(&e)) }
        })
        .buffer_unordered(VISIBILITY_CALLS_AT_ONCE)
        .filter_map(|outcome| async move { outcome.err() })
        .collect()
        .await;
    match failed.first() {
        None => Ok(()),
        Some(first) => Err(format!("{} of {count} batches failed, first: {first}", failed.len())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_s3_events() {
        let put = r#"{"Records":[{"eventVersion":"2.1","eventSource":"aws:s3","eventName":"ObjectCreated:Put","s3":{"bucket":{"name":"drops"},"object":{"key":"incoming/2024+01%2Fa%2Bb.csv","size":3,"eTag":"x"}}}]}"#;
        assert_eq!(parse(put), Announced::Created(vec![("drops".to_owned(), "incoming/2024 01/a+b.csv".to_owned())]));
        let removed = put.replace("ObjectCreated:Put", "ObjectRemoved:Delete");
        assert_eq!(parse(&removed), Announced::Nothing);
        assert_eq!(parse(r#"{"Service":"Amazon S3","Event":"s3:TestEvent","Bucket":"drops"}"#), Announced::Nothing);
        assert!(matches!(parse("not json"), Announced::Malformed(_)));
        assert!(matches!(parse(r#"{"hello":1}"#), Announced::Malformed(_)));
        assert!(matches!(parse(r#"{"Records":[{"eventName":"ObjectCreated:Put"}]}"#), Announced::Malformed(_)));
    }
}
