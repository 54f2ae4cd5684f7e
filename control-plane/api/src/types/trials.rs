//! Trials: a candidate version beside the active one, on a copy of live
//! traffic (shadow) or on a share of it (canary), until it is promoted or
//! abandoned.

use serde::{Deserialize, Serialize};

/// Header that names a call's routing key: a canary's share of calls is
/// chosen by a stable hash of it, so one key (a user, a device) always
/// meets the same version. Calls without one are spread evenly.
pub const ROUTE_KEY_HEADER: &str = "wasmgrid-key";

/// The default decision threshold a shadow's disagreement rate is counted
/// at: a score at or over it is a positive.
pub const DEFAULT_THRESHOLD: f64 = 0.5;

/// How a candidate version takes traffic.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TrialMode {
    /// It scores a copy of the calls the active version answers; its
    /// answers are compared, never returned.
    Shadow,
    /// It answers a share of the calls.
    Canary,
}

impl TrialMode {
    /// As the CLI and `/metrics` write it.
    pub fn name(self) -> &'static str {
        match self {
            TrialMode::Shadow => "shadow",
            TrialMode::Canary => "canary",
        }
    }
}

/// How a candidate runs beside the active version.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct TrialSpec {
    /// Shadow or canary.
    pub mode: TrialMode,
    /// Canary: the percentage of calls it answers; shadow: the percentage
    /// of calls copied to it. 0 to 100.
    pub percent: f64,
    /// The decision threshold a numeric output's disagreement is counted
    /// at: the versions disagree on a row when one scores at or over it
    /// and the other under.
    pub threshold: f64,
}

// Checked finite when made (`TrialSpec::check`).
impl Eq for TrialSpec {}

impl TrialSpec {
    /// Why it cannot be run, if it cannot.
    pub fn check(&self) -> Result<(), String> {
        if !(self.percent.is_finite() && (0.0..=100.0).contains(&self.percent)) {
            return Err(format!("the share must be between 0% and 100%, not {}%", self.percent));
        }
        if self.mode == TrialMode::Canary && self.percent == 0.0 {
            return Err("a canary of 0% answers no calls; abandon the trial instead".into());
        }
        if !self.threshold.is_finite() {
            return Err(format!("the threshold must be a finite number, not {}", self.threshold));
        }
        Ok(())
    }

    /// Whether the call with routing-key hash `hash` (see [`route_hash`])
    /// is in its share.
    pub fn takes(&self, hash: u64) -> bool {
        // Basis points: 10% takes the hashes whose remainder is under 1000.
        let share = (self.percent * 100.0).round() as u64;
        hash % 10_000 < share
    }
}

/// A candidate version of a function and how it runs.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Trial {
    /// The candidate version.
    pub version: u64,
    /// How it runs.
    #[serde(flatten)]
    pub spec: TrialSpec,
}

/// `PUT /v1/functions/{name}/trial`: runs an existing version as the
/// function's candidate (replacing any other).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TrialRequest {
    /// The candidate version.
    pub version: u64,
    /// Shadow or canary.
    pub mode: TrialMode,
    /// The percentage of calls (default 100 for a shadow; a canary must
    /// say).
    #[serde(default)]
    pub percent: Option<f64>,
    /// The decision threshold (default [`DEFAULT_THRESHOLD`]).
    #[serde(default)]
    pub threshold: Option<f64>,
}

impl TrialRequest {
    /// The spec it asks for, checked.
    pub fn spec(&self) -> Result<TrialSpec, String> {
        let percent = match (self.mode, self.percent) {
            (_, Some(p)) => p,
            (TrialMode::Shadow, None) => 100.0,
            (TrialMode::Canary, None) => return Err("a canary needs its share of calls (`percent`)".into()),
        };
        let spec = TrialSpec { mode: self.mode, percent, threshold: self.threshold.unwrap_or(DEFAULT_THRESHOLD) };
        spec.check()?;
        Ok(spec)
    }
}

