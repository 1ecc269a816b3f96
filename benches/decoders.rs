//! Criterion benches of the decoders (and conforming to a table), on seeded in-memory data.

use std::collections::HashMap;
use std::io::Cursor;
use std::sync::Mutex;

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use inlet_benches::{Format as GenFormat, write_orders};
use inlet_connectors::csv::CsvFormat;
use inlet_connectors::ndjson::NdjsonFormat;
use inlet_engine::config::{CsvOptions, NdjsonOptions, OnNewColumns};
use inlet_engine::conform::{ChunkOrigin, ConformSpec, TableColumns, conform};
use inlet_engine::schema::ColumnType;
use inlet_engine::source::{Format, Input};

const ROWS: u64 = 100_000;

fn data(format: GenFormat) -> Vec<u8> {
    let mut bytes = Vec::new();
    write_orders(&mut bytes, format, 42, 1, ROWS).unwrap_or_default();
    bytes
}

fn decode_all(format: &dyn Format, bytes: &[u8], conform_to: Option<&ConformSpec>) -> usize {
    let input = Input::Stream(Box::new(Cursor::new(bytes.to_vec())));
    let Ok(mut decoder) = format.decoder(input, 65_536) else { return 0 };
    let columns = Mutex::new(TableColumns::new_table(OnNewColumns::Add));
    let origin = ChunkOrigin { file: "bench.csv", load_id: "L", ingested_at_micros: 0 };
    let mut rows = 0;
    while let Ok(Some(chunk)) = decoder.next_chunk() {
        rows += match conform_to {
            Some(spec) => conform(chunk, spec, &columns, &origin).map_or(0, |c| c.batch.num_rows()),
            None => chunk.batch.num_rows(),
        };
    }
    rows
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

criterion_group!(benches, decoders);
criterion_main!(benches);
