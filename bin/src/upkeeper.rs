//! `inlet serve`'s maintenance, off its loop: scheduled optimizes and vacuums and
//! auto-compaction run one at a time on a task of their own, so a long compaction holds up
//! neither the runs nor a signal.
//!
//! A job already waiting is not queued twice. On a signal, the job in progress finishes
//! (its commit and run-history row are not cut in half) and the waiting ones are dropped:
//! the schedules and the next run's small-file count find them again.

use std::collections::BTreeSet;
use std::sync::{Arc, Mutex};

use inlet_engine::run::Pipeline;
use inlet_engine::upkeep::{self, Action};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tracing::info;

use crate::metrics::Metrics;

/// A piece of maintenance.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub enum Job {
    /// A scheduled optimize or vacuum of every table.
    Every(Action),
    /// Auto-compaction of the tables a run committed to.
    Compact(Vec<String>),
}

/// Hands jobs to the maintenance task.
pub struct Upkeeper {
    queue: Option<mpsc::UnboundedSender<Job>>,
    waiting: Arc<Mutex<BTreeSet<Job>>>,
    task: JoinHandle<()>,
}

impl Upkeeper {
    pub fn start(pipeline: Arc<Pipeline>, metrics: Arc<Metrics>) -> Upkeeper {
        let (queue, mut jobs) = mpsc::unbounded_channel::<Job>();
        let waiting = Arc::new(Mutex::new(BTreeSet::new()));
        let task = tokio::spawn({
            let waiting = waiting.clone();
            async move {
                while let Some(job) = jobs.recv().await {
                    // Not waiting any more: `stop` called it off.
                    if !waiting.lock().is_ok_and(|mut waiting| waiting.remove(&job)) {
                        continue;
                    }
                    let done = match &job {
                        Job::Every(action) => upkeep::every_table(&pipeline, *action).await,
                        Job::Compact(tables) => upkeep::compact_small_files(&pipeline, tables).await,
                    };
                    metrics.maintained(&done);
                }
            }
        });
        Upkeeper { queue: Some(queue), waiting, task }
    }

    /// Queues `job` unless the same job is already waiting.
    pub fn push(&self, job: Job) {
        let fresh = self.waiting.lock().map(|mut waiting| waiting.insert(job.clone())).unwrap_or(true);
        if !fresh {
            info!(job = ?job, "maintenance already waiting");
            return;
        }
        if let Some(queue) = &self.queue {
            let _ = queue.send(job);
        }
    }

    /// Lets the job in progress finish; drops the waiting ones.
    pub async fn stop(mut self) {
        // The task skips a job that is no longer in the set.
        let dropped = self.waiting.lock().map(|mut waiting| std::mem::take(&mut *waiting).len()).unwrap_or(0);
        if dropped > 0 {
            info!(dropped, "maintenance not started before the signal is left for later");
        }
        self.queue = None;
        if !self.task.is_finished() {
            info!("waiting for maintenance in progress to finish");
        }
        let _ = self.task.await;
    }
}
