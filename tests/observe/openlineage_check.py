#!/usr/bin/env python3
"""Checks OpenLineage run events against the official client's event model (openlineage-python).

    $INLET_PYTHON tests/observe/openlineage_check.py EVENTS_JSON_FILE [--path PREFIX]

EVENTS_JSON_FILE holds one of
  - a JSON list of events (or a single event object);
  - NDJSON, one event per line (blank lines skipped);
  - the `GET /received` output of tests/servers/receiver.py: a list of records whose "body" is
    the event. Only records answered 2xx count (a sender retries the ones refused, so those
    would be duplicates); --path keeps only records POSTed to a path starting with PREFIX
    (e.g. alerts and lineage sent to one receiver).

openlineage-python ships no JSON schema of the spec (and does not depend on jsonschema), so the
check structures every event into the client's attrs classes (openlineage.client.generated),
field by field, strictly:
  - every field without a default in the class is required; a field the class does not have
    is an error (so a misspelt optional field is caught); JSON types must match the
    annotations (str, int, float, bool, lists, maps, enums, nested classes); null is refused
    (the spec's types do not allow it: leave the field out);
  - the classes' own validators run (runId a UUID, eventTime an ISO date-time with a time, ...);
    eventTime must also carry a zone offset (RFC 3339, the spec's "date-time");
  - the event: a RunEvent, producer an absolute URI, schemaURL exactly the client's
    RunEvent schema URL, eventType one of START RUNNING COMPLETE ABORT FAIL OTHER;
  - facets whose name is known (FACETS below) are structured into their facet class, with
    `_producer` an absolute URI and `_schemaURL` exactly the URL of that class; a known facet
    in a place the spec does not allow it (e.g. dataQualityAssertions in an output's facets,
    outputStatistics on an input) is an error; other facets need only `_producer` and
    `_schemaURL`, both absolute URIs;
  - per runId, in file order: the first event is the only START; exactly one terminal event
    (COMPLETE, FAIL or ABORT, as the spec's EventType says) follows it; RUNNING only between
    them, OTHER anywhere after START; every event names the START's job; no event of the run
    is timed before its START.

On success prints a JSON summary on stdout:
    {"events": N, "runs": {runId: {"job": "ns/name", "types": [eventType, ...],
                                   "outputs": [{"name": "ns/name", "version": str or null}]}}}
("version": the last `version` dataset facet seen for that output in the run). On any failure
exits 1, printing one line per problem on stderr, each naming the event (its index in the
list, its line in NDJSON, its record index in receiver output).
"""

import argparse
import enum
import json
import re
import sys
import types
import typing
from datetime import datetime

try:
    import attr
    from dateutil import parser as date_parser
    from openlineage.client import event_v2
    from openlineage.client.generated import (
        base,
        column_lineage_dataset,
        data_quality_assertions_dataset,
        data_quality_metrics_dataset,
        data_quality_metrics_input_dataset,
        dataset_version_dataset,
        datasource_dataset,
        documentation_dataset,
        documentation_job,
        error_message_run,
        input_statistics_input_dataset,
        job_type_job,
        nominal_time_run,
        output_statistics_output_dataset,
        parent_run,
        processing_engine_run,
        schema_dataset,
        sql_job,
    )
except ImportError as error:  # pragma: no cover - the environment is broken
    sys.exit(f"openlineage_check: the OpenLineage Python client is missing ({error}); "
             "run it with the test venv's python ($INLET_PYTHON), which scripts/test.sh sets up")

RUN_EVENT = event_v2.RunEvent
EVENT_TYPES = {member.value for member in base.EventType}
TERMINAL = {"COMPLETE", "FAIL", "ABORT"}

