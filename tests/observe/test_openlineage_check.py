"""Self-test of openlineage_check.py; needs openlineage-python (the test venv).

    .venv/bin/python -m unittest tests/observe/test_openlineage_check.py   (from the repository root)

Runs the checker as a subprocess, as the end-to-end tests do, on a hand-written valid run (every
facet inlet emits, in the place the spec allows it) in the three input forms, then on broken
copies of it, each of which must be refused naming the event and the problem.
"""

import copy
import json
import os
import subprocess
import sys
import tempfile
import unittest

CHECKER = os.path.join(os.path.dirname(os.path.abspath(__file__)), "openlineage_check.py")
PRODUCER = "https://github.com/inlet/inlet/tree/0.1.0"
SPEC = "https://openlineage.io/spec/facets/"
RUN_ID = "0190f3a2-7c1e-7a3b-9d4e-5f6a7b8c9d0e"
PARENT_RUN_ID = "0190f3a2-0000-7000-8000-000000000001"


def facet(schema, **fields):
    return {"_producer": PRODUCER, "_schemaURL": SPEC + schema, **fields}


def event(kind, time, run_id=RUN_ID, with_outputs=True):
    run_facets = {
        "parent": facet("1-2-0/ParentRunFacet.json#/$defs/ParentRunFacet",
                        run={"runId": PARENT_RUN_ID}, job={"namespace": "inlet", "name": "serve"}),
        "processing_engine": facet("1-1-1/ProcessingEngineRunFacet.json#/$defs/ProcessingEngineRunFacet",
                                   version="0.1.0", name="inlet"),
    }
    if kind == "FAIL":
        run_facets["errorMessage"] = facet(
            "1-0-1/ErrorMessageRunFacet.json#/$defs/ErrorMessageRunFacet",
            message="source unreachable", programmingLanguage="RUST")
    body = {
        "eventType": kind,
        "eventTime": time,
        "producer": PRODUCER,
        "schemaURL": "https://openlineage.io/spec/2-0-2/OpenLineage.json#/$defs/RunEvent",
        "run": {"runId": run_id, "facets": run_facets},
        "job": {"namespace": "inlet", "name": "orders_pipeline", "facets": {
            "jobType": facet("2-0-4/JobTypeJobFacet.json#/$defs/JobTypeJobFacet",
                             processingType="BATCH", integration="INLET", jobType="PIPELINE"),
            "sql": facet("1-1-0/SQLJobFacet.json#/$defs/SQLJobFacet",
                         query="SELECT id, amount FROM orders", dialect="duckdb"),
        }},
        "inputs": [{
            "namespace": "postgres://127.0.0.1:5432", "name": "shop.public.orders",
            "facets": {"dataSource": facet("1-0-1/DatasourceDatasetFacet.json#/$defs/DatasourceDatasetFacet",
                                           name="postgres://127.0.0.1:5432",
                                           uri="postgres://127.0.0.1:5432/shop")},
            "inputFacets": {
                "dataQualityAssertions": facet(
                    "1-1-0/DataQualityAssertionsDatasetFacet.json#/$defs/DataQualityAssertionsDatasetFacet",
                    assertions=[{"assertion": "not_null", "success": True, "column": "id"},
                                {"assertion": "row_count", "success": False, "severity": "warn",
                                 "expected": ">= 1", "actual": "0"}]),
                "dataQualityMetrics": facet(
                    "1-0-3/DataQualityMetricsInputDatasetFacet.json#/$defs/DataQualityMetricsInputDatasetFacet",
                    rowCount=10, columnMetrics={"id": {"nullCount": 0, "distinctCount": 10}}),
            },
        }],
        "outputs": [],
    }
    if with_outputs:
        body["outputs"] = [{
            "namespace": "file:///tmp/lake", "name": "orders",
            "facets": {
                "schema": facet("1-2-0/SchemaDatasetFacet.json#/$defs/SchemaDatasetFacet",
                                fields=[{"name": "id", "type": "BIGINT"},
                                        {"name": "amount", "type": "DOUBLE", "description": "total"}]),
                "columnLineage": facet(
                    "1-2-0/ColumnLineageDatasetFacet.json#/$defs/ColumnLineageDatasetFacet",
                    fields={"id": {"inputFields": [
                        {"namespace": "postgres://127.0.0.1:5432", "name": "shop.public.orders",
                         "field": "id", "transformations": [{"type": "DIRECT", "subtype": "IDENTITY"}]}]}}),
                "dataSource": facet("1-0-1/DatasourceDatasetFacet.json#/$defs/DatasourceDatasetFacet",
                                    name="file:///tmp/lake", uri="file:///tmp/lake/orders"),
                "dataQualityMetrics": facet(
                    "1-0-1/DataQualityMetricsDatasetFacet.json#/$defs/DataQualityMetricsDatasetFacet",
                    rowCount=10, columnMetrics={"amount": {"nullCount": 1, "min": 0.5, "max": 99}}),
            },
            "outputFacets": {"outputStatistics": facet(
                "1-0-2/OutputStatisticsOutputDatasetFacet.json#/$defs/OutputStatisticsOutputDatasetFacet",
                rowCount=10, size=4096, fileCount=1)},
        }]
        if kind in ("COMPLETE", "FAIL"):
            body["outputs"][0]["facets"]["version"] = facet(
                "1-0-1/DatasetVersionDatasetFacet.json#/$defs/DatasetVersionDatasetFacet", datasetVersion="3")
    return body


