//! One control-plane replica: raft-rs's `RawNode` driven by a tokio task.
//!
//! [`Replica::start`] opens the replica's sled database (the Raft log in
//! [`LogStore`], the state machine in [`State`]) and spawns the loop. The
//! loop ticks the node, steps messages from peers, proposes commands and
//! handles each `Ready` in this order: install a snapshot if one came;
//! append new entries and the hard state and **flush**; only then send
//! messages and apply committed entries, answering the proposals they carry.
//! So nothing is acknowledged, to a peer or a client, before it is on disk.
//! Reads are linearizable through ReadIndex ([`Replica::read_barrier`]).
//! Peers are reached through a [`Transport`]; the log is compacted to a
//! snapshot every `snapshot_every` applied entries.
//!
//! The replica set changes through Raft configuration changes
//! ([`Replica::change_membership`]): a new replica joins as a learner (it
//! receives the log, by snapshot first, but does not vote), is promoted to
//! a voter once it has caught up, and a replica is removed the same way.
//! Each change carries the URLs of the replicas it adds, kept in the state
//! (and in its snapshots) so every replica, and one restored from a
//! snapshot, knows where its peers are.

use std::collections::{BTreeMap, HashMap};
use std::future::Future;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use protobuf::Message as _;
use raft::eraftpb::{ConfChange, ConfChangeSingle, ConfChangeType, ConfChangeV2, ConfState, Entry, EntryType, Message};
use raft::{Config, ProgressState, RawNode, SnapshotStatus, StateRole, Storage};
use tokio::sync::{mpsc, oneshot, watch};

use crate::log::{LogStore, SnapshotSource};
use crate::state::{Applied, Command, State, StateError};

/// Sends Raft messages to other replicas.
pub trait Transport: Send + Sync + 'static {
    /// Sends `message` to replica `message.to`; best effort (Raft retries).
    fn send(&self, message: Message);

    /// The replicas' URLs changed (a membership change was applied, or a
    /// snapshot installed): send to these from now on.
    fn set_members(&self, _members: &BTreeMap<u64, String>) {}

    /// Where to say that a snapshot sent to a peer was lost: raft-rs sends
    /// a peer nothing more until it hears from it, so a lost snapshot would
    /// stall that peer for good. (One that arrives, the peer acknowledges
    /// itself once installed.)
    fn on_snapshot_lost(&self, _report: SnapshotReporter) {}
}

/// Tells the replica that a snapshot did not reach a peer.
#[derive(Clone)]
pub struct SnapshotReporter(mpsc::WeakUnboundedSender<Request>);

impl std::fmt::Debug for SnapshotReporter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SnapshotReporter")
    }
}

impl SnapshotReporter {
    /// The snapshot sent to `to` was lost.
    pub fn lost(&self, to: u64) {
        if let Some(requests) = self.0.upgrade() {
            let _ = requests.send(Request::SnapshotLost { to });
        }
    }
}

/// How a replica runs.
#[derive(Debug, Clone)]
pub struct ReplicaConfig {
    /// This replica's id (from 1).
    pub id: u64,
    /// The voters a new cluster starts with, this one included; empty for a
    /// replica that joins a running cluster (it learns its configuration
    /// from the leader's snapshot). Ignored once the log holds a
    /// configuration.
    pub peers: Vec<u64>,
    /// The replicas' URLs by id, recorded in the state at the first start
    /// of a new cluster (later starts keep the recorded ones).
    pub members: BTreeMap<u64, String>,
    /// Where its sled database lives.
    pub data_dir: PathBuf,
    /// The Raft tick.
    pub tick: Duration,
    /// Ticks without a leader before an election.
    pub election_ticks: usize,
    /// Ticks between leader heartbeats.
    pub heartbeat_ticks: usize,
    /// Compact the log after this many applied entries.
    pub snapshot_every: u64,
    /// Longest a proposal or a read waits before failing with a timeout.
    pub request_timeout: Duration,
}

impl ReplicaConfig {
    /// Defaults: 50 ms ticks, elections after 10 to 20 ticks, heartbeats
    /// every 2, a snapshot every 1000 entries.
    pub fn new(id: u64, peers: Vec<u64>, data_dir: PathBuf) -> Self {
        ReplicaConfig {
            id,
            peers,
            members: BTreeMap::new(),
            data_dir,
            tick: Duration::from_millis(50),
            election_ticks: 10,
            heartbeat_ticks: 2,
            snapshot_every: 1000,
            request_timeout: Duration::from_secs(5),
        }
    }
}

