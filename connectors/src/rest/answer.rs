//! What a response body answers: where its records are (`data_selector`, or chosen), the
//! records decoded, and whether a body without records is an empty page or an error.

use std::sync::Arc;

use arrow::array::{Int64Array, RecordBatch};
use arrow::datatypes::Schema;
use inlet_engine::config::JsonPath;
use inlet_engine::source::RawChunk;
use serde_json::Value;

use crate::Error;

/// Bodies at least this big are decoded on a blocking thread.
const DECODE_ON_BLOCKING_BYTES: usize = 64 * 1024;

/// How deep in a body signs of an error or of records are looked for.
const LOOK_DEPTH: usize = 8;

/// The fields an answer without records may carry beside them (compared as [`words`]
/// joined): where the next page is, how many there are, and what the envelope is.
const ENVELOPE: [&str; 41] = [
    "next",
    "nexturl",
    "nextlink",
    "nextcursor",
    "nextpage",
    "nextpagetoken",
    "nextpageurl",
    "cursor",
    "previous",
    "prev",
    "prevcursor",
    "first",
    "last",
    "self",
    "page",
    "pages",
    "perpage",
    "pagesize",
    "pagenumber",
    "offset",
    "limit",
    "skip",
    "start",
    "size",
    "total",
    "totalcount",
    "totalresults",
    "totalitems",
    "count",
    "resultsizeestimate",
    "hasmore",
    "hasnext",
    "kind",
    "etag",
    "object",
    "requestid",
    "success",
    "ok",
    "status",
    "links",
    "version",
];

/// Fields whose content is the envelope's own (links, paging, metadata): looked into only
/// for signs of an error or of records.
const CONTAINERS: [&str; 4] = ["links", "meta", "paging", "pagination"];

/// The words of a key: `nextPageToken`, `next_page_token` and `next-page-token` are
/// `next page token`, in lower case.
fn words(key: &str) -> Vec<String> {
    let mut words: Vec<String> = Vec::new();
    let mut previous_lower = false;
    for c in key.chars() {
        if !c.is_alphanumeric() {
            previous_lower = false;
            words.push(String::new());
            continue;
        }
        if c.is_uppercase() && previous_lower {
            words.push(String::new());
        }
        previous_lower = c.is_lowercase() || c.is_numeric();
        match words.last_mut() {
            Some(word) => word.extend(c.to_lowercase()),
            None => words.push(c.to_lowercase().collect()),
        }
    }
    words.retain(|w| !w.is_empty());
    words
}

/// Whether a value says something: not `null`, `false`, `0`, `""`, `[]` or `{}`.
fn set(value: &Value) -> bool {
    match value {
        Value::Null | Value::Bool(false) => false,
        Value::Number(n) => n.as_f64() != Some(0.0),
        Value::String(text) => !text.trim().is_empty(),
        Value::Array(items) => !items.is_empty(),
        Value::Object(fields) => !fields.is_empty(),
        Value::Bool(true) => true,
    }
}

/// A number, or text that is one.
fn number(value: &Value) -> Option<f64> {
    match value {
        Value::Number(n) => n.as_f64(),
        Value::String(text) => text.trim().parse().ok(),
        _ => None,
    }
}

/// Whether a body with nothing where the records belong is an empty answer (an API that
/// leaves an empty list out, or writes it `null`), not an error. It is `null`, or an object
/// whose every field is unset or one of the envelope's ([`ENVELOPE`], a status that reads
/// as success), and in which nothing, at any depth, says error ([`says_error`]) or that
/// there are records ([`says_records`]). Taking an error for the end would move a cursor
/// past what the API did not give, so anything else is not the end.
pub(super) fn empty_answer(body: &[u8]) -> bool {
    let Ok(value) = serde_json::from_slice::<Value>(body) else { return false };
    let map = match value {
        Value::Null => return true,
        Value::Object(map) => map,
        _ => return false,
    };
    map.iter().all(|(key, value)| {
        let joined = words(key).concat();
        let envelope = ENVELOPE.contains(&joined.as_str()) || CONTAINERS.contains(&joined.as_str());
        let fine = match joined.as_str() {
            "status" => !value.is_string() || matches!(value.as_str(), Some("ok" | "OK" | "success" | "succeeded")),
            "success" | "ok" => value != &Value::Bool(false),
            _ => true,
        };
        (envelope || !set(value)) && fine && !says_error(key, value, 0, Level::Messages) && !says_records(key, value, 0)
    })
}

