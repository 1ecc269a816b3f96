//! Files in a local directory. File system calls block, so they run on blocking threads,
//! never on a runtime worker.

use std::fs::File;
use std::io::{BufReader, Read};
use std::path::{Path, PathBuf};
use std::time::UNIX_EPOCH;

use globset::{GlobBuilder, GlobMatcher};
use inlet_engine::source::{FileSource, Input, SourceError, SourceFile};

use crate::{Cleanup, Error};

/// A landing directory: lists files (optionally matching a glob) and opens them,
/// decompressing `.gz` and `.zst` by extension. Hidden files (`.x`, `_x`) are skipped, as
/// are files whose name marks them as in progress (`.tmp`, `.partial`, `.crdownload`).
#[derive(Clone)]
pub struct LocalDirectory {
    root: PathBuf,
    pattern: Option<GlobMatcher>,
    recursive: bool,
    cleanup: Cleanup,
}

impl LocalDirectory {
    pub fn new(root: PathBuf, pattern: Option<&str>, recursive: bool) -> Result<Self, Error> {
        Ok(LocalDirectory { root, pattern: compile_pattern(pattern)?, recursive, cleanup: Cleanup::Off })
    }

    /// What becomes of files once they are in the table.
    pub fn with_cleanup(mut self, cleanup: Cleanup) -> Self {
        self.cleanup = cleanup;
        self
    }

    fn clean(&self, file: &SourceFile) -> std::io::Result<()> {
        let from = self.root.join(&file.path);
        let gone = |e: &std::io::Error| e.kind() == std::io::ErrorKind::NotFound;
        match &self.cleanup {
            Cleanup::Off => Ok(()),
            Cleanup::Delete => match std::fs::remove_file(&from) {
                Err(e) if !gone(&e) => Err(e),
                _ => Ok(()),
            },
            Cleanup::Move(dir) => {
                let to = Path::new(dir).join(&file.path);
                if let Some(parent) = to.parent() {
                    std::fs::create_dir_all(parent)?;
                }
                match std::fs::rename(&from, &to) {
                    Err(e) if e.kind() == std::io::ErrorKind::CrossesDevices => {
                        std::fs::copy(&from, &to)?;
                        std::fs::remove_file(&from)
                    }
                    Err(e) if !gone(&e) => Err(e),
                    _ => Ok(()),
                }
            }
        }
    }

    fn walk(&self, dir: &Path, relative: &str, out: &mut Vec<SourceFile>) -> Result<(), Error> {
        let io = |source| Error::Io { path: dir.display().to_string(), source };
        let entries = std::fs::read_dir(dir).map_err(io)?;
        for entry in entries {
            let entry = entry.map_err(io)?;
            let name = entry.file_name().to_string_lossy().into_owned();
            if name.starts_with('.') || name.starts_with('_') || is_in_progress(&name) {
                continue;
            }
            let path = if relative.is_empty() { name.clone() } else { format!("{relative}/{name}") };
            let metadata =
                entry.metadata().map_err(|source| Error::Io { path: entry.path().display().to_string(), source })?;
            if metadata.is_dir() {
                if self.recursive {
                    self.walk(&entry.path(), &path, out)?;
                }
                continue;
            }
            if !metadata.is_file() || self.pattern.as_ref().is_some_and(|p| !p.is_match(&path)) {
                continue;
            }
            let modified_micros = metadata
                .modified()
                .ok()
                .and_then(|t| t.duration_since(UNIX_EPOCH).ok())
                .map_or(0, |d| i64::try_from(d.as_micros()).unwrap_or(i64::MAX));
            out.push(SourceFile::new(path, metadata.len(), modified_micros));
        }
        Ok(())
    }
}

/// A source's `pattern`, matched against paths relative to its root (`*` crosses `/`).
pub fn compile_pattern(pattern: Option<&str>) -> Result<Option<GlobMatcher>, Error> {
    pattern
        .map(|p| {
            GlobBuilder::new(p)
                .literal_separator(false)
                .build()
                .map(|g| g.compile_matcher())
                .map_err(|e| Error::Config { message: format!("bad pattern `{p}`: {e}") })
        })
        .transpose()
}

/// Whether a file's name marks it as still being written or uploaded.
pub fn is_in_progress(name: &str) -> bool {
    [".tmp", ".partial", ".crdownload", ".part"].iter().any(|suffix| name.ends_with(suffix))
}

impl LocalDirectory {
    /// The files under the root, oldest first (blocking).
    fn list_blocking(&self) -> Result<Vec<SourceFile>, Error> {
        if !self.root.is_dir() {
            return Err(Error::MissingDirectory { path: self.root.display().to_string() });
        }
        let mut files = Vec::new();
        self.walk(&self.root, "", &mut files)?;
        files.sort_by(|a, b| a.modified_micros.cmp(&b.modified_micros).then_with(|| a.path.cmp(&b.path)));
        Ok(files)
    }
}

/// Runs blocking file system work on a blocking thread.
async fn blocking<T: Send + 'static>(
    work: impl FnOnce() -> Result<T, Error> + Send + 'static,
) -> Result<T, SourceError> {
    match tokio::task::spawn_blocking(work).await {
        Ok(result) => result.map_err(SourceError::from),
        Err(e) => Err(Error::Internal(format!("file system task failed: {e}")).into()),
    }
}

