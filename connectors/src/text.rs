//! Shared pieces of the text formats: byte-order marks and encodings.

use std::io::{BufRead, BufReader, Read};

use inlet_engine::config::Encoding;

const UTF8_BOM: &[u8] = b"\xEF\xBB\xBF";

/// A buffered reader with a leading UTF-8 byte-order mark removed.
pub fn without_bom(reader: Box<dyn Read + Send>) -> std::io::Result<BufReader<Box<dyn Read + Send>>> {
    let mut reader = BufReader::with_capacity(1 << 18, reader);
    if reader.fill_buf()?.starts_with(UTF8_BOM) {
        reader.consume(UTF8_BOM.len());
    }
    Ok(reader)
}

/// Decodes bytes in `encoding`; `Err` carries a message naming the first bad byte.
pub fn decode<'a>(bytes: &'a [u8], encoding: Encoding) -> Result<std::borrow::Cow<'a, str>, String> {
    match encoding {
        Encoding::Utf8 => std::str::from_utf8(bytes)
            .map(std::borrow::Cow::Borrowed)
            .map_err(|e| format!("invalid UTF-8 at byte {} of the record", e.valid_up_to() + 1)),
        Encoding::Latin1 => Ok(if bytes.is_ascii() {
            // ASCII is the same in both; skip the copy.
            std::borrow::Cow::Borrowed(std::str::from_utf8(bytes).map_err(|e| e.to_string())?)
        } else {
            std::borrow::Cow::Owned(bytes.iter().map(|&b| char::from(b)).collect())
        }),
    }
}
