//! One extraction: page after page of a resource's sweeps, a child's once per parent record,
//! each page handed to the engine with the position the source stands at once it lands.

use std::collections::{BTreeMap, HashSet};
use std::sync::Arc;
use std::sync::atomic::AtomicU64;

use inlet_engine::config::JsonPath;
use inlet_engine::source::{BadRecord, ErrorCode, Extraction, Page, RawChunk, SourceError};
use tracing::warn;

use super::answer::{Decoded, Selector, chosen, decode, empty_chunk};
use super::paginate::{Answer, Next, PageState, Seen};
use super::position::{self, ParentSweep, Position, Stream, Sweep, max_of, prune, record_hash, stream_key};
use super::records::{value_at, with_parent_columns};
use super::resource::Resource;
use crate::Error;

/// The error of an API that gives a page of this sweep as the next one again.
fn looping(shown: String) -> Error {
    Error::Api {
        url: shown,
        message: "the API gave a page of this sweep as its next page again: stopping rather than reading it in a \
                  loop"
            .to_owned(),
    }
}

/// A parent's record, as much of it as its children need.
#[derive(Debug, Clone)]
pub(super) struct ParentRecord {
    /// The values by field path, as text.
    pub values: BTreeMap<String, String>,
    /// The stream key of its children.
    pub key: String,
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
pub(super) struct Sweeping {
    pub(super) resource: Arc<Resource>,
    parent: Option<Arc<Resource>>,
    position: Position,
    parent_page: Option<ParentPage>,
    /// The next pages asked for in the current sweep (an API that loops is stopped), and the
    /// stream it is of: a child's stuck sweep, tried again after other parents' children, is
    /// not judged by their pages.
    seen: Seen,
    seen_stream: Option<String>,
    /// Records landed by this extraction, by hash (incremental): none twice in one run.
    pub(super) landed: HashSet<u64>,
    /// The parent's next pages asked for (an API that loops is stopped).
    parent_seen: Seen,
    /// The record selector: `data_selector`, or what `auto` chose from the first body.
    selector: Option<Selector>,
    parent_selector: Option<Selector>,
    /// Why the extraction stops after the page it just gave.
    failure: Option<Error>,
    /// Why the extraction fails once it is done: the children that could not go on.
    deferred: Vec<Error>,
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

impl Sweeping {
    pub(super) fn new(
        resource: Arc<Resource>,
        parent: Option<Arc<Resource>>,
        position: Position,
        requests: Arc<AtomicU64>,
    ) -> Sweeping {
        let given =
            |resource: &Resource| resource.selector.clone().map(|path| Selector { path, object_is_record: false });
        Sweeping {
            selector: given(&resource),
            parent_selector: parent.as_deref().and_then(given),
            resource,
            parent,
            position,
            parent_page: None,
            seen: Seen::default(),
            seen_stream: None,
            landed: HashSet::new(),
            parent_seen: Seen::default(),
            failure: None,
            deferred: Vec::new(),
            done: false,
            requests,
        }
    }
}

#[async_trait::async_trait]
impl Extraction for Sweeping {
    async fn next_page(&mut self) -> Result<Option<Page>, SourceError> {
        if let Some(failure) = self.failure.take() {
            self.done = true;
            return Err(self.with_deferred(failure).into());
        }
        if self.done {
            return match self.deferred.is_empty() {
                true => Ok(None),
                false => {
                    let first = self.deferred.remove(0);
                    Err(self.with_deferred(first).into())
                }
            };
        }
        let page = match self.parent.clone() {
            None => self.next_own_page().await,
            Some(parent) => self.next_child_page(&parent).await,
        };
        match page {
            Ok(page) => Ok(Some(page)),
            Err(failure) => Err(self.with_deferred(failure).into()),
        }
    }

    fn requests(&self) -> u64 {
        self.requests.load(std::sync::atomic::Ordering::Relaxed)
    }
}

impl Sweeping {
    /// `failure`, naming the children that could not go on before it too (each was logged
    /// when it was put off).
    fn with_deferred(&mut self, failure: Error) -> Error {
        let others = std::mem::take(&mut self.deferred);
        if others.is_empty() {
            return failure;
        }
        let also: String = others.iter().map(|other| format!("; and: {other}")).collect();
        failure.with_note(&also)
    }

    /// The next page of a resource without parent.
    async fn next_own_page(&mut self) -> Result<Page, Error> {
        let key = stream_key(None, self.window().as_deref());
        let swept = self.sweep_page(&key, None).await?;
        self.done = swept.last;
        self.page(swept)
    }

    /// The next page of a child: the records of the parent's page in progress, one sweep each.
    async fn next_child_page(&mut self, parent: &Resource) -> Result<Page, Error> {
        let window = self.window();
        loop {
            if self.parent_page.is_none() {
                let sweep = self.position.parents.clone().unwrap_or_else(|| ParentSweep {
                    page: parent.paging.first(),
                    pages: 0,
                    done: 0,
                    last: None,
                    detected: None,
                });
                self.parent_page = Some(self.parent_page(parent, sweep).await?);
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
                    warn!(source = %self.resource.name, parent = %record.key, error = %failure, "a child cannot go on; the other parents' children are read, and the run fails at the end");
                    self.deferred.push(failure);
                    self.finish_parent_record()?;
                } else if swept.last {
                    self.finish_parent_record()?;
                }
                return self.page(swept);
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
            return self.page(SweptPage { url, number: number as i64, bytes: 0, chunk, last: true });
        }
    }

    /// The backfill window of this source, if it has an end.
    fn window(&self) -> Option<String> {
        let incremental = self.resource.incremental.as_ref()?;
        incremental.end.as_ref().map(|end| format!("{}..{end}", incremental.initial))
    }

    /// The page for the engine: the rows, and the position once they are in.
    fn page(&self, swept: SweptPage) -> Result<Page, Error> {
        let position = serde_json::to_value(&self.position)
            .map_err(|e| Error::Internal(format!("serialising the position: {e}")))?;
        Ok(Page {
            url: swept.url,
            number: swept.number,
            bytes: swept.bytes,
            chunk: swept.chunk,
            position,
            cut: true,
            derive: None,
        })
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
        let Decoded { body, holds_records: found } =
            decode(response.body.clone(), selector.path, wanted, single).await?;
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
        if self.seen_stream.as_deref() != Some(key) {
            self.seen = Seen::default();
            self.seen_stream = Some(key.to_owned());
        }
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
        let Decoded { body, holds_records: found } =
            decode(response.body.clone(), selector.clone(), resource.paging.wanted().to_vec(), single).await?;
        let broken = body.chunk.bad.iter().any(|b| b.row == 0);
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
}
