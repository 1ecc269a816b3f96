//! Timing whole processes side by side with a peer: wall time, CPU-seconds (user + sys,
//! the children waited for included) and peak RSS (the largest process), as `/usr/bin/time`
//! measures them, and the medians of the runs.

use std::path::Path;
use std::process::Command;

use anyhow::{Context, bail};

use crate::median;

/// What `/usr/bin/time` measured of one process (and the children it waited for).
#[derive(Debug, Clone, Copy)]
pub struct Measured {
    pub wall: f64,
    pub cpu: f64,
    pub rss_mib: f64,
}

/// Runs `command` under `/usr/bin/time`; its stdout and what was measured.
pub fn measured(command: Command, dir: &Path) -> anyhow::Result<(String, Measured)> {
    let times = dir.join("time.txt");
    let program = command.get_program().to_owned();
    let args: Vec<_> = command.get_args().map(ToOwned::to_owned).collect();
    let envs: Vec<_> = command.get_envs().map(|(k, v)| (k.to_owned(), v.map(ToOwned::to_owned))).collect();
    let mut timed = Command::new("/usr/bin/time");
    timed.arg("-f").arg("%e %U %S %M").arg("-o").arg(&times).arg(&program).args(&args).current_dir(dir);
    for (key, value) in envs {
        match value {
            Some(value) => timed.env(key, value),
            None => timed.env_remove(key),
        };
    }
    let output = timed.output().with_context(|| format!("running {}", program.to_string_lossy()))?;
    if !output.status.success() {
        bail!("{} failed:\n{}", program.to_string_lossy(), String::from_utf8_lossy(&output.stderr));
    }
    let text = std::fs::read_to_string(&times)?;
    let fields: Vec<f64> = text.split_whitespace().filter_map(|f| f.parse().ok()).collect();
    let [wall, user, sys, rss_kib] = fields[..] else { bail!("unexpected /usr/bin/time output: {text}") };
    Ok((
        String::from_utf8_lossy(&output.stdout).into_owned(),
        Measured { wall, cpu: user + sys, rss_mib: rss_kib / 1024.0 },
    ))
}

/// One run's line: `units` of `what` (records, rows) in it.
pub fn print_run(run: usize, peer: &str, measured: &Measured, units: u64, what: &str) {
    println!(
        "run {run} {peer:<5}  {:>8.2} s wall  {:>8.2} CPU-s  {:>7.0} MiB peak  {:>10.0} {what}/s",
        measured.wall,
        measured.cpu,
        measured.rss_mib,
        units as f64 / measured.wall
    );
}

/// The medians of inlet's runs and of the peer's (`results` by peer name, inlet first), and
/// inlet's throughput and CPU over the peer's.
pub fn print_medians(results: &[(&str, Measured)], units: u64, what: &str, note: &str) {
    let mut peers: Vec<&str> = Vec::new();
    for (peer, _) in results {
        if !peers.contains(peer) {
            peers.push(peer);
        }
    }
    let mut medians = Vec::new();
    for peer in peers {
        let of = |f: fn(&Measured) -> f64| {
            let mut values: Vec<f64> = results.iter().filter(|(p, _)| *p == peer).map(|(_, m)| f(m)).collect();
            median(&mut values)
        };
        let (wall, cpu, rss) = (of(|m| m.wall), of(|m| m.cpu), of(|m| m.rss_mib));
        println!(
            "median {peer:<5}  {wall:>8.2} s wall  {cpu:>8.2} CPU-s  {rss:>7.0} MiB peak  {:>10.0} {what}/s  {note}",
            units as f64 / wall
        );
        medians.push((peer, wall, cpu));
    }
    if let Some((_, inlet_wall, inlet_cpu)) = medians.iter().find(|(p, ..)| *p == "inlet")
        && let Some((peer, peer_wall, peer_cpu)) = medians.iter().find(|(p, ..)| *p != "inlet")
    {
        println!(
            "inlet / {peer}: {:.1}x the throughput, {:.1}x less CPU",
            peer_wall / inlet_wall,
            peer_cpu / inlet_cpu
        );
    }
}

/// Runs inlet and `peer` (not with `inlet_only`) `runs` times each, alternating which goes
/// first so neither always meets a warm or a cold machine, each in a fresh directory under
/// `dir` removed after; prints each run, then the medians of `units` of `what`.
#[allow(clippy::too_many_arguments)]
pub fn alternate(
    peer: &'static str,
    runs: usize,
    dir: &Path,
    inlet_only: bool,
    units: u64,
    what: &str,
    note: &str,
    mut run_one: impl FnMut(&str, &Path) -> anyhow::Result<Measured>,
) -> anyhow::Result<()> {
    let mut results: Vec<(&str, Measured)> = Vec::new();
    for run in 0..runs {
        let mut order = vec!["inlet", peer];
        if run % 2 == 1 {
            order.reverse();
        }
        for who in order {
            if who != "inlet" && inlet_only {
                continue;
            }
            let dir = dir.join(format!("{who}-{run}"));
            let _ = std::fs::remove_dir_all(&dir);
            std::fs::create_dir_all(&dir)?;
            let measured = run_one(who, &dir)?;
            print_run(run, who, &measured, units, what);
            results.push((who, measured));
            let _ = std::fs::remove_dir_all(&dir);
        }
    }
    print_medians(&results, units, what, note);
    Ok(())
}
