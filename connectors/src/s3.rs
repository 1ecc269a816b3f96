//! Files under an S3 prefix (`s3://bucket/prefix/`), found by listing.
//!
//! Credentials, region and endpoint come from the standard AWS environment
//! (`AWS_ACCESS_KEY_ID`, `AWS_REGION`, `AWS_ENDPOINT_URL`, `AWS_ALLOW_HTTP`, web identity,
//! instance metadata), never from the pipeline file. The engine's [`Source`] is synchronous
//! (decoding runs on blocking threads), so S3 sources do their IO on one small runtime of
//! their own ([`io_runtime`]) and hand bytes over through a bounded channel: an object is
//! streamed, at most [`CHUNKS_IN_FLIGHT`] chunks ahead of its decoder, never held whole.

use std::io::Read;
use std::sync::Arc;
use std::sync::mpsc::{Receiver, SyncSender, sync_channel};

use bytes::Bytes;
use futures::StreamExt;
use globset::GlobMatcher;
use inlet_engine::source::{FileError, Input, Source, SourceFile};
use object_store::aws::AmazonS3Builder;
use object_store::path::Path;
use object_store::{ObjectStore, ObjectStoreExt};

use crate::Cleanup;
use crate::local::{compile_pattern, decompress_stream, is_in_progress};

/// Objects looked up at once ([`S3Prefix::head_all`]).
pub const HEADS_AT_ONCE: usize = 16;

/// Chunks of an object read ahead of its decoder.
pub const CHUNKS_IN_FLIGHT: usize = 4;

/// An S3 prefix holding landing files: listed (optionally matching a glob), opened as streams
/// and decompressed by extension, like a local landing directory. Keys whose last part is
/// hidden (`.x`, `_x`) or marks an upload in progress are skipped.
pub struct S3Prefix {
    url: String,
    store: Arc<dyn ObjectStore>,
    prefix: Path,
    pattern: Option<GlobMatcher>,
    recursive: bool,
    runtime: tokio::runtime::Handle,
    /// What becomes of objects once they are in the table; `Move` holds the prefix (in the
    /// same bucket) they go under.
    cleanup: Cleanup,
    move_to: Path,
}

/// The runtime S3 sources do their IO on: one per process, living as long as it, so that
/// no source has to shut a runtime down from inside another.
pub(crate) fn io_runtime() -> Result<&'static tokio::runtime::Runtime, FileError> {
    static RUNTIME: std::sync::OnceLock<std::io::Result<tokio::runtime::Runtime>> = std::sync::OnceLock::new();
    RUNTIME
        .get_or_init(|| {
            tokio::runtime::Builder::new_multi_thread().worker_threads(1).thread_name("inlet-s3").enable_all().build()
        })
        .as_ref()
        .map_err(|e| FileError::new(format!("starting the S3 client: {e}")))
}

/// The process's client of a bucket: sources are made for every run (every second under
/// `serve` for a queue), and a client kept keeps its connections and credentials.
fn bucket_store(bucket: &str) -> object_store::Result<Arc<dyn ObjectStore>> {
    static STORES: std::sync::OnceLock<std::sync::Mutex<std::collections::HashMap<String, Arc<dyn ObjectStore>>>> =
        std::sync::OnceLock::new();
    let stores = STORES.get_or_init(Default::default);
    if let Some(store) = stores.lock().ok().and_then(|s| s.get(bucket).cloned()) {
        return Ok(store);
    }
    let store: Arc<dyn ObjectStore> = Arc::new(AmazonS3Builder::from_env().with_bucket_name(bucket).build()?);
    if let Ok(mut stores) = stores.lock() {
        stores.insert(bucket.to_owned(), store.clone());
    }
    Ok(store)
}

impl S3Prefix {
    /// `url` is `s3://bucket[/prefix]`.
    pub fn new(url: &str, pattern: Option<&str>, recursive: bool) -> Result<Self, FileError> {
        let parsed = url::Url::parse(url).map_err(|e| FileError::new(format!("`{url}` is not a URL: {e}")))?;
        let bucket = parsed.host_str().ok_or_else(|| FileError::new(format!("`{url}` names no bucket")))?;
        let store = bucket_store(bucket).map_err(|e| FileError::new(format!("S3 for `{url}`: {e}")))?;
        let pattern = compile_pattern(pattern)?;
        let runtime = io_runtime()?.handle().clone();
        Ok(S3Prefix {
            url: url.trim_end_matches('/').to_owned(),
            store,
            prefix: Path::from(parsed.path().trim_matches('/')),
            pattern,
            recursive,
            runtime,
            cleanup: Cleanup::Off,
            move_to: Path::default(),
        })
    }

