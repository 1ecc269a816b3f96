//! Records of a CSV stream, found by the SIMD scanner (`scan.rs`) where the options allow it
//! and by the `csv` crate otherwise.
//!
//! The scanner reads the files whose options give no byte a meaning beyond the delimiter,
//! the quote and `\n`: no escape or comment character. The input
//! is read in blocks (`crate::lines`), and each block is searched for a `\r` before any of
//! it is scanned: the first block with one hands the rest of the stream, from the first
//! record not read yet, to the `csv` crate, which takes `\r` and `\r\n` for line ends too.
//! Either way the records are the same; the tests below hold the two to that on random text.

use std::io::{BufReader, Read};

use inlet_engine::config::CsvOptions;

use super::scan;
use crate::lines::{BLOCK_BYTES, Lines};

/// One record: its bytes and where each field is in them.
pub(crate) struct Record<'a> {
    bytes: &'a [u8],
    fields: &'a [(usize, usize)],
    /// `bytes` are the field values one after another, not the record's text.
    joined: bool,
}

impl<'a> Record<'a> {
    /// How many fields it has.
    pub(crate) fn len(&self) -> usize {
        self.fields.len()
    }

    /// The bytes its fields are in: its text as it is, or its field values one after the
    /// other ([`Record::joined`]). Text is valid UTF-8 exactly when every field is (fields
    /// end at ASCII bytes); joined values also need every field on a character boundary
    /// (two fields' halves of a character can join into one).
    pub(crate) fn bytes(&self) -> &'a [u8] {
        self.bytes
    }

    /// Whether [`Record::bytes`] are the field values one after another.
    pub(crate) fn joined(&self) -> bool {
        self.joined
    }

    /// Where field `i` is in [`Record::bytes`].
    pub(crate) fn range(&self, i: usize) -> Option<std::ops::Range<usize>> {
        self.fields.get(i).map(|&(start, end)| start..end)
    }

    /// Field `i`'s value.
    pub(crate) fn get(&self, i: usize) -> Option<&'a [u8]> {
        self.range(i).and_then(|range| self.bytes.get(range))
    }

    /// Every field's value, in order.
    pub(crate) fn iter(&self) -> impl Iterator<Item = &'a [u8]> + '_ {
        (0..self.len()).filter_map(|i| self.get(i))
    }
}

/// The csv crate set to read as `options` say, as the decoder always reads.
fn csv_reader_builder(options: &CsvOptions) -> csv::ReaderBuilder {
    let mut builder = csv::ReaderBuilder::new();
    builder
        .has_headers(false)
        .flexible(true)
        .delimiter(super::ascii(options.delimiter))
        .quote(super::ascii(options.quote))
        .double_quote(options.escape.is_none())
        .escape(options.escape.map(super::ascii))
        .comment(options.comment.map(super::ascii))
        .buffer_capacity(1 << 16);
    builder
}

/// The records of one stream, read one at a time ([`Records::read`], then [`Records::record`]).
pub(crate) struct Records {
    reader: Reader,
    builder: csv::ReaderBuilder,
}

enum Reader {
    /// The SIMD scanner, while no `\r` comes.
    Scan(Scan),
    Csv {
        reader: csv::Reader<Box<dyn Read + Send>>,
        record: csv::ByteRecord,
        /// Where the fields of the current record are in its bytes.
        fields: Vec<(usize, usize)>,
    },
}

struct Scan {
    lines: Lines,
    delimiter: u8,
    quote: u8,
    /// Where the fields of the current record are, in its text or in `unquoted`.
    fields: scan::Fields,
    /// The current record's field values, when one of them had quotes to take out.
    unquoted: Vec<u8>,
}

impl Records {
    pub(crate) fn new(input: BufReader<Box<dyn Read + Send>>, options: &CsvOptions) -> Records {
        Records::with_block(input, options, BLOCK_BYTES)
    }

