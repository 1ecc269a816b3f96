//! REST API sources: records read page by page, their position committed with them.
//!
//! A source is one resource of an API (`base_url` + `path`), read in sweeps from the position
//! its table holds ([`position`]): page after page ([`paginate`]), each request authenticated,
//! rate limited and retried ([`client`], [`auth`]), each body decoded in one pass into text
//! columns like NDJSON ([`crate::json`]). With `incremental`, a sweep asks from the last
//! cursor committed (less `lag_secs`), drops records of the window already landed (by their
//! primary key and cursor value) and, when it ends, moves the cursor to the highest value
//! seen. A child resource (`parent`) sweeps once per record of its parent, its paths and
//! parameters filled from that record, its cursor kept per parent, its rows carrying the
//! parent's values. Nothing is kept anywhere but in the commits: every page hands the engine
//! the position the source stands at once that page is in the table.

mod auth;
mod client;
mod paginate;
mod position;
mod redact;

use std::collections::{BTreeMap, HashSet};
use std::sync::Arc;
use std::sync::atomic::AtomicU64;
use std::time::Duration;

use arrow::array::{Array, ArrayRef, BooleanArray, Int64Array, RecordBatch, StringArray};
use arrow::datatypes::{DataType, Field, Schema};
use inlet_engine::config::{
    Auth, HttpMethod, JsonPath, PathStep, RestSource, SourceConfig, env_reference, placeholders, toml_to_json,
};
use inlet_engine::run::Pipeline;
use inlet_engine::source::{BadRecord, ErrorCode, Extraction, Extractor, Page, RawChunk, SourceError};
use serde_json::Value;
use tracing::{debug, warn};
use url::Url;

use self::auth::{Credentials, OAuth};
use self::client::{Client, Limiter, Request, Retries};
use self::paginate::{Answer, Next, PageState, Paging, Seen};
use self::position::{ParentSweep, Position, Stream, Sweep, compare, max_of, prune, record_hash, stream_key};
use self::redact::Redactor;
use crate::Error;

/// What a value put into a URL path is encoded against: all but RFC 3986's unreserved.
const PATH_SEGMENT: &percent_encoding::AsciiSet =
    &percent_encoding::NON_ALPHANUMERIC.remove(b'-').remove(b'.').remove(b'_').remove(b'~');

/// Bodies at least this big are decoded on a blocking thread.
const DECODE_ON_BLOCKING_BYTES: usize = 64 * 1024;

/// A REST resource as an extractor of the engine.
pub struct RestExtractor {
    resource: Arc<Resource>,
    parent: Option<Arc<Resource>>,
    requests: Arc<AtomicU64>,
}

impl RestExtractor {
    /// The extractor of source `name` of `pipeline`, secrets read from its environment.
    pub fn new(name: &str, pipeline: &Pipeline) -> Result<RestExtractor, Error> {
        let config = rest_config(pipeline, name)?;
        let requests = Arc::new(AtomicU64::new(0));
        let redactor = Redactor::default();
        // One pace for every request of the source, its parent's included.
        let limiter = config.requests_per_second.map(|rps| Arc::new(Limiter::new(rps)));
        let parent = match &config.parent {
            Some(parent) => {
                let parent_config = rest_config(pipeline, parent)?;
                if parent_config.parent.is_some() {
                    return Err(Error::Config {
                        message: format!(
                            "source `{name}`: its parent `{parent}` has a parent itself; one level of parent is supported"
                        ),
                    });
                }
                Some(Arc::new(Resource::new(
                    parent,
                    parent_config,
                    None,
                    pipeline,
                    &redactor,
                    limiter.clone(),
                    &requests,
                )?))
            }
            None => None,
        };
        let resource =
            Arc::new(Resource::new(name, config, parent.as_deref(), pipeline, &redactor, limiter, &requests)?);
        Ok(RestExtractor { resource, parent, requests })
    }
}

fn rest_config<'p>(pipeline: &'p Pipeline, name: &str) -> Result<&'p RestSource, Error> {
    match pipeline.config.sources.get(name) {
        Some(SourceConfig::Rest(rest)) => Ok(rest),
        _ => Err(Error::Config { message: format!("`{name}` is not a `rest` source") }),
    }
}

#[async_trait::async_trait]
impl Extractor for RestExtractor {
    async fn start(&self, from: Option<Value>) -> Result<Box<dyn Extraction>, SourceError> {
        let position = match from {
            Some(value) => serde_json::from_value::<Position>(value).map_err(|e| {
                Error::Internal(format!(
                    "source `{}`: the committed position is not one this version reads: {e}",
                    self.resource.name
                ))
            })?,
            None => Position { format: position::FORMAT, ..Position::default() },
        };
        Ok(Box::new(Sweeping {
            resource: self.resource.clone(),
            parent: self.parent.clone(),
            position,
            parent_page: None,
            seen: Seen::default(),
            landed: HashSet::new(),
            parent_seen: Seen::default(),
            selector: self.resource.selector.clone().map(|path| Selector { path, object_is_record: false }),
            parent_selector: self
                .parent
                .as_ref()
                .and_then(|p| p.selector.clone())
                .map(|path| Selector { path, object_is_record: false }),
            failure: None,
            deferred: None,
            done: false,
            requests: self.requests.clone(),
        }))
    }
}

/// The incremental settings of a resource.
struct Cursoring {
    path: JsonPath,
    initial: String,
    param: Option<String>,
    end: Option<String>,
    end_param: Option<String>,
    lag_secs: u64,
}

/// A query parameter of a resource.
struct Param {
    name: String,
    value: String,
    /// Read from the environment: sent as it is, never filled (nor shown in an error).
    secret: bool,
}

/// A field of its parent's records a child needs.
struct ParentField {
    /// The path as written.
    text: String,
    path: JsonPath,
    /// The column its value lands in (`_<parent>_<field>`).
    column: String,
    /// Whether a request needs it (a placeholder names it): the parent records without it
    /// have no children to read, and such fields alone name a parent record's stream.
    /// Fields only in `include_from_parent` are columns, `null` when the parent lacks them.
    required: bool,
}

/// A resource, resolved: secrets read, paths parsed, its client built.
struct Resource {
    name: String,
    base_url: Url,
    /// Where its requests go: `base_url`, or the host of an absolute `path`.
    home: Url,
    path: String,
    method: HttpMethod,
    /// Query parameters (secrets read; placeholders still in the others).
    params: Vec<Param>,
    /// Parameters holding secrets: added again to links the API gives.
    secret_params: Vec<(String, String)>,
    json: Option<Value>,
    paging: Paging,
    selector: Option<JsonPath>,
    primary_key: Vec<JsonPath>,
    incremental: Option<Cursoring>,
    /// The fields of its parent's records a child needs.
    parent_fields: Vec<ParentField>,
    client: Client,
}

