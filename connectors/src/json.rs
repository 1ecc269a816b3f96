//! JSON to text columns: objects become rows with one text column per key (in order of
//! first appearance), nested values stay JSON text. Shared by NDJSON files and API response
//! bodies ([`decode_body`]), so records type the same way whichever way they came.

use std::borrow::Cow;
use std::collections::HashMap;
use std::sync::Arc;

use arrow::array::{ArrayRef, Int64Builder, RecordBatch};
use arrow::datatypes::{DataType, Field, Schema};
use inlet_engine::config::{JsonPath, PathStep};
use inlet_engine::source::{BadRecord, ErrorCode, RawChunk, RawStyle};
use inlet_engine::text_cast::exact::ChunkColumn;
use serde::Deserialize;
use serde::de::value::{MapAccessDeserializer, SeqAccessDeserializer};
use serde::de::{DeserializeSeed, Deserializer as _, IgnoredAny, MapAccess, SeqAccess, Visitor};
use serde_json::Value;

/// Columns under construction, in order of first appearance in the chunk: text, or typed as
/// the table has them where every value allows it (`inlet_engine::text_cast::exact`).
#[derive(Default)]
pub(crate) struct Columns {
    names: Vec<String>,
    index: HashMap<String, usize>,
    builders: Vec<ChunkColumn>,
    rows: usize,
    /// The types the table has columns in, by name.
    types: Arc<HashMap<String, DataType>>,
    /// The allocation of the last row's cells, emptied, for the next row's.
    spare: std::cell::Cell<Vec<(Key<'static>, Option<Text<'static>>)>>,
}

/// Whether two keys are the same, compared eight bytes at a time: keys are short, and in
/// profiles of W1j a call to `memcmp` for each key of each record cost more than comparing.
fn same_key(a: &[u8], b: &[u8]) -> bool {
    let word = |bytes: &[u8], at: usize| bytes.get(at..at + 8).and_then(|w| w.try_into().ok()).map(u64::from_ne_bytes);
    match a.len() {
        len if len != b.len() => false,
        len if len < 8 => a.iter().zip(b).all(|(x, y)| x == y),
        len => {
            // Whole words from the start, and the last eight bytes (overlapping the one before).
            (0..len - 8).step_by(8).chain([len - 8]).all(|at| word(a, at) == word(b, at))
        }
    }
}

/// An emptied vector of cells, its allocation kept, with the lifetime of another line.
fn recycle<'b>(mut cells: Vec<(Key<'_>, Option<Text<'_>>)>) -> Vec<(Key<'b>, Option<Text<'b>>)> {
    cells.clear();
    // Collecting an empty vector's iterator in place reuses its allocation (what std does
    // today, not a promise: without it, one allocation a row, as before); a mapping adapter
    // lets the item type take the other lifetime, `filter_map` the one with nothing to call.
    #[allow(clippy::unnecessary_filter_map)]
    cells.into_iter().filter_map(|_| None).collect()
}

impl Columns {
    /// Columns typed as `types` says where they can be.
    pub(crate) fn typed(types: Arc<HashMap<String, DataType>>) -> Columns {
        Columns { types, ..Columns::default() }
    }

    /// The column of `key`, if the chunk has it. `position` is the key's place in its
    /// object: records usually repeat one key order, so that column is tried before hashing.
    fn find(&self, key: &str, position: usize) -> Option<usize> {
        if self.names.get(position).is_some_and(|name| same_key(name.as_bytes(), key.as_bytes())) {
            return Some(position);
        }
        self.index.get(key).copied()
    }

    /// Appends one record's values (the last of a repeated key wins), first making the
    /// columns of keys the chunk has not seen (null in the rows before). A record that
    /// fails to parse never gets here, so it adds no column.
    pub(crate) fn push_row(&mut self, mut cells: Vec<(Key<'_>, Option<Text<'_>>)>) {
        for (key, _) in &mut cells {
            if let Key::New(name) = key {
                let column = match self.index.get(name.as_ref()) {
                    Some(&column) => column,
                    None => {
                        let column = self.names.len();
                        let mut builder = ChunkColumn::new(self.types.get(name.as_ref()), self.rows, 0);
                        builder.append_nulls(self.rows);
                        self.index.insert(name.as_ref().to_owned(), column);
                        self.names.push(name.as_ref().to_owned());
                        self.builders.push(builder);
                        column
                    }
                };
                *key = Key::Known(column);
            }
        }
        // Usually every column once, in order; otherwise in column order, where a stable
        // sort keeps the last of a repeated key last.
        let in_order = cells.len() == self.builders.len()
            && cells.iter().enumerate().all(|(i, (key, _))| matches!(key, Key::Known(c) if *c == i));
        if !in_order {
            cells.sort_by_key(|(key, _)| match key {
                Key::Known(column) => *column,
                Key::New(_) => usize::MAX,
            });
        }
        let mut cells_by_column = cells.drain(..).peekable();
        for (column, builder) in self.builders.iter_mut().enumerate() {
            let mut value = None;
            while let Some((_, cell)) = cells_by_column.next_if(|(key, _)| matches!(key, Key::Known(c) if *c == column))
            {
                value = cell;
            }
            match value {
                Some(Text::Str(text)) => builder.append(&text),
                Some(Text::Integer(value)) => builder.append_integer(value),
                None => builder.append_null(),
            }
        }
        drop(cells_by_column);
        self.spare.set(recycle(cells));
        self.rows += 1;
    }
}

