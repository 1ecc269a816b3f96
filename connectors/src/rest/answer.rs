//! What a response body answers: where its records are (`data_selector`, or chosen), the
//! records decoded, and whether a body without records is an empty page or an error.

use std::sync::Arc;

use arrow::array::{Int64Array, RecordBatch};
use arrow::datatypes::Schema;
use inlet_engine::config::{JsonPath, PathStep};
use inlet_engine::source::RawChunk;
use serde_json::Value;

use crate::Error;

/// Bodies at least this big are decoded on a blocking thread.
const DECODE_ON_BLOCKING_BYTES: usize = 64 * 1024;

/// How deep in a body signs of an error or of records are looked for; deeper is not trusted.
const LOOK_DEPTH: usize = 8;

/// The fields an answer without records may carry beside them (compared as [`words`]
/// joined): where the next page is, how many there are, and what the envelope is.
const ENVELOPE: &[&str] = &[
    // Where the next (or another) page is.
    "next",
    "nexturl",
    "nextlink",
    "nextpagelink",
    "nextcursor",
    "nextpage",
    "nextpagetoken",
    "nextpageurl",
    "nexttoken",
    "continuationtoken",
    "cursor",
    "token",
    "previous",
    "prev",
    "previouspage",
    "prevpage",
    "prevcursor",
    "first",
    "last",
    "lastpage",
    "self",
    "selflink",
    "url",
    "href",
    // Where this page is, and how many there are.
    "page",
    "pages",
    "currentpage",
    "perpage",
    "pagesize",
    "pagenumber",
    "offset",
    "limit",
    "skip",
    "start",
    "startat",
    "maxresults",
    "from",
    "to",
    "size",
    "total",
    "totalcount",
    "totalresults",
    "totalitems",
    "totalsize",
    "totalrows",
    "totalpages",
    "count",
    "resultsizeestimate",
    "hasmore",
    "hasnext",
    "hasnextpage",
    "more",
    "done",
    "islast",
    // What the envelope is.
    "id",
    "kind",
    "etag",
    "object",
    "type",
    "rel",
    "method",
    "templated",
    "requestid",
    "version",
    "apiversion",
    "success",
    "ok",
    "status",
    "odatacontext",
    "odatanextlink",
    "odatacount",
    "odatadeltalink",
];

/// Fields whose content is the envelope's own: their fields are judged as the envelope's.
const CONTAINERS: &[&str] = &["links", "meta", "metadata", "paging", "pagination", "pageinfo", "responsemetadata"];

/// Status text that says all is well.
const FINE: &[&str] = &["ok", "success", "succeeded", "done", "complete", "completed"];

/// The words of a key, in lower case: `nextPageToken`, `next_page_token` and
/// `next-page-token` are `next page token`; `HTTPError` is `http error`.
fn words(key: &str) -> Vec<String> {
    let chars: Vec<char> = key.chars().collect();
    let mut words: Vec<String> = vec![String::new()];
    for (i, &c) in chars.iter().enumerate() {
        if !c.is_alphanumeric() {
            words.push(String::new());
            continue;
        }
        let before = i.checked_sub(1).map(|j| chars[j]);
        let after = chars.get(i + 1);
        let boundary = c.is_uppercase()
            && before.is_some_and(|b| {
                b.is_lowercase() || b.is_numeric() || (b.is_uppercase() && after.is_some_and(|a| a.is_lowercase()))
            });
        if boundary {
            words.push(String::new());
        }
        if let Some(word) = words.last_mut() {
            word.extend(c.to_lowercase());
        }
    }
    words.retain(|w| !w.is_empty());
    words
}

/// A number, or text that is one.
fn number(value: &Value) -> Option<f64> {
    match value {
        Value::Number(n) => n.as_f64(),
        Value::String(text) => text.trim().parse().ok(),
        _ => None,
    }
}