impl Resource {
    fn new(
        name: &str,
        config: &RestSource,
        parent: Option<&Resource>,
        pipeline: &Pipeline,
        redactor: &Redactor,
        limiter: Option<Arc<Limiter>>,
        requests: &Arc<AtomicU64>,
    ) -> Result<Resource, Error> {
        // Secret values shared with the parent, secret parameter names its own.
        let redactor = &redactor.sibling();
        let env = |text: &str, at: &str| -> Result<String, Error> {
            match env_reference(text) {
                Some(variable) => match pipeline.env.get(variable) {
                    Some(value) => {
                        redactor.secret(value);
                        Ok(value.to_owned())
                    }
                    None => Err(Error::Config {
                        message: format!("source `{name}`: `{at}` reads `${{env:{variable}}}`, which is not set"),
                    }),
                },
                None => Ok(text.to_owned()),
            }
        };
        let mut base_url = Url::parse(config.base_url.get_ref())
            .map_err(|e| Error::Config { message: format!("source `{name}`: `base_url`: {e}") })?;
        if !base_url.path().ends_with('/') {
            let path = format!("{}/", base_url.path());
            base_url.set_path(&path);
        }
        let mut params = Vec::new();
        let mut secret_params = Vec::new();
        for (key, value) in &config.params {
            let text = value.as_text();
            let resolved = env(&text, &format!("params.{key}"))?;
            let secret = env_reference(&text).is_some();
            if secret {
                redactor.secret_param(key);
                secret_params.push((key.clone(), resolved.clone()));
            }
            params.push(Param { name: key.clone(), value: resolved, secret });
        }
        let mut headers = Vec::new();
        for (key, value) in &config.headers {
            let resolved = env(value, &format!("headers.{key}"))?;
            let header_name = reqwest::header::HeaderName::from_bytes(key.as_bytes())
                .map_err(|e| Error::Config { message: format!("source `{name}`: header `{key}`: {e}") })?;
            let mut header_value = reqwest::header::HeaderValue::from_str(&resolved)
                .map_err(|e| Error::Config { message: format!("source `{name}`: header `{key}`: {e}") })?;
            header_value.set_sensitive(env_reference(value).is_some());
            headers.push((header_name, header_value));
        }
        let credentials = match &config.auth {
            None => Credentials::None,
            Some(Auth::Bearer { token }) => Credentials::Bearer(env(token, "auth.token")?),
            Some(Auth::Basic { username, password }) => Credentials::Basic {
                username: env(username, "auth.username")?,
                password: env(password, "auth.password")?,
            },
            Some(Auth::ApiKey { name: key_name, api_key, location }) => {
                if *location == inlet_engine::config::ApiKeyLocation::Query {
                    redactor.secret_param(key_name);
                }
                Credentials::ApiKey { name: key_name.clone(), key: env(api_key, "auth.api_key")?, location: *location }
            }
            Some(Auth::Oauth2ClientCredentials {
                token_url,
                client_id,
                client_secret,
                scope,
                token_params,
                default_token_expiry_secs,
                client_auth_basic,
            }) => Credentials::OAuth(Box::new(OAuth {
                token_url: Url::parse(token_url)
                    .map_err(|e| Error::Config { message: format!("source `{name}`: `auth.token_url`: {e}") })?,
                client_id: env(client_id, "auth.client_id")?,
                client_secret: env(client_secret, "auth.client_secret")?,
                scope: scope.clone(),
                params: token_params
                    .iter()
                    .map(|(k, v)| Ok((k.clone(), env(v, &format!("auth.token_params.{k}"))?)))
                    .collect::<Result<_, Error>>()?,
                default_expiry: Duration::from_secs(*default_token_expiry_secs),
                client_auth_basic: *client_auth_basic,
                token: tokio::sync::Mutex::new(None),
            })),
        };
        let retries = Retries {
            max_retries: config.max_retries,
            initial_backoff: Duration::from_millis(config.retry_initial_backoff_ms),
            max_backoff: Duration::from_secs(config.retry_max_backoff_secs),
        };
        let client = Client::new(
            credentials,
            headers,
            limiter,
            retries,
            Duration::from_secs(config.request_timeout_secs),
            redactor.clone(),
            requests.clone(),
        );
        let parse = |text: &str| JsonPath::parse(text).map_err(|message| Error::Config { message });
        let incremental = match &config.incremental {
            Some(incremental) => Some(Cursoring {
                path: parse(&incremental.cursor_path)?,
                initial: json_text(&toml_to_json(&incremental.initial_value)),
                param: incremental.param.clone(),
                end: incremental.end_value.as_ref().map(|v| json_text(&toml_to_json(v))),
                end_param: incremental.end_param.clone(),
                lag_secs: incremental.lag_secs,
            }),
            None => None,
        };
        // What a child needs of its parent's records: the placeholders' fields, and more.
        let mut parent_fields = Vec::new();
        if let (Some(parent), Some(parent_name)) = (parent, &config.parent) {
            let mut texts: Vec<String> = vec![config.path.clone()];
            texts.extend(config.params.values().map(|v| v.as_text()));
            if let Some(json) = &config.json {
                json_strings(&toml_to_json(json), &mut texts);
            }
            let prefix = format!("resources.{parent_name}.");
            let mut required: Vec<String> = texts
                .iter()
                .flat_map(|t| placeholders(t).into_iter().filter_map(|p| p.strip_prefix(&prefix).map(str::to_owned)))
                .collect();
            required.sort();
            required.dedup();
            let mut fields: Vec<(String, bool)> = required.into_iter().map(|f| (f, true)).collect();
            for field in &config.include_from_parent {
                if !fields.iter().any(|(f, _)| f == field) {
                    fields.push((field.clone(), false));
                }
            }
            for (field, required) in fields {
                let column: String = format!("_{}_{field}", parent.name)
                    .chars()
                    .map(|c| if c.is_ascii_alphanumeric() || c == '_' { c } else { '_' })
                    .collect();
                parent_fields.push(ParentField { path: parse(&field)?, text: field, column, required });
            }
        }
        // An absolute `path` names the host itself (up to its first placeholder).
        let home = match config.path.split('{').next() {
            Some(start) if start.starts_with("http://") || start.starts_with("https://") => {
                Url::parse(start).unwrap_or_else(|_| base_url.clone())
            }
            _ => base_url.clone(),
        };
        Ok(Resource {
            name: name.to_owned(),
            home,
            base_url,
            path: config.path.clone(),
            method: config.method,
            params,
            secret_params,
            json: config.json.as_ref().map(toml_to_json),
            paging: Paging::new(&config.paginator)?,
            selector: config.data_selector.as_deref().map(parse).transpose()?,
            primary_key: config.primary_key.iter().map(|k| parse(k)).collect::<Result<_, _>>()?,
            incremental,
            parent_fields,
            client,
        })
    }