/// A value as column text: a string, or an integer JSON wrote (shown as it wrote it).
#[derive(Clone)]
pub(crate) enum Text<'de> {
    Str(Cow<'de, str>),
    Integer(i64),
}

impl Text<'_> {
    fn into_owned(self) -> Text<'static> {
        match self {
            Text::Str(text) => Text::Str(Cow::Owned(text.into_owned())),
            Text::Integer(value) => Text::Integer(value),
        }
    }
}

/// A key of a record: a column of the chunk, or a name it has not seen yet.
pub(crate) enum Key<'de> {
    Known(usize),
    New(Cow<'de, str>),
}

/// What one line holds: an object's values by column, or the kind of JSON it is instead.
pub(crate) enum Line<'de> {
    Object(Vec<(Key<'de>, Option<Text<'de>>)>),
    Not(&'static str),
}

/// Visits a line's top-level JSON value, finding the columns of an object's keys.
pub(crate) struct LineVisitor<'a> {
    pub columns: &'a Columns,
}

impl<'de> Visitor<'de> for LineVisitor<'_> {
    type Value = Line<'de>;

    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("a JSON object")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
        let mut cells = recycle(self.columns.spare.take());
        cells.reserve(self.columns.names.len());
        while let Some(key) = map.next_key::<Cow<'de, str>>()? {
            let key = match self.columns.find(&key, cells.len()) {
                Some(column) => Key::Known(column),
                None => Key::New(key),
            };
            cells.push((key, map.next_value::<Cell<'de>>()?.0));
        }
        Ok(Line::Object(cells))
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
        // Parsed in full, not skipped: skipping leaves out checks (number range, surrogates,
        // depth), and a broken array is a syntax error, not a shape one.
        while seq.next_element::<Value>()?.is_some() {}
        Ok(Line::Not("an array"))
    }

    fn visit_unit<E>(self) -> Result<Self::Value, E> {
        Ok(Line::Not("null"))
    }

    fn visit_bool<E>(self, _: bool) -> Result<Self::Value, E> {
        Ok(Line::Not("a boolean"))
    }

    fn visit_i64<E>(self, _: i64) -> Result<Self::Value, E> {
        Ok(Line::Not("a number"))
    }

    fn visit_u64<E>(self, _: u64) -> Result<Self::Value, E> {
        Ok(Line::Not("a number"))
    }

    fn visit_f64<E>(self, _: f64) -> Result<Self::Value, E> {
        Ok(Line::Not("a number"))
    }

    fn visit_str<E>(self, _: &str) -> Result<Self::Value, E> {
        Ok(Line::Not("a string"))
    }
}

/// One value as column text: strings as they are (borrowed from the line when they have no
/// escapes), numbers and booleans as JSON writes them, nested values as compact JSON, null
/// as null.
struct Cell<'de>(Option<Text<'de>>);

impl<'de> Deserialize<'de> for Cell<'de> {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_any(CellVisitor)
    }
}

struct CellVisitor;

impl<'de> Visitor<'de> for CellVisitor {
    type Value = Cell<'de>;

    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("a JSON value")
    }

    fn visit_unit<E>(self) -> Result<Self::Value, E> {
        Ok(Cell(None))
    }

    fn visit_bool<E>(self, v: bool) -> Result<Self::Value, E> {
        Ok(Cell(Some(Text::Str(Cow::Borrowed(if v { "true" } else { "false" })))))
    }

    fn visit_i64<E>(self, v: i64) -> Result<Self::Value, E> {
        Ok(Cell(Some(Text::Integer(v))))
    }

    fn visit_u64<E>(self, v: u64) -> Result<Self::Value, E> {
        Ok(Cell(Some(match i64::try_from(v) {
            Ok(v) => Text::Integer(v),
            Err(_) => Text::Str(Cow::Owned(v.to_string())),
        })))
    }

    fn visit_f64<E>(self, v: f64) -> Result<Self::Value, E> {
        Ok(Cell(serde_json::Number::from_f64(v).map(|n| Text::Str(Cow::Owned(n.to_string())))))
    }

    fn visit_borrowed_str<E>(self, v: &'de str) -> Result<Self::Value, E> {
        Ok(Cell(Some(Text::Str(Cow::Borrowed(v)))))
    }

    fn visit_str<E>(self, v: &str) -> Result<Self::Value, E> {
        Ok(Cell(Some(Text::Str(Cow::Owned(v.to_owned())))))
    }

    fn visit_string<E>(self, v: String) -> Result<Self::Value, E> {
        Ok(Cell(Some(Text::Str(Cow::Owned(v)))))
    }

    fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<Self::Value, A::Error> {
        let nested = Value::deserialize(MapAccessDeserializer::new(map))?;
        Ok(Cell(Some(Text::Str(Cow::Owned(nested.to_string())))))
    }

    fn visit_seq<A: SeqAccess<'de>>(self, seq: A) -> Result<Self::Value, A::Error> {
        let nested = Value::deserialize(SeqAccessDeserializer::new(seq))?;
        Ok(Cell(Some(Text::Str(Cow::Owned(nested.to_string())))))
    }
}

