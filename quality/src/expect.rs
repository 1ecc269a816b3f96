//! Expectations: what a table promises about the rows it commits, and what a broken promise
//! does to them.
//!
//! An [`Expectation`] is declared in the pipeline file. Row checks (a SQL `rule`, `not_null`,
//! `accepted_values`, `range`, `regex`) become one SQL predicate each ([`Expectation::pass_sql`]),
//! which the engine evaluates per batch; set checks (`unique`, `relationships`, `row_count`,
//! `freshness`) need state across batches, which the engine keeps. Either way the outcome is a
//! violation mask per expectation, and [`Gate`] turns masks into what is kept, dropped or
//! quarantined, and at the end into a [`GateReport`] that travels in the commit.

use std::fmt::Write as _;

use arrow::array::{Array, BooleanArray};
use arrow::compute::kernels::boolean::{and_not, not, or};
use arrow::compute::prep_null_mask_filter;
use serde::{Deserialize, Serialize};

/// Most sample keys kept per expectation.
pub const MAX_SAMPLES: usize = 10;

/// What a violation does.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Action {
    /// Rows kept, violations counted.
    Warn,
    /// Violating rows left out of the commit, counted.
    Drop,
    /// Violating rows written to the table's quarantine instead.
    Quarantine,
    /// Any violation (beyond `max_violation_ratio`) stops the commit.
    #[default]
    Fail,
}

impl Action {
    pub fn as_str(self) -> &'static str {
        match self {
            Action::Warn => "warn",
            Action::Drop => "drop",
            Action::Quarantine => "quarantine",
            Action::Fail => "fail",
        }
    }
}

/// Built-in checks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Check {
    /// No two rows share `columns` (rows with a NULL in them are not compared).
    Unique,
    /// None of `columns` is NULL.
    NotNull,
    /// `column` is one of `values` (or NULL).
    AcceptedValues,
    /// `column` is within `min`..=`max` (or NULL).
    Range,
    /// `column` matches `pattern` (or is NULL).
    Regex,
    /// The rows committed number `min`..=`max`.
    RowCount,
    /// `column` is NULL or found in `to` (`<layer>.<table>.<column>`).
    Relationships,
    /// The latest `column` is at most `max_age_secs` old.
    Freshness,
}

impl Check {
    pub fn as_str(self) -> &'static str {
        match self {
            Check::Unique => "unique",
            Check::NotNull => "not_null",
            Check::AcceptedValues => "accepted_values",
            Check::Range => "range",
            Check::Regex => "regex",
            Check::RowCount => "row_count",
            Check::Relationships => "relationships",
            Check::Freshness => "freshness",
        }
    }
}

/// A literal in the pipeline file: `values`, `min`, `max`.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(untagged)]
pub enum Literal {
    Bool(bool),
    Int(i64),
    Float(f64),
    Text(String),
}

impl Literal {
    /// As a SQL literal.
    pub fn sql(&self) -> String {
        match self {
            Literal::Bool(b) => b.to_string(),
            Literal::Int(i) => i.to_string(),
            Literal::Float(f) => format!("{f:?}"),
            Literal::Text(s) => format!("'{}'", s.replace('\'', "''")),
        }
    }

    fn as_i64(&self) -> Option<i64> {
        match self {
            Literal::Int(i) => Some(*i),
            _ => None,
        }
    }
}

/// `[[sources.<name>.expect]]` or `[[tables."<layer>.<name>".expect]]`.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Expectation {
    /// Names the expectation in reports, the log and the quarantine's `_error_rule`.
    pub name: String,
    /// A boolean SQL expression over the row; NULL counts as a violation.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rule: Option<String>,
    /// A built-in check instead of `rule`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub check: Option<Check>,
    /// `unique`, `not_null`: the columns.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub columns: Vec<String>,
    /// `accepted_values`, `range`, `regex`, `relationships`, `freshness`: the column.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub column: Option<String>,
    /// `accepted_values`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub values: Vec<Literal>,
    /// `range`, `row_count`: inclusive bounds; either may be left out.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub min: Option<Literal>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max: Option<Literal>,
    /// `regex`: a regular expression (DataFusion's `regexp_like`, unanchored).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pattern: Option<String>,
    /// `relationships`: `<layer>.<table>.<column>`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub to: Option<String>,
    /// `freshness`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_age_secs: Option<u64>,
    #[serde(default)]
    pub on_violation: Action,
    /// Share of the rows checked above which the gate fails whatever the action; with
    /// `on_violation = "fail"`, the share tolerated (default 0).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_violation_ratio: Option<f64>,
}