    /// The request for `state` of a sweep from `start` (placeholders filled from `parent`).
    fn request(&self, state: &PageState, start: Option<&str>, parent: Option<&ParentRecord>) -> Result<Request, Error> {
        let end = self.incremental.as_ref().and_then(|i| i.end.as_deref());
        let fill = |text: &str, encode: bool| fill(text, start, end, parent, encode);
        let mut credentials = true;
        let mut url = match state {
            PageState::Url { url } => {
                let mut url = Url::parse(url).map_err(|e| Error::Internal(format!("a kept next link `{url}`: {e}")))?;
                // Credentials go to the API's own host only, never where a link points
                // elsewhere (as a browser drops them on a redirect to another origin); a
                // link from https down to http does not get them either.
                credentials = client::same_site(&self.home, &url);
                if !credentials {
                    warn!(source = %self.name, url = %self.client.redactor.show(&url), "a next link to another host: followed without credentials");
                }
                // Kept links lost their secret parameters: they go back in.
                let missing: Vec<&(String, String)> = self
                    .secret_params
                    .iter()
                    .filter(|(k, _)| credentials && !url.query_pairs().any(|(q, _)| q == k.as_str()))
                    .collect();
                if !missing.is_empty() {
                    url.query_pairs_mut().extend_pairs(missing.iter().map(|(k, v)| (k.as_str(), v.as_str())));
                }
                url
            }
            _ => {
                let path = fill(&self.path, true)?;
                let mut url = if path.starts_with("http://") || path.starts_with("https://") {
                    Url::parse(&path)
                } else {
                    self.base_url.join(path.trim_start_matches('/'))
                }
                .map_err(|e| Error::Config { message: format!("source `{}`: the URL of `{path}`: {e}", self.name) })?;
                {
                    let mut query = url.query_pairs_mut();
                    for param in &self.params {
                        if param.secret {
                            query.append_pair(&param.name, &param.value);
                        } else {
                            query.append_pair(&param.name, &fill(&param.value, false)?);
                        }
                    }
                    if let Some(incremental) = &self.incremental {
                        if let (Some(param), Some(start)) = (&incremental.param, start) {
                            query.append_pair(param, start);
                        }
                        if let (Some(param), Some(end)) = (&incremental.end_param, end) {
                            query.append_pair(param, end);
                        }
                    }
                    for (key, value) in self.paging.parameters(state) {
                        query.append_pair(&key, &value);
                    }
                }
                if url.query() == Some("") {
                    url.set_query(None);
                }
                url
            }
        };
        if url.query() == Some("") {
            url.set_query(None);
        }
        let body = match &self.json {
            Some(json) => {
                let mut body = fill_json(json, &|text| fill(text, false))?;
                if let Some((path, token)) = self.paging.body_cursor(state) {
                    set_at(&mut body, &path.steps, Value::String(token));
                }
                Some(body)
            }
            None => self.paging.body_cursor(state).map(|(path, token)| {
                let mut body = Value::Object(serde_json::Map::new());
                set_at(&mut body, &path.steps, Value::String(token));
                body
            }),
        };
        Ok(Request { method: self.method, url, body, credentials })
    }
}

impl Resource {
    /// A next page as a sweep keeps it: a link without the secrets the API put in it (the
    /// request adds them again).
    fn kept(&self, next: Next) -> Result<Next, Error> {
        Ok(match next {
            Next::Page(PageState::Url { url }) => {
                let parsed = Url::parse(&url).map_err(|e| Error::Internal(format!("a next link: {e}")))?;
                Next::Page(PageState::Url { url: self.client.redactor.keep(&parsed) })
            }
            other => other,
        })
    }

    /// The first page as the link an API would give back to it.
    fn first_state(&self, url: &Url) -> PageState {
        PageState::Url { url: self.client.redactor.keep(url) }
    }

    /// A page state as errors show it: a link masked, or the page just read's URL.
    fn shown(&self, state: &PageState, current: &str) -> String {
        match state {
            PageState::Url { url } => Url::parse(url).map(|u| self.client.redactor.show(&u)).unwrap_or_default(),
            _ => current.to_owned(),
        }
    }
}

/// The error of an API that gives a page of this sweep as the next one again.
fn looping(shown: String) -> Error {
    Error::Api {
        url: shown,
        message: "the API gave a page of this sweep as its next page again: stopping rather than reading it in a \
                  loop"
            .to_owned(),
    }
}

/// Whether a body with nothing where the records belong is an empty answer (an API that
/// leaves an empty list out, or writes it `null`), not an error object: every field of it
/// is empty or about paging, none says error. Anything else is not trusted to be the end.
fn empty_answer(body: &[u8]) -> bool {
    const PAGING: [&str; 24] = [
        "next",
        "next_url",
        "nexturl",
        "next_cursor",
        "nextcursor",
        "cursor",
        "next_page_token",
        "nextpagetoken",
        "page",
        "per_page",
        "page_size",
        "pagesize",
        "total",
        "total_count",
        "totalcount",
        "count",
        "has_more",
        "hasmore",
        "links",
        "_links",
        "meta",
        "paging",
        "pagination",
        "kind",
    ];
    let Ok(Value::Object(map)) = serde_json::from_slice::<Value>(body) else { return false };
    map.iter().all(|(key, value)| {
        let key = key.to_ascii_lowercase();
        let empty = match value {
            Value::Null => true,
            Value::Array(items) => items.is_empty(),
            Value::Object(fields) => fields.is_empty(),
            _ => false,
        };
        !key.contains("error") && (empty || PAGING.contains(&key.as_str()) || key == "etag")
    })
}

/// The strings of a JSON value, one by one (each may hold placeholders).
fn json_strings(value: &Value, out: &mut Vec<String>) {
    match value {
        Value::String(text) => out.push(text.clone()),
        Value::Array(items) => items.iter().for_each(|item| json_strings(item, out)),
        Value::Object(map) => map.values().for_each(|item| json_strings(item, out)),
        _ => {}
    }
}

/// A value as placeholder or parameter text: strings as they are, anything else as JSON.
fn json_text(value: &Value) -> String {
    match value {
        Value::String(text) => text.clone(),
        other => other.to_string(),
    }
}

/// `text` with its placeholders filled; values in a URL path are percent-encoded.
fn fill(
    text: &str,
    start: Option<&str>,
    end: Option<&str>,
    parent: Option<&ParentRecord>,
    encode: bool,
) -> Result<String, Error> {
    let mut out = text.to_owned();
    for placeholder in placeholders(text) {
        let value = match placeholder.split_once('.') {
            Some(("incremental", "start_value")) => start.map(str::to_owned),
            Some(("incremental", "end_value")) => end.map(str::to_owned),
            Some(("resources", path)) => {
                let field = path.split_once('.').map(|(_, field)| field);
                field.and_then(|f| parent.and_then(|p| p.values.get(f).cloned()))
            }
            _ => None,
        };
        let Some(value) = value else {
            return Err(Error::Internal(format!("no value for `{{{placeholder}}}` in `{text}`")));
        };
        let value =
            if encode { percent_encoding::utf8_percent_encode(&value, PATH_SEGMENT).to_string() } else { value };
        out = out.replace(&format!("{{{placeholder}}}"), &value);
    }
    Ok(out)
}

