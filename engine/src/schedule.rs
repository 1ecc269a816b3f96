//! Cron schedules of `inlet serve`: which sources and tables are due, and when to wake next.
//!
//! Pure: the caller passes the time in, so tests drive a [`Scheduler`] through days in
//! microseconds, and `serve` passes the wall clock. Times are UTC.
//!
//! A schedule is due at each occurrence of its cron expression. Occurrences missed while the
//! process was busy or down coalesce into one run: what is due is "the table as of the
//! latest occurrence", not every occurrence in between (like anacron, or Airflow without
//! catch-up). On start, a task whose latest occurrence is newer than its last run in the
//! run history is due at once.

use std::collections::HashMap;
use std::str::FromStr;

use chrono::{DateTime, Utc};

use crate::config::{PipelineConfig, Refresh, Trigger};

/// A parsed cron expression: five fields (minute first) or six (second first); `L`, `W`,
/// `#` and names as in Vixie cron and Quartz; `@hourly`, `@daily` and the like.
#[derive(Debug, Clone)]
pub struct Schedule {
    text: String,
    cron: croner::Cron,
}

impl Schedule {
    pub fn parse(text: &str) -> Result<Schedule, String> {
        let cron = croner::Cron::from_str(text).map_err(|e| format!("`{text}` is not a cron expression: {e}"))?;
        Ok(Schedule { text: text.to_owned(), cron })
    }

    pub fn as_str(&self) -> &str {
        &self.text
    }

    /// The first occurrence strictly after `after`.
    pub fn next_after(&self, after: DateTime<Utc>) -> Option<DateTime<Utc>> {
        self.cron.find_next_occurrence(&after, false).ok()
    }

    /// The latest occurrence at or before `at`.
    pub fn latest_until(&self, at: DateTime<Utc>) -> Option<DateTime<Utc>> {
        self.cron.find_previous_occurrence(&at, true).ok()
    }
}

/// Something `serve` runs.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Task {
    /// A source, by name.
    Source(String),
    /// A derived table, `<layer>.<name>`.
    Table(String),
    /// `[pipeline.maintenance]`: an optimize or a vacuum of every table.
    Maintenance(Action),
}

#[derive(Debug)]
struct Entry {
    task: Task,
    schedule: Schedule,
    /// When it is next due.
    next: Option<DateTime<Utc>>,
}

/// The scheduled sources and tables of a pipeline.
#[derive(Debug, Default)]
pub struct Scheduler {
    entries: Vec<Entry>,
}

impl Scheduler {
    /// The scheduled tasks of `config` as of `now`. `last_runs` holds when each last ran
    /// (from the run history); one whose latest occurrence came after that is due at once.
    pub fn new(
        config: &PipelineConfig,
        now: DateTime<Utc>,
        last_runs: &HashMap<Task, DateTime<Utc>>,
    ) -> Result<Scheduler, String> {
        let sources = config
            .sources
            .iter()
            .filter(|(_, s)| s.trigger() == Trigger::Schedule)
            .map(|(name, s)| (Task::Source(name.clone()), s.schedule()));
        let tables = config
            .tables
            .iter()
            .filter(|(_, t)| t.refresh == Refresh::Schedule)
            .map(|(name, t)| (Task::Table(name.clone()), t.schedule.as_ref()));
        let maintenance = &config.pipeline.maintenance;
        let upkeep = [
            (Action::Optimize, maintenance.optimize_schedule.as_ref()),
            (Action::Vacuum, maintenance.vacuum_schedule.as_ref()),
        ]
        .into_iter()
        .filter(|(_, schedule)| schedule.is_some())
        .map(|(action, schedule)| (Task::Maintenance(action), schedule));
        let mut entries = Vec::new();
        for (task, schedule) in sources.chain(tables).chain(upkeep) {
            let text = schedule.map(|s| s.get_ref().as_str()).unwrap_or_default();
            let schedule = Schedule::parse(text).map_err(|e| format!("{task:?}: {e}"))?;
            let missed = match (last_runs.get(&task), schedule.latest_until(now)) {
                (Some(last), Some(latest)) if latest > *last => Some(latest),
                _ => None,
            };
            let next = missed.or_else(|| schedule.next_after(now));
            entries.push(Entry { task, schedule, next });
        }
        Ok(Scheduler { entries })
    }