/// Why a proposal or a read did not complete.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ProposeError {
    /// No leader is known (an election is under way, or no quorum).
    #[error("no leader: the control plane has no quorum right now")]
    NoLeader,
    /// The command was applied and failed.
    #[error(transparent)]
    State(#[from] StateError),
    /// The write or read did not complete in time (usually: no quorum).
    #[error("timed out after {0:?} waiting for the cluster (no quorum?)")]
    Timeout(Duration),
    /// The replica is shutting down or its storage failed.
    #[error("replica stopped: {0}")]
    Stopped(String),
    /// Only the leader can do this.
    #[error("this replica is not the leader")]
    NotLeader,
    /// The replica named is not a voting member.
    #[error("replica {0} is not a voting member of the cluster")]
    NotAVoter(u64),
    /// A membership change that cannot be made as asked.
    #[error("{0}")]
    Membership(String),
    /// A membership change is still under way; one at a time.
    #[error("another membership change is under way; retry once it is done")]
    MembershipBusy,
}

/// A change of the replica set, one replica at a time.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Membership {
    /// Adds replica `id`, reached at `url`, as a learner: it receives the
    /// log but does not vote until promoted.
    AddLearner {
        /// Its id.
        id: u64,
        /// Its base URL.
        url: String,
    },
    /// Makes learner `id` a voter.
    Promote {
        /// Its id.
        id: u64,
    },
    /// Removes replica `id` (a voter or a learner).
    Remove {
        /// Its id.
        id: u64,
    },
}

/// What the replica reports about itself.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Status {
    /// This replica.
    pub id: u64,
    /// The leader it knows of (0: none).
    pub leader: u64,
    /// The current term.
    pub term: u64,
    /// Whether it is the leader.
    pub is_leader: bool,
    /// Highest committed index.
    pub commit: u64,
    /// Highest applied index.
    pub applied: u64,
    /// First index still in the log (entries before it are in the snapshot).
    pub first_index: u64,
    /// For the leader: each peer's matched index.
    pub progress: Vec<(u64, u64)>,
    /// The voting replicas (both halves during a joint change).
    pub voters: Vec<u64>,
    /// The replicas that receive the log but do not vote yet.
    pub learners: Vec<u64>,
    /// Every replica's URL, by id.
    pub members: BTreeMap<u64, String>,
    /// Snapshots installed from the leader since this replica started.
    pub snapshots_installed: u64,
    /// Why the Raft loop ended, once it has (a storage error, a panic in
    /// raft-rs, the replica's removal): it serves nothing from then on.
    pub stopped: Option<String>,
    /// Whether it ended because the replica was removed from the cluster.
    pub removed: bool,
}

enum Request {
    Propose { command: Box<Command>, reply: oneshot::Sender<Result<Applied, ProposeError>> },
    Step(Box<Message>),
    ReadIndex { reply: oneshot::Sender<Result<(), ProposeError>> },
    TransferLeader { to: u64, reply: oneshot::Sender<Result<(), ProposeError>> },
    ChangeMembership { change: Membership, reply: oneshot::Sender<Result<(), ProposeError>> },
    Leave,
    SnapshotLost { to: u64 },
}

/// What the Raft loop measures, for the control plane's `/metrics`.
#[derive(Debug)]
pub struct RaftMetrics {
    /// Each flush of the log and state to disk, in seconds.
    pub fsync: prometheus_client::metrics::histogram::Histogram,
    /// Each write, from the caller's side until it is applied here.
    pub proposals: prometheus_client::metrics::histogram::Histogram,
    /// Writes that failed (no quorum, a timeout, a refused command).
    pub proposals_failed: prometheus_client::metrics::counter::Counter,
}

impl Default for RaftMetrics {
    fn default() -> Self {
        // 50 µs to 6.6 s.
        let buckets = || prometheus_client::metrics::histogram::exponential_buckets(0.000_05, 2.0, 18);
        RaftMetrics {
            fsync: prometheus_client::metrics::histogram::Histogram::new(buckets()),
            proposals: prometheus_client::metrics::histogram::Histogram::new(buckets()),
            proposals_failed: Default::default(),
        }
    }
}

/// A handle to a running replica. Dropping every handle stops the loop.
#[derive(Clone)]
pub struct Replica {
    id: u64,
    metrics: Arc<RaftMetrics>,
    request_timeout: Duration,
    requests: mpsc::UnboundedSender<Request>,
    status: watch::Receiver<Status>,
    state: State,
}

impl std::fmt::Debug for Replica {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Replica").field("id", &self.id).finish_non_exhaustive()
    }
}

struct StateSnapshots(State);

impl SnapshotSource for StateSnapshots {
    fn snapshot_data(&self) -> raft::Result<(Vec<u8>, u64)> {
        self.0.snapshot_data().map_err(|e| raft::Error::Store(raft::StorageError::Other(Box::new(e))))
    }
}

/// The message a panic carried.
fn panic_message(panic: &(dyn std::any::Any + Send)) -> String {
    match (panic.downcast_ref::<&str>(), panic.downcast_ref::<String>()) {
        (Some(s), _) => s.to_string(),
        (_, Some(s)) => s.clone(),
        _ => "(no message)".to_string(),
    }
}

/// Whether `id` votes or learns in `conf` (either half of a joint change).
fn is_member(conf: &ConfState, id: u64) -> bool {
    conf.voters.contains(&id) || conf.learners.contains(&id) || conf.voters_outgoing.contains(&id)
}

