//! Drives one concurrency level: N clients in a closed loop, or Poisson arrivals with at most N
//! in flight, for a number of requests or a duration, with a progress bar.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use indicatif::{ProgressBar, ProgressStyle};
use rand::{Rng, SeedableRng};

use crate::client::{run_one, Sample, Target};
use crate::workload::{Arrival, Prompt};

/// The workload of one run.
#[derive(Debug, Clone)]
pub struct Workload {
    /// Prompts sent in rotation (request `i` uses prompt `(i + offset) % len`; must not be empty).
    pub prompts: Vec<Prompt>,
    /// `max_tokens` of every request.
    pub max_tokens: usize,
    /// Sends `ignore_eos: true` so that every request generates `max_tokens` tokens.
    pub ignore_eos: bool,
    /// When requests start: closed loop or Poisson arrivals.
    pub arrival: Arrival,
    /// Requests per level (ignored when `duration` is set).
    pub requests: usize,
    /// Run each level for this long instead of a request count (`None`: use `requests`).
    pub duration: Option<Duration>,
}

/// Everything measured at one concurrency level.
#[derive(Debug, Clone)]
pub struct LevelResult {
    /// The level's concurrency (at least 1).
    pub concurrency: usize,
    /// One sample per finished request, failures included.
    pub samples: Vec<Sample>,
    /// Wall time from the level's start until its last request ended, in seconds.
    pub wall_s: f64,
}

/// The history stores a level as its report summary and its samples.
impl rill_history::LevelRecord for LevelResult {
    fn concurrency(&self) -> usize {
        self.concurrency
    }
    fn summary(&self) -> serde_json::Value {
        serde_json::to_value(crate::report::summarize(self)).unwrap_or_default()
    }
    fn samples(&self) -> &[Sample] {
        &self.samples
    }
}

fn bar(label: &str, len: Option<usize>, quiet: bool) -> ProgressBar {
    if quiet {
        return ProgressBar::hidden();
    }
    let pb = match len {
        Some(n) => ProgressBar::new(n as u64),
        None => ProgressBar::new_spinner(),
    };
    pb.set_style(
        ProgressStyle::with_template("{prefix:>12} [{elapsed_precise}] {bar:30} {pos}/{len} {msg}")
            .unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    pb.set_prefix(label.to_string());
    pb
}

/// Runs `w` at `concurrency` against `t`; `offset` rotates the prompt order between runs.
pub async fn run_level(
    client: &reqwest::Client,
    t: &Target,
    w: &Workload,
    concurrency: usize,
    offset: usize,
    quiet: bool,
) -> LevelResult {
    let concurrency = concurrency.max(1);
    let limit = if w.duration.is_some() {
        usize::MAX
    } else {
        w.requests.max(1)
    };
    let pb = bar(
        &format!("c={concurrency}"),
        w.duration.is_none().then_some(limit),
        quiet,
    );
    let next = Arc::new(AtomicUsize::new(0));
    let start = Instant::now();
    let deadline = w.duration.map(|d| start + d);
    let more = {
        let next = next.clone();
        move || {
            let i = next.fetch_add(1, Ordering::AcqRel);
            let live = deadline.is_none_or(|d| Instant::now() < d);
            (i < limit && live).then_some(i)
        }
    };
    let samples = match w.arrival {
        Arrival::Closed => {
            let tasks: Vec<_> = (0..concurrency)
                .map(|_| {
                    let (client, t, w, pb, more) = (
                        client.clone(),
                        t.clone(),
                        w.clone(),
                        pb.clone(),
                        more.clone(),
                    );
                    tokio::spawn(async move {
                        let mut out = Vec::new();
                        while let Some(i) = more() {
                            let p = &w.prompts[(i + offset) % w.prompts.len()];
                            let s = run_one(&client, &t, p, w.max_tokens, w.ignore_eos).await;
                            pb.inc(1);
                            out.push(s);
                        }
                        out
                    })
                })
                .collect();
            let mut all = Vec::new();
            for task in tasks {
                all.extend(task.await.unwrap_or_default());
            }
            all
        }
        Arrival::Poisson { rate } => {
            let permits = Arc::new(tokio::sync::Semaphore::new(concurrency));
            let mut rng = rand::rngs::StdRng::seed_from_u64(offset as u64 + 7);
            let mut tasks = Vec::new();
            while let Some(i) = more() {
                let gap: f64 = -(1.0 - rng.gen::<f64>()).ln() / rate.max(1e-6);
                tokio::time::sleep(Duration::from_secs_f64(gap)).await;
                let Ok(permit) = permits.clone().acquire_owned().await else {
                    break;
                };
                let (client, t, w, pb) = (client.clone(), t.clone(), w.clone(), pb.clone());
                tasks.push(tokio::spawn(async move {
                    let p = &w.prompts[(i + offset) % w.prompts.len()];
                    let s = run_one(&client, &t, p, w.max_tokens, w.ignore_eos).await;
                    drop(permit);
                    pb.inc(1);
                    s
                }));
            }
            let mut all = Vec::new();
            for task in tasks {
                if let Ok(s) = task.await {
                    all.push(s);
                }
            }
            all
        }
    };
    pb.finish_and_clear();
    LevelResult {
        concurrency,
        samples,
        wall_s: start.elapsed().as_secs_f64(),
    }
}