/// How much is taken as a sign of an error.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Level {
    /// An `error`, `fault` or `exception` field that is set; `success` or `ok` false.
    Keys,
    /// Also a status or code of 400 or more, or a status that reads as a failure.
    Status,
    /// Also a `message`, `detail` or `reason` (and at the top, a `title`), as error objects carry.
    Messages,
}

/// Whether a field, or one inside it, says error or failure (as far as `level` looks).
fn says_error(key: &str, value: &Value, depth: usize, level: Level) -> bool {
    let words = words(key);
    let has = |names: &[&str]| words.iter().any(|w| names.contains(&w.as_str()));
    if has(&[
        "error",
        "errors",
        "err",
        "errcode",
        "errmsg",
        "fault",
        "faults",
        "exception",
        "exceptions",
        "failure",
        "failures",
    ]) {
        return set(value);
    }
    let joined = words.concat();
    let failing = |text: &str| {
        let text = text.to_ascii_lowercase();
        ["error", "fail", "denied", "invalid", "forbidden", "unauthori", "unavailable", "exceeded", "limit"]
            .iter()
            .any(|word| text.contains(word))
    };
    let said = match joined.as_str() {
        "success" | "ok" | "succeeded" => value == &Value::Bool(false),
        "status" | "statuscode" | "httpstatus" | "code" | "httpcode" if level >= Level::Status => {
            number(value).is_some_and(|n| n >= 400.0) || value.as_str().is_some_and(failing)
        }
        "state" | "result" | "outcome" if level >= Level::Status => value.as_str().is_some_and(failing),
        "message" | "detail" | "details" | "reason" | "msg" => level >= Level::Messages && set(value),
        "title" => level >= Level::Messages && depth == 0 && set(value),
        _ => false,
    };
    said || inside(value, depth, &|k, v, d| says_error(k, v, d, level))
}

/// Whether a field, or one inside it, says there are records: a total or count above zero,
/// `has_more` true, or a list of objects (links aside).
fn says_records(key: &str, value: &Value, depth: usize) -> bool {
    let words = words(key);
    let joined = words.concat();
    let counting = words.iter().any(|w| matches!(w.as_str(), "total" | "count" | "estimate"));
    let said = (counting && number(value).is_some_and(|n| n > 0.0))
        || (matches!(joined.as_str(), "hasmore" | "hasnext" | "hasnextpage" | "more" | "moreresults")
            && value == &Value::Bool(true))
        || (!words.iter().any(|w| w.starts_with("link"))
            && matches!(value, Value::Array(items) if items.iter().any(Value::is_object)));
    said || (!words.iter().any(|w| w.starts_with("link")) && inside(value, depth, &says_records))
}

/// Whether `test` holds for a field of `value` (an object, or the objects of a list).
fn inside(value: &Value, depth: usize, test: &dyn Fn(&str, &Value, usize) -> bool) -> bool {
    if depth >= LOOK_DEPTH {
        return false;
    }
    let fields = |object: &serde_json::Map<String, Value>| object.iter().any(|(k, v)| test(k, v, depth + 1));
    match value {
        Value::Object(object) => fields(object),
        Value::Array(items) => items.iter().any(|item| item.as_object().is_some_and(fields)),
        _ => false,
    }
}

/// Whether a decoded body holds records (an empty list among them) rather than something
/// else where they belong: found at the selector (and, when some place of a wildcard held
/// `null`, nothing in the body says error), or nothing there and the body an empty answer.
pub(super) fn holds_records(body: &crate::json::Body, raw: &[u8]) -> bool {
    if body.found {
        return !body.nulls
            || !matches!(serde_json::from_slice::<Value>(raw), Ok(Value::Object(map)) if map.iter().any(|(k, v)| says_error(k, v, 0, Level::Keys)));
    }
    body.absent && empty_answer(raw)
}

/// A page of nothing (its position still moves the stream).
pub(super) fn empty_chunk() -> RawChunk {
    let batch = RecordBatch::new_empty(Arc::new(Schema::empty()));
    RawChunk {
        batch,
        rows: Int64Array::from(Vec::<i64>::new()),
        bad: Vec::new(),
        text: true,
        raw_style: inlet_engine::source::RawStyle::Json,
    }
}

