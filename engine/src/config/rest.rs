//! `[sources.<name>]` with `type = "rest"`: records read from an HTTP API, page by page.
//!
//! Secrets never sit in the pipeline file: an auth secret is `${env:NAME}`, read from the
//! environment when the source is built, and never logged or committed. Placeholders in
//! `path`, `params`, `json` and `headers` are filled per request: `{resources.<parent>.<field
//! path>}` from a parent resource's record, `{incremental.start_value}` and
//! `{incremental.end_value}` from the incremental window.

use std::collections::BTreeMap;

use serde::Deserialize;
use toml::Spanned;

use super::{OnNewColumns, SourceKind, Trigger};

/// A REST API resource.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RestSource {
    /// Kind of source: `rest`.
    #[serde(rename = "type")]
    pub kind: SourceKind,
    /// Target table, `<layer>.<name>`.
    pub target: Spanned<String>,
    /// Root of the API; `path` is joined to it.
    pub base_url: Spanned<String>,
    /// The resource's path under `base_url` (placeholders allowed).
    #[serde(default)]
    pub path: String,
    /// `get` or `post`.
    #[serde(default)]
    pub method: HttpMethod,
    /// Query parameters (placeholders and `${env:NAME}` allowed).
    #[serde(default)]
    pub params: BTreeMap<String, ParamValue>,
    /// The JSON body of a `post` (placeholders allowed in its strings).
    #[serde(default)]
    pub json: Option<toml::Value>,
    /// Extra request headers (`${env:NAME}` allowed).
    #[serde(default)]
    pub headers: BTreeMap<String, String>,
    /// How requests authenticate.
    #[serde(default)]
    pub auth: Option<Auth>,
    /// How the next page is found.
    #[serde(default)]
    pub paginator: Paginator,
    /// JSONPath to the records in a response body; absent: the body when it is an array, else
    /// its one array field (or `data`, `items`, `results`, `records`).
    #[serde(default)]
    pub data_selector: Option<String>,
    /// Fields naming a record: records of the incremental window already landed are
    /// recognised by them (and their cursor value).
    #[serde(default)]
    pub primary_key: Vec<String>,
    /// Read only records whose cursor moved past the last one committed.
    #[serde(default)]
    pub incremental: Option<Incremental>,
    /// Another `rest` source whose records this one is read for, one request sweep per
    /// parent record: `{resources.<parent>.<field>}` placeholders take the parent's values.
    #[serde(default)]
    pub parent: Option<String>,
    /// Parent fields every row carries, as `_<parent>_<field>` columns, beside those the
    /// placeholders use.
    #[serde(default)]
    pub include_from_parent: Vec<String>,
    /// Most requests started per second (all of this source's requests, parents included).
    #[serde(default)]
    pub requests_per_second: Option<f64>,
    /// A request that has not finished in this long is retried.
    #[serde(default = "default_request_timeout_secs")]
    pub request_timeout_secs: u64,
    /// Retries of one request (5xx, 408, 429, connection errors, timeouts).
    #[serde(default = "default_max_retries")]
    pub max_retries: u32,
    /// First retry delay; it doubles with each retry, with full jitter.
    #[serde(default = "default_retry_initial_backoff_ms")]
    pub retry_initial_backoff_ms: u64,
    /// Longest wait between retries, and the cap on what a `Retry-After` header can ask.
    #[serde(default = "default_retry_max_backoff_secs")]
    pub retry_max_backoff_secs: u64,
    /// Records in one commit at most (whole pages: a commit ends after the page that
    /// reaches it).
    #[serde(default = "default_max_records_per_commit")]
    pub max_records_per_commit: u64,
    /// Column type hints by name; other columns are inferred.
    #[serde(default)]
    pub schema: BTreeMap<String, Spanned<String>>,
    /// What to do with columns the table does not have yet.
    #[serde(default)]
    pub on_new_columns: OnNewColumns,
    /// `inlet serve`: `schedule` (the default with a `schedule`) or `manual` (without).
    #[serde(default)]
    pub trigger: Option<Trigger>,
    /// Cron expression (UTC) for `inlet serve`.
    #[serde(default)]
    pub schedule: Option<Spanned<String>>,
    /// The source is stale when its newest committed data is older than this.
    #[serde(default)]
    pub freshness_sla_secs: Option<u64>,
    /// Expectations checked on the rows of each commit, after parsing.
    #[serde(default)]
    pub expect: Vec<inlet_quality::Expectation>,
}

