//! Which columns a table's data files keep statistics for, and what the table declares so
//! that readers look for them.
//!
//! Delta's rule is the first `delta.dataSkippingNumIndexedCols` (32) columns. Readers filter
//! on columns that often sit past them: inlet's metadata columns (`_ingested_at`,
//! `_load_id`, ...) come last, and a key, sequence or cursor column can be anywhere. Such a
//! table gets `delta.dataSkippingStatsColumns` (the first N data columns and those): the
//! writer keeps their statistics, and every reader that builds its statistics schema from
//! the table's properties (delta-rs, DuckDB's kernel, Spark) finds them. Without the
//! property readers take the first N and ignore the rest.

use arrow::datatypes::{DataType, Field, Schema};

/// The columns readers filter on that the first-N rule leaves out: metadata columns and
/// `filter_columns`, in schema order, partition columns aside (they are in every file's
/// partition values). And the first N data columns.
fn split<'a>(
    schema: &'a Schema,
    indexed: usize,
    partition_by: &[String],
    filter_columns: &[String],
) -> (Vec<&'a Field>, Vec<&'a Field>) {
    let data: Vec<&Field> =
        schema.fields().iter().map(AsRef::as_ref).filter(|f| !partition_by.contains(f.name())).collect();
    let (first, rest) = data.split_at(indexed.min(data.len()));
    let left_out = rest
        .iter()
        .copied()
        .filter(|f| filter_columns.contains(f.name()) || crate::schema::is_metadata_column(f.name()))
        .collect();
    (first.to_vec(), left_out)
}

/// The columns the table should declare in `delta.dataSkippingStatsColumns`, as paths: with
/// a list declared, that list and the columns readers filter on it lacks; with none, when
/// the first-N rule (`indexed`; `None` is every column) leaves out a column readers filter
/// on, the first N data columns and those. `None`: no list, the first-N rule holds.
fn wanted_paths(
    schema: &Schema,
    indexed: Option<usize>,
    declared: Option<&[Vec<String>]>,
    partition_by: &[String],
    filter_columns: &[String],
) -> Option<Vec<Vec<String>>> {
    let path = |f: &&Field| eligible_paths(f);
    match declared {
        Some(declared) => {
            let missing = schema
                .fields()
                .iter()
                .map(AsRef::as_ref)
                .filter(|f| {
                    !partition_by.contains(f.name())
                        && (filter_columns.contains(f.name()) || crate::schema::is_metadata_column(f.name()))
                })
                .filter(|f| !declared.iter().any(|p| p.first() == Some(f.name())))
                .flat_map(|f| path(&f));
            // What Spark would refuse goes: a column not in the schema, a partition column,
            // or one with no min and max (a struct stays as its eligible leaves).
            let kept = declared.iter().flat_map(|declared_path| {
                if declared_path.first().is_some_and(|column| partition_by.contains(column)) {
                    return Vec::new();
                }
                let Some(field) = find(schema.fields().iter().map(AsRef::as_ref), declared_path) else {
                    return Vec::new();
                };
                let parent = &declared_path[..declared_path.len() - 1];
                eligible_paths(field).into_iter().map(|leaf| [parent, leaf.as_slice()].concat()).collect()
            });
            Some(kept.chain(missing).collect())
        }
        None => {
            let (first, left_out) = split(schema, indexed?, partition_by, filter_columns);
            let left_out: Vec<Vec<String>> = left_out.iter().flat_map(path).collect();
            (!left_out.is_empty()).then(|| first.iter().flat_map(path).chain(left_out).collect())
        }
    }
}

/// The paths of `field` a `delta.dataSkippingStatsColumns` list may name: Spark refuses a
/// list naming a column that has no min/max to skip files by (only numbers, dates,
/// timestamps and strings have; a struct stands for its leaves), so booleans, binaries,
/// lists and maps are left out, and a struct is named by its eligible leaves.
fn eligible_paths(field: &Field) -> Vec<Vec<String>> {
    fn walk(field: &Field, prefix: &mut Vec<String>, out: &mut Vec<Vec<String>>) {
        prefix.push(field.name().clone());
        match field.data_type() {
            DataType::Struct(children) => children.iter().for_each(|child| walk(child, prefix, out)),
            data_type if skips_files(data_type) => out.push(prefix.clone()),
            _ => {}
        }
        prefix.pop();
    }
    let mut out = Vec::new();
    walk(field, &mut Vec::new(), &mut out);
    out
}

