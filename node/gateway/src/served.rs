//! [`Served`]: one function version made ready to serve, with its
//! admission gate, its limits and where its calls run (inline on the
//! connection's thread, or on the blocking pool).

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU32, AtomicUsize, Ordering};
use std::sync::{Arc, RwLock, Weak};
use std::time::Duration;

use tokio::sync::Semaphore;
use wasmgrid_api::{CallLog, Route};
use wasmgrid_runtime::logs::now_ms;
use wasmgrid_runtime::{Error, Function, Instance, Kind, Limits};

use crate::instrument::{Meter, Series, VersionSeries};
use crate::trial::TrialRun;

/// One function's admission: a semaphore and a count of waiters. It is
/// kept across versions, so the limit holds through a version switch.
#[derive(Debug)]
pub(crate) struct Gate {
    pub(crate) slots: Arc<Semaphore>,
    pub(crate) waiting: AtomicUsize,
}

impl Gate {
    pub(crate) fn new(slots: usize) -> Arc<Gate> {
        Arc::new(Gate { slots: Arc::new(Semaphore::new(slots)), waiting: AtomicUsize::new(0) })
    }
}

/// The limits each call of `route` runs under.
pub fn limits(route: &Route) -> Limits {
    Limits {
        memory: route.memory,
        timeout: Duration::from_millis(route.timeout_ms),
        max_output_bytes: 64 << 20,
        gpu_refused: route.gpu_refused.as_deref().map(Into::into),
        ..Limits::default()
    }
}

/// Loads a function version again after the code cache evicted it.
pub type Reload = Arc<dyn Fn() -> Result<Arc<Function>, Error> + Send + Sync>;

/// A served version's function: held by the runtime's code cache, not
/// here, so an evicted one is freed and loaded again on its next call.
pub(crate) struct Held {
    kind: Kind,
    function: RwLock<Weak<Function>>,
    reload: Reload,
}

impl Held {
    pub(crate) fn new(function: &Arc<Function>, reload: Reload) -> Held {
        Held { kind: function.kind(), function: RwLock::new(Arc::downgrade(function)), reload }
    }

    /// Another handle on the same function.
    fn share(&self) -> Held {
        let function = self.function.read().map(|f| f.clone()).unwrap_or_default();
        Held { kind: self.kind, function: RwLock::new(function), reload: self.reload.clone() }
    }

    /// Its world.
    pub(crate) fn kind(&self) -> Kind {
        self.kind
    }

    /// The function, loaded again if it was evicted.
    pub(crate) fn get(&self) -> Result<Arc<Function>, Error> {
        if let Some(function) = self.function.read().ok().and_then(|f| f.upgrade()) {
            return Ok(function);
        }
        let function = (self.reload)()?;
        if let Ok(mut held) = self.function.write() {
            *held = Arc::downgrade(&function);
        }
        Ok(function)
    }

    /// A fresh instance (see [`Function::instantiate`]).
    pub(crate) fn instantiate(
        &self,
        limits: &Limits,
        config: Arc<BTreeMap<String, String>>,
        io: wasmgrid_runtime::Io,
    ) -> Result<Instance, Error> {
        self.get()?.instantiate(limits, config, io)
    }
}

/// One function version, ready to serve.
pub struct Served {
    /// What the control plane says to serve.
    pub route: Route,
    pub(crate) function: Held,
    pub(crate) limits: Limits,
    pub(crate) config: Arc<BTreeMap<String, String>>,
    pub(crate) gate: Arc<Gate>,
    /// How long its calls take, to choose where the next one runs.
    pub(crate) cost: CallCost,
    /// What its calls used, for usage metering.
    pub(crate) meter: Arc<Meter>,
    /// Its metric series.
    pub(crate) series: Series,
    /// Its tenant, as the node's call slots count it.
    pub(crate) tenant: Arc<str>,
    /// The version's artifacts, on this node's disk.
    pub(crate) artifacts: wasmgrid_runtime::Artifacts,
    /// This version's own series (a function's series span its versions).
    pub(crate) version_series: VersionSeries,
    /// The candidate served beside it, while a trial runs.
    pub(crate) trial: Option<Arc<TrialRun>>,
}

/// Calls that may run inline at once: all the async runtime's workers but
/// one, so that one is always free for I/O and other functions.
pub(crate) fn inline_slots() -> usize {
    let workers = match tokio::runtime::Handle::try_current() {
        Ok(h) => h.metrics().num_workers(),
        Err(_) => std::thread::available_parallelism().map_or(1, |n| n.get()),
    };
    workers.saturating_sub(1).max(1)
}

/// A function whose calls average less wall time than this runs inline.
const INLINE_BUDGET: Duration = Duration::from_millis(1);
/// The most one call adds to a function's average: a new function
/// starts there, and a call that ran past it is counted as this long.
const COST_CAP: Duration = Duration::from_millis(16);