/// How the engine evaluates an expectation.
#[derive(Debug, Clone, PartialEq)]
pub enum Kind {
    /// A SQL predicate per row, true when the row passes.
    Row {
        pass_sql: String,
    },
    Unique {
        columns: Vec<String>,
    },
    Relationships {
        column: String,
        table: String,
        to_column: String,
    },
    RowCount {
        min: Option<i64>,
        max: Option<i64>,
    },
    Freshness {
        column: String,
        max_age_secs: u64,
    },
}

impl Expectation {
    /// An expectation with every parameter at its default (`on_violation = "fail"`, no rule
    /// or check yet): set the fields that matter.
    pub fn named(name: &str) -> Expectation {
        Expectation {
            name: name.to_owned(),
            rule: None,
            check: None,
            columns: Vec::new(),
            column: None,
            values: Vec::new(),
            min: None,
            max: None,
            pattern: None,
            to: None,
            max_age_secs: None,
            on_violation: Action::default(),
            max_violation_ratio: None,
        }
    }

    /// How it is evaluated; `Err` names what is wrong with its parameters.
    pub fn kind(&self) -> Result<Kind, String> {
        let column = || self.column.clone().ok_or_else(|| "needs `column`".to_owned());
        let kind = match (&self.rule, self.check) {
            (Some(_), Some(_)) => return Err("give `rule` or `check`, not both".to_owned()),
            (None, None) => return Err("needs `rule` (a SQL expression) or `check`".to_owned()),
            (Some(rule), None) => {
                if rule.trim().is_empty() {
                    return Err("`rule` must not be empty".to_owned());
                }
                Kind::Row { pass_sql: format!("({rule}) IS TRUE") }
            }
            (None, Some(Check::Unique)) => {
                if self.columns.is_empty() {
                    return Err("`unique` needs `columns`".to_owned());
                }
                Kind::Unique { columns: self.columns.clone() }
            }
            (None, Some(Check::NotNull)) => {
                let columns: Vec<String> = match (&self.column, self.columns.is_empty()) {
                    (Some(c), true) => vec![c.clone()],
                    (None, false) => self.columns.clone(),
                    _ => return Err("`not_null` needs `columns` (or one `column`)".to_owned()),
                };
                let pass: Vec<String> = columns.iter().map(|c| format!("{} IS NOT NULL", quote(c))).collect();
                Kind::Row { pass_sql: pass.join(" AND ") }
            }
            (None, Some(Check::AcceptedValues)) => {
                let column = column()?;
                if self.values.is_empty() {
                    return Err("`accepted_values` needs `values`".to_owned());
                }
                let values: Vec<String> = self.values.iter().map(Literal::sql).collect();
                let c = quote(&column);
                Kind::Row { pass_sql: format!("{c} IS NULL OR {c} IN ({})", values.join(", ")) }
            }
            (None, Some(Check::Range)) => {
                let c = quote(&column()?);
                let mut bounds = Vec::new();
                if let Some(min) = &self.min {
                    bounds.push(format!("{c} >= {}", min.sql()));
                }
                if let Some(max) = &self.max {
                    bounds.push(format!("{c} <= {}", max.sql()));
                }
                if bounds.is_empty() {
                    return Err("`range` needs `min`, `max` or both".to_owned());
                }
                Kind::Row { pass_sql: format!("{c} IS NULL OR ({})", bounds.join(" AND ")) }
            }
            (None, Some(Check::Regex)) => {
                let c = quote(&column()?);
                let pattern = self.pattern.as_ref().ok_or_else(|| "`regex` needs `pattern`".to_owned())?;
                let pattern = Literal::Text(pattern.clone()).sql();
                Kind::Row { pass_sql: format!("{c} IS NULL OR regexp_like(CAST({c} AS VARCHAR), {pattern})") }
            }
            (None, Some(Check::RowCount)) => {
                let bound = |value: &Option<Literal>, name: &str| match value {
                    None => Ok(None),
                    Some(v) => v.as_i64().map(Some).ok_or_else(|| format!("`row_count` `{name}` must be an integer")),
                };
                let (min, max) = (bound(&self.min, "min")?, bound(&self.max, "max")?);
                if min.is_none() && max.is_none() {
                    return Err("`row_count` needs `min`, `max` or both".to_owned());
                }
                Kind::RowCount { min, max }
            }
            (None, Some(Check::Relationships)) => {
                let to = self.to.as_ref().ok_or_else(|| "`relationships` needs `to`".to_owned())?;
                let (table, to_column) = to
                    .rsplit_once('.')
                    .filter(|(table, column)| table.contains('.') && !column.is_empty())
                    .ok_or_else(|| format!("`to` = `{to}` is not `<layer>.<table>.<column>`"))?;
                Kind::Relationships { column: column()?, table: table.to_owned(), to_column: to_column.to_owned() }
            }
            (None, Some(Check::Freshness)) => {
                let max_age_secs = self.max_age_secs.ok_or_else(|| "`freshness` needs `max_age_secs`".to_owned())?;
                Kind::Freshness { column: column()?, max_age_secs }
            }
        };
        if let Some(ratio) = self.max_violation_ratio
            && !(0.0..=1.0).contains(&ratio)
        {
            return Err(format!("`max_violation_ratio` must be between 0 and 1, not {ratio}"));
        }
        if matches!(kind, Kind::RowCount { .. } | Kind::Freshness { .. })
            && matches!(self.on_violation, Action::Drop | Action::Quarantine)
        {
            return Err(format!(
                "`{}` checks the whole commit, not rows: `on_violation` must be `warn` or `fail`",
                self.check.map(Check::as_str).unwrap_or_default()
            ));
        }
        Ok(kind)
    }

