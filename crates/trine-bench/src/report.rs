//! Printing: one markdown table per scenario (readable in a terminal, pasteable in BENCHMARKS.md).

use std::time::Duration;

use crate::load::Measurement;
use crate::yardstick::RedisRun;

pub struct Row {
    pub scenario: String,
    pub concurrency: usize,
    pub requests: u64,
    pub per_second: f64,
    pub p50: Option<Duration>,
    pub p99: Option<Duration>,
    /// This row's req/s over its yardstick's, for the system under test.
    pub ratio: Option<f64>,
    /// Engine CPU time per request (user + system), for runs against the engine.
    pub engine_cpu: Option<Duration>,
    pub errors: u64,
}

impl Row {
    pub fn measured(scenario: &str, m: &Measurement) -> Self {
        Self {
            scenario: scenario.to_owned(),
            concurrency: m.concurrency,
            requests: m.requests,
            per_second: m.per_second(),
            p50: Some(m.histogram.quantile(0.50)),
            p99: Some(m.histogram.quantile(0.99)),
            ratio: None,
            engine_cpu: None,
            errors: m.errors,
        }
    }

    pub fn redis(concurrency: usize, r: &RedisRun) -> Self {
        Self {
            scenario: format!("{} (yardstick)", r.label),
            concurrency,
            requests: r.requests,
            per_second: r.per_second,
            p50: r.p50_ms.map(|ms| Duration::from_secs_f64(ms / 1_000.0)),
            p99: r.p99_ms.map(|ms| Duration::from_secs_f64(ms / 1_000.0)),
            ratio: None,
            engine_cpu: None,
            errors: 0,
        }
    }
}

pub fn latency(d: Duration) -> String {
    let us = d.as_secs_f64() * 1e6;
    if us < 1_000.0 {
        format!("{us:.0} µs")
    } else {
        format!("{:.2} ms", us / 1_000.0)
    }
}

pub fn print_table(title: &str, rows: &[Row]) {
    println!();
    println!("### {title}");
    println!();
    println!(
        "| scenario | concurrency | requests | req/s | p50 | p99 | vs yardstick | engine CPU/req | errors |"
    );
    println!("|---|---:|---:|---:|---:|---:|---:|---:|---:|");
    for r in rows {
        let opt = |d: Option<Duration>| d.map(latency).unwrap_or_else(|| "–".into());
        println!(
            "| {} | {} | {} | {:.0} | {} | {} | {} | {} | {} |",
            r.scenario,
            r.concurrency,
            r.requests,
            r.per_second,
            opt(r.p50),
            opt(r.p99),
            r.ratio
                .map(|x| format!("{:.0} %", x * 100.0))
                .unwrap_or_else(|| "–".into()),
            r.engine_cpu
                .map(|d| format!("{:.1} µs", d.as_secs_f64() * 1e6))
                .unwrap_or_else(|| "–".into()),
            r.errors,
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn latency_units() {
        assert_eq!(latency(Duration::from_micros(85)), "85 µs");
        assert_eq!(latency(Duration::from_micros(4_250)), "4.25 ms");
    }
}
