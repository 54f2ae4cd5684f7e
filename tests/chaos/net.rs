//! Replicas as separate hosts: one network namespace each, on a bridge in a
//! hub namespace that the test (in the root namespace) reaches through a
//! veth pair; partitions are nftables drops inside the replicas'
//! namespaces, and each replica's data lives on a tmpfs of its own, so a
//! disk can fill up. Needs root (CAP_NET_ADMIN, CAP_SYS_ADMIN), `ip`,
//! `nft` and `mount`.

use std::path::{Path, PathBuf};
use std::process::Command;

/// The port every replica listens on, each at its own address.
pub const PORT: u16 = 7400;

/// What a network fault cuts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Cut {
    /// Nothing passes either way.
    Both,
    /// `from` cannot open connections to `to` (its Raft messages to `to`
    /// are lost), while `to` still reaches `from`.
    OneWay,
}

/// The namespaces, links and disks of one run.
pub struct Net {
    tag: String,
    subnet: String,
    slots: u64,
    disks: Vec<PathBuf>,
}

fn run(args: &[&str]) -> Result<(), String> {
    let out = Command::new(args[0]).args(&args[1..]).output().map_err(|e| format!("{}: {e}", args.join(" ")))?;
    if !out.status.success() {
        return Err(format!("{}: {}", args.join(" "), String::from_utf8_lossy(&out.stderr).trim()));
    }
    Ok(())
}

fn must(args: &[&str]) {
    if let Err(e) = run(args) {
        panic!("{e}");
    }
}

impl Net {
    /// Why this machine cannot run the chaos suite, if it cannot.
    pub fn unavailable() -> Option<String> {
        for tool in ["ip", "nft", "mount"] {
            if Command::new("sh")
                .args(["-c", &format!("command -v {tool}")])
                .output()
                .map_or(true, |o| !o.status.success())
            {
                return Some(format!("`{tool}` is not installed"));
            }
        }
        let probe = format!("wgprobe{}", std::process::id());
        match run(&["ip", "netns", "add", &probe]) {
            Ok(()) => {
                let _ = run(&["ip", "netns", "del", &probe]);
                None
            }
            Err(e) => Some(format!("cannot create a network namespace (needs root): {e}")),
        }
    }

    /// `slots` replica hosts (ids 1..=slots) with `disk_mb` of disk each,
    /// under `dir`.
    pub fn create(slots: u64, dir: &Path, disk_mb: u64) -> Net {
        let pid = std::process::id();
        let tag = format!("wg{}", pid % 100_000);
        let subnet = format!("10.200.{}", pid % 200);
        let link = format!("10.201.{}", pid % 200);
        let mut net = Net { tag: tag.clone(), subnet: subnet.clone(), slots, disks: Vec::new() };
        let hub = net.hub();
        must(&["ip", "netns", "add", &hub]);
        must(&["ip", "-n", &hub, "link", "set", "lo", "up"]);
        must(&["ip", "-n", &hub, "link", "add", "br0", "type", "bridge"]);
        must(&["ip", "-n", &hub, "addr", "add", &format!("{subnet}.254/24"), "dev", "br0"]);
        must(&["ip", "-n", &hub, "link", "set", "br0", "up"]);
        must(&["ip", "netns", "exec", &hub, "sysctl", "-qw", "net.ipv4.ip_forward=1"]);
        // The test's way in: root <-> hub.
        let (root_end, hub_end) = (format!("{tag}r"), format!("{tag}h"));
        must(&["ip", "link", "add", &root_end, "type", "veth", "peer", "name", &hub_end]);
        must(&["ip", "link", "set", &hub_end, "netns", &hub]);
        must(&["ip", "addr", "add", &format!("{link}.1/30"), "dev", &root_end]);
        must(&["ip", "link", "set", &root_end, "up"]);
        must(&["ip", "-n", &hub, "addr", "add", &format!("{link}.2/30"), "dev", &hub_end]);
        must(&["ip", "-n", &hub, "link", "set", &hub_end, "up"]);
        must(&["ip", "route", "add", &format!("{subnet}.0/24"), "via", &format!("{link}.2")]);
        for id in 1..=slots {
            let ns = net.ns(id);
            let (outer, inner) = (format!("{tag}a{id}"), format!("{tag}b{id}"));
            must(&["ip", "netns", "add", &ns]);
            must(&["ip", "-n", &ns, "link", "set", "lo", "up"]);
            must(&["ip", "link", "add", &outer, "type", "veth", "peer", "name", &inner]);
            must(&["ip", "link", "set", &outer, "netns", &hub]);
            must(&["ip", "link", "set", &inner, "netns", &ns]);
            must(&["ip", "-n", &hub, "link", "set", &outer, "master", "br0", "up"]);
            must(&["ip", "-n", &ns, "addr", "add", &format!("{}/24", net.addr(id)), "dev", &inner]);
            must(&["ip", "-n", &ns, "link", "set", &inner, "up"]);
            must(&["ip", "-n", &ns, "route", "add", "default", "via", &format!("{subnet}.254")]);
            for rule in [
                "add table inet chaos",
                "add chain inet chaos input { type filter hook input priority 0 ; policy accept ; }",
                "add chain inet chaos output { type filter hook output priority 0 ; policy accept ; }",
            ] {
                must(&["ip", "netns", "exec", &ns, "nft", rule]);
            }
            let disk = dir.join(format!("disk-{id}"));
            std::fs::create_dir_all(&disk).expect("disk dir");
            must(&["mount", "-t", "tmpfs", "-o", &format!("size={disk_mb}m"), "tmpfs", &disk.to_string_lossy()]);
            net.disks.push(disk);
        }
        net
    }

