//! REST API sources: records read page by page, their position committed with them.
//!
//! A source is one resource of an API (`base_url` + `path`, [`resource`]), read in sweeps
//! ([`sweep`]) from the position its table holds ([`position`]): page after page
//! ([`paginate`]), each request authenticated, rate limited and retried ([`client`],
//! [`auth`]), each body decoded in one pass into text columns like NDJSON ([`crate::json`],
//! [`answer`]). With `incremental`, a sweep asks from the last cursor committed (less
//! `lag_secs`), drops records of the window already landed (by their primary key and cursor
//! value, [`window`]) and, when it ends, moves the cursor to the highest value seen. A child
//! resource (`parent`) sweeps once per record of its parent, its paths and parameters filled
//! from that record, its cursor kept per parent, its rows carrying the parent's values
//! ([`records`]). Nothing is kept anywhere but in the commits: every page hands the engine
//! the position the source stands at once that page is in the table.

mod answer;
mod auth;
mod client;
mod paginate;
mod position;
mod records;
mod redact;
mod resource;
mod sweep;
mod window;

use std::sync::Arc;
use std::sync::atomic::AtomicU64;

use inlet_engine::config::{RestSource, SourceConfig};
use inlet_engine::run::Pipeline;
use inlet_engine::source::{Extraction, Extractor, SourceError};
use serde_json::Value;

use self::client::Limiter;
use self::position::Position;
use self::redact::Redactor;
use self::resource::Resource;
use self::sweep::Sweeping;
use crate::Error;
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
        let position = crate::committed_position(&self.resource.name, from, || Position {
            format: position::FORMAT,
            ..Position::default()
        })?;
        Ok(Box::new(Sweeping::new(self.resource.clone(), self.parent.clone(), position, self.requests.clone())))
    }
}
