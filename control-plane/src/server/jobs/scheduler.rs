//! The leader's scheduler: which task of which job goes to which node,
//! and when a straggler gets a speculative copy. It is the leader's memory
//! only: a new leader rebuilds it from the replicated state and starts every
//! unfinished task again. No I/O here beyond reading the state.

use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant};

use wasmgrid_api::{GpuPlacement, JobState, PartitionSpec, Partitions, Stage, TaskAssignment, TaskFunction};

use crate::state::StateError;
use crate::state::jobs::{JobRecord, range_len, stage_tasks};

/// A running attempt this much slower than the stage's median gets a
/// speculative copy (and never before `MIN_STRAGGLER`).
const STRAGGLER_FACTOR: u32 = 3;
const MIN_STRAGGLER: Duration = Duration::from_secs(2);

/// One leased attempt.
#[derive(Debug, Clone)]
pub(crate) struct Attempt {
    pub(super) attempt: u64,
    pub(super) node: String,
    pub(super) started: Instant,
}

/// A job the leader is running. Its current stage's tasks are handed out
/// in ranges of `range` (1 but for the map stage of a job submitted in
/// ranges), each known by its first task: `pending`, `running` and `done`
/// hold first tasks.
#[derive(Debug)]
pub(crate) struct Run {
    pub(super) record: JobRecord,
    pub(super) plan: Arc<Vec<PartitionSpec>>,
    pub(super) stage: Stage,
    pub(super) range: u32,
    pub(super) pending: VecDeque<u32>,
    pub(super) running: BTreeMap<u32, Vec<Attempt>>,
    pub(super) done: HashSet<u32>,
    /// Durations of the stage's winning attempts this leader saw.
    pub(super) durations: Vec<Duration>,
    /// For a reduce stage: the pair files of each reduce partition.
    pub(super) shuffle: Vec<Vec<String>>,
}

/// Attempts running by tenant, against the tenants' slot quotas.
struct Running<'a> {
    by_tenant: HashMap<String, u64>,
    slots: &'a HashMap<String, u64>,
}

impl Running<'_> {
    fn of(&self, tenant: &str) -> u64 {
        self.by_tenant.get(tenant).copied().unwrap_or(0)
    }

    /// Whether `tenant` runs as many attempts as its quota allows.
    fn full(&self, tenant: &str) -> bool {
        self.slots.get(tenant).is_some_and(|&limit| self.of(tenant) >= limit)
    }
}

/// The node asking for tasks, as its last heartbeat and its lease
/// request describe it.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Asker<'a> {
    pub(crate) node: &'a str,
    /// Modules it holds compiled.
    pub(crate) warm: &'a HashSet<String>,
    pub(crate) gpu: bool,
    /// Whether it runs ranges of tasks (a node of an earlier release does
    /// not: jobs in ranges wait for the others).
    pub(crate) ranges: bool,
}

/// The leader's view of running jobs.
#[derive(Debug, Default)]
pub(crate) struct Scheduler {
    /// The term it was built in: a new term rebuilds it from the state.
    pub(super) term: u64,
    pub(super) runs: BTreeMap<String, Run>,
    pub(super) next_attempt: u64,
    /// Jobs being committed or cleaned up by this leader.
    pub(super) finishing: HashSet<String>,
}

impl Scheduler {
    /// Tasks of the running stages waiting for a node, and running.
    pub(crate) fn task_counts(&self) -> (u64, u64) {
        let runs = self.runs.values();
        runs.fold((0, 0), |(p, r), run| (p + run.pending.len() as u64, r + run.running.len() as u64))
    }
}

impl Run {
    /// The run of `record`'s current stage, from the replicated state.
    pub(super) fn load(state: &crate::State, record: JobRecord) -> Result<Run, StateError> {
        let plan = Arc::new(state.plan(&record.id)?);
        let stage = record.stage;
        let records = state.task_records(&record.id, stage)?;
        let done: HashSet<u32> = records.iter().filter(|(_, r)| r.winner.is_some()).map(|(i, _)| *i).collect();
        let range = match stage {
            Stage::Map => state.job_range(&record.id)?,
            Stage::Reduce => 1,
        };
        let pending = (0..stage_tasks(&record, stage)).step_by(range as usize).filter(|i| !done.contains(i)).collect();
        let shuffle = if stage == Stage::Reduce {
            let mut shuffle = vec![Vec::new(); record.reduce_partitions as usize];
            for (_, task) in state.task_records(&record.id, Stage::Map)? {
                let Some(w) = task.winner else { continue };
                for (r, file) in w.files.iter().enumerate().take(shuffle.len()) {
                    if !file.is_empty() {
                        shuffle[r].push(file.clone());
                    }
                }
            }
            shuffle
        } else {
            Vec::new()
        };
        Ok(Run { record, plan, stage, range, pending, running: BTreeMap::new(), done, durations: Vec::new(), shuffle })
    }