    fn hub(&self) -> String {
        format!("{}hub", self.tag)
    }

    fn ns(&self, id: u64) -> String {
        format!("{}n{id}", self.tag)
    }

    /// Replica `id`'s address.
    pub fn addr(&self, id: u64) -> String {
        format!("{}.{id}", self.subnet)
    }

    /// Replica `id`'s base URL.
    pub fn url(&self, id: u64) -> String {
        format!("http://{}:{PORT}", self.addr(id))
    }

    /// Replica `id`'s disk (a tmpfs).
    pub fn disk(&self, id: u64) -> &Path {
        &self.disks[id as usize - 1]
    }

    /// A command that runs `program` on host `id`.
    pub fn command(&self, id: u64, program: &Path) -> Command {
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", &self.ns(id)]).arg(program);
        cmd
    }

    /// Cuts traffic from host `from` to host `to` (and back, for
    /// [`Cut::Both`]).
    pub fn cut(&self, from: u64, to: u64, cut: Cut) {
        let (a, b) = (self.addr(from), self.addr(to));
        let rules: Vec<(u64, String)> = match cut {
            Cut::Both => vec![
                (from, format!("add rule inet chaos output ip daddr {b} drop")),
                (from, format!("add rule inet chaos input ip saddr {b} drop")),
                (to, format!("add rule inet chaos output ip daddr {a} drop")),
                (to, format!("add rule inet chaos input ip saddr {a} drop")),
            ],
            // Connections `from` opens to `to`'s listener: requests out,
            // answers back.
            Cut::OneWay => vec![
                (from, format!("add rule inet chaos output ip daddr {b} tcp dport {PORT} drop")),
                (from, format!("add rule inet chaos input ip saddr {b} tcp sport {PORT} drop")),
            ],
        };
        for (host, rule) in rules {
            must(&["ip", "netns", "exec", &self.ns(host), "nft", &rule]);
        }
    }

    /// Cuts host `id` off from every other host (the test still reaches it).
    pub fn isolate(&self, id: u64) {
        for other in (1..=self.slots).filter(|&o| o != id) {
            self.cut(id, other, Cut::Both);
        }
    }

    /// Removes every cut.
    pub fn heal(&self) {
        for id in 1..=self.slots {
            let ns = self.ns(id);
            for chain in ["input", "output"] {
                must(&["ip", "netns", "exec", &ns, "nft", &format!("flush chain inet chaos {chain}")]);
            }
        }
    }

    /// Fills host `id`'s disk; the filler's path (remove it to free the
    /// space).
    pub fn fill_disk(&self, id: u64) -> PathBuf {
        use std::io::Write as _;
        let path = self.disk(id).join("filler");
        let mut file = std::fs::File::create(&path).expect("filler");
        let chunk = vec![0u8; 1 << 20];
        while file.write_all(&chunk).is_ok() {}
        // Whatever is left after the last whole chunk, too.
        while file.write_all(&chunk[..4096]).is_ok() {}
        path
    }
}

impl Drop for Net {
    fn drop(&mut self) {
        for disk in &self.disks {
            let _ = run(&["umount", "-l", &disk.to_string_lossy()]);
        }
        for id in 1..=self.slots {
            let _ = run(&["ip", "netns", "del", &self.ns(id)]);
        }
        // Deleting the hub deletes its veth ends, and so their peers.
        let _ = run(&["ip", "netns", "del", &self.hub()]);
    }
}