fn log_failed(e: raft::Error) -> Stop {
    Stop::Failed(crate::log::describe(&e))
}

fn failed(e: impl std::fmt::Display) -> Stop {
    Stop::Failed(e.to_string())
}

fn stopped(e: impl std::fmt::Display) -> ProposeError {
    ProposeError::Stopped(e.to_string())
}

/// A replica's storage, open but not running yet: what it holds decides how
/// the replica may start (a new machine joins; a log behind what the
/// replica acknowledged must not start at all).
pub struct Opened {
    config: ReplicaConfig,
    state: State,
    log: LogStore,
}

impl std::fmt::Debug for Opened {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Opened").field("id", &self.config.id).field("log", &self.log).finish_non_exhaustive()
    }
}

impl Opened {
    /// Opens the replica's sled database.
    pub fn open(config: ReplicaConfig) -> Result<Opened, ProposeError> {
        let db = sled::open(&config.data_dir).map_err(stopped)?;
        let state = State::from_db(db.clone()).map_err(stopped)?;
        let log = LogStore::open(db.open_tree("raft").map_err(stopped)?)
            .map_err(stopped)?
            .with_snapshot_source(Arc::new(StateSnapshots(state.clone())));
        Ok(Opened { config, state, log })
    }

    /// Whether the storage holds no log and no configuration: a new machine.
    pub fn is_fresh(&self) -> Result<bool, ProposeError> {
        let initial = self.log.initial_state().map_err(stopped)?;
        Ok(initial.conf_state.voters.is_empty() && self.log.last_index().map_err(stopped)? == 0)
    }

    /// The last index in the log (the snapshot's when the log is empty).
    pub fn last_index(&self) -> Result<u64, ProposeError> {
        self.log.last_index().map_err(stopped)
    }

    /// The replicas' URLs the state records (empty on a new machine).
    pub fn members(&self) -> Result<BTreeMap<u64, String>, ProposeError> {
        self.state.members().map_err(stopped)
    }

    /// Starts as a new replica of a running cluster whose replicas are
    /// `members`: with no configuration of its own, it waits for the
    /// leader's snapshot instead of bootstrapping one.
    pub fn join(mut self, members: BTreeMap<u64, String>) -> Opened {
        self.config.peers = Vec::new();
        self.config.members = members;
        self
    }

    /// Starts the replica's loop on the current tokio runtime.
    pub fn start(self, transport: Arc<dyn Transport>) -> Result<Replica, ProposeError> {
        // A new cluster starts with every peer as a voter, the same on each
        // replica; a joining replica starts with none and waits for the
        // leader's snapshot.
        let fresh = self.is_fresh()?;
        let Opened { config, state, log } = self;
        // The members a joining replica was given are the cluster's, not
        // yet its own record: the leader's snapshot brings that.
        let joining = fresh && config.peers.is_empty();
        if fresh && !joining {
            let cs = ConfState { voters: config.peers.clone(), ..Default::default() };
            log.set_conf_state(&cs).map_err(stopped)?;
        }
        // The URLs: recorded once (a cluster made before they were kept
        // records its --peers at its next start).
        let mut members = state.members().map_err(stopped)?;
        if members.is_empty() && joining {
            members = config.members.clone();
        } else if members.is_empty() && !config.members.is_empty() {
            members = config.members.clone();
            state.set_members(None, &members).map_err(stopped)?;
        }
        log.flush().map_err(stopped)?;
        if !members.is_empty() {
            transport.set_members(&members);
        }
        let conf = log.initial_state().map_err(stopped)?.conf_state;
        if !conf.voters.is_empty() && !is_member(&conf, config.id) {
            return Err(ProposeError::Membership(format!(
                "replica {} was removed from the cluster; to bring this machine back, add it again \
                 (`wasmgrid cluster add-replica {}=URL`) and start it with an empty data directory and --join",
                config.id, config.id
            )));
        }

        let applied = state.applied_index().map_err(stopped)?;
        let raft_config = Config {
            id: config.id,
            election_tick: config.election_ticks,
            heartbeat_tick: config.heartbeat_ticks,
            pre_vote: true,
            check_quorum: true,
            applied,
            max_size_per_msg: 1 << 20,
            max_inflight_msgs: 256,
            ..Default::default()
        };
        raft_config.validate().map_err(stopped)?;
        let logger = slog::Logger::root(slog::Discard, slog::o!());
        let node = RawNode::new(&raft_config, log.clone(), &logger).map_err(stopped)?;

        let metrics = Arc::new(RaftMetrics::default());
        let (requests, inbox) = mpsc::unbounded_channel();
        transport.on_snapshot_lost(SnapshotReporter(requests.downgrade()));
        let (status_tx, status) = watch::channel(Status { id: config.id, applied, ..Default::default() });
        let status_tx = Arc::new(status_tx);
        let driver = Driver {
            node,
            log,
            state: state.clone(),
            transport,
            config: config.clone(),
            pending: HashMap::new(),
            changes: HashMap::new(),
            members,
            next_id: 1,
            reads: HashMap::new(),
            ticks: 0,
            ready_reads: Vec::new(),
            status: status_tx.clone(),
            metrics: metrics.clone(),
            tag: incarnation_tag(config.id),
            snapshots_installed: 0,
        };
        let id = config.id;
        let driver = tokio::spawn(driver.run(inbox));
        // A Raft loop that ends (an error it cannot go on from, or a panic in
        // raft-rs) says why in the status, which health checks and the
        // process that started the replica watch.
        tokio::spawn(async move {
            let (reason, removed) = match driver.await {
                Ok(None) => return,
                Ok(Some(stop)) => (stop.reason(), matches!(stop, Stop::Removed(_))),
                Err(e) => match e.try_into_panic() {
                    Ok(panic) => (panic_reason(panic_message(panic.as_ref())), false),
                    Err(e) => (format!("the Raft loop was cancelled: {e}"), false),
                },
            };
            match removed {
                true => tracing::info!(replica = id, "replica stopped: {reason}"),
                false => tracing::error!(replica = id, "replica stopped: {reason}"),
            }
            status_tx.send_modify(|s| {
                s.stopped = Some(reason);
                s.removed = removed;
            });
        });
        Ok(Replica { id: config.id, metrics, request_timeout: config.request_timeout, requests, status, state })
    }
}