# Where each facet name may appear: the map of the event that holds it ("run": run.facets,
# "job": job.facets, "dataset": inputs[]/outputs[].facets, "input": inputs[].inputFacets,
# "output": outputs[].outputFacets) -> name -> client class.
FACETS = {
    "run": {
        "parent": parent_run.ParentRunFacet,
        "errorMessage": error_message_run.ErrorMessageRunFacet,
        "processing_engine": processing_engine_run.ProcessingEngineRunFacet,
        "nominalTime": nominal_time_run.NominalTimeRunFacet,
    },
    "job": {
        "sql": sql_job.SQLJobFacet,
        "jobType": job_type_job.JobTypeJobFacet,
        "documentation": documentation_job.DocumentationJobFacet,
    },
    "dataset": {
        "schema": schema_dataset.SchemaDatasetFacet,
        "columnLineage": column_lineage_dataset.ColumnLineageDatasetFacet,
        "dataSource": datasource_dataset.DatasourceDatasetFacet,
        "version": dataset_version_dataset.DatasetVersionDatasetFacet,
        "documentation": documentation_dataset.DocumentationDatasetFacet,
        # The dataset-facet form (any dataset, outputs included) of the quality metrics.
        "dataQualityMetrics": data_quality_metrics_dataset.DataQualityMetricsDatasetFacet,
    },
    "input": {
        "dataQualityAssertions": data_quality_assertions_dataset.DataQualityAssertionsDatasetFacet,
        "dataQualityMetrics": data_quality_metrics_input_dataset.DataQualityMetricsInputDatasetFacet,
        "inputStatistics": input_statistics_input_dataset.InputStatisticsInputDatasetFacet,
    },
    "output": {
        "outputStatistics": output_statistics_output_dataset.OutputStatisticsOutputDatasetFacet,
    },
}
PLACES = {
    "run": "run.facets", "job": "job.facets", "dataset": "inputs[]/outputs[] .facets",
    "input": "inputs[].inputFacets", "output": "outputs[].outputFacets",
}
# The abstract facet classes of the client's annotations -> the kind of map they type.
FACET_KINDS = {
    base.RunFacet: "run", base.JobFacet: "job", base.DatasetFacet: "dataset",
    base.InputDatasetFacet: "input", base.OutputDatasetFacet: "output",
}
URI = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*:[^\s]+$")
# RFC 3339 date-time: a time and a zone (Z or an offset) are required.
DATE_TIME = re.compile(r"^\d{4}-\d{2}-\d{2}[Tt]\d{2}:\d{2}:\d{2}(\.\d+)?([Zz]|[+-]\d{2}:\d{2})$")


class Invalid(Exception):
    def __init__(self, path, message):
        super().__init__(f"{path}: {message}")


def json_type(value):
    return "null" if value is None else type(value).__name__


def convert(tp, value, path):
    """The value of JSON `value` for annotation `tp`, raising Invalid when it does not fit."""
    origin = typing.get_origin(tp)
    if tp is typing.Any:
        return value
    if origin in (typing.Union, types.UnionType):
        if value is None:
            raise Invalid(path, "null is not allowed by the spec (leave the field out)")
        options = [arg for arg in typing.get_args(tp) if arg is not type(None)]
        if len(options) != 1:  # not in the generated classes; be safe
            raise Invalid(path, f"cannot check a value against {tp}")
        return convert(options[0], value, path)
    if origin is list:
        if not isinstance(value, list):
            raise Invalid(path, f"expected an array, got {json_type(value)}")
        (item,) = typing.get_args(tp)
        return [convert(item, v, f"{path}[{i}]") for i, v in enumerate(value)]
    if origin is dict:
        if not isinstance(value, dict):
            raise Invalid(path, f"expected an object, got {json_type(value)}")
        _, item = typing.get_args(tp)
        if item in FACET_KINDS:
            return {k: structure_facet(FACET_KINDS[item], k, v, f"{path}.{k}") for k, v in value.items()}
        return {k: convert(item, v, f"{path}.{k}") for k, v in value.items()}
    if tp is str:
        if not isinstance(value, str):
            raise Invalid(path, f"expected a string, got {json_type(value)}")
        return value
    if tp is bool:
        if not isinstance(value, bool):
            raise Invalid(path, f"expected a boolean, got {json_type(value)}")
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise Invalid(path, f"expected an integer, got {json_type(value)} {value!r}")
        return value
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise Invalid(path, f"expected a number, got {json_type(value)}")
        return value
    if isinstance(tp, type) and issubclass(tp, enum.Enum):
        values = [member.value for member in tp]
        if value not in values:
            raise Invalid(path, f"{value!r} is not one of {values}")
        return tp(value)
    if attr.has(tp):
        return structure(tp, value, path)
    raise Invalid(path, f"cannot check a value against {tp}")