    /// What becomes of objects once they are in the table. A move stays in the bucket.
    pub fn with_cleanup(mut self, cleanup: Cleanup) -> Result<Self, FileError> {
        if let Cleanup::Move(to) = &cleanup {
            let parsed = url::Url::parse(to).map_err(|e| FileError::new(format!("`{to}` is not a URL: {e}")))?;
            let source = url::Url::parse(&self.url).map_err(|e| FileError::new(e.to_string()))?;
            if parsed.host_str() != source.host_str() {
                return Err(FileError::new(format!("`{to}` is not in the bucket of `{}`", self.url)));
            }
            self.move_to = Path::from(parsed.path().trim_matches('/'));
        }
        self.cleanup = cleanup;
        Ok(self)
    }

    /// Runs `work` on the source's runtime and waits for it (from any thread, async or not).
    pub(crate) fn wait<T: Send + 'static>(
        &self,
        work: impl std::future::Future<Output = T> + Send + 'static,
    ) -> Result<T, FileError> {
        let handle = self.runtime.spawn(work);
        let (tx, rx) = sync_channel(1);
        self.runtime.spawn(async move {
            let _ = tx.send(handle.await);
        });
        let joined = match tokio::runtime::Handle::try_current() {
            // A worker of another runtime: let it hand its other tasks on while this waits.
            Ok(_) => tokio::task::block_in_place(|| rx.recv()),
            Err(_) => rx.recv(),
        };
        joined
            .map_err(|_| FileError::new("the S3 client stopped"))?
            .map_err(|e| FileError::new(format!("S3 task failed: {e}")))
    }

    /// The bucket this prefix is in.
    pub fn bucket(&self) -> &str {
        self.url.trim_start_matches("s3://").trim_start_matches("s3a://").split('/').next().unwrap_or_default()
    }

    /// A key's path relative to the prefix, when it is one of the source's files (under the
    /// prefix, matching the pattern, not hidden or in progress).
    pub fn accept(&self, key: &str) -> Option<String> {
        let relative = match self.prefix.as_ref() {
            "" => key,
            prefix => key.strip_prefix(prefix)?.strip_prefix('/')?,
        };
        let name = relative.rsplit('/').next().unwrap_or(relative);
        let rejected = relative.is_empty()
            || name.starts_with('.')
            || name.starts_with('_')
            || is_in_progress(name)
            || (!self.recursive && relative.contains('/'))
            || self.pattern.as_ref().is_some_and(|p| !p.is_match(relative));
        (!rejected).then(|| relative.to_owned())
    }

    /// The files at `relative` paths as a listing would show them (looked up
    /// [`HEADS_AT_ONCE`] at a time); `None` for one that is gone.
    pub fn head_all(&self, relative: &[String]) -> Result<Vec<(String, Option<SourceFile>)>, FileError> {
        let lookups: Vec<(String, Path, String)> =
            relative.iter().map(|r| (r.clone(), self.key(r), format!("{}/{r}", self.url))).collect();
        let store = self.store.clone();
        self.wait(async move {
            futures::stream::iter(lookups)
                .map(|(relative, key, url)| {
                    let store = store.clone();
                    async move {
                        match store.head(&key).await {
                            Ok(m) => Ok((relative.clone(), Some(source_file(relative, m)))),
                            Err(object_store::Error::NotFound { .. }) => Ok((relative, None)),
                            Err(e) => Err(FileError::new(format!("cannot read `{url}`: {e}"))),
                        }
                    }
                })
                .buffer_unordered(HEADS_AT_ONCE)
                .collect::<Vec<_>>()
                .await
                .into_iter()
                .collect::<Result<Vec<_>, FileError>>()
        })?
    }

    /// The key of a file relative to the prefix.
    pub(crate) fn key(&self, relative: &str) -> Path {
        if self.prefix.as_ref().is_empty() {
            Path::from(relative)
        } else {
            Path::from(format!("{}/{relative}", self.prefix.as_ref()))
        }
    }
}

/// An object as the source's file at `relative`.
fn source_file(relative: String, object: object_store::ObjectMeta) -> SourceFile {
    SourceFile {
        path: relative,
        size_bytes: object.size,
        modified_micros: object.last_modified.timestamp_micros(),
        etag: object.e_tag,
    }
}

