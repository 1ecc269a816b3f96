//! Paginators: where the next page of a resource is, from the page just read.
//!
//! A [`PageState`] says which page to ask for (the first; a URL the API gave; a cursor token;
//! an offset; a page number); it is what a sweep keeps in the source's position. After each
//! response [`Paging::next`] reads the headers and the values the body decoder captured at
//! the paginator's paths, and says where the next page is or that this one was the last. An
//! API that gives the same next page twice is an error naming the URL, never a loop.

use std::collections::HashSet;

use inlet_engine::config::{JsonPath, Paginator};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use url::Url;

use crate::Error;

/// Which page a request asks for.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(tag = "at", rename_all = "snake_case")]
pub(crate) enum PageState {
    First,
    /// An absolute URL the API gave (secret parameters removed).
    Url {
        url: String,
    },
    Cursor {
        token: String,
    },
    Offset {
        offset: u64,
    },
    Page {
        page: u64,
    },
}

/// Where `auto` looks for a next link in a body.
const AUTO_BODY_PATHS: [&str; 6] =
    ["next", "links.next", "next_url", "_links.next.href", "pagination.next", "paging.next"];

/// How one resource pages.
#[derive(Debug, Clone)]
pub(crate) struct Paging {
    paginator: Paginator,
    /// The body paths the paginator reads, in [`Paging::wanted`]'s order.
    paths: Vec<JsonPath>,
}

/// What a response says to a paginator.
pub(crate) struct Answer<'a> {
    /// The URL the response came from (links are joined against it).
    pub url: &'a Url,
    /// The same URL as errors show it, secrets masked.
    pub shown: &'a str,
    pub headers: &'a reqwest::header::HeaderMap,
    /// The values at [`Paging::wanted`] paths (`None`: absent; `null` kept, as a field the
    /// body has); `None` for all when the body did not parse.
    pub captured: Option<&'a [Option<Value>]>,
    /// Records on the page (good and bad); `None` when the body held none where they belong
    /// (it did not parse, or had another shape): not an empty page.
    pub records: Option<usize>,
}

/// The next page, or why there is none.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Next {
    Page(PageState),
    Last,
    /// The body the paginator needs did not parse: the next page is unknown.
    Unknown,
}

impl Paging {
    pub fn new(paginator: &Paginator) -> Result<Paging, Error> {
        let text: Vec<&str> = match paginator {
            Paginator::Auto => AUTO_BODY_PATHS.to_vec(),
            Paginator::JsonLink { next_url_path } => vec![next_url_path],
            Paginator::Cursor { cursor_path, .. } => vec![cursor_path],
            Paginator::Offset { total_path, has_more_path, .. }
            | Paginator::PageNumber { total_path, has_more_path, .. } => {
                // Kept in place (an absent one as a path nothing matches) so indexes are fixed.
                vec![total_path.as_deref().unwrap_or("$['\u{0}']"), has_more_path.as_deref().unwrap_or("$['\u{0}']")]
            }
            Paginator::SinglePage | Paginator::HeaderLink { .. } => Vec::new(),
        };
        let paths = text
            .into_iter()
            .map(|p| JsonPath::parse(p).map_err(|message| Error::Config { message }))
            .collect::<Result<_, _>>()?;
        Ok(Paging { paginator: paginator.clone(), paths })
    }

    /// Whether the resource is one page (an object there is one record, not a broken list).
    pub fn single_page(&self) -> bool {
        matches!(self.paginator, Paginator::SinglePage)
    }

    /// The body paths the paginator reads.
    pub fn wanted(&self) -> &[JsonPath] {
        &self.paths
    }

    /// The state of a first page (offsets and page numbers start where configured).
    pub fn first(&self) -> PageState {
        match &self.paginator {
            Paginator::Offset { offset, .. } => PageState::Offset { offset: *offset },
            Paginator::PageNumber { base_page, .. } => PageState::Page { page: *base_page },
            _ => PageState::First,
        }
    }