/// Parses one line: its cells, the kind of a non-object, or the syntax error.
pub(crate) fn parse_line<'de>(text: &'de str, columns: &Columns) -> serde_json::Result<Line<'de>> {
    let mut deserializer = serde_json::Deserializer::from_str(text);
    let line = deserializer.deserialize_any(LineVisitor { columns })?;
    deserializer.end()?;
    Ok(line)
}

impl Columns {
    /// The chunk of the rows pushed, numbered by `rows`.
    pub(crate) fn finish(mut self, rows: arrow::array::Int64Array, bad: Vec<BadRecord>) -> Result<RawChunk, String> {
        let arrays: Vec<ArrayRef> = self.builders.iter_mut().map(ChunkColumn::finish).collect();
        let fields: Vec<Field> =
            self.names.iter().zip(&arrays).map(|(n, a)| Field::new(n, a.data_type().clone(), true)).collect();
        let options = arrow::array::RecordBatchOptions::new().with_row_count(Some(rows.len()));
        let batch = RecordBatch::try_new_with_options(Arc::new(Schema::new(fields)), arrays, &options)
            .map_err(|e| e.to_string())?;
        Ok(RawChunk { batch, rows, bad, text: true, raw_style: RawStyle::Json })
    }
}

/// What a response body holds.
pub(crate) struct Body {
    /// The records at the selector, decoded; whole-body problems are in its `bad`.
    pub chunk: RawChunk,
    /// Whether the selector found records (an array, or an object as one record; an empty
    /// body holds none).
    pub found: bool,
    /// Whether the body parsed and has nothing where the selector points: the field left
    /// out, or `null` (an API that writes an empty list so, or an error object).
    pub absent: bool,
    /// Whether some place of the selector held `null` (for a wildcard, among records).
    pub nulls: bool,
    /// The value at each wanted path, in the order asked (`None`: absent; a `null` there is
    /// kept: the body has the field).
    pub captured: Vec<Option<Value>>,
}

/// Decodes a response body in one pass: the records where `selector` points (the elements
/// of an array there, or an object there as one record) into text columns, and the values
/// of `wanted` paths (a next link, a cursor, a total) as they are. A body that is not JSON
/// is one bad record (row 0) holding it, lossily and at most [`RAW_BODY_LIMIT`] bytes.
/// An object where the records belong is one record when `object_is_record` (a resource of
/// one page, such as `/me`); otherwise it is not what was looked for (`found` is false).
pub(crate) fn decode_body(
    bytes: &[u8],
    selector: &JsonPath,
    wanted: &[JsonPath],
    object_is_record: bool,
) -> Result<Body, String> {
    let steps = record_steps(selector);
    let mut walk = Walk {
        selector: steps,
        wanted,
        columns: Columns::default(),
        rows: Int64Builder::new(),
        bad: Vec::new(),
        ordinal: 0,
        lists: 0,
        nulls: 0,
        wrong: 0,
        captured: vec![None; wanted.len()],
        object_is_record,
    };
    // No body at all (204, or an empty 200): no records.
    if bytes.trim_ascii().is_empty() {
        let chunk = Columns::default().finish(arrow::array::Int64Array::from(Vec::<i64>::new()), Vec::new())?;
        return Ok(Body { chunk, found: true, absent: false, nulls: false, captured: vec![None; wanted.len()] });
    }
    let mut deserializer = serde_json::Deserializer::from_slice(bytes);
    let parsed = At { walk: &mut walk, location: &mut Vec::new() }
        .deserialize(&mut deserializer)
        .and_then(|()| deserializer.end());
    if let Err(err) = parsed {
        let chunk = Columns::default().finish(
            arrow::array::Int64Array::from(Vec::<i64>::new()),
            vec![BadRecord {
                row: 0,
                code: ErrorCode::JsonSyntax,
                message: format!("the response body is not JSON: {err}"),
                raw: Some(raw_body(bytes)),
            }],
        )?;
        return Ok(Body { chunk, found: false, absent: false, nulls: false, captured: vec![None; wanted.len()] });
    }
    // What the selector's places held: records (a list, or an object as one record), `null`,
    // or something else. One place (`data`): records are found, `null` or no place at all is
    // absent (the caller tells an empty answer from an error). Many (`orders[*].items`):
    // records or `null` in each is found (an order without items has none); anything else
    // in any of them, and the page is not what was looked for.
    let many = steps.iter().any(|s| matches!(s, PathStep::All));
    let Walk { columns, mut rows, bad, lists, nulls, wrong, captured, .. } = walk;
    let found = wrong == 0 && (lists > 0 || (many && nulls > 0));
    let absent = wrong == 0 && lists == 0 && (nulls == 0 || !many);
    Ok(Body { chunk: columns.finish(rows.finish(), bad)?, found, absent, nulls: nulls > 0, captured })
}

