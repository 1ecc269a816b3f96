//! Secrets out of everything a REST source shows or keeps.
//!
//! A source knows its secrets (the values of its `${env:NAME}` references, the OAuth token
//! it holds) and the names of the query parameters that carry them. URLs it shows (the rows'
//! `_source_url`, logs, errors, the run history) have those values replaced by `***`; URLs it
//! keeps in its position (a next page's link) have those parameters removed, since the
//! request that follows them adds them again.

use std::collections::BTreeSet;
use std::sync::{Arc, RwLock};

use url::Url;

/// What stands in for a secret.
pub(crate) const MASK: &str = "***";

/// The secrets of one source: values shared with its parent's (each masks the other's),
/// secret parameter names its own.
#[derive(Debug, Default, Clone)]
pub(crate) struct Redactor {
    values: Arc<RwLock<BTreeSet<String>>>,
    params: Arc<RwLock<BTreeSet<String>>>,
}

impl Redactor {
    /// A redactor knowing this one's secret values (and those added to either later), with
    /// secret parameters of its own.
    pub fn sibling(&self) -> Redactor {
        Redactor { values: self.values.clone(), params: Arc::default() }
    }

    /// Adds a secret value (empty values are ignored).
    pub fn secret(&self, value: &str) {
        if value.is_empty() {
            return;
        }
        if let Ok(mut values) = self.values.write() {
            values.insert(value.to_owned());
        }
    }

    /// Adds a query parameter whose value is always secret.
    pub fn secret_param(&self, name: &str) {
        if let Ok(mut params) = self.params.write() {
            params.insert(name.to_owned());
        }
    }

    /// Whether a query parameter carries a secret, by name or by value.
    fn is_secret(&self, name: &str, value: &str) -> bool {
        self.params.read().is_ok_and(|p| p.contains(name))
            || self.values.read().is_ok_and(|s| s.iter().any(|v| value.contains(v.as_str())))
    }

    /// Text with every secret value replaced by [`MASK`].
    pub fn text(&self, text: &str) -> String {
        let Ok(secrets) = self.values.read() else {
            return MASK.to_owned();
        };
        let mut out = text.to_owned();
        // Longest first, so a secret containing another is masked whole.
        let mut values: Vec<&String> = secrets.iter().collect();
        values.sort_by_key(|v| std::cmp::Reverse(v.len()));
        for value in values {
            if out.contains(value.as_str()) {
                out = out.replace(value.as_str(), MASK);
            }
            // The same value as a URL would carry it.
            let encoded: String = url::form_urlencoded::byte_serialize(value.as_bytes()).collect();
            if encoded != *value && out.contains(&encoded) {
                out = out.replace(&encoded, MASK);
            }
        }
        out
    }

    /// A URL to show: user info dropped, secret parameters masked, secrets in the path masked.
    pub fn show(&self, url: &Url) -> String {
        self.text(self.rewrite(url, true).as_str())
    }

    /// A URL to keep: user info and secret parameters dropped (the request adds them again).
    pub fn keep(&self, url: &Url) -> String {
        self.rewrite(url, false).to_string()
    }

    fn rewrite(&self, url: &Url, mask: bool) -> Url {
        let mut url = url.clone();
        let _ = url.set_username("");
        let _ = url.set_password(None);
        if url.query().is_some() {
            let pairs: Vec<(String, String)> =
                url.query_pairs().map(|(k, v)| (k.into_owned(), v.into_owned())).collect();
            let kept: Vec<(String, String)> = pairs
                .into_iter()
                .filter_map(|(name, value)| match self.is_secret(&name, &value) {
                    true if mask => Some((name, MASK.to_owned())),
                    true => None,
                    false => Some((name, value)),
                })
                .collect();
            if kept.is_empty() {
                url.set_query(None);
            } else {
                url.query_pairs_mut().clear().extend_pairs(kept);
            }
        }
        url
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secrets_never_show() {
        let redactor = Redactor::default();
        redactor.secret("s3cr3t");
        redactor.secret("a b+c");
        redactor.secret_param("api_key");
        let url = Url::parse("https://user:pw@h/x/s3cr3t?page=2&api_key=zzz&q=s3cr3t&t=a+b%2Bc").unwrap();
        let shown = redactor.show(&url);
        assert_eq!(shown, "https://h/x/***?page=2&api_key=***&q=***&t=***");
        assert_eq!(redactor.keep(&url), "https://h/x/s3cr3t?page=2");
        assert_eq!(redactor.text("token s3cr3t refused"), "token *** refused");
        let plain = Url::parse("http://h/p?page=1").unwrap();
        assert_eq!(redactor.show(&plain), "http://h/p?page=1");
    }
}
