//! The table graph: which tables a derived table reads, found in its SQL, and the order
//! that follows.
//!
//! Sources' targets (bronze) are roots; every `[tables]` entry depends on the tables its
//! query names (`<layer>.<name>`, CTEs excluded). Unknown tables and cycles are errors
//! naming the table. Selection follows dbt: `t+` is `t` and its descendants, `+t` is `t`
//! and its ancestors.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::path::Path;

use deltalake::datafusion::common::TableReference;
use deltalake::datafusion::sql::parser::{DFParser, Statement as DfStatement};
use deltalake::datafusion::sql::resolve::resolve_table_references;
use deltalake::datafusion::sql::sqlparser::ast::Statement;
use deltalake::datafusion::sql::sqlparser::dialect::GenericDialect;
use deltalake::datafusion::sql::sqlparser::parser::Parser;

use crate::config::{PipelineConfig, TableConfig, TableName, resolve_path};
use crate::error::{EngineError, Result};

/// Parses a query: exactly one `SELECT` (or `WITH ... SELECT`, `VALUES`, set operation).
pub fn parse_query(sql: &str) -> std::result::Result<DfStatement, String> {
    let mut statements = DFParser::parse_sql(sql).map_err(|e| e.to_string())?;
    if statements.len() != 1 {
        return Err(format!("expected one query, found {} statements", statements.len()));
    }
    let statement = statements.pop_front().ok_or_else(|| "empty query".to_owned())?;
    match &statement {
        DfStatement::Statement(inner) if matches!(inner.as_ref(), Statement::Query(_)) => Ok(statement),
        _ => Err("expected a query (SELECT ...), not another kind of statement".to_owned()),
    }
}

/// Parses a boolean SQL condition such as `status = 'deleted'`.
pub fn parse_condition(sql: &str) -> std::result::Result<(), String> {
    let mut parser = Parser::new(&GenericDialect {}).try_with_sql(sql).map_err(|e| e.to_string())?;
    parser.parse_expr().map_err(|e| e.to_string())?;
    if parser.peek_token().token != deltalake::datafusion::sql::sqlparser::tokenizer::Token::EOF {
        return Err(format!("unexpected `{}` after the condition", parser.peek_token().token));
    }
    Ok(())
}

/// The `<layer>.<name>` tables a query reads, sorted.
pub fn references(sql: &str) -> std::result::Result<Vec<String>, String> {
    let statement = parse_query(sql)?;
    let (tables, _ctes) = resolve_table_references(&statement, true).map_err(|e| e.to_string())?;
    let mut names = BTreeSet::new();
    for table in tables {
        match &table {
            TableReference::Partial { schema, table } => {
                names.insert(format!("{schema}.{table}"));
            }
            other => {
                return Err(format!("table `{other}`: name tables as `<layer>.<name>`, e.g. `bronze.orders`"));
            }
        }
    }
    Ok(names.into_iter().collect())
}

/// What a node of the graph is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NodeKind {
    /// The target of a source (or its quarantine table).
    Source { source: String },
    /// A derived table with its query.
    Table { sql: String },
}

/// The table graph of a pipeline.
#[derive(Debug, Clone)]
pub struct Dag {
    nodes: BTreeMap<String, NodeKind>,
    /// Upstream tables of each node.
    upstream: BTreeMap<String, BTreeSet<String>>,
    /// Tables a table's `relationships` expectations read: they run first, too.
    checked: BTreeMap<String, BTreeSet<String>>,
    /// Derived tables, upstream before downstream (ties by name).
    order: Vec<String>,
}

impl Dag {
    /// Reads the `sql_file`s of `config` (relative to `base_dir`) and builds the graph.
    pub fn load(config: &PipelineConfig, base_dir: &Path) -> Result<Dag> {
        let mut queries = BTreeMap::new();
        for (name, table) in &config.tables {
            queries.insert(name.clone(), query_text(name, table, base_dir)?);
        }
        Dag::build(config, &queries)
            .map_err(|problems| EngineError::Config { path: base_dir.join("inlet.toml"), message: problems.join("\n") })
    }

