//! A `/metrics` scrape as numbers, and what two scrapes say: rates over
//! the interval and latency quantiles of the histogram samples that
//! arrived in it. Read by `tillstream top` and by the loadgen's report,
//! so both compute a quantile as PromQL does.

use std::collections::HashMap;

/// One scrape: `name{labels}` → value, as the exposition format writes it.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct Scrape {
    samples: HashMap<String, f64>,
}

impl Scrape {
    /// Parses Prometheus text; comments and malformed lines are skipped.
    pub fn parse(text: &str) -> Scrape {
        let samples = text
            .lines()
            .filter(|l| !l.starts_with('#'))
            .filter_map(|l| {
                let (series, value) = l.rsplit_once(' ')?;
                Some((series.trim().to_string(), value.trim().parse().ok()?))
            })
            .collect();
        Scrape { samples }
    }

    /// The value of one series, written as the text writes it (a name,
    /// with its labels if it has any), if the scrape holds it.
    pub fn get(&self, series: &str) -> Option<f64> {
        self.samples.get(series).copied()
    }

    /// The sum of every series of `name` (all label sets); 0 if none.
    pub fn sum(&self, name: &str) -> f64 {
        // From +0.0: `Iterator::sum` of no floats is -0.0, which `top`
        // printed as an ack stall of "-0.0 s" before the gauge existed.
        self.samples
            .iter()
            .filter(|(k, _)| series_name(k) == name)
            .fold(0.0, |total, (_, v)| total + v)
    }

    /// The series of `name` by the value of `label`, sorted by it.
    pub fn by_label(&self, name: &str, label: &str) -> Vec<(String, f64)> {
        let mut out: Vec<(String, f64)> = self
            .samples
            .iter()
            .filter(|(k, _)| series_name(k) == name)
            .filter_map(|(k, v)| Some((label_value(k, label)?, *v)))
            .collect();
        out.sort_by(|a, b| natural(&a.0).cmp(&natural(&b.0)).then(a.0.cmp(&b.0)));
        out
    }

    /// The cumulative buckets of histogram `name` (`le`, count), in `le`
    /// order, `+Inf` last.
    fn buckets(&self, name: &str) -> Vec<(f64, f64)> {
        let mut out: Vec<(f64, f64)> = self
            .by_label(&format!("{name}_bucket"), "le")
            .into_iter()
            .filter_map(|(le, n)| {
                let bound = if le == "+Inf" {
                    f64::INFINITY
                } else {
                    le.parse().ok()?
                };
                Some((bound, n))
            })
            .collect();
        out.sort_by(|a, b| a.0.total_cmp(&b.0));
        out
    }
}

fn series_name(series: &str) -> &str {
    series.split_once('{').map_or(series, |(n, _)| n)
}

fn label_value(series: &str, label: &str) -> Option<String> {
    let (_, labels) = series.split_once('{')?;
    labels.trim_end_matches('}').split(',').find_map(|kv| {
        let (k, v) = kv.split_once('=')?;
        (k.trim() == label).then(|| v.trim().trim_matches('"').to_string())
    })
}

/// Shard "10" after shard "9".
fn natural(s: &str) -> u64 {
    s.parse().unwrap_or(u64::MAX)
}

/// Per-second rate of counter `name` between two scrapes `secs` apart (0
/// when it went back: a restarted server).
pub fn rate(before: &Scrape, now: &Scrape, name: &str, secs: f64) -> f64 {
    let d = now.sum(name) - before.sum(name);
    if d < 0.0 || secs <= 0.0 {
        0.0
    } else {
        d / secs
    }
}

/// The `q` quantile (0..1) of histogram `name` over the samples that
/// arrived between the scrapes, by linear interpolation within a bucket
/// (as PromQL's `histogram_quantile`). `None` when none arrived.
pub fn quantile(before: &Scrape, now: &Scrape, name: &str, q: f64) -> Option<f64> {
    let old: HashMap<u64, f64> = before
        .buckets(name)
        .into_iter()
        .map(|(le, n)| (le.to_bits(), n))
        .collect();
    let delta: Vec<(f64, f64)> = now
        .buckets(name)
        .into_iter()
        .map(|(le, n)| {
            (
                le,
                (n - old.get(&le.to_bits()).copied().unwrap_or(0.0)).max(0.0),
            )
        })
        .collect();
    let total = delta.last()?.1;
    if total <= 0.0 {
        return None;
    }
    let rank = q.clamp(0.0, 1.0) * total;
    let mut lower = (0.0, 0.0);
    for &(le, count) in &delta {
        if count >= rank {
            if le.is_infinite() {
                return Some(lower.0);
            }
            let in_bucket = count - lower.1;
            let frac = if in_bucket > 0.0 {
                (rank - lower.1) / in_bucket
            } else {
                1.0
            };
            return Some(lower.0 + (le - lower.0) * frac);
        }
        lower = (le, count);
    }
    Some(lower.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    const BEFORE: &str = "\
# HELP x_seconds latency
# TYPE x_seconds histogram
x_seconds_bucket{le=\"0.001\"} 10
x_seconds_bucket{le=\"0.01\"} 10
x_seconds_bucket{le=\"+Inf\"} 10
x_total 100
g{shard=\"1\"} 5
g{shard=\"0\"} 7
";
    const NOW: &str = "\
x_seconds_bucket{le=\"0.001\"} 10
x_seconds_bucket{le=\"0.01\"} 110
x_seconds_bucket{le=\"+Inf\"} 110
x_total 300
g{shard=\"10\"} 1
g{shard=\"1\"} 6
g{shard=\"0\"} 8
";

    #[test]
    fn rates_and_labels_come_from_the_text() {
        let (a, b) = (Scrape::parse(BEFORE), Scrape::parse(NOW));
        assert_eq!(rate(&a, &b, "x_total", 2.0), 100.0);
        assert_eq!(
            rate(&b, &a, "x_total", 2.0),
            0.0,
            "a restart is not a negative rate"
        );
        let shards: Vec<String> = b
            .by_label("g", "shard")
            .into_iter()
            .map(|(s, _)| s)
            .collect();
        assert_eq!(shards, ["0", "1", "10"]);
        assert_eq!(b.sum("g"), 15.0);
        assert_eq!(b.get("x_total"), Some(300.0));
        let none = b.sum("absent");
        assert!(none == 0.0 && none.is_sign_positive(), "{none}");
        assert_eq!(b.get("g{shard=\"10\"}"), Some(1.0));
        assert_eq!(
            b.get("x_seconds"),
            None,
            "a histogram's name alone is no series"
        );
    }

    /// Only the samples of the interval count: the 10 fast ones before
    /// it do not pull the median down.
    #[test]
    fn quantiles_cover_the_interval_only() {
        let (a, b) = (Scrape::parse(BEFORE), Scrape::parse(NOW));
        let p50 = quantile(&a, &b, "x_seconds", 0.5).unwrap_or(f64::NAN);
        assert!((p50 - 0.0055).abs() < 1e-9, "{p50}");
        assert_eq!(quantile(&a, &a, "x_seconds", 0.5), None);
        // Since the start (no earlier scrape), the fast ones count.
        let all = quantile(&Scrape::default(), &b, "x_seconds", 0.05).unwrap_or(f64::NAN);
        assert!(all <= 0.001, "{all}");
    }
}
