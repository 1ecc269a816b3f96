//! Lines of a byte stream, found with `memchr`'s SIMD search in blocks read straight from the
//! input: NDJSON's records, and the text the CSV scanner reads (`csv::records`).

use std::io::{BufReader, Read};

/// Bytes read from the input at a time (the block grows for a longer line).
pub(crate) const BLOCK_BYTES: usize = 256 * 1024;

/// A stream read a block at a time and handed out a line at a time.
pub(crate) struct Lines {
    input: Box<dyn Read + Send>,
    block: Vec<u8>,
    /// The next unread byte.
    start: usize,
    /// The end of the block's last whole line (past its `\n`; at the end of the input, the end).
    lines_end: usize,
    /// Bytes of the block read from the input.
    filled: usize,
    /// The last line handed out.
    line: (usize, usize),
    eof: bool,
}

impl Lines {
    /// Lines of `input`, starting with what its buffer holds: after that the input is read
    /// unbuffered, straight into the block.
    pub(crate) fn new(input: BufReader<Box<dyn Read + Send>>, block_bytes: usize) -> Lines {
        let buffered = input.buffer();
        let mut block = vec![0; block_bytes.max(buffered.len()).max(1)];
        block[..buffered.len()].copy_from_slice(buffered);
        Lines {
            filled: buffered.len(),
            input: input.into_inner(),
            block,
            start: 0,
            lines_end: 0,
            line: (0, 0),
            eof: false,
        }
    }

    /// Hands out the next line as [`Lines::line`] (possibly empty, without its `\n`; a `\r`
    /// before it stays); false at the end of the input.
    pub(crate) fn next(&mut self) -> std::io::Result<bool> {
        while self.start == self.lines_end {
            if self.eof {
                return Ok(false);
            }
            self.fill(0)?;
        }
        let end =
            memchr::memchr(b'\n', &self.block[self.start..self.lines_end]).map_or(self.lines_end, |at| self.start + at);
        self.line = (self.start, end);
        self.start = (end + 1).min(self.lines_end);
        Ok(true)
    }

    /// The last line [`Lines::next`] handed out, or the bytes [`Lines::take`] took.
    pub(crate) fn line(&self) -> &[u8] {
        &self.block[self.line.0..self.line.1]
    }

    /// Hands out the next `bytes` of [`Lines::unread`] as [`Lines::line`], for a reader
    /// that finds its own ends (a CSV record can hold line breaks).
    pub(crate) fn take(&mut self, bytes: usize) {
        let end = (self.start + bytes).min(self.lines_end);
        self.line = (self.start, end);
        self.start = end;
    }

    /// Reads on, so [`Lines::unread`] holds at least one line more and twice the bytes it
    /// held, or the rest of the input: a record that spans lines is scanned again from its
    /// start after each call, which so costs no more in all than scanning it twice.
    /// Returns how many bytes at the start of [`Lines::unread`] it held before.
    pub(crate) fn read_more(&mut self) -> std::io::Result<usize> {
        let held = self.lines_end - self.start;
        if !self.eof {
            self.fill(held)?;
        }
        Ok(held)
    }

    /// Whether the input is read to its end (what is unread is all that is left).
    pub(crate) fn is_eof(&self) -> bool {
        self.eof
    }

    /// The whole lines read and not handed out yet.
    pub(crate) fn unread(&self) -> &[u8] {
        &self.block[self.start..self.lines_end]
    }

    /// What is left of the input, from the first line not handed out; these lines end there.
    pub(crate) fn take_rest(&mut self) -> Box<dyn Read + Send> {
        let rest = self.block[self.start..self.filled].to_vec();
        let input = std::mem::replace(&mut self.input, Box::new(std::io::empty()));
        (self.start, self.lines_end, self.filled, self.eof) = (0, 0, 0, true);
        Box::new(std::io::Cursor::new(rest).chain(input))
    }

