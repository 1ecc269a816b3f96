//! The SIMD scanner: finds one CSV record's fields in a slice of text with `memchr`'s
//! searches, reading it exactly as the `csv` crate (csv-core) does with a `\n` terminator,
//! doubled quotes, and no escape or comment character:
//! - a blank line is no record;
//! - a field that starts with the quote runs to the next lone quote; a doubled quote inside
//!   it is one quote; text after its closing quote, up to the delimiter or line end, is
//!   taken as it is (`"ab"cd` is `abcd`); at the end of the input it ends the field;
//! - any other field runs to the delimiter or the line end, quotes in it taken as they are.
//!
//! Text with a `\r` (a terminator to the `csv` crate too) is left to the `csv` crate by the
//! caller. The tests of `records.rs` hold the scanner to the `csv` crate on random text.

/// Where a record's fields are, relative to its start: `start..end` is a field's value as it
/// is, except for the fields in `quoted`, whose text needs its quotes taken out ([`unquote`]):
/// doubled quotes, or text after the closing quote.
#[derive(Default)]
pub(super) struct Fields {
    pub(super) ranges: Vec<(usize, usize)>,
    pub(super) quoted: Vec<usize>,
}

impl Fields {
    fn push(&mut self, start: usize, end: usize) {
        self.ranges.push((start, end));
    }

    /// A quoted field, from its opening quote to past its text: between its quotes when
    /// nothing is to be taken out.
    fn push_quoted(&mut self, start: usize, end: usize, escaped: bool) {
        if escaped {
            self.quoted.push(self.ranges.len());
            self.ranges.push((start, end));
        } else {
            self.ranges.push((start + 1, end - 1));
        }
    }
}

/// What [`record`] found at the start of the text.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum Scanned {
    /// A record, its fields in the vector, `len` bytes long with its `\n`.
    Record { len: usize },
    /// A blank line, `len` bytes, to skip.
    Blank { len: usize },
    /// The record does not end in this text: read more (never at the end of the input).
    Incomplete,
}

/// Finds the record at the start of `text`, where `text` holds whole lines, or the rest of
/// the input when `eof`. `text` must not be empty.
pub(super) fn record(text: &[u8], eof: bool, delimiter: u8, quote: u8, fields: &mut Fields) -> Scanned {
    fields.ranges.clear();
    fields.quoted.clear();
    if text.first() == Some(&b'\n') {
        return Scanned::Blank { len: 1 };
    }
    // The unquoted search in progress: where it started, and its matches.
    let mut plain: Option<(usize, memchr::Memchr2<'_>)> = None;
    let mut start = 0;
    loop {
        if text.get(start) == Some(&quote) {
            plain = None;
            match quoted_field(text, start, eof, delimiter, quote) {
                QuotedEnd::Delimiter { end, escaped } => {
                    fields.push_quoted(start, end, escaped);
                    start = end + 1;
                }
                QuotedEnd::Line { end, escaped } => {
                    fields.push_quoted(start, end, escaped);
                    return Scanned::Record { len: (end + 1).min(text.len()) };
                }
                QuotedEnd::Incomplete => return Scanned::Incomplete,
            }
            continue;
        }
        let (from, matches) =
            plain.get_or_insert_with(|| (start, memchr::memchr2_iter(delimiter, b'\n', &text[start..])));
        match matches.next().map(|at| *from + at) {
            Some(end) if text[end] == delimiter => {
                fields.push(start, end);
                start = end + 1;
            }
            Some(end) => {
                fields.push(start, end);
                return Scanned::Record { len: end + 1 };
            }
            None if eof => {
                fields.push(start, text.len());
                return Scanned::Record { len: text.len() };
            }
            None => return Scanned::Incomplete,
        }
    }
}

enum QuotedEnd {
    /// The field ends at `end`, a delimiter. `escaped`: its text needs [`unquote`].
    Delimiter {
        end: usize,
        escaped: bool,
    },
    /// The field ends at `end`, a `\n` or the end of the input, and so does the record.
    Line {
        end: usize,
        escaped: bool,
    },
    Incomplete,
}

/// Where the quoted field starting at `start` (its opening quote) ends.
fn quoted_field(text: &[u8], start: usize, eof: bool, delimiter: u8, quote: u8) -> QuotedEnd {
    let mut at = start + 1;
    let mut escaped = false;
    loop {
        let Some(close) = memchr::memchr(quote, &text[at..]).map(|i| at + i) else {
            // No closing quote: at the end of the input the field is everything after its quote.
            return if eof { QuotedEnd::Line { end: text.len(), escaped: true } } else { QuotedEnd::Incomplete };
        };
        match text.get(close + 1) {
            Some(&c) if c == quote => {
                escaped = true;
                at = close + 2;
            }
            Some(&c) if c == delimiter => return QuotedEnd::Delimiter { end: close + 1, escaped },
            Some(b'\n') => return QuotedEnd::Line { end: close + 1, escaped },
            None if eof => return QuotedEnd::Line { end: close + 1, escaped },
            None => return QuotedEnd::Incomplete,
            Some(_) => {
                // Text after the closing quote belongs to the field, quotes and all.
                let after = close + 1;
                return match memchr::memchr2(delimiter, b'\n', &text[after..]).map(|i| after + i) {
                    Some(end) if text[end] == delimiter => QuotedEnd::Delimiter { end, escaped: true },
                    Some(end) => QuotedEnd::Line { end, escaped: true },
                    None if eof => QuotedEnd::Line { end: text.len(), escaped: true },
                    None => QuotedEnd::Incomplete,
                };
            }
        }
    }
}

/// The value of a quoted field's text (from its opening quote): doubled quotes made one,
/// the closing quote dropped, what follows it kept as it is.
pub(super) fn unquote(raw: &[u8], quote: u8, out: &mut Vec<u8>) {
    let mut rest = &raw[1..];
    while let Some(close) = memchr::memchr(quote, rest) {
        out.extend_from_slice(&rest[..close]);
        if rest.get(close + 1) == Some(&quote) {
            out.push(quote);
            rest = &rest[close + 2..];
        } else {
            out.extend_from_slice(&rest[close + 1..]);
            return;
        }
    }
    out.extend_from_slice(rest);
}