/// Whether a value says something: not `null`, `false`, zero (or text of it), `""`, `[]`
/// or `{}`.
fn set(value: &Value) -> bool {
    match value {
        Value::Null | Value::Bool(false) => false,
        Value::Number(_) => number(value) != Some(0.0),
        Value::String(text) => !text.trim().is_empty() && number(value) != Some(0.0),
        Value::Array(items) => !items.is_empty(),
        Value::Object(fields) => !fields.is_empty(),
        Value::Bool(true) => true,
    }
}

/// Whether a flag says no: `false`, `0`, `"false"`, `"no"`.
fn says_no(value: &Value) -> bool {
    match value {
        Value::Bool(flag) => !flag,
        Value::Number(_) => number(value) == Some(0.0),
        Value::String(text) => matches!(text.trim().to_ascii_lowercase().as_str(), "false" | "0" | "no"),
        _ => false,
    }
}

/// Whether text reads as a failure.
fn failing(text: &str) -> bool {
    let text = text.to_ascii_lowercase();
    ["error", "fail", "denied", "invalid", "forbidden", "unauthori", "unavailable", "exceeded", "limit", "throttl"]
        .iter()
        .any(|word| text.contains(word))
}

/// How much is taken as a sign of an error.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Level {
    /// An `error`, `fault` or `exception` field that is set; `success` or `ok` that says no.
    Keys,
    /// Also a status or code of 400 or more, or one that reads as a failure.
    Status,
    /// Also a `message`, `msg`, `detail` or `reason` (and at the top, a `title`), as error
    /// objects carry.
    Messages,
}