    /// Builds the graph from each derived table's query text; all problems at once.
    pub fn build(config: &PipelineConfig, queries: &BTreeMap<String, String>) -> std::result::Result<Dag, Vec<String>> {
        let mut nodes = BTreeMap::new();
        for (name, source) in &config.sources {
            if let Some(target) = TableName::parse(source.target()) {
                nodes.insert(target.to_string(), NodeKind::Source { source: name.clone() });
                nodes.insert(target.quarantine().to_string(), NodeKind::Source { source: name.clone() });
            }
        }
        for (name, sql) in queries {
            nodes.insert(name.clone(), NodeKind::Table { sql: sql.clone() });
        }
        let mut problems = Vec::new();
        // `relationships` expectations read their target when they run: it must exist.
        let expectations =
            config.sources.iter().map(|(name, source)| (format!("sources.{name}"), source.expect())).chain(
                config.tables.iter().map(|(name, table)| (format!("tables.\"{name}\""), table.expect.as_slice())),
            );
        let mut checked: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
        for (owner, list) in expectations {
            for expectation in list {
                let Ok(inlet_quality::Kind::Relationships { table, .. }) = expectation.kind() else {
                    continue;
                };
                if !nodes.contains_key(&table) {
                    problems.push(format!(
                        "`{owner}.expect` (`{}`): `to` names `{table}`, which is neither a source target nor a table of this pipeline",
                        expectation.name
                    ));
                } else if let Some(name) = owner.strip_prefix("tables.\"").and_then(|o| o.strip_suffix('"')) {
                    checked.entry(name.to_owned()).or_default().insert(table);
                }
            }
        }
        let mut upstream: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
        for (name, sql) in queries {
            let mut inputs = BTreeSet::new();
            match references(sql) {
                Ok(tables) => {
                    for table in tables {
                        if table == *name {
                            problems.push(format!("`tables.\"{name}\"`: the query reads the table itself"));
                        } else if nodes.contains_key(&table) {
                            inputs.insert(table);
                        } else {
                            problems.push(format!(
                                "`tables.\"{name}\"`: the query reads `{table}`, which is neither a source target nor a table of this pipeline"
                            ));
                        }
                    }
                }
                Err(message) => problems.push(format!("`tables.\"{name}\"`: {message}")),
            }
            upstream.insert(name.clone(), inputs);
        }
        if !problems.is_empty() {
            return Err(problems);
        }
        let mut depends = upstream.clone();
        for (table, targets) in &checked {
            depends.entry(table.clone()).or_default().extend(targets.iter().cloned());
        }
        let order = topological(queries.keys(), &depends)
            .map_err(|cycle| vec![format!("tables form a cycle: {}", cycle.join(" -> "))])?;
        Ok(Dag { nodes, upstream, checked, order })
    }

    /// Derived tables in run order.
    pub fn order(&self) -> &[String] {
        &self.order
    }

    /// What `name` is, if it is in the graph.
    pub fn node(&self, name: &str) -> Option<&NodeKind> {
        self.nodes.get(name)
    }

    /// The tables `name` reads directly.
    pub fn upstream(&self, name: &str) -> impl Iterator<Item = &String> {
        self.upstream.get(name).into_iter().flatten()
    }

    /// What must be up to date before `name` runs: the tables it reads, and those its
    /// `relationships` expectations look values up in.
    pub fn depends_on(&self, name: &str) -> impl Iterator<Item = &String> {
        self.upstream(name).chain(
            self.checked
                .get(name)
                .into_iter()
                .flatten()
                .filter(move |t| !self.upstream.get(name).is_some_and(|inputs| inputs.contains(*t))),
        )
    }

    /// Derived tables that read `name` directly.
    pub fn downstream<'a>(&'a self, name: &'a str) -> impl Iterator<Item = &'a String> {
        self.upstream.iter().filter(move |(_, inputs)| inputs.contains(name)).map(|(table, _)| table)
    }

    /// Tables chosen by dbt-style selectors (`t`, `t+`, `+t`, `+t+`); every table when empty.
    pub fn select(&self, selectors: &[String]) -> std::result::Result<BTreeSet<String>, String> {
        if selectors.is_empty() {
            return Ok(self.nodes.keys().cloned().collect());
        }
        let mut chosen = BTreeSet::new();
        for selector in selectors {
            let ancestors = selector.starts_with('+');
            let descendants = selector.ends_with('+');
            let name = selector.trim_matches('+');
            if !self.nodes.contains_key(name) {
                return Err(format!("`{selector}`: no source target or table named `{name}`"));
            }
            chosen.insert(name.to_owned());
            if ancestors {
                chosen.extend(self.closure(name, |n| self.depends_on(n).cloned().collect()));
            }
            if descendants {
                chosen.extend(self.closure(name, |n| self.downstream(n).cloned().collect()));
            }
        }
        Ok(chosen)
    }

    fn closure(&self, start: &str, next: impl Fn(&str) -> Vec<String>) -> BTreeSet<String> {
        let mut seen = BTreeSet::new();
        let mut queue = VecDeque::from([start.to_owned()]);
        while let Some(node) = queue.pop_front() {
            for n in next(&node) {
                if seen.insert(n.clone()) {
                    queue.push_back(n);
                }
            }
        }
        seen
    }