    /// What it checks, in one line (the `rule` in reports and the log).
    pub fn describe(&self) -> String {
        if let Some(rule) = &self.rule {
            return rule.clone();
        }
        let Some(check) = self.check else {
            return String::new();
        };
        let mut text = check.as_str().to_owned();
        let mut params = Vec::new();
        if !self.columns.is_empty() {
            params.push(self.columns.join(", "));
        }
        if let Some(column) = &self.column {
            params.push(column.clone());
        }
        if !self.values.is_empty() {
            params.push(format!("in [{}]", self.values.iter().map(Literal::sql).collect::<Vec<_>>().join(", ")));
        }
        if let Some(min) = &self.min {
            params.push(format!(">= {}", min.sql()));
        }
        if let Some(max) = &self.max {
            params.push(format!("<= {}", max.sql()));
        }
        if let Some(pattern) = &self.pattern {
            params.push(format!("~ {pattern}"));
        }
        if let Some(to) = &self.to {
            params.push(format!("-> {to}"));
        }
        if let Some(age) = self.max_age_secs {
            params.push(format!("age <= {age}s"));
        }
        if !params.is_empty() {
            let _ = write!(text, "({})", params.join(" "));
        }
        text
    }
}

/// Problems with a list of expectations, one message each (`key` prefixes them).
pub fn validate(expectations: &[Expectation], key: &str) -> Vec<String> {
    let mut problems = Vec::new();
    let mut names = std::collections::HashSet::new();
    for (i, expectation) in expectations.iter().enumerate() {
        let at = format!("{key}[{i}] (`{}`)", expectation.name);
        if expectation.name.trim().is_empty() {
            problems.push(format!("{key}[{i}]: `name` must not be empty"));
        } else if !names.insert(expectation.name.as_str()) {
            problems.push(format!("{at}: another expectation has this name"));
        }
        if let Err(message) = expectation.kind() {
            problems.push(format!("{at}: {message}"));
        }
    }
    problems
}

fn quote(ident: &str) -> String {
    format!("\"{}\"", ident.replace('"', "\"\""))
}

/// How a gate ended, from best to worst (`max` is the worst of several).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    Passed,
    /// Violations that kept, dropped or quarantined rows, within every limit.
    Warned,
    /// The commit must not be made.
    Failed,
}

/// One expectation's result, as the commit records it.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
pub struct ExpectationReport {
    pub name: String,
    pub rule: String,
    pub action: Action,
    pub rows_checked: u64,
    pub passed: u64,
    pub failed: u64,
    pub dropped: u64,
    pub quarantined: u64,
    pub sample_keys: Vec<String>,
    pub outcome: Outcome,
    /// Why a whole-commit check failed, or a ratio that was exceeded.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub detail: Option<String>,
}