/// Whether readers keep a min and max of this type (Delta's data-skipping types).
fn skips_files(data_type: &DataType) -> bool {
    match data_type {
        DataType::Dictionary(_, values) => skips_files(values),
        data_type => {
            data_type.is_numeric()
                || matches!(
                    data_type,
                    DataType::Date32
                        | DataType::Date64
                        | DataType::Timestamp(..)
                        | DataType::Utf8
                        | DataType::LargeUtf8
                        | DataType::Utf8View
                )
        }
    }
}

/// The columns a data file keeps statistics for, as the leaf names delta-rs' writer matches
/// (quoted): the leaves of the columns the table declares, or should declare
/// ([`stats_property`]). `None`: the first-N rule as delta-rs applies it.
pub(super) fn stats_columns(
    schema: &Schema,
    indexed: Option<usize>,
    declared: Option<&[Vec<String>]>,
    partition_by: &[String],
    filter_columns: &[String],
) -> Option<Vec<String>> {
    let paths = wanted_paths(schema, indexed, declared, partition_by, filter_columns)?;
    let mut names = Vec::new();
    for path in &paths {
        if let Some(field) = find(schema.fields().iter().map(AsRef::as_ref), path) {
            leaves(field, &mut names);
        }
    }
    Some(names)
}

/// The `delta.dataSkippingStatsColumns` the table should have, when it differs from what it
/// declares (`declared`). `None`: nothing to change.
pub(super) fn stats_property(
    schema: &Schema,
    indexed: Option<usize>,
    declared: Option<&[Vec<String>]>,
    partition_by: &[String],
    filter_columns: &[String],
) -> Option<String> {
    let paths = wanted_paths(schema, indexed, declared, partition_by, filter_columns)?;
    if declared == Some(paths.as_slice()) {
        return None;
    }
    let column = |path: &Vec<String>| path.iter().map(|part| quote(part)).collect::<Vec<_>>().join(".");
    Some(paths.iter().map(column).collect::<Vec<_>>().join(","))
}

/// A column name as Delta's column lists spell it: bare when it is letters, digits and
/// underscores, else in backticks (a backtick doubled).
fn quote(name: &str) -> String {
    if !name.is_empty() && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
        name.to_owned()
    } else {
        format!("`{}`", name.replace('`', "``"))
    }
}

fn find<'a>(mut fields: impl Iterator<Item = &'a Field>, path: &[String]) -> Option<&'a Field> {
    let (head, rest) = path.split_first()?;
    let field = fields.find(|f| f.name() == head)?;
    if rest.is_empty() {
        return Some(field);
    }
    match field.data_type() {
        DataType::Struct(children) => find(children.iter().map(AsRef::as_ref), rest),
        _ => None,
    }
}

fn leaves(field: &Field, out: &mut Vec<String>) {
    match field.data_type() {
        DataType::Struct(children) => children.iter().for_each(|child| leaves(child, out)),
        _ => out.push(format!("\"{}\"", field.name().replace('"', "\"\""))),
    }
}

#[cfg(test)]
mod tests {
    use arrow::datatypes::{DataType, Field, Fields, Schema};

    use super::{stats_columns, stats_property};

    fn schema() -> Schema {
        let mut fields: Vec<Field> = (1..=4).map(|i| Field::new(format!("c{i}"), DataType::Utf8, true)).collect();
        fields.push(Field::new(
            "nested",
            DataType::Struct(Fields::from(vec![Field::new("x", DataType::Int64, true)])),
            true,
        ));
        fields.push(Field::new("key", DataType::Int64, true));
        fields.push(Field::new("odd name`", DataType::Int64, true));
        fields.push(Field::new("_ingested_at", DataType::Int64, true));
        Schema::new(fields)
    }