def valid_run():
    return [event("START", "2024-01-01T00:00:00.000Z"),
            event("RUNNING", "2024-01-01T00:00:01Z"),
            event("COMPLETE", "2024-01-01T00:00:02.5+00:00")]


def run_checker(content, *args):
    with tempfile.NamedTemporaryFile("w", suffix=".json", delete=False) as handle:
        handle.write(content if isinstance(content, str) else json.dumps(content))
    try:
        return subprocess.run([sys.executable, CHECKER, handle.name, *args],
                              capture_output=True, text=True, timeout=60)
    finally:
        os.unlink(handle.name)


class ValidTest(unittest.TestCase):
    def assert_ok(self, content, *args, events=3):
        result = run_checker(content, *args)
        self.assertEqual(result.returncode, 0, result.stderr)
        summary = json.loads(result.stdout)
        self.assertEqual(summary["events"], events)
        return summary

    def test_list(self):
        summary = self.assert_ok(valid_run())
        self.assertEqual(summary["runs"], {RUN_ID: {
            "job": "inlet/orders_pipeline", "types": ["START", "RUNNING", "COMPLETE"],
            "outputs": [{"name": "file:///tmp/lake/orders", "version": "3"}]}})

    def test_ndjson(self):
        self.assert_ok("\n".join(json.dumps(e) for e in valid_run()) + "\n\n")

    def test_receiver_records(self):
        events = valid_run()
        records = [{"path": "/api/v1/lineage", "headers": {}, "body": events[0], "received_at": 1.0,
                    "answered": 500},  # refused, retried: not counted
                   {"path": "/api/v1/lineage", "headers": {}, "body": events[0], "received_at": 2.0,
                    "answered": 200},
                   {"path": "/alerts", "headers": {}, "body": {"text": "an alert"}, "received_at": 2.5,
                    "answered": 200}]
        records += [{"path": "/api/v1/lineage", "headers": {}, "body": e, "received_at": 3.0,
                     "answered": 200} for e in events[1:]]
        self.assert_ok(records, "--path", "/api/v1/lineage")
        # Without the filter the alert is an event, and not a valid one.
        result = run_checker(records)
        self.assertEqual(result.returncode, 1)
        self.assertIn("receiver record 2", result.stderr)

    def test_fail_run_and_two_runs(self):
        other = "0190f3a2-7c1e-7a3b-9d4e-000000000002"
        events = [event("START", "2024-01-01T00:00:00Z", other, with_outputs=False)] + valid_run()
        events.append(event("FAIL", "2024-01-01T03:00:00+02:00", other, with_outputs=False))
        events.append(event("OTHER", "2024-01-01T01:00:00Z"))
        summary = self.assert_ok(events, events=6)
        self.assertEqual(summary["runs"][other]["types"], ["START", "FAIL"])
        self.assertEqual(summary["runs"][other]["outputs"], [])
        self.assertEqual(summary["runs"][RUN_ID]["types"][-1], "OTHER")