/// Decodes a body, on a blocking thread when it is big.
pub(super) async fn decode(
    body: bytes::Bytes,
    selector: JsonPath,
    wanted: Vec<JsonPath>,
    object_is_record: bool,
) -> Result<crate::json::Body, Error> {
    if body.len() < DECODE_ON_BLOCKING_BYTES {
        return crate::json::decode_body(&body, &selector, &wanted, object_is_record).map_err(Error::Internal);
    }
    tokio::task::spawn_blocking(move || crate::json::decode_body(&body, &selector, &wanted, object_is_record))
        .await
        .map_err(|e| Error::Internal(format!("decoding a page: {e}")))?
        .map_err(Error::Internal)
}

/// Where a resource's records are, and whether an object there is one record (not a list
/// gone wrong).
#[derive(Debug, Clone)]
pub(super) struct Selector {
    pub path: JsonPath,
    pub object_is_record: bool,
}

/// The selector: the one set, or chosen now from `body` and kept. A body that is not JSON,
/// or an empty answer, chooses nothing: it is read with a selector nothing matches, and the
/// next body chooses.
pub(super) fn chosen(selector: &mut Option<Selector>, body: &[u8]) -> Selector {
    if let Some(selector) = selector {
        return selector.clone();
    }
    match auto_selector(body) {
        Some(chosen) => selector.insert(chosen).clone(),
        None => Selector {
            path: JsonPath::parse("$['\u{0}']").unwrap_or_else(|_| JsonPath::root()),
            object_is_record: false,
        },
    }
}