impl RestSource {
    /// What starts the source under `inlet serve`.
    pub fn trigger(&self) -> Trigger {
        self.trigger.unwrap_or(if self.schedule.is_some() { Trigger::Schedule } else { Trigger::Manual })
    }
}

fn default_request_timeout_secs() -> u64 {
    30
}

fn default_max_retries() -> u32 {
    5
}

fn default_retry_initial_backoff_ms() -> u64 {
    500
}

fn default_retry_max_backoff_secs() -> u64 {
    60
}

fn default_max_records_per_commit() -> u64 {
    100_000
}

/// HTTP methods of a resource.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum HttpMethod {
    #[default]
    Get,
    Post,
}

/// A query parameter's value as written: text, a number or a boolean.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(untagged)]
pub enum ParamValue {
    Text(String),
    Integer(i64),
    Float(f64),
    Bool(bool),
}

impl ParamValue {
    /// The value as sent.
    pub fn as_text(&self) -> String {
        match self {
            ParamValue::Text(text) => text.clone(),
            ParamValue::Integer(n) => n.to_string(),
            ParamValue::Float(x) => x.to_string(),
            ParamValue::Bool(b) => b.to_string(),
        }
    }
}

/// How requests authenticate. Every secret is `${env:NAME}`.
#[derive(Debug, Clone, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
pub enum Auth {
    /// `Authorization: Bearer <token>`.
    Bearer { token: String },
    /// HTTP Basic.
    Basic { username: String, password: String },
    /// A key in a header or a query parameter.
    ApiKey {
        /// The header or parameter name.
        #[serde(default = "default_api_key_name")]
        name: String,
        api_key: String,
        #[serde(default)]
        location: ApiKeyLocation,
    },
    /// OAuth 2.0 client credentials: a token from `token_url`, renewed when it expires or
    /// a request is refused with 401.
    Oauth2ClientCredentials {
        token_url: String,
        client_id: String,
        client_secret: String,
        #[serde(default)]
        scope: Option<String>,
        /// Extra form fields of the token request (e.g. `audience`).
        #[serde(default)]
        token_params: BTreeMap<String, String>,
        /// How long a token lives when the token response does not say.
        #[serde(default = "default_token_expiry_secs")]
        default_token_expiry_secs: u64,
        /// Send the client's credentials as HTTP Basic instead of in the form.
        #[serde(default)]
        client_auth_basic: bool,
    },
}

fn default_api_key_name() -> String {
    "Authorization".to_owned()
}

fn default_token_expiry_secs() -> u64 {
    3600
}

/// Where an API key goes.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ApiKeyLocation {
    #[default]
    Header,
    Query,
}

/// How the next page of a resource is found.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
pub enum Paginator {
    /// Looks at the first response: a `Link: rel="next"` header, else a next URL in the
    /// body (`next`, `links.next`, `next_url`, `_links.next.href`, `pagination.next`,
    /// `paging.next`), else one page.
    #[default]
    Auto,
    /// One request.
    SinglePage,
    /// The next page's URL is in the body.
    JsonLink { next_url_path: String },
    /// The next page's URL is in an RFC 8288 `Link` header.
    HeaderLink {
        #[serde(default = "default_links_next_key")]
        links_next_key: String,
    },
    /// A token from the body, sent back as a query parameter or in the JSON body.
    Cursor {
        cursor_path: String,
        #[serde(default)]
        cursor_param: Option<String>,
        #[serde(default)]
        cursor_body_path: Option<String>,
    },
    /// `offset` and `limit` parameters.
    Offset {
        limit: u64,
        #[serde(default)]
        offset: u64,
        #[serde(default = "default_offset_param")]
        offset_param: String,
        #[serde(default = "default_limit_param")]
        limit_param: String,
        /// JSONPath to the total count of records: stop once the offset reaches it.
        #[serde(default)]
        total_path: Option<String>,
        /// JSONPath to a boolean: stop when it is false.
        #[serde(default)]
        has_more_path: Option<String>,
        #[serde(default)]
        maximum_offset: Option<u64>,
        #[serde(default = "default_true")]
        stop_after_empty_page: bool,
    },
    /// A page number parameter.
    PageNumber {
        #[serde(default = "default_base_page")]
        base_page: u64,
        #[serde(default = "default_page_param")]
        page_param: String,
        /// JSONPath to the number of pages: stop after the last.
        #[serde(default)]
        total_path: Option<String>,
        #[serde(default)]
        has_more_path: Option<String>,
        #[serde(default)]
        maximum_page: Option<u64>,
        #[serde(default = "default_true")]
        stop_after_empty_page: bool,
    },
}

