//! Real control-plane replicas and nodes on loopback, as child processes.

use std::path::{Path, PathBuf};
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

use wasmgrid_api::{Client, ClusterStatus};

/// A port nothing listens on right now.
pub fn free_port() -> u16 {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    listener.local_addr().expect("addr").port()
}

/// Sends SIGTERM and waits (up to 10 s, then SIGKILL).
pub fn terminate(child: &mut Child) {
    let _ = std::process::Command::new("kill").args(["-TERM", &child.id().to_string()]).status();
    let deadline = Instant::now() + Duration::from_secs(10);
    while Instant::now() < deadline {
        if let Ok(Some(_)) = child.try_wait() {
            return;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let _ = child.kill();
    let _ = child.wait();
}

/// A control plane of `n` replicas, each a `wasmgrid control-plane` process.
pub struct Replicas {
    pub dir: tempfile::TempDir,
    pub ports: Vec<u16>,
    procs: Vec<Option<Child>>,
    snapshot_every: u64,
    /// How many replicas the cluster started with (its `--peers`).
    initial: usize,
    /// The binary replicas start from (default: the one under test).
    pub binary: Option<PathBuf>,
}

impl Replicas {
    pub fn start(n: usize, snapshot_every: u64) -> Replicas {
        Replicas::start_from(None, n, snapshot_every)
    }

    /// [`Replicas::start`] from `binary` (another release's `wasmgrid`).
    pub fn start_from(binary: Option<PathBuf>, n: usize, snapshot_every: u64) -> Replicas {
        let mut r = Replicas {
            dir: tempfile::tempdir().expect("tempdir"),
            ports: (0..n).map(|_| free_port()).collect(),
            procs: (0..n).map(|_| None).collect(),
            snapshot_every,
            initial: n,
            binary,
        };
        super::write_token(&r.token_file());
        for id in 1..=n as u64 {
            r.spawn(id);
        }
        r
    }

    pub fn peers(&self) -> String {
        self.ports[..self.initial]
            .iter()
            .enumerate()
            .map(|(i, p)| format!("{}=127.0.0.1:{p}", i + 1))
            .collect::<Vec<_>>()
            .join(",")
    }

    /// The admin token file every replica reads.
    pub fn token_file(&self) -> PathBuf {
        self.dir.path().join("admin-token")
    }

    pub fn log(&self, id: u64) -> PathBuf {
        self.dir.path().join(format!("replica-{id}.log"))
    }

    /// Where replica `id` keeps its data.
    pub fn data(&self, id: u64) -> PathBuf {
        self.dir.path().join(format!("replica-{id}"))
    }

    /// Makes room for one more replica (not started, not a member yet);
    /// returns its id.
    pub fn add_slot(&mut self) -> u64 {
        self.ports.push(free_port());
        self.procs.push(None);
        self.ports.len() as u64
    }

    /// Starts (or restarts) replica `id` as one of the cluster's `--peers`.
    pub fn spawn(&mut self, id: u64) {
        let peers = self.peers();
        self.spawn_with(id, &["--peers", &peers]);
    }

    /// Starts replica `id` as a new machine joining through the others.
    pub fn spawn_joining(&mut self, id: u64) {
        let others: Vec<String> = (1..=self.ports.len() as u64).filter(|&o| o != id).map(|o| self.url(o)).collect();
        self.spawn_with(id, &["--join", &others.join(",")]);
    }

    fn spawn_with(&mut self, id: u64, membership: &[&str]) {
        assert!(self.procs[id as usize - 1].is_none(), "replica {id} is running");
        let log = std::fs::OpenOptions::new().create(true).append(true).open(self.log(id)).expect("log");
        let mut command = super::wasmgrid();
        if let Some(binary) = &self.binary {
            command = std::process::Command::new(binary);
            command.env("NO_COLOR", "1").env("WASMGRID_TOKEN", super::TOKEN);
        }
        let child = command
            .args(["control-plane", "--id", &id.to_string()])
            .arg("--data")
            .arg(self.data(id))
            .args(["--listen", &format!("127.0.0.1:{}", self.ports[id as usize - 1])])
            .args(membership)
            .args(["--snapshot-every", &self.snapshot_every.to_string()])
            .arg("--admin-token-file")
            .arg(self.token_file())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("start a replica");
        self.procs[id as usize - 1] = Some(child);
    }

    /// `kill -9` replica `id`.
    pub fn kill(&mut self, id: u64) {
        if let Some(mut child) = self.procs[id as usize - 1].take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Stops replica `id` with SIGTERM.
    pub fn stop(&mut self, id: u64) {
        if let Some(mut child) = self.procs[id as usize - 1].take() {
            terminate(&mut child);
        }
    }

    /// How replica `id`'s process ended, if it has (it is then no longer
    /// counted as running).
    pub fn exited(&mut self, id: u64) -> Option<std::process::ExitStatus> {
        let child = self.procs[id as usize - 1].as_mut()?;
        let status = child.try_wait().ok().flatten()?;
        self.procs[id as usize - 1] = None;
        Some(status)
    }

    pub fn is_up(&self, id: u64) -> bool {
        self.procs[id as usize - 1].is_some()
    }

    /// Replica `id`'s process id (0 when it is not running).
    pub fn pid(&self, id: u64) -> u32 {
        self.procs[id as usize - 1].as_ref().map_or(0, Child::id)
    }

    pub fn url(&self, id: u64) -> String {
        format!("http://127.0.0.1:{}", self.ports[id as usize - 1])
    }

    /// Every replica's URL, comma-separated (what `--url` takes).
    pub fn urls(&self) -> String {
        (1..=self.ports.len() as u64).map(|id| self.url(id)).collect::<Vec<_>>().join(",")
    }

    /// A client that tries replicas `ids` in that order.
    pub fn client_for(&self, ids: &[u64]) -> Client {
        let urls: Vec<String> = ids.iter().map(|&id| self.url(id)).collect();
        Client::new(&urls, Duration::from_secs(30)).expect("client").with_token(Some(super::TOKEN.into()))
    }

    /// A client of replica `id` only.
    pub fn client(&self, id: u64) -> Client {
        self.client_for(&[id])
    }

    /// A client that fails over between all replicas.
    pub fn client_all(&self) -> Client {
        self.client_for(&(1..=self.ports.len() as u64).collect::<Vec<_>>())
    }

    /// Waits until replica `id` has applied log `index`.
    pub async fn wait_applied(&self, id: u64, index: u64, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        while self.status(id).await.is_none_or(|s| s.applied < index) {
            assert!(Instant::now() < deadline, "replica {id} did not apply {index} within {timeout:?}");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    pub async fn status(&self, id: u64) -> Option<ClusterStatus> {
        Client::new(&[self.url(id)], Duration::from_secs(2))
            .ok()?
            .with_token(Some(super::TOKEN.into()))
            .cluster()
            .await
            .ok()
    }

    /// Waits until a running replica is leader and every running replica
    /// agrees on it; returns its id.
    pub async fn wait_leader(&self, timeout: Duration) -> u64 {
        let deadline = Instant::now() + timeout;
        loop {
            let mut leaders = Vec::new();
            for id in 1..=self.ports.len() as u64 {
                if self.is_up(id) {
                    leaders.push(self.status(id).await.and_then(|s| s.leader));
                }
            }
            if let Some(Some(l)) = leaders.first()
                && self.is_up(*l)
                && leaders.iter().all(|x| *x == Some(*l))
            {
                return *l;
            }
            assert!(Instant::now() < deadline, "no leader within {timeout:?}: {leaders:?}");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

impl Drop for Replicas {
    fn drop(&mut self) {
        for child in self.procs.iter_mut().flatten() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// A `wasmgrid node` process.
pub struct Node {
    child: Option<Child>,
    pub url: String,
}

impl Node {
    pub fn start(control_plane: &str, data: &Path) -> Node {
        Node::start_with(control_plane, data, &[])
    }

    /// A node with extra flags (admission limits).
    pub fn start_with(control_plane: &str, data: &Path, flags: &[&str]) -> Node {
        Node::start_from(super::wasmgrid(), control_plane, data, flags)
    }

    /// A node run by `command` (another release's `wasmgrid`).
    pub fn start_from(mut command: std::process::Command, control_plane: &str, data: &Path, flags: &[&str]) -> Node {
        let port = free_port();
        let log = std::fs::File::create(data.with_extension("log")).expect("log");
        let child = command
            .args(["node", "--control-plane", control_plane, "--listen", &format!("127.0.0.1:{port}")])
            .arg("--data")
            .arg(data)
            .args(flags)
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("start a node");
        Node { child: Some(child), url: format!("http://127.0.0.1:{port}") }
    }
}

impl Node {
    /// The node's process id.
    pub fn pid(&self) -> u32 {
        self.child.as_ref().map_or(0, Child::id)
    }

    /// `kill -9` the node.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            terminate(&mut child);
        }
    }
}

/// `wasmgrid dev` on free ports, with the URLs it printed.
pub struct Dev {
    child: Child,
    pub control_plane: String,
    pub gateway: String,
}

impl Dev {
    /// Starts `wasmgrid dev` with its data in `data` (and [`super::TOKEN`]
    /// as its admin token) and reads its two URLs.
    pub fn start(data: &Path) -> Dev {
        Dev::start_with(data, &[])
    }

    /// [`Dev::start`] with extra flags.
    pub fn start_with(data: &Path, flags: &[&str]) -> Dev {
        super::write_token(&data.join("admin-token"));
        let mut child = super::wasmgrid()
            .args(["dev", "--listen", "127.0.0.1:0", "--gateway", "127.0.0.1:0", "--data"])
            .arg(data)
            .args(flags)
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("wasmgrid dev starts");
        let stdout = child.stdout.take().expect("stdout");
        let mut lines = std::io::BufRead::lines(std::io::BufReader::new(stdout));
        let mut url = |prefix: &str| {
            let line = lines.next().and_then(Result::ok).unwrap_or_default();
            line.strip_prefix(prefix).map(|u| u.trim().to_string()).unwrap_or_else(|| panic!("dev printed {line}"))
        };
        let control_plane = url("control plane:");
        let gateway = url("gateway:");
        Dev { child, control_plane, gateway }
    }

    /// The process id of `wasmgrid dev`.
    #[allow(dead_code)]
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Sends `signal` (`TERM`, `INT`) to `wasmgrid dev`.
    #[allow(dead_code)]
    pub fn signal(&self, signal: &str) {
        let status = std::process::Command::new("kill").arg(format!("-{signal}")).arg(self.pid().to_string()).status();
        assert!(status.is_ok_and(|s| s.success()), "kill -{signal} failed");
    }

    /// How it exited, if it did within `within`.
    #[allow(dead_code)]
    pub fn exited_within(&mut self, within: Duration) -> Option<std::process::ExitStatus> {
        let deadline = Instant::now() + within;
        loop {
            if let Ok(Some(status)) = self.child.try_wait() {
                return Some(status);
            }
            if Instant::now() >= deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Dev {
    fn drop(&mut self) {
        terminate(&mut self.child);
    }
}
