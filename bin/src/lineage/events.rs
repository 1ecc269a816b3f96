//! OpenLineage RunEvents (spec 2-0-2) from a run's report.
//!
//! - The pipeline run: job `<pipeline>`, run id = the run's load id; the parent of the rest.
//! - Each source and table run: job `<pipeline>.<table>`, a START at its start and a
//!   COMPLETE or FAIL at its end. Inputs: the landing location, API or database (sources),
//!   the upstream tables at the versions read (tables). Output: the table at the version
//!   written, with its schema, `outputStatistics` and, for tables, `columnLineage` where
//!   the query's plan gives it directly. Job facets: `jobType`, and `sql` for tables.
//! - A run whose commit recorded expectations also has a run of job
//!   `<pipeline>.<table>.expectations` (its parent: the table's run), whose input is the
//!   table with `dataQualityAssertions` and `dataQualityMetrics`: the spec's quality
//!   facets are input facets, as dbt's OpenLineage integration emits its tests.

use std::collections::BTreeMap;

use inlet_engine::config::SourceConfig;
use inlet_engine::run::{Pipeline, RunReport, SourceReport};
use inlet_engine::transform::{TableReport, TableStatus};
use serde_json::{Value, json};

const SPEC: &str = "https://openlineage.io/spec/2-0-2/OpenLineage.json#/$defs/RunEvent";
const PARENT: &str = "https://openlineage.io/spec/facets/1-2-0/ParentRunFacet.json#/$defs/ParentRunFacet";
const ERROR: &str = "https://openlineage.io/spec/facets/1-0-1/ErrorMessageRunFacet.json#/$defs/ErrorMessageRunFacet";
const ENGINE: &str =
    "https://openlineage.io/spec/facets/1-1-1/ProcessingEngineRunFacet.json#/$defs/ProcessingEngineRunFacet";
const SQL: &str = "https://openlineage.io/spec/facets/1-1-0/SQLJobFacet.json#/$defs/SQLJobFacet";
const JOB_TYPE: &str = "https://openlineage.io/spec/facets/2-0-4/JobTypeJobFacet.json#/$defs/JobTypeJobFacet";
const SCHEMA: &str = "https://openlineage.io/spec/facets/1-2-0/SchemaDatasetFacet.json#/$defs/SchemaDatasetFacet";
pub const COLUMN_LINEAGE: &str =
    "https://openlineage.io/spec/facets/1-2-0/ColumnLineageDatasetFacet.json#/$defs/ColumnLineageDatasetFacet";
const DATA_SOURCE: &str =
    "https://openlineage.io/spec/facets/1-0-1/DatasourceDatasetFacet.json#/$defs/DatasourceDatasetFacet";
const VERSION: &str =
    "https://openlineage.io/spec/facets/1-0-1/DatasetVersionDatasetFacet.json#/$defs/DatasetVersionDatasetFacet";
const ASSERTIONS: &str = "https://openlineage.io/spec/facets/1-1-0/DataQualityAssertionsDatasetFacet.json#/$defs/DataQualityAssertionsDatasetFacet";
const METRICS: &str = "https://openlineage.io/spec/facets/1-0-3/DataQualityMetricsInputDatasetFacet.json#/$defs/DataQualityMetricsInputDatasetFacet";
const OUTPUT_STATISTICS: &str = "https://openlineage.io/spec/facets/1-0-2/OutputStatisticsOutputDatasetFacet.json#/$defs/OutputStatisticsOutputDatasetFacet";

/// Who made the events: this inlet, by version.
pub fn producer() -> String {
    format!("https://github.com/inlet-data/inlet/tree/v{}", env!("CARGO_PKG_VERSION"))
}

/// A facet: `fields` with `_producer` and `_schemaURL`.
fn facet(schema: &str, fields: Value) -> Value {
    let mut value = json!({ "_producer": producer(), "_schemaURL": schema });
    if let (Some(object), Value::Object(fields)) = (value.as_object_mut(), fields) {
        object.extend(fields);
    }
    value
}