fn default_links_next_key() -> String {
    "next".to_owned()
}

fn default_offset_param() -> String {
    "offset".to_owned()
}

fn default_limit_param() -> String {
    "limit".to_owned()
}

fn default_page_param() -> String {
    "page".to_owned()
}

fn default_base_page() -> u64 {
    1
}

fn default_true() -> bool {
    true
}

/// `incremental = { ... }`: read what changed since the last commit.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Incremental {
    /// JSONPath to the cursor in each record (e.g. `updated_at`).
    pub cursor_path: String,
    /// Where the first run starts (a timestamp, a number or text).
    pub initial_value: toml::Value,
    /// The query parameter the start value is sent in (or use `{incremental.start_value}`).
    #[serde(default)]
    pub param: Option<String>,
    /// A bounded backfill: read up to this value only, kept apart from the regular cursor.
    #[serde(default)]
    pub end_value: Option<toml::Value>,
    /// The query parameter the end value is sent in (or use `{incremental.end_value}`).
    #[serde(default)]
    pub end_param: Option<String>,
    /// Start this far before the last cursor (timestamp cursors), for records that show up
    /// late; records of that window already landed are recognised and not landed again.
    #[serde(default)]
    pub lag_secs: u64,
}

/// A path into a JSON document: the subset of JSONPath (RFC 9535) that names values by
/// position: `$`, `.key`, `['key']`, `[n]` and `[*]`; the leading `$` may be left out
/// (`data.items`, as dlt writes them).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JsonPath {
    pub steps: Vec<PathStep>,
    text: String,
}

/// One step of a [`JsonPath`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PathStep {
    /// An object's member.
    Key(String),
    /// An array's element (negative: from the end).
    Index(i64),
    /// Every element of an array, or member of an object.
    All,
}

impl JsonPath {
    pub fn parse(text: &str) -> Result<JsonPath, String> {
        let trimmed = text.trim();
        let mut rest = trimmed.strip_prefix('$').unwrap_or(trimmed);
        let mut steps = Vec::new();
        let bad = |why: &str| {
            format!(
                "`{text}` is not a JSON path this source can follow ({why}; use `a.b`, `$.a[0]`, `$['a b']` or `a[*]`)"
            )
        };
        let mut first = trimmed.strip_prefix('$').is_none();
        while !rest.is_empty() {
            if let Some(after) = rest.strip_prefix('[') {
                let end = after.find(']').ok_or_else(|| bad("an unclosed `[`"))?;
                let inner = after[..end].trim();
                rest = &after[end + 1..];
                if inner == "*" {
                    steps.push(PathStep::All);
                } else if let Some(quoted) = inner
                    .strip_prefix('\'')
                    .and_then(|q| q.strip_suffix('\''))
                    .or_else(|| inner.strip_prefix('"').and_then(|q| q.strip_suffix('"')))
                {
                    steps.push(PathStep::Key(quoted.to_owned()));
                } else {
                    steps.push(PathStep::Index(
                        inner.parse().map_err(|_| bad("a bracket holds neither a quoted key, an index nor `*`"))?,
                    ));
                }
                first = false;
                continue;
            }
            let key_start = match rest.strip_prefix('.') {
                Some(after) => after,
                None if first => rest,
                None => return Err(bad("a step that is neither `.key` nor `[...]`")),
            };
            first = false;
            if key_start.starts_with('.') {
                return Err(bad("recursive descent `..` is not supported"));
            }
            let end = key_start.find(['.', '[']).unwrap_or(key_start.len());
            let key = &key_start[..end];
            if key.is_empty() {
                return Err(bad("an empty key"));
            }
            if key.contains(['?', '(', ')', '@', '\'', '"', ' ', ']']) {
                return Err(bad("filters and expressions are not supported"));
            }
            steps.push(if key == "*" { PathStep::All } else { PathStep::Key(key.to_owned()) });
            rest = &key_start[end..];
        }
        Ok(JsonPath { steps, text: trimmed.to_owned() })
    }