fn fill_json(value: &Value, fill: &dyn Fn(&str) -> Result<String, Error>) -> Result<Value, Error> {
    Ok(match value {
        Value::String(text) => Value::String(fill(text)?),
        Value::Array(items) => Value::Array(items.iter().map(|i| fill_json(i, fill)).collect::<Result<_, _>>()?),
        Value::Object(map) => {
            Value::Object(map.iter().map(|(k, v)| Ok((k.clone(), fill_json(v, fill)?))).collect::<Result<_, Error>>()?)
        }
        other => other.clone(),
    })
}

/// Sets `value` at a path of keys in `body`, making objects on the way.
fn set_at(body: &mut Value, steps: &[PathStep], value: Value) {
    let Some((first, rest)) = steps.split_first() else {
        *body = value;
        return;
    };
    let PathStep::Key(key) = first else { return };
    if !body.is_object() {
        *body = Value::Object(serde_json::Map::new());
    }
    if let Value::Object(map) = body {
        set_at(map.entry(key.clone()).or_insert(Value::Null), rest, value);
    }
}

/// A parent's record, as much of it as its children need.
#[derive(Debug, Clone)]
struct ParentRecord {
    /// The values by field path, as text.
    values: BTreeMap<String, String>,
    /// The stream key of its children.
    key: String,
}

/// A parent's page being worked through.
struct ParentPage {
    state: PageState,
    number: u64,
    records: Vec<ParentRecord>,
    next: Next,
    detected: Option<String>,
    url: String,
    done: u64,
}

/// One extraction: the sweeps from a position to what the API holds now.
struct Sweeping {
    resource: Arc<Resource>,
    parent: Option<Arc<Resource>>,
    position: Position,
    parent_page: Option<ParentPage>,
    /// The next pages asked for in the current sweep (an API that loops is stopped).
    seen: Seen,
    /// Records landed by this extraction, by hash (incremental): none twice in one run.
    landed: HashSet<u64>,
    /// The parent's next pages asked for (an API that loops is stopped).
    parent_seen: Seen,
    /// The record selector: `data_selector`, or what `auto` chose from the first body.
    selector: Option<Selector>,
    parent_selector: Option<Selector>,
    /// Why the extraction stops after the page it just gave.
    failure: Option<Error>,
    /// Why the extraction fails once it is done: the first child that could not go on.
    deferred: Option<Error>,
    done: bool,
    requests: Arc<AtomicU64>,
}

/// What one page of a sweep gave.
struct SweptPage {
    url: String,
    number: i64,
    bytes: u64,
    chunk: RawChunk,
    /// Whether the sweep ended with it.
    last: bool,
}

#[async_trait::async_trait]
impl Extraction for Sweeping {
    async fn next_page(&mut self) -> Result<Option<Page>, SourceError> {
        if let Some(failure) = self.failure.take() {
            self.done = true;
            return Err(failure.into());
        }
        if self.done {
            return match self.deferred.take() {
                Some(failure) => Err(failure.into()),
                None => Ok(None),
            };
        }
        let window = self.window();
        let Some(parent) = self.parent.clone() else {
            let key = stream_key(None, window.as_deref());
            let swept = self.sweep_page(&key, None).await?;
            self.done = swept.last;
            return Ok(Some(self.page(swept)?));
        };
        // A child: the records of the parent's page in progress, one sweep each.
        loop {
            if self.parent_page.is_none() {
                let sweep = self.position.parents.clone().unwrap_or_else(|| ParentSweep {
                    page: parent.paging.first(),
                    pages: 0,
                    done: 0,
                    last: None,
                    detected: None,
                });
                self.parent_page = Some(self.parent_page(&parent, sweep).await?);
            }
            let Some(page) = self.parent_page.as_mut() else { continue };
            let done = usize::try_from(page.done).unwrap_or(usize::MAX);
            if let Some(record) = page.records.get(done).cloned() {
                let key = stream_key(Some(&record.key), window.as_deref());
                let swept = self.sweep_page(&key, Some(&record)).await?;
                if let Some(failure) = self.failure.take() {
                    // This child cannot go on (a body it cannot page past, a loop): its
                    // stream stays at that page for the next run, the other parents'
                    // children are read meanwhile, and the run fails at the end.
                    self.deferred.get_or_insert(failure);
                    self.finish_parent_record()?;
                } else if swept.last {
                    self.finish_parent_record()?;
                }
                return Ok(Some(self.page(swept)?));
            }
            // Every record of this parent page is done: on to the next, or the end.
            let url = page.url.clone();
            let number = page.number;
            if self.next_parent_page()? {
                continue;
            }
            self.done = true;
            // The sweep over the parents ended with a page of no records: its end is a page
            // of no rows, so the position that says so is committed.
            let chunk = empty_chunk();
            return Ok(Some(self.page(SweptPage { url, number: number as i64, bytes: 0, chunk, last: true })?));
        }
    }

    fn requests(&self) -> u64 {
        self.requests.load(std::sync::atomic::Ordering::Relaxed)
    }
}

impl Sweeping {
    /// The backfill window of this source, if it has an end.
    fn window(&self) -> Option<String> {
        let incremental = self.resource.incremental.as_ref()?;
        incremental.end.as_ref().map(|end| format!("{}..{end}", incremental.initial))
    }

    /// The page for the engine: the rows, and the position once they are in.
    fn page(&self, swept: SweptPage) -> Result<Page, SourceError> {
        let position = serde_json::to_value(&self.position)
            .map_err(|e| Error::Internal(format!("serialising the position: {e}")))?;
        Ok(Page { url: swept.url, number: swept.number, bytes: swept.bytes, chunk: swept.chunk, position })
    }

    /// A parent record's children are all read: mark it done, moving past its page when it
    /// was the page's last record, and ending the extraction after the last page's last.
    fn finish_parent_record(&mut self) -> Result<(), Error> {
        let Some(page) = self.parent_page.as_mut() else { return Ok(()) };
        let last = usize::try_from(page.done).ok().and_then(|d| page.records.get(d)).map(|r| r.key.clone());
        page.done += 1;
        self.position.parents = Some(ParentSweep {
            page: page.state.clone(),
            // The page in progress is number `pages + 1`.
            pages: page.number.saturating_sub(1),
            done: page.done,
            last,
            detected: page.detected.clone(),
        });
        if usize::try_from(page.done).is_ok_and(|d| d >= page.records.len()) {
            // The position already points past the page, so a restart does not read it again.
            self.done = !self.next_parent_page()?;
        }
        Ok(())
    }