    /// The graph as text, Graphviz dot or Mermaid.
    pub fn render(&self, format: PlanFormat) -> String {
        let edges: Vec<(&String, &String)> =
            self.order.iter().flat_map(|t| self.upstream(t).map(move |u| (u, t))).collect();
        let used: BTreeSet<&String> = edges.iter().flat_map(|(a, b)| [*a, *b]).chain(&self.order).collect();
        match format {
            PlanFormat::Text => {
                let mut out = String::new();
                for (step, table) in self.order.iter().enumerate() {
                    let inputs: Vec<&str> = self.upstream(table).map(String::as_str).collect();
                    out.push_str(&format!("{:>3}. {table} <- {}\n", step + 1, inputs.join(", ")));
                }
                out
            }
            PlanFormat::Dot => {
                let mut out = String::from("digraph inlet {\n  rankdir=LR;\n");
                for node in &used {
                    let shape =
                        if matches!(self.nodes.get(*node), Some(NodeKind::Source { .. })) { "cylinder" } else { "box" };
                    out.push_str(&format!("  \"{node}\" [shape={shape}];\n"));
                }
                for (from, to) in &edges {
                    out.push_str(&format!("  \"{from}\" -> \"{to}\";\n"));
                }
                out.push_str("}\n");
                out
            }
            PlanFormat::Mermaid => {
                let id = |name: &str| name.replace('.', "__");
                let mut out = String::from("flowchart LR\n");
                for node in &used {
                    let label = if matches!(self.nodes.get(*node), Some(NodeKind::Source { .. })) {
                        format!("[({node})]")
                    } else {
                        format!("[{node}]")
                    };
                    out.push_str(&format!("  {}{label}\n", id(node)));
                }
                for (from, to) in &edges {
                    out.push_str(&format!("  {} --> {}\n", id(from), id(to)));
                }
                out
            }
        }
    }
}

/// Output formats of `inlet plan`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PlanFormat {
    Text,
    Dot,
    Mermaid,
}

/// The query of a table: inline, or read from its `sql_file`.
pub fn query_text(name: &str, table: &TableConfig, base_dir: &Path) -> Result<String> {
    match (&table.sql, &table.sql_file) {
        (Some(sql), _) => Ok(sql.get_ref().clone()),
        (None, Some(file)) => {
            let path = resolve_path(base_dir, file.get_ref());
            let text = std::fs::read_to_string(&path).map_err(|source| EngineError::ReadConfig { path, source })?;
            parse_query(&text).map_err(|message| EngineError::Config {
                path: resolve_path(base_dir, file.get_ref()),
                message: format!("`tables.\"{name}\"`: {message}"),
            })?;
            Ok(text)
        }
        (None, None) => {
            Err(EngineError::Config { path: base_dir.join("inlet.toml"), message: format!("`{name}` has no query") })
        }
    }
}