/// The steps of a selector down to where its records are: `x[*]` names the records of `x`
/// one by one, the same records as `x`.
pub(crate) fn record_steps(selector: &JsonPath) -> &[PathStep] {
    let mut steps = selector.steps.as_slice();
    while let [rest @ .., PathStep::All] = steps {
        steps = rest;
    }
    steps
}

/// The most of a body a whole-body quarantine row keeps.
pub(crate) const RAW_BODY_LIMIT: usize = 1 << 20;

/// A body as quarantine keeps it: text, at most [`RAW_BODY_LIMIT`] bytes.
pub(crate) fn raw_body(bytes: &[u8]) -> String {
    let cut = &bytes[..bytes.len().min(RAW_BODY_LIMIT)];
    let mut text = String::from_utf8_lossy(cut).into_owned();
    if bytes.len() > RAW_BODY_LIMIT {
        text.push_str("\n... (cut at 1 MiB)");
    }
    text
}

/// A place in a document.
#[derive(Debug, Clone)]
enum Place {
    Key(String),
    Index(usize),
}

/// How a place relates to a path.
#[derive(PartialEq, Eq)]
enum Relation {
    /// The path names this place.
    At,
    /// The path goes on below this place.
    Above,
    Elsewhere,
}

fn relation(steps: &[PathStep], location: &[Place]) -> Relation {
    if location.len() > steps.len() {
        return Relation::Elsewhere;
    }
    for (step, place) in steps.iter().zip(location) {
        let matches = match (step, place) {
            (PathStep::All, _) => true,
            (PathStep::Key(k), Place::Key(p)) => k == p,
            (PathStep::Index(i), Place::Index(p)) => usize::try_from(*i).is_ok_and(|i| i == *p),
            _ => false,
        };
        if !matches {
            return Relation::Elsewhere;
        }
    }
    if location.len() == steps.len() { Relation::At } else { Relation::Above }
}

/// The state of one pass over a body.
struct Walk<'p> {
    selector: &'p [PathStep],
    wanted: &'p [JsonPath],
    columns: Columns,
    rows: Int64Builder,
    bad: Vec<BadRecord>,
    /// Records seen so far (good or bad): the next one's number.
    ordinal: i64,
    /// The selector's places met that held records, `null`, and something else.
    lists: usize,
    nulls: usize,
    wrong: usize,
    captured: Vec<Option<Value>>,
    object_is_record: bool,
}

/// The steps of a wanted path a pass follows; from the first step that needs the whole
/// array (`[-1]`, `[*]`) on, the value there is kept and the rest of the path read in it.
fn anchor(steps: &[PathStep]) -> &[PathStep] {
    let cut = steps
        .iter()
        .position(|s| matches!(s, PathStep::All) || matches!(s, PathStep::Index(i) if *i < 0))
        .unwrap_or(steps.len());
    &steps[..cut]
}

/// What the rest of a wanted path (its steps after `depth`) names in `value`: its first
/// value that is not `null`; `null` when only nulls are there; `None` when nothing is.
fn read_in(value: &Value, path: &JsonPath, depth: usize) -> Option<Value> {
    let found = path.suffix(depth).select(value);
    match found.iter().find(|v| !v.is_null()) {
        Some(v) => Some((*v).clone()),
        None => found.first().map(|_| Value::Null),
    }
}