/// Why a panic in raft-rs stopped the loop, with what to do when its
/// cause is known.
fn panic_reason(message: String) -> String {
    // raft-rs refuses to commit past the end of the log: the leader counts
    // entries this replica acknowledged and no longer holds.
    if message.contains("out of range") {
        format!(
            "the Raft loop panicked: {message}: this replica's log is behind what it acknowledged \
             (its data directory was lost, rolled back or restored from an older copy); \
             replace it as docs/operations.md (Replace a machine) says"
        )
    } else {
        format!("the Raft loop panicked: {message}")
    }
}

/// How the Raft loop ended, when it did not end because the replica was
/// dropped.
enum Stop {
    /// An error it cannot go on from (storage, an undecodable entry).
    Failed(String),
    /// This replica was removed from the cluster at this log index.
    Removed(u64),
}

impl Stop {
    /// Why, in words.
    fn reason(&self) -> String {
        match self {
            Stop::Failed(e) => e.clone(),
            Stop::Removed(index) => format!("this replica was removed from the cluster (log index {index})"),
        }
    }
}

impl Replica {
    /// Opens the replica's storage and starts its loop on the current tokio
    /// runtime (a new machine bootstraps the cluster of `config.peers`).
    pub fn start(config: ReplicaConfig, transport: Arc<dyn Transport>) -> Result<Replica, ProposeError> {
        Opened::open(config)?.start(transport)
    }

    /// Resolves once the Raft loop has ended, with why: from then on the
    /// replica serves nothing, and its process should stop.
    pub fn stopped(&self) -> impl Future<Output = String> + Send + 'static {
        let mut rx = self.status.clone();
        async move {
            loop {
                if let Some(reason) = rx.borrow_and_update().stopped.clone() {
                    return reason;
                }
                if rx.changed().await.is_err() {
                    return "the replica is gone".to_string();
                }
            }
        }
    }

    /// This replica's id.
    pub fn id(&self) -> u64 {
        self.id
    }

    /// Replicates `command` and returns what applying it did, once it is
    /// committed and applied here. Followers forward to the leader.
    pub async fn propose(&self, command: Command) -> Result<Applied, ProposeError> {
        let started = std::time::Instant::now();
        let (reply, rx) = oneshot::channel();
        self.requests.send(Request::Propose { command: Box::new(command), reply }).map_err(stopped)?;
        let result = self.answer(rx).await;
        match &result {
            Ok(_) => self.metrics.proposals.observe(started.elapsed().as_secs_f64()),
            Err(_) => {
                self.metrics.proposals_failed.inc();
            }
        }
        result
    }

    /// What the Raft loop has measured.
    pub fn metrics(&self) -> &RaftMetrics {
        &self.metrics
    }

    /// Hands the replica a message from a peer.
    pub fn step(&self, message: Message) {
        let _ = self.requests.send(Request::Step(Box::new(message)));
    }

    /// Waits until this replica's state reflects every write committed
    /// before the call (ReadIndex): reads after it are linearizable.
    /// Asks the leader (this replica) to hand leadership to voter `to`;
    /// the handover itself happens once `to` has caught up (watch
    /// [`Replica::status`] for it).
    pub async fn transfer_leader(&self, to: u64) -> Result<(), ProposeError> {
        let (reply, rx) = oneshot::channel();
        self.requests.send(Request::TransferLeader { to, reply }).map_err(stopped)?;
        self.answer(rx).await
    }

    /// Changes the replica set (on the leader only): returns once the
    /// change is committed and applied here. A learner is promoted when it
    /// has caught up; the caller decides when.
    pub async fn change_membership(&self, change: Membership) -> Result<(), ProposeError> {
        let (reply, rx) = oneshot::channel();
        self.requests.send(Request::ChangeMembership { change, reply }).map_err(stopped)?;
        self.answer(rx).await
    }

    /// Stops the replica as removed: for one that learns of its removal
    /// from the others rather than from its own log (the leader stops
    /// sending to a replica as soon as it has removed it).
    pub fn leave(&self) {
        let _ = self.requests.send(Request::Leave);
    }

    pub async fn read_barrier(&self) -> Result<(), ProposeError> {
        let (reply, rx) = oneshot::channel();
        self.requests.send(Request::ReadIndex { reply }).map_err(stopped)?;
        self.answer(rx).await
    }

    async fn answer<T>(&self, rx: oneshot::Receiver<Result<T, ProposeError>>) -> Result<T, ProposeError> {
        match tokio::time::timeout(self.request_timeout, rx).await {
            Ok(Ok(result)) => result,
            Ok(Err(_)) => Err(ProposeError::Stopped("the replica loop ended".into())),
            Err(_) => Err(ProposeError::Timeout(self.request_timeout)),
        }
    }

    /// The latest status.
    pub fn status(&self) -> Status {
        self.status.borrow().clone()
    }

    /// A receiver that sees every status change.
    pub fn subscribe(&self) -> watch::Receiver<Status> {
        self.status.clone()
    }

    /// The state machine (reads only; writes go through [`Replica::propose`]).
    pub fn state(&self) -> &State {
        &self.state
    }

    /// Waits until `f` holds for the status, or `timeout` passes.
    pub async fn wait_for(&self, timeout: Duration, f: impl Fn(&Status) -> bool) -> bool {
        let mut rx = self.status.clone();
        tokio::time::timeout(timeout, async move {
            loop {
                if f(&rx.borrow_and_update()) {
                    return true;
                }
                if rx.changed().await.is_err() {
                    return false;
                }
            }
        })
        .await
        .unwrap_or(false)
    }
}