    /// Query parameters and body changes that ask for `state` (a URL state replaces the
    /// request's URL instead).
    pub fn parameters(&self, state: &PageState) -> Vec<(String, String)> {
        match (&self.paginator, state) {
            (Paginator::Cursor { cursor_param: Some(param), .. }, PageState::Cursor { token }) => {
                vec![(param.clone(), token.clone())]
            }
            (Paginator::Offset { limit, offset_param, limit_param, .. }, PageState::Offset { offset }) => {
                vec![(offset_param.clone(), offset.to_string()), (limit_param.clone(), limit.to_string())]
            }
            (Paginator::PageNumber { page_param, .. }, PageState::Page { page }) => {
                vec![(page_param.clone(), page.to_string())]
            }
            _ => Vec::new(),
        }
    }

    /// Where a cursor token goes in a POST body, if it goes there.
    pub fn body_cursor(&self, state: &PageState) -> Option<(JsonPath, String)> {
        match (&self.paginator, state) {
            (Paginator::Cursor { cursor_body_path: Some(path), .. }, PageState::Cursor { token }) => {
                JsonPath::parse(path).ok().map(|p| (p, token.clone()))
            }
            _ => None,
        }
    }

    /// What `auto` makes of the first page: `header_link`, `json_link <path>` or
    /// `single_page`.
    pub fn detect(&self, answer: &Answer<'_>) -> Option<String> {
        if !matches!(self.paginator, Paginator::Auto) {
            return None;
        }
        if link_header(answer.headers, "next").is_some() {
            return Some("header_link".to_owned());
        }
        if let Some(captured) = answer.captured {
            for (path, value) in AUTO_BODY_PATHS.iter().zip(captured) {
                if value.as_ref().and_then(Value::as_str).is_some_and(|v| !v.is_empty()) {
                    return Some(format!("json_link {path}"));
                }
            }
        }
        // A body without records tells nothing: the next one decides.
        answer.records?;
        Some("single_page".to_owned())
    }

    /// Where the page after `state` is.
    ///
    /// A body without records where they belong (it did not parse, or is another shape: an
    /// error object with status 200) ends nothing: unless it says in the paginator's own
    /// fields that it is the last page, the next page is unknown, so a sweep stays there
    /// rather than end early and move its cursor past records it never read.
    pub fn next(&self, state: &PageState, answer: &Answer<'_>, detected: Option<&str>) -> Result<Next, Error> {
        let next = self.follow(state, answer, detected)?;
        let single =
            self.single_page() || (matches!(self.paginator, Paginator::Auto) && detected == Some("single_page"));
        let said_so = answer.captured.is_some_and(|c| c.iter().any(Option::is_some));
        if next == Next::Last && answer.records.is_none() && !single && !said_so {
            return Ok(Next::Unknown);
        }
        Ok(next)
    }