impl Walk<'_> {
    /// What to do at `location`: records here, a value to keep, a way down, or nothing.
    fn plan(&self, location: &[Place]) -> Plan {
        let selector = relation(self.selector, location);
        let wanted_at = |r: Relation| -> Vec<usize> {
            self.wanted
                .iter()
                .enumerate()
                .filter(|(_, w)| relation(anchor(&w.steps), location) == r)
                .map(|(i, _)| i)
                .collect()
        };
        let wanted = wanted_at(Relation::At);
        if selector == Relation::At {
            // Wanted values inside the records by position (`data[0].id`; `data[-1].id` is
            // anchored here already) are read from them too; a key below a lone-object
            // record is the record's own field, not the paginator's.
            let mut wanted = wanted;
            wanted.extend(wanted_at(Relation::Above).into_iter().filter(|&i| {
                matches!(self.wanted[i].steps.get(location.len()), Some(PathStep::Index(_) | PathStep::All))
            }));
            return Plan::Records(wanted);
        }
        if !wanted.is_empty() && selector == Relation::Elsewhere {
            return Plan::Capture(wanted);
        }
        let below = selector == Relation::Above || !wanted_at(Relation::Above).is_empty();
        if below { Plan::Descend } else { Plan::Skip }
    }

    fn record(&mut self, line: Line<'_>, raw: impl FnOnce() -> String) {
        self.ordinal += 1;
        match line {
            Line::Object(cells) => {
                self.columns.push_row(cells);
                self.rows.append_value(self.ordinal);
            }
            Line::Not(kind) => self.bad.push(BadRecord {
                row: self.ordinal,
                code: ErrorCode::JsonShape,
                message: format!("expected a JSON object as a record, found {kind}"),
                raw: Some(raw()),
            }),
        }
    }
}

enum Plan {
    /// The selector names this value: its elements (or itself, an object) are records;
    /// wanted paths naming it too are captured.
    Records(Vec<usize>),
    /// Wanted paths name this value: keep it.
    Capture(Vec<usize>),
    /// Something named lies below.
    Descend,
    Skip,
}

/// Visits the value at `location`.
struct At<'w, 'p> {
    walk: &'w mut Walk<'p>,
    location: &'w mut Vec<Place>,
}

impl<'de> DeserializeSeed<'de> for At<'_, '_> {
    type Value = ();

    fn deserialize<D: serde::Deserializer<'de>>(self, deserializer: D) -> Result<(), D::Error> {
        match self.walk.plan(self.location) {
            Plan::Skip => {
                IgnoredAny::deserialize(deserializer)?;
            }
            Plan::Capture(wanted) => {
                let value = Value::deserialize(deserializer)?;
                let depth = self.location.len();
                for index in wanted {
                    self.walk.captured[index] = read_in(&value, &self.walk.wanted[index], depth);
                }
            }
            Plan::Descend => deserializer.deserialize_any(Down { walk: self.walk, location: self.location })?,
            Plan::Records(wanted) if wanted.is_empty() => {
                deserializer.deserialize_any(Records { walk: self.walk })?;
            }
            Plan::Records(wanted) => {
                // Both records and a wanted value (rare: e.g. a total that is the array):
                // keep the value, then decode the records from it.
                let value = Value::deserialize(deserializer)?;
                let depth = self.location.len();
                for index in wanted {
                    self.walk.captured[index] = read_in(&value, &self.walk.wanted[index], depth);
                }
                Records { walk: self.walk }.visit_value(value).map_err(serde::de::Error::custom)?;
            }
        }
        Ok(())
    }
}

/// Goes down one level of an object or array.
struct Down<'w, 'p> {
    walk: &'w mut Walk<'p>,
    location: &'w mut Vec<Place>,
}

impl<'de> Visitor<'de> for Down<'_, '_> {
    type Value = ();

    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("any JSON value")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<(), A::Error> {
        while let Some(key) = map.next_key::<Cow<'de, str>>()? {
            self.location.push(Place::Key(key.into_owned()));
            map.next_value_seed(At { walk: self.walk, location: self.location })?;
            self.location.pop();
        }
        Ok(())
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<(), A::Error> {
        let mut index = 0;
        loop {
            self.location.push(Place::Index(index));
            let more = seq.next_element_seed(At { walk: self.walk, location: self.location })?;
            self.location.pop();
            if more.is_none() {
                return Ok(());
            }
            index += 1;
        }
    }

    // Scalars where something was looked for below: nothing is there.
    fn visit_unit<E>(self) -> Result<(), E> {
        Ok(())
    }
    fn visit_bool<E>(self, _: bool) -> Result<(), E> {
        Ok(())
    }
    fn visit_i64<E>(self, _: i64) -> Result<(), E> {
        Ok(())
    }
    fn visit_u64<E>(self, _: u64) -> Result<(), E> {
        Ok(())
    }
    fn visit_f64<E>(self, _: f64) -> Result<(), E> {
        Ok(())
    }
    fn visit_str<E>(self, _: &str) -> Result<(), E> {
        Ok(())
    }
}

/// The value the selector names: an array of records, or one record.
struct Records<'w, 'p> {
    walk: &'w mut Walk<'p>,
}

