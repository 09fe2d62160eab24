//! Results: one `Report` per run (named metrics in a fixed order), latency
//! histograms, medians over runs, and the human table.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::time::Duration;

use anyhow::Result;
use hdrhistogram::Histogram;
use serde_json::{json, Map, Value};

use crate::server::ProcessUsage;

/// Highest latency a histogram records, in microseconds (longer ones are
/// clamped to it).
const LATENCY_MICROS_MAX: u64 = 120_000_000;
/// Significant decimal digits the histograms keep.
const LATENCY_SIGNIFICANT_DIGITS: u8 = 3;

/// Latencies, in microseconds.
#[derive(Debug, Clone)]
pub struct Latencies(Histogram<u64>);

impl Latencies {
    pub fn new() -> Result<Self> {
        Ok(Self(Histogram::new_with_bounds(1, LATENCY_MICROS_MAX, LATENCY_SIGNIFICANT_DIGITS)?))
    }

    pub fn record(&mut self, latency: Duration) {
        let micros = u64::try_from(latency.as_micros()).unwrap_or(u64::MAX);
        self.0.saturating_record(micros.clamp(1, LATENCY_MICROS_MAX));
    }

    pub fn merge(&mut self, other: &Latencies) -> Result<()> {
        Ok(self.0.add(&other.0)?)
    }

    pub fn count(&self) -> u64 {
        self.0.len()
    }

    /// The latency at `quantile` (0..=1), in milliseconds.
    fn quantile_ms(&self, quantile: f64) -> f64 {
        self.0.value_at_quantile(quantile) as f64 / 1000.0
    }
}

/// One run of one workload.
#[derive(Debug, Clone)]
pub struct Report {
    pub workload: &'static str,
    /// What distinguishes runs of one workload that are compared: the server
    /// (`concord`, `baseline`) or the form (`incr`, `transact`).
    pub variant: String,
    metrics: Vec<(&'static str, f64)>,
}

impl Report {
    pub fn new(workload: &'static str, variant: impl Into<String>) -> Self {
        Self { workload, variant: variant.into(), metrics: Vec::new() }
    }

    pub fn set(&mut self, name: &'static str, value: f64) {
        self.metrics.push((name, value));
    }

    pub fn get(&self, name: &str) -> Option<f64> {
        self.metrics.iter().find(|(metric, _)| *metric == name).map(|(_, value)| *value)
    }

    /// `name_p50_ms`, `name_p99_ms`, `name_max_ms`.
    pub fn set_latencies(&mut self, name: &'static str, latencies: &Latencies) {
        let (p50, p99, max) = match name {
            "ack" => ("ack_p50_ms", "ack_p99_ms", "ack_max_ms"),
            "fanout" => ("fanout_p50_ms", "fanout_p99_ms", "fanout_max_ms"),
            "delivery" => ("delivery_p50_ms", "delivery_p99_ms", "delivery_max_ms"),
            "transact" => ("transact_p50_ms", "transact_p99_ms", "transact_max_ms"),
            "join" => ("join_p50_ms", "join_p99_ms", "join_max_ms"),
            _ => ("latency_p50_ms", "latency_p99_ms", "latency_max_ms"),
        };
        self.set(p50, latencies.quantile_ms(0.50));
        self.set(p99, latencies.quantile_ms(0.99));
        self.set(max, latencies.quantile_ms(1.0));
    }

    /// Server CPU over the run, per committed op (or per `unit` of work,
    /// when the workload commits nothing), and the generator's own CPU.
    pub fn set_cpu(
        &mut self,
        server: (ProcessUsage, ProcessUsage),
        generator: (ProcessUsage, ProcessUsage),
        committed_ops: u64,
    ) {
        let server_cpu = server.1.cpu_seconds - server.0.cpu_seconds;
        self.set("server_cpu_s", server_cpu);
        if committed_ops > 0 {
            self.set("server_cpu_us_per_op", server_cpu * 1e6 / committed_ops as f64);
        }
        self.set("generator_cpu_s", generator.1.cpu_seconds - generator.0.cpu_seconds);
    }

    pub fn to_json(&self) -> Value {
        let mut object = Map::new();
        object.insert("workload".into(), json!(self.workload));
        object.insert("variant".into(), json!(self.variant));
        for (name, value) in &self.metrics {
            object.insert((*name).into(), json!(value));
        }
        Value::Object(object)
    }
}

/// Per (workload, variant): the median of every metric over its runs.
pub fn medians(reports: &[Report]) -> Vec<Report> {
    let mut groups: BTreeMap<(&'static str, String), Vec<&Report>> = BTreeMap::new();
    for report in reports {
        groups.entry((report.workload, report.variant.clone())).or_default().push(report);
    }
    groups
        .into_iter()
        .map(|((workload, variant), runs)| {
            let mut median_report = Report::new(workload, variant);
            for (name, _) in &runs[0].metrics {
                let values: Vec<f64> = runs.iter().filter_map(|run| run.get(name)).collect();
                median_report.set(name, median(values));
            }
            median_report
        })
        .collect()
}

pub fn median(mut values: Vec<f64>) -> f64 {
    if values.is_empty() {
        return f64::NAN;
    }
    values.sort_by(f64::total_cmp);
    let middle = values.len() / 2;
    if values.len() % 2 == 1 {
        values[middle]
    } else {
        (values[middle - 1] + values[middle]) / 2.0
    }
}

/// A table: one row per metric, one column per run, then the medians.
pub fn human_table(reports: &[Report], medians: &[Report]) -> String {
    let mut out = String::new();
    for median_report in medians {
        let runs: Vec<&Report> = reports
            .iter()
            .filter(|r| r.workload == median_report.workload && r.variant == median_report.variant)
            .collect();
        let _ = writeln!(
            out,
            "\n{} / {} ({} run(s))",
            median_report.workload,
            median_report.variant,
            runs.len()
        );
        let mut header = format!("{:<26}", "metric");
        for index in 0..runs.len() {
            let _ = write!(header, "{:>14}", format!("run {}", index + 1));
        }
        if runs.len() > 1 {
            let _ = write!(header, "{:>14}", "median");
        }
        let _ = writeln!(out, "{header}");
        for (name, median_value) in &median_report.metrics {
            let mut row = format!("{name:<26}");
            for run in &runs {
                let _ = write!(row, "{:>14}", format_number(run.get(name).unwrap_or(f64::NAN)));
            }
            if runs.len() > 1 {
                let _ = write!(row, "{:>14}", format_number(*median_value));
            }
            let _ = writeln!(out, "{row}");
        }
    }
    out
}

fn format_number(value: f64) -> String {
    if value.is_nan() {
        "-".to_owned()
    } else if value.fract() == 0.0 && value.abs() < 1e15 {
        format!("{value:.0}")
    } else if value.abs() >= 100.0 {
        format!("{value:.1}")
    } else {
        format!("{value:.3}")
    }
}