    /// Moves to the parent's next page; `false` when there is none (the sweep over the
    /// parents is over, and the position says so).
    fn next_parent_page(&mut self) -> Result<bool, Error> {
        let Some(page) = self.parent_page.take() else { return Ok(false) };
        match page.next {
            Next::Page(state) => {
                self.position.parents =
                    Some(ParentSweep { page: state, pages: page.number, done: 0, last: None, detected: page.detected });
                Ok(true)
            }
            Next::Last => {
                self.position.parents = None;
                Ok(false)
            }
            Next::Unknown => Err(Error::Api {
                url: page.url,
                message: "the parent's page cannot be read, so its next page is unknown".to_owned(),
            }),
        }
    }

    /// Reads one page of the parent: its records' fields the children need.
    async fn parent_page(&mut self, parent: &Resource, sweep: ParentSweep) -> Result<ParentPage, Error> {
        // A parent is read whole for its children: an incremental one from its initial value.
        let start = parent.incremental.as_ref().map(|i| i.initial.as_str());
        let request = parent.request(&sweep.page, start, None)?;
        let response = parent.client.send(&request).await?;
        let url = parent.client.redactor.show(&response.url);
        let selector = chosen(&mut self.parent_selector, &response.body);
        let wanted: Vec<JsonPath> = parent.paging.wanted().to_vec();
        let single = parent.paging.single_page() || selector.object_is_record;
        let body = decode(response.body.clone(), selector.path, wanted, single).await?;
        let found = body.found || (body.absent && empty_answer(&response.body));
        if body.chunk.bad.iter().any(|b| b.row == 0) || !found {
            return Err(Error::Api {
                url,
                message: format!(
                    "the parent's response (HTTP {}) holds no records: {}",
                    response.status,
                    body.chunk
                        .bad
                        .first()
                        .map(|b| b.message.clone())
                        .unwrap_or_else(|| "nothing at the selector".into())
                ),
            });
        }
        let answer = Answer {
            url: &response.url,
            shown: &url,
            headers: &response.headers,
            captured: Some(&body.captured),
            records: Some(body.chunk.batch.num_rows() + body.chunk.bad.len()),
        };
        let detected = sweep.detected.clone().or_else(|| parent.paging.detect(&answer));
        let next = parent.kept(parent.paging.next(&sweep.page, &answer, detected.as_deref())?)?;
        if sweep.page == parent.paging.first() {
            self.parent_seen.check(&parent.first_state(&response.url), &url)?;
        }
        if let Next::Page(state) = &next {
            let shown = parent.shown(state, &url);
            if *state == sweep.page {
                return Err(looping(shown));
            }
            self.parent_seen.check(state, &shown)?;
        }
        let mut records = Vec::new();
        'records: for row in 0..body.chunk.batch.num_rows() {
            let mut values = BTreeMap::new();
            let mut key = BTreeMap::new();
            for field in &self.resource.parent_fields {
                match value_at(&body.chunk.batch, row, &field.path) {
                    Some(value) => {
                        if field.required {
                            key.insert(field.text.as_str(), value.clone());
                        }
                        values.insert(field.text.clone(), value);
                    }
                    None if field.required => {
                        warn!(source = %self.resource.name, url = %url, row = row + 1, field = %field.text, "parent record skipped: it lacks a field its children's requests need");
                        continue 'records;
                    }
                    None => {}
                }
            }
            let key = serde_json::to_string(&key).map_err(|e| Error::Internal(format!("a parent key: {e}")))?;
            records.push(ParentRecord { values, key });
        }
        // Resuming in a page: after the record finished last, wherever the API put it now.
        // (A key on the page twice: the one nearest where the count says.)
        let was = sweep.done.saturating_sub(1);
        let done = match &sweep.last {
            Some(last) => match records
                .iter()
                .enumerate()
                .filter(|(_, r)| &r.key == last)
                .map(|(i, _)| i as u64)
                .min_by_key(|i| i.abs_diff(was))
            {
                Some(index) => index + 1,
                None => {
                    warn!(source = %self.resource.name, url = %url, "the parent record finished last is no longer on its page; resuming by count");
                    sweep.done
                }
            },
            None => sweep.done,
        };
        Ok(ParentPage { state: sweep.page, number: sweep.pages + 1, records, next, detected, url, done })
    }

    /// Reads the next page of the stream `key`, starting its sweep when none is in progress.
    async fn sweep_page(&mut self, key: &str, parent: Option<&ParentRecord>) -> Result<SweptPage, Error> {
        let resource = self.resource.clone();
        let stream = self.position.streams.get(key).cloned().unwrap_or_default();
        let lag = resource.incremental.as_ref().map_or(0, |i| i.lag_secs);
        let mut sweep = match stream.sweep.clone() {
            Some(sweep) => sweep,
            None => {
                self.seen = Seen::default();
                let start = resource.incremental.as_ref().map(|incremental| match &stream.cursor {
                    Some(cursor) => position::CursorValue::parse(cursor).minus_secs(lag, cursor),
                    None => incremental.initial.clone(),
                });
                let mut sweep = Sweep::new(start);
                sweep.next = resource.paging.first();
                sweep
            }
        };
        let request = resource.request(&sweep.next, sweep.start.as_deref(), parent)?;
        let response = resource.client.send(&request).await?;
        let url = resource.client.redactor.show(&response.url);
        if sweep.next == resource.paging.first() {
            // An API whose last page links back to the first is stopped there.
            self.seen.check(&resource.first_state(&response.url), &url)?;
        }
        let Selector { path: selector, object_is_record } = chosen(&mut self.selector, &response.body);
        let bytes = response.body.len() as u64;
        // An object where records belong is one record only for a resource of one page (or
        // when `auto` found nothing but the object in the first body).
        let single = resource.paging.single_page() || object_is_record;
        let body = decode(response.body.clone(), selector.clone(), resource.paging.wanted().to_vec(), single).await?;
        let broken = body.chunk.bad.iter().any(|b| b.row == 0);
        let found = body.found || (body.absent && empty_answer(&response.body));
        let answer = Answer {
            url: &response.url,
            shown: &url,
            headers: &response.headers,
            captured: (!broken).then_some(body.captured.as_slice()),
            // A body without records where they belong is not an empty page.
            records: if broken || !found { None } else { Some(body.chunk.batch.num_rows() + body.chunk.bad.len()) },
        };
        let detected = sweep.detected.clone().or_else(|| resource.paging.detect(&answer));
        let mut next = resource.kept(resource.paging.next(&sweep.next, &answer, detected.as_deref())?)?;
        if (broken || !found) && resource.incremental.is_some() {
            // An incremental sweep never steps past a page it could not read: its cursor
            // would move past the records on it. (A resource read whole each run does; the
            // next run reads the page again.)
            next = Next::Unknown;
        }
        if let Next::Page(state) = &next
            && (*state == sweep.next || sweep.looped.as_ref() == Some(state) || self.seen.contains(state))
        {
            if answer.records == Some(0) {
                // An API that repeats its link or cursor on an empty page: that is its end.
                next = Next::Last;
            } else {
                // An API that links back to a page of this sweep would be read in a loop.
                // This page does not land, the sweep stays before it (remembering where it
                // linked, so a resumed sweep stops here too), no cursor moves past pages the
                // loop hides, and the run fails saying so, each run, until the API mends.
                let error = looping(resource.shown(state, &url));
                sweep.looped = Some(state.clone());
                sweep.detected = detected;
                let number = i64::try_from(sweep.pages + 1).unwrap_or(i64::MAX);
                self.position.streams.insert(key.to_owned(), Stream { sweep: Some(sweep), ..stream });
                self.failure = Some(error);
                return Ok(SweptPage { url, number, bytes, chunk: empty_chunk(), last: false });
            }
        }
        let mut chunk = body.chunk;
        if broken || !found {
            // The body is quarantined whole, with where it came from.
            let problem = chunk
                .bad
                .pop()
                .map(|b| b.message)
                .unwrap_or_else(|| format!("no records at `{}` (set `data_selector`)", selector.as_str()));
            let code = if broken { ErrorCode::JsonSyntax } else { ErrorCode::JsonShape };
            let record = BadRecord {
                row: 0,
                code,
                message: format!("HTTP {} from `{url}`: {problem}", response.status),
                // An API that echoes a key in its error body does not get it quarantined.
                raw: Some(resource.client.redactor.text(&crate::json::raw_body(&response.body))),
            };
            chunk = empty_chunk();
            if next == Next::Unknown {
                // Its next page is unknown: the sweep stays at this page, tried again next
                // run, and the same body is not quarantined twice.
                let hash = record_hash(&[], &String::from_utf8_lossy(&response.body));
                if sweep.stuck.as_deref() != Some(hash.as_str()) {
                    chunk.bad.push(record);
                }
                sweep.stuck = Some(hash);
                sweep.detected = detected;
                let number = i64::try_from(sweep.pages + 1).unwrap_or(i64::MAX);
                self.position.streams.insert(key.to_owned(), Stream { sweep: Some(sweep), ..stream });
                self.failure = Some(Error::Api {
                    url: url.clone(),
                    message: format!(
                        "HTTP {}: the body cannot be read ({problem}), so the next page is unknown; the page is read again next run",
                        response.status
                    ),
                });
                return Ok(SweptPage { url, number, bytes, chunk, last: false });
            }
            chunk.bad.push(record);
        }
        let (chunk, max, hashes) = self.filter(chunk, &stream, &sweep, parent)?;
        sweep.pages += 1;
        sweep.stuck = None;
        sweep.detected = detected;
        sweep.max = max;
        for (cursor, hash) in hashes {
            sweep.seen.entry(cursor).or_default().push(hash);
        }
        if let Some(top) = sweep.max.clone() {
            prune(&mut sweep.seen, &top, lag);
        }
        let number = i64::try_from(sweep.pages).unwrap_or(i64::MAX);
        let last = match next {
            Next::Page(state) => {
                self.seen.check(&state, &resource.shown(&state, &url))?;
                sweep.looped = None;
                sweep.next = state;
                self.position.streams.insert(key.to_owned(), Stream { sweep: Some(sweep), ..stream });
                false
            }
            Next::Last | Next::Unknown => {
                // The sweep is over: the cursor moves to the highest value it saw, and the
                // records within `lag` of it are remembered for the next sweep.
                let mut done = Stream { cursor: stream.cursor.clone(), boundary: stream.boundary.clone(), sweep: None };
                if let Some(max) = &sweep.max {
                    let cursor = max_of(done.cursor.take(), max);
                    for (value, hashes) in sweep.seen {
                        done.boundary.entry(value).or_default().extend(hashes);
                    }
                    prune(&mut done.boundary, &cursor, lag);
                    done.cursor = Some(cursor);
                }
                if resource.incremental.is_some() {
                    self.position.streams.insert(key.to_owned(), done);
                } else {
                    // A resource read whole each run keeps nothing between sweeps.
                    self.position.streams.remove(key);
                }
                true
            }
        };
        let mut chunk = chunk;
        if let Some(parent) = parent {
            chunk = with_parent_columns(chunk, parent, &resource.parent_fields)?;
        }
        Ok(SweptPage { url, number, bytes, chunk, last })
    }

    /// The page's records less those outside the incremental window and those landed before;
    /// records without their cursor or key, or with a cursor of another kind than the
    /// initial value's, go to quarantine. Also the highest cursor value of what is kept, and
    /// the (cursor, hash) of what is kept and quarantined.
    ///
    /// A quarantined record has no cursor to trust: it is remembered at the highest cursor
    /// met before it, which is where a sweep asking from `cursor - lag` meets it again when
    /// the API sorts by cursor, so a record quarantined at the boundary is not quarantined
    /// twice.
    #[allow(clippy::type_complexity)]
    fn filter(
        &mut self,
        chunk: RawChunk,
        stream: &Stream,
        sweep: &Sweep,
        parent: Option<&ParentRecord>,
    ) -> Result<(RawChunk, Option<String>, Vec<(String, String)>), Error> {
        let resource = self.resource.clone();
        let Some(incremental) = &resource.incremental else {
            return Ok((chunk, None, Vec::new()));
        };
        let RawChunk { batch, rows, bad, text, raw_style } = chunk;
        let kind = position::CursorValue::parse(&incremental.initial);
        let mut keep = Vec::with_capacity(batch.num_rows());
        let mut max: Option<String> = sweep.max.clone();
        let mut hashes = Vec::new();
        let parent_key = parent.map(|p| p.key.as_str());
        let key_columns: Vec<String> = resource.primary_key.iter().map(|k| k.as_str().to_owned()).collect();
        // Bad records the decoder found come in record order with the good ones.
        let mut pending: Vec<BadRecord> = bad;
        pending.reverse();
        let mut quarantined = Vec::new();
        let mut quarantine =
            |this: &mut Self, record: BadRecord, at: &Option<String>, hashes: &mut Vec<(String, String)>| {
                let place = at.clone().or_else(|| sweep.start.clone()).unwrap_or_default();
                let mut named = vec![("\u{0}bad", record.raw.as_deref())];
                if let Some(parent_key) = parent_key {
                    named.push(("\u{0}parent", Some(parent_key)));
                }
                let hash = record_hash(&named, "");
                if landed(stream, sweep, &place, &hash) || !this.landed.insert(short_hash(&hash)) {
                    return;
                }
                hashes.push((place, hash));
                quarantined.push(record);
            };
        for row in 0..batch.num_rows() {
            let number = rows.value(row);
            while pending.last().is_some_and(|b| b.row < number) {
                if let Some(record) = pending.pop() {
                    quarantine(self, record, &max, &mut hashes);
                }
            }
            let cursor = value_at(&batch, row, &incremental.path);
            let problem = match &cursor {
                None => Some(format!("the record has no cursor at `{}`", incremental.path.as_str())),
                Some(value) if !same_kind(&kind, value) => Some(format!(
                    "the cursor `{value}` at `{}` is not a {} like the initial value",
                    incremental.path.as_str(),
                    kind_name(&kind)
                )),
                Some(_) => None,
            };
            let Some(cursor) = cursor.filter(|_| problem.is_none()) else {
                let code = if problem.as_deref().is_some_and(|p| p.contains("no cursor")) {
                    ErrorCode::MissingKey
                } else {
                    ErrorCode::BadCursor
                };
                let record = BadRecord {
                    row: number,
                    code,
                    message: problem.unwrap_or_default(),
                    raw: Some(row_json(&batch, row)),
                };
                quarantine(self, record, &max, &mut hashes);
                keep.push(false);
                continue;
            };
            // Outside the window asked for: another sweep's, or no one's.
            let before = sweep.start.as_deref().is_some_and(|s| compare(&cursor, s).is_lt());
            let after = incremental.end.as_deref().is_some_and(|e| compare(&cursor, e).is_ge());
            if before || after {
                keep.push(false);
                continue;
            }
            let key: Vec<(&str, Option<String>)> = if key_columns.is_empty() {
                // No primary key: the whole record names it.
                own_fields(&batch, row)
            } else {
                let values: Vec<(&str, Option<String>)> = resource
                    .primary_key
                    .iter()
                    .zip(&key_columns)
                    .map(|(path, name)| (name.as_str(), value_at(&batch, row, path)))
                    .collect();
                if let Some((name, _)) = values.iter().find(|(_, v)| v.is_none()) {
                    let record = BadRecord {
                        row: number,
                        code: ErrorCode::MissingKey,
                        message: format!("the record has no `{name}` (its primary key)"),
                        raw: Some(row_json(&batch, row)),
                    };
                    quarantine(self, record, &max, &mut hashes);
                    keep.push(false);
                    continue;
                }
                values
            };
            let mut named: Vec<(&str, Option<&str>)> = key.iter().map(|(n, v)| (*n, v.as_deref())).collect();
            if let Some(parent_key) = parent_key {
                named.push(("\u{0}parent", Some(parent_key)));
            }
            let hash = record_hash(&named, &cursor);
            if landed(stream, sweep, &cursor, &hash) || !self.landed.insert(short_hash(&hash)) {
                keep.push(false);
                continue;
            }
            max = Some(max_of(max, &cursor));
            hashes.push((cursor, hash));
            keep.push(true);
        }
        while let Some(record) = pending.pop() {
            quarantine(self, record, &max, &mut hashes);
        }
        let mask = BooleanArray::from(keep);
        let dropped = mask.false_count();
        let batch = arrow::compute::filter_record_batch(&batch, &mask)
            .map_err(|e| Error::Internal(format!("filtering records: {e}")))?;
        let rows = arrow::compute::filter(&rows, &mask)
            .map_err(|e| Error::Internal(format!("filtering records: {e}")))?
            .as_any()
            .downcast_ref::<Int64Array>()
            .cloned()
            .ok_or_else(|| Error::Internal("record numbers are not int64".into()))?;
        if dropped > 0 {
            debug!(source = %resource.name, dropped, "records outside the window, landed before or quarantined");
        }
        Ok((RawChunk { batch, rows, bad: quarantined, text, raw_style }, max, hashes))
    }
}

