//! Results of a run: the summary (table or JSON), latency histograms and the live progress line.
use std::io::{IsTerminal, Write};
use std::time::Duration;

use hdrhistogram::Histogram;
use serde_json::{json, Value};

/// Why a run could not produce a summary.
#[derive(Debug)]
pub(crate) enum BenchError {
    /// Bad arguments (exit code 2).
    Usage(String),
    /// The run itself failed (exit code 1).
    Failed(anyhow::Error),
}

impl From<anyhow::Error> for BenchError {
    fn from(e: anyhow::Error) -> Self {
        BenchError::Failed(e)
    }
}

/// One line of the summary.
struct Row {
    key: &'static str,
    value: Value,
    unit: &'static str,
}

/// An ordered list of named results.
pub(crate) struct Summary {
    scenario: &'static str,
    rows: Vec<Row>,
    failed: bool,
}

impl Summary {
    pub fn new(scenario: &'static str) -> Summary {
        Summary {
            scenario,
            rows: Vec::new(),
            failed: false,
        }
    }

    /// Mark the run as failed (errors were seen): the summary is still printed, the exit code is 1.
    pub fn set_failed(&mut self) {
        self.failed = true;
    }

    /// Whether [`Summary::set_failed`] was called.
    pub fn failed(&self) -> bool {
        self.failed
    }

    /// Add a result; `unit` is only shown in the table.
    pub fn add(&mut self, key: &'static str, value: impl Into<Value>, unit: &'static str) {
        self.rows.push(Row {
            key,
            value: value.into(),
            unit,
        });
    }

    /// Add p50/p99/p99.9/max (µs) of a nanosecond histogram under `prefix`.
    pub fn add_latency(&mut self, prefix: &'static str, h: &Histogram<u64>, with_p999: bool) {
        let us = |v: u64| (v as f64 / 1000.0 * 10.0).round() / 10.0;
        let keys: &[(&'static str, f64)] = match prefix {
            "latency" => &[
                ("latency_p50_us", 50.0),
                ("latency_p99_us", 99.0),
                ("latency_p999_us", 99.9),
            ],
            "healthy_latency" => &[
                ("healthy_latency_p50_us", 50.0),
                ("healthy_latency_p99_us", 99.0),
                ("healthy_latency_p999_us", 99.9),
            ],
            _ => &[],
        };
        for &(k, q) in keys {
            if q > 99.0 && !with_p999 {
                continue;
            }
            let v = if h.is_empty() {
                Value::Null
            } else {
                json!(us(h.value_at_quantile(q / 100.0)))
            };
            self.add(k, v, "µs");
        }
        if with_p999 {
            let k = if prefix == "latency" {
                "latency_max_us"
            } else {
                "healthy_latency_max_us"
            };
            let v = if h.is_empty() {
                Value::Null
            } else {
                json!(us(h.max()))
            };
            self.add(k, v, "µs");
        }
    }

    /// The JSON object (keys sorted), with `"scenario"` added.
    pub fn to_json_string(&self) -> String {
        let mut map = serde_json::Map::new();
        map.insert("scenario".into(), json!(self.scenario));
        for r in &self.rows {
            map.insert(r.key.into(), r.value.clone());
        }
        Value::Object(map).to_string()
    }

    /// A two-column aligned table, in insertion order.
    pub fn to_table(&self) -> String {
        let width = self.rows.iter().map(|r| r.key.len()).max().unwrap_or(0);
        let mut s = format!("bench {}\n", self.scenario);
        for r in &self.rows {
            let v = match &r.value {
                Value::Null => "-".to_string(),
                Value::String(t) => t.clone(),
                Value::Number(n) => match n.as_f64() {
                    Some(f) if n.is_f64() => fmt_num(f),
                    _ => n.to_string(),
                },
                other => other.to_string(),
            };
            s.push_str(&format!("  {:<width$}  {} {}\n", r.key, v, r.unit));
        }
        s.pop();
        s
    }
}

/// Human formatting: no more than a few significant decimals.
fn fmt_num(f: f64) -> String {
    if f.abs() >= 1000.0 {
        format!("{f:.0}")
    } else if f.abs() >= 10.0 {
        format!("{f:.1}")
    } else {
        format!("{f:.3}")
    }
}

/// Round to 3 significant decimals for JSON (keeps the output readable).
pub(crate) fn round3(f: f64) -> f64 {
    (f * 1000.0).round() / 1000.0
}

/// A latency histogram in nanoseconds, up to 100 s, 3 significant digits.
pub(crate) fn new_histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 100_000_000_000, 3).expect("valid histogram bounds")
}

/// Record `ns`, clamped into the histogram's range.
#[inline]
pub(crate) fn record(h: &mut Histogram<u64>, ns: u64) {
    let _ = h.record(ns.clamp(1, 100_000_000_000));
}

/// Prints one status line per second to stderr, only when stderr is a terminal.
pub(crate) struct Progress {
    enabled: bool,
}

impl Progress {
    pub fn new() -> Progress {
        Progress {
            enabled: std::io::stderr().is_terminal(),
        }
    }

    /// Overwrite the status line.
    pub fn show(&self, elapsed: Duration, line: &str) {
        if self.enabled {
            let mut e = std::io::stderr().lock();
            let _ = write!(e, "\r\x1b[2K[{:>5.1}s] {line}", elapsed.as_secs_f64());
            let _ = e.flush();
        }
    }

    /// End the status line so the summary starts on a fresh line.
    pub fn finish(&self) {
        if self.enabled {
            let mut e = std::io::stderr().lock();
            let _ = writeln!(e);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table_and_json_agree() {
        let mut s = Summary::new("echo");
        s.add("round_trips", 42u64, "");
        s.add("rate", 1234.5678, "/s");
        let mut h = new_histogram();
        record(&mut h, 50_000);
        s.add_latency("latency", &h, false);
        let v: Value = serde_json::from_str(&s.to_json_string()).unwrap();
        assert_eq!(v["scenario"], "echo");
        assert_eq!(v["round_trips"], 42);
        let p50 = v["latency_p50_us"].as_f64().unwrap();
        assert!((p50 - 50.0).abs() < 0.1, "{p50}");
        assert!(v.get("latency_p999_us").is_none());
        let t = s.to_table();
        assert!(t.contains("round_trips"));
        assert!(t.contains("1235 /s"));
    }
}
