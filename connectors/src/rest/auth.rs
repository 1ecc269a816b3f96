//! How a REST source's requests authenticate.
//!
//! Secrets were read from the environment when the source was built, and every one of them
//! is known to the source's [`Redactor`], so none shows in a URL, a log line or an error. An
//! OAuth 2.0 client-credentials token is fetched on first use, renewed shortly before it
//! expires, and dropped when a request is refused with 401 (the request is then tried once
//! more with a new token).

use std::time::{Duration, Instant};

use inlet_engine::config::ApiKeyLocation;
use url::Url;

use super::redact::Redactor;
use crate::Error;

/// A source's credentials, resolved.
pub(crate) enum Credentials {
    None,
    Bearer(String),
    Basic { username: String, password: String },
    ApiKey { name: String, key: String, location: ApiKeyLocation },
    OAuth(Box<OAuth>),
}

/// OAuth 2.0 client credentials and the token they got.
pub(crate) struct OAuth {
    pub token_url: Url,
    pub client_id: String,
    pub client_secret: String,
    pub scope: Option<String>,
    pub params: Vec<(String, String)>,
    pub default_expiry: Duration,
    pub client_auth_basic: bool,
    pub token: tokio::sync::Mutex<Option<Token>>,
}

/// An access token and when to stop using it.
#[derive(Clone)]
pub(crate) struct Token {
    value: String,
    renew_at: Instant,
}

impl Credentials {
    /// Adds the credentials to a request (a query key goes into `url` first).
    pub async fn apply(
        &self,
        http: &reqwest::Client,
        url: &mut Url,
        redactor: &Redactor,
        timeout: Duration,
    ) -> Result<Vec<(reqwest::header::HeaderName, String)>, Error> {
        use reqwest::header::AUTHORIZATION;
        Ok(match self {
            Credentials::None => Vec::new(),
            Credentials::Bearer(token) => vec![(AUTHORIZATION, format!("Bearer {token}"))],
            Credentials::Basic { username, password } => {
                use base64::Engine as _;
                let encoded = base64::engine::general_purpose::STANDARD.encode(format!("{username}:{password}"));
                redactor.secret(&encoded);
                vec![(AUTHORIZATION, format!("Basic {encoded}"))]
            }
            Credentials::ApiKey { name, key, location: ApiKeyLocation::Header } => {
                let header = reqwest::header::HeaderName::from_bytes(name.as_bytes())
                    .map_err(|e| Error::Config { message: format!("`{name}` is not a header name: {e}") })?;
                vec![(header, key.clone())]
            }
            Credentials::ApiKey { name, key, location: ApiKeyLocation::Query } => {
                let kept: Vec<(String, String)> = url
                    .query_pairs()
                    .filter(|(k, _)| k != name)
                    .map(|(k, v)| (k.into_owned(), v.into_owned()))
                    .collect();
                url.query_pairs_mut().clear().extend_pairs(kept).append_pair(name, key);
                Vec::new()
            }
            Credentials::OAuth(oauth) => {
                let token = oauth.token(http, redactor, timeout).await?;
                vec![(AUTHORIZATION, format!("Bearer {token}"))]
            }
        })
    }

    /// Whether a 401 may be cured by fetching a new token.
    pub fn renewable(&self) -> bool {
        matches!(self, Credentials::OAuth(_))
    }

    /// Drops the token a request was refused with.
    pub async fn invalidate(&self) {
        if let Credentials::OAuth(oauth) = self {
            *oauth.token.lock().await = None;
        }
    }
}

/// Tokens are renewed this long before they expire (or a tenth of their life, if shorter).
const RENEW_BEFORE: Duration = Duration::from_secs(60);

/// Token requests tried at most, for network failures and 5xx.
const TOKEN_ATTEMPTS: u32 = 3;

impl OAuth {
    /// The current token, fetched when there is none or it is about to expire.
    async fn token(&self, http: &reqwest::Client, redactor: &Redactor, timeout: Duration) -> Result<String, Error> {
        let mut slot = self.token.lock().await;
        if let Some(token) = slot.as_ref()
            && Instant::now() < token.renew_at
        {
            return Ok(token.value.clone());
        }
        let token = self.fetch(http, redactor, timeout).await?;
        let value = token.value.clone();
        *slot = Some(token);
        Ok(value)
    }

    async fn fetch(&self, http: &reqwest::Client, redactor: &Redactor, timeout: Duration) -> Result<Token, Error> {
        let shown = redactor.show(&self.token_url);
        let mut form: Vec<(&str, &str)> = vec![("grant_type", "client_credentials")];
        if !self.client_auth_basic {
            form.push(("client_id", &self.client_id));
            form.push(("client_secret", &self.client_secret));
        }
        if let Some(scope) = &self.scope {
            form.push(("scope", scope));
        }
        form.extend(self.params.iter().map(|(k, v)| (k.as_str(), v.as_str())));
        let mut last = String::new();
        for attempt in 0..TOKEN_ATTEMPTS {
            if attempt > 0 {
                tokio::time::sleep(Duration::from_millis(250 << attempt)).await;
            }
            let mut request = http.post(self.token_url.clone()).timeout(timeout).form(&form);
            if self.client_auth_basic {
                request = request.basic_auth(&self.client_id, Some(&self.client_secret));
            }
            let response = match request.send().await {
                Ok(response) => response,
                Err(e) => {
                    last = redactor.text(&e.without_url().to_string());
                    continue;
                }
            };
            let status = response.status();
            let body = match response.bytes().await {
                Ok(body) => body,
                Err(e) => {
                    last = redactor.text(&e.without_url().to_string());
                    continue;
                }
            };
            if status.is_server_error() || status.as_u16() == 408 || status.as_u16() == 429 {
                last = format!("HTTP {status}");
                continue;
            }
            if !status.is_success() {
                let detail = redactor.text(&String::from_utf8_lossy(&body[..body.len().min(200)]));
                return Err(Error::Auth {
                    url: shown,
                    message: format!("the token request was refused: HTTP {status}: {detail}"),
                });
            }
            #[derive(serde::Deserialize)]
            struct Granted {
                access_token: String,
                #[serde(default)]
                expires_in: Option<serde_json::Value>,
            }
            let granted: Granted = serde_json::from_slice(&body).map_err(|e| Error::Auth {
                url: shown.clone(),
                message: format!("the token response has no `access_token`: {e}"),
            })?;
            redactor.secret(&granted.access_token);
            let life = granted
                .expires_in
                .and_then(|e| e.as_u64().or_else(|| e.as_str().and_then(|s| s.parse().ok())))
                .map_or(self.default_expiry, Duration::from_secs);
            // A token that "never expires" is still renewed within a day: no overflow, and a
            // revoked one is noticed (a 401 renews it sooner anyway).
            let life = life.min(Duration::from_secs(24 * 3600));
            let renew_at = Instant::now() + life.saturating_sub(RENEW_BEFORE.min(life / 10));
            return Ok(Token { value: granted.access_token, renew_at });
        }
        Err(Error::Request {
            method: "POST",
            url: shown,
            message: format!("no token after {TOKEN_ATTEMPTS} tries: {last}"),
        })
    }
}