struct Driver {
    node: RawNode<LogStore>,
    log: LogStore,
    state: State,
    transport: Arc<dyn Transport>,
    config: ReplicaConfig,
    /// Proposals made here, by the id carried in the entry's context.
    pending: HashMap<u64, oneshot::Sender<Result<Applied, ProposeError>>>,
    /// Membership changes proposed here, likewise.
    changes: HashMap<u64, oneshot::Sender<Result<(), ProposeError>>>,
    /// The replicas' URLs, as the state records them.
    members: BTreeMap<u64, String>,
    next_id: u64,
    /// ReadIndex requests waiting for the leader's answer, with the tick
    /// they were last sent at.
    reads: HashMap<u64, (oneshot::Sender<Result<(), ProposeError>>, u64)>,
    ticks: u64,
    /// Reads answered by the leader, waiting for `applied >= index`.
    ready_reads: Vec<(u64, oneshot::Sender<Result<(), ProposeError>>)>,
    status: Arc<watch::Sender<Status>>,
    metrics: Arc<RaftMetrics>,
    /// This replica and this run of it: the prefix of the context of every
    /// proposal and read made here. Entries proposed here and forwarded by
    /// Raft come back to every replica, and an earlier run's entries are
    /// replayed after a restart; only an exact prefix match answers a waiter.
    tag: [u8; 16],
    snapshots_installed: u64,
}

/// A tag no other replica, nor an earlier run of this one, uses.
fn incarnation_tag(id: u64) -> [u8; 16] {
    let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_nanos() as u64);
    let run = nanos ^ (u64::from(std::process::id()) << 32);
    let mut tag = [0; 16];
    tag[..8].copy_from_slice(&id.to_be_bytes());
    tag[8..].copy_from_slice(&run.to_be_bytes());
    tag
}

impl Driver {
    fn context(&self, id: u64) -> Vec<u8> {
        let mut ctx = self.tag.to_vec();
        ctx.extend_from_slice(&id.to_be_bytes());
        ctx
    }

    /// The request id in the context of a membership change made here: the
    /// usual context, then the URLs of the replicas it adds (JSON).
    fn change_id(&self, ctx: &[u8]) -> Option<u64> {
        self.read_id(ctx.get(..self.tag.len() + 8)?)
    }

    /// The request id in a context this replica made in this run.
    fn read_id(&self, ctx: &[u8]) -> Option<u64> {
        let id = ctx.strip_prefix(self.tag.as_slice())?;
        Some(u64::from_be_bytes(id.try_into().ok()?))
    }

