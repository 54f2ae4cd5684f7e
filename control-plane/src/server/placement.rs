//! Placement: which nodes load each function. The leader decides and
//! replicates it (a [`Command::Place`] entry), the route table carries it,
//! nodes load only what is placed on them and forward the rest.
//!
//! A function deployed with `--replicas N` is placed on N live nodes (all
//! of them for `all`, every live node when there are fewer), chosen among
//! those that can run it (a GPU for `--gpu required`, GPU nodes first for
//! `preferred`) by how many functions each already holds for its code cache
//! budget, ties broken by a hash of the function and node names (so equal
//! nodes share functions evenly and the choice does not move with the
//! order nodes came in). A deploy carries its function's placement in its
//! own entry, chosen as the leader accepts it; and every [`EVERY`] the
//! leader runs a pass: a node silent for [`NODE_LIVENESS`] loses its
//! functions to live ones, a node that joins gets functions that lack
//! replicas, and a function keeps the nodes it has while they live, so a
//! pass that changes nothing proposes nothing.

use std::collections::{BTreeSet, HashMap};
use std::hash::{Hash, Hasher};
use std::time::{Duration, Instant};

use wasmgrid_api::{GpuPlacement, Replicas};

use super::answer::*;
use super::*;

/// How often the leader checks placement.
const EVERY: Duration = Duration::from_millis(250);

/// A node as placement sees it.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Candidate {
    pub(crate) id: String,
    pub(crate) gpu: bool,
    /// Its share of functions, relative to the others: its code cache budget.
    pub(crate) weight: f64,
}

/// What a pass knows of the nodes.
#[derive(Debug, Default, PartialEq)]
pub(crate) struct Nodes {
    /// Heard from within [`NODE_LIVENESS`].
    pub(crate) alive: Vec<Candidate>,
    /// Registered but not heard from by a leader that has led for less
    /// than [`NODE_LIVENESS`]: kept where placed, not given more.
    pub(crate) unknown: BTreeSet<String>,
}

/// A function as placement sees it.
#[derive(Debug, Clone)]
pub(crate) struct Wanted {
    pub(crate) tenant: String,
    pub(crate) name: String,
    pub(crate) replicas: Replicas,
    pub(crate) gpu: GpuPlacement,
    /// Where it is placed now.
    pub(crate) placed: Vec<String>,
}

/// How many functions each node holds, by id.
pub(crate) type Held = HashMap<String, usize>;

/// How many of `functions` each node holds.
pub(crate) fn held_by(functions: &[Wanted]) -> Held {
    let mut held = Held::new();
    for id in functions.iter().flat_map(|f| &f.placed) {
        *held.entry(id.clone()).or_default() += 1;
    }
    held
}

/// The placements that differ from what `functions` have, given `nodes`.
pub(crate) fn plan(functions: &[Wanted], nodes: &Nodes) -> Vec<Placement> {
    let mut held = held_by(functions);
    let mut changes = Vec::new();
    for f in functions {
        if let Some(placed) = place_one(f, nodes, &mut held) {
            changes.push(Placement { tenant: f.tenant.clone(), name: f.name.clone(), nodes: placed });
        }
    }
    changes
}

