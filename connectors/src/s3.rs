//! Files under an S3 prefix (`s3://bucket/prefix/`), found by listing.
//!
//! Credentials, region and endpoint come from the standard AWS environment
//! (`AWS_ACCESS_KEY_ID`, `AWS_REGION`, `AWS_ENDPOINT_URL`, `AWS_ALLOW_HTTP`, web identity,
//! instance metadata), never from the pipeline file. A process keeps one client per bucket
//! (sources are made for every run, every second under `serve`), and the clients' IO runs
//! on one small runtime of the process ([`io_runtime`]), so their pooled connections never
//! outlive the runtime they were made on; callers await that work, they never block on it.
//! An object is streamed to its decoder (which reads on a blocking thread) through a
//! bounded channel, at most [`CHUNKS_IN_FLIGHT`] chunks ahead, never held whole.

use std::io::Read;
use std::sync::Arc;

use bytes::Bytes;
use futures::StreamExt;
use globset::GlobMatcher;
use inlet_engine::source::{FileSource, Input, SourceError, SourceFile};
use object_store::aws::AmazonS3Builder;
use object_store::path::Path;
use object_store::{ObjectStore, ObjectStoreExt};
use tokio::sync::mpsc;

use crate::local::{compile_pattern, decompress_on_read, is_in_progress};
use crate::{Cleanup, Error};

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
pub(crate) fn io_runtime() -> Result<&'static tokio::runtime::Runtime, Error> {
    static RUNTIME: std::sync::OnceLock<std::io::Result<tokio::runtime::Runtime>> = std::sync::OnceLock::new();
    RUNTIME
        .get_or_init(|| {
            tokio::runtime::Builder::new_multi_thread().worker_threads(1).thread_name("inlet-s3").enable_all().build()
        })
        .as_ref()
        .map_err(|e| Error::Internal(format!("starting the S3 client's runtime: {e}")))
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
    pub fn new(url: &str, pattern: Option<&str>, recursive: bool) -> Result<Self, Error> {
        let config = |message: String| Error::Config { message };
        let parsed = url::Url::parse(url).map_err(|e| config(format!("`{url}` is not a URL: {e}")))?;
        let bucket = parsed.host_str().ok_or_else(|| config(format!("`{url}` names no bucket")))?;
        let store = bucket_store(bucket).map_err(|source| Error::ObjectStore { url: url.to_owned(), source })?;
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
    pub fn with_cleanup(mut self, cleanup: Cleanup) -> Result<Self, Error> {
        if let Cleanup::Move(to) = &cleanup {
            let config = |message: String| Error::Config { message };
            let parsed = url::Url::parse(to).map_err(|e| config(format!("`{to}` is not a URL: {e}")))?;
            let source = url::Url::parse(&self.url).map_err(|e| config(format!("`{}`: {e}", self.url)))?;
            if parsed.host_str() != source.host_str() {
                return Err(config(format!("`{to}` is not in the bucket of `{}`", self.url)));
            }
            self.move_to = Path::from(parsed.path().trim_matches('/'));
        }
        self.cleanup = cleanup;
        Ok(self)
    }

    /// Runs `work` on the process's S3 runtime and awaits it, from any runtime.
    pub(crate) async fn run<T: Send + 'static>(
        &self,
        work: impl std::future::Future<Output = T> + Send + 'static,
    ) -> Result<T, Error> {
        self.runtime.spawn(work).await.map_err(|e| Error::Internal(format!("S3 task failed: {e}")))
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
    pub async fn head_all(&self, relative: &[String]) -> Result<Vec<(String, Option<SourceFile>)>, Error> {
        let lookups: Vec<(String, Path, String)> =
            relative.iter().map(|r| (r.clone(), self.key(r), format!("{}/{r}", self.url))).collect();
        let store = self.store.clone();
        self.run(async move {
            futures::stream::iter(lookups)
                .map(|(relative, key, url)| {
                    let store = store.clone();
                    async move {
                        match store.head(&key).await {
                            Ok(m) => Ok((relative.clone(), Some(source_file(relative, m)))),
                            Err(object_store::Error::NotFound { .. }) => Ok((relative, None)),
                            Err(source) => Err(Error::ObjectStore { url, source }),
                        }
                    }
                })
                .buffer_unordered(HEADS_AT_ONCE)
                .collect::<Vec<_>>()
                .await
                .into_iter()
                .collect::<Result<Vec<_>, Error>>()
        })
        .await?
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

impl S3Prefix {
    /// Every object under the prefix that is one of the source's files, oldest first.
    pub async fn list_objects(&self) -> Result<Vec<SourceFile>, Error> {
        let store = self.store.clone();
        let prefix = self.prefix.clone();
        let url = self.url.clone();
        let listed = self
            .run(async move {
                let prefix = (!prefix.as_ref().is_empty()).then_some(prefix);
                let mut objects = Vec::new();
                let mut stream = store.list(prefix.as_ref());
                while let Some(object) = stream.next().await {
                    objects.push(object.map_err(|source| Error::ObjectStore { url: url.clone(), source })?);
                }
                Ok::<_, Error>(objects)
            })
            .await??;
        let mut files = Vec::new();
        for object in listed {
            let Some(relative) = self.accept(object.location.as_ref()) else { continue };
            files.push(source_file(relative, object));
        }
        files.sort_by(|a, b| a.modified_micros.cmp(&b.modified_micros).then_with(|| a.path.cmp(&b.path)));
        Ok(files)
    }

    /// Deletes or moves objects once they are in the table (`clean_source`).
    pub async fn clean(&self, files: &[SourceFile]) -> Result<(), Error> {
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
        self.run(async move {
            for (from, to) in moves {
                let failed = |source: object_store::Error| Error::ObjectStore { url: format!("{url}/{from}"), source };
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
            Ok::<_, Error>(())
        })
        .await?
    }

    /// Opens the object as listed, streamed.
    pub async fn open_object(&self, file: &SourceFile) -> Result<Input, Error> {
        let key = self.key(&file.path);
        let store = self.store.clone();
        let name = format!("{}/{}", self.url, file.path);
        // The object as listed, or nothing: one replaced since is read again next run, so the
        // ledger never records one version's tag with another's rows.
        let options = object_store::GetOptions { if_match: file.etag.clone(), ..Default::default() };
        let opened = {
            let name = name.clone();
            self.run(async move {
                store.get_opts(&key, options).await.map_err(|source| match source {
                    object_store::Error::Precondition { .. } => Error::Replaced { url: name },
                    source => Error::ObjectStore { url: name, source },
                })
            })
            .await??
        };
        let (tx, rx) = mpsc::channel::<std::io::Result<Bytes>>(CHUNKS_IN_FLIGHT);
        self.runtime.spawn(pump(opened.into_stream(), tx, name.clone()));
        let read = ChannelRead {
            rx,
            current: Bytes::new(),
            done: false,
            failed: None,
            expected: file.size_bytes,
            read: 0,
            name,
        };
        Ok(decompress_on_read(&file.path, Box::new(read)))
    }
}

#[async_trait::async_trait]
impl FileSource for S3Prefix {
    async fn list(&self) -> Result<Vec<SourceFile>, SourceError> {
        Ok(self.list_objects().await?)
    }

    async fn peek(&self) -> Result<Vec<SourceFile>, SourceError> {
        Ok(self.list_objects().await?)
    }

    async fn done(&self, files: &[SourceFile]) -> Result<(), SourceError> {
        Ok(self.clean(files).await?)
    }

    /// A PUT or a completed multipart upload makes an object visible whole.
    fn atomic(&self) -> bool {
        true
    }

    async fn open(&self, file: &SourceFile) -> Result<Input, SourceError> {
        Ok(self.open_object(file).await?)
    }
}

/// Sends an object's chunks to its reader; a full channel holds the download back, and a
/// reader that went away ends the download.
async fn pump(
    mut stream: futures::stream::BoxStream<'static, object_store::Result<Bytes>>,
    tx: mpsc::Sender<std::io::Result<Bytes>>,
    name: String,
) {
    loop {
        let next = tokio::select! {
            next = stream.next() => next,
            () = tx.closed() => return,
        };
        let Some(chunk) = next else { return };
        let chunk = chunk.map_err(|e| std::io::Error::other(format!("reading `{name}`: {e}")));
        let failed = chunk.is_err();
        if tx.send(chunk).await.is_err() || failed {
            return;
        }
    }
}

/// A [`Read`] over chunks arriving on a channel; read on a blocking thread (a decoder's).
/// The object ends when the sender does, and only whole: fewer bytes than listed is an
/// error (a download cut off, a pump that died), and so is every read after an error.
struct ChannelRead {
    rx: mpsc::Receiver<std::io::Result<Bytes>>,
    current: Bytes,
    done: bool,
    failed: Option<String>,
    /// The object's size as listed, and the bytes read so far.
    expected: u64,
    read: u64,
    name: String,
}

impl Read for ChannelRead {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        if let Some(failed) = &self.failed {
            return Err(std::io::Error::other(failed.clone()));
        }
        while self.current.is_empty() {
            if self.done {
                return Ok(0);
            }
            match self.rx.blocking_recv() {
                Some(Ok(chunk)) => self.current = chunk,
                Some(Err(err)) => {
                    self.failed = Some(err.to_string());
                    return Err(err);
                }
                // The sender is gone: the object ended, whole or not.
                None if self.read < self.expected => {
                    let message = format!(
                        "reading `{}`: the object ended after {} of {} bytes",
                        self.name, self.read, self.expected
                    );
                    self.failed = Some(message.clone());
                    return Err(std::io::Error::other(message));
                }
                None => self.done = true,
            }
        }
        let n = buf.len().min(self.current.len());
        buf[..n].copy_from_slice(&self.current.split_to(n));
        self.read += n as u64;
        Ok(n)
    }
}