    fn with_block(input: BufReader<Box<dyn Read + Send>>, options: &CsvOptions, block_bytes: usize) -> Records {
        let builder = csv_reader_builder(options);
        // Config has made the delimiter and quote two ASCII characters other than line
        // breaks (`config::validate_files`); an escape or comment character is what the
        // scanner does not read.
        let reader = if options.escape.is_none() && options.comment.is_none() {
            Reader::Scan(Scan {
                lines: Lines::new(input, block_bytes),
                delimiter: super::ascii(options.delimiter),
                quote: super::ascii(options.quote),
                fields: scan::Fields::default(),
                unquoted: Vec::new(),
            })
        } else {
            Reader::Csv {
                reader: builder.from_reader(Box::new(input)),
                record: csv::ByteRecord::new(),
                fields: Vec::new(),
            }
        };
        Records { reader, builder }
    }

    /// Reads the next record; false at the end of the input.
    pub(crate) fn read(&mut self) -> Result<bool, csv::Error> {
        loop {
            let scan = match &mut self.reader {
                Reader::Scan(scan) => scan,
                Reader::Csv { reader, record, fields } => {
                    fields.clear();
                    if !reader.read_byte_record(record)? {
                        return Ok(false);
                    }
                    fields.extend((0..record.len()).filter_map(|i| record.range(i)).map(|r| (r.start, r.end)));
                    return Ok(true);
                }
            };
            let text = scan.lines.unread();
            let scanned = if text.is_empty() {
                None
            } else {
                Some(scan::record(text, scan.lines.is_eof(), scan.delimiter, scan.quote, &mut scan.fields))
            };
            match scanned {
                Some(scan::Scanned::Record { len }) => {
                    scan.lines.take(len);
                    scan.unquote();
                    return Ok(true);
                }
                Some(scan::Scanned::Blank { len }) => scan.lines.take(len),
                None if scan.lines.is_eof() => return Ok(false),
                None | Some(scan::Scanned::Incomplete) => {
                    let checked = scan.lines.read_more()?;
                    let new = scan.lines.unread().get(checked..).unwrap_or_default();
                    if memchr::memchr(b'\r', new).is_some() {
                        // The csv crate reads the rest, from the first record not read yet.
                        let reader = self.builder.from_reader(scan.lines.take_rest());
                        self.reader = Reader::Csv { reader, record: csv::ByteRecord::new(), fields: Vec::new() };
                    }
                }
            }
        }
    }

    /// The record [`Records::read`] read last.
    pub(crate) fn record(&self) -> Record<'_> {
        match &self.reader {
            Reader::Scan(scan) if !scan.fields.quoted.is_empty() => {
                Record { bytes: &scan.unquoted, fields: &scan.fields.ranges, joined: true }
            }
            Reader::Scan(scan) => Record { bytes: scan.lines.line(), fields: &scan.fields.ranges, joined: false },
            Reader::Csv { record, fields, .. } => Record { bytes: record.as_slice(), fields, joined: true },
        }
    }
}

