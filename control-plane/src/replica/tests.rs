use std::collections::{BTreeMap, HashSet};
use std::sync::Mutex;

use super::*;
use crate::state::{DEFAULT_TENANT, FunctionSpec, sha256_hex};

/// An in-memory network between replicas that can cut any of them off.
#[derive(Default)]
struct Router {
    replicas: Mutex<HashMap<u64, Replica>>,
    down: Mutex<HashSet<u64>>,
}

impl Transport for Router {
    fn send(&self, message: Message) {
        let down = self.down.lock().expect("lock");
        if down.contains(&message.from) || down.contains(&message.to) {
            return;
        }
        if let Some(r) = self.replicas.lock().expect("lock").get(&message.to) {
            r.step(message);
        }
    }
}

struct Cluster {
    router: Arc<Router>,
    dirs: Vec<tempfile::TempDir>,
    snapshot_every: u64,
}

impl Cluster {
    fn start(n: u64, snapshot_every: u64) -> Cluster {
        let dirs = (0..n).map(|_| tempfile::tempdir().expect("tempdir")).collect();
        let c = Cluster { router: Arc::new(Router::default()), dirs, snapshot_every };
        for id in 1..=n {
            c.boot(id);
        }
        c
    }

    fn boot(&self, id: u64) {
        self.boot_with(id, (1..=self.dirs.len() as u64).collect());
    }

    /// Starts a new machine, `id`, that joins the running cluster.
    fn boot_joining(&mut self) -> u64 {
        self.dirs.push(tempfile::tempdir().expect("tempdir"));
        let id = self.dirs.len() as u64;
        self.boot_with(id, Vec::new());
        id
    }

    fn boot_with(&self, id: u64, peers: Vec<u64>) {
        let members = peers.iter().map(|&p| (p, format!("mem://{p}"))).collect();
        let mut config = ReplicaConfig::new(id, peers, self.dirs[id as usize - 1].path().to_path_buf());
        config.members = members;
        config.tick = Duration::from_millis(10);
        config.snapshot_every = self.snapshot_every;
        let transport: Arc<dyn Transport> = self.router.clone();
        // The previous incarnation may still be closing its database.
        let replica = (0..200)
            .find_map(|_| match Replica::start(config.clone(), transport.clone()) {
                Ok(r) => Some(r),
                Err(_) => {
                    std::thread::sleep(Duration::from_millis(10));
                    None
                }
            })
            .expect("replica starts");
        self.router.replicas.lock().expect("lock").insert(id, replica);
    }

    fn replica(&self, id: u64) -> Replica {
        self.router.replicas.lock().expect("lock")[&id].clone()
    }

    fn isolate(&self, id: u64) {
        self.router.down.lock().expect("lock").insert(id);
    }

    fn recover(&self, id: u64) {
        self.router.down.lock().expect("lock").remove(&id);
    }

    /// Stops a replica: its loop ends once its handles are gone.
    fn kill(&self, id: u64) {
        self.router.replicas.lock().expect("lock").remove(&id);
    }