impl Source for S3Prefix {
    fn list(&self) -> Result<Vec<SourceFile>, FileError> {
        let store = self.store.clone();
        let prefix = self.prefix.clone();
        let url = self.url.clone();
        let listed = self.wait(async move {
            let prefix = (!prefix.as_ref().is_empty()).then_some(prefix);
            let mut objects = Vec::new();
            let mut stream = store.list(prefix.as_ref());
            while let Some(object) = stream.next().await {
                objects.push(object.map_err(|e| FileError::new(format!("cannot list `{url}`: {e}")))?);
            }
            Ok::<_, FileError>(objects)
        })??;
        let mut files = Vec::new();
        for object in listed {
            let Some(relative) = self.accept(object.location.as_ref()) else { continue };
            files.push(source_file(relative, object));
        }
        files.sort_by(|a, b| a.modified_micros.cmp(&b.modified_micros).then_with(|| a.path.cmp(&b.path)));
        Ok(files)
    }

    fn done(&self, files: &[SourceFile]) -> Result<(), FileError> {
        if self.cleanup == Cleanup::Off {
            return Ok(());
        }
        let store = self.store.clone();
        let moves: Vec<(Path, Option<Path>)> = files
            .iter()
            .map(|f| {
                let to = match self.cleanup {
                    Cleanup::Move(_) if self.move_to.as_ref().is_empty() => Some(Path::from(f.path.as_str())),
                    Cleanup::Move(_) => Some(Path::from(format!("{}/{}", self.move_to.as_ref(), f.path))),
                    _ => None,
                };
                (self.key(&f.path), to)
            })
            .collect();
        let url = self.url.clone();
        self.wait(async move {
            for (from, to) in moves {
                let failed = |e: object_store::Error| FileError::new(format!("cleaning up `{url}/{from}`: {e}"));
                if let Some(to) = to {
                    match store.copy(&from, &to).await {
                        // Moved by an earlier, interrupted cleanup.
                        Err(object_store::Error::NotFound { .. }) => continue,
                        other => other.map_err(failed)?,
                    }
                }
                match store.delete(&from).await {
                    Err(object_store::Error::NotFound { .. }) => {}
                    other => other.map_err(failed)?,
                }
            }
            Ok::<_, FileError>(())
        })?
    }

    /// A PUT or a completed multipart upload makes an object visible whole.
    fn atomic(&self) -> bool {
        true
    }

    fn open(&self, file: &SourceFile) -> Result<Input, FileError> {
        let key = self.key(&file.path);
        let store = self.store.clone();
        let name = format!("{}/{}", self.url, file.path);
        // The object as listed, or nothing: one replaced since is read again next run, so the
        // ledger never records one version's tag with another's rows.
        let options = object_store::GetOptions { if_match: file.etag.clone(), ..Default::default() };
        let opened = {
            let name = name.clone();
            self.wait(async move {
                store.get_opts(&key, options).await.map_err(|e| match e {
                    object_store::Error::Precondition { .. } => {
                        FileError::new(format!("`{name}` was replaced since it was listed; it is read next run"))
                    }
                    e => FileError::new(format!("cannot read `{name}`: {e}")),
                })
            })??
        };
        let (tx, rx) = sync_channel::<std::io::Result<Bytes>>(CHUNKS_IN_FLIGHT);
        self.runtime.spawn(pump(opened.into_stream(), tx, name));
        Ok(decompress_stream(&file.path, Box::new(ChannelRead { rx, current: Bytes::new(), done: false })))
    }
}

/// Sends an object's chunks to its reader; a full channel holds the download back.
async fn pump(
    mut stream: futures::stream::BoxStream<'static, object_store::Result<Bytes>>,
    tx: SyncSender<std::io::Result<Bytes>>,
    name: String,
) {
    while let Some(chunk) = stream.next().await {
        let chunk = chunk.map_err(|e| std::io::Error::other(format!("reading `{name}`: {e}")));
        let failed = chunk.is_err();
        // Waiting for room in the channel holds one worker: let the runtime move on without it.
        let sent = tokio::task::block_in_place(|| tx.send(chunk).is_ok());
        if !sent || failed {
            return;
        }
    }
}

/// A [`Read`] over chunks arriving on a channel.
struct ChannelRead {
    rx: Receiver<std::io::Result<Bytes>>,
    current: Bytes,
    done: bool,
}

impl Read for ChannelRead {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        while self.current.is_empty() {
            if self.done {
                return Ok(0);
            }
            match self.rx.recv() {
                Ok(chunk) => self.current = chunk?,
                // The sender is gone: the object ended.
                Err(_) => self.done = true,
            }
        }
        let n = buf.len().min(self.current.len());
        buf[..n].copy_from_slice(&self.current.split_to(n));
        Ok(n)
    }
}