/// Where `f` should be, if not where it is, given `nodes` and what each
/// holds (`held` counts `f` where it is, and is updated with the move).
pub(crate) fn place_one(f: &Wanted, nodes: &Nodes, held: &mut Held) -> Option<Vec<String>> {
    let runs_on = |c: &Candidate| c.gpu || f.gpu != GpuPlacement::Required;
    let alive = |id: &str| nodes.alive.iter().find(|c| c.id == id);
    let load = |held: &Held, c: &Candidate| held.get(&c.id).copied().unwrap_or(0) as f64 / c.weight;
    let eligible: Vec<&Candidate> = nodes.alive.iter().filter(|c| runs_on(c)).collect();
    // Nodes that may be alive count, so a fresh leader moves nothing.
    let wanted = f.replicas.of(eligible.len() + nodes.unknown.len()).max(1);
    let mut keep: Vec<&str> = f
        .placed
        .iter()
        .map(String::as_str)
        .filter(|id| nodes.unknown.contains(*id) || alive(id).is_some_and(runs_on))
        .collect();
    while keep.len() > wanted {
        // The most loaded goes (a GPU node last for `preferred`).
        let rank = |id: &str| {
            let c = alive(id);
            let gpu_first = f.gpu == GpuPlacement::Preferred && c.is_some_and(|c| c.gpu);
            (!gpu_first, c.map_or(0.0, |c| load(held, c)))
        };
        let worst = (0..keep.len()).max_by(|&a, &b| {
            let (ra, rb) = (rank(keep[a]), rank(keep[b]));
            ra.0.cmp(&rb.0).then(ra.1.total_cmp(&rb.1))
        });
        let Some(worst) = worst else { break };
        let id = keep.remove(worst);
        if let Some(n) = held.get_mut(id) {
            *n = n.saturating_sub(1);
        }
    }
    while keep.len() < wanted {
        let rank = |c: &Candidate| {
            let gpu_first = f.gpu == GpuPlacement::Preferred && c.gpu;
            (!gpu_first, load(held, c), spread(&f.tenant, &f.name, &c.id))
        };
        let best = eligible.iter().filter(|c| !keep.contains(&c.id.as_str())).min_by(|a, b| {
            let (ra, rb) = (rank(a), rank(b));
            ra.0.cmp(&rb.0).then(ra.1.total_cmp(&rb.1)).then(ra.2.cmp(&rb.2))
        });
        let Some(best) = best else { break };
        keep.push(&best.id);
        *held.entry(best.id.clone()).or_default() += 1;
    }
    let mut placed: Vec<String> = keep.into_iter().map(str::to_string).collect();
    placed.sort();
    if placed.is_empty() && !f.placed.is_empty() && nodes.alive.is_empty() {
        // No live node at all: keep what was, to be moved when one comes.
        return None;
    }
    let mut before = f.placed.clone();
    before.sort();
    (placed != before).then_some(placed)
}

/// A stable hash of a function on a node: equal nodes share functions by it.
fn spread(tenant: &str, name: &str, node: &str) -> u64 {
    let mut h = std::collections::hash_map::DefaultHasher::new();
    (tenant, name, node).hash(&mut h);
    h.finish()
}

/// What a placement pass saw.
#[derive(Debug, PartialEq)]
pub(super) struct Seen {
    term: u64,
    /// The state's route revision: functions deployed, moved or removed,
    /// nodes registered.
    revision: u64,
    nodes: Nodes,
}

impl App {
    /// The nodes as the leader knows them now.
    fn placement_nodes(&self) -> Answer<Nodes> {
        let fresh_leader = self.0.leader_since.lock().map_err(poisoned)?.is_none_or(|t| t.elapsed() < NODE_LIVENESS);
        let beats = self.0.nodes.lock().map_err(poisoned)?;
        let mut nodes = Nodes::default();
        for (id, (at, beat)) in beats.iter() {
            if at.elapsed() < NODE_LIVENESS {
                let weight = if beat.code_cache == 0 { 1.0 } else { beat.code_cache as f64 / (1u64 << 30) as f64 };
                nodes.alive.push(Candidate { id: id.clone(), gpu: beat.gpu.is_some(), weight: weight.max(1e-3) });
            }
        }
        if fresh_leader {
            for record in self.0.replica.state().nodes()? {
                if !beats.contains_key(&record.id) {
                    nodes.unknown.insert(record.id);
                }
            }
        }
        nodes.alive.sort_by(|a, b| a.id.cmp(&b.id));
        Ok(nodes)
    }

    /// Whether every replica runs this release (or a later one), so reads
    /// the entries it brought: `Place`, and jobs submitted in ranges
    /// (`JobCommand::SubmitRanges`). Its `/v1/health` says `placement`.
    /// During a rolling upgrade from an earlier release, functions stay
    /// unplaced (every node loads them) and jobs run task by task until the
    /// last replica has moved. Every replica that answers must say
    /// so, and a quorum must answer; one that cannot be reached (down, or
    /// never joined) is taken to be upgraded with the rest, as operations.md
    /// asks (one of an earlier release would stop at the first `Place`
    /// entry, saying it cannot read it, until upgraded).
    pub(super) async fn replicas_on_this_release(&self) -> bool {
        if self.0.replica.state().placement_seen().unwrap_or(false) {
            return true;
        }
        let status = self.status();
        let mut confirmed = self.0.placement_readers.lock().await;
        let mut answered = 1; // this replica
        for (&id, url) in &status.members {
            if id == status.id || confirmed.contains(url) {
                answered += usize::from(id != status.id);
                continue;
            }
            let Some(says) = self.health_says(url, "placement").await else { continue };
            answered += 1;
            if !says {
                return false;
            }
            confirmed.insert(url.clone());
        }
        if answered <= status.members.len() / 2 {
            return false;
        }
        // Recorded in the log, so a replica down later (or a new leader)
        // does not hold placement back: an empty `Place` marks it.
        if self.0.replica.propose(Command::Place { changes: Vec::new() }).await.is_err() {
            return false;
        }
        true
    }