def structure(cls, data, path):
    """An instance of attrs class `cls` from JSON object `data`: every required field, no
    unknown one, each converted by its annotation; the class's validators run."""
    if not isinstance(data, dict):
        raise Invalid(path, f"expected an object ({cls.__name__}), got {json_type(data)}")
    fields = attr.fields(cls)
    hints = typing.get_type_hints(cls)
    unknown = sorted(set(data) - {f.name for f in fields})
    if unknown:
        raise Invalid(path, f"{', '.join(unknown)}: not a field of {cls.__name__} "
                            f"(its fields: {', '.join(f.name for f in fields)})")
    kwargs = {}
    for field in fields:
        if field.name not in data:
            if field.default is attr.NOTHING:
                raise Invalid(path, f"required field {field.name!r} of {cls.__name__} is missing")
            continue
        if field.init:  # schemaURL/_schemaURL are not: the callers check them
            kwargs[field.alias] = convert(hints[field.name], data[field.name], f"{path}.{field.name}")
    try:
        return cls(**kwargs)
    except Exception as error:  # the class's validators
        raise Invalid(path, f"{cls.__name__} rejects {failed_field(error)}: {error}") from None


def failed_field(error):
    """The field whose attrs validator raised `error` (validators get it as `attribute`)."""
    trace = error.__traceback__
    name = None
    while trace is not None:
        attribute = trace.tb_frame.f_locals.get("attribute")
        if isinstance(attribute, attr.Attribute):
            name = attribute.name
        trace = trace.tb_next
    return f"its field {name!r}" if name else "it"


def check_uri(data, key, path):
    value = data.get(key)
    if value is None:
        raise Invalid(path, f"required field {key!r} is missing")
    if not isinstance(value, str) or not URI.match(value):
        raise Invalid(f"{path}.{key}", f"must be an absolute URI, got {value!r}")
    return value


def structure_facet(kind, name, data, path):
    if not isinstance(data, dict):
        raise Invalid(path, f"a facet must be an object, got {json_type(data)}")
    check_uri(data, "_producer", path)
    schema_url = check_uri(data, "_schemaURL", path)
    cls = FACETS[kind].get(name)
    if cls is None:
        elsewhere = [PLACES[k] for k, names in FACETS.items() if name in names]
        if elsewhere:
            raise Invalid(path, f"facet {name!r} is not allowed in {PLACES[kind]}; "
                                f"the spec allows it only in {' or '.join(elsewhere)}")
        return data  # a facet the client has no class for: the base facet's fields suffice
    expected = cls._get_schema()
    if schema_url != expected:
        raise Invalid(f"{path}._schemaURL", f"{schema_url!r} is not the schema URL of "
                                            f"{cls.__name__}, {expected!r}")
    return structure(cls, data, path)


def parse_time(value, path):
    if not isinstance(value, str) or not DATE_TIME.match(value):
        raise Invalid(path, f"must be an RFC 3339 date-time with a zone (e.g. "
                            f"2024-01-01T00:00:00.000Z), got {value!r}")
    return date_parser.isoparse(value)


def check_event(event, label):
    """The RunEvent of one JSON event; raises Invalid naming the problem."""
    if not isinstance(event, dict):
        raise Invalid(label, f"an event must be an object, got {json_type(event)}")
    if "run" not in event:
        raise Invalid(label, "not a RunEvent (no `run`): only run events are expected")
    check_uri(event, "producer", label)
    schema_url = event.get("schemaURL")
    if schema_url is None:
        raise Invalid(label, "required field 'schemaURL' is missing")
    if schema_url != RUN_EVENT._get_schema():
        raise Invalid(f"{label}.schemaURL", f"{schema_url!r} is not the client's RunEvent schema "
                                             f"URL, {RUN_EVENT._get_schema()!r}")
    if "eventType" not in event:
        raise Invalid(label, "eventType is missing")
    if event["eventType"] not in EVENT_TYPES:
        raise Invalid(f"{label}.eventType", f"{event['eventType']!r} is not one of {sorted(EVENT_TYPES)}")
    parse_time(event.get("eventTime"), f"{label}.eventTime")
    return structure(RUN_EVENT, event, label)


