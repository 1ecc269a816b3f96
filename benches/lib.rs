//! The seeded generator of the orders data set, shared by the generator binary, the
//! end-to-end bench and the criterion benches. The same seed always gives the same bytes.

pub mod peer;

use std::io::Write;
use std::path::{Path, PathBuf};

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

const CURRENCIES: [&str; 5] = ["EUR", "USD", "GBP", "CHF", "JPY"];
const STATUSES: [&str; 6] = ["new", "paid", "shipped", "delivered", "cancelled", "refunded"];
const COUNTRIES: [&str; 12] = ["DE", "FR", "NL", "US", "GB", "CH", "JP", "ES", "IT", "SE", "PL", "BR"];
const WORDS: [&str; 12] =
    ["gift", "rush", "fragile", "\"VIP\"", "leave at door", "call first", "a, b", "ok", "n/a", "thanks", "again", "x"];

/// File format of generated data.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    Csv,
    Ndjson,
}

/// One generated order.
struct Order {
    order_id: u64,
    customer_id: u32,
    ts: String,
    amount_cents: u64,
    currency: &'static str,
    status: &'static str,
    country: &'static str,
    note: String,
}

fn order(rng: &mut StdRng, order_id: u64) -> Order {
    order_in_year(rng, order_id, 1_704_067_200)
}

/// An order with a timestamp in the year starting at `year_start` (seconds since the epoch).
fn order_in_year(rng: &mut StdRng, order_id: u64, year_start: u64) -> Order {
    let seconds = year_start + rng.random_range(0..31_536_000u64);
    let ts = chrono_like(seconds);
    let mut note = String::new();
    let target = rng.random_range(0..=80usize);
    while note.len() < target {
        let word = WORDS[rng.random_range(0..WORDS.len())];
        if note.len() + word.len() + 1 > 80 {
            break;
        }
        if !note.is_empty() {
            note.push(' ');
        }
        note.push_str(word);
    }
    Order {
        order_id,
        customer_id: rng.random_range(1..=1_000_000),
        ts,
        amount_cents: rng.random_range(1..10_000_000),
        currency: CURRENCIES[rng.random_range(0..CURRENCIES.len())],
        status: STATUSES[rng.random_range(0..STATUSES.len())],
        country: COUNTRIES[rng.random_range(0..COUNTRIES.len())],
        note,
    }
}

/// `YYYY-MM-DDTHH:MM:SSZ` for seconds since the epoch (civil-from-days, no time zone data).
fn chrono_like(seconds: u64) -> String {
    let days = (seconds / 86_400) as i64;
    let rem = seconds % 86_400;
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!("{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}Z", rem / 3600, rem % 3600 / 60, rem % 60)
}

/// Writes one file of `rows` orders starting at `first_id`.
pub fn write_orders(out: &mut impl Write, format: Format, seed: u64, first_id: u64, rows: u64) -> std::io::Result<()> {
    let mut rng = StdRng::seed_from_u64(seed ^ first_id.wrapping_mul(0x9E37_79B9_7F4A_7C15));
    if format == Format::Csv {
        writeln!(out, "order_id,customer_id,order_ts,amount,currency,status,country,note")?;
    }
    for id in first_id..first_id + rows {
        write_order(out, format, order(&mut rng, id))?;
    }
    Ok(())
}

/// The merge bench's change batch (CSV): `updates` distinct existing orders among the
/// `window` most recent of `1..=existing` (all of them when `window` is `existing`) and
/// `new` orders after them, all dated 2025, later than every generated order.
pub fn write_order_changes(
    out: &mut impl Write,
    seed: u64,
    existing: u64,
    window: u64,
    updates: u64,
    new: u64,
) -> std::io::Result<()> {
    let mut rng = StdRng::seed_from_u64(seed ^ 0x00C4_A6E5);
    writeln!(out, "order_id,customer_id,order_ts,amount,currency,status,country,note")?;
    const YEAR_2025: u64 = 1_735_689_600;
    // 7919 is prime and shares no factor with a round window: distinct ids while `updates <= window`.
    let window = window.clamp(1, existing);
    for i in 0..updates {
        let id = existing - window + (i * 7919) % window + 1;
        write_order(out, Format::Csv, order_in_year(&mut rng, id, YEAR_2025))?;
    }
    for id in existing + 1..=existing + new {
        write_order(out, Format::Csv, order_in_year(&mut rng, id, YEAR_2025))?;
    }
    Ok(())
}