    /// Tasks in the range that starts at `first` (0 if none does).
    pub(super) fn range_len(&self, first: u32) -> u32 {
        range_len(&self.record, self.range, self.stage, first)
    }

    /// Input bytes of the range that starts at `first` (map tasks).
    pub(super) fn range_bytes(&self, first: u32) -> u64 {
        let (first, len) = (first as usize, self.range_len(first) as usize);
        self.plan.get(first..first + len).map_or(0, |specs| specs.iter().map(|p| p.bytes).sum())
    }

    pub(super) fn median(&self) -> Option<Duration> {
        let mut d = self.durations.clone();
        d.sort();
        d.get(d.len() / 2).copied()
    }

    /// A running task old enough for a speculative copy on `node`.
    /// The function the current stage runs.
    pub(super) fn function(&self) -> &TaskFunction {
        match self.stage {
            Stage::Map => &self.record.map,
            Stage::Reduce => self.record.reduce.as_ref().map_or(&self.record.map, |(_, _, f)| f),
        }
    }

    pub(super) fn straggler(&self, node: &str) -> Option<u32> {
        let median = self.median()?;
        let limit = (median * STRAGGLER_FACTOR).max(MIN_STRAGGLER);
        self.running
            .iter()
            .filter(|(task, a)| {
                a.len() == 1 && a[0].node != node && a[0].started.elapsed() > limit && !self.done.contains(task)
            })
            .min_by_key(|(_, a)| a[0].started)
            .map(|(&task, _)| task)
    }

    pub(super) fn assignment(&self, task: u32, attempt: u64) -> TaskAssignment {
        let mut more_inputs = Partitions::default();
        let (function, input, shuffle) = match self.stage {
            Stage::Map => {
                let (first, len) = (task as usize, self.range_len(task) as usize);
                more_inputs = Partitions(self.plan.get(first + 1..first + len).map(<[_]>::to_vec).unwrap_or_default());
                (self.record.map.clone(), self.plan.get(first).cloned(), Vec::new())
            }
            Stage::Reduce => {
                let f =
                    self.record.reduce.as_ref().map(|(_, _, f)| f.clone()).unwrap_or_else(|| self.record.map.clone());
                (f, None, self.shuffle.get(task as usize).cloned().unwrap_or_default())
            }
        };
        TaskAssignment {
            job: self.record.id.clone(),
            tenant: self.record.tenant.clone(),
            stage: self.stage,
            task,
            attempt,
            function,
            input,
            more_inputs,
            shuffle,
            work_dir: format!("{}/_temporary/{}", self.record.output.trim_end_matches('/'), self.record.id),
            gpu_refused: None,
            format: self.record.format.clone(),
            reduce_partitions: self.record.reduce_partitions,
            schema: self.record.schema.clone(),
        }
    }
}

impl Scheduler {
    /// Starts over from the state (a new leader, or the first request).
    pub(super) fn rebuild(&mut self, state: &crate::State, term: u64) -> Result<(), StateError> {
        self.runs.clear();
        self.finishing.clear();
        self.term = term;
        self.next_attempt = 0;
        for record in state.active_jobs()? {
            if record.state == JobState::Running {
                let id = record.id.clone();
                self.runs.insert(id, Run::load(state, record)?);
            }
        }
        Ok(())
    }

    /// An attempt id no other leader hands out: the term in the high bits.
    pub(super) fn attempt_id(&mut self) -> u64 {
        self.next_attempt += 1;
        (self.term << 32) | (self.next_attempt & 0xffff_ffff)
    }