    fn follow(&self, state: &PageState, answer: &Answer<'_>, detected: Option<&str>) -> Result<Next, Error> {
        let captured =
            |index: usize| answer.captured.and_then(|c| c.get(index)).and_then(Option::as_ref).filter(|v| !v.is_null());
        let body_missing = answer.captured.is_none();
        let link = |text: Option<&str>| -> Result<Next, Error> {
            match text.filter(|t| !t.trim().is_empty()) {
                Some(text) => {
                    answer.url.join(text.trim()).map(|url| Next::Page(PageState::Url { url: url.to_string() })).map_err(
                        |e| Error::Api {
                            url: answer.shown.to_owned(),
                            message: format!("the next page's link is not a URL: {e}"),
                        },
                    )
                }
                None => Ok(Next::Last),
            }
        };
        match &self.paginator {
            Paginator::SinglePage => Ok(Next::Last),
            Paginator::Auto => match detected {
                Some("header_link") => link(link_header(answer.headers, "next").as_deref()),
                Some(path) if path.starts_with("json_link ") => {
                    if body_missing {
                        return Ok(Next::Unknown);
                    }
                    let index = AUTO_BODY_PATHS.iter().position(|p| Some(*p) == path.strip_prefix("json_link "));
                    link(index.and_then(captured).and_then(Value::as_str))
                }
                _ => Ok(Next::Last),
            },
            Paginator::HeaderLink { links_next_key } => link(link_header(answer.headers, links_next_key).as_deref()),
            Paginator::JsonLink { .. } if body_missing => Ok(Next::Unknown),
            Paginator::JsonLink { .. } => match captured(0) {
                Some(Value::String(text)) => link(Some(text)),
                // `"next": false` says there is none, as `null` does.
                Some(Value::Bool(false)) | None => Ok(Next::Last),
                Some(other) => Err(Error::Api {
                    url: answer.shown.to_owned(),
                    message: format!("the next page's link is not text but {}", kind_of(other)),
                }),
            },
            Paginator::Cursor { .. } if body_missing => Ok(Next::Unknown),
            Paginator::Cursor { .. } => Ok(match captured(0) {
                Some(Value::String(token)) if !token.is_empty() => {
                    Next::Page(PageState::Cursor { token: token.clone() })
                }
                Some(Value::Number(token)) => Next::Page(PageState::Cursor { token: token.to_string() }),
                _ => Next::Last,
            }),
            Paginator::Offset { limit, total_path, has_more_path, maximum_offset, stop_after_empty_page, .. } => {
                let PageState::Offset { offset } = state else {
                    return Err(Error::Internal(format!("an offset paginator at {state:?}")));
                };
                let ends = Ends {
                    total_path: total_path.as_deref(),
                    has_more_path: has_more_path.as_deref(),
                    bounded: maximum_offset.is_some(),
                    stop_after_empty_page: *stop_after_empty_page,
                };
                let Some((end, total)) = self.ends(&ends, answer)? else { return Ok(Next::Unknown) };
                let next = offset.saturating_add(*limit);
                let stop =
                    end || total.is_some_and(|total| next >= total) || maximum_offset.is_some_and(|max| next >= max);
                Ok(if stop { Next::Last } else { Next::Page(PageState::Offset { offset: next }) })
            }
            Paginator::PageNumber {
                base_page, total_path, has_more_path, maximum_page, stop_after_empty_page, ..
            } => {
                let PageState::Page { page } = state else {
                    return Err(Error::Internal(format!("a page number paginator at {state:?}")));
                };
                let ends = Ends {
                    total_path: total_path.as_deref(),
                    has_more_path: has_more_path.as_deref(),
                    bounded: maximum_page.is_some(),
                    stop_after_empty_page: *stop_after_empty_page,
                };
                let Some((end, total)) = self.ends(&ends, answer)? else { return Ok(Next::Unknown) };
                let next = page.saturating_add(1);
                // `total` counts pages: the last is `base_page + total - 1`.
                let stop = end
                    || total.is_some_and(|total| next >= base_page.saturating_add(total))
                    || maximum_page.is_some_and(|max| next > max);
                Ok(if stop { Next::Last } else { Next::Page(PageState::Page { page: next }) })
            }
        }
    }

    /// What a page of offsets or page numbers says of the end: `None` when where the next
    /// page is, is unknown; else whether this page is the last by what it says (`has_more`
    /// false, or empty), and the total it gives.
    fn ends(&self, ends: &Ends<'_>, answer: &Answer<'_>) -> Result<Option<(bool, Option<u64>)>, Error> {
        let captured =
            |index: usize| answer.captured.and_then(|c| c.get(index)).and_then(Option::as_ref).filter(|v| !v.is_null());
        let reads_body = ends.total_path.is_some() || ends.has_more_path.is_some();
        if answer.captured.is_none() && reads_body {
            return Ok(None);
        }
        // An empty page that leaves out the total or `has_more` it is read for (as encoders
        // that drop zeros and falses do) is the end, not a broken answer.
        let said_nothing = reads_body && answer.records == Some(0) && captured(0).is_none() && captured(1).is_none();
        let (total, more) = if said_nothing {
            (None, None)
        } else {
            (
                self.total(captured(0), ends.total_path, answer.shown)?,
                self.has_more(captured(1), ends.has_more_path, answer.shown)?,
            )
        };
        // A page without records where they belong (a broken body, an error object) tells no
        // end: the sweep steps past it only when something else bounds it, never on for ever
        // past the end of an API that answers so there.
        if answer.records.is_none() && total.is_none() && more.is_none() && !ends.bounded {
            return Ok(None);
        }
        let end = (ends.stop_after_empty_page && answer.records == Some(0)) || said_nothing || more == Some(false);
        Ok(Some((end, total)))
    }