    /// Runs until the replica is dropped (`None`) or the loop cannot go on
    /// (why).
    async fn run(mut self, mut inbox: mpsc::UnboundedReceiver<Request>) -> Option<Stop> {
        let mut ticker = tokio::time::interval(self.config.tick);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = ticker.tick() => {
                    self.node.tick();
                    self.ticks += 1;
                    self.fail_stale_requests();
                }
                request = inbox.recv() => {
                    // The replica was dropped: a normal end.
                    let request = request?;
                    let mut leave = self.handle(request);
                    // Take whatever else is queued before the next Ready: batching.
                    while let Ok(request) = inbox.try_recv() {
                        leave |= self.handle(request);
                    }
                    if leave {
                        return Some(Stop::Removed(self.state.applied_index().unwrap_or(0)));
                    }
                }
            }
            if let Err(stop) = self.on_ready() {
                let why = stop.reason();
                for (_, reply) in self.pending.drain() {
                    let _ = reply.send(Err(stopped(&why)));
                }
                for (_, reply) in self.changes.drain() {
                    let _ = reply.send(Err(stopped(&why)));
                }
                return Some(stop);
            }
        }
    }

    /// Handles one request; whether it asks the loop to end.
    fn handle(&mut self, request: Request) -> bool {
        match request {
            Request::Leave => return true,
            Request::SnapshotLost { to } => self.node.report_snapshot(to, SnapshotStatus::Failure),
            Request::Propose { command, reply } => {
                if self.node.raft.leader_id == 0 {
                    let _ = reply.send(Err(ProposeError::NoLeader));
                    return false;
                }
                let data = match crate::codec::encode(&command) {
                    Ok(d) => d,
                    Err(e) => {
                        let _ = reply.send(Err(stopped(e)));
                        return false;
                    }
                };
                let id = self.next_id;
                self.next_id += 1;
                match self.node.propose(self.context(id), data) {
                    Ok(()) => {
                        self.pending.insert(id, reply);
                    }
                    Err(_) => {
                        let _ = reply.send(Err(ProposeError::NoLeader));
                    }
                }
            }
            Request::Step(message) => {
                if let Err(e) = self.node.step(*message) {
                    tracing::debug!(replica = self.config.id, "ignored a raft message: {e}");
                }
            }
            Request::TransferLeader { to, reply } => {
                let answer = if self.node.raft.state != StateRole::Leader {
                    Err(ProposeError::NotLeader)
                } else if !self.node.raft.prs().conf().voters().contains(to) {
                    Err(ProposeError::NotAVoter(to))
                } else {
                    // The leader stops taking proposals and sends `to` a
                    // TimeoutNow once it has caught up: `to` then wins the
                    // next election at once.
                    self.node.transfer_leader(to);
                    Ok(())
                };
                let _ = reply.send(answer);
            }
            Request::ChangeMembership { change, reply } => match self.propose_change(&change) {
                Ok(id) => {
                    self.changes.insert(id, reply);
                }
                Err(e) => {
                    let _ = reply.send(Err(e));
                }
            },
            Request::ReadIndex { reply } => {
                if self.node.raft.leader_id == 0 {
                    let _ = reply.send(Err(ProposeError::NoLeader));
                    return false;
                }
                let id = self.next_id;
                self.next_id += 1;
                self.node.read_index(self.context(id));
                self.reads.insert(id, (reply, self.ticks));
            }
        }
        false
    }

    /// Checks `change` against the configuration and proposes it; the id
    /// its answer waits under.
    fn propose_change(&mut self, change: &Membership) -> Result<u64, ProposeError> {
        if self.node.raft.state != StateRole::Leader {
            return Err(ProposeError::NotLeader);
        }
        let conf = self.node.raft.prs().conf().to_conf_state();
        if self.node.raft.has_pending_conf() || !conf.voters_outgoing.is_empty() {
            return Err(ProposeError::MembershipBusy);
        }
        let (voters, learners) = (&conf.voters, &conf.learners);
        let refuse = |m: String| Err(ProposeError::Membership(m));
        let (kind, id, urls) = match change {
            Membership::AddLearner { id, url } => {
                if *id == 0 {
                    return refuse("replica ids start at 1".into());
                }
                if voters.contains(id) || learners.contains(id) {
                    return refuse(format!(
                        "replica {id} is already a member; to replace its machine, remove it first"
                    ));
                }
                (ConfChangeType::AddLearnerNode, *id, BTreeMap::from([(*id, url.clone())]))
            }
            Membership::Promote { id } => {
                if !learners.contains(id) {
                    return refuse(format!("replica {id} is not a learner"));
                }
                (ConfChangeType::AddNode, *id, BTreeMap::new())
            }
            Membership::Remove { id } => {
                if !voters.contains(id) && !learners.contains(id) {
                    return refuse(format!("replica {id} is not a member of the cluster"));
                }
                if *id == self.config.id {
                    return refuse(format!(
                        "replica {id} leads: move leadership to another replica first (`wasmgrid cluster transfer-leader`)"
                    ));
                }
                if voters.contains(id) && voters.len() == 1 {
                    return refuse(format!("replica {id} is the last voter"));
                }
                (ConfChangeType::RemoveNode, *id, BTreeMap::new())
            }
        };
        let mut single = ConfChangeSingle::default();
        single.set_change_type(kind);
        single.node_id = id;
        let mut cc = ConfChangeV2::default();
        cc.set_changes(vec![single].into());
        let request = self.next_id;
        self.next_id += 1;
        let mut context = self.context(request);
        if !urls.is_empty() {
            context.extend(serde_json::to_vec(&urls).map_err(stopped)?);
        }
        self.node.propose_conf_change(context, cc).map_err(|_| ProposeError::NoLeader)?;
        Ok(request)
    }

    /// Drops waiters whose callers gave up, fails reads when there is no
    /// leader, and asks again for reads the leader has not answered: a
    /// leader drops ReadIndex requests until it has committed an entry in
    /// its term.
    fn fail_stale_requests(&mut self) {
        self.pending.retain(|_, reply| !reply.is_closed());
        self.changes.retain(|_, reply| !reply.is_closed());
        self.reads.retain(|_, (reply, _)| !reply.is_closed());
        if self.node.raft.leader_id == 0 {
            for (_, (reply, _)) in self.reads.drain() {
                let _ = reply.send(Err(ProposeError::NoLeader));
            }
            return;
        }
        let now = self.ticks;
        let mut again = Vec::new();
        for (id, (_, sent)) in self.reads.iter_mut() {
            if now >= *sent + 3 {
                again.push(*id);
                *sent = now;
            }
        }
        for id in again {
            self.node.read_index(self.context(id));
        }
    }

    fn on_ready(&mut self) -> Result<(), Stop> {
        if !self.node.has_ready() {
            self.publish_status();
            return Ok(());
        }
        let mut ready = self.node.ready();

        if !ready.snapshot().is_empty() {
            let snapshot = ready.snapshot().clone();
            self.log.apply_snapshot(&snapshot).map_err(log_failed)?;
            self.state.restore(snapshot.get_data()).map_err(failed)?;
            self.snapshots_installed += 1;
            let members = self.state.members().map_err(failed)?;
            if !members.is_empty() && members != self.members {
                self.transport.set_members(&members);
                self.members = members;
            }
            tracing::info!(replica = self.config.id, index = snapshot.get_metadata().index, "installed a snapshot");
        }
        self.log.append(ready.entries()).map_err(log_failed)?;
        if let Some(hs) = ready.hs() {
            self.log.set_hard_state(hs).map_err(log_failed)?;
        }
        // Durable before anything that depends on it leaves this replica.
        let flushing = std::time::Instant::now();
        self.log.flush().map_err(log_failed)?;
        self.metrics.fsync.observe(flushing.elapsed().as_secs_f64());

        self.send(ready.take_messages());
        self.send(ready.take_persisted_messages());
        for rs in ready.take_read_states() {
            if let Some((reply, _)) = self.read_id(&rs.request_ctx).and_then(|id| self.reads.remove(&id)) {
                self.ready_reads.push((rs.index, reply));
            }
        }
        self.apply(ready.take_committed_entries())?;

        let mut light = self.node.advance(ready);
        if let Some(commit) = light.commit_index() {
            self.log.set_commit(commit).map_err(log_failed)?;
        }
        self.send(light.take_messages());
        self.apply(light.take_committed_entries())?;
        self.node.advance_apply();

        self.answer_reads()?;
        self.maybe_compact()?;
        self.publish_status();
        Ok(())
    }

    fn send(&self, messages: Vec<Message>) {
        for m in messages {
            self.transport.send(m);
        }
    }

    fn apply(&mut self, entries: Vec<Entry>) -> Result<(), Stop> {
        for entry in entries {
            match entry.get_entry_type() {
                EntryType::EntryNormal if entry.data.is_empty() => {
                    // The empty entry a new leader appends: nothing to do,
                    // but reads wait for its index.
                    self.state.mark_applied(entry.index).map_err(failed)?;
                }
                EntryType::EntryNormal => {
                    let result = match crate::codec::decode::<Command>(&entry.data, crate::state::LegacyCommand::decode)
                    {
                        Ok(command) => self.state.apply(entry.index, &command).map_err(ProposeError::State),
                        Err(e) => Err(stopped(format!("undecodable entry {}: {e}", entry.index))),
                    };
                    if let Err(ProposeError::State(StateError::Storage(e))) = &result {
                        return Err(Stop::Failed(e.clone()));
                    }
                    if let Some(reply) = self.read_id(&entry.context).and_then(|id| self.pending.remove(&id)) {
                        let _ = reply.send(result);
                    }
                }
                EntryType::EntryConfChange | EntryType::EntryConfChangeV2 => self.apply_membership(&entry)?,
            }
        }
        Ok(())
    }

    /// Applies a configuration change: the new configuration and the URLs
    /// of the replicas it adds are recorded with its index. Every replica
    /// refuses the same invalid change (raft-rs checks it), so a refused
    /// change only consumes its index. A replica that finds itself removed
    /// stops.
    fn apply_membership(&mut self, entry: &Entry) -> Result<(), Stop> {
        let undecodable =
            |e: protobuf::ProtobufError| Stop::Failed(format!("undecodable configuration change {}: {e}", entry.index));
        // raft-rs applies either kind (a V1 change is a V2 change of one).
        let applied = match entry.get_entry_type() {
            EntryType::EntryConfChange => {
                self.node.apply_conf_change(&ConfChange::parse_from_bytes(&entry.data).map_err(undecodable)?)
            }
            _ => self.node.apply_conf_change(&ConfChangeV2::parse_from_bytes(&entry.data).map_err(undecodable)?),
        };
        let reply = self.change_id(&entry.context).and_then(|id| self.changes.remove(&id));
        let cs = match applied {
            Ok(cs) => cs,
            Err(e) => {
                tracing::warn!(replica = self.config.id, index = entry.index, "refused a configuration change: {e}");
                self.state.mark_applied(entry.index).map_err(failed)?;
                if let Some(reply) = reply {
                    let _ = reply.send(Err(ProposeError::Membership(e.to_string())));
                }
                return Ok(());
            }
        };
        self.log.set_conf_state(&cs).map_err(log_failed)?;
        let added: BTreeMap<u64, String> = entry
            .context
            .get(self.tag.len() + 8..)
            .filter(|urls| !urls.is_empty())
            .and_then(|urls| serde_json::from_slice(urls).ok())
            .unwrap_or_default();

        let mut members = self.members.clone();
        members.extend(added);
        members.retain(|&id, _| is_member(&cs, id));
        self.state.set_members(Some(entry.index), &members).map_err(failed)?;
        if members != self.members {
            self.transport.set_members(&members);
            self.members = members;
        }
        tracing::info!(replica = self.config.id, index = entry.index, voters = ?cs.voters, learners = ?cs.learners, "membership changed");
        if let Some(reply) = reply {
            let _ = reply.send(Ok(()));
        }
        if !is_member(&cs, self.config.id) {
            return Err(Stop::Removed(entry.index));
        }
        Ok(())
    }

    fn answer_reads(&mut self) -> Result<(), Stop> {
        let applied = self.state.applied_index().map_err(failed)?;
        let (done, waiting): (Vec<_>, Vec<_>) =
            std::mem::take(&mut self.ready_reads).into_iter().partition(|(index, _)| *index <= applied);
        self.ready_reads = waiting;
        for (_, reply) in done {
            let _ = reply.send(Ok(()));
        }
        Ok(())
    }

    /// Compacts the log once `snapshot_every` entries are applied past its
    /// start. A leader keeps what its live peers still need, up to ten
    /// times `snapshot_every` behind: compacting past a peer that is
    /// installing a large snapshot would send it another one, and another.
    fn maybe_compact(&mut self) -> Result<(), Stop> {
        let applied = self.state.applied_index().map_err(failed)?;
        let first = self.log.first_index().map_err(log_failed)?;
        let mut to = applied;
        if self.node.raft.state == StateRole::Leader {
            // A peer that is installing a snapshot needs what follows it; a
            // peer that answers needs what it has not matched; a silent one
            // gets a snapshot when it is back.
            let needed = self.node.raft.prs().iter().filter(|(id, _)| **id != self.config.id).filter_map(|(_, pr)| {
                match pr.state {
                    ProgressState::Snapshot => Some(pr.pending_snapshot),
                    _ if pr.recent_active => Some(pr.matched),
                    _ => None,
                }
            });
            let floor = applied.saturating_sub(10 * self.config.snapshot_every);
            to = needed.min().unwrap_or(applied).clamp(floor, applied);
        }
        if to >= first + self.config.snapshot_every {
            self.log.compact(to).map_err(log_failed)?;
            tracing::debug!(replica = self.config.id, applied, to, "compacted the raft log");
        }
        Ok(())
    }

    fn publish_status(&self) {
        let raft = &self.node.raft;
        let progress = if raft.state == StateRole::Leader {
            let mut p: Vec<(u64, u64)> = raft.prs().iter().map(|(id, pr)| (*id, pr.matched)).collect();
            p.sort_unstable();
            p
        } else {
            Vec::new()
        };
        let conf = raft.prs().conf().to_conf_state();
        let mut voters: Vec<u64> = conf.voters.iter().chain(&conf.voters_outgoing).copied().collect();
        voters.sort_unstable();
        voters.dedup();
        let mut learners = conf.learners;
        learners.sort_unstable();
        let status = Status {
            voters,
            learners,
            members: self.members.clone(),
            id: self.config.id,
            leader: raft.leader_id,
            term: raft.term,
            is_leader: raft.state == StateRole::Leader,
            commit: raft.raft_log.committed,
            applied: self.state.applied_index().unwrap_or(0),
            first_index: self.log.first_index().unwrap_or(0),
            progress,
            snapshots_installed: self.snapshots_installed,
            stopped: None,
            removed: false,
        };
        self.status.send_if_modified(|old| {
            if *old == status {
                false
            } else {
                *old = status;
                true
            }
        });
    }
}

#[cfg(test)]
mod tests;