    /// Up to `max` tasks for `node`: pending ones first, then speculative
    /// copies. Each task goes to the tenant with the fewest attempts running
    /// on the grid (so one tenant's 10,000-task job does not hold every slot
    /// while another's job waits), never past a tenant's `slots` quota;
    /// within a tenant, jobs whose function the node has compiled first.
    pub(super) fn take(&mut self, asker: Asker<'_>, max: u32, slots: &HashMap<String, u64>) -> Vec<TaskAssignment> {
        let node = asker.node;
        let ids = self.order(asker);
        let mut running = Running { by_tenant: self.running_by_tenant(), slots };
        let mut out = Vec::new();
        while (out.len() as u32) < max {
            let Some(id) = self.next_job(&ids, &running) else { break };
            let attempt = self.attempt_id();
            let Some(run) = self.runs.get_mut(id) else { break };
            let Some(task) = run.pending.pop_front() else { break };
            run.running.entry(task).or_default().push(Attempt {
                attempt,
                node: node.to_string(),
                started: Instant::now(),
            });
            *running.by_tenant.entry(run.record.tenant.clone()).or_default() += 1;
            out.push(run.assignment(task, attempt));
        }
        if out.is_empty() {
            out.extend(self.speculate(node, &ids, &running));
        }
        out
    }

    /// The jobs `node` may run, in the order it should: jobs that prefer a
    /// GPU last on a node without one; then those the node holds compiled;
    /// then oldest first.
    fn order(&self, asker: Asker<'_>) -> Vec<String> {
        let (warm, gpu) = (asker.warm, asker.gpu);
        let mut ids: Vec<String> = self
            .runs
            .iter()
            .filter(|(_, run)| gpu || run.function().gpu != GpuPlacement::Required)
            .filter(|(_, run)| asker.ranges || run.range == 1)
            .map(|(id, _)| id.clone())
            .collect();
        ids.sort_by_key(|id| {
            let run = &self.runs[id];
            let f = run.function();
            (
                !gpu && f.gpu == GpuPlacement::Preferred,
                !warm.contains(&f.module),
                run.record.id.trim_start_matches("job-").parse::<u64>().unwrap_or(0),
            )
        });
        ids
    }

    /// Attempts running on the grid, by tenant.
    fn running_by_tenant(&self) -> HashMap<String, u64> {
        let mut running: HashMap<String, u64> = HashMap::new();
        for run in self.runs.values() {
            *running.entry(run.record.tenant.clone()).or_default() +=
                run.running.values().map(|a| a.len() as u64).sum::<u64>();
        }
        running
    }

    /// The first job, in `ids`' order, with a pending task, of the tenant
    /// running fewest attempts that is not at its quota.
    fn next_job<'a>(&mut self, ids: &'a [String], running: &Running<'_>) -> Option<&'a String> {
        let mut pick: Option<(u64, &String)> = None;
        for id in ids {
            let Some(run) = self.runs.get_mut(id) else { continue };
            // A queued task may have been won meanwhile (a slow attempt
            // that was given up on reported after all).
            while run.pending.front().is_some_and(|t| run.done.contains(t)) {
                run.pending.pop_front();
            }
            let tenant = &run.record.tenant;
            if run.pending.is_empty() || running.full(tenant) {
                continue;
            }
            let now = running.of(tenant);
            if pick.is_none_or(|(least, _)| now < least) {
                pick = Some((now, id));
            }
        }
        pick.map(|(_, id)| id)
    }

    /// One speculative copy of a straggler for `node`, if a job has one.
    fn speculate(&mut self, node: &str, ids: &[String], running: &Running<'_>) -> Option<TaskAssignment> {
        for id in ids {
            let attempt = self.attempt_id();
            let Some(run) = self.runs.get_mut(id) else { continue };
            if running.full(&run.record.tenant) {
                continue;
            }
            if let Some(task) = run.straggler(node) {
                tracing::info!(job = %id, task, node, "speculative copy of a straggler");
                run.running.entry(task).or_default().push(Attempt {
                    attempt,
                    node: node.to_string(),
                    started: Instant::now(),
                });
                return Some(run.assignment(task, attempt));
            }
        }
        None
    }

    /// Attempts on nodes that stopped heart-beating are given up, their
    /// tasks queued again. Returns how many tasks were queued again.
    pub(super) fn requeue_lost(&mut self, alive: &dyn Fn(&str) -> bool) -> usize {
        let mut requeued = 0;
        for (id, run) in &mut self.runs {
            let mut lost = Vec::new();
            for (&task, attempts) in &mut run.running {
                attempts.retain(|a| {
                    let keep = alive(&a.node);
                    if !keep {
                        tracing::warn!(job = %id, task, node = %a.node, "node lost; task queued again");
                    }
                    keep
                });
                if attempts.is_empty() {
                    lost.push(task);
                }
            }
            for task in lost {
                run.running.remove(&task);
                if !run.done.contains(&task) {
                    run.pending.push_front(task);
                    requeued += 1;
                }
            }
        }
        requeued
    }

