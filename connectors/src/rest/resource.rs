//! A resource of an API, resolved from its config: secrets read, paths parsed, its client
//! built; and the request for each page, placeholders filled.

use std::sync::Arc;
use std::sync::atomic::AtomicU64;
use std::time::Duration;

use inlet_engine::config::{
    Auth, HttpMethod, JsonPath, PathStep, RestSource, env_reference, placeholders, toml_to_json,
};
use inlet_engine::run::Pipeline;
use serde_json::Value;
use tracing::warn;
use url::Url;

use super::auth::{Credentials, OAuth};
use super::client::{self, Client, Limiter, Request, Retries};
use super::paginate::{Next, PageState, Paging};
use super::redact::Redactor;
use super::sweep::ParentRecord;
use crate::Error;

/// What a value put into a URL path is encoded against: all but RFC 3986's unreserved.
const PATH_SEGMENT: &percent_encoding::AsciiSet =
    &percent_encoding::NON_ALPHANUMERIC.remove(b'-').remove(b'.').remove(b'_').remove(b'~');

/// The incremental settings of a resource.
pub(super) struct Cursoring {
    pub(super) path: JsonPath,
    pub(super) initial: String,
    param: Option<String>,
    pub(super) end: Option<String>,
    end_param: Option<String>,
    pub(super) lag_secs: u64,
}

/// A query parameter of a resource.
struct Param {
    name: String,
    value: String,
    /// Read from the environment: sent as it is, never filled (nor shown in an error).
    secret: bool,
}

/// A field of its parent's records a child needs.
pub(super) struct ParentField {
    /// The path as written.
    pub(super) text: String,
    pub(super) path: JsonPath,
    /// The column its value lands in (`_<parent>_<field>`).
    pub(super) column: String,
    /// Whether a request needs it (a placeholder names it): the parent records without it
    /// have no children to read, and such fields alone name a parent record's stream.
    /// Fields only in `include_from_parent` are columns, `null` when the parent lacks them.
    pub(super) required: bool,
}

/// A resource, resolved: secrets read, paths parsed, its client built.
pub(super) struct Resource {
    pub(super) name: String,
    base_url: Url,
    /// Where its requests go: `base_url`, or the host of an absolute `path`.
    home: Url,
    path: String,
    method: HttpMethod,
    /// Query parameters (secrets read; placeholders still in the others). The secret ones
    /// are added again to links the API gives.
    params: Vec<Param>,
    json: Option<Value>,
    pub(super) paging: Paging,
    pub(super) selector: Option<JsonPath>,
    pub(super) primary_key: Vec<JsonPath>,
    pub(super) incremental: Option<Cursoring>,
    /// The fields of its parent's records a child needs.
    pub(super) parent_fields: Vec<ParentField>,
    pub(super) client: Client,
}

impl Resource {
    pub(super) fn new(
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
        for (key, value) in &config.params {
            let text = value.as_text();
            let resolved = env(&text, &format!("params.{key}"))?;
            let secret = env_reference(&text).is_some();
            if secret {
                redactor.secret_param(key);
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
    pub(super) fn request(
        &self,
        state: &PageState,
        start: Option<&str>,
        parent: Option<&ParentRecord>,
    ) -> Result<Request, Error> {
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
                let missing: Vec<&Param> = self
                    .params
                    .iter()
                    .filter(|p| p.secret && credentials && !url.query_pairs().any(|(q, _)| q == p.name.as_str()))
                    .collect();
                if !missing.is_empty() {
                    url.query_pairs_mut().extend_pairs(missing.iter().map(|p| (p.name.as_str(), p.value.as_str())));
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
    pub(super) fn kept(&self, next: Next) -> Result<Next, Error> {
        Ok(match next {
            Next::Page(PageState::Url { url }) => {
                let parsed = Url::parse(&url).map_err(|e| Error::Internal(format!("a next link: {e}")))?;
                Next::Page(PageState::Url { url: self.client.redactor.keep(&parsed) })
            }
            other => other,
        })
    }

    /// The first page as the link an API would give back to it.
    pub(super) fn first_state(&self, url: &Url) -> PageState {
        PageState::Url { url: self.client.redactor.keep(url) }
    }

    /// A page state as errors show it: a link masked, or the page just read's URL.
    pub(super) fn shown(&self, state: &PageState, current: &str) -> String {
        match state {
            PageState::Url { url } => Url::parse(url).map(|u| self.client.redactor.show(&u)).unwrap_or_default(),
            _ => current.to_owned(),
        }
    }
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
pub(super) fn json_text(value: &Value) -> String {
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

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

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
}