/// A stable 64-bit hash of a routing key (FNV-1a, then a finalizer that
/// spreads its bits, so the low digits are as even as the high ones): the
/// same on every node and every release.
pub fn route_hash(key: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for &b in key {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    // splitmix64's finalizer.
    h ^= h >> 30;
    h = h.wrapping_mul(0xbf58_476d_1ce4_e5b9);
    h ^= h >> 27;
    h = h.wrapping_mul(0x94d0_49bb_1331_11eb);
    h ^ (h >> 31)
}

/// How one output column of the two versions compared, over the rows
/// both scored.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ColumnDiff {
    /// The column.
    pub column: String,
    /// Rows compared.
    pub count: u64,
    /// Of those, rows where both values were numbers.
    pub numeric: u64,
    /// The sum of the absolute differences of the numeric rows.
    pub sum_abs: f64,
    /// The largest absolute difference.
    pub max_abs: f64,
    /// Rows where the versions disagree: numbers on either side of the
    /// threshold; anything else unequal (a value on one side only too).
    pub disagree: u64,
}

impl ColumnDiff {
    /// Adds `other`'s rows (the same column, from another node).
    pub fn add(&mut self, other: &ColumnDiff) {
        self.count += other.count;
        self.numeric += other.numeric;
        self.sum_abs += other.sum_abs;
        self.max_abs = self.max_abs.max(other.max_abs);
        self.disagree += other.disagree;
    }

    /// Counts one row's values, `None` where a version's row lacks the
    /// column (or holds null).
    pub fn compare(
        &mut self,
        active: Option<&serde_json::Value>,
        candidate: Option<&serde_json::Value>,
        threshold: f64,
    ) {
        use serde_json::Value;
        let (active, candidate) = (active.filter(|v| !v.is_null()), candidate.filter(|v| !v.is_null()));
        if active.is_none() && candidate.is_none() {
            return;
        }
        self.count += 1;
        let number = |v: Option<&Value>| match v {
            Some(Value::Number(n)) => n.as_f64(),
            Some(Value::Bool(b)) => Some(f64::from(u8::from(*b))),
            _ => None,
        };
        match (number(active), number(candidate)) {
            (Some(a), Some(b)) => {
                self.numeric += 1;
                let d = (a - b).abs();
                self.sum_abs += d;
                self.max_abs = self.max_abs.max(d);
                self.disagree += u64::from((a >= threshold) != (b >= threshold));
            }
            _ => self.disagree += u64::from(active != candidate),
        }
    }
}

/// What a node saw of one function's trial since it began there: both
/// versions' calls and latency, and (for a shadow) how their answers
/// compared. Sent with each heartbeat.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct TrialUsage {
    /// The tenant.
    pub tenant: String,
    /// The function.
    pub function: String,
    /// The active version.
    pub active: u64,
    /// The candidate version.
    pub candidate: u64,
    /// How it ran.
    #[serde(default)]
    pub mode: Option<TrialMode>,
    /// Calls the active version answered.
    pub active_calls: u64,
    /// Of those, calls that failed.
    pub active_errors: u64,
    /// Calls the candidate answered (canary) or scored (shadow).
    pub candidate_calls: u64,
    /// Candidate calls that failed (a shadow's failures are counted, not
    /// returned).
    pub candidate_errors: u64,
    /// Shadow calls not run because the node already ran as many as it
    /// allows beside live traffic.
    pub skipped: u64,
    /// Shadow: rows both versions scored.
    pub rows: u64,
    /// Shadow: each output column, compared.
    pub columns: Vec<ColumnDiff>,
    /// The active version's call time (the guest's, not the request's),
    /// by [`LATENCY_BOUNDS_US`](crate::LATENCY_BOUNDS_US) bucket.
    pub active_latency: Vec<u64>,
    /// The candidate's, the same way.
    pub candidate_latency: Vec<u64>,
}

impl TrialUsage {
    /// Adds `other` (the same trial, from another node).
    pub fn add(&mut self, other: &TrialUsage) {
        self.active_calls += other.active_calls;
        self.active_errors += other.active_errors;
        self.candidate_calls += other.candidate_calls;
        self.candidate_errors += other.candidate_errors;
        self.skipped += other.skipped;
        self.rows += other.rows;
        for column in &other.columns {
            match self.columns.iter_mut().find(|c| c.column == column.column) {
                Some(mine) => mine.add(column),
                None => self.columns.push(column.clone()),
            }
        }
        self.columns.sort_by(|a, b| a.column.cmp(&b.column));
        add_buckets(&mut self.active_latency, &other.active_latency);
        add_buckets(&mut self.candidate_latency, &other.candidate_latency);
    }
}