    /// Moves the unread bytes to the block's start and reads until the whole lines in it
    /// reach `at_least` bytes past what it held, and at least one new line, or the input ends.
    fn fill(&mut self, at_least: usize) -> std::io::Result<()> {
        self.block.copy_within(self.start..self.filled, 0);
        self.filled -= self.start;
        self.start = 0;
        self.lines_end = 0;
        let wanted = self.filled + at_least;
        while self.block.len() < wanted + 1 {
            self.block.resize(self.block.len() * 2, 0);
        }
        loop {
            if self.filled == self.block.len() {
                // A line longer than the block: make room for the rest of it.
                self.block.resize(self.block.len() * 2, 0);
            }
            let read = match self.input.read(&mut self.block[self.filled..]) {
                Ok(read) => read,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(e),
            };
            if read == 0 {
                self.eof = true;
                self.lines_end = self.filled;
                return Ok(());
            }
            let new = self.filled;
            self.filled += read;
            if let Some(at) = memchr::memrchr(b'\n', &self.block[new..self.filled]) {
                self.lines_end = new + at + 1;
            }
            if self.lines_end > 0 && self.lines_end >= wanted {
                return Ok(());
            }
        }
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use std::io::BufRead;

    use proptest::prelude::*;

    use super::*;

    /// `text` behind a small buffer that already holds its first bytes, as the decoders' does.
    pub(crate) fn buffered(text: &[u8]) -> BufReader<Box<dyn Read + Send>> {
        trickled(text, usize::MAX)
    }

    /// [`buffered`], the input giving at most `most` bytes a read, as a network stream may.
    pub(crate) fn trickled(text: &[u8], most: usize) -> BufReader<Box<dyn Read + Send>> {
        struct Trickle(std::io::Cursor<Vec<u8>>, usize);
        impl Read for Trickle {
            fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
                let most = buf.len().min(self.1);
                self.0.read(&mut buf[..most])
            }
        }
        let input = Trickle(std::io::Cursor::new(text.to_vec()), most);
        let mut reader = BufReader::with_capacity(5, Box::new(input) as Box<dyn Read + Send>);
        reader.fill_buf().expect("reading from memory");
        reader
    }

    #[test]
    fn a_record_read_again_after_read_more_is_at_least_twice_as_long() {
        // One 10,000-byte "record" of many lines, given a byte or a few at a time: each
        // read_more at least doubles what is unread, so rescanning it stays linear.
        let text: Vec<u8> = (0..10_000).map(|i| if i % 7 == 6 { b'\n' } else { b'x' }).collect();
        for most in [1, 3, 64] {
            let mut lines = Lines::new(trickled(&text, most), 4);
            let mut calls = 0;
            let mut held = 0;
            while !lines.is_eof() {
                let before = lines.read_more().unwrap();
                assert_eq!(before, held);
                let now = lines.unread().len();
                assert!(lines.is_eof() || now >= 2 * held.max(1), "most {most}: {held} -> {now}");
                held = now;
                calls += 1;
            }
            assert_eq!(held, text.len());
            assert!(calls <= 16, "most {most}: {calls} calls");
        }
    }

    proptest! {
        #[test]
        fn lines_are_what_read_until_finds(
            text in proptest::collection::vec(proptest::sample::select(vec![b'a', b'\n', b'\r', b' ']), 0..100),
            block in 1usize..20,
            most in 1usize..8,
        ) {
            let mut expected = Vec::new();
            let mut reader = &text[..];
            loop {
                let mut line = Vec::new();
                if reader.read_until(b'\n', &mut line).unwrap() == 0 {
                    break;
                }
                if line.last() == Some(&b'\n') {
                    line.pop();
                }
                expected.push(line);
            }
            let mut lines = Lines::new(trickled(&text, most), block);
            let mut found = Vec::new();
            while lines.next().unwrap() {
                found.push(lines.line().to_vec());
            }
            prop_assert_eq!(found, expected);
        }
    }
}
