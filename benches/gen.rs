//! `inlet-gen`: writes the seeded orders data set (CSV or NDJSON) for benches and demos.

use std::path::PathBuf;

use clap::{Parser, ValueEnum};
use inlet_benches::{Format, generate};

#[derive(Parser)]
#[command(about = "Write the seeded orders data set")]
struct Args {
    /// Output directory.
    #[arg(long)]
    out: PathBuf,
    #[arg(long, default_value_t = 40)]
    files: u64,
    #[arg(long, default_value_t = 250_000)]
    rows_per_file: u64,
    #[arg(long, value_enum, default_value_t = GenFormat::Csv)]
    format: GenFormat,
    #[arg(long, default_value_t = 42)]
    seed: u64,
}

#[derive(Clone, Copy, ValueEnum)]
enum GenFormat {
    Csv,
    Ndjson,
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let format = match args.format {
        GenFormat::Csv => Format::Csv,
        GenFormat::Ndjson => Format::Ndjson,
    };
    let bytes = generate(&args.out, format, args.files, args.rows_per_file, args.seed)?;
    println!("{} files, {} rows, {bytes} bytes in {}", args.files, args.files * args.rows_per_file, args.out.display());
    Ok(())
}
