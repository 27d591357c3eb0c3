//! `/metrics`: the node's counters, gauges and histograms, read from their atomics at
//! each scrape and encoded by prometheus-client (OpenMetrics text). The hot paths keep
//! plain relaxed atomics: prometheus-client's own histogram takes a lock per
//! observation, too much for one per delivery.

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric, MetricEncoder, NoLabelSet};
use prometheus_client::metrics::MetricType;
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::registry::Registry;

/// One sample's value.
#[derive(Debug, Clone)]
pub enum Sample {
    Counter(u64),
    Gauge(i64),
    GaugeF(f64),
    /// Sum, count, and (upper bound, count) per bucket, not cumulative; the last
    /// bound is +Inf.
    Histogram(f64, u64, Vec<(f64, u64)>),
}

impl Sample {
    fn kind(&self) -> MetricType {
        match self {
            Sample::Counter(_) => MetricType::Counter,
            Sample::Gauge(_) | Sample::GaugeF(_) => MetricType::Gauge,
            Sample::Histogram(..) => MetricType::Histogram,
        }
    }

    fn encode(&self, e: MetricEncoder<'_>) -> Result<(), std::fmt::Error> {
        let mut e = e;
        match self {
            Sample::Counter(v) => ConstCounter::new(*v).encode(e),
            Sample::Gauge(v) => ConstGauge::new(*v).encode(e),
            Sample::GaugeF(v) => ConstGauge::new(*v).encode(e),
            Sample::Histogram(sum, count, buckets) => {
                e.encode_histogram::<NoLabelSet>(*sum, *count, buckets, None)
            }
        }
    }
}

/// A metric: its name (without the `pushcenter_` prefix, and for counters without
/// `_total`, which the encoder adds), help, and samples by label set.
#[derive(Debug)]
pub struct Family {
    pub name: String,
    pub help: String,
    pub samples: Vec<(Vec<(String, String)>, Sample)>,
}

impl Family {
    pub fn one(name: &str, help: &str, s: Sample) -> Family {
        Family {
            name: name.trim_end_matches("_total").to_string(),
            help: help.to_string(),
            samples: vec![(Vec::new(), s)],
        }
    }
}

/// What one scrape read.
#[derive(Debug, Default)]
pub struct Snapshot(pub Vec<Family>);

impl Collector for Snapshot {
    fn encode(&self, mut encoder: DescriptorEncoder<'_>) -> Result<(), std::fmt::Error> {
        for f in &self.0 {
            let Some((_, first)) = f.samples.first() else {
                continue;
            };
            let mut e = encoder.encode_descriptor(&f.name, &f.help, None, first.kind())?;
            for (labels, s) in &f.samples {
                if labels.is_empty() {
                    s.encode(e)?;
                    break;
                }
                s.encode(e.encode_family(labels)?)?;
            }
        }
        Ok(())
    }
}

/// The OpenMetrics text of a scrape.
pub fn encode(snapshot: Snapshot) -> String {
    let mut registry = Registry::with_prefix("pushcenter");
    registry.register_collector(Box::new(snapshot));
    let mut out = String::new();
    if prometheus_client::encoding::text::encode(&mut out, &registry).is_err() {
        out.clear();
    }
    out
}

/// Upper bounds `start`, `start × factor`, ... up to and including the first at or
/// past `end`, each to 4 significant digits (so neighbours are at most 0.1 % further
/// apart than `factor`).
pub(crate) fn exponential(start: f64, factor: f64, end: f64) -> Vec<f64> {
    let round = |x: f64| {
        let p = 10f64.powi(3 - x.log10().floor() as i32);
        (x * p).round() / p
    };
    let mut v = Vec::new();
    let mut x = start;
    loop {
        v.push(round(x));
        if x >= end {
            break v;
        }
        x *= factor;
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn latency_buckets_are_at_most_1_2_apart_from_1_ms_to_10_s() {
        let b = crate::stats::Latency::default();
        let bounds = b.bounds();
        let from = bounds.iter().position(|&x| x == 0.001).expect("1 ms");
        assert!(bounds.last().is_some_and(|&x| x >= 10.0), "{bounds:?}");
        for w in bounds[from..].windows(2) {
            assert!(w[1] / w[0] <= 1.2, "{} / {} = {}", w[1], w[0], w[1] / w[0]);
        }
    }

    #[test]
    fn the_encoding_is_openmetrics_text_with_every_family_once() {
        let stats = crate::stats::Stats::default();
        stats.delivery_latency.observe(0.0031);
        stats.delivery_latency.observe(20.0);
        let text = stats.render_prometheus();
        assert!(text.ends_with("# EOF\n"), "{text}");
        let mut names: Vec<&str> = text
            .lines()
            .filter_map(|l| l.strip_prefix("# TYPE "))
            .filter_map(|l| l.split(' ').next())
            .collect();
        let n = names.len();
        names.sort();
        names.dedup();
        assert_eq!(names.len(), n, "a metric name twice: {names:?}");
        assert!(
            text.contains("pushcenter_delivery_latency_seconds_count 2"),
            "{text}"
        );
        assert!(
            text.contains("pushcenter_delivery_latency_seconds_bucket{le=\"+Inf\"} 2"),
            "{text}"
        );
        assert!(
            text.contains("pushcenter_messages_delivered_total 0"),
            "{text}"
        );
    }
}