#[async_trait::async_trait]
impl FileSource for LocalDirectory {
    async fn list(&self) -> Result<Vec<SourceFile>, SourceError> {
        let this = self.clone();
        blocking(move || this.list_blocking()).await
    }

    async fn peek(&self) -> Result<Vec<SourceFile>, SourceError> {
        self.list().await
    }

    async fn open(&self, file: &SourceFile) -> Result<Input, SourceError> {
        let path = self.root.join(&file.path);
        let name = file.path.clone();
        blocking(move || {
            let handle = File::open(&path).map_err(|source| Error::Io { path: path.display().to_string(), source })?;
            Ok(decompress(&name, handle))
        })
        .await
    }

    async fn done(&self, files: &[SourceFile]) -> Result<(), SourceError> {
        if self.cleanup == Cleanup::Off {
            return Ok(());
        }
        let this = self.clone();
        let files = files.to_vec();
        blocking(move || {
            for file in &files {
                this.clean(file)
                    .map_err(|source| Error::Io { path: this.root.join(&file.path).display().to_string(), source })?;
            }
            Ok(())
        })
        .await
    }
}

/// Whether a name's extension says it is compressed (`.gz`, `.zst`).
fn compressed(name: &str) -> bool {
    let lower = name.to_ascii_lowercase();
    [".gz", ".gzip", ".zst", ".zstd"].iter().any(|ext| lower.ends_with(ext))
}

/// Wraps a file in the decompressor its extension names.
pub fn decompress(name: &str, file: File) -> Input {
    if compressed(name) { decompress_stream(name, Box::new(file)) } else { Input::File(file) }
}

/// Wraps a byte stream in the decompressor its name's extension names.
pub fn decompress_stream(name: &str, read: Box<dyn Read + Send>) -> Input {
    let lower = name.to_ascii_lowercase();
    if lower.ends_with(".gz") || lower.ends_with(".gzip") {
        Input::Stream(Box::new(flate2::read::MultiGzDecoder::new(BufReader::with_capacity(1 << 16, read))))
    } else if lower.ends_with(".zst") || lower.ends_with(".zstd") {
        match zstd::stream::read::Decoder::new(read) {
            Ok(decoder) => Input::Stream(Box::new(decoder)),
            Err(err) => Input::Stream(Box::new(FailingRead(Some(err)))),
        }
    } else {
        Input::Stream(read)
    }
}

/// Wraps a byte stream in the decompressor its name's extension names, made on the first
/// read: a decompressor reads its header when made, and a remote stream may only be read
/// on a blocking thread.
pub fn decompress_on_read(name: &str, read: Box<dyn Read + Send>) -> Input {
    if compressed(name) {
        Input::Stream(Box::new(OnFirstRead::Pending(name.to_owned(), read)))
    } else {
        Input::Stream(read)
    }
}

/// A decompressor made on the first read.
enum OnFirstRead {
    Pending(String, Box<dyn Read + Send>),
    Ready(Box<dyn Read + Send>),
    Taken,
}

impl Read for OnFirstRead {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        if let OnFirstRead::Pending(..) = self
            && let OnFirstRead::Pending(name, read) = std::mem::replace(self, OnFirstRead::Taken)
        {
            *self = OnFirstRead::Ready(decompress_stream(&name, read).into_read());
        }
        match self {
            OnFirstRead::Ready(read) => read.read(buf),
            _ => Err(std::io::Error::other("a decompressor that could not be made")),
        }
    }
}

/// A reader that fails with the error that kept it from being built.
struct FailingRead(Option<std::io::Error>);

impl Read for FailingRead {
    fn read(&mut self, _buf: &mut [u8]) -> std::io::Result<usize> {
        Err(self.0.take().unwrap_or_else(|| std::io::Error::other("unreadable")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    #[tokio::test]
    async fn lists_matching_files_skipping_hidden_and_in_progress() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("2024")).unwrap();
        for name in ["a.csv", "b.csv.gz", "c.json", ".hidden.csv", "_SUCCESS", "d.csv.tmp", "2024/e.csv"] {
            std::fs::write(dir.path().join(name), b"x").unwrap();
        }
        let source = LocalDirectory::new(dir.path().to_owned(), Some("*.csv*"), true).unwrap();
        let mut names: Vec<String> = source.list().await.unwrap().into_iter().map(|f| f.path).collect();
        names.sort();
        assert_eq!(names, vec!["2024/e.csv", "a.csv", "b.csv.gz"]);
        let flat = LocalDirectory::new(dir.path().to_owned(), None, false).unwrap();
        assert_eq!(flat.list().await.unwrap().len(), 3);
        assert!(LocalDirectory::new(dir.path().join("missing"), None, true).unwrap().list().await.is_err());
    }

    #[tokio::test]
    async fn decompresses_by_extension() {
        let dir = tempfile::tempdir().unwrap();
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
        gz.write_all(b"hello").unwrap();
        std::fs::write(dir.path().join("a.txt.gz"), gz.finish().unwrap()).unwrap();
        std::fs::write(dir.path().join("b.txt.zst"), zstd::encode_all(&b"world"[..], 3).unwrap()).unwrap();
        let source = LocalDirectory::new(dir.path().to_owned(), None, true).unwrap();
        let mut texts = Vec::new();
        for file in source.list().await.unwrap() {
            let mut text = String::new();
            source.open(&file).await.unwrap().into_read().read_to_string(&mut text).unwrap();
            texts.push(text);
        }
        texts.sort();
        assert_eq!(texts, vec!["hello", "world"]);
    }
}