/// One day of the SCD2 bench's customers snapshot (CSV). Day 0 holds ids `1..=customers`;
/// day 1 changes the tier of 10%, drops 1% (deleted) and adds 2% new customers.
pub fn write_customers(out: &mut impl Write, day: u32, customers: u64) -> std::io::Result<()> {
    const TIERS: [&str; 4] = ["bronze", "silver", "gold", "platinum"];
    writeln!(out, "customer_id,tier,city,email,segment,snapshot_at")?;
    let last = if day == 0 { customers } else { customers + customers / 50 };
    for id in 1..=last {
        if day > 0 && id % 100 == 0 {
            continue;
        }
        let changed = day > 0 && id % 10 == 1;
        let tier = TIERS[((id + u64::from(changed)) % 4) as usize];
        let city = COUNTRIES[(id % 12) as usize];
        writeln!(out, "{id},{tier},{city},customer{id}@example.com,s{},2024-01-{:02}T00:00:00Z", id % 7, day + 1)?;
    }
    Ok(())
}

fn write_order(out: &mut impl Write, format: Format, o: Order) -> std::io::Result<()> {
    let amount = format!("{}.{:02}", o.amount_cents / 100, o.amount_cents % 100);
    match format {
        Format::Csv => {
            let note =
                if o.note.contains([',', '"']) { format!("\"{}\"", o.note.replace('"', "\"\"")) } else { o.note };
            writeln!(
                out,
                "{},{},{},{},{},{},{},{}",
                o.order_id, o.customer_id, o.ts, amount, o.currency, o.status, o.country, note
            )
        }
        Format::Ndjson => {
            let note = serde_json::to_string(&o.note).map_err(std::io::Error::other)?;
            writeln!(
                out,
                r#"{{"order_id":{},"customer_id":{},"order_ts":"{}","amount":"{}","currency":"{}","status":"{}","country":"{}","note":{}}}"#,
                o.order_id, o.customer_id, o.ts, amount, o.currency, o.status, o.country, note
            )
        }
    }
}

/// Writes `files` files of `rows_per_file` orders into `dir`; returns their total size in bytes.
pub fn generate(dir: &Path, format: Format, files: u64, rows_per_file: u64, seed: u64) -> std::io::Result<u64> {
    std::fs::create_dir_all(dir)?;
    let extension = match format {
        Format::Csv => "csv",
        Format::Ndjson => "ndjson",
    };
    let mut bytes = 0;
    for file in 0..files {
        let path = dir.join(format!("orders-{file:05}.{extension}"));
        let mut out = std::io::BufWriter::with_capacity(1 << 20, std::fs::File::create(&path)?);
        write_orders(&mut out, format, seed, file * rows_per_file + 1, rows_per_file)?;
        out.flush()?;
        bytes += std::fs::metadata(&path)?.len();
    }
    Ok(bytes)
}

/// The orders data set of `files` files of `rows_per_file` rows in `format` under `dir`,
/// generated once (seed 42) and cached (`landing-<format>-<files>x<rows>`, marked done by a
/// `.done` file); its directory and size in bytes.
pub fn cached_orders(dir: &Path, format: Format, files: u64, rows_per_file: u64) -> std::io::Result<(PathBuf, u64)> {
    let name = match format {
        Format::Csv => "csv",
        Format::Ndjson => "ndjson",
    };
    let landing = dir.join(format!("landing-{name}-{files}x{rows_per_file}"));
    if landing.join(".done").exists() {
        let mut bytes = 0;
        for entry in std::fs::read_dir(&landing)? {
            let entry = entry?;
            if !entry.file_name().to_string_lossy().starts_with('.') {
                bytes += entry.metadata()?.len();
            }
        }
        return Ok((landing, bytes));
    }
    let started = std::time::Instant::now();
    let bytes = generate(&landing, format, files, rows_per_file, 42)?;
    std::fs::write(landing.join(".done"), b"")?;
    eprintln!(
        "generated {} rows ({bytes} bytes of {name}) in {:.1}s",
        files * rows_per_file,
        started.elapsed().as_secs_f64()
    );
    Ok((landing, bytes))
}

/// Fields the `csv` crate finds in `reader`, copying nothing out: the floor of the CSV
/// decoder where it reads with the `csv` crate (an escape or comment character, a `\r`).
pub fn csv_fields(reader: impl std::io::Read) -> csv::Result<u64> {
    let mut reader =
        csv::ReaderBuilder::new().has_headers(false).flexible(true).buffer_capacity(1 << 20).from_reader(reader);
    let mut record = csv::ByteRecord::new();
    let mut fields = 0;
    while reader.read_byte_record(&mut record)? {
        fields += record.len() as u64;
    }
    Ok(fields)
}