class InvalidTest(unittest.TestCase):
    def assert_refused(self, events, *needles):
        result = run_checker(events)
        self.assertEqual(result.returncode, 1, result.stdout)
        self.assertEqual(result.stdout, "")
        for needle in needles:
            self.assertIn(needle, result.stderr)
        return result.stderr

    def broken(self, index, change):
        events = valid_run()
        change(events[index])
        return events

    def test_missing_producer(self):
        stderr = self.assert_refused(self.broken(0, lambda e: e.pop("producer")), "event 0", "'producer'")
        # The run's later events are not blamed for its broken START.
        self.assertEqual(stderr.count("\n"), 1, stderr)

    def test_missing_facet_producer(self):
        self.assert_refused(self.broken(2, lambda e: e["job"]["facets"]["sql"].pop("_producer")),
                            "event 2", "job.facets.sql", "_producer")

    def test_start_twice(self):
        events = valid_run()
        events.insert(1, copy.deepcopy(events[0]))
        self.assert_refused(events, "event 1", "a second START")

    def test_wrong_event_schema_url(self):
        self.assert_refused(
            self.broken(0, lambda e: e.update(schemaURL="https://openlineage.io/spec/1-0-5/OpenLineage.json#/definitions/RunEvent")),
            "event 0", "schemaURL")

    def test_wrong_facet_schema_url(self):
        def change(e):
            e["outputs"][0]["outputFacets"]["outputStatistics"]["_schemaURL"] = (
                SPEC + "1-0-0/OutputStatisticsOutputDatasetFacet.json")
        self.assert_refused(self.broken(2, change), "event 2", "outputStatistics._schemaURL",
                            "1-0-2/OutputStatisticsOutputDatasetFacet.json")

    def test_no_terminal(self):
        self.assert_refused(valid_run()[:2], "event 0", "never ended")

    def test_two_terminals(self):
        events = valid_run()
        events.append(event("FAIL", "2024-01-01T00:00:03Z"))
        self.assert_refused(events, "event 3", "already ended")

    def test_terminal_before_start(self):
        self.assert_refused(self.broken(2, lambda e: e.update(eventTime="2023-12-31T23:59:59Z")),
                            "event 2", "before the run's START")

    def test_no_start(self):
        self.assert_refused(valid_run()[1:], "event 0", "RUNNING before the run's START")

    def test_bad_event_type(self):
        self.assert_refused(self.broken(1, lambda e: e.update(eventType="PROGRESS")), "event 1", "PROGRESS")

    def test_time_without_zone(self):
        self.assert_refused(self.broken(0, lambda e: e.update(eventTime="2024-01-01T00:00:00")),
                            "event 0", "eventTime")

    def test_run_id_not_uuid(self):
        def change(e):
            e["run"]["runId"] = "run-1"
        self.assert_refused(self.broken(0, change), "event 0", "runId")

    def test_missing_required_facet_field(self):
        def change(e):
            e["job"]["facets"]["jobType"].pop("integration")
        self.assert_refused(self.broken(0, change), "event 0", "'integration'", "JobTypeJobFacet")

    def test_wrong_field_type(self):
        def change(e):
            e["outputs"][0]["outputFacets"]["outputStatistics"]["rowCount"] = "10"
        self.assert_refused(self.broken(0, change), "event 0", "rowCount", "integer")

    def test_unknown_field(self):
        def change(e):
            e["outputs"][0]["facets"]["schema"]["fields"][0]["nullable"] = True
        self.assert_refused(self.broken(0, change), "event 0", "nullable")

    def test_assertions_not_allowed_on_outputs(self):
        def change(e):
            e["outputs"][0]["facets"]["dataQualityAssertions"] = copy.deepcopy(
                e["inputs"][0]["inputFacets"]["dataQualityAssertions"])
        self.assert_refused(self.broken(0, change), "event 0", "dataQualityAssertions",
                            "inputs[].inputFacets")

    def test_parent_run_id(self):
        def change(e):
            e["run"]["facets"]["parent"]["run"]["runId"] = "nope"
        self.assert_refused(self.broken(0, change), "event 0", "parent")

    def test_job_changes_within_run(self):
        def change(e):
            e["job"]["name"] = "other"
        self.assert_refused(self.broken(2, change), "event 2", "differs")

    def test_not_json(self):
        self.assert_refused("{not json\n", "line 1")

    def test_empty(self):
        self.assert_refused([], "no events")


if __name__ == "__main__":
    unittest.main()
