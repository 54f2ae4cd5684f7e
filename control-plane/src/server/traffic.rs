//! Per-request traffic over time, for the dashboard: each heartbeat
//! carries a node's counters since it started (calls, errors, a latency
//! histogram per function); the difference from the node's previous
//! heartbeat is added to the function's current window. Kept in the
//! leader's memory only, like the heartbeats themselves: a new leader
//! starts with an empty history.

use std::collections::{HashMap, VecDeque};

use wasmgrid_api::{FunctionTraffic, FunctionUsage, TrafficPoint, TrafficReport};

/// The length of a window.
pub(super) const WINDOW_MS: u64 = 5_000;
/// Windows kept per function: ten minutes.
const KEPT: usize = 120;

/// One function's calls in one window, all nodes together (the counters
/// of [`FunctionUsage`] that [`difference`] fills).
#[derive(Debug, Clone)]
struct Window {
    start_ms: u64,
    usage: FunctionUsage,
}

/// Every function's recent windows, by (tenant, function). Only windows
/// with calls are kept, at most [`KEPT`] per function, and a function with
/// none left is dropped: memory follows the functions called in the last
/// ten minutes.
#[derive(Debug, Default)]
pub(super) struct Traffic {
    series: HashMap<(String, String), VecDeque<Window>>,
}

impl Traffic {
    /// Adds what a node served between its heartbeat `before` (none for its
    /// first) and `now`, at `at_ms`. A counter that went down means the
    /// node restarted: all of `now` is new.
    pub(super) fn record(&mut self, before: Option<&[FunctionUsage]>, now: &[FunctionUsage], at_ms: u64) {
        let start_ms = at_ms - at_ms % WINDOW_MS;
        for usage in now {
            let previous =
                before.and_then(|b| b.iter().find(|u| u.tenant == usage.tenant && u.function == usage.function));
            let delta = match previous {
                Some(p) if p.calls <= usage.calls => difference(usage, p),
                _ => usage.clone(),
            };
            if delta.calls == 0 {
                continue;
            }
            let windows = self.series.entry((usage.tenant.clone(), usage.function.clone())).or_default();
            if windows.back().is_none_or(|w| w.start_ms < start_ms) {
                windows.push_back(Window { start_ms, usage: FunctionUsage::default() });
            }
            if let Some(window) = windows.back_mut() {
                window.usage.add(&delta);
            }
        }
        self.forget(at_ms);
    }

    /// Drops windows older than what is kept.
    fn forget(&mut self, at_ms: u64) {
        let oldest = at_ms.saturating_sub(WINDOW_MS * KEPT as u64);
        self.series.retain(|_, windows| {
            while windows.front().is_some_and(|w| w.start_ms < oldest) || windows.len() > KEPT {
                windows.pop_front();
            }
            !windows.is_empty()
        });
    }

    /// The windows of `tenant`'s functions (every tenant's for `None`).
    pub(super) fn report(&self, tenant: Option<&str>) -> TrafficReport {
        let mut functions: Vec<FunctionTraffic> = self
            .series
            .iter()
            .filter(|((t, _), _)| tenant.is_none_or(|wanted| wanted == t))
            .map(|((tenant, function), windows)| FunctionTraffic {
                tenant: tenant.clone(),
                function: function.clone(),
                points: windows
                    .iter()
                    .map(|w| TrafficPoint {
                        at_ms: w.start_ms,
                        calls: w.usage.calls,
                        errors: w.usage.errors,
                        p50_us: quantile(&w.usage.latency, 0.5),
                        p99_us: quantile(&w.usage.latency, 0.99),
                    })
                    .collect(),
            })
            .collect();
        functions.sort_by(|a, b| (&a.tenant, &a.function).cmp(&(&b.tenant, &b.function)));
        TrafficReport { window_ms: WINDOW_MS, kept_ms: WINDOW_MS * KEPT as u64, functions }
    }
}

/// `now - before`, counter by counter.
fn difference(now: &FunctionUsage, before: &FunctionUsage) -> FunctionUsage {
    FunctionUsage {
        calls: now.calls - before.calls,
        errors: now.errors.saturating_sub(before.errors),
        latency: now
            .latency
            .iter()
            .enumerate()
            .map(|(i, n)| n.saturating_sub(before.latency.get(i).copied().unwrap_or(0)))
            .collect(),
        ..FunctionUsage::default()
    }
}

pub(super) use wasmgrid_api::latency_quantile as quantile;

#[cfg(test)]
mod tests {
    use super::*;
    use wasmgrid_api::LATENCY_BOUNDS_US;

    fn usage(function: &str, calls: u64, errors: u64, latency: &[(u64, u64)]) -> FunctionUsage {
        let mut buckets = vec![0; LATENCY_BOUNDS_US.len() + 1];
        for &(us, n) in latency {
            buckets[wasmgrid_api::latency_bucket(us)] += n;
        }
        FunctionUsage {
            tenant: "t".into(),
            function: function.into(),
            calls,
            errors,
            latency: buckets,
            ..Default::default()
        }
    }

    #[test]
    fn quantiles_interpolate_within_the_bucket() {
        let mut buckets = vec![0; LATENCY_BOUNDS_US.len() + 1];
        // 100 calls between 500 and 1000 µs.
        buckets[wasmgrid_api::latency_bucket(800)] = 100;
        assert_eq!(quantile(&buckets, 0.5), 750);
        assert_eq!(quantile(&buckets, 0.99), 995);
        // One slow call over the last bound.
        buckets[LATENCY_BOUNDS_US.len()] = 1;
        assert_eq!(quantile(&buckets, 1.0), 10_000_000);
        assert_eq!(quantile(&[], 0.5), 0);
    }

    #[test]
    fn heartbeats_become_windows_of_differences() {
        let mut traffic = Traffic::default();
        let t0 = 1_000_000 * WINDOW_MS;
        let first = vec![usage("f", 10, 1, &[(80, 10)])];
        traffic.record(None, &first, t0 + 100);
        let second = vec![usage("f", 30, 1, &[(80, 10), (3_000, 20)])];
        traffic.record(Some(&first), &second, t0 + 1_100);
        // The next window; then the node restarts (counters go down).
        let third = vec![usage("f", 35, 2, &[(80, 15), (3_000, 20)])];
        traffic.record(Some(&second), &third, t0 + WINDOW_MS + 5);
        let restarted = vec![usage("f", 4, 0, &[(80, 4)])];
        traffic.record(Some(&third), &restarted, t0 + WINDOW_MS + 1_005);

        let report = traffic.report(Some("t"));
        let points = &report.functions[0].points;
        assert_eq!(points.len(), 2);
        assert_eq!((points[0].at_ms, points[0].calls, points[0].errors), (t0, 30, 1));
        // 10 calls at <= 100 µs, 20 in (2.5, 5] ms: the median is in the slow bucket.
        assert_eq!(points[0].p50_us, 2_500 + 625);
        assert_eq!((points[1].at_ms, points[1].calls, points[1].errors), (t0 + WINDOW_MS, 9, 1));
        assert!(traffic.report(Some("other")).functions.is_empty());

        // Ten minutes later the old windows are gone, and so is the function.
        traffic.record(None, &[], t0 + WINDOW_MS * (KEPT as u64 + 2));
        assert!(traffic.report(None).functions.is_empty());
    }
}
