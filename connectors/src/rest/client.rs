//! HTTP for a REST source: credentials, a client-side rate limit, timeouts and retries.
//!
//! A request that times out, cannot connect, or gets 408, 429 or a 5xx is tried again, up to
//! `max_retries` times, after a wait that doubles each time with full jitter, or as long as
//! a `Retry-After` header asks (seconds or a date), never longer than
//! `retry_max_backoff_secs`. A 401 with renewable credentials (OAuth) is tried once more
//! with a new token. Every request, retries included, waits its turn under
//! `requests_per_second`. Errors name the method and the URL with secrets masked.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use bytes::Bytes;
use inlet_engine::config::HttpMethod;
use reqwest::header::{HeaderMap, HeaderName, HeaderValue};
use tracing::{debug, warn};
use url::Url;

use super::auth::Credentials;
use super::redact::Redactor;
use crate::Error;

/// A request a sweep makes.
#[derive(Debug, Clone)]
pub(crate) struct Request {
    pub method: HttpMethod,
    pub url: Url,
    pub body: Option<serde_json::Value>,
    /// Whether the source's credentials go with it (not to another host).
    pub credentials: bool,
}

/// The largest response body read: a bigger one is an error, not a process out of memory.
pub(crate) const MAX_BODY_BYTES: usize = 256 << 20;

/// A response with its whole body.
pub(crate) struct Response {
    pub status: u16,
    pub headers: HeaderMap,
    pub body: Bytes,
    /// Where it came from, credentials in it (query keys) included.
    pub url: Url,
}

/// How requests are retried.
#[derive(Debug, Clone)]
pub(crate) struct Retries {
    pub max_retries: u32,
    pub initial_backoff: Duration,
    pub max_backoff: Duration,
}

/// The process's HTTP client: building one reads the system's certificates (blocking file
/// IO), so it is built once, on a blocking thread, and shared, keeping its connections
/// between runs (`serve` polls). Timeouts are set per request.
async fn http_client() -> Result<reqwest::Client, Error> {
    static CLIENT: tokio::sync::OnceCell<reqwest::Client> = tokio::sync::OnceCell::const_new();
    CLIENT
        .get_or_try_init(|| async {
            tokio::task::spawn_blocking(|| {
                reqwest::Client::builder()
                    .connect_timeout(Duration::from_secs(10))
                    .redirect(same_host_redirects())
                    .user_agent(concat!("inlet/", env!("CARGO_PKG_VERSION")))
                    .build()
                    .map_err(|e| Error::Config { message: format!("building the HTTP client: {e}") })
            })
            .await
            .map_err(|e| Error::Internal(format!("building the HTTP client: {e}")))?
        })
        .await
        .cloned()
}

/// The most redirects one request follows.
const MAX_REDIRECTS: usize = 10;

/// Redirects are followed by the client on the scheme, host and port they start from only:
/// one elsewhere would take the source's headers (its keys among them) with it, and the
/// client drops `Authorization` on any other. A move from http up to https on the same host
/// is followed by [`Client::send`] itself ([`upgrade`]), credentials sent again; any other
/// redirect response is the answer, an error naming its status.
fn same_host_redirects() -> reqwest::redirect::Policy {
    reqwest::redirect::Policy::custom(|attempt| {
        let allowed = attempt.previous().last().is_some_and(|from| {
            from.scheme() == attempt.url().scheme()
                && from.host_str() == attempt.url().host_str()
                && from.port_or_known_default() == attempt.url().port_or_known_default()
        });
        if attempt.previous().len() > MAX_REDIRECTS {
            attempt.error("more than 10 redirects")
        } else if allowed {
            attempt.follow()
        } else {
            attempt.stop()
        }
    })
}

/// Whether `to` is where `from`'s credentials may go: the same scheme, host and port, or the
/// same host moved from http up to https on their default ports (never down).
pub(crate) fn same_site(from: &Url, to: &Url) -> bool {
    from.host_str() == to.host_str()
        && ((from.scheme() == to.scheme() && from.port_or_known_default() == to.port_or_known_default())
            || (from.scheme() == "http" && to.scheme() == "https" && from.port().is_none() && to.port().is_none()))
}