/// A dataset's OpenLineage name: `(namespace, name)` by the spec's naming of file systems
/// and object stores (`file` + absolute path, `s3://bucket` + key).
pub fn dataset_name(url: &url::Url) -> (String, String) {
    let path = percent_encoding::percent_decode_str(url.path()).decode_utf8_lossy().trim_end_matches('/').to_owned();
    let host = url.host_str().unwrap_or("");
    match url.scheme() {
        "file" if host.is_empty() || host == "localhost" => ("file".to_owned(), path),
        "file" => (format!("file://{host}"), path),
        scheme => {
            let scheme = if matches!(scheme, "s3a" | "s3n") { "s3" } else { scheme };
            let port = url.port().map(|p| format!(":{p}")).unwrap_or_default();
            (format!("{scheme}://{host}{port}"), path.trim_start_matches('/').to_owned())
        }
    }
}

/// The `dataSource` facet of a dataset in `namespace`: the source, not the dataset (as
/// Spark's integration names it), so every dataset of one store shares one.
fn data_source(namespace: &str) -> Value {
    let uri = if namespace == "file" { "file:///".to_owned() } else { namespace.to_owned() };
    facet(DATA_SOURCE, json!({ "name": namespace, "uri": uri }))
}

/// Microseconds since the epoch as an OpenLineage `eventTime`.
fn event_time(micros: i64) -> String {
    chrono::DateTime::from_timestamp_micros(micros)
        .unwrap_or_default()
        .to_rfc3339_opts(chrono::SecondsFormat::Micros, true)
}

/// What a run's events are made of besides the report: the tables' schemas, the bytes and
/// files each version added, the query and column lineage of each table (read by the
/// emitter before it builds the events).
#[derive(Debug, Default)]
pub struct Extra {
    /// By table: `(column, type)`.
    pub schemas: BTreeMap<String, Vec<(String, String)>>,
    /// By table: bytes and files the versions of this run added.
    pub written: BTreeMap<String, (i64, usize)>,
    pub sql: BTreeMap<String, String>,
    /// By table: output column -> `(upstream table, column)`s.
    pub columns: BTreeMap<String, BTreeMap<String, Vec<(String, String)>>>,
}

/// Builds events for one pipeline's runs.
pub struct Builder<'a> {
    pub pipeline: &'a Pipeline,
    pub namespace: String,
}

/// One job run's events, in order.
pub type Events = Vec<Value>;