    /// The tasks due at `now`; each moves on to its first occurrence after `now`.
    pub fn due(&mut self, now: DateTime<Utc>) -> Vec<Task> {
        let mut due = Vec::new();
        for entry in &mut self.entries {
            if entry.next.is_some_and(|next| next <= now) {
                due.push(entry.task.clone());
                entry.next = entry.schedule.next_after(now);
            }
        }
        due
    }

    /// When the next task is due, if any is scheduled.
    pub fn next_due(&self) -> Option<DateTime<Utc>> {
        self.entries.iter().filter_map(|e| e.next).min()
    }

    /// When `task` is next due.
    pub fn next_of(&self, task: &Task) -> Option<DateTime<Utc>> {
        self.entries.iter().find(|e| &e.task == task).and_then(|e| e.next)
    }
}

/// A scheduled maintenance action.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Action {
    Optimize,
    Vacuum,
}

impl Action {
    pub fn name(self) -> &'static str {
        match self {
            Action::Optimize => "optimize",
            Action::Vacuum => "vacuum",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    fn at(text: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(text).unwrap().with_timezone(&Utc)
    }

    fn config(text: &str) -> PipelineConfig {
        crate::config::parse(text, std::path::Path::new("inlet.toml")).unwrap()
    }

    const PIPELINE: &str = r#"
[pipeline]
name = "shop"

[sources.orders]
type = "files"
path = "landing/orders"
format = "csv"
target = "bronze.orders"
trigger = "schedule"
schedule = "*/5 * * * *"

[sources.events]
type = "files"
path = "landing/events"
format = "ndjson"
target = "bronze.events"

[tables."gold.daily"]
sql = "SELECT COUNT(*) AS n FROM bronze.orders"
refresh = "schedule"
schedule = "0 2 * * *"

[tables."silver.events"]
sql = "SELECT * FROM bronze.events"
refresh = "manual"
"#;

    /// Steps a scheduler through `from..to` one `step_secs` at a time (an injected clock),
    /// returning every (time, task) it fired.
    fn drive(scheduler: &mut Scheduler, from: DateTime<Utc>, to: DateTime<Utc>, step_secs: i64) -> Vec<(String, Task)> {
        let mut fired = Vec::new();
        let mut now = from;
        while now <= to {
            for task in scheduler.due(now) {
                fired.push((now.format("%H:%M:%S").to_string(), task));
            }
            now += chrono::Duration::seconds(step_secs);
        }
        fired
    }

    #[test]
    fn a_day_of_ticks_fires_each_occurrence_once() {
        let start = at("2026-03-01T00:00:30Z");
        let mut scheduler = Scheduler::new(&config(PIPELINE), start, &HashMap::new()).unwrap();
        assert_eq!(scheduler.next_due(), Some(at("2026-03-01T00:05:00Z")));
        let fired = drive(&mut scheduler, start, at("2026-03-02T00:00:10Z"), 7);
        let orders: Vec<&String> =
            fired.iter().filter(|(_, t)| *t == Task::Source("orders".into())).map(|(when, _)| when).collect();
        // Every five minutes from 00:05 to 23:55, plus 00:00 of the next day.
        assert_eq!(orders.len(), 288);
        assert!(orders.iter().all(|when| when[3..5].parse::<u32>().unwrap() % 5 == 0), "{orders:?}");
        let daily: Vec<&String> =
            fired.iter().filter(|(_, t)| *t == Task::Table("gold.daily".into())).map(|(when, _)| when).collect();
        assert_eq!(daily, ["02:00:05"], "fired on the first tick at or after 02:00");
        // Watched sources and manual tables are never scheduled.
        assert!(
            fired.iter().all(|(_, t)| matches!(t, Task::Source(s) if s == "orders")
                || matches!(t, Task::Table(n) if n == "gold.daily"))
        );
    }

    #[test]
    fn missed_occurrences_coalesce_into_one_run() {
        let start = at("2026-03-01T00:00:00Z");
        let mut scheduler = Scheduler::new(&config(PIPELINE), start, &HashMap::new()).unwrap();
        // Busy for an hour: twelve occurrences of `*/5` passed; one run makes up for them.
        let later = at("2026-03-01T01:02:00Z");
        assert_eq!(scheduler.due(later), [Task::Source("orders".into())]);
        assert!(scheduler.due(later).is_empty());
        assert_eq!(scheduler.next_of(&Task::Source("orders".into())), Some(at("2026-03-01T01:05:00Z")));
    }

    #[test]
    fn on_start_a_task_that_missed_its_time_runs_at_once() {
        let now = at("2026-03-01T09:00:00Z");
        let mut last = HashMap::new();
        // The daily table last ran yesterday at 02:00; the process was down at 02:00 today.
        last.insert(Task::Table("gold.daily".into()), Utc.with_ymd_and_hms(2026, 2, 28, 2, 0, 3).unwrap());
        // The orders source ran at 08:58, after its 08:55 occurrence: not due until 09:00.
        last.insert(Task::Source("orders".into()), at("2026-03-01T08:58:00Z"));
        let mut scheduler = Scheduler::new(&config(PIPELINE), now, &last).unwrap();
        assert_eq!(scheduler.next_of(&Task::Table("gold.daily".into())), Some(at("2026-03-01T02:00:00Z")));
        let mut due = scheduler.due(now);
        due.sort();
        assert_eq!(due, [Task::Source("orders".into()), Task::Table("gold.daily".into())]);
        assert_eq!(scheduler.next_of(&Task::Table("gold.daily".into())), Some(at("2026-03-02T02:00:00Z")));
    }

    #[test]
    fn on_start_maintenance_that_missed_its_time_runs_at_once() {
        let text = format!(
            "{PIPELINE}\n[pipeline.maintenance]\noptimize_schedule = \"0 3 * * *\"\nvacuum_schedule = \"0 4 * * 0\"\n"
        );
        let now = at("2026-03-04T10:00:00Z");
        let mut last = HashMap::new();
        // Optimized two days ago: today's 03:00 was missed. Vacuumed after Sunday's 04:00.
        last.insert(Task::Maintenance(Action::Optimize), at("2026-03-02T03:00:40Z"));
        last.insert(Task::Maintenance(Action::Vacuum), at("2026-03-01T04:10:00Z"));
        let mut scheduler = Scheduler::new(&config(&text), now, &last).unwrap();
        let due: Vec<Task> = scheduler.due(now).into_iter().filter(|t| matches!(t, Task::Maintenance(_))).collect();
        assert_eq!(due, [Task::Maintenance(Action::Optimize)]);
        assert_eq!(scheduler.next_of(&Task::Maintenance(Action::Optimize)), Some(at("2026-03-05T03:00:00Z")));
        assert_eq!(scheduler.next_of(&Task::Maintenance(Action::Vacuum)), Some(at("2026-03-08T04:00:00Z")));
    }

    #[test]
    fn six_fields_count_seconds() {
        let every_two = Schedule::parse("*/2 * * * * *").unwrap();
        assert_eq!(every_two.next_after(at("2026-03-01T00:00:01Z")), Some(at("2026-03-01T00:00:02Z")));
        assert_eq!(every_two.next_after(at("2026-03-01T00:00:02Z")), Some(at("2026-03-01T00:00:04Z")));
        let daily = Schedule::parse("@daily").unwrap();
        assert_eq!(daily.next_after(at("2026-03-01T10:00:00Z")), Some(at("2026-03-02T00:00:00Z")));
        assert!(Schedule::parse("61 * * * *").is_err());
        assert!(Schedule::parse("every day").is_err());
    }
}