impl Records<'_, '_> {
    /// The same, from a value already parsed.
    fn visit_value(self, value: Value) -> Result<(), String> {
        let items = match value {
            Value::Array(items) => items,
            // As the streaming visitor: `null` is nothing there, a scalar is not records.
            Value::Null => {
                self.walk.nulls += 1;
                return Ok(());
            }
            Value::Object(_) if !self.walk.object_is_record => {
                self.walk.wrong += 1;
                return Ok(());
            }
            Value::Object(_) => vec![value],
            _ => {
                self.walk.wrong += 1;
                return Ok(());
            }
        };
        self.walk.lists += 1;
        for item in items {
            let text = item.to_string();
            let line = parse_line(&text, &self.walk.columns).map_err(|e| e.to_string())?;
            let line = match line {
                Line::Object(cells) => {
                    Line::Object(cells.into_iter().map(|(k, c)| (own_key(k), c.map(Text::into_owned))).collect())
                }
                Line::Not(kind) => Line::Not(kind),
            };
            self.walk.record(line, || text.clone());
        }
        Ok(())
    }
}

fn own_key(key: Key<'_>) -> Key<'static> {
    match key {
        Key::Known(column) => Key::Known(column),
        Key::New(name) => Key::New(Cow::Owned(name.into_owned())),
    }
}

impl<'de> Visitor<'de> for Records<'_, '_> {
    type Value = ();

    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("records: an array of objects, or an object")
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<(), A::Error> {
        self.walk.lists += 1;
        while let Some(element) = seq.next_element_seed(Element { columns: &self.walk.columns })? {
            let (line, raw) = element;
            self.walk.record(line, || raw.unwrap_or_default());
        }
        Ok(())
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<(), A::Error> {
        if !self.walk.object_is_record {
            self.walk.wrong += 1;
            while map.next_entry::<IgnoredAny, IgnoredAny>()?.is_some() {}
            return Ok(());
        }
        self.walk.lists += 1;
        let line = LineVisitor { columns: &self.walk.columns }.visit_map(map)?;
        self.walk.record(line, String::new);
        Ok(())
    }

    // `null` where the records belong: nothing there (an empty list as some encoders write
    // it, or beside an error: the caller tells).
    fn visit_unit<E>(self) -> Result<(), E> {
        self.walk.nulls += 1;
        Ok(())
    }

    // Not records: the selector names a scalar. Nothing is found.
    fn visit_bool<E>(self, _: bool) -> Result<(), E> {
        self.walk.wrong += 1;
        Ok(())
    }
    fn visit_i64<E>(self, _: i64) -> Result<(), E> {
        self.walk.wrong += 1;
        Ok(())
    }
    fn visit_u64<E>(self, _: u64) -> Result<(), E> {
        self.walk.wrong += 1;
        Ok(())
    }
    fn visit_f64<E>(self, _: f64) -> Result<(), E> {
        self.walk.wrong += 1;
        Ok(())
    }
    fn visit_str<E>(self, _: &str) -> Result<(), E> {
        self.walk.wrong += 1;
        Ok(())
    }
}

/// One element of a records array: its cells, or what it is instead (with its JSON text).
struct Element<'a> {
    columns: &'a Columns,
}

impl<'de> DeserializeSeed<'de> for Element<'_> {
    type Value = (Line<'de>, Option<String>);

    fn deserialize<D: serde::Deserializer<'de>>(self, deserializer: D) -> Result<Self::Value, D::Error> {
        deserializer.deserialize_any(ElementVisitor { columns: self.columns })
    }
}

struct ElementVisitor<'a> {
    columns: &'a Columns,
}

