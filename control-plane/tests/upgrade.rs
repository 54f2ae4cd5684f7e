//! Upgrades: a replica's data directory written by an earlier release, kept
//! in `tests/fixtures/data-v1`, must open with this one, replay the entries
//! it had committed but not applied, and serve the same state. The fixture
//! holds a log written across the change of encoding: entries in bincode
//! (as releases before the tagged encoding wrote them) and in tagged CBOR.
//!
//! Never rewrite the fixture to make this test pass: a release that cannot
//! read it cannot be rolled out over a running cluster. Add a new fixture
//! next to it when the format moves on
//! (`cargo test -p wasmgrid-control-plane --test upgrade -- --ignored`
//! writes `data-next`).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use raft::eraftpb::{ConfState, Entry, HardState, Message};
use wasmgrid_api::{Quotas, Role};
use wasmgrid_control_plane::log::LogStore;
use wasmgrid_control_plane::replica::{Replica, ReplicaConfig, Transport};
use wasmgrid_control_plane::state::{Applied, Command, DEFAULT_TENANT, FunctionSpec, State, sha256_hex};

const MODULE: &[u8] = b"\0asm not a real component; the state does not look inside";

fn fixture() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/data-v1")
}

fn spec(weight: &str) -> FunctionSpec {
    FunctionSpec {
        kind: "scorer".into(),
        memory: 64 << 20,
        timeout_ms: 1000,
        config: BTreeMap::from([("weight".to_string(), weight.to_string())]),
        gpu: Default::default(),
        public: false,
        replicas: Default::default(),
        artifacts: Default::default(),
    }
}

fn deploy(name: &str, weight: &str) -> Command {
    let module = sha256_hex(MODULE);
    Command::Deploy {
        tenant: DEFAULT_TENANT.into(),
        name: name.into(),
        module,
        spec: spec(weight),
        placement: None,
        trial: None,
    }
}

/// What the fixture's log holds, in order, and how each entry is encoded.
fn history() -> Vec<(Command, bool)> {
    let legacy = true;
    vec![
        (Command::CreateTenant { name: "acme".into(), quotas: Quotas::default() }, legacy),
        (Command::CreateToken { sha256: "ab".repeat(32), tenant: Some("acme".into()), role: Role::ReadOnly }, legacy),
        (
            Command::PutModule { tenant: DEFAULT_TENANT.into(), sha256: sha256_hex(MODULE), bytes: MODULE.to_vec() },
            legacy,
        ),
        (deploy("f", "1"), legacy),
        (deploy("f", "2"), !legacy),
        (Command::Rollback { tenant: DEFAULT_TENANT.into(), name: "f".into(), version: 1 }, !legacy),
        (
            Command::Once {
                id: "fixture/0".into(),
                command: Box::new(Command::CreateTenant { name: "beta".into(), quotas: Quotas::default() }),
            },
            !legacy,
        ),
        // Committed, not applied: the replica applies them when it starts.
        (deploy("g", "3"), legacy),
        (Command::CreateTenant { name: "gamma".into(), quotas: Quotas::default() }, !legacy),
    ]
}

/// How many entries of [`history`] the fixture's state has applied.
const APPLIED: u64 = 7;

/// Writes a data directory as a single replica of this release leaves it.
#[test]
#[ignore = "writes a fixture; run by hand when the format moves on"]
fn write_fixture() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/data-next");
    let _ = std::fs::remove_dir_all(&dir);
    let db = sled::open(&dir).expect("sled");
    let state = State::from_db(db.clone()).expect("state");
    let log = LogStore::open(db.open_tree("raft").expect("tree")).expect("log");
    log.set_conf_state(&ConfState { voters: vec![1], ..Default::default() }).expect("conf");
    state.set_members(None, &BTreeMap::from([(1, "http://127.0.0.1:7400".to_string())])).expect("members");
    let mut entries = Vec::new();
    for (i, (command, legacy)) in history().into_iter().enumerate() {
        let index = i as u64 + 1;
        let data = if legacy {
            bincode::serialize(&command).expect("bincode")
        } else {
            wasmgrid_control_plane::codec::encode(&command).expect("cbor")
        };
        entries.push(Entry { index, term: 1, data: data.into(), ..Default::default() });
        if index <= APPLIED {
            state.apply(index, &command).expect("apply");
        }
    }
    log.append(&entries).expect("append");
    let commit = entries.len() as u64;
    log.set_hard_state(&HardState { term: 1, vote: 1, commit, ..Default::default() }).expect("hard state");
    log.flush().expect("flush");
    state.flush().expect("flush");
}

struct Alone;

impl Transport for Alone {
    fn send(&self, _: Message) {}
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).expect("dir");
    for entry in std::fs::read_dir(from).expect("fixture").flatten() {
        let path = entry.path();
        if path.is_dir() {
            copy_dir(&path, &to.join(entry.file_name()));
        } else {
            std::fs::copy(&path, to.join(entry.file_name())).expect("copy");
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_data_directory_of_the_earlier_release_opens_replays_and_serves_the_same_state() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let dir = tmp.path().join("data");
    copy_dir(&fixture(), &dir);
    let mut config = ReplicaConfig::new(1, vec![1], dir);
    config.tick = Duration::from_millis(10);
    let replica = Replica::start(config, Arc::new(Alone)).expect("the fixture opens");
    assert!(replica.wait_for(Duration::from_secs(10), |s| s.is_leader).await, "{:?}", replica.status());
    replica.read_barrier().await.expect("read barrier");

    let state = replica.state();
    let tenants: Vec<String> = state.tenants().expect("tenants").into_iter().map(|t| t.name).collect();
    for name in ["default", "acme", "beta", "gamma"] {
        assert!(tenants.contains(&name.to_string()), "{name} in {tenants:?}");
    }
    let tokens = state.tokens().expect("tokens");
    assert!(tokens.iter().any(|t| t.tenant.as_deref() == Some("acme") && t.role == Role::ReadOnly), "{tokens:?}");
    assert_eq!(state.module(&sha256_hex(MODULE)).expect("module").as_deref(), Some(MODULE));
    let f = state.function(DEFAULT_TENANT, "f").expect("f").expect("f exists");
    assert_eq!((f.active, f.latest), (1, 2));
    let versions = state.versions(DEFAULT_TENANT, "f").expect("versions");
    assert_eq!(versions.iter().map(|v| v.spec.config["weight"].as_str()).collect::<Vec<_>>(), ["1", "2"]);
    let g = state.function(DEFAULT_TENANT, "g").expect("g").expect("g, replayed from a bincode entry");
    assert_eq!(g.latest, 1);
    assert_eq!(replica.status().members.get(&1).map(String::as_str), Some("http://127.0.0.1:7400"));

    // The request id applied before the upgrade is still remembered.
    let again = Command::Once {
        id: "fixture/0".into(),
        command: Box::new(Command::CreateTenant { name: "beta".into(), quotas: Quotas::default() }),
    };
    assert_eq!(replica.propose(again).await.expect("answered, not applied"), Applied::TenantCreated);
    // And it takes new writes, in the new encoding.
    assert_eq!(replica.propose(deploy("f", "4")).await.expect("deploy"), Applied::Deployed { version: 3 });
}
