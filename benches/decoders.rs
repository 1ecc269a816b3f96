//! Criterion benches of the decoders (and conforming to a table), on seeded in-memory data,
//! and of the two floors under the end-to-end bench: the `csv` crate finding records and
//! fields (what the CSV decoder builds on with an escape or comment character) and the Parquet encoder with inlet's writer
//! properties (what every data file goes through).

use std::collections::HashMap;
use std::io::Cursor;
use std::sync::Mutex;

use arrow::record_batch::RecordBatch;
use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use inlet_benches::{Format as GenFormat, csv_fields, write_orders};
use inlet_connectors::csv::CsvFormat;
use inlet_connectors::ndjson::NdjsonFormat;
use inlet_engine::config::{CsvOptions, NdjsonOptions, OnNewColumns};
use inlet_engine::conform::{ChunkOrigin, ConformSpec, TableColumns, conform};
use inlet_engine::schema::ColumnType;
use inlet_engine::source::{DecodeOptions, Format, Input};
use inlet_engine::table::file_writer_properties;
use parquet::arrow::ArrowWriter;

const ROWS: u64 = 100_000;

fn data(format: GenFormat) -> Vec<u8> {
    let mut bytes = Vec::new();
    write_orders(&mut bytes, format, 42, 1, ROWS).unwrap_or_default();
    bytes
}

fn decode_all(format: &dyn Format, bytes: &[u8], conform_to: Option<&ConformSpec>) -> usize {
    let mut rows = 0;
    for_each_chunk(format, bytes, conform_to, |batch| rows += batch.num_rows());
    rows
}

fn for_each_chunk(format: &dyn Format, bytes: &[u8], conform_to: Option<&ConformSpec>, mut f: impl FnMut(RecordBatch)) {
    let input = Input::Stream(Box::new(Cursor::new(bytes.to_vec())));
    // Conforming to hinted columns: the decoder types them as it reads, as ingestion does.
    let mut options = DecodeOptions::text(65_536);
    if let Some(spec) = conform_to {
        options.types = spec.hints.clone();
    }
    let Ok(mut decoder) = format.decoder(input, &options) else { return };
    let columns = Mutex::new(TableColumns::new_table(OnNewColumns::Add, inlet_engine::schema::Provenance::Files));
    let origin = ChunkOrigin {
        unit: "orders-00001.csv",
        page: None,
        load_id: "5f0c2a8e-8d7e-4b43-9a51-3c1f0b6de2a4",
        ingested_at_micros: 0,
    };
    while let Ok(Some(chunk)) = decoder.next_chunk() {
        match conform_to {
            Some(spec) => {
                if let Ok(conformed) = conform(chunk, spec, &columns, &origin) {
                    f(conformed.batch);
                }
            }
            None => f(chunk.batch),
        }
    }
}

/// Bytes of the Parquet file inlet's writer properties make of `batches`, in memory.
fn encode(batches: &[RecordBatch]) -> usize {
    let Some(first) = batches.first() else { return 0 };
    let mut out = Vec::new();
    let Ok(mut writer) = ArrowWriter::try_new(&mut out, first.schema(), Some(file_writer_properties(first))) else {
        return 0;
    };
    for batch in batches {
        if writer.write(batch).is_err() {
            return 0;
        }
    }
    if writer.close().is_err() {
        return 0;
    }
    out.len()
}

fn spec() -> ConformSpec {
    let hints =
        [("order_id", "bigint"), ("customer_id", "bigint"), ("order_ts", "timestamp"), ("amount", "decimal(18,2)")]
            .into_iter()
            .filter_map(|(c, t)| ColumnType::parse(t).ok().map(|t| (c.to_owned(), t.0)))
            .collect::<HashMap<_, _>>();
    ConformSpec {
        source_name: "orders".into(),
        table: "bronze.orders".into(),
        hints,
        on_new_columns: OnNewColumns::Add,
    }
}

fn decoders(c: &mut Criterion) {
    let csv = data(GenFormat::Csv);
    let ndjson = data(GenFormat::Ndjson);
    let spec = spec();
    let mut group = c.benchmark_group("decode");
    group.sample_size(10);
    group.throughput(Throughput::Bytes(csv.len() as u64));
    let csv_format = CsvFormat::new(CsvOptions::default());
    group.bench_function("csv", |b| b.iter(|| decode_all(&csv_format, &csv, None)));
    group.bench_function("csv+conform", |b| b.iter(|| decode_all(&csv_format, &csv, Some(&spec))));
    group.throughput(Throughput::Bytes(ndjson.len() as u64));
    let ndjson_format = NdjsonFormat::new(NdjsonOptions::default());
    group.bench_function("ndjson", |b| b.iter(|| decode_all(&ndjson_format, &ndjson, None)));
    group.bench_function("ndjson+conform", |b| b.iter(|| decode_all(&ndjson_format, &ndjson, Some(&spec))));
    group.finish();
}

fn floors(c: &mut Criterion) {
    let csv = data(GenFormat::Csv);
    let mut conformed = Vec::new();
    for_each_chunk(&CsvFormat::new(CsvOptions::default()), &csv, Some(&spec()), |batch| conformed.push(batch));
    // A floor that measured a failure would look fast: check both do the whole job first.
    let rows: usize = conformed.iter().map(RecordBatch::num_rows).sum();
    assert_eq!(rows as u64, ROWS, "conformed rows");
    assert_eq!(csv_fields(csv.as_slice()).unwrap_or(0), (ROWS + 1) * 8, "fields of the header and the records");
    assert!(encode(&conformed) > 0, "encoding failed");
    let mut group = c.benchmark_group("floor");
    group.sample_size(10);
    group.throughput(Throughput::Bytes(csv.len() as u64));
    group.bench_function("csv-crate-records", |b| b.iter(|| csv_fields(csv.as_slice()).unwrap_or(0)));
    group.throughput(Throughput::Elements(ROWS));
    group.bench_function("parquet-encode", |b| b.iter(|| encode(&conformed)));
    group.finish();
}

criterion_group!(benches, decoders, floors);
criterion_main!(benches);
