//! Parquet: typed batches as stored.

use arrow::array::Int64Array;
use inlet_engine::source::{DecodeOptions, Decoder, Format, Input, RawChunk, RawStyle, SourceError};
use parquet::arrow::arrow_reader::{ParquetRecordBatchReader, ParquetRecordBatchReaderBuilder};

/// The Parquet format.
pub struct ParquetFormat;

impl Format for ParquetFormat {
    fn decoder(&self, input: Input, options: &DecodeOptions) -> Result<Box<dyn Decoder>, SourceError> {
        let error =
            |e: parquet::errors::ParquetError| crate::Error::decode(format!("not a readable Parquet file: {e}"));
        let batch_size = options.rows_per_chunk.max(1);
        let reader = match input {
            Input::File(file) => {
                ParquetRecordBatchReaderBuilder::try_new(file).map_err(error)?.with_batch_size(batch_size).build()
            }
            Input::Stream(mut stream) => {
                // Parquet needs random access: a compressed or remote file is spooled to a
                // temporary file (deleted when closed), not held in memory.
                let spooling = |e: std::io::Error| crate::Error::decode(format!("reading the file: {e}"));
                let mut spool = tempfile::tempfile().map_err(spooling)?;
                std::io::copy(&mut stream, &mut spool).map_err(spooling)?;
                ParquetRecordBatchReaderBuilder::try_new(spool).map_err(error)?.with_batch_size(batch_size).build()
            }
        }
        .map_err(error)?;
        Ok(Box::new(ParquetDecoder { reader, rows_read: 0 }))
    }
}

struct ParquetDecoder {
    reader: ParquetRecordBatchReader,
    rows_read: i64,
}

impl Decoder for ParquetDecoder {
    fn next_chunk(&mut self) -> Result<Option<RawChunk>, SourceError> {
        match self.reader.next() {
            None => Ok(None),
            Some(Err(err)) => {
                Err(crate::Error::decode(format!("Parquet read error after row {}: {err}", self.rows_read)))
            }
            Some(Ok(batch)) => {
                let n = i64::try_from(batch.num_rows()).unwrap_or(i64::MAX);
                let rows = Int64Array::from_iter_values((self.rows_read + 1)..=(self.rows_read + n));
                self.rows_read += n;
                Ok(Some(RawChunk { batch, rows, bad: Vec::new(), text: false, raw_style: RawStyle::Json }))
            }
        }
    }
}