/// Kahn's algorithm over `tables`; on a cycle, one cycle's path.
fn topological<'a>(
    tables: impl Iterator<Item = &'a String>,
    upstream: &BTreeMap<String, BTreeSet<String>>,
) -> std::result::Result<Vec<String>, Vec<String>> {
    let tables: BTreeSet<&String> = tables.collect();
    // Only edges between derived tables order anything; sources are always ready.
    let mut waiting: BTreeMap<&String, usize> = tables
        .iter()
        .map(|t| (*t, upstream.get(*t).map_or(0, |u| u.iter().filter(|x| tables.contains(x)).count())))
        .collect();
    let mut ready: BTreeSet<&String> = waiting.iter().filter(|(_, n)| **n == 0).map(|(t, _)| *t).collect();
    let mut order = Vec::new();
    while let Some(table) = ready.pop_first() {
        waiting.remove(table);
        order.push(table.clone());
        for (other, inputs) in upstream {
            if inputs.contains(table)
                && let Some(count) = waiting.get_mut(other)
            {
                *count -= 1;
                if *count == 0 {
                    ready.insert(other);
                }
            }
        }
    }
    if waiting.is_empty() {
        return Ok(order);
    }
    // Walk upstream from any stuck table until a table repeats: that is a cycle.
    let mut path: Vec<String> = Vec::new();
    let mut current = waiting.keys().next().map(|t| (*t).clone()).unwrap_or_default();
    while !path.contains(&current) {
        path.push(current.clone());
        let next = upstream
            .get(&current)
            .and_then(|inputs| inputs.iter().find(|i| waiting.contains_key(*i)))
            .cloned()
            .unwrap_or_default();
        current = next;
    }
    let start = path.iter().position(|p| *p == current).unwrap_or(0);
    let mut cycle: Vec<String> = path[start..].iter().rev().cloned().collect();
    cycle.push(cycle.first().cloned().unwrap_or_default());
    Err(cycle)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    fn config(tables: &str) -> PipelineConfig {
        let text = format!(
            "[pipeline]\nname = \"t\"\n[sources.orders]\ntype = \"files\"\npath = \"in\"\nformat = \"csv\"\ntarget = \"bronze.orders\"\n{tables}"
        );
        crate::config::parse(&text, Path::new("inlet.toml")).unwrap()
    }

    fn dag(tables: &str) -> std::result::Result<Dag, Vec<String>> {
        let config = config(tables);
        let queries = config
            .tables
            .iter()
            .map(|(n, t)| (n.clone(), t.sql.as_ref().map(|s| s.get_ref().clone()).unwrap_or_default()))
            .collect();
        Dag::build(&config, &queries)
    }

    const CHAIN: &str = r#"
[tables."gold.revenue"]
sql = "SELECT day, SUM(amount) AS revenue FROM silver.orders GROUP BY day"
[tables."silver.orders"]
sql = "WITH o AS (SELECT * FROM bronze.orders) SELECT o.*, c.tier FROM o JOIN silver.customers c USING (customer_id)"
write = "merge"
keys = ["order_id"]
[tables."silver.customers"]
sql = "SELECT * FROM bronze.orders"
[tables."silver.bad_orders"]
sql = "SELECT * FROM bronze.orders__quarantine"
"#;

    #[test]
    fn order_follows_the_sql() {
        let dag = dag(CHAIN).unwrap();
        assert_eq!(dag.order(), ["silver.bad_orders", "silver.customers", "silver.orders", "gold.revenue"]);
        assert_eq!(dag.upstream("silver.orders").collect::<Vec<_>>(), ["bronze.orders", "silver.customers"]);
    }

    #[test]
    fn selection() {
        let dag = dag(CHAIN).unwrap();
        let pick = |s: &[&str]| {
            dag.select(&s.iter().map(|x| x.to_string()).collect::<Vec<_>>()).unwrap().into_iter().collect::<Vec<_>>()
        };
        assert_eq!(pick(&["silver.customers+"]), ["gold.revenue", "silver.customers", "silver.orders"]);
        assert_eq!(pick(&["+silver.orders"]), ["bronze.orders", "silver.customers", "silver.orders"]);
        assert!(dag.select(&["silver.nope".into()]).is_err());
    }

    #[test]
    fn unknown_tables_cycles_and_sql_errors_name_the_table() {
        let err = dag("[tables.\"silver.a\"]\nsql = \"SELECT * FROM bronze.nope\"\n").unwrap_err().join("\n");
        assert!(err.contains("silver.a") && err.contains("bronze.nope"), "{err}");
        let err = dag(
            "[tables.\"silver.a\"]\nsql = \"SELECT * FROM silver.b\"\n[tables.\"silver.b\"]\nsql = \"SELECT * FROM silver.a\"\n",
        )
        .unwrap_err()
        .join("\n");
        assert!(
            err.contains("cycle") && err.contains("silver.a -> silver.b -> silver.a")
                || err.contains("silver.b -> silver.a -> silver.b"),
            "{err}"
        );
        let err = crate::config::parse(
            "[pipeline]\nname = \"t\"\n[tables.\"silver.a\"]\nsql = \"SELEC * FROM x\"\n",
            Path::new("inlet.toml"),
        )
        .unwrap_err()
        .to_string();
        assert!(err.contains("silver.a") && err.contains("line 4") && err.contains("SELEC"), "{err}");
        let err = dag("[tables.\"silver.a\"]\nsql = \"SELECT * FROM orders\"\n").unwrap_err().join("\n");
        assert!(err.contains("<layer>.<name>"), "{err}");
    }

    #[test]
    fn renders_dot_and_mermaid() {
        let dag = dag(CHAIN).unwrap();
        let dot = dag.render(PlanFormat::Dot);
        assert!(dot.contains("\"silver.orders\" -> \"gold.revenue\";"), "{dot}");
        assert!(dot.contains("\"bronze.orders\" [shape=cylinder];"), "{dot}");
        let mermaid = dag.render(PlanFormat::Mermaid);
        assert!(mermaid.contains("silver__orders --> gold__revenue"), "{mermaid}");
        let text = dag.render(PlanFormat::Text);
        assert!(text.contains("4. gold.revenue <- silver.orders"), "{text}");
    }

    #[test]
    fn conditions() {
        assert!(parse_condition("status = 'deleted'").is_ok());
        assert!(parse_condition("status = ").is_err());
        assert!(parse_condition("a = 1 b").is_err());
    }
}