impl Builder<'_> {
    fn table_dataset(&self, table: &str) -> (String, String) {
        let url = inlet_engine::config::TableName::parse(table)
            .and_then(|t| inlet_engine::table::table_url(&self.pipeline.lake, &t).ok());
        match url {
            Some(url) => dataset_name(&url),
            None => ("inlet".to_owned(), table.to_owned()),
        }
    }

    /// A job; `kind` is its `jobType`: `DAG` (the pipeline), `TASK` (a source or table),
    /// `TEST` (expectations).
    fn job(&self, name: &str, kind: &str, sql: Option<&str>) -> Value {
        let mut facets = json!({
            "jobType": facet(JOB_TYPE, json!({ "processingType": "BATCH", "integration": "INLET", "jobType": kind })),
        });
        if let Some(sql) = sql {
            facets["sql"] = facet(SQL, json!({ "query": sql, "dialect": "datafusion" }));
        }
        json!({ "namespace": self.namespace, "name": name, "facets": facets })
    }

    fn event(&self, kind: &str, micros: i64, run: Value, job: Value, inputs: Vec<Value>, outputs: Vec<Value>) -> Value {
        json!({
            "eventType": kind,
            "eventTime": event_time(micros),
            "run": run,
            "job": job,
            "inputs": inputs,
            "outputs": outputs,
            "producer": producer(),
            "schemaURL": SPEC,
        })
    }

    /// The `parent` facet of a run under `parent` (run id, job name; the pipeline run when
    /// `None`), whose root is the pipeline run `load_id`.
    fn parent(&self, load_id: &str, parent: Option<(&str, &str)>) -> Value {
        let pipeline = &self.pipeline.config.pipeline.name;
        let root = json!({ "run": { "runId": load_id }, "job": { "namespace": self.namespace, "name": pipeline } });
        let (run, job) = parent.unwrap_or((load_id, pipeline));
        facet(
            PARENT,
            json!({ "run": { "runId": run }, "job": { "namespace": self.namespace, "name": job }, "root": root }),
        )
    }

    /// `{runId, facets}` of a child run of the pipeline run `load_id`.
    fn run(&self, id: &str, parent: Value, error: Option<&str>) -> Value {
        let mut facets = json!({
            "parent": parent,
            "processing_engine": facet(ENGINE, json!({ "name": "inlet", "version": env!("CARGO_PKG_VERSION") })),
        });
        if let Some(message) = error {
            facets["errorMessage"] = facet(ERROR, json!({ "message": message, "programmingLanguage": "rust" }));
        }
        json!({ "runId": id, "facets": facets })
    }

    /// The table written, as an output at `version`.
    fn output(&self, table: &str, version: Option<i64>, rows: u64, extra: &Extra) -> Value {
        let (namespace, name) = self.table_dataset(table);
        let mut facets = json!({});
        if let Some(columns) = extra.schemas.get(table) {
            let fields: Vec<Value> = columns.iter().map(|(n, t)| json!({ "name": n, "type": t })).collect();
            facets["schema"] = facet(SCHEMA, json!({ "fields": fields }));
        }
        facets["dataSource"] = data_source(&namespace);
        if let Some(version) = version {
            facets["version"] = facet(VERSION, json!({ "datasetVersion": version.to_string() }));
        }
        if let Some(lineage) = extra.columns.get(table).filter(|c| !c.is_empty()) {
            let fields: serde_json::Map<String, Value> = lineage
                .iter()
                .map(|(column, inputs)| {
                    let inputs: Vec<Value> = inputs
                        .iter()
                        .map(|(upstream, field)| {
                            let (namespace, name) = self.table_dataset(upstream);
                            // Only columns passed through unchanged are traced.
                            json!({
                                "namespace": namespace,
                                "name": name,
                                "field": field,
                                "transformations": [{ "type": "DIRECT", "subtype": "IDENTITY" }],
                            })
                        })
                        .collect();
                    (column.clone(), json!({ "inputFields": inputs }))
                })
                .collect();
            facets["columnLineage"] = facet(COLUMN_LINEAGE, json!({ "fields": fields }));
        }
        let mut statistics = json!({ "rowCount": rows });
        if let Some((bytes, files)) = extra.written.get(table) {
            statistics["size"] = json!(bytes);
            statistics["fileCount"] = json!(files);
        }
        json!({
            "namespace": namespace,
            "name": name,
            "facets": facets,
            "outputFacets": { "outputStatistics": facet(OUTPUT_STATISTICS, statistics) },
        })
    }

    /// Where a source reads from, as an input dataset (`None` for a database query, which
    /// reads no one table).
    fn source_input(&self, config: &SourceConfig) -> Option<Value> {
        let resolve = |text: &str| -> String {
            match inlet_engine::config::env_reference(text) {
                Some(name) => self.pipeline.env.get(name).unwrap_or(text).to_owned(),
                None => text.to_owned(),
            }
        };
        let (namespace, name) = match config {
            SourceConfig::Files(files) if files.on_s3() => url::Url::parse(&files.path.replacen("s3a://", "s3://", 1))
                .map(|u| dataset_name(&u))
                .unwrap_or_else(|_| ("s3".to_owned(), files.path.clone())),
            SourceConfig::Files(files) => {
                let path = inlet_engine::config::resolve_path(&self.pipeline.base_dir, &files.path);
                let path = std::path::absolute(&path).unwrap_or(path);
                ("file".to_owned(), path.display().to_string().trim_end_matches('/').to_owned())
            }
            SourceConfig::Rest(rest) => {
                let base = resolve(rest.base_url.get_ref());
                match url::Url::parse(&base).ok().filter(|_| !base.contains("${")) {
                    Some(url) => {
                        let (namespace, path) = dataset_name(&url);
                        let joined = format!("{}/{}", path.trim_end_matches('/'), rest.path.trim_start_matches('/'));
                        (namespace, joined.trim_start_matches('/').to_owned())
                    }
                    None => ("rest".to_owned(), rest.path.clone()),
                }
            }
            SourceConfig::Postgres(pg) => {
                // The URL may be a secret: only its host, port and database are named.
                let table = pg.table.as_ref()?;
                let parsed = url::Url::parse(&resolve(&pg.url)).ok();
                let host = parsed.as_ref().and_then(|u| u.host_str().map(str::to_owned)).unwrap_or_default();
                let port = parsed.as_ref().and_then(url::Url::port).unwrap_or(5432);
                let database = parsed.as_ref().map(|u| u.path().trim_start_matches('/').to_owned()).unwrap_or_default();
                (format!("postgres://{host}:{port}"), format!("{database}.{table}"))
            }
        };
        Some(json!({ "namespace": namespace, "name": name, "facets": { "dataSource": data_source(&namespace) } }))
    }

    /// The events of a source's run.
    pub fn source(&self, load_id: &str, report: &SourceReport, extra: &Extra) -> Vec<Events> {
        let pipeline = &self.pipeline.config.pipeline.name;
        let job_name = format!("{pipeline}.{}", report.table);
        let id = uuid::Uuid::now_v7().to_string();
        let error = report.error.as_ref().map(|e| e.message.as_str());
        let job = self.job(&job_name, "TASK", None);
        let inputs: Vec<Value> =
            self.pipeline.config.sources.get(&report.source).and_then(|c| self.source_input(c)).into_iter().collect();
        let ended = report.ended_micros();
        let output = self.output(&report.table, report.table_version, report.rows, extra);
        let parent = self.parent(load_id, None);
        let span = (report.started_micros, ended);
        let mut out = vec![self.start_and_end(&id, parent, job, span, error, inputs, vec![output])];
        // The expectations of each commit, and of a gate that stopped one.
        let reports: Vec<(&inlet_quality::GateReport, Option<i64>)> = report
            .commits
            .iter()
            .filter_map(|c| c.quality.as_ref().map(|q| (q, Some(c.table_version))))
            .chain(report.failed_gate.as_ref().map(|q| (q, None)))
            .collect();
        for (quality, version) in reports {
            out.push(self.expectations(
                load_id,
                &job_name,
                &id,
                &report.table,
                version,
                quality,
                report.started_micros,
                ended,
            ));
        }
        out
    }

    /// The events of a derived table's run (none for a table skipped without running).
    pub fn table(&self, load_id: &str, report: &TableReport, extra: &Extra) -> Vec<Events> {
        if report.status == TableStatus::Skipped && report.error.is_none() {
            return Vec::new();
        }
        let pipeline = &self.pipeline.config.pipeline.name;
        let job_name = format!("{pipeline}.{}", report.table);
        let id = uuid::Uuid::now_v7().to_string();
        let error = report.error.as_ref().map(|e| e.message.as_str());
        let job = self.job(&job_name, "TASK", extra.sql.get(&report.table).map(String::as_str));
        let inputs: Vec<Value> = report
            .upstream
            .iter()
            .map(|(table, version)| {
                let (namespace, name) = self.table_dataset(table);
                json!({
                    "namespace": namespace,
                    "name": name,
                    "facets": { "version": facet(VERSION, json!({ "datasetVersion": version.to_string() })) },
                })
            })
            .collect();
        let ended = report.ended_micros();
        let rows = report.rows.inserted + report.rows.updated + report.rows.deleted;
        let written = if report.status == TableStatus::Committed { report.table_version } else { None };
        let outputs = if report.status == TableStatus::Failed {
            Vec::new()
        } else {
            vec![self.output(&report.table, written.or(report.table_version), rows, extra)]
        };
        let parent = self.parent(load_id, None);
        let span = (report.started_micros, ended);
        let mut out = vec![self.start_and_end(&id, parent, job, span, error, inputs, outputs)];
        if let Some(quality) = &report.quality {
            out.push(self.expectations(
                load_id,
                &job_name,
                &id,
                &report.table,
                written,
                quality,
                report.started_micros,
                ended,
            ));
        }
        out
    }

    /// The run of a table's expectations over one commit: the table as its input, with the
    /// assertions and their counts.
    #[allow(clippy::too_many_arguments)]
    fn expectations(
        &self,
        load_id: &str,
        job_name: &str,
        parent_id: &str,
        table: &str,
        version: Option<i64>,
        quality: &inlet_quality::GateReport,
        started: i64,
        ended: i64,
    ) -> Events {
        let id = uuid::Uuid::now_v7().to_string();
        let (namespace, name) = self.table_dataset(table);
        let assertions: Vec<Value> = quality
            .expectations
            .iter()
            .map(|e| {
                let severity = if e.action == inlet_quality::Action::Fail { "error" } else { "warn" };
                json!({
                    "assertion": e.name,
                    "success": e.outcome != inlet_quality::Outcome::Failed && e.failed == 0,
                    "name": e.name,
                    "description": e.rule,
                    "severity": severity,
                    "expected": "0",
                    "actual": e.failed.to_string(),
                    "params": { "on_violation": e.action.as_str(), "rows_checked": e.rows_checked.to_string() },
                })
            })
            .collect();
        let checked = quality.expectations.iter().map(|e| e.rows_checked).max().unwrap_or(0);
        let mut facets = json!({});
        if let Some(version) = version {
            facets["version"] = facet(VERSION, json!({ "datasetVersion": version.to_string() }));
        }
        let input = json!({
            "namespace": namespace,
            "name": name,
            "facets": facets,
            "inputFacets": {
                "dataQualityAssertions": facet(ASSERTIONS, json!({ "assertions": assertions })),
                "dataQualityMetrics": facet(METRICS, json!({ "rowCount": checked, "columnMetrics": {} })),
            },
        });
        let parent = self.parent(load_id, Some((parent_id, job_name)));
        let job = self.job(&format!("{job_name}.expectations"), "TEST", None);
        let failed = quality.outcome == inlet_quality::Outcome::Failed;
        let error = failed.then(|| quality.summary());
        self.start_and_end(&id, parent, job, (started, ended), error.as_deref(), vec![input], vec![])
    }

    /// A run's START at `span.0` and its end at `span.1`: COMPLETE, or FAIL with `error`
    /// (the outputs go with the end).
    #[allow(clippy::too_many_arguments)]
    fn start_and_end(
        &self,
        id: &str,
        parent: Value,
        job: Value,
        span: (i64, i64),
        error: Option<&str>,
        inputs: Vec<Value>,
        outputs: Vec<Value>,
    ) -> Events {
        let start =
            self.event("START", span.0, self.run(id, parent.clone(), None), job.clone(), inputs.clone(), vec![]);
        let kind = if error.is_some() { "FAIL" } else { "COMPLETE" };
        vec![start, self.event(kind, span.1, self.run(id, parent, error), job, inputs, outputs)]
    }

    /// The pipeline run's own START and end (FAIL when any source or table failed).
    pub fn pipeline_run(&self, report: &RunReport) -> [Value; 2] {
        let started = chrono::DateTime::parse_from_rfc3339(&report.started_at)
            .map(|t| t.timestamp_micros())
            .unwrap_or_else(|_| chrono::Utc::now().timestamp_micros());
        let ended = started + (report.duration_secs * 1e6) as i64;
        let failed = report.sources.iter().any(|s| s.error.is_some())
            || report.tables.iter().any(|t| t.status == TableStatus::Failed);
        let job = self.job(&self.pipeline.config.pipeline.name, "DAG", None);
        let engine = facet(ENGINE, json!({ "name": "inlet", "version": env!("CARGO_PKG_VERSION") }));
        let start_run = json!({ "runId": report.load_id, "facets": { "processing_engine": engine.clone() } });
        let mut end_facets = json!({ "processing_engine": engine });
        if failed {
            end_facets["errorMessage"] = facet(
                ERROR,
                json!({ "message": "a source or table of the run failed", "programmingLanguage": "rust" }),
            );
        }
        let end_run = json!({ "runId": report.load_id, "facets": end_facets });
        [
            self.event("START", started, start_run, job.clone(), vec![], vec![]),
            self.event(if failed { "FAIL" } else { "COMPLETE" }, ended, end_run, job, vec![], vec![]),
        ]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn datasets_are_named_as_the_spec_names_stores() {
        let local = url::Url::parse("file:///lake/bronze/orders/").unwrap();
        assert_eq!(dataset_name(&local), ("file".to_owned(), "/lake/bronze/orders".to_owned()));
        let s3 = url::Url::parse("s3://bucket/lake/bronze/orders/").unwrap();
        assert_eq!(dataset_name(&s3), ("s3://bucket".to_owned(), "lake/bronze/orders".to_owned()));
        let spaced = url::Url::parse("file:///my%20lake/bronze/orders/").unwrap();
        assert_eq!(dataset_name(&spaced).1, "/my lake/bronze/orders");
        let s3a = url::Url::parse("s3a://bucket/lake/").unwrap();
        assert_eq!(dataset_name(&s3a).0, "s3://bucket");
        assert_eq!(data_source("file")["uri"], "file:///");
    }

    #[test]
    fn facets_carry_producer_and_schema() {
        let f = facet(SQL, json!({ "query": "SELECT 1" }));
        assert_eq!(f["_schemaURL"], SQL);
        assert_eq!(f["query"], "SELECT 1");
        assert!(f["_producer"].as_str().unwrap().starts_with("https://"));
        assert!(event_time(0).ends_with('Z'));
    }
}