    /// Whether the replica at `url` says `flag` in its `/v1/health` (what
    /// its release does), or `None` when it does not answer within a second.
    pub(super) async fn health_says(&self, url: &str, flag: &str) -> Option<bool> {
        let answer = self.0.http.get(format!("{url}/v1/health")).timeout(Duration::from_secs(1)).send().await.ok()?;
        Some(answer.json::<serde_json::Value>().await.is_ok_and(|v| v[flag] == true))
    }

    /// Every function in the state as placement sees it.
    fn wanted(&self) -> Answer<Vec<Wanted>> {
        let functions = self.0.replica.state().all_functions()?;
        Ok(functions
            .into_iter()
            .filter_map(|f| {
                let spec = &f.active_version()?.spec;
                Some(Wanted {
                    replicas: spec.replicas,
                    gpu: spec.gpu,
                    placed: f.placement.clone(),
                    tenant: f.tenant,
                    name: f.name,
                })
            })
            .collect())
    }

    /// Where a version about to be deployed goes, once
    /// [`App::replicas_on_this_release`] said placements are read. The choice
    /// counts as made for the other deploys and passes until [`App::placed`]
    /// says it was applied (or not).
    pub(super) async fn placement_for(&self, tenant: &str, name: &str, spec: &FunctionSpec) -> Answer<Vec<String>> {
        let _turn = self.0.placing.lock().await;
        let nodes = self.placement_nodes()?;
        // Where every function is, the deploys under way in place of what
        // the state has: head records only, no versions read.
        let mut pending = self.0.placing_now.lock().map_err(poisoned)?.clone();
        let mut held = Held::new();
        let mut placed = Vec::new();
        for (t, n, nodes) in self.0.replica.state().placements()? {
            let nodes = pending.remove(&(t.clone(), n.clone())).map_or(nodes, |p| p.placed);
            if t == tenant && n == name {
                placed = nodes.clone();
            }
            for id in nodes {
                *held.entry(id).or_default() += 1;
            }
        }
        // New functions whose deploy is under way.
        for ((t, n), p) in pending {
            if t == tenant && n == name {
                placed = p.placed.clone();
            }
            for id in p.placed {
                *held.entry(id).or_default() += 1;
            }
        }
        let me = Wanted { tenant: tenant.into(), name: name.into(), replicas: spec.replicas, gpu: spec.gpu, placed };
        let nodes = place_one(&me, &nodes, &mut held).unwrap_or_else(|| me.placed.clone());
        let chosen = Wanted { placed: nodes.clone(), ..me };
        self.0.placing_now.lock().map_err(poisoned)?.insert((tenant.into(), name.into()), chosen);
        Ok(nodes)
    }

    /// The deploy of `tenant/name` that asked [`App::placement_for`] ended.
    pub(super) fn placed(&self, tenant: &str, name: &str) {
        if let Ok(mut pending) = self.0.placing_now.lock() {
            pending.remove(&(tenant.to_string(), name.to_string()));
        }
    }

    /// One placement pass, on the leader: proposes the placements that
    /// changed, if any. Passes run one at a time. A pass that would see
    /// what the last one that changed nothing saw (`seen`: the same term,
    /// route revision and nodes) is skipped: with many functions a pass
    /// reads them all, which an idle leader should not do four times a
    /// second.
    pub(super) async fn place(&self, seen: &mut Option<Seen>) -> Answer<()> {
        let _turn = self.0.placing.lock().await;
        let status = self.status();
        if !status.is_leader || !self.replicas_on_this_release().await {
            return Ok(());
        }
        let now = Seen {
            term: status.term,
            revision: self.0.replica.state().routes_revision()?,
            nodes: self.placement_nodes()?,
        };
        let pending = self.0.placing_now.lock().map_err(poisoned)?.clone();
        if pending.is_empty() && seen.as_ref() == Some(&now) {
            return Ok(());
        }
        let nodes = &now.nodes;
        // Functions whose deploy is under way are that deploy's to place.
        let functions: Vec<Wanted> =
            self.wanted()?.into_iter().filter(|f| !pending.contains_key(&(f.tenant.clone(), f.name.clone()))).collect();
        let changes = plan(&functions, nodes);
        if changes.is_empty() {
            *seen = Some(now);
            return Ok(());
        }
        tracing::info!(functions = changes.len(), "placing functions");
        self.0.replica.propose(Command::Place { changes }).await?;
        Ok(())
    }
}