/// A record's own fields (those it has, not null), by name: the same whatever columns the
/// other records of its page brought, in whatever order.
fn own_fields(batch: &RecordBatch, row: usize) -> Vec<(&str, Option<String>)> {
    let mut fields: Vec<(&str, Option<String>)> = batch
        .schema_ref()
        .fields()
        .iter()
        .enumerate()
        .filter_map(|(i, f)| cell(batch.column(i), row).map(|v| (f.name().as_str(), Some(v))))
        .collect();
    fields.sort_unstable_by(|a, b| a.0.cmp(b.0));
    fields
}

/// Whether a stream landed the record `hash` at `cursor`, before this sweep or in it.
fn landed(stream: &Stream, sweep: &Sweep, cursor: &str, hash: &str) -> bool {
    stream.boundary.get(cursor).is_some_and(|h| h.iter().any(|x| x == hash))
        || sweep.seen.get(cursor).is_some_and(|h| h.iter().any(|x| x == hash))
}

/// The first 64 bits of a record hash.
fn short_hash(hash: &str) -> u64 {
    u64::from_str_radix(hash, 16).unwrap_or_default()
}

/// Whether a cursor value is of the kind of the initial value (text takes anything).
fn same_kind(kind: &position::CursorValue, value: &str) -> bool {
    matches!(
        (kind, position::CursorValue::parse(value)),
        (position::CursorValue::Time(_), position::CursorValue::Time(_))
            | (position::CursorValue::Number(_), position::CursorValue::Number(_))
            | (position::CursorValue::Text(_), _)
    )
}