def load(path, prefix):
    """[(label, event)] from the file, whichever of the three forms it holds."""
    with open(path, encoding="utf-8") as handle:
        text = handle.read()
    if not text.strip():
        raise Invalid(path, "no events in the file")
    try:
        data = json.loads(text)
    except ValueError:
        events = []
        for number, line in enumerate(text.splitlines(), 1):
            if line.strip():
                try:
                    events.append((f"event {len(events)} (line {number})", json.loads(line)))
                except ValueError as error:
                    raise Invalid(f"line {number}", f"neither the file as a whole nor this line "
                                                    f"is JSON: {error}") from None
        return events
    if isinstance(data, dict):
        data = [data]
    if not isinstance(data, list):
        raise Invalid(path, f"expected a list of events, got {json_type(data)}")
    receiver = bool(data) and all(isinstance(r, dict) and "body" in r and "received_at" in r for r in data)
    if not receiver:
        return [(f"event {i}", event) for i, event in enumerate(data)]
    events = []
    for i, record in enumerate(data):
        if prefix is not None and not str(record.get("path", "")).split("?", 1)[0].startswith(prefix):
            continue
        if not 200 <= int(record.get("answered", 200)) < 300:
            continue
        events.append((f"event {len(events)} (receiver record {i})", record["body"]))
    return events


def check(events):
    """(summary, problems) of [(label, event)]."""
    problems = []
    runs = {}
    damaged = set()
    for label, raw in events:
        try:
            run_event = check_event(raw, label)
        except Invalid as error:
            problems.append(str(error))
            # The order of that run cannot be judged without this event: say nothing more of it.
            run_id = raw.get("run", {}).get("runId") if isinstance(raw, dict) and isinstance(raw.get("run"), dict) else None
            if isinstance(run_id, str):
                damaged.add(run_id)
            continue
        run_id = run_event.run.runId
        kind = run_event.eventType.value
        job = f"{run_event.job.namespace}/{run_event.job.name}"
        when = date_parser.isoparse(run_event.eventTime)
        run = runs.get(run_id)
        if run is None:
            run = runs[run_id] = {"job": job, "types": [], "outputs": {}, "start": None,
                                  "terminal": None, "first": label}
        problem = None
        if kind == "START":
            if run["types"]:
                problem = ("a second START" if "START" in run["types"] else
                           f"START is not the first event (after {', '.join(run['types'])})")
        elif run["start"] is None:
            problem = f"{kind} before the run's START"
        elif kind in TERMINAL and run["terminal"] is not None:
            problem = f"{kind} after the run already ended ({run['terminal']})"
        elif kind == "RUNNING" and run["terminal"] is not None:
            problem = f"RUNNING after the run ended ({run['terminal']})"
        if problem is None and job != run["job"]:
            problem = f"job {job!r} differs from the run's START job {run['job']!r}"
        if problem is None and run["start"] is not None and when < run["start"]:
            problem = f"eventTime {run_event.eventTime} is before the run's START ({run['start'].isoformat()})"
        if problem and run_id not in damaged:
            problems.append(f"{label}: run {run_id}: {problem}")
        run["types"].append(kind)
        if kind == "START" and run["start"] is None:
            run["start"] = when
        if kind in TERMINAL and run["terminal"] is None and run["start"] is not None:
            run["terminal"] = kind
        for output in run_event.outputs or []:
            version = (output.facets or {}).get("version")
            name = f"{output.namespace}/{output.name}"
            if version is not None or name not in run["outputs"]:
                run["outputs"][name] = version.datasetVersion if version is not None else run["outputs"].get(name)
    for run_id, run in runs.items():
        if run["start"] is not None and run["terminal"] is None and run_id not in damaged:
            problems.append(f"{run['first']}: run {run_id} ({run['job']}) never ended: "
                            f"no COMPLETE, FAIL or ABORT after its START")
    summary = {"events": len(events), "runs": {
        run_id: {"job": run["job"], "types": run["types"],
                 "outputs": [{"name": n, "version": v} for n, v in run["outputs"].items()]}
        for run_id, run in runs.items()}}
    return summary, problems


def main(argv=None):
    parser = argparse.ArgumentParser(description="Check OpenLineage run events with openlineage-python.")
    parser.add_argument("events_file")
    parser.add_argument("--path", help="receiver output: only records POSTed to paths starting so")
    args = parser.parse_args(argv)
    try:
        events = load(args.events_file, args.path)
    except (OSError, Invalid) as error:
        print(f"openlineage_check: {error}", file=sys.stderr)
        return 1
    if not events:
        print(f"openlineage_check: {args.events_file}: no events (after filtering)", file=sys.stderr)
        return 1
    summary, problems = check(events)
    if problems:
        for problem in problems:
            print(f"openlineage_check: {problem}", file=sys.stderr)
        return 1
    print(json.dumps(summary, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