/// Fields of the NDJSON records of `reader` as serde_json finds them: every line tokenised
/// and validated, keys read, values parsed and let go (`IgnoredAny`). What inlet's NDJSON
/// decoder, built on serde_json, does at least: the JSON floor beside [`csv_fields`].
pub fn json_fields(reader: impl std::io::BufRead) -> anyhow::Result<u64> {
    use serde::Deserializer as _;
    use serde::de::{IgnoredAny, MapAccess, Visitor};

    struct Fields;
    impl<'de> Visitor<'de> for Fields {
        type Value = u64;
        fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str("a JSON object")
        }
        fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<u64, A::Error> {
            let mut fields = 0;
            while map.next_key::<std::borrow::Cow<'de, str>>()?.is_some() {
                map.next_value::<IgnoredAny>()?;
                fields += 1;
            }
            Ok(fields)
        }
    }
    let mut reader = reader;
    let mut fields = 0;
    // One buffer for every line (inlet's decoder copies no line: a little above the floor).
    let mut line = String::new();
    loop {
        line.clear();
        if reader.read_line(&mut line)? == 0 {
            break;
        }
        if line.trim().is_empty() {
            continue;
        }
        let mut deserializer = serde_json::Deserializer::from_str(&line);
        fields += deserializer.deserialize_any(Fields)?;
        deserializer.end()?;
    }
    Ok(fields)
}

/// The pipeline file the benches ingest with.
pub fn pipeline_toml(format: Format, max_files_per_commit: u64) -> String {
    let format = match format {
        Format::Csv => "csv",
        Format::Ndjson => "ndjson",
    };
    format!(
        r#"[pipeline]
name = "bench"
lake = "lake"

[sources.orders]
type = "files"
path = "landing"
format = "{format}"
target = "bronze.orders"
schema = {{ order_id = "bigint", customer_id = "bigint", order_ts = "timestamp", amount = "decimal(18,2)" }}
max_files_per_commit = {max_files_per_commit}
"#
    )
}

/// Ten row expectations and a `unique` over the orders data set (all warn but `unique`;
/// the generated data passes them): what `inlet-e2e-bench --expectations` adds to the source.
pub fn expectations_toml() -> &'static str {
    r#"
[[sources.orders.expect]]
name = "amount_non_negative"
rule = "amount >= 0"
on_violation = "warn"

[[sources.orders.expect]]
name = "order_id_present"
check = "not_null"
columns = ["order_id", "customer_id"]
on_violation = "warn"

[[sources.orders.expect]]
name = "status_known"
check = "accepted_values"
column = "status"
values = ["new", "paid", "shipped", "delivered", "refunded", "cancelled"]
on_violation = "warn"

[[sources.orders.expect]]
name = "currency_known"
check = "accepted_values"
column = "currency"
values = ["EUR", "USD", "GBP", "CHF", "JPY", "SEK", "DKK", "NOK", "PLN", "CZK"]
on_violation = "warn"

[[sources.orders.expect]]
name = "country_code"
check = "regex"
column = "country"
pattern = "^[A-Z]{2}$"
on_violation = "warn"

[[sources.orders.expect]]
name = "amount_range"
check = "range"
column = "amount"
min = 0
max = 1000000
on_violation = "warn"

[[sources.orders.expect]]
name = "ordered_this_century"
rule = "order_ts >= TIMESTAMP '2000-01-01T00:00:00Z'"
on_violation = "warn"

[[sources.orders.expect]]
name = "note_short"
rule = "length(note) < 500"
on_violation = "warn"

[[sources.orders.expect]]
name = "customer_positive"
rule = "customer_id > 0"
on_violation = "warn"

[[sources.orders.expect]]
name = "currency_three_letters"
rule = "length(currency) = 3"
on_violation = "warn"

[[sources.orders.expect]]
name = "order_id_unique"
check = "unique"
columns = ["order_id"]
"#
}

/// The `p` quantile of `values` (sorts them; NaN when there are none).
pub fn percentile(values: &mut [f64], p: f64) -> f64 {
    values.sort_by(f64::total_cmp);
    values.get(((values.len() as f64 - 1.0) * p).round() as usize).copied().unwrap_or(f64::NAN)
}

/// Starts `inlet serve` in `dir` with `env` added; returns the child and the address it
/// serves on (from its first line of output).
pub fn start_serve(inlet: &Path, dir: &Path, env: &[(&str, &str)]) -> anyhow::Result<(std::process::Child, String)> {
    use anyhow::Context;
    use std::io::BufRead;
    let mut child = std::process::Command::new(inlet)
        .args(["serve", "inlet.toml"])
        .current_dir(dir)
        .envs(env.iter().copied())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .context("starting inlet serve")?;
    let mut line = String::new();
    std::io::BufReader::new(child.stdout.take().context("no stdout")?).read_line(&mut line)?;
    let address = line.trim().rsplit("http://").next().unwrap_or_default().to_owned();
    Ok((child, address))
}