    /// `$`: the whole document.
    pub fn root() -> JsonPath {
        JsonPath { steps: Vec::new(), text: "$".to_owned() }
    }

    /// The path less its first step (what it names inside what the first step names).
    pub fn rest(&self) -> JsonPath {
        self.suffix(1)
    }

    /// The path less its first `depth` steps.
    pub fn suffix(&self, depth: usize) -> JsonPath {
        let steps: Vec<PathStep> = self.steps.iter().skip(depth).cloned().collect();
        let mut text = "$".to_owned();
        for step in &steps {
            match step {
                PathStep::Key(key) => text.push_str(&format!("['{key}']")),
                PathStep::Index(index) => text.push_str(&format!("[{index}]")),
                PathStep::All => text.push_str("[*]"),
            }
        }
        JsonPath { steps, text }
    }

    /// The path as written.
    pub fn as_str(&self) -> &str {
        &self.text
    }

    /// The values the path names in `value`.
    pub fn select<'v>(&self, value: &'v serde_json::Value) -> Vec<&'v serde_json::Value> {
        let mut current = vec![value];
        for step in &self.steps {
            let mut next = Vec::new();
            for value in current {
                match (step, value) {
                    (PathStep::Key(key), serde_json::Value::Object(map)) => next.extend(map.get(key)),
                    (PathStep::Index(i), serde_json::Value::Array(items)) => {
                        let index = if *i < 0 { items.len() as i64 + i } else { *i };
                        next.extend(usize::try_from(index).ok().and_then(|i| items.get(i)));
                    }
                    (PathStep::All, serde_json::Value::Array(items)) => next.extend(items),
                    (PathStep::All, serde_json::Value::Object(map)) => next.extend(map.values()),
                    _ => {}
                }
            }
            current = next;
        }
        current
    }

    /// The first value the path names, if any (and not `null`).
    pub fn first<'v>(&self, value: &'v serde_json::Value) -> Option<&'v serde_json::Value> {
        self.select(value).into_iter().find(|v| !v.is_null())
    }
}