    /// The total a response gives at `path` (when configured), as a count.
    fn total(&self, value: Option<&Value>, path: Option<&str>, url: &str) -> Result<Option<u64>, Error> {
        let Some(path) = path else { return Ok(None) };
        match value {
            Some(Value::Number(n)) if n.as_u64().is_some() => Ok(n.as_u64()),
            Some(Value::String(s)) if s.trim().parse::<u64>().is_ok() => Ok(s.trim().parse().ok()),
            Some(other) => Err(Error::Api {
                url: url.to_owned(),
                message: format!("the total at `{path}` is not a count but {}", kind_of(other)),
            }),
            None => Err(Error::Api { url: url.to_owned(), message: format!("the response has no total at `{path}`") }),
        }
    }

    /// Whether a response says more pages follow (when configured).
    fn has_more(&self, value: Option<&Value>, path: Option<&str>, url: &str) -> Result<Option<bool>, Error> {
        let Some(path) = path else { return Ok(None) };
        match value {
            Some(Value::Bool(more)) => Ok(Some(*more)),
            Some(Value::String(s)) if s == "true" || s == "false" => Ok(Some(s == "true")),
            Some(other) => Err(Error::Api {
                url: url.to_owned(),
                message: format!("`{path}` is not true or false but {}", kind_of(other)),
            }),
            None => Err(Error::Api { url: url.to_owned(), message: format!("the response has no `{path}`") }),
        }
    }
}