impl<'de> Visitor<'de> for ElementVisitor<'_> {
    type Value = (Line<'de>, Option<String>);

    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("a record")
    }

    fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<Self::Value, A::Error> {
        Ok((LineVisitor { columns: self.columns }.visit_map(map)?, None))
    }

    fn visit_seq<A: SeqAccess<'de>>(self, seq: A) -> Result<Self::Value, A::Error> {
        let value = Value::deserialize(SeqAccessDeserializer::new(seq))?;
        Ok((Line::Not("an array"), Some(value.to_string())))
    }

    fn visit_unit<E>(self) -> Result<Self::Value, E> {
        Ok((Line::Not("null"), Some("null".to_owned())))
    }

    fn visit_bool<E>(self, v: bool) -> Result<Self::Value, E> {
        Ok((Line::Not("a boolean"), Some(v.to_string())))
    }

    fn visit_i64<E>(self, v: i64) -> Result<Self::Value, E> {
        Ok((Line::Not("a number"), Some(v.to_string())))
    }

    fn visit_u64<E>(self, v: u64) -> Result<Self::Value, E> {
        Ok((Line::Not("a number"), Some(v.to_string())))
    }

    fn visit_f64<E>(self, v: f64) -> Result<Self::Value, E> {
        Ok((Line::Not("a number"), Some(Value::from(v).to_string())))
    }

    fn visit_str<E>(self, v: &str) -> Result<Self::Value, E> {
        Ok((Line::Not("a string"), Some(Value::from(v).to_string())))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use arrow::array::{Array, StringArray};

    fn path(text: &str) -> JsonPath {
        JsonPath::parse(text).unwrap()
    }

    fn column(chunk: &RawChunk, name: &str) -> Vec<Option<String>> {
        let column = chunk.batch.column_by_name(name).unwrap().as_any().downcast_ref::<StringArray>().unwrap();
        (0..column.len()).map(|i| column.is_valid(i).then(|| column.value(i).to_owned())).collect()
    }

    proptest::proptest! {
        #[test]
        fn keys_compare_as_their_bytes_do(
            a in proptest::collection::vec(proptest::sample::select(vec![b'a', b'b', 0xc3]), 0..30),
            change in proptest::option::of((0usize..30, proptest::sample::select(vec![b'a', b'b', b'c']))),
            longer in proptest::option::of(proptest::sample::select(vec![b'a', b'b'])),
        ) {
            let mut b = a.clone();
            if let Some((at, byte)) = change && at < b.len() {
                b[at] = byte;
            }
            b.extend(longer);
            proptest::prop_assert_eq!(same_key(&a, &b), a == b);
            proptest::prop_assert!(same_key(&a, &a));
        }
    }

    #[test]
    fn rows_reuse_one_allocation_and_keys_in_any_order_land_in_their_columns() {
        let mut columns = Columns::default();
        let mut pointers = Vec::new();
        for line in [r#"{"a":1,"b":"x"}"#, r#"{"b":"y","a":2}"#, r#"{"a":3,"c":true,"a":4}"#, r#"{"c":false}"#] {
            let Ok(Line::Object(cells)) = parse_line(line, &columns) else { panic!("{line}") };
            pointers.push(cells.as_ptr() as usize);
            columns.push_row(cells);
        }
        // Every row reuses the first row's cells.
        assert!(pointers.iter().all(|p| *p == pointers[0]), "{pointers:?}");
        let chunk = columns.finish(arrow::array::Int64Array::from(vec![1, 2, 3, 4]), Vec::new()).unwrap();
        assert_eq!(column(&chunk, "a"), [Some("1".into()), Some("2".into()), Some("4".into()), None]);
        assert_eq!(column(&chunk, "b"), [Some("x".into()), Some("y".into()), None, None]);
        assert_eq!(column(&chunk, "c"), [None, None, Some("true".into()), Some("false".into())]);
    }

    #[test]
    fn records_and_wanted_values_in_one_pass() {
        let body = br#"{"meta": {"total": 3, "skip": [1,2]}, "data": [{"id": 1, "tags": ["a"]}, "oops", {"id": "2", "x": {"y": null}}], "links": {"next": "http://h/p?page=2"}}"#;
        let wanted = [path("links.next"), path("meta.total"), path("absent.path")];
        let decoded = decode_body(body, &path("data"), &wanted, false).unwrap();
        assert!(decoded.found);
        assert_eq!(column(&decoded.chunk, "id"), vec![Some("1".into()), Some("2".into())]);
        assert_eq!(column(&decoded.chunk, "tags"), vec![Some(r#"["a"]"#.into()), None]);
        assert_eq!(column(&decoded.chunk, "x"), vec![None, Some(r#"{"y":null}"#.into())]);
        assert_eq!(decoded.chunk.rows.values(), &[1, 3]);
        assert_eq!(decoded.chunk.bad.len(), 1);
        assert_eq!((decoded.chunk.bad[0].row, decoded.chunk.bad[0].code), (2, ErrorCode::JsonShape));
        assert_eq!(decoded.chunk.bad[0].raw.as_deref(), Some(r#""oops""#));
        assert_eq!(decoded.captured, vec![Some(Value::from("http://h/p?page=2")), Some(Value::from(3)), None]);
    }

    #[test]
    fn wanted_values_inside_the_records_and_from_the_end() {
        let body = br#"{"data": [{"id": "a"}, {"id": "b"}], "pages": [1, 2, 3], "next": null}"#;
        let wanted = [path("data[-1].id"), path("pages[-1]"), path("next"), path("data[0].id"), path("nope")];
        let decoded = decode_body(body, &path("data"), &wanted, false).unwrap();
        assert_eq!(decoded.chunk.batch.num_rows(), 2);
        assert_eq!(
            decoded.captured,
            vec![Some(Value::from("b")), Some(Value::from(3)), Some(Value::Null), Some(Value::from("a")), None]
        );
        // A lone object as the record: its own `next` is data, not a next page.
        let decoded = decode_body(br#"{"id": 1, "next": "2024-06-01"}"#, &path("$"), &[path("next")], true).unwrap();
        assert_eq!((decoded.chunk.batch.num_rows(), decoded.captured.clone()), (1, vec![None]));
    }

    #[test]
    fn nothing_where_the_records_belong() {
        // No body at all: an empty page.
        for body in [&b""[..], b" \n"] {
            let decoded = decode_body(body, &path("data"), &[path("data[-1].id")], false).unwrap();
            assert!(decoded.found && !decoded.absent, "{body:?}");
            assert_eq!((decoded.chunk.batch.num_rows(), decoded.chunk.bad.len()), (0, 0));
        }
        // Not there (left out, `null`, or an error object): absent, not found; the caller
        // tells an empty answer from an error.
        for (body, wanted) in [
            (&br#"{"message": "unavailable"}"#[..], vec![]),
            (br#"{"data": null, "next": null}"#, vec![path("data[-1].id")]),
            (br#"{"data": null, "next": null}"#, vec![]),
        ] {
            let decoded = decode_body(body, &path("data"), &wanted, false).unwrap();
            assert!(!decoded.found && decoded.absent, "{body:?}");
            assert_eq!((decoded.chunk.batch.num_rows(), decoded.chunk.bad.len()), (0, 0));
        }
        // Something else there: not found, not absent.
        let decoded = decode_body(br#"{"data": "nope"}"#, &path("data"), &[path("data[-1].id")], false).unwrap();
        assert!(!decoded.found && !decoded.absent && decoded.chunk.bad.is_empty());
    }

    #[test]
    fn root_arrays_wildcards_and_single_objects() {
        let decoded = decode_body(br#"[{"a":1},{"a":2}]"#, &path("$"), &[], true).unwrap();
        assert_eq!(column(&decoded.chunk, "a"), vec![Some("1".into()), Some("2".into())]);
        let decoded = decode_body(br#"[{"a":1},{"a":2}]"#, &path("$[*]"), &[], true).unwrap();
        assert_eq!(decoded.chunk.batch.num_rows(), 2);
        let nested = br#"{"pages": [{"items": [{"a": 1}]}, {"items": [{"a": 2}, {"a": 3}]}]}"#;
        let decoded = decode_body(nested, &path("pages[*].items"), &[], true).unwrap();
        assert_eq!(column(&decoded.chunk, "a"), vec![Some("1".into()), Some("2".into()), Some("3".into())]);
        // Many places: `null` in one of them is none there, wherever it comes; all `null` is
        // an empty page; anything else in one of them is not records.
        for body in [
            &br#"{"pages": [{"items": [{"a": 1}]}, {"items": null}]}"#[..],
            br#"{"pages": [{"items": null}, {"items": [{"a": 1}]}, {"other": 1}]}"#,
        ] {
            let decoded = decode_body(body, &path("pages[*].items"), &[], false).unwrap();
            assert!(decoded.found && !decoded.absent, "{body:?}");
            assert_eq!(column(&decoded.chunk, "a"), vec![Some("1".into())]);
        }
        let decoded = decode_body(br#"{"pages": [{"items": null}]}"#, &path("pages[*].items"), &[], false).unwrap();
        assert!(decoded.found && !decoded.absent && decoded.chunk.batch.num_rows() == 0);
        let decoded =
            decode_body(br#"{"pages": [{"items": [{"a": 1}]}, {"items": "x"}]}"#, &path("pages[*].items"), &[], false)
                .unwrap();
        assert!(!decoded.found && !decoded.absent);
        let decoded = decode_body(br#"{"data": {"id": 7}}"#, &path("data"), &[], true).unwrap();
        assert_eq!(column(&decoded.chunk, "id"), vec![Some("7".into())]);
        let decoded = decode_body(br#"{"data": "nope"}"#, &path("data"), &[], true).unwrap();
        assert!(!decoded.found);
        // A list resource with an object where its records belong: not records.
        let decoded = decode_body(br#"{"data": {"oops": 1}}"#, &path("data"), &[], false).unwrap();
        assert!(!decoded.found && decoded.chunk.batch.num_rows() == 0);
        let decoded = decode_body(br#"{"other": []}"#, &path("data"), &[], true).unwrap();
        assert!(!decoded.found);
    }

    #[test]
    fn a_body_that_is_not_json_is_one_bad_record() {
        for body in [&br#"{"data": [ {"id": 1,, }"#[..], b"<html>oops</html>", br#"{"data": [{"id": 1}"#] {
            let decoded = decode_body(body, &path("data"), &[path("next")], false).unwrap();
            assert_eq!(decoded.chunk.batch.num_rows(), 0);
            assert_eq!(decoded.chunk.bad.len(), 1);
            assert_eq!((decoded.chunk.bad[0].row, decoded.chunk.bad[0].code), (0, ErrorCode::JsonSyntax));
            assert_eq!(decoded.chunk.bad[0].raw.as_deref(), Some(String::from_utf8_lossy(body).as_ref()));
            assert!(!decoded.found);
        }
    }
}