impl Scan {
    /// When a field of the record just taken has quotes to take out: every field's value
    /// copied into `unquoted`, and the ranges made to point there.
    fn unquote(&mut self) {
        if self.fields.quoted.is_empty() {
            return;
        }
        let text = self.lines.line();
        self.unquoted.clear();
        let mut quoted = self.fields.quoted.iter().peekable();
        for (i, range) in self.fields.ranges.iter_mut().enumerate() {
            let from = self.unquoted.len();
            let field = &text[range.0..range.1];
            if quoted.next_if_eq(&&i).is_some() {
                scan::unquote(field, self.quote, &mut self.unquoted);
            } else {
                self.unquoted.extend_from_slice(field);
            }
            *range = (from, self.unquoted.len());
        }
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;
    use crate::lines::tests::{buffered, trickled};

    /// Every record of `text` as the `Records` read them, `most` bytes a read at most.
    fn records(text: &[u8], options: &CsvOptions, block_bytes: usize, most: usize) -> Vec<Vec<Vec<u8>>> {
        let mut records = Records::with_block(trickled(text, most), options, block_bytes);
        let mut all = Vec::new();
        while records.read().expect("reading from memory") {
            // By the ranges into the record's bytes, as the decoder reads fields.
            let record = records.record();
            all.push((0..record.len()).map(|i| record.bytes()[record.range(i).expect("a field")].to_vec()).collect());
        }
        all
    }

    /// Every record of `text` as the csv crate alone reads it.
    fn csv_records(text: &[u8], options: &CsvOptions) -> Vec<Vec<Vec<u8>>> {
        let mut reader = csv_reader_builder(options).from_reader(text);
        let mut record = csv::ByteRecord::new();
        let mut all = Vec::new();
        while reader.read_byte_record(&mut record).expect("reading from memory") {
            all.push(record.iter().map(<[u8]>::to_vec).collect());
        }
        all
    }

    fn is_scanning(records: &Records) -> bool {
        matches!(records.reader, Reader::Scan(_))
    }

    #[test]
    fn text_without_carriage_returns_is_scanned_and_read_as_the_csv_crate_reads_it() {
        let options = CsvOptions::default();
        let text = b"a,b,c\n\n1,,3\n,\nx\n\"q,1\",\"two\nlines\",\"say \"\"hi\"\"\"\n\"ab\"cd,joh\"n,\"\"\n4,5,6,7\nlast,\"open";
        let expected = csv_records(text, &options);
        assert_eq!(expected.len(), 8);
        assert_eq!(expected[4], [&b"q,1"[..], b"two\nlines", b"say \"hi\""]);
        assert_eq!(expected[5], [&b"abcd"[..], b"joh\"n", b""]);
        for block in [1, 2, 3, 7, 64, BLOCK_BYTES] {
            let mut reader = Records::with_block(buffered(text), &options, block);
            let mut all = Vec::new();
            while reader.read().unwrap() {
                let record = reader.record();
                // The fields' ranges index the record's bytes, as the decoder uses them.
                let by_range: Vec<Vec<u8>> =
                    (0..record.len()).map(|i| record.bytes()[record.range(i).unwrap()].to_vec()).collect();
                assert_eq!(by_range, record.iter().map(<[u8]>::to_vec).collect::<Vec<_>>());
                all.push(by_range);
            }
            assert!(is_scanning(&reader), "block {block}: text without \\r stays with the scanner");
            assert_eq!(all, expected, "block {block}");
        }
    }

    #[test]
    fn a_carriage_return_hands_the_rest_to_the_csv_crate() {
        let options = CsvOptions::default();
        // Clean lines first, so the first blocks read (4 bytes and the buffer's 5) have no `\r`.
        for text in [&b"a,b\n1,2\n3,4\n5,6\n7,8\r\n9,0\r1,2\n"[..], b"a,b\n1,2\n3,4\n5,6\n7,\"x\r\ny\"\n"] {
            let mut reader = Records::with_block(buffered(text), &options, 4);
            assert!(reader.read().unwrap());
            assert!(is_scanning(&reader), "the first block has no \\r");
            while reader.read().unwrap() {}
            assert!(!is_scanning(&reader), "the csv crate read the rest");
            assert_eq!(records(text, &options, 4, usize::MAX), csv_records(text, &options));
        }
        // Options that give other bytes a meaning keep the csv crate throughout.
        let comment = CsvOptions { comment: Some('#'), ..CsvOptions::default() };
        assert!(!is_scanning(&Records::new(buffered(b""), &comment)));
        let escape = CsvOptions { escape: Some('\\'), ..CsvOptions::default() };
        assert!(!is_scanning(&Records::new(buffered(b""), &escape)));
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(4096))]
        #[test]
        fn any_text_reads_as_the_csv_crate_reads_it(
            bytes in proptest::collection::vec(
                proptest::sample::select(vec![b'a', b'b', b',', b';', b'\n', b'\n', b'\r', b'"', b'"', 0xc3, 0xa9, b' ']),
                0..200,
            ),
            carriage_returns in any::<bool>(),
            block in 1usize..40,
            most in proptest::option::of(1usize..16),
            semicolon in any::<bool>(),
        ) {
            // Mostly text without `\r`, so the scanner reads much of it (or all) before any hand-over.
            let text: Vec<u8> = if carriage_returns { bytes } else { bytes.into_iter().filter(|&b| b != b'\r').collect() };
            let options = CsvOptions { delimiter: if semicolon { ';' } else { ',' }, ..CsvOptions::default() };
            prop_assert_eq!(records(&text, &options, block, most.unwrap_or(usize::MAX)), csv_records(&text, &options));
        }
    }
}