/// Where a redirect response from `from` moves a request up from http to https on the same
/// host (`None` for any other answer).
fn upgrade(from: &Url, status: u16, headers: &HeaderMap) -> Option<Url> {
    if !matches!(status, 301 | 302 | 303 | 307 | 308) || from.scheme() != "http" {
        return None;
    }
    let location = headers.get(reqwest::header::LOCATION)?.to_str().ok()?;
    let to = from.join(location).ok()?;
    (to.scheme() == "https" && same_site(from, &to)).then_some(to)
}

/// The HTTP client of a source (and of its parent's requests).
pub(crate) struct Client {
    credentials: Credentials,
    headers: Vec<(HeaderName, HeaderValue)>,
    limiter: Option<Arc<Limiter>>,
    retries: Retries,
    timeout: Duration,
    pub redactor: Redactor,
    requests: Arc<AtomicU64>,
}

impl Client {
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        credentials: Credentials,
        headers: Vec<(HeaderName, HeaderValue)>,
        limiter: Option<Arc<Limiter>>,
        retries: Retries,
        timeout: Duration,
        redactor: Redactor,
        requests: Arc<AtomicU64>,
    ) -> Client {
        Client { credentials, headers, limiter, retries, timeout, redactor, requests }
    }

    /// Sends `request` until it succeeds, fails for good or runs out of retries.
    pub async fn send(&self, request: &Request) -> Result<Response, Error> {
        let mut shown = self.redactor.show(&request.url);
        // A redirect of a POST with 301, 302 or 303 asks for a GET, as browsers read it.
        let mut method = request.method;
        let mut body = request.body.as_ref();
        let http = http_client().await?;
        let mut attempt = 0u32;
        let mut renewed = false;
        let mut target = request.url.clone();
        let mut upgrades = 0;
        loop {
            if let Some(limiter) = &self.limiter {
                limiter.wait().await;
            }
            let mut url = target.clone();
            let credentials = if request.credentials {
                self.credentials.apply(&http, &mut url, &self.redactor, self.timeout).await?
            } else {
                Vec::new()
            };
            let mut builder = match method {
                HttpMethod::Get => http.get(url.clone()),
                HttpMethod::Post => http.post(url.clone()),
            }
            .timeout(self.timeout);
            // Secret headers (`${env:NAME}`) go with the credentials, to the API's host only.
            for (name, value) in self.headers.iter().filter(|(_, v)| request.credentials || !v.is_sensitive()) {
                builder = builder.header(name, value);
            }
            for (name, value) in credentials {
                builder = builder.header(name, value);
            }
            if let Some(body) = body {
                let bytes = serde_json::to_vec(body).map_err(|e| Error::Internal(format!("request body: {e}")))?;
                builder = builder.header(reqwest::header::CONTENT_TYPE, "application/json").body(bytes);
            }
            self.requests.fetch_add(1, Ordering::Relaxed);
            let failure = match builder.send().await {
                Ok(response) => {
                    let status = response.status().as_u16();
                    let headers = response.headers().clone();
                    let retry_after = retry_after(&headers);
                    // Where the answer came from, after the redirects the client followed.
                    let url = response.url().clone();
                    if let Some(to) = upgrade(&url, status, &headers).filter(|_| upgrades < MAX_REDIRECTS) {
                        upgrades += 1;
                        debug!(from = %self.redactor.show(&url), to = %self.redactor.show(&to), "moved up to https");
                        if status != 307 && status != 308 && method == HttpMethod::Post {
                            method = HttpMethod::Get;
                            body = None;
                        }
                        shown = self.redactor.show(&to);
                        target = to;
                        continue;
                    }
                    if status == 401 && self.credentials.renewable() && !renewed {
                        renewed = true;
                        debug!(url = %shown, "refused with 401; renewing the token");
                        self.credentials.invalidate().await;
                        continue;
                    }
                    let retryable = status == 408 || status == 429 || status >= 500;
                    match read_body(response).await {
                        Err(Read::TooBig) => {
                            return Err(Error::Api {
                                url: shown,
                                message: format!(
                                    "the response body is more than {} MiB: ask for smaller pages",
                                    MAX_BODY_BYTES >> 20
                                ),
                            });
                        }
                        Ok(body) if (200..300).contains(&status) => {
                            return Ok(Response { status, headers, body, url });
                        }
                        Ok(body) if !retryable || attempt >= self.retries.max_retries => {
                            let detail = String::from_utf8_lossy(&body[..body.len().min(300)]);
                            let detail = self.redactor.text(detail.trim());
                            return Err(Error::Status {
                                method: verb(method),
                                url: shown,
                                status,
                                detail: if detail.is_empty() { String::new() } else { format!(": {detail}") },
                            });
                        }
                        Ok(_) => Failure { what: format!("HTTP {status}"), wait: retry_after },
                        // The body broke off: as if there were no response.
                        Err(Read::Broken(e)) => {
                            Failure { what: self.redactor.text(&e.without_url().to_string()), wait: None }
                        }
                    }
                }
                Err(e) => Failure { what: describe(&e, &self.redactor), wait: None },
            };
            if attempt >= self.retries.max_retries {
                return Err(Error::Request {
                    method: verb(method),
                    url: shown,
                    message: format!("{} (after {attempt} retries)", failure.what),
                });
            }
            attempt += 1;
            let wait = match failure.wait {
                Some(asked) => asked.min(self.retries.max_backoff),
                None => backoff(&self.retries, attempt),
            };
            warn!(url = %shown, attempt, error = %failure.what, wait_ms = wait.as_millis() as u64, "request failed; trying again");
            tokio::time::sleep(wait).await;
        }
    }
}