    async fn leader(&self) -> u64 {
        for _ in 0..500 {
            let replicas: Vec<Replica> = self.router.replicas.lock().expect("lock").values().cloned().collect();
            let down = self.router.down.lock().expect("lock").clone();
            if let Some(r) = replicas.iter().find(|r| r.status().is_leader && !down.contains(&r.id())) {
                return r.id();
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        panic!("no leader elected");
    }
}

fn deploy(name: &str, module: &[u8]) -> Command {
    Command::Deploy {
        tenant: DEFAULT_TENANT.into(),
        name: name.into(),
        module: sha256_hex(module),
        spec: FunctionSpec {
            kind: "scorer".into(),
            memory: 1 << 20,
            timeout_ms: 100,
            config: BTreeMap::new(),
            gpu: Default::default(),
            public: false,
            replicas: Default::default(),
            artifacts: Default::default(),
        },
        placement: None,
        trial: None,
    }
}

fn put(module: &[u8]) -> Command {
    Command::PutModule { tenant: DEFAULT_TENANT.into(), sha256: sha256_hex(module), bytes: module.to_vec() }
}

async fn versions(r: &Replica, name: &str) -> Option<usize> {
    r.read_barrier().await.ok()?;
    r.state().function(DEFAULT_TENANT, name).ok().flatten().map(|f| f.latest as usize)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writes_through_any_replica_reach_every_replica() {
    let c = Cluster::start(3, 1000);
    let leader = c.leader().await;
    let follower = (1..=3).find(|&id| id != leader).expect("a follower");
    let r = c.replica(follower);
    assert!(matches!(r.propose(put(b"m")).await, Ok(Applied::ModuleStored { existed: false, .. })));
    assert_eq!(r.propose(deploy("f", b"m")).await, Ok(Applied::Deployed { version: 1 }));
    for id in 1..=3 {
        assert_eq!(versions(&c.replica(id), "f").await, Some(1), "replica {id}");
    }
    let err = r.propose(deploy("g", b"never stored")).await;
    assert!(matches!(err, Err(ProposeError::State(StateError::ModuleNotFound { .. }))), "{err:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_leader_takes_over_and_keeps_acknowledged_writes() {
    let c = Cluster::start(3, 1000);
    let old = c.leader().await;
    let r = c.replica(old);
    r.propose(put(b"m")).await.expect("put");
    r.propose(deploy("f", b"m")).await.expect("deploy");
    c.isolate(old);
    c.kill(old);
    let new = c.leader().await;
    assert_ne!(new, old);
    let r = c.replica(new);
    assert_eq!(r.propose(deploy("f", b"m")).await, Ok(Applied::Deployed { version: 2 }));
    for id in (1..=3).filter(|&id| id != old) {
        assert_eq!(versions(&c.replica(id), "f").await, Some(2), "replica {id}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_quorum_writes_fail_within_a_bounded_time() {
    let c = Cluster::start(3, 1000);
    let leader = c.leader().await;
    let others: Vec<u64> = (1..=3).filter(|&id| id != leader).collect();
    for id in &others {
        c.isolate(*id);
    }
    let r = c.replica(leader);
    // check_quorum makes the cut-off leader step down; writes then fail fast.
    assert!(r.wait_for(Duration::from_secs(5), |s| !s.is_leader).await, "leader stepped down");
    let started = std::time::Instant::now();
    let result = r.propose(put(b"m")).await;
    assert!(matches!(result, Err(ProposeError::NoLeader | ProposeError::Timeout(_))), "{result:?}");
    assert!(started.elapsed() < Duration::from_secs(6), "failed within the request timeout");
    assert_eq!(r.state().module_count(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn state_survives_restarting_every_replica() {
    let c = Cluster::start(3, 1000);
    let leader = c.leader().await;
    let r = c.replica(leader);
    r.propose(put(b"m")).await.expect("put");
    for _ in 0..3 {
        r.propose(deploy("f", b"m")).await.expect("deploy");
    }
    drop(r);
    for id in 1..=3 {
        c.kill(id);
    }
    for id in 1..=3 {
        c.boot(id);
    }
    let leader = c.leader().await;
    assert_eq!(versions(&c.replica(leader), "f").await, Some(3));
    assert_eq!(c.replica(leader).state().module(&sha256_hex(b"m")), Ok(Some(b"m".to_vec())));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lagging_replica_catches_up_through_a_snapshot() {
    let c = Cluster::start(3, 20);
    let leader = c.leader().await;
    let lagging = (1..=3).find(|&id| id != leader).expect("a follower");
    c.isolate(lagging);
    let r = c.replica(leader);
    r.propose(put(b"m")).await.expect("put");
    for _ in 0..100 {
        r.propose(deploy("f", b"m")).await.expect("deploy");
    }
    // Writes that leave the route table alone, so that its last change
    // is inside the snapshot the lagging replica installs.
    for i in 0..40 {
        let tenant = Command::CreateTenant { name: format!("t{i}"), quotas: Default::default() };
        r.propose(tenant).await.expect("tenant");
    }
    assert!(r.status().first_index > 101, "the leader compacted its log: {:?}", r.status());
    c.recover(lagging);
    let lag = c.replica(lagging);
    assert!(lag.wait_for(Duration::from_secs(10), |s| s.applied >= 141).await, "{:?}", lag.status());
    assert!(lag.status().snapshots_installed > 0, "{:?}", lag.status());
    assert_eq!(lag.state().versions(DEFAULT_TENANT, "f").map(|v| v.len()).ok(), Some(100));
    let revision = |r: &Replica| r.state().routes_revision().expect("revision");
    assert_eq!(revision(&lag), revision(&r), "the route revision travels in the snapshot");
    let last_deploy = r.state().function(DEFAULT_TENANT, "f").ok().flatten().and_then(|f| f.current);
    assert_eq!(Some(revision(&r)), last_deploy.map(|v| v.created_at), "the revision is the last deploy's index");
}

/// The Raft loop's death is loud: a follower told to commit past the end of
/// its log (what a leader does to a replica that lost entries it
/// acknowledged) stops, says why and what to do, and fails what it is asked.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_follower_told_to_commit_past_its_log_stops_and_says_how_to_replace_it() {
    let c = Cluster::start(3, 1000);
    let leader = c.leader().await;
    let follower = c.replica(if leader == 1 { 2 } else { 1 });
    let term = c.replica(leader).status().term;
    follower.step(Message {
        msg_type: raft::eraftpb::MessageType::MsgHeartbeat,
        from: leader,
        to: follower.id(),
        term,
        commit: 10_000,
        ..Default::default()
    });
    assert!(follower.wait_for(Duration::from_secs(5), |s| s.stopped.is_some()).await, "the follower kept running");
    let status = follower.status();
    let reason = status.stopped.expect("a reason");
    assert!(reason.contains("out of range") && reason.contains("Replace a machine"), "{reason}");
    assert!(!status.removed);
    let refused = follower.propose(put(b"m")).await;
    assert!(matches!(refused, Err(ProposeError::Stopped(_))), "{refused:?}");
    // The other two keep the quorum.
    c.replica(leader).propose(put(b"m")).await.expect("a write after the follower stopped");
}

/// A new machine joins as a learner, catches up from a snapshot, is
/// promoted and then counts in the quorum; a removed replica leaves the
/// configuration on every replica, and changes that make no sense are
/// refused with a reason.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replicas_join_as_learners_are_promoted_and_are_removed() {
    let mut c = Cluster::start(3, 20);
    let leader = c.replica(c.leader().await);
    for i in 0..50u8 {
        leader.propose(put(&[i])).await.expect("write");
    }
    let new = c.boot_joining();
    let add = Membership::AddLearner { id: new, url: format!("mem://{new}") };
    leader.change_membership(add.clone()).await.expect("add a learner");
    assert!(
        matches!(leader.change_membership(add).await, Err(ProposeError::Membership(m)) if m.contains("already a member"))
    );
    let joined = c.replica(new);
    let caught_up = joined.wait_for(Duration::from_secs(10), |s| s.applied >= leader.status().commit).await;
    assert!(caught_up, "the learner did not catch up: {:?}", joined.status());
    let s = joined.status();
    assert!(s.snapshots_installed >= 1 && s.learners == [new], "{s:?}");
    assert_eq!(s.members.get(&new).map(String::as_str), Some(format!("mem://{new}").as_str()), "{s:?}");
    assert_eq!(s.members.len(), 4, "the snapshot carried every replica's URL: {s:?}");

    leader.change_membership(Membership::Promote { id: new }).await.expect("promote");
    assert!(joined.wait_for(Duration::from_secs(5), |s| s.voters == [1, 2, 3, new]).await, "{:?}", joined.status());

    // Four voters need three: with two of the old ones cut off, nothing commits.
    let others: Vec<u64> = (1..=3).filter(|&id| id != leader.id()).collect();
    let removed = others[0];
    leader.change_membership(Membership::Remove { id: removed }).await.expect("remove");
    for id in [leader.id(), others[1], new] {
        let r = c.replica(id);
        assert!(r.wait_for(Duration::from_secs(5), |s| !s.voters.contains(&removed)).await, "{:?}", r.status());
        assert!(!r.status().members.contains_key(&removed));
    }
    // Three voters again: the new replica and the leader make a quorum.
    c.isolate(others[1]);
    leader.propose(put(b"after")).await.expect("a write with the new replica in the quorum");
    c.recover(others[1]);

    let refused = leader.change_membership(Membership::Remove { id: leader.id() }).await;
    assert!(matches!(&refused, Err(ProposeError::Membership(m)) if m.contains("leads")), "{refused:?}");
    let refused = leader.change_membership(Membership::Promote { id: 9 }).await;
    assert!(matches!(&refused, Err(ProposeError::Membership(m)) if m.contains("not a learner")), "{refused:?}");
}