fn add_buckets(into: &mut Vec<u64>, from: &[u64]) {
    if into.len() < from.len() {
        into.resize(from.len(), 0);
    }
    for (i, n) in from.iter().enumerate() {
        into[i] += n;
    }
}

/// One output column in `GET /v1/functions/{name}/diff`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ColumnReport {
    /// The column.
    pub column: String,
    /// Rows compared.
    pub count: u64,
    /// The mean absolute difference over the numeric rows (0 for none).
    pub mean_abs: f64,
    /// The largest absolute difference.
    pub max_abs: f64,
    /// Rows where the versions disagree (see [`ColumnDiff::disagree`]).
    pub disagree: u64,
    /// `disagree / count` (0 for no rows).
    pub disagree_rate: f64,
}

/// One version's side of a trial.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VersionLatency {
    /// The version.
    pub version: u64,
    /// Calls it answered or scored.
    pub calls: u64,
    /// Of those, calls that failed.
    pub errors: u64,
    /// Median call time, microseconds.
    pub p50_us: u64,
    /// 99th percentile call time, microseconds.
    pub p99_us: u64,
}

/// `GET /v1/functions/{name}/diff`: a trial as every node reported it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TrialReport {
    /// The tenant.
    pub tenant: String,
    /// The function.
    pub name: String,
    /// How the candidate runs.
    pub mode: TrialMode,
    /// Its share of calls, in percent.
    pub percent: f64,
    /// The threshold disagreements are counted at.
    pub threshold: f64,
    /// The active version.
    pub active: VersionLatency,
    /// The candidate.
    pub candidate: VersionLatency,
    /// Shadow calls not run (the node was busy).
    pub skipped: u64,
    /// Rows both versions scored.
    pub rows: u64,
    /// Each output column, compared (shadow only).
    pub columns: Vec<ColumnReport>,
    /// Nodes that reported this trial.
    pub nodes: u64,
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn a_share_takes_that_share_of_keys() {
        let spec = TrialSpec { mode: TrialMode::Canary, percent: 10.0, threshold: 0.5 };
        let taken = (0..100_000).filter(|i| spec.takes(route_hash(format!("phone-{i}").as_bytes()))).count();
        assert!((9_500..10_500).contains(&taken), "{taken} of 100000");
        // Stable: the same key, the same answer.
        assert_eq!(route_hash(b"phone-7"), route_hash(b"phone-7"));
        assert_eq!(route_hash(b""), 0xf52a_15e9_a9b5_e89b);
        let all = TrialSpec { percent: 100.0, ..spec };
        assert!((0..1000).all(|i: u64| all.takes(route_hash(&i.to_le_bytes()))));
    }

    #[test]
    fn specs_are_checked() {
        let request = |mode, percent, threshold| TrialRequest { version: 2, mode, percent, threshold };
        assert_eq!(request(TrialMode::Shadow, None, None).spec().map(|s| s.percent), Ok(100.0));
        assert!(request(TrialMode::Canary, None, None).spec().expect_err("refused").contains("percent"));
        assert!(request(TrialMode::Canary, Some(0.0), None).spec().expect_err("refused").contains("abandon"));
        assert!(request(TrialMode::Canary, Some(101.0), None).spec().expect_err("refused").contains("between"));
        assert!(request(TrialMode::Shadow, None, Some(f64::NAN)).spec().expect_err("refused").contains("finite"));
    }

    #[test]
    fn columns_compare_numbers_at_the_threshold_and_anything_else_by_value() {
        let mut d = ColumnDiff::default();
        d.compare(Some(&json!(0.4)), Some(&json!(0.55)), 0.5);
        d.compare(Some(&json!(0.9)), Some(&json!(0.8)), 0.5);
        assert_eq!((d.count, d.numeric, d.disagree), (2, 2, 1));
        assert!((d.sum_abs - 0.25).abs() < 1e-12 && (d.max_abs - 0.15).abs() < 1e-12);
        let mut labels = ColumnDiff::default();
        labels.compare(Some(&json!("a")), Some(&json!("b")), 0.5);
        labels.compare(Some(&json!("a")), Some(&json!("a")), 0.5);
        labels.compare(Some(&json!("a")), None, 0.5);
        labels.compare(None, Some(&serde_json::Value::Null), 0.5);
        assert_eq!((labels.count, labels.numeric, labels.disagree), (3, 0, 2));
    }
}