/// The merge bench's pipeline: orders into bronze, merged into `silver.orders` by
/// `order_id`, the latest `order_ts` winning, incrementally.
pub const MERGE_PIPELINE: &str = r#"
[pipeline]
name = "merge-bench"

[sources.orders]
type = "files"
path = "landing"
format = "csv"
target = "bronze.orders"
schema = { order_id = "bigint", order_ts = "timestamp", amount = "decimal(18,2)" }

[tables."silver.orders"]
sql = "SELECT order_id, customer_id, order_ts, amount, currency, status, country, note FROM bronze.orders"
write = "merge"
keys = ["order_id"]
sequence_by = "order_ts"
incremental = true
"#;

/// The SCD2 bench's pipeline: customer snapshots into bronze, their history in
/// `silver.customers` by `customer_id`, valid from `snapshot_at`.
pub const SCD2_PIPELINE: &str = r#"
[pipeline]
name = "scd2-bench"

[sources.customers]
type = "files"
path = "landing"
format = "csv"
target = "bronze.customers"
schema = { customer_id = "bigint", snapshot_at = "timestamp" }

[tables."silver.customers"]
sql = "SELECT customer_id, tier, city, email, segment, snapshot_at FROM bronze.customers"
write = "scd2"
keys = ["customer_id"]
sequence_by = "snapshot_at"
source_is_snapshot = true
incremental = true
"#;

/// Writes a file through a 1 MiB buffer, making its directory.
pub fn write_file(
    path: &Path,
    write: impl FnOnce(&mut std::io::BufWriter<std::fs::File>) -> std::io::Result<()>,
) -> std::io::Result<()> {
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent)?;
    }
    let mut out = std::io::BufWriter::with_capacity(1 << 20, std::fs::File::create(path)?);
    write(&mut out)?;
    out.flush()?;
    Ok(())
}

/// Hard-links a directory tree (`cp -al`): immutable files shared, directories new.
pub fn link_tree(from: &Path, to: &Path) -> std::io::Result<()> {
    let status = std::process::Command::new("cp").arg("-al").arg(from).arg(to).status()?;
    if !status.success() {
        return Err(std::io::Error::other(format!("cp -al {} {} failed", from.display(), to.display())));
    }
    Ok(())
}

/// The median of `values` (sorts them).
pub fn median(values: &mut [f64]) -> f64 {
    values.sort_by(f64::total_cmp);
    values[values.len() / 2]
}

/// Peak resident set size of this process since the last reset, in bytes (Linux `VmHWM`).
pub fn peak_rss_bytes() -> std::io::Result<u64> {
    let status = std::fs::read_to_string("/proc/self/status")?;
    status
        .lines()
        .find(|l| l.starts_with("VmHWM:"))
        .and_then(|line| line.split_whitespace().nth(1))
        .and_then(|kib| kib.parse::<u64>().ok())
        .map(|kib| kib * 1024)
        .ok_or_else(|| std::io::Error::other("no VmHWM in /proc/self/status"))
}

/// Resets the peak RSS counter (Linux: writing 5 to `clear_refs`).
pub fn reset_peak_rss() -> std::io::Result<()> {
    std::fs::write("/proc/self/clear_refs", "5")
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn generator_is_seeded_and_well_formed() {
        let mut a = Vec::new();
        let mut b = Vec::new();
        write_orders(&mut a, Format::Csv, 7, 1, 1000).unwrap();
        write_orders(&mut b, Format::Csv, 7, 1, 1000).unwrap();
        assert_eq!(a, b);
        let mut reader = csv::Reader::from_reader(a.as_slice());
        let records: Vec<_> = reader.records().map(Result::unwrap).collect();
        assert_eq!(records.len(), 1000);
        assert!(records.iter().all(|r| r.len() == 8 && r[7].len() <= 80));
        assert!(records.iter().any(|r| r[7].contains(',')) && records.iter().any(|r| r[7].contains('"')));
        assert_eq!(chrono_like(1_704_067_200), "2024-01-01T00:00:00Z");
        assert_eq!(chrono_like(1_709_210_096), "2024-02-29T12:34:56Z");
        let mut json = Vec::new();
        write_orders(&mut json, Format::Ndjson, 7, 1, 10).unwrap();
        for line in json.split(|&b| b == b'\n').filter(|l| !l.is_empty()) {
            let value: serde_json::Value = serde_json::from_slice(line).unwrap();
            assert!(value["order_id"].is_u64());
        }
    }
}