/// Every expectation of one commit.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
pub struct GateReport {
    pub outcome: Outcome,
    pub expectations: Vec<ExpectationReport>,
}

impl GateReport {
    /// One line: `quality passed 3/3` or `quality failed: order_id_unique 2 failed (keys ...)`.
    pub fn summary(&self) -> String {
        let total = self.expectations.len();
        let passed = self.expectations.iter().filter(|e| e.outcome == Outcome::Passed).count();
        let outcome = match self.outcome {
            Outcome::Passed => "passed",
            Outcome::Warned => "warned",
            Outcome::Failed => "failed",
        };
        let mut line = format!("quality {outcome} {passed}/{total}");
        let notes: Vec<String> = self
            .expectations
            .iter()
            .filter(|e| e.outcome != Outcome::Passed)
            .map(|e| {
                let mut note = format!("{} {} of {} failed", e.name, e.failed, e.rows_checked);
                if e.dropped > 0 {
                    let _ = write!(note, ", {} dropped", e.dropped);
                }
                if e.quarantined > 0 {
                    let _ = write!(note, ", {} quarantined", e.quarantined);
                }
                if let Some(detail) = &e.detail {
                    let _ = write!(note, " ({detail})");
                }
                if e.outcome == Outcome::Failed && !e.sample_keys.is_empty() {
                    let _ = write!(note, "; e.g. {}", e.sample_keys.join(", "));
                }
                note
            })
            .collect();
        if !notes.is_empty() {
            let _ = write!(line, ": {}", notes.join("; "));
        }
        line
    }
}

#[derive(Debug, Clone, Default)]
struct Tally {
    checked: u64,
    failed: u64,
    dropped: u64,
    quarantined: u64,
    samples: Vec<String>,
    /// A whole-commit check's verdict, set at the end.
    verdict: Option<Result<(), String>>,
}

/// What to do with the rows of one batch.
#[derive(Debug, Clone, PartialEq)]
pub struct Decision {
    /// Rows that go on to the commit.
    pub keep: BooleanArray,
    /// Rows that go to the quarantine, in row order, with the names of the rules each broke
    /// (`, `-joined).
    pub quarantine: Vec<(usize, String)>,
}

/// The mask with NULL as `false`.
fn strict(mask: &BooleanArray) -> BooleanArray {
    if mask.null_count() == 0 { mask.clone() } else { prep_null_mask_filter(mask) }
}

/// Counts the violations of a list of expectations over the batches of one commit.
#[derive(Debug, Clone)]
pub struct Gate {
    expectations: Vec<Expectation>,
    tallies: Vec<Tally>,
    /// Rows seen and kept over every batch.
    rows: u64,
    kept: u64,
}

impl Gate {
    pub fn new(expectations: Vec<Expectation>) -> Gate {
        let tallies = vec![Tally::default(); expectations.len()];
        Gate { expectations, tallies, rows: 0, kept: 0 }
    }

    pub fn expectations(&self) -> &[Expectation] {
        &self.expectations
    }