fn verb(method: HttpMethod) -> &'static str {
    match method {
        HttpMethod::Get => "GET",
        HttpMethod::Post => "POST",
    }
}

/// Why a body was not read whole.
enum Read {
    TooBig,
    Broken(reqwest::Error),
}

/// A response's body, at most [`MAX_BODY_BYTES`] of it.
async fn read_body(mut response: reqwest::Response) -> Result<Bytes, Read> {
    let announced = response.content_length().unwrap_or(0);
    if announced > MAX_BODY_BYTES as u64 {
        return Err(Read::TooBig);
    }
    let mut body = bytes::BytesMut::with_capacity(announced as usize);
    while let Some(chunk) = response.chunk().await.map_err(Read::Broken)? {
        if body.len() + chunk.len() > MAX_BODY_BYTES {
            return Err(Read::TooBig);
        }
        body.extend_from_slice(&chunk);
    }
    Ok(body.freeze())
}

/// Why an attempt failed, and how long the server asked to wait.
struct Failure {
    what: String,
    wait: Option<Duration>,
}

/// A transport error without its URL (which may hold a key), masked.
fn describe(error: &reqwest::Error, redactor: &Redactor) -> String {
    let kind = if error.is_timeout() {
        "timed out"
    } else if error.is_connect() {
        "could not connect"
    } else {
        "no response"
    };
    let mut text = kind.to_owned();
    let mut source = std::error::Error::source(error);
    while let Some(inner) = source {
        text.push_str(": ");
        text.push_str(&inner.to_string());
        source = inner.source();
    }
    redactor.text(&text)
}

/// Exponential backoff with full jitter: up to `initial * 2^(attempt-1)`, capped.
fn backoff(retries: &Retries, attempt: u32) -> Duration {
    let ceiling =
        retries.initial_backoff.saturating_mul(1u32 << attempt.saturating_sub(1).min(20)).min(retries.max_backoff);
    Duration::from_millis(rand::random_range(0..=u64::try_from(ceiling.as_millis()).unwrap_or(u64::MAX)))
}

/// What a `Retry-After` header asks: seconds, or an HTTP date.
fn retry_after(headers: &HeaderMap) -> Option<Duration> {
    let text = headers.get(reqwest::header::RETRY_AFTER)?.to_str().ok()?.trim();
    if let Ok(secs) = text.parse::<u64>() {
        return Some(Duration::from_secs(secs));
    }
    let at = httpdate::parse_http_date(text).ok()?;
    Some(at.duration_since(std::time::SystemTime::now()).unwrap_or_default())
}

/// Spaces the starts of requests at least `1 / requests_per_second` apart.
pub(crate) struct Limiter {
    interval: Duration,
    next: tokio::sync::Mutex<tokio::time::Instant>,
}

impl Limiter {
    pub fn new(requests_per_second: f64) -> Limiter {
        Limiter {
            // At most a day apart (configuration asks for at least one request a day).
            interval: Duration::try_from_secs_f64(1.0 / requests_per_second)
                .unwrap_or(Duration::MAX)
                .min(Duration::from_secs(86_400)),
            next: tokio::sync::Mutex::new(tokio::time::Instant::now()),
        }
    }