/// A `${env:NAME}` reference's variable name, if `text` is exactly one.
pub fn env_reference(text: &str) -> Option<&str> {
    let name = text.strip_prefix("${env:")?.strip_suffix('}')?;
    (!name.is_empty() && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')).then_some(name)
}

/// The placeholders (`{...}`) of a text, without braces.
pub fn placeholders(text: &str) -> Vec<&str> {
    let mut found = Vec::new();
    let mut rest = text;
    while let Some(start) = rest.find('{') {
        let after = &rest[start + 1..];
        let Some(end) = after.find('}') else { break };
        if !rest[..start].ends_with('$') {
            found.push(&after[..end]);
        }
        rest = &after[end + 1..];
    }
    found
}

/// The longest `incremental.lag_secs`: a year.
const MAX_LAG_SECS: u64 = 366 * 86_400;

/// The slowest `requests_per_second`: one a day.
const MIN_REQUESTS_PER_SECOND: f64 = 1.0 / 86_400.0;

/// Checks what serde cannot; `key` prefixes messages (`sources.<name>`).
pub(super) fn validate(name: &str, rest: &RestSource, all: &BTreeMap<String, super::SourceConfig>) -> Vec<String> {
    let key = |field: &str| format!("sources.{name}.{field}");
    let mut problems = Vec::new();
    match url::Url::parse(rest.base_url.get_ref()) {
        Ok(url) if matches!(url.scheme(), "http" | "https") => {}
        Ok(url) => problems.push(format!("`{}`: `{}` is not http or https", key("base_url"), url.scheme())),
        Err(e) => problems.push(format!("`{}`: `{}` is not a URL: {e}", key("base_url"), rest.base_url.get_ref())),
    }
    // Secrets come from the environment, never the file.
    if let Some(auth) = &rest.auth {
        let secrets: Vec<(&str, &String)> = match auth {
            Auth::Bearer { token } => vec![("token", token)],
            Auth::Basic { password, .. } => vec![("password", password)],
            Auth::ApiKey { api_key, .. } => vec![("api_key", api_key)],
            Auth::Oauth2ClientCredentials { client_secret, .. } => vec![("client_secret", client_secret)],
        };
        for (field, value) in secrets {
            if env_reference(value).is_none() {
                problems.push(format!(
                    "`{}`: a secret must come from the environment, as `${{env:NAME}}`, never from the pipeline file",
                    key(&format!("auth.{field}"))
                ));
            }
        }
        if let Auth::Oauth2ClientCredentials { token_url, .. } = auth
            && url::Url::parse(token_url).is_err()
        {
            problems.push(format!("`{}`: `{token_url}` is not a URL", key("auth.token_url")));
        }
    }
    // Every placeholder must name something this source has.
    let mut texts: Vec<(String, String)> = vec![(key("path"), rest.path.clone())];
    texts.extend(rest.params.iter().map(|(k, v)| (key(&format!("params.{k}")), v.as_text())));
    if let Some(json) = &rest.json {
        collect_strings(json, &key("json"), &mut texts);
    }
    for (header, value) in &rest.headers {
        if !placeholders(value).is_empty() {
            problems.push(format!(
                "`{}`: headers take no placeholders (put the value in `params`, `path` or `json`)",
                key(&format!("headers.{header}"))
            ));
        }
        if value.contains("${env:") && env_reference(value).is_none() {
            problems.push(format!("`{}`: `${{env:NAME}}` must be the whole value", key(&format!("headers.{header}"))));
        }
    }
    let mut uses_start = false;
    let mut uses_end = false;
    let mut uses_parent = false;
    for (at, text) in &texts {
        for placeholder in placeholders(text) {
            match placeholder.split_once('.') {
                Some(("incremental", "start_value")) if rest.incremental.is_some() => uses_start = true,
                Some(("incremental", "end_value"))
                    if rest.incremental.as_ref().is_some_and(|i| i.end_value.is_some()) =>
                {
                    uses_end = true
                }
                Some(("resources", path)) => match path.split_once('.') {
                    Some((parent, field)) if rest.parent.as_deref() == Some(parent) && !field.is_empty() => {
                        uses_parent = true
                    }
                    _ => problems.push(format!(
                        "`{at}`: `{{{placeholder}}}` names no field of this source's `parent`{}",
                        rest.parent.as_ref().map(|p| format!(" (`{p}`)")).unwrap_or_default()
                    )),
                },
                _ => problems.push(format!(
                    "`{at}`: unknown placeholder `{{{placeholder}}}` (expected `{{resources.<parent>.<field>}}`, \
                     `{{incremental.start_value}}` or `{{incremental.end_value}}`)"
                )),
            }
        }
        if text.contains("${env:") && env_reference(text).is_none() {
            problems.push(format!("`{at}`: `${{env:NAME}}` must be the whole value"));
        }
    }
    if let Some(incremental) = &rest.incremental {
        if incremental.param.is_none() && !uses_start {
            problems.push(format!(
                "`{}`: the start value is never sent: set `param`, or use `{{incremental.start_value}}`",
                key("incremental")
            ));
        }
        if incremental.end_value.is_some() && incremental.end_param.is_none() && !uses_end {
            problems.push(format!(
                "`{}`: the end value is never sent: set `end_param`, or use `{{incremental.end_value}}`",
                key("incremental")
            ));
        }
        if incremental.cursor_path.trim().is_empty() {
            problems.push(format!("`{}`: must not be empty", key("incremental.cursor_path")));
        }
        for (field, value) in
            [("initial_value", Some(&incremental.initial_value)), ("end_value", incremental.end_value.as_ref())]
        {
            if let Some(value) = value
                && !matches!(value, toml::Value::String(_) | toml::Value::Integer(_) | toml::Value::Datetime(_))
            {
                problems.push(format!(
                    "`{}`: must be text, an integer or a timestamp",
                    key(&format!("incremental.{field}"))
                ));
            }
        }
        if incremental.lag_secs > 0 && matches!(incremental.initial_value, toml::Value::Integer(_)) {
            problems.push(format!("`{}`: only for timestamp cursors", key("incremental.lag_secs")));
        }
        if incremental.lag_secs > MAX_LAG_SECS {
            problems.push(format!("`{}`: at most {MAX_LAG_SECS} (a year)", key("incremental.lag_secs")));
        }
    }
    match &rest.parent {
        Some(parent) if parent == name => {
            problems.push(format!("`{}`: a source cannot be its own parent", key("parent")))
        }
        Some(parent) => match all.get(parent) {
            Some(super::SourceConfig::Rest(_)) if !uses_parent => problems.push(format!(
                "`{}`: no request names a field of `{parent}` (as `{{resources.{parent}.<field>}}` in `path`, \
                 `params` or `json`), so every record of it would ask the same",
                key("parent")
            )),
            Some(super::SourceConfig::Rest(_)) => {}
            Some(_) => problems.push(format!("`{}`: `{parent}` is not a `rest` source", key("parent"))),
            None => problems.push(format!("`{}`: there is no source `{parent}`", key("parent"))),
        },
        None if !rest.include_from_parent.is_empty() => {
            problems.push(format!("`{}`: only used with `parent`", key("include_from_parent")))
        }
        None => {}
    }
    let mut paths: Vec<(String, &str)> = Vec::new();
    if let Some(selector) = &rest.data_selector {
        paths.push((key("data_selector"), selector));
    }
    if let Some(incremental) = &rest.incremental {
        paths.push((key("incremental.cursor_path"), &incremental.cursor_path));
    }
    paths.extend(rest.primary_key.iter().map(|k| (key("primary_key"), k.as_str())));
    paths.extend(rest.include_from_parent.iter().map(|k| (key("include_from_parent"), k.as_str())));
    match &rest.paginator {
        Paginator::JsonLink { next_url_path } => paths.push((key("paginator.next_url_path"), next_url_path)),
        Paginator::Cursor { cursor_path, cursor_body_path, .. } => {
            paths.push((key("paginator.cursor_path"), cursor_path));
            paths.extend(cursor_body_path.as_deref().map(|p| (key("paginator.cursor_body_path"), p)));
        }
        Paginator::Offset { total_path, has_more_path, .. }
        | Paginator::PageNumber { total_path, has_more_path, .. } => {
            paths.extend(total_path.as_deref().map(|p| (key("paginator.total_path"), p)));
            paths.extend(has_more_path.as_deref().map(|p| (key("paginator.has_more_path"), p)));
        }
        _ => {}
    }
    for (at, path) in paths {
        if let Err(message) = JsonPath::parse(path) {
            problems.push(format!("`{at}`: {message}"));
        }
    }
    match &rest.paginator {
        Paginator::Cursor { cursor_param, cursor_body_path, .. } => match (cursor_param, cursor_body_path) {
            (None, None) | (Some(_), Some(_)) => problems
                .push(format!("`{}`: give one of `cursor_param` and `cursor_body_path`", key("paginator"))),
            (None, Some(_)) if rest.method != HttpMethod::Post => {
                problems.push(format!("`{}`: `cursor_body_path` needs `method = \"post\"`", key("paginator")))
            }
            _ => {}
        },
        Paginator::Offset { limit: 0, .. } => problems.push(format!("`{}`: `limit` must be at least 1", key("paginator"))),
        Paginator::Offset { total_path: None, has_more_path: None, maximum_offset: None, stop_after_empty_page: false, .. }
        | Paginator::PageNumber {
            total_path: None,
            has_more_path: None,
            maximum_page: None,
            stop_after_empty_page: false,
            ..
        } => problems.push(format!(
            "`{}`: nothing would end the pages: set `total_path`, `has_more_path`, a maximum, or `stop_after_empty_page`",
            key("paginator")
        )),
        _ => {}
    }
    if rest.json.is_some() && rest.method != HttpMethod::Post {
        problems.push(format!("`{}`: a body needs `method = \"post\"`", key("json")));
    }
    if let Some(rps) = rest.requests_per_second
        && !(rps >= MIN_REQUESTS_PER_SECOND && rps.is_finite())
    {
        problems.push(format!("`{}`: must be at least 1/86400 (one request a day)", key("requests_per_second")));
    }
    for (field, value) in [
        ("request_timeout_secs", rest.request_timeout_secs),
        ("max_records_per_commit", rest.max_records_per_commit),
        ("retry_initial_backoff_ms", rest.retry_initial_backoff_ms),
        ("retry_max_backoff_secs", rest.retry_max_backoff_secs),
    ] {
        if value == 0 {
            problems.push(format!("`{}`: must be at least 1", key(field)));
        }
    }
    if rest.trigger == Some(Trigger::Watch) {
        problems.push(format!("`{}`: an API has no events to watch: use `schedule` or `manual`", key("trigger")));
    }
    for column in &rest.primary_key {
        if column.trim().is_empty() {
            problems.push(format!("`{}`: empty field name", key("primary_key")));
        }
    }
    problems
}

fn collect_strings(value: &toml::Value, at: &str, out: &mut Vec<(String, String)>) {
    match value {
        toml::Value::String(text) => out.push((at.to_owned(), text.clone())),
        toml::Value::Array(items) => {
            for (i, item) in items.iter().enumerate() {
                collect_strings(item, &format!("{at}[{i}]"), out);
            }
        }
        toml::Value::Table(table) => {
            for (k, item) in table {
                collect_strings(item, &format!("{at}.{k}"), out);
            }
        }
        _ => {}
    }
}

/// A TOML value as JSON (timestamps as RFC 3339 text).
pub fn toml_to_json(value: &toml::Value) -> serde_json::Value {
    match value {
        toml::Value::String(s) => serde_json::Value::String(s.clone()),
        toml::Value::Integer(n) => serde_json::Value::from(*n),
        toml::Value::Float(x) => {
            serde_json::Number::from_f64(*x).map_or(serde_json::Value::Null, serde_json::Value::Number)
        }
        toml::Value::Boolean(b) => serde_json::Value::Bool(*b),
        toml::Value::Datetime(d) => serde_json::Value::String(d.to_string()),
        toml::Value::Array(items) => serde_json::Value::Array(items.iter().map(toml_to_json).collect()),
        toml::Value::Table(table) => {
            serde_json::Value::Object(table.iter().map(|(k, v)| (k.clone(), toml_to_json(v))).collect())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_paths() {
        let steps = |text: &str| JsonPath::parse(text).unwrap().steps;
        assert_eq!(steps("data"), vec![PathStep::Key("data".into())]);
        assert_eq!(steps("$.data"), steps("data"));
        assert!(steps("$").is_empty());
        assert_eq!(
            steps("$['a b'].c[0][*]"),
            vec![PathStep::Key("a b".into()), PathStep::Key("c".into()), PathStep::Index(0), PathStep::All]
        );
        assert_eq!(steps("_links.next.href").len(), 3);
        for bad in ["$..a", "a[?(@.x)]", "a[", "a..b", "a.", "$[x]"] {
            assert!(JsonPath::parse(bad).is_err(), "{bad}");
        }
        let body = serde_json::json!({"data": [{"id": 1}, {"id": 2}], "links": {"next": null}, "meta": {"n": 2}});
        assert_eq!(
            JsonPath::parse("data[*].id").unwrap().select(&body),
            vec![&serde_json::json!(1), &serde_json::json!(2)]
        );
        assert_eq!(JsonPath::parse("data[-1].id").unwrap().first(&body), Some(&serde_json::json!(2)));
        assert_eq!(JsonPath::parse("links.next").unwrap().first(&body), None);
        assert_eq!(JsonPath::parse("meta.n").unwrap().first(&body), Some(&serde_json::json!(2)));
    }

    #[test]
    fn env_references_and_placeholders() {
        assert_eq!(env_reference("${env:API_TOKEN}"), Some("API_TOKEN"));
        assert_eq!(env_reference("${env:}"), None);
        assert_eq!(env_reference("x${env:A}"), None);
        assert_eq!(env_reference("${env:A-B}"), None);
        assert_eq!(placeholders("repos/{resources.repos.name}/issues/{x}"), vec!["resources.repos.name", "x"]);
        assert_eq!(placeholders("${env:A} {incremental.start_value}"), vec!["incremental.start_value"]);
        assert!(placeholders("no braces").is_empty());
    }
}
