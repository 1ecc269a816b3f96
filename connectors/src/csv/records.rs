//! Records of a CSV stream, found by a SIMD scanner while the text allows it and by the
//! `csv` crate from there on.
//!
//! Text without a quote character or a carriage return is, to the `csv` crate, lines ended by
//! `\n`, split at the delimiter, with blank lines skipped. Such text is split with `memchr`'s
//! SIMD searches instead of the crate's byte-at-a-time state machine. The input is read in
//! blocks; each block's whole lines are searched for a quote or `\r` first, and the first
//! block that has one hands the rest of the stream, from the record it starts with, to the
//! `csv` crate. Files whose options give more bytes a meaning (an escape or comment
//! character, a delimiter or quote beyond ASCII) are read by the `csv` crate throughout.
//! Either way the records are the same; the tests below hold the two to that.

use std::io::{BufReader, Read};

use inlet_engine::config::CsvOptions;

use crate::lines::{BLOCK_BYTES, Lines, Step};

/// One record: its bytes and where each field is in them.
pub(crate) struct Record<'a> {
    bytes: &'a [u8],
    fields: &'a [(usize, usize)],
}

impl<'a> Record<'a> {
    pub(crate) fn len(&self) -> usize {
        self.fields.len()
    }

    /// Every field, with what separates them (the scanner) or not (the `csv` crate): UTF-8
    /// exactly when every field is, since fields split at ASCII bytes.
    pub(crate) fn bytes(&self) -> &'a [u8] {
        self.bytes
    }

    /// Where field `i` is in [`Record::bytes`].
    pub(crate) fn range(&self, i: usize) -> Option<std::ops::Range<usize>> {
        self.fields.get(i).map(|&(start, end)| start..end)
    }

    pub(crate) fn get(&self, i: usize) -> Option<&'a [u8]> {
        self.range(i).and_then(|range| self.bytes.get(range))
    }

    pub(crate) fn iter(&self) -> impl Iterator<Item = &'a [u8]> + '_ {
        (0..self.len()).filter_map(|i| self.get(i))
    }
}

/// The records of one stream, read one at a time ([`Records::read`], then [`Records::record`]).
pub(crate) struct Records {
    source: Source,
    /// Where the fields of the current record are.
    fields: Vec<(usize, usize)>,
    builder: csv::ReaderBuilder,
}

enum Source {
    /// The SIMD scanner, splitting lines at `delimiter` while no `quote` or `\r` comes.
    Scan {
        lines: Lines,
        delimiter: u8,
        quote: u8,
    },
    Csv {
        reader: csv::Reader<Box<dyn Read + Send>>,
        record: csv::ByteRecord,
    },
}

impl Records {
    pub(crate) fn new(input: BufReader<Box<dyn Read + Send>>, options: &CsvOptions) -> Records {
        Records::with_block(input, options, BLOCK_BYTES)
    }

    fn with_block(input: BufReader<Box<dyn Read + Send>>, options: &CsvOptions, block_bytes: usize) -> Records {
        let ascii = |c: char| u8::try_from(c).ok().filter(u8::is_ascii);
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
        let scannable = (ascii(options.delimiter), ascii(options.quote), options.escape, options.comment);
        let source = match scannable {
            (Some(delimiter), Some(quote), None, None)
                if delimiter != quote && ![b'\n', b'\r'].contains(&delimiter) =>
            {
                Source::Scan { lines: Lines::new(input, block_bytes), delimiter, quote }
            }
            _ => Source::Csv { reader: builder.from_reader(Box::new(input)), record: csv::ByteRecord::new() },
        };
        Records { source, fields: Vec::new(), builder }
    }

    /// Reads the next record; false at the end of the input.
    pub(crate) fn read(&mut self) -> Result<bool, csv::Error> {
        self.fields.clear();
        loop {
            let (lines, delimiter, quote) = match &mut self.source {
                Source::Scan { lines, delimiter, quote } => (lines, *delimiter, *quote),
                Source::Csv { reader, record } => {
                    if !reader.read_byte_record(record)? {
                        return Ok(false);
                    }
                    self.fields.extend((0..record.len()).filter_map(|i| record.range(i)).map(|r| (r.start, r.end)));
                    return Ok(true);
                }
            };
            match lines.next()? {
                Step::Line if lines.line().is_empty() => {
                    // A blank line is no record, as to the csv crate.
                }
                Step::Line => {
                    let mut from = 0;
                    for at in memchr::memchr_iter(delimiter, lines.line()) {
                        self.fields.push((from, at));
                        from = at + 1;
                    }
                    self.fields.push((from, lines.line().len()));
                    return Ok(true);
                }
                Step::Read if memchr::memchr2(quote, b'\r', lines.unread()).is_none() => {}
                Step::Read => {
                    // The csv crate reads the rest, from the first line of the new stretch on.
                    let reader = self.builder.from_reader(lines.take_rest());
                    self.source = Source::Csv { reader, record: csv::ByteRecord::new() };
                }
                Step::End => return Ok(false),
            }
        }
    }