/// Whether a field, or one inside it, says error or failure (as far as `level` looks).
fn says_error(key: &str, value: &Value, depth: usize, level: Level) -> bool {
    let words = words(key);
    let joined = words.concat();
    let error_word = |w: &String| {
        matches!(
            w.as_str(),
            "err" | "errcode" | "errmsg" | "errno" | "fault" | "faults" | "failure" | "failures" | "exceptions"
        ) || w.contains("error")
            || w.contains("exception")
    };
    if words.iter().any(error_word) {
        return set(value);
    }
    let said = match joined.as_str() {
        "success" | "ok" | "succeeded" => says_no(value),
        "status" | "statuscode" | "httpstatus" | "code" | "httpcode" | "state" | "result" | "outcome"
            if level >= Level::Status =>
        {
            number(value).is_some_and(|n| n >= 400.0) || value.as_str().is_some_and(failing)
        }
        "message" | "msg" | "detail" | "details" | "reason" | "description" => level >= Level::Messages && set(value),
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
    let linking = words.iter().any(|w| w.starts_with("link"));
    let counting = words.iter().any(|w| matches!(w.as_str(), "total" | "count" | "estimate"));
    let said = (counting && number(value).is_some_and(|n| n > 0.0))
        || (matches!(joined.as_str(), "hasmore" | "hasnext" | "hasnextpage" | "more" | "moreresults")
            && value == &Value::Bool(true))
        || (!linking && matches!(value, Value::Array(items) if items.iter().any(Value::is_object)));
    said || (!linking && inside(value, depth, &says_records))
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

/// Whether a field is one an answer without records may carry: nothing in it says error or
/// records, and it is unset, a flag or status that says all is well, or one of the
/// envelope's ([`ENVELOPE`]; inside [`CONTAINERS`], every field so).
fn envelope_field(key: &str, value: &Value, depth: usize) -> bool {
    if depth > LOOK_DEPTH || says_error(key, value, depth, Level::Messages) || says_records(key, value, depth) {
        return false;
    }
    let joined = words(key).concat();
    match joined.as_str() {
        "success" | "ok" => return matches!(value, Value::Null | Value::Bool(true)) || number(value) == Some(1.0),
        "status" => {
            return match value {
                Value::Null | Value::Bool(true) => true,
                Value::Number(n) => n.as_f64().is_some_and(|n| n < 400.0),
                Value::String(text) => FINE.contains(&text.trim().to_ascii_lowercase().as_str()),
                _ => false,
            };
        }
        "object" | "kind" | "type" if value.as_str().is_some_and(failing) => return false,
        _ => {}
    }
    if !set(value) {
        return true;
    }
    if CONTAINERS.contains(&joined.as_str()) {
        let all = |map: &serde_json::Map<String, Value>| map.iter().all(|(k, v)| envelope_field(k, v, depth + 1));
        return match value {
            Value::Object(map) => all(map),
            Value::Array(items) => items.iter().all(|item| item.as_object().is_none_or(all)),
            _ => true,
        };
    }
    ENVELOPE.contains(&joined.as_str()) && !value.is_object() && !value.is_array()
}

/// Whether, on the way down `steps` to where the records belong, a field off the way
/// offends (`offends`), the way meets something that is neither an object, a list nor
/// `null` before its end, or something other than `null` is at its end.
fn off_the_way(value: &Value, steps: &[PathStep], offends: &dyn Fn(&str, &Value) -> bool) -> bool {
    // Where the records belong, only `null` is nothing there.
    let Some((step, rest)) = steps.split_first() else { return !value.is_null() };
    match (step, value) {
        (_, Value::Null) => false,
        (PathStep::Key(key), Value::Object(map)) => {
            map.iter().any(|(k, v)| if k == key { off_the_way(v, rest, offends) } else { offends(k, v) })
        }
        (PathStep::All, Value::Array(items)) => items.iter().any(|item| off_the_way(item, rest, offends)),
        (PathStep::All, Value::Object(map)) => map.values().any(|item| off_the_way(item, rest, offends)),
        (PathStep::Index(index), Value::Array(items)) => {
            let at =
                if *index < 0 { items.len().checked_sub(index.unsigned_abs() as usize) } else { Some(*index as usize) };
            at.and_then(|i| items.get(i)).is_some_and(|item| off_the_way(item, rest, offends))
        }
        _ => true,
    }
}

/// Whether a place of the selector holds `null` beside a field that offends.
fn beside_a_null(value: &Value, steps: &[PathStep], offends: &dyn Fn(&str, &Value) -> bool) -> bool {
    match (steps, value) {
        ([PathStep::Key(key)], Value::Object(map)) => {
            map.get(key).is_some_and(Value::is_null) && map.iter().any(|(k, v)| k != key && offends(k, v))
        }
        ([PathStep::Key(key), rest @ ..], Value::Object(map)) => {
            map.get(key).is_some_and(|v| beside_a_null(v, rest, offends))
        }
        ([PathStep::All, rest @ ..], Value::Array(items)) => items.iter().any(|v| beside_a_null(v, rest, offends)),
        ([PathStep::All, rest @ ..], Value::Object(map)) => map.values().any(|v| beside_a_null(v, rest, offends)),
        ([PathStep::Index(index), rest @ ..], Value::Array(items)) => {
            let at =
                if *index < 0 { items.len().checked_sub(index.unsigned_abs() as usize) } else { Some(*index as usize) };
            at.and_then(|i| items.get(i)).is_some_and(|v| beside_a_null(v, rest, offends))
        }
        _ => false,
    }
}

/// Whether a body with nothing where the records belong (`selector`) is an empty answer (an
/// API that leaves an empty list out, or writes it `null`), not an error: it is `null`, or
/// every field off the way to the records is one an answer without records may carry
/// ([`envelope_field`]). Taking an error for the end would move a cursor past what the API
/// did not give, so anything else is not the end.
pub(super) fn empty_answer(body: &[u8], selector: &JsonPath) -> bool {
    match serde_json::from_slice::<Value>(body) {
        Ok(Value::Null) => true,
        Ok(value @ Value::Object(_)) => {
            !off_the_way(&value, crate::json::record_steps(selector), &|k, v| !envelope_field(k, v, 0))
        }
        _ => false,
    }
}

/// Whether a decoded body holds records (an empty list among them) rather than something
/// else where they belong: found at the selector (and no place of a wildcard that held
/// `null` has an error beside it), or nothing there and the body an empty answer.
fn holds_records(body: &crate::json::Body, raw: &[u8], selector: &JsonPath) -> bool {
    if body.found {
        return !body.nulls
            || serde_json::from_slice::<Value>(raw).is_ok_and(|value| {
                !beside_a_null(&value, crate::json::record_steps(selector), &|k, v| says_error(k, v, 0, Level::Keys))
            });
    }
    body.absent && empty_answer(raw, selector)
}

/// A decoded body, and whether it holds records ([`holds_records`]).
pub(super) struct Decoded {
    pub body: crate::json::Body,
    pub holds_records: bool,
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

/// Decodes a body, and tells whether it holds records, on a blocking thread when it is big.
pub(super) async fn decode(
    body: bytes::Bytes,
    selector: JsonPath,
    wanted: Vec<JsonPath>,
    object_is_record: bool,
) -> Result<Decoded, Error> {
    let big = body.len() >= DECODE_ON_BLOCKING_BYTES;
    let work = move || {
        let decoded = crate::json::decode_body(&body, &selector, &wanted, object_is_record).map_err(Error::Internal)?;
        let holds_records = holds_records(&decoded, &body, &selector);
        Ok(Decoded { body: decoded, holds_records })
    };
    if !big {
        return work();
    }
    tokio::task::spawn_blocking(work).await.map_err(|e| Error::Internal(format!("decoding a page: {e}")))?
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
/// body as one record (a resource such as `/me` or `/count`); a usual name holding `null` is
/// the place. `None` for a body that is not JSON, and for an object with nothing set or
/// that says error: it chooses nothing.
fn auto_selector(body: &[u8]) -> Option<Selector> {
    let (chosen, object_is_record) = match serde_json::from_slice::<Value>(body).ok()? {
        Value::Object(map) => {
            let arrays: Vec<&String> = map
                .iter()
                .filter(|(k, v)| v.is_array() && !words(k).iter().any(|w| w.starts_with("err") || w.contains("error")))
                .map(|(k, _)| k)
                .collect();
            const NAMES: [&str; 7] = ["data", "items", "results", "records", "entries", "value", "rows"];
            let named = NAMES.into_iter().find(|name| map.get(*name).is_some_and(Value::is_array));
            // A usual name holding `null`: the records' place, empty this time.
            let null_named = NAMES.into_iter().find(|name| map.get(*name).is_some_and(Value::is_null));
            match (arrays.as_slice(), named.or(null_named)) {
                ([only], _) => (format!("$['{only}']"), false),
                (_, Some(name)) => (name.to_owned(), false),
                // No record there: nothing set (`{}`, `{"next": null}`), or an error.
                _ if !map.values().any(set)
                    || map.iter().any(|(k, v)| says_error(k, v, 0, Level::Keys))
                    || (map.values().any(Value::is_null)
                        && map.iter().any(|(k, v)| says_error(k, v, 0, Level::Messages))) =>
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
        assert_eq!(chosen(br#"{"data": null, "next": null}"#), Some(("data".into(), false)));
        assert_eq!(chosen(br#"{"kind": "list", "items": null}"#), Some(("items".into(), false)));
        assert_eq!(chosen(br#"{"next": null, "total": 0}"#), None);
        assert_eq!(chosen(br#"{}"#), None);
        assert_eq!(chosen(br#"{"errors":[{"message":"bad query"}]}"#), None);
        assert_eq!(chosen(br#"{"error":"rate limited"}"#), None);
        // (The place of the records, where the error then tells this body from an empty one.)
        assert_eq!(chosen(br#"{"code":401,"msg":"token expired","data":null}"#), Some(("data".into(), false)));
        assert_eq!(chosen(br#"{"HTTPError":"Forbidden","message":"x"}"#), None);
        assert_eq!(chosen(b"<html>"), None);
    }

    #[test]
    fn error_objects_are_told_from_empty_answers() {
        let data = JsonPath::parse("data").unwrap();
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
            br#"{"next_page": null, "previous_page": "https://h/x?page=3", "count": 0}"#,
            br#"{"data": null, "url": "/v1/charges", "object": "list"}"#,
            br#"{"done": true, "totalSize": 0}"#,
            br#"{"totalRows": "0", "kind": "bigquery#tableDataList"}"#,
            br#"{"@odata.context": "https://h/$metadata#x", "@odata.count": 0}"#,
            br#"{"startAt": 0, "maxResults": 50, "isLast": true}"#,
            br#"{"ok": true, "response_metadata": {"next_cursor": ""}}"#,
            br#"{"data": null, "meta": {"pagination": {"total": 0, "links": {}}}}"#,
        ] {
            assert!(empty_answer(empty, &data), "{}", String::from_utf8_lossy(empty));
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
            br#"{"success": 0, "data": null}"#,
            br#"{"ok": "false", "data": null}"#,
            br#"{"status": false, "data": null}"#,
            br#"{"status": "ERROR", "data": null}"#,
            br#"{"object": "error", "data": null}"#,
            br#"{"data": null, "meta": {"notice": "maintenance"}}"#,
            br#"{"data": null, "meta": {"status": "throttled"}}"#,
            br#"{"data": null, "HTTPError": "Forbidden"}"#,
            br#"{"data": null, "default_sort": "id"}"#,
            b"<html>",
            b"[]",
        ] {
            assert!(!empty_answer(error, &data), "{}", String::from_utf8_lossy(error));
        }
        // Judged off the way to the records: the envelope around a nested list.
        let nested = JsonPath::parse("result.items").unwrap();
        assert!(empty_answer(br#"{"result": {"items": null, "total": 0}, "request_id": "r"}"#, &nested));
        assert!(empty_answer(br#"{"result": null}"#, &nested));
        assert!(!empty_answer(br#"{"result": {"items": null, "error": "quota"}}"#, &nested));
        assert!(!empty_answer(br#"{"result": "maintenance"}"#, &nested));
        assert!(!empty_answer(br#"{"result": {"items": null}, "message": "down"}"#, &nested));
    }

    #[test]
    fn words_of_keys() {
        assert_eq!(words("nextPageToken"), ["next", "page", "token"]);
        assert_eq!(words("next_page-token"), ["next", "page", "token"]);
        assert_eq!(words("_links"), ["links"]);
        assert_eq!(words("HTTPStatus"), ["http", "status"]);
        assert_eq!(words("default_currency"), ["default", "currency"]);
        assert_eq!(words("HTTPError"), ["http", "error"]);
        assert_eq!(words("@odata.nextLink"), ["odata", "next", "link"]);
        assert_eq!(words("page2Token"), ["page2", "token"]);
        assert!(words("").is_empty() && words("__").is_empty());
    }

    #[test]
    fn nulls_under_a_wildcard_beside_an_error_are_not_records() {
        let selector = JsonPath::parse("results[*].items").unwrap();
        let holds =
            |raw: &[u8]| holds_records(&crate::json::decode_body(raw, &selector, &[], false).unwrap(), raw, &selector);
        assert!(holds(br#"{"results": [{"items": [{"a": 1}]}, {"items": null}]}"#));
        assert!(holds(br#"{"results": [{"items": null}]}"#));
        assert!(!holds(br#"{"results": [{"items": [{"a": 1}]}, {"items": null, "error": {"code": 403}}]}"#));
        assert!(!holds(br#"{"results": [{"items": "x"}]}"#));
        // The records' own fields are theirs, whatever their names.
        assert!(holds(br#"{"results": [{"items": [{"id": 1, "failure_code": "x"}]}, {"items": null}]}"#));
    }
}
