//! Closed-loop load: `concurrency` tasks, each issuing one request at a time for a warm-up period
//! and then a measured period. Only requests *started* inside the measured window count.
//!
//! Each task owns a [`Recorder`] (its own histogram, no shared state on the hot path); the
//! per-task results are merged once at the end.

use std::future::Future;
use std::time::{Duration, Instant};

use crate::histogram::Histogram;

/// Warm-up and measurement windows, shared by all tasks of one run.
#[derive(Clone, Copy, Debug)]
pub struct Window {
    measure_from: Instant,
    end: Instant,
}

impl Window {
    pub fn starting_now(warmup: Duration, measure: Duration) -> Self {
        let measure_from = Instant::now() + warmup;
        Self {
            measure_from,
            end: measure_from + measure,
        }
    }

    pub fn measured(&self) -> Duration {
        self.end - self.measure_from
    }
}

/// Per-task recorder: `while let Some(t0) = rec.begin() { …; rec.end(t0, outcome) }`.
pub struct Recorder {
    window: Window,
    pub histogram: Histogram,
    pub errors: u64,
    pub first_error: Option<String>,
    /// Every completed request, warm-up included (for CPU-per-request figures).
    pub all_requests: u64,
}

impl Recorder {
    pub fn new(window: Window) -> Self {
        Self {
            window,
            histogram: Histogram::default(),
            errors: 0,
            first_error: None,
            all_requests: 0,
        }
    }

    /// The start time of the next request, or `None` once the window is over.
    pub fn begin(&self) -> Option<Instant> {
        let now = Instant::now();
        (now < self.window.end).then_some(now)
    }

    /// Whether a request started at `started` counts (inside the measured window).
    pub fn counts(&self, started: Instant) -> bool {
        started >= self.window.measure_from && started < self.window.end
    }

    pub fn end<E: std::fmt::Display>(&mut self, started: Instant, outcome: Result<(), E>) {
        self.all_requests += 1;
        if started < self.window.measure_from {
            return;
        }
        match outcome {
            Ok(()) => self.histogram.record(started.elapsed()),
            Err(e) => {
                self.errors += 1;
                if self.first_error.is_none() {
                    self.first_error = Some(e.to_string());
                }
            }
        }
    }
}

/// Result of one run.
pub struct Measurement {
    pub concurrency: usize,
    pub requests: u64,
    pub errors: u64,
    pub first_error: Option<String>,
    /// Requests including the warm-up.
    pub all_requests: u64,
    pub elapsed: Duration,
    pub histogram: Histogram,
}

impl Measurement {
    pub fn merge(concurrency: usize, window: Window, recorders: Vec<Recorder>) -> Self {
        let mut histogram = Histogram::default();
        let mut errors = 0;
        let mut first_error = None;
        let mut all_requests = 0;
        for r in recorders {
            all_requests += r.all_requests;
            histogram.merge(&r.histogram);
            errors += r.errors;
            first_error = first_error.or(r.first_error);
        }
        Self {
            concurrency,
            requests: histogram.count(),
            errors,
            first_error,
            all_requests,
            elapsed: window.measured(),
            histogram,
        }
    }

    pub fn per_second(&self) -> f64 {
        self.requests as f64 / self.elapsed.as_secs_f64()
    }
}

/// Runs `concurrency` copies of `task` (built by `make_task(i, window)`) on the current runtime
/// and merges their recorders.
pub async fn run<F, Fut>(
    concurrency: usize,
    warmup: Duration,
    measure: Duration,
    make_task: F,
) -> Measurement
where
    F: Fn(usize, Recorder) -> Fut,
    Fut: Future<Output = Recorder> + Send + 'static,
{
    let window = Window::starting_now(warmup, measure);
    let handles: Vec<_> = (0..concurrency)
        .map(|i| tokio::spawn(make_task(i, Recorder::new(window))))
        .collect();
    let mut recorders = Vec::with_capacity(concurrency);
    for h in handles {
        match h.await {
            Ok(r) => recorders.push(r),
            Err(e) => {
                let mut r = Recorder::new(window);
                r.errors += 1;
                r.first_error = Some(format!("load task failed: {e}"));
                recorders.push(r);
            }
        }
    }
    Measurement::merge(concurrency, window, recorders)
}