    /// Waits for this request's turn: at least the interval after the previous request
    /// actually started (waiters take turns, holding the lock while they wait).
    pub async fn wait(&self) {
        let mut next = self.next.lock().await;
        tokio::time::sleep_until(*next).await;
        *next = tokio::time::Instant::now() + self.interval;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retry_after_takes_seconds_and_dates() {
        let mut headers = HeaderMap::new();
        headers.insert(reqwest::header::RETRY_AFTER, HeaderValue::from_static("7"));
        assert_eq!(retry_after(&headers), Some(Duration::from_secs(7)));
        let later = httpdate::fmt_http_date(std::time::SystemTime::now() + Duration::from_secs(30));
        headers.insert(reqwest::header::RETRY_AFTER, HeaderValue::from_str(&later).unwrap());
        let wait = retry_after(&headers).unwrap();
        assert!(wait > Duration::from_secs(27) && wait <= Duration::from_secs(30), "{wait:?}");
        headers.insert(reqwest::header::RETRY_AFTER, HeaderValue::from_static("soon"));
        assert_eq!(retry_after(&headers), None);
    }

    #[test]
    fn backoff_doubles_and_caps() {
        let retries = Retries {
            max_retries: 5,
            initial_backoff: Duration::from_millis(100),
            max_backoff: Duration::from_secs(1),
        };
        for attempt in 1..10 {
            let wait = backoff(&retries, attempt);
            let ceiling = Duration::from_millis(100 << (attempt - 1).min(20)).min(Duration::from_secs(1));
            assert!(wait <= ceiling, "{attempt}: {wait:?}");
        }
    }

    #[test]
    fn credentials_stay_on_their_site() {
        let url = |text: &str| Url::parse(text).unwrap();
        assert!(same_site(&url("https://api.x/v1/"), &url("https://api.x/v1/items?page=2")));
        assert!(same_site(&url("https://api.x/"), &url("https://api.x:443/a")));
        assert!(same_site(&url("http://api.x/"), &url("https://api.x/a")));
        assert!(!same_site(&url("https://api.x/"), &url("http://api.x/a")));
        assert!(!same_site(&url("https://api.x/"), &url("https://api.x:8443/a")));
        assert!(!same_site(&url("https://api.x/"), &url("https://cdn.x/a")));
        // Up to https on the default ports only.
        assert!(same_site(&url("http://api.x:80/"), &url("https://api.x:443/a")));
        assert!(!same_site(&url("http://api.x/"), &url("https://api.x:8443/a")));
        assert!(!same_site(&url("http://api.x:8080/"), &url("https://api.x/a")));
    }

    #[test]
    fn redirects_up_to_https_are_followed_by_hand() {
        let url = |text: &str| Url::parse(text).unwrap();
        let moved = |location: &str| {
            let mut headers = HeaderMap::new();
            headers.insert(reqwest::header::LOCATION, HeaderValue::from_str(location).unwrap());
            headers
        };
        let from = url("http://api.x/v1/items?page=2");
        assert_eq!(
            upgrade(&from, 301, &moved("https://api.x/v1/items?page=2")),
            Some(url("https://api.x/v1/items?page=2"))
        );
        assert_eq!(upgrade(&from, 308, &moved("https://api.x/v2/items")), Some(url("https://api.x/v2/items")));
        assert_eq!(upgrade(&from, 301, &moved("/v2/items")), None);
        assert_eq!(upgrade(&from, 301, &moved("https://other.x/v1/items")), None);
        assert_eq!(upgrade(&from, 301, &moved("https://api.x:8443/v1/items")), None);
        assert_eq!(upgrade(&from, 200, &moved("https://api.x/v1/items")), None);
        assert_eq!(upgrade(&url("https://api.x/"), 301, &moved("https://api.x/a")), None);
    }

    #[tokio::test]
    async fn the_limiter_spaces_requests() {
        let limiter = Limiter::new(40.0);
        let began = tokio::time::Instant::now();
        for _ in 0..5 {
            limiter.wait().await;
        }
        // The first goes at once, the four others 25 ms apart.
        let elapsed = began.elapsed();
        assert!(elapsed >= Duration::from_millis(100) && elapsed < Duration::from_millis(400), "{elapsed:?}");
    }
}