    #[test]
    fn columns_readers_filter_on_keep_stats_past_the_first_n() {
        let schema = schema();
        let key = ["key".to_owned()];
        assert_eq!(
            stats_columns(&schema, Some(2), None, &[], &key),
            Some(vec!["\"c1\"".into(), "\"c2\"".into(), "\"key\"".into(), "\"_ingested_at\"".into()])
        );
        // A partition column takes no slot; a struct's leaves are named.
        let with_struct = stats_columns(&schema, Some(5), None, &["c1".to_owned()], &[]).unwrap();
        assert!(
            with_struct.contains(&"\"x\"".to_owned()) && !with_struct.contains(&"\"c1\"".to_owned()),
            "{with_struct:?}"
        );
        assert_eq!(stats_columns(&schema, Some(32), None, &[], &key), None);
        assert_eq!(stats_columns(&schema, None, None, &[], &key), None);
        // A declared list rules, whatever N says: its columns' leaves (a column it names that
        // is gone is no more), and the filtered columns it lacks.
        let declared = [vec!["nested".to_owned()], vec!["odd name`".to_owned()], vec!["gone".to_owned()]];
        assert_eq!(
            stats_columns(&schema, Some(2), Some(&declared), &[], &key),
            Some(vec!["\"x\"".into(), "\"odd name`\"".into(), "\"key\"".into(), "\"_ingested_at\"".into()])
        );
        // Spark refuses a list naming a column that is gone: the property drops it.
        assert_eq!(
            stats_property(&schema, Some(2), Some(&declared), &[], &key).unwrap(),
            "nested.x,`odd name```,key,_ingested_at"
        );
    }

    #[test]
    fn the_property_declares_the_first_n_and_the_filtered_columns_once() {
        let schema = schema();
        let key = ["key".to_owned()];
        let property = stats_property(&schema, Some(2), None, &[], &key).unwrap();
        assert_eq!(property, "c1,c2,key,_ingested_at");
        // Nothing past N is filtered on: nothing to declare.
        assert_eq!(stats_property(&schema, Some(32), None, &[], &key), None);
        // A declared list gets what it lacks, quoted; once it has it, nothing changes.
        let declared = [vec!["nested".to_owned(), "x".to_owned()], vec!["key".to_owned()]];
        let odd = ["odd name`".to_owned()];
        assert_eq!(
            stats_property(&schema, Some(2), Some(&declared), &[], &odd).unwrap(),
            "nested.x,key,`odd name```,_ingested_at"
        );
        let full = [vec!["c1".to_owned()], vec!["odd name`".to_owned()], vec!["_ingested_at".to_owned()]];
        assert_eq!(stats_property(&schema, Some(2), Some(&full), &[], &odd), None);
    }

    /// Spark refuses a list naming a column it keeps no min/max for (a boolean, a binary, a
    /// list, a map), so the property leaves those out and names a struct by its eligible leaves.
    #[test]
    fn the_property_names_only_columns_with_min_and_max() {
        let inner = Fields::from(vec![
            Field::new("n", DataType::Int32, true),
            Field::new("flag", DataType::Boolean, true),
            Field::new("at", DataType::Timestamp(arrow::datatypes::TimeUnit::Microsecond, Some("UTC".into())), true),
        ]);
        let schema = Schema::new(vec![
            Field::new("flag", DataType::Boolean, true),
            Field::new("blob", DataType::Binary, true),
            Field::new("tags", DataType::List(Field::new("item", DataType::Utf8, true).into()), true),
            Field::new("s", DataType::Struct(inner), true),
            Field::new("day", DataType::Date32, true),
            Field::new("key", DataType::Utf8, true),
            Field::new("done", DataType::Boolean, true),
        ]);
        let key = ["key".to_owned(), "done".to_owned()];
        assert_eq!(stats_property(&schema, Some(5), None, &[], &key).unwrap(), "s.n,s.at,day,key");
        // A list declared before (by an older inlet, or by hand) loses what Spark refuses.
        let declared = [vec!["flag".to_owned()], vec!["s".to_owned()], vec!["key".to_owned()], vec!["tags".to_owned()]];
        assert_eq!(stats_property(&schema, Some(5), Some(&declared), &[], &key).unwrap(), "s.n,s.at,key");
        // Only an ineligible column past N is filtered on: no list is needed.
        assert_eq!(stats_property(&schema, Some(5), None, &[], &["done".to_owned()]), None);
        assert_eq!(
            stats_columns(&schema, Some(5), None, &[], &key).unwrap(),
            vec!["\"n\"".to_owned(), "\"at\"".to_owned(), "\"day\"".to_owned(), "\"key\"".to_owned()]
        );
    }
}
