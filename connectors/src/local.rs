//! Files in a local directory.

use std::fs::File;
use std::io::{BufReader, Read};
use std::path::{Path, PathBuf};
use std::time::UNIX_EPOCH;

use globset::{GlobBuilder, GlobMatcher};
use inlet_engine::source::{FileError, Input, Source, SourceFile};

use crate::Cleanup;

/// A landing directory: lists files (optionally matching a glob) and opens them,
/// decompressing `.gz` and `.zst` by extension. Hidden files (`.x`, `_x`) are skipped, as
/// are files whose name marks them as in progress (`.tmp`, `.partial`, `.crdownload`).
pub struct LocalDirectory {
    root: PathBuf,
    pattern: Option<GlobMatcher>,
    recursive: bool,
    cleanup: Cleanup,
}

impl LocalDirectory {
    pub fn new(root: PathBuf, pattern: Option<&str>, recursive: bool) -> Result<Self, FileError> {
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

    fn walk(&self, dir: &Path, relative: &str, out: &mut Vec<SourceFile>) -> Result<(), FileError> {
        let entries =
            std::fs::read_dir(dir).map_err(|e| FileError::new(format!("cannot list `{}`: {e}", dir.display())))?;
        for entry in entries {
            let entry = entry.map_err(|e| FileError::new(format!("cannot list `{}`: {e}", dir.display())))?;
            let name = entry.file_name().to_string_lossy().into_owned();
            if name.starts_with('.') || name.starts_with('_') || is_in_progress(&name) {
                continue;
            }
            let path = if relative.is_empty() { name.clone() } else { format!("{relative}/{name}") };
            let metadata = entry
                .metadata()
                .map_err(|e| FileError::new(format!("cannot stat `{}`: {e}", entry.path().display())))?;
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
pub fn compile_pattern(pattern: Option<&str>) -> Result<Option<GlobMatcher>, FileError> {
    pattern
        .map(|p| {
            GlobBuilder::new(p)
                .literal_separator(false)
                .build()
                .map(|g| g.compile_matcher())
                .map_err(|e| FileError::new(format!("bad pattern `{p}`: {e}")))
        })
        .transpose()
}

/// Whether a file's name marks it as still being written or uploaded.
pub fn is_in_progress(name: &str) -> bool {
    [".tmp", ".partial", ".crdownload", ".part"].iter().any(|suffix| name.ends_with(suffix))
}

impl Source for LocalDirectory {
    fn list(&self) -> Result<Vec<SourceFile>, FileError> {
        if !self.root.is_dir() {
            return Err(FileError::new(format!("landing directory `{}` does not exist", self.root.display())));
        }
        let mut files = Vec::new();
        self.walk(&self.root, "", &mut files)?;
        files.sort_by(|a, b| a.modified_micros.cmp(&b.modified_micros).then_with(|| a.path.cmp(&b.path)));
        Ok(files)
    }

    fn open(&self, file: &SourceFile) -> Result<Input, FileError> {
        let path = self.root.join(&file.path);
        let handle = File::open(&path).map_err(|e| FileError::new(format!("cannot open `{}`: {e}", path.display())))?;
        Ok(decompress(&file.path, handle))
    }

    fn done(&self, files: &[SourceFile]) -> Result<(), FileError> {
        for file in files {
            self.clean(file)
                .map_err(|e| FileError::new(format!("cleaning up `{}`: {e}", self.root.join(&file.path).display())))?;
        }
        Ok(())
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

    #[test]
    fn lists_matching_files_skipping_hidden_and_in_progress() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("2024")).unwrap();
        for name in ["a.csv", "b.csv.gz", "c.json", ".hidden.csv", "_SUCCESS", "d.csv.tmp", "2024/e.csv"] {
            std::fs::write(dir.path().join(name), b"x").unwrap();
        }
        let source = LocalDirectory::new(dir.path().to_owned(), Some("*.csv*"), true).unwrap();
        let mut names: Vec<String> = source.list().unwrap().into_iter().map(|f| f.path).collect();
        names.sort();
        assert_eq!(names, vec!["2024/e.csv", "a.csv", "b.csv.gz"]);
        let flat = LocalDirectory::new(dir.path().to_owned(), None, false).unwrap();
        assert_eq!(flat.list().unwrap().len(), 3);
        assert!(LocalDirectory::new(dir.path().join("missing"), None, true).unwrap().list().is_err());
    }

    #[test]
    fn decompresses_by_extension() {
        let dir = tempfile::tempdir().unwrap();
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
        gz.write_all(b"hello").unwrap();
        std::fs::write(dir.path().join("a.txt.gz"), gz.finish().unwrap()).unwrap();
        std::fs::write(dir.path().join("b.txt.zst"), zstd::encode_all(&b"world"[..], 3).unwrap()).unwrap();
        let source = LocalDirectory::new(dir.path().to_owned(), None, true).unwrap();
        let mut texts = Vec::new();
        for file in source.list().unwrap() {
            let mut text = String::new();
            source.open(&file).unwrap().into_read().read_to_string(&mut text).unwrap();
            texts.push(text);
        }
        texts.sort();
        assert_eq!(texts, vec!["hello", "world"]);
    }
}