    /// Jobs among `running` that are not running here any more.
    pub(super) fn stopped(&self, running: &[String], state: &crate::State) -> Vec<String> {
        running
            .iter()
            .filter(|id| !self.runs.contains_key(*id))
            .filter(|id| state.job(id).ok().flatten().is_none_or(|j| j.state != JobState::Running))
            .cloned()
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use wasmgrid_api::SpanSpec;

    fn ask<'a>(node: &'a str, warm: &'a HashSet<String>, gpu: bool) -> Asker<'a> {
        Asker { node, warm, gpu, ranges: true }
    }

    fn run(tasks: u32) -> Run {
        let record = JobRecord::sample("job-1", tasks);
        let plan = (0..tasks)
            .map(|i| PartitionSpec {
                path: format!("/in/{i}"),
                format: "text".into(),
                span: SpanSpec::Bytes { start: 0, end: 1 },
                bytes: 1,
            })
            .collect();
        Run {
            record,
            plan: Arc::new(plan),
            stage: Stage::Map,
            range: 1,
            pending: (0..tasks).collect(),
            running: BTreeMap::new(),
            done: HashSet::new(),
            durations: Vec::new(),
            shuffle: Vec::new(),
        }
    }

    #[test]
    fn tasks_are_shared_fairly_between_tenants_within_their_slot_quotas() {
        let mut s = Scheduler { term: 1, ..Scheduler::default() };
        // Tenant a's big job came first; tenant b's small one after it.
        let mut big = run(10_000);
        big.record.tenant = "a".into();
        let mut small = run(4);
        small.record.id = "job-2".into();
        small.record.tenant = "b".into();
        s.runs.insert("job-1".into(), big);
        s.runs.insert("job-2".into(), small);
        let none = HashSet::new();
        let jobs = |tasks: &[TaskAssignment]| tasks.iter().map(|t| t.job.clone()).collect::<Vec<_>>();
        // Without quotas: alternately, so b is not queued behind 10,000 tasks.
        let first = s.take(ask("n1", &none, false), 6, &HashMap::new());
        assert_eq!(jobs(&first), ["job-1", "job-2", "job-1", "job-2", "job-1", "job-2"]);
        // With a quota of 4 task slots for a: a has 3 running, so 1 more.
        let slots = HashMap::from([("a".to_string(), 4)]);
        let next = s.take(ask("n2", &none, false), 6, &slots);
        assert_eq!(jobs(&next), ["job-1", "job-2"], "a up to its quota, then b's last task");
        assert!(s.take(ask("n3", &none, false), 6, &slots).is_empty(), "a is at its quota and b has nothing left");
    }

    #[test]
    fn leases_respect_max_and_stragglers_get_one_copy_on_another_node() {
        let mut s = Scheduler { term: 3, ..Scheduler::default() };
        s.runs.insert("job-1".into(), run(4));
        let none = HashSet::new();
        let a = s.take(ask("a", &none, false), 3, &HashMap::new());
        assert_eq!(a.iter().map(|t| t.task).collect::<Vec<_>>(), [0, 1, 2]);
        assert!(a.iter().all(|t| t.attempt >> 32 == 3), "attempt ids carry the term");
        assert_eq!(s.take(ask("b", &none, false), 8, &HashMap::new()).len(), 1, "one task left");
        // Nothing pending and no straggler yet: nothing to copy.
        assert!(s.take(ask("b", &none, false), 8, &HashMap::new()).is_empty());

        let run = s.runs.get_mut("job-1").expect("run");
        run.durations = vec![Duration::from_millis(10); 5];
        // Task 1 on node a has run far longer than the median.
        let started = Instant::now().checked_sub(Duration::from_secs(5)).expect("clock");
        run.running.get_mut(&1).expect("task 1")[0].started = started;
        run.running.get_mut(&2).expect("task 2")[0].started = started;
        run.done.insert(2);
        let copy = s.take(ask("b", &none, false), 8, &HashMap::new());
        assert_eq!(copy.iter().map(|t| t.task).collect::<Vec<_>>(), [1], "task 2 is done; task 1 gets a copy");
        assert!(s.take(ask("c", &none, false), 8, &HashMap::new()).is_empty(), "one copy per task");
        assert!(s.take(ask("a", &none, false), 8, &HashMap::new()).is_empty(), "never on the straggler's own node");

        // Node a stops heart-beating: its tasks go back to the queue,
        // except one whose copy still runs and one that is done.
        let requeued = s.requeue_lost(&|node| node != "a");
        assert_eq!(requeued, 1, "task 0 only");
        let again = s.take(ask("b", &none, false), 8, &HashMap::new());
        assert_eq!(again.iter().map(|t| t.task).collect::<Vec<_>>(), [0]);
    }

    #[test]
    fn a_queued_task_that_was_won_meanwhile_is_not_leased_again() {
        let mut s = Scheduler { term: 1, ..Scheduler::default() };
        let mut r = run(3);
        r.done.insert(0);
        s.runs.insert("job-1".into(), r);
        let tasks = s.take(ask("a", &HashSet::new(), false), 8, &HashMap::new());
        assert_eq!(tasks.iter().map(|t| t.task).collect::<Vec<_>>(), [1, 2]);
    }

    fn with_gpu(id: &str, tasks: u32, gpu: GpuPlacement) -> Run {
        let mut r = run(tasks);
        r.record.id = id.into();
        r.record.map.gpu = gpu;
        r
    }

    #[test]
    fn required_gpu_tasks_go_only_to_gpu_nodes_and_preferred_ones_to_them_first() {
        let mut s = Scheduler { term: 1, ..Scheduler::default() };
        s.runs.insert("job-1".into(), with_gpu("job-1", 2, GpuPlacement::Required));
        s.runs.insert("job-2".into(), with_gpu("job-2", 2, GpuPlacement::Preferred));
        s.runs.insert("job-3".into(), with_gpu("job-3", 2, GpuPlacement::Any));
        let none = HashSet::new();
        // A CPU node: never the required job; the preferred one after the rest.
        let cpu = s.take(ask("cpu", &none, false), 3, &HashMap::new());
        let jobs: Vec<&str> = cpu.iter().map(|t| t.job.as_str()).collect();
        assert_eq!(jobs, ["job-3", "job-3", "job-2"]);
        // A GPU node: oldest first, the required job included.
        let gpu = s.take(ask("gpu", &none, true), 8, &HashMap::new());
        let jobs: Vec<&str> = gpu.iter().map(|t| t.job.as_str()).collect();
        assert_eq!(jobs, ["job-1", "job-1", "job-2"]);
    }

    #[test]
    fn ranges_go_to_nodes_that_run_them_with_every_input_of_the_range() {
        let mut s = Scheduler { term: 1, ..Scheduler::default() };
        let mut r = run(10);
        r.range = 4;
        r.pending = (0..10).step_by(4).collect();
        s.runs.insert("job-1".into(), r);
        let none = HashSet::new();
        let old = Asker { ranges: false, ..ask("old", &none, false) };
        assert!(s.take(old, 8, &HashMap::new()).is_empty(), "a node of an earlier release gets no range");
        let tasks = s.take(ask("new", &none, false), 8, &HashMap::new());
        let got: Vec<(u32, u32)> = tasks.iter().map(|t| (t.task, t.count())).collect();
        assert_eq!(got, [(0, 4), (4, 4), (8, 2)]);
        let paths: Vec<String> = tasks[2].inputs().map(|p| p.path.clone()).collect();
        assert_eq!(paths, ["/in/8", "/in/9"]);
        let run = s.runs.get_mut("job-1").expect("run");
        assert_eq!((run.range_bytes(4), run.range_bytes(8), run.range_len(5)), (4, 2, 0));

        // Range 4 runs far longer than the median: an idle node gets a copy
        // of the whole range.
        run.durations = vec![Duration::from_millis(10); 3];
        run.running.get_mut(&4).expect("range 4")[0].started =
            Instant::now().checked_sub(Duration::from_secs(5)).expect("clock");
        let copy = s.take(ask("other", &none, false), 8, &HashMap::new());
        let got: Vec<(u32, u32)> = copy.iter().map(|t| (t.task, t.count())).collect();
        assert_eq!(got, [(4, 4)]);
    }
}