    /// Takes one batch's violation masks (`true` = the row breaks the rule, NULL = it does
    /// not; `None` for the whole-commit checks, which see no rows) and says what happens to
    /// each row. A row that breaks a quarantine rule is quarantined, else one that breaks a
    /// drop rule is dropped. `key` describes a row for the samples. Bitwise over the masks:
    /// the cost per row does not grow with the samples or the rules' names.
    pub fn observe(
        &mut self,
        rows: usize,
        violations: &[Option<BooleanArray>],
        key: &dyn Fn(usize) -> String,
    ) -> Decision {
        let none = BooleanArray::from(vec![false; rows]);
        let masks: Vec<Option<BooleanArray>> = violations
            .iter()
            .map(|mask| mask.as_ref().map(|m| if m.len() == rows { strict(m) } else { none.clone() }))
            .collect();
        let union = |action: Action| {
            let mut acc: Option<BooleanArray> = None;
            for (expectation, mask) in self.expectations.iter().zip(&masks) {
                if let (true, Some(mask)) = (expectation.on_violation == action, mask)
                    && mask.true_count() > 0
                {
                    acc = Some(match acc {
                        None => mask.clone(),
                        Some(acc) => or(&acc, mask).unwrap_or(acc),
                    });
                }
            }
            acc
        };
        let quarantined = union(Action::Quarantine);
        let dropped = union(Action::Drop).map(|d| match &quarantined {
            Some(q) => and_not(&d, q).unwrap_or(d),
            None => d,
        });
        let keep = match (&quarantined, &dropped) {
            (None, None) => BooleanArray::from(vec![true; rows]),
            (Some(q), None) => not(q).unwrap_or_else(|_| none.clone()),
            (None, Some(d)) => not(d).unwrap_or_else(|_| none.clone()),
            (Some(q), Some(d)) => or(q, d).and_then(|r| not(&r)).unwrap_or_else(|_| none.clone()),
        };
        let mut quarantine: Vec<(usize, String)> = match &quarantined {
            Some(q) => q.values().set_indices().map(|row| (row, String::new())).collect(),
            None => Vec::new(),
        };
        for (i, (expectation, mask)) in self.expectations.iter().zip(&masks).enumerate() {
            let Some(mask) = mask else { continue };
            let tally = &mut self.tallies[i];
            tally.checked += rows as u64;
            let failed = mask.true_count();
            if failed == 0 {
                continue;
            }
            tally.failed += failed as u64;
            let room = MAX_SAMPLES.saturating_sub(tally.samples.len());
            tally.samples.extend(mask.values().set_indices().take(room).map(key));
            match expectation.on_violation {
                Action::Quarantine => {
                    tally.quarantined += failed as u64;
                    // Both lists are in row order: one merge pass names the rules.
                    let mut rows = mask.values().set_indices().peekable();
                    for (row, names) in &mut quarantine {
                        while rows.next_if(|r| r < row).is_some() {}
                        if rows.next_if_eq(row).is_some() {
                            if !names.is_empty() {
                                names.push_str(", ");
                            }
                            names.push_str(&expectation.name);
                        }
                    }
                }
                Action::Drop => {
                    let removed = match &quarantined {
                        Some(q) => and_not(mask, q).map(|m| m.true_count()).unwrap_or(0),
                        None => failed,
                    };
                    tally.dropped += removed as u64;
                }
                Action::Warn | Action::Fail => {}
            }
        }
        self.rows += rows as u64;
        self.kept += keep.true_count() as u64;
        Decision { keep, quarantine }
    }

    /// Sets the verdict of a whole-commit check (`row_count`, `freshness`).
    pub fn conclude(&mut self, index: usize, verdict: Result<(), String>) {
        if let Some(tally) = self.tallies.get_mut(index) {
            tally.verdict = Some(verdict);
        }
    }

    /// Rows kept so far: what `row_count` compares.
    pub fn rows_kept(&self) -> u64 {
        self.kept
    }