/// On the leader, every [`EVERY`] and when woken: moves functions off
/// silent nodes and onto nodes that joined.
pub(super) async fn watch(app: App) {
    let mut last_warning: Option<Instant> = None;
    let mut seen = None;
    loop {
        let _ = tokio::time::timeout(EVERY, app.0.placement_changed.notified()).await;
        if !app.status().is_leader {
            continue;
        }
        if let Err(e) = app.place(&mut seen).await
            && last_warning.is_none_or(|t| t.elapsed() > Duration::from_secs(10))
        {
            tracing::warn!("placement pass failed (tried again shortly): {}", e.message());
            last_warning = Some(Instant::now());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn nodes(ids: &[&str]) -> Nodes {
        Nodes {
            alive: ids.iter().map(|id| Candidate { id: id.to_string(), gpu: false, weight: 1.0 }).collect(),
            unknown: BTreeSet::new(),
        }
    }

    fn function(i: usize, replicas: Replicas, placed: &[&str]) -> Wanted {
        Wanted {
            tenant: "t".into(),
            name: format!("f{i}"),
            replicas,
            gpu: GpuPlacement::Any,
            placed: placed.iter().map(|s| s.to_string()).collect(),
        }
    }

    fn apply(functions: &mut [Wanted], changes: Vec<Placement>) {
        for c in changes {
            let f = functions.iter_mut().find(|f| f.name == c.name).expect("a planned function");
            f.placed = c.nodes;
        }
    }

    fn held(functions: &[Wanted], id: &str) -> usize {
        functions.iter().filter(|f| f.placed.iter().any(|n| n == id)).count()
    }

    #[test]
    fn functions_spread_evenly_and_move_only_off_dead_nodes() {
        let mut fs: Vec<Wanted> = (0..1000).map(|i| function(i, Replicas::Count(1), &[])).collect();
        let three = nodes(&["a", "b", "c"]);
        let changes = plan(&fs, &three);
        assert_eq!(changes.len(), 1000);
        apply(&mut fs, changes);
        for id in ["a", "b", "c"] {
            let n = held(&fs, id);
            assert!((330..=337).contains(&n), "{id} holds {n}");
        }
        assert!(plan(&fs, &three).is_empty(), "a second pass changes nothing");

        // `c` dies: exactly its functions move, evenly.
        let before = fs.clone();
        let changes = plan(&fs, &nodes(&["a", "b"]));
        assert_eq!(changes.len(), held(&before, "c"));
        apply(&mut fs, changes);
        assert_eq!(held(&fs, "c"), 0);
        assert!((495..=505).contains(&held(&fs, "a")), "{}", held(&fs, "a"));
        for (old, new) in before.iter().zip(&fs) {
            if old.placed != ["c"] {
                assert_eq!(old.placed, new.placed, "{} moved off a live node", old.name);
            }
        }
    }

    #[test]
    fn replicas_all_gpu_and_a_fresh_leader() {
        let mut fs = vec![function(0, Replicas::All, &[]), function(1, Replicas::Count(2), &[])];
        fs.push(Wanted { gpu: GpuPlacement::Required, ..function(2, Replicas::Count(5), &[]) });
        let mut ns = nodes(&["a", "b", "c"]);
        ns.alive[1].gpu = true;
        let changes = plan(&fs, &ns);
        apply(&mut fs, changes);
        assert_eq!(fs[0].placed, ["a", "b", "c"]);
        assert_eq!(fs[1].placed.len(), 2);
        assert_eq!(fs[2].placed, ["b"], "only the GPU node");

        // A new node joins: `all` takes it.
        let ns = nodes(&["a", "b", "c", "d"]);
        let changes = plan(&fs, &ns);
        apply(&mut fs, changes);
        assert_eq!(fs[0].placed, ["a", "b", "c", "d"]);
        assert_eq!(fs[2].placed, Vec::<String>::new(), "no GPU node is alive");

        // A leader that has not heard from every node yet moves nothing.
        let mut fresh = nodes(&["a"]);
        fresh.unknown = ["b", "c", "d"].iter().map(|s| s.to_string()).collect();
        let placed = vec![function(0, Replicas::Count(2), &["c", "d"])];
        assert!(plan(&placed, &fresh).is_empty());
    }
}