/// Where the records of a body are when `data_selector` is not set: the body if it is an
/// array; else its one array field (error lists aside), or one of the usual names; else the
/// body as one record (a resource such as `/me` or `/count`). `None` for a body that is not
/// JSON, and for an object that is an empty answer with a `null` field, `{}` or an error:
/// it chooses nothing.
fn auto_selector(body: &[u8]) -> Option<Selector> {
    let (chosen, object_is_record) = match serde_json::from_slice::<Value>(body).ok()? {
        Value::Object(map) => {
            let arrays: Vec<&String> = map
                .iter()
                .filter(|(k, v)| v.is_array() && !words(k).iter().any(|w| w.starts_with("err")))
                .map(|(k, _)| k)
                .collect();
            let named = ["data", "items", "results", "records", "entries", "value", "rows"]
                .into_iter()
                .find(|name| map.get(*name).is_some_and(Value::is_array));
            match (arrays.as_slice(), named) {
                ([only], _) => (format!("$['{only}']"), false),
                (_, Some(name)) => (name.to_owned(), false),
                // No record there: an empty answer with a `null` field, or an error.
                _ if map.is_empty()
                    || (map.values().any(Value::is_null) && empty_answer(body))
                    || map.iter().any(|(k, v)| says_error(k, v, 0, Level::Keys)) =>
                {
                    return None;
                }
                _ => ("$".to_owned(), true),
            }
        }
        _ => ("$".to_owned(), false),
    };
    Some(Selector { path: JsonPath::parse(&chosen).unwrap_or_else(|_| JsonPath::root()), object_is_record })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn auto_selection() {
        let chosen = |body: &[u8]| auto_selector(body).map(|s| (s.path.as_str().to_owned(), s.object_is_record));
        assert_eq!(chosen(br#"[{"a":1}]"#), Some(("$".into(), false)));
        assert_eq!(chosen(br#"{"meta":{},"things":[1]}"#), Some(("$['things']".into(), false)));
        assert_eq!(chosen(br#"{"data":[1],"errors":[]}"#), Some(("$['data']".into(), false)));
        assert_eq!(chosen(br#"{"data":[1],"items":[2]}"#), Some(("data".into(), false)));
        assert_eq!(chosen(br#"{"id":1}"#), Some(("$".into(), true)));
        // Lone records that look like envelopes are records still.
        assert_eq!(chosen(br#"{"count":42}"#), Some(("$".into(), true)));
        assert_eq!(chosen(br#"{"kind":"x","etag":"y"}"#), Some(("$".into(), true)));
        assert_eq!(chosen(br#"{"status":"ok","message":"all good"}"#), Some(("$".into(), true)));
        assert_eq!(chosen(br#"{"id":1,"avatar":null}"#), Some(("$".into(), true)));
        assert_eq!(chosen(br#"{"id":1,"default_currency":"USD","status":"failed"}"#), Some(("$".into(), true)));
        // Empty answers and errors choose nothing.
        assert_eq!(chosen(br#"{"data": null, "next": null}"#), None);
        assert_eq!(chosen(br#"{}"#), None);
        assert_eq!(chosen(br#"{"errors":[{"message":"bad query"}]}"#), None);
        assert_eq!(chosen(br#"{"error":"rate limited"}"#), None);
        assert_eq!(chosen(b"<html>"), None);
    }

    #[test]
    fn error_objects_are_told_from_empty_answers() {
        for empty in [
            &br#"{}"#[..],
            b"null",
            br#"{"kind": "list", "etag": "x"}"#,
            br#"{"data": null, "next": null}"#,
            br#"{"items": [], "meta": {"page": 9}, "total": 0}"#,
            br#"{"results": null, "count": 0}"#,
            br#"{"items": null, "nextPageToken": null}"#,
            br#"{"success": true, "data": null}"#,
            br#"{"status": "ok", "data": null}"#,
            br#"{"data": null, "error": null}"#,
            br#"{"items": null, "offset": 100, "limit": 50, "total": 0}"#,
            br#"{"request_id": "x", "data": null}"#,
            br#"{"resultSizeEstimate": 0}"#,
            br#"{"errors": []}"#,
            br#"{"data": null, "meta": {"total": "0", "has_more": false}}"#,
            br#"{"data": null, "links": [{"rel": "self", "href": "/x"}], "nextPageToken": ""}"#,
            br#"{"data": null, "status": 200, "version": "2"}"#,
        ] {
            assert!(empty_answer(empty), "{}", String::from_utf8_lossy(empty));
        }
        for error in [
            &br#"{"message": "temporarily unavailable"}"#[..],
            br#"{"Error": {"code": 7}}"#,
            br#"{"data": null, "error": null, "message": "down"}"#,
            br#"{"title": "Service Unavailable", "status": 503}"#,
            br#"{"success": false}"#,
            br#"{"errors": [{"message": "x"}]}"#,
            br#"{"data": null, "meta": {"error": "rate limited", "code": 429}}"#,
            br#"{"data": null, "meta": {"status": "failed"}}"#,
            br#"{"results": null, "count": 1234}"#,
            br#"{"data": null, "paging": {"has_more": true}}"#,
            br#"{"data": null, "records": [{"id": 1}]}"#,
            br#"{"errcode": 40001, "errmsg": "invalid credential"}"#,
            br#"{"code": "RATE_LIMITED", "retry_after": 30}"#,
            br#"{"status": "429"}"#,
            br#"{"status": "pending"}"#,
            br#"{"data": "maintenance"}"#,
            br#"{"data": null, "total": 57}"#,
            br#"{"data": null, "ok": false}"#,
            b"<html>",
            b"[]",
        ] {
            assert!(!empty_answer(error), "{}", String::from_utf8_lossy(error));
        }
    }

    #[test]
    fn words_of_keys() {
        assert_eq!(words("nextPageToken"), ["next", "page", "token"]);
        assert_eq!(words("next_page-token"), ["next", "page", "token"]);
        assert_eq!(words("_links"), ["links"]);
        assert_eq!(words("HTTPStatus"), ["httpstatus"]);
        assert_eq!(words("default_currency"), ["default", "currency"]);
    }

    #[test]
    fn nulls_under_a_wildcard_beside_an_error_are_not_records() {
        let selector = JsonPath::parse("results[*].items").unwrap();
        let holds = |raw: &[u8]| holds_records(&crate::json::decode_body(raw, &selector, &[], false).unwrap(), raw);
        assert!(holds(br#"{"results": [{"items": [{"a": 1}]}, {"items": null}]}"#));
        assert!(holds(br#"{"results": [{"items": null}]}"#));
        assert!(!holds(br#"{"results": [{"items": [{"a": 1}]}, {"items": null, "error": {"code": 403}}]}"#));
        assert!(!holds(br#"{"results": [{"items": "x"}]}"#));
    }
}