/// A moving average of a function's call wall time, in microseconds.
///
/// The average moves an eighth of the way to each call, so a call
/// preempted for a few milliseconds by a busy machine does not send a fast
/// function to the pool, while one call that runs past [`COST_CAP`] does,
/// until about 8 short calls bring it back. A new function starts at the
/// cap and runs on the pool for its first 20 or so calls.
pub(crate) struct CallCost(AtomicU32);

impl CallCost {
    pub(crate) fn new() -> CallCost {
        CallCost(AtomicU32::new(COST_CAP.as_micros() as u32))
    }

    /// Whether calls are short enough to run on a gateway worker.
    pub(crate) fn runs_inline(&self) -> bool {
        self.0.load(Ordering::Relaxed) < INLINE_BUDGET.as_micros() as u32
    }

    pub(crate) fn record(&self, took: Duration) {
        let sample = took.min(COST_CAP).as_micros() as u32;
        let _ = self.0.fetch_update(Ordering::Relaxed, Ordering::Relaxed, |avg| Some(avg - avg / 8 + sample / 8));
    }
}

impl Served {
    /// The same version serving `route`, which differs from its own only
    /// in where it is placed: nothing is loaded again.
    pub fn placed_anew(&self, route: Route) -> Served {
        Served {
            route,
            function: self.function.share(),
            limits: self.limits.clone(),
            config: self.config.clone(),
            gate: self.gate.clone(),
            cost: CallCost(AtomicU32::new(self.cost.0.load(Ordering::Relaxed))),
            meter: self.meter.clone(),
            series: self.series.clone(),
            tenant: self.tenant.clone(),
            artifacts: self.artifacts.clone(),
            version_series: self.version_series.clone(),
            trial: None,
        }
    }

    /// Whether it is the version `route` names, run the same way.
    pub fn serves(&self, route: &Route) -> bool {
        self.route.same_version(route)
    }

    /// The candidate served beside it, if any.
    pub fn candidate(&self) -> Option<&Arc<Served>> {
        self.trial.as_ref().map(|t| &t.candidate)
    }

    /// What a call reads besides its rows: the version's artifacts.
    pub(crate) fn io(&self) -> wasmgrid_runtime::Io {
        wasmgrid_runtime::Io { artifacts: self.artifacts.clone(), ..Default::default() }
    }

    /// Ends a call's instance: charges its GPU time and keeps what it
    /// logged (and wrote to stdout and stderr), if anything, with its error.
    pub(crate) fn settle(&self, instance: Instance, error: Option<&Error>) {
        self.charge_gpu(&instance);
        let done = instance.finish();
        let Some(kept) = done.captured.kept(error.map(|e| e as &dyn std::fmt::Display)) else {
            return;
        };
        let entry = CallLog { at_ms: now_ms(), version: self.route.version, output: kept };
        if let Ok(mut logs) = self.meter.logs.lock() {
            if logs.len() == crate::instrument::KEPT_CALL_LOGS {
                logs.pop_front();
            }
            logs.push_back(entry);
        }
    }

    /// Its meter and metric series, for counting its answers.
    pub(crate) fn metered(&self) -> (&Meter, &Series) {
        (&self.meter, &self.series)
    }

    fn charge_gpu(&self, instance: &Instance) {
        let took = instance.gpu_time();
        if !took.is_zero() {
            self.series.gpu_seconds.inc_by(took.as_secs_f64());
            self.meter.gpu_us.fetch_add(took.as_micros() as u64, Ordering::Relaxed);
        }
    }
}

impl std::fmt::Debug for Served {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Served").field("route", &self.route).finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn call_cost_tolerates_a_preempted_call_but_not_a_slow_one() {
        let cost = CallCost::new();
        let fast = Duration::from_micros(300);
        let calls_until_inline = |cost: &CallCost| {
            (0..100)
                .take_while(|_| {
                    !cost.runs_inline() && {
                        cost.record(fast);
                        true
                    }
                })
                .count()
        };

        // A new function starts on the pool, then runs inline.
        assert!(!cost.runs_inline());
        let first = calls_until_inline(&cost);
        assert!((15..30).contains(&first), "inline after {first} calls");

        // Once settled, one call preempted for a few milliseconds, even two,
        // leave it inline.
        (0..30).for_each(|_| cost.record(fast));
        cost.record(Duration::from_millis(3));
        assert!(cost.runs_inline());
        cost.record(Duration::from_millis(3));
        assert!(cost.runs_inline());
        (0..30).for_each(|_| cost.record(fast));

        // A call past the cap sends it to the pool, and short calls bring it back.
        cost.record(Duration::from_secs(5));
        assert!(!cost.runs_inline());
        let back = calls_until_inline(&cost);
        assert!((5..12).contains(&back), "back inline after {back} calls");

        // A function whose calls all take 1.5 ms stays on the pool.
        (0..100).for_each(|_| cost.record(Duration::from_micros(1500)));
        assert!(!cost.runs_inline());
    }
}