/// What kind of JSON value a value is (errors name the kind, never a value that may echo a
/// secret).
fn kind_of(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "text",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

/// The target of an RFC 8288 `Link` header entry with `rel` = `relation`.
pub(crate) fn link_header(headers: &reqwest::header::HeaderMap, relation: &str) -> Option<String> {
    for header in headers.get_all(reqwest::header::LINK) {
        let Ok(text) = header.to_str() else { continue };
        for entry in split_links(text) {
            let Some((target, params)) = entry.trim().strip_prefix('<').and_then(|e| e.split_once('>')) else {
                continue;
            };
            let is_relation = params.split(';').any(|param| {
                let Some((name, value)) = param.trim().split_once('=') else { return false };
                name.trim().eq_ignore_ascii_case("rel")
                    && value.trim().trim_matches('"').split_ascii_whitespace().any(|r| r.eq_ignore_ascii_case(relation))
            });
            if is_relation {
                return Some(target.trim().to_owned());
            }
        }
    }
    None
}

/// Splits a `Link` header's entries on the commas outside `<...>` and quotes.
fn split_links(text: &str) -> Vec<&str> {
    let mut entries = Vec::new();
    let (mut start, mut in_target, mut in_quotes) = (0, false, false);
    for (i, c) in text.char_indices() {
        match c {
            '<' if !in_quotes => in_target = true,
            '>' if !in_quotes => in_target = false,
            '"' if !in_target => in_quotes = !in_quotes,
            ',' if !in_target && !in_quotes => {
                entries.push(&text[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    entries.push(&text[start..]);
    entries
}

/// How a paginator of offsets or page numbers learns where the pages end.
struct Ends<'a> {
    total_path: Option<&'a str>,
    has_more_path: Option<&'a str>,
    /// Whether a maximum bounds the pages.
    bounded: bool,
    stop_after_empty_page: bool,
}

/// The next pages a sweep has asked for, to stop an API that gives the same one twice.
#[derive(Debug, Default)]
pub(crate) struct Seen(HashSet<PageState>);

impl Seen {
    /// Whether `next` was asked for before in this sweep.
    pub fn contains(&self, next: &PageState) -> bool {
        self.0.contains(next)
    }

    /// Records `next`; an error naming it when it was asked for before in this sweep.
    pub fn check(&mut self, next: &PageState, shown: &str) -> Result<(), Error> {
        if matches!(next, PageState::Url { .. } | PageState::Cursor { .. }) && !self.0.insert(next.clone()) {
            return Err(Error::Api {
                url: shown.to_owned(),
                message: "the API gave this next page again: stopping rather than reading it in a loop".to_owned(),
            });
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use reqwest::header::{HeaderMap, HeaderValue, LINK};

    fn answer<'a>(
        url: &'a Url,
        headers: &'a HeaderMap,
        captured: Option<&'a [Option<Value>]>,
        records: usize,
    ) -> Answer<'a> {
        Answer { url, shown: "u", headers, captured, records: Some(records) }
    }

    #[test]
    fn link_headers() {
        let mut headers = HeaderMap::new();
        headers.insert(
            LINK,
            HeaderValue::from_static(
                r#"<https://h/x?page=1>; rel="first", <https://h/x?page=3&a=1,2>; rel="next last""#,
            ),
        );
        assert_eq!(link_header(&headers, "next").as_deref(), Some("https://h/x?page=3&a=1,2"));
        assert_eq!(link_header(&headers, "first").as_deref(), Some("https://h/x?page=1"));
        assert_eq!(link_header(&headers, "prev"), None);
        assert_eq!(link_header(&HeaderMap::new(), "next"), None);
    }

    /// Offset paging by 10 from 0.
    fn offset_paging(total_path: Option<String>, maximum_offset: Option<u64>, stop_after_empty_page: bool) -> Paging {
        Paging::new(&Paginator::Offset {
            limit: 10,
            offset: 0,
            offset_param: "offset".into(),
            limit_param: "limit".into(),
            total_path,
            has_more_path: None,
            maximum_offset,
            stop_after_empty_page,
        })
        .unwrap()
    }

    #[test]
    fn offsets_stop_on_total_empty_pages_and_maximum() {
        let paging = offset_paging(Some("total".into()), None, true);
        let url = Url::parse("http://h/x").unwrap();
        let headers = HeaderMap::new();
        assert_eq!(paging.first(), PageState::Offset { offset: 0 });
        assert_eq!(
            paging.parameters(&PageState::Offset { offset: 20 }),
            vec![("offset".to_owned(), "20".to_owned()), ("limit".to_owned(), "10".to_owned())]
        );
        let total = [Some(Value::from(25)), None];
        let at = |offset| PageState::Offset { offset };
        assert_eq!(paging.next(&at(0), &answer(&url, &headers, Some(&total), 10), None).unwrap(), Next::Page(at(10)));
        assert_eq!(paging.next(&at(20), &answer(&url, &headers, Some(&total), 5), None).unwrap(), Next::Last);
        assert_eq!(paging.next(&at(0), &answer(&url, &headers, None, 0), None).unwrap(), Next::Unknown);
        let none = [None, None];
        assert!(paging.next(&at(0), &answer(&url, &headers, Some(&none), 10), None).is_err());
        // `{}` past the end, its zero total left out: the end.
        assert_eq!(paging.next(&at(30), &answer(&url, &headers, Some(&none), 0), None).unwrap(), Next::Last);
        // An error object past the end, nothing bounding the pages: not an empty page, and
        // not a reason to step on for ever.
        let unbounded = offset_paging(None, None, true);
        let error = Answer { url: &url, shown: "u", headers: &headers, captured: Some(&none), records: None };
        assert_eq!(unbounded.next(&at(30), &error, None).unwrap(), Next::Unknown);
        assert_eq!(unbounded.next(&at(30), &answer(&url, &headers, Some(&none), 0), None).unwrap(), Next::Last);
        // Sparse pages (`stop_after_empty_page = false`), bounded by a maximum only: an empty
        // page is not the end.
        let sparse = offset_paging(None, Some(100), false);
        assert_eq!(sparse.next(&at(30), &answer(&url, &headers, Some(&none), 0), None).unwrap(), Next::Page(at(40)));
        assert_eq!(sparse.next(&at(90), &answer(&url, &headers, Some(&none), 0), None).unwrap(), Next::Last);
    }

    #[test]
    fn links_cursors_and_loops() {
        let url = Url::parse("http://h/api/items?page=1").unwrap();
        let headers = HeaderMap::new();
        let json = Paging::new(&Paginator::JsonLink { next_url_path: "links.next".into() }).unwrap();
        let next = [Some(Value::from("items?page=2"))];
        assert_eq!(
            json.next(&PageState::First, &answer(&url, &headers, Some(&next), 3), None).unwrap(),
            Next::Page(PageState::Url { url: "http://h/api/items?page=2".into() })
        );
        assert_eq!(json.next(&PageState::First, &answer(&url, &headers, Some(&[None]), 3), None).unwrap(), Next::Last);
        let no_more = [Some(Value::Bool(false))];
        assert_eq!(json.next(&PageState::First, &answer(&url, &headers, Some(&no_more), 3), None).unwrap(), Next::Last);
        // A 200 error object (no records, no link field): where the next page is, is unknown.
        let error = Answer { url: &url, shown: "u", headers: &headers, captured: Some(&[None]), records: None };
        assert_eq!(json.next(&PageState::First, &error, None).unwrap(), Next::Unknown);
        // The same without records but with `"next": null`: the last page, and empty.
        let empty = [Some(Value::Null)];
        let empty = Answer { url: &url, shown: "u", headers: &headers, captured: Some(&empty), records: None };
        assert_eq!(json.next(&PageState::First, &empty, None).unwrap(), Next::Last);
        let secret = Url::parse("http://h/api/items?api_key=s3cr3t").unwrap();
        let bad = [Some(Value::from(17))];
        let bad = Answer { url: &secret, shown: "masked", headers: &headers, captured: Some(&bad), records: Some(1) };
        let message = json.next(&PageState::First, &bad, None).unwrap_err().to_string();
        assert!(message.contains("masked") && !message.contains("s3cr3t"), "{message}");
        let cursor = Paging::new(&Paginator::Cursor {
            cursor_path: "next_cursor".into(),
            cursor_param: Some("cursor".into()),
            cursor_body_path: None,
        })
        .unwrap();
        let token = [Some(Value::from("abc"))];
        let state = PageState::Cursor { token: "abc".into() };
        assert_eq!(
            cursor.next(&PageState::First, &answer(&url, &headers, Some(&token), 1), None).unwrap(),
            Next::Page(state.clone())
        );
        assert_eq!(cursor.parameters(&state), vec![("cursor".to_owned(), "abc".to_owned())]);
        let mut seen = Seen::default();
        seen.check(&state, "u").unwrap();
        assert!(seen.check(&state, "u").unwrap_err().to_string().contains("again"));
    }

    #[test]
    fn auto_detects_links() {
        let auto = Paging::new(&Paginator::Auto).unwrap();
        let url = Url::parse("http://h/x").unwrap();
        let mut headers = HeaderMap::new();
        headers.insert(LINK, HeaderValue::from_static(r#"<http://h/x?p=2>; rel="next""#));
        let captured = vec![None; AUTO_BODY_PATHS.len()];
        assert_eq!(auto.detect(&answer(&url, &headers, Some(&captured), 1)).as_deref(), Some("header_link"));
        let mut captured = captured;
        captured[1] = Some(Value::from("http://h/x?p=2"));
        let none = HeaderMap::new();
        assert_eq!(auto.detect(&answer(&url, &none, Some(&captured), 1)).as_deref(), Some("json_link links.next"));
        assert_eq!(
            auto.next(&PageState::First, &answer(&url, &none, Some(&captured), 1), Some("json_link links.next"))
                .unwrap(),
            Next::Page(PageState::Url { url: "http://h/x?p=2".into() })
        );
        assert_eq!(auto.detect(&answer(&url, &none, Some(&vec![None; 6]), 1)).as_deref(), Some("single_page"));
    }
}