    /// The record [`Records::read`] read last.
    pub(crate) fn record(&self) -> Record<'_> {
        let bytes = match &self.source {
            Source::Scan { lines, .. } => lines.line(),
            Source::Csv { record, .. } => record.as_slice(),
        };
        Record { bytes, fields: &self.fields }
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;
    use crate::lines::tests::buffered;

    /// Every record of `text` as the `Records` read them.
    fn records(text: &[u8], options: &CsvOptions, block_bytes: usize) -> Vec<Vec<Vec<u8>>> {
        let mut records = Records::with_block(buffered(text), options, block_bytes);
        let mut all = Vec::new();
        while records.read().expect("reading from memory") {
            all.push(records.record().iter().map(<[u8]>::to_vec).collect());
        }
        all
    }

    /// Every record of `text` as the csv crate alone reads it.
    fn csv_records(text: &[u8], options: &CsvOptions) -> Vec<Vec<Vec<u8>>> {
        let mut builder = csv::ReaderBuilder::new();
        builder
            .has_headers(false)
            .flexible(true)
            .delimiter(super::super::ascii(options.delimiter))
            .quote(super::super::ascii(options.quote));
        let mut reader = builder.from_reader(text);
        let mut record = csv::ByteRecord::new();
        let mut all = Vec::new();
        while reader.read_byte_record(&mut record).expect("reading from memory") {
            all.push(record.iter().map(<[u8]>::to_vec).collect());
        }
        all
    }

    fn is_scanning(records: &Records) -> bool {
        matches!(records.source, Source::Scan { .. })
    }

    #[test]
    fn quote_free_text_is_scanned_and_read_as_the_csv_crate_reads_it() {
        let options = CsvOptions::default();
        let text = b"a,b,c\n\n1,,3\n,\nx\n4,5,6,7\nlast,no newline";
        let expected = csv_records(text, &options);
        assert_eq!(expected.len(), 6);
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
            assert!(is_scanning(&reader), "block {block}: quote-free text stays with the scanner");
            assert_eq!(all, expected, "block {block}");
        }
    }

    #[test]
    fn a_quote_or_carriage_return_hands_the_rest_to_the_csv_crate() {
        let options = CsvOptions::default();
        for text in [&b"a,b\n1,2\n3,\"x\ny\",z\n4,5\n"[..], b"a,b\n1,2\r\n3,4\r5,6\n", b"x,y\na,joh\"n,c\nd,e\n"] {
            let mut reader = Records::with_block(buffered(text), &options, 4);
            assert!(reader.read().unwrap());
            assert!(is_scanning(&reader), "the first block has no quote");
            assert_eq!(records(text, &options, 4), csv_records(text, &options));
        }
        // Options that give other bytes a meaning keep the csv crate throughout.
        let comment = CsvOptions { comment: Some('#'), ..CsvOptions::default() };
        assert!(!is_scanning(&Records::new(buffered(b""), &comment)));
        let latin_delimiter = CsvOptions { delimiter: 'é', ..CsvOptions::default() };
        assert!(!is_scanning(&Records::new(buffered(b""), &latin_delimiter)));
    }

    proptest! {
        #[test]
        fn any_text_reads_as_the_csv_crate_reads_it(
            bytes in proptest::collection::vec(
                proptest::sample::select(vec![b'a', b'b', b',', b';', b'\n', b'\n', b'\r', b'"', 0xc3, 0xa9, b' ']),
                0..200,
            ),
            quotes in any::<bool>(),
            block in 1usize..40,
            semicolon in any::<bool>(),
        ) {
            // Mostly quote-free text, so the scanner reads much of it before any hand-over.
            let text: Vec<u8> = if quotes { bytes } else { bytes.into_iter().filter(|&b| b != b'"' && b != b'\r').collect() };
            let options = CsvOptions { delimiter: if semicolon { ';' } else { ',' }, ..CsvOptions::default() };
            prop_assert_eq!(records(&text, &options, block), csv_records(&text, &options));
        }
    }
}