fn kind_name(kind: &position::CursorValue) -> &'static str {
    match kind {
        position::CursorValue::Time(_) => "timestamp",
        position::CursorValue::Number(_) => "number",
        position::CursorValue::Text(_) => "text",
    }
}

/// A page of nothing (its position still moves the stream).
fn empty_chunk() -> RawChunk {
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
async fn decode(
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
struct Selector {
    path: JsonPath,
    object_is_record: bool,
}

/// The selector: the one set, or chosen now from `body` and kept. A body that is not JSON,
/// or an empty answer, chooses nothing: it is read with a selector nothing matches, and the
/// next body chooses.
fn chosen(selector: &mut Option<Selector>, body: &[u8]) -> Selector {
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
/// array; else its one array field, or one of the usual names; else the body as one record
/// (a resource such as `/me`). `None` for a body that is not JSON.
fn auto_selector(body: &[u8]) -> Option<Selector> {
    let (chosen, object_is_record) = match serde_json::from_slice::<Value>(body).ok()? {
        // Nothing but empty and paging fields (`{}`, `{"data": null}`): no record, no choice.
        Value::Object(map) if !map.values().any(Value::is_array) && empty_answer(body) => return None,
        Value::Object(map) => {
            let arrays: Vec<&String> = map.iter().filter(|(_, v)| v.is_array()).map(|(k, _)| k).collect();
            let named = ["data", "items", "results", "records", "entries", "value", "rows"]
                .into_iter()
                .find(|name| map.get(*name).is_some_and(Value::is_array));
            match (arrays.as_slice(), named) {
                ([only], _) => (format!("$['{only}']"), false),
                (_, Some(name)) => (name.to_owned(), false),
                _ => ("$".to_owned(), true),
            }
        }
        _ => ("$".to_owned(), false),
    };
    Some(Selector { path: JsonPath::parse(&chosen).unwrap_or_else(|_| JsonPath::root()), object_is_record })
}

/// A text column's value at `row`.
fn cell(column: &ArrayRef, row: usize) -> Option<String> {
    let text = column.as_any().downcast_ref::<StringArray>()?;
    text.is_valid(row).then(|| text.value(row).to_owned())
}

/// The value a path names in a decoded record, as text: a top-level field's cell, or what a
/// deeper path names inside a nested value's JSON text. `None` when absent or `null`.
fn value_at(batch: &RecordBatch, row: usize, path: &JsonPath) -> Option<String> {
    let (first, rest) = path.steps.split_first()?;
    let PathStep::Key(name) = first else { return None };
    let text = cell(batch.column_by_name(name)?, row)?;
    if rest.is_empty() {
        return Some(text);
    }
    let nested: Value = serde_json::from_str(&text).ok()?;
    path.rest().first(&nested).map(json_text)
}

/// A decoded record as a JSON object of its text values (for quarantine).
fn row_json(batch: &RecordBatch, row: usize) -> String {
    let mut object = serde_json::Map::new();
    for (i, field) in batch.schema().fields().iter().enumerate() {
        if let Some(value) = cell(batch.column(i), row) {
            object.insert(field.name().clone(), Value::String(value));
        }
    }
    Value::Object(object).to_string()
}

/// The chunk with a child's parent values as columns (`_<parent>_<field>`).
fn with_parent_columns(chunk: RawChunk, parent: &ParentRecord, fields: &[ParentField]) -> Result<RawChunk, Error> {
    let RawChunk { batch, rows, bad, text, raw_style } = chunk;
    let n = batch.num_rows();
    let mut schema_fields: Vec<Field> = batch.schema().fields().iter().map(|f| f.as_ref().clone()).collect();
    let mut columns: Vec<ArrayRef> = batch.columns().to_vec();
    for field in fields {
        if schema_fields.iter().any(|f| f.name() == &field.column) {
            continue;
        }
        let value = parent.values.get(&field.text).cloned();
        schema_fields.push(Field::new(&field.column, DataType::Utf8, true));
        columns.push(Arc::new(StringArray::from(vec![value; n])));
    }
    let options = arrow::array::RecordBatchOptions::new().with_row_count(Some(n));
    let batch = RecordBatch::try_new_with_options(Arc::new(Schema::new(schema_fields)), columns, &options)
        .map_err(|e| Error::Internal(format!("adding the parent's columns: {e}")))?;
    Ok(RawChunk { batch, rows, bad, text, raw_style })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn placeholders_fill_from_the_window_and_the_parent() {
        let parent =
            ParentRecord { values: BTreeMap::from([("name".to_owned(), "a b/c".to_owned())]), key: String::new() };
        let text = "repos/{resources.repos.name}/issues?since={incremental.start_value}";
        assert_eq!(
            fill(text, Some("2024-01-01T00:00:00Z"), None, Some(&parent), false).unwrap(),
            "repos/a b/c/issues?since=2024-01-01T00:00:00Z"
        );
        assert_eq!(fill("r/{resources.repos.name}", None, None, Some(&parent), true).unwrap(), "r/a%20b%2Fc");
        assert!(fill("{incremental.end_value}", None, None, None, false).is_err());
    }

    #[test]
    fn bodies_take_tokens_at_paths() {
        let mut body = serde_json::json!({"filter": {"since": "x"}});
        set_at(&mut body, &JsonPath::parse("page.cursor").unwrap().steps, Value::from("t1"));
        assert_eq!(body, serde_json::json!({"filter": {"since": "x"}, "page": {"cursor": "t1"}}));
    }

    #[test]
    fn auto_selection() {
        let chosen = |body: &[u8]| auto_selector(body).map(|s| (s.path.as_str().to_owned(), s.object_is_record));
        assert_eq!(chosen(br#"[{"a":1}]"#), Some(("$".into(), false)));
        assert_eq!(chosen(br#"{"meta":{},"things":[1]}"#), Some(("$['things']".into(), false)));
        assert_eq!(chosen(br#"{"data":[1],"errors":[]}"#), Some(("data".into(), false)));
        assert_eq!(chosen(br#"{"id":1}"#), Some(("$".into(), true)));
        assert_eq!(chosen(br#"{"data": null, "next": null}"#), None);
        assert_eq!(chosen(br#"{}"#), None);
        assert_eq!(chosen(b"<html>"), None);
    }

    #[test]
    fn error_objects_are_told_from_empty_answers() {
        for empty in [
            &br#"{}"#[..],
            br#"{"kind": "list", "etag": "x"}"#,
            br#"{"data": null, "next": null}"#,
            br#"{"items": [], "meta": {"page": 9}, "total": 0}"#,
        ] {
            assert!(empty_answer(empty), "{}", String::from_utf8_lossy(empty));
        }
        for error in [
            &br#"{"message": "temporarily unavailable"}"#[..],
            br#"{"Error": {"code": 7}}"#,
            br#"{"data": null, "error": null, "message": "down"}"#,
            br#"{"title": "Service Unavailable", "status": 503}"#,
            br#"{"success": false}"#,
            br#"{"errors": []}"#,
            b"<html>",
            b"[]",
        ] {
            assert!(!empty_answer(error), "{}", String::from_utf8_lossy(error));
        }
    }

    #[test]
    fn a_record_without_key_is_named_by_its_own_fields() {
        let decode = |body: &[u8]| crate::json::decode_body(body, &JsonPath::root(), &[], false).unwrap().chunk.batch;
        let alone = decode(br#"[{"id": 1, "u": "t"}]"#);
        let among = decode(br#"[{"u": "t2", "id": 2, "extra": "x"}, {"id": 1, "u": "t", "extra": null}]"#);
        assert_eq!(own_fields(&alone, 0), own_fields(&among, 1));
        assert_ne!(own_fields(&among, 0), own_fields(&among, 1));
    }

    #[test]
    fn values_at_paths_in_decoded_records() {
        let body = br#"[{"id": 1, "meta": {"updated": "2024-01-01T00:00:00Z", "n": 5}}, {"id": null}]"#;
        let decoded = crate::json::decode_body(body, &JsonPath::parse("$").unwrap(), &[], false).unwrap();
        let batch = &decoded.chunk.batch;
        assert_eq!(value_at(batch, 0, &JsonPath::parse("id").unwrap()).as_deref(), Some("1"));
        assert_eq!(
            value_at(batch, 0, &JsonPath::parse("meta.updated").unwrap()).as_deref(),
            Some("2024-01-01T00:00:00Z")
        );
        assert_eq!(value_at(batch, 0, &JsonPath::parse("meta.n").unwrap()).as_deref(), Some("5"));
        assert_eq!(value_at(batch, 1, &JsonPath::parse("id").unwrap()), None);
        assert_eq!(value_at(batch, 1, &JsonPath::parse("meta.n").unwrap()), None);
    }
}