    /// The outcome of every expectation, and of the gate.
    pub fn finish(&self) -> GateReport {
        let rows_in = self.rows;
        let mut expectations = Vec::with_capacity(self.expectations.len());
        for (expectation, tally) in self.expectations.iter().zip(&self.tallies) {
            let (checked, failed, detail) = match &tally.verdict {
                Some(Ok(())) => (1, 0, None),
                Some(Err(why)) => (1, 1, Some(why.clone())),
                None => (tally.checked.max(rows_in), tally.failed, None),
            };
            let ratio = if checked == 0 { 0.0 } else { failed as f64 / checked as f64 };
            let over_ratio = expectation.max_violation_ratio.is_some_and(|limit| ratio > limit);
            let outcome = if failed == 0 {
                Outcome::Passed
            } else if over_ratio
                || (expectation.on_violation == Action::Fail && expectation.max_violation_ratio.is_none())
            {
                Outcome::Failed
            } else {
                Outcome::Warned
            };
            let detail = match (detail, over_ratio) {
                (Some(detail), _) => Some(detail),
                (None, true) => Some(format!(
                    "{:.2}% of rows, above max_violation_ratio {}",
                    ratio * 100.0,
                    expectation.max_violation_ratio.unwrap_or_default()
                )),
                (None, false) => None,
            };
            expectations.push(ExpectationReport {
                name: expectation.name.clone(),
                rule: expectation.describe(),
                action: expectation.on_violation,
                rows_checked: checked,
                passed: checked - failed.min(checked),
                failed,
                dropped: tally.dropped,
                quarantined: tally.quarantined,
                sample_keys: tally.samples.clone(),
                outcome,
                detail,
            });
        }
        let outcome = if expectations.iter().any(|e| e.outcome == Outcome::Failed) {
            Outcome::Failed
        } else if expectations.iter().any(|e| e.outcome == Outcome::Warned) {
            Outcome::Warned
        } else {
            Outcome::Passed
        };
        GateReport { outcome, expectations }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn expectation(name: &str, action: Action) -> Expectation {
        Expectation { rule: Some("x > 0".into()), on_violation: action, ..Expectation::named(name) }
    }

    fn mask(bits: &[bool]) -> Option<BooleanArray> {
        Some(BooleanArray::from(bits.to_vec()))
    }

    #[test]
    fn quarantine_wins_over_drop_and_names_every_rule() {
        let mut gate = Gate::new(vec![
            expectation("w", Action::Warn),
            expectation("d", Action::Drop),
            expectation("q1", Action::Quarantine),
            expectation("q2", Action::Quarantine),
        ]);
        let decision = gate.observe(
            4,
            &[
                mask(&[true, false, false, false]),
                mask(&[false, true, true, false]),
                mask(&[false, false, true, true]),
                mask(&[false, false, false, true]),
            ],
            &|row| format!("row {row}"),
        );
        assert_eq!(decision.keep, BooleanArray::from(vec![true, false, false, false]));
        assert_eq!(decision.quarantine, vec![(2, "q1".into()), (3, "q1, q2".into())]);
        let report = gate.finish();
        assert_eq!(report.outcome, Outcome::Warned);
        let by_name = |n: &str| report.expectations.iter().find(|e| e.name == n).unwrap().clone();
        assert_eq!((by_name("w").failed, by_name("w").dropped), (1, 0));
        assert_eq!((by_name("d").failed, by_name("d").dropped), (2, 1), "row 2 went to quarantine, not dropped");
        assert_eq!((by_name("q1").failed, by_name("q1").quarantined), (2, 2));
        assert_eq!(by_name("q2").quarantined, 1);
        assert_eq!(by_name("w").sample_keys, vec!["row 0".to_owned()]);
        assert_eq!(by_name("w").passed, 3);
    }

    #[test]
    fn fail_fails_at_one_violation_and_ratio_limits_every_action() {
        let mut fail = Gate::new(vec![expectation("f", Action::Fail)]);
        fail.observe(3, &[mask(&[false, true, false])], &|r| r.to_string());
        let report = fail.finish();
        assert_eq!(report.outcome, Outcome::Failed);
        assert!(report.summary().contains("f 1 of 3 failed; e.g. 1"), "{}", report.summary());

        let mut tolerant =
            Gate::new(vec![Expectation { max_violation_ratio: Some(0.5), ..expectation("f", Action::Fail) }]);
        tolerant.observe(3, &[mask(&[false, true, false])], &|r| r.to_string());
        assert_eq!(tolerant.finish().outcome, Outcome::Warned);

        let mut strict =
            Gate::new(vec![Expectation { max_violation_ratio: Some(0.1), ..expectation("d", Action::Drop) }]);
        strict.observe(3, &[mask(&[false, true, false])], &|r| r.to_string());
        let report = strict.finish();
        assert_eq!(report.outcome, Outcome::Failed);
        assert!(report.expectations[0].detail.as_deref().unwrap().contains("33.33%"));
    }

    #[test]
    fn samples_stop_at_ten_and_whole_commit_checks_have_verdicts() {
        let mut gate = Gate::new(vec![expectation("w", Action::Warn), expectation("rows", Action::Fail)]);
        gate.observe(20, &[mask(&[true; 20]), None], &|r| r.to_string());
        gate.conclude(1, Err("20 rows, fewer than 100".into()));
        let report = gate.finish();
        assert_eq!(report.expectations[0].sample_keys.len(), MAX_SAMPLES);
        assert_eq!(report.expectations[1].outcome, Outcome::Failed);
        assert_eq!(report.expectations[1].detail.as_deref(), Some("20 rows, fewer than 100"));
        assert_eq!(report.outcome, Outcome::Failed);
    }

    #[test]
    fn checks_become_sql_predicates_and_bad_parameters_are_named() {
        let parse = |toml_like: Expectation| toml_like.kind();
        let base = expectation("e", Action::Warn);
        let accepted = Expectation {
            rule: None,
            check: Some(Check::AcceptedValues),
            column: Some("status".into()),
            values: vec![Literal::Text("new".into()), Literal::Text("it's".into())],
            ..base.clone()
        };
        assert_eq!(
            parse(accepted).unwrap(),
            Kind::Row { pass_sql: r#""status" IS NULL OR "status" IN ('new', 'it''s')"#.into() }
        );
        let range = Expectation {
            rule: None,
            check: Some(Check::Range),
            column: Some("amount".into()),
            min: Some(Literal::Int(0)),
            ..base.clone()
        };
        assert_eq!(parse(range).unwrap(), Kind::Row { pass_sql: r#""amount" IS NULL OR ("amount" >= 0)"#.into() });
        let both = Expectation { check: Some(Check::Unique), ..base.clone() };
        assert!(parse(both).unwrap_err().contains("not both"));
        let rows = Expectation {
            rule: None,
            check: Some(Check::RowCount),
            min: Some(Literal::Int(1)),
            on_violation: Action::Drop,
            ..base.clone()
        };
        assert!(parse(rows).unwrap_err().contains("`warn` or `fail`"));
        let relation = Expectation {
            rule: None,
            check: Some(Check::Relationships),
            column: Some("c".into()),
            to: Some("x.y".into()),
            ..base.clone()
        };
        assert!(parse(relation).unwrap_err().contains("<layer>.<table>.<column>"));
        let problems = validate(&[base.clone(), base], "tables.\"silver.t\".expect");
        assert_eq!(problems, vec!["tables.\"silver.t\".expect[1] (`e`): another expectation has this name".to_owned()]);
    }

    proptest::proptest! {
        /// The bitwise gate agrees with the rule read row by row: quarantine beats drop,
        /// every quarantine rule a row broke is named, counts add up.
        #[test]
        fn observe_matches_a_row_by_row_reading(
            rules in proptest::collection::vec(0u8..4, 1..5),
            rows in proptest::collection::vec(proptest::collection::vec(proptest::option::of(proptest::bool::ANY), 5), 0..40),
        ) {
            let actions = [Action::Warn, Action::Drop, Action::Quarantine, Action::Fail];
            let expectations: Vec<Expectation> = rules
                .iter()
                .enumerate()
                .map(|(i, a)| expectation(&format!("r{i}"), actions[*a as usize]))
                .collect();
            let masks: Vec<Option<BooleanArray>> = (0..rules.len())
                .map(|i| Some(rows.iter().map(|r| r[i]).collect::<BooleanArray>()))
                .collect();
            let mut gate = Gate::new(expectations.clone());
            let decision = gate.observe(rows.len(), &masks, &|r| r.to_string());
            let broke = |row: usize, i: usize| rows[row][i] == Some(true);
            let mut kept = 0;
            for row in 0..rows.len() {
                let names: Vec<&str> = (0..rules.len())
                    .filter(|&i| broke(row, i) && expectations[i].on_violation == Action::Quarantine)
                    .map(|i| expectations[i].name.as_str())
                    .collect();
                let dropped = names.is_empty()
                    && (0..rules.len()).any(|i| broke(row, i) && expectations[i].on_violation == Action::Drop);
                let quarantined = decision.quarantine.iter().find(|(r, _)| *r == row).map(|(_, n)| n.clone());
                proptest::prop_assert_eq!(quarantined, (!names.is_empty()).then(|| names.join(", ")));
                proptest::prop_assert_eq!(decision.keep.value(row), names.is_empty() && !dropped);
                kept += usize::from(names.is_empty() && !dropped);
            }
            proptest::prop_assert_eq!(gate.rows_kept(), kept as u64);
            let report = gate.finish();
            for (i, e) in report.expectations.iter().enumerate() {
                let failed = (0..rows.len()).filter(|&r| broke(r, i)).count() as u64;
                proptest::prop_assert_eq!(e.failed, failed);
                proptest::prop_assert_eq!(e.sample_keys.len(), (failed as usize).min(MAX_SAMPLES));
            }
        }
    }
}
