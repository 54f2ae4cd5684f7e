use super::*;
use std::collections::BTreeMap;

use wasmgrid_api::{Quotas, Role};

fn spec() -> FunctionSpec {
    FunctionSpec {
        kind: "scorer".into(),
        memory: 64 << 20,
        timeout_ms: 200,
        config: BTreeMap::new(),
        gpu: Default::default(),
        public: false,
        replicas: Default::default(),
        artifacts: Default::default(),
    }
}

fn put(bytes: &[u8]) -> Command {
    put_for(DEFAULT_TENANT, bytes)
}

fn put_for(tenant: &str, bytes: &[u8]) -> Command {
    Command::PutModule { tenant: tenant.into(), sha256: sha256_hex(bytes), bytes: bytes.to_vec() }
}

fn deploy(name: &str, bytes: &[u8]) -> Command {
    Command::Deploy {
        tenant: DEFAULT_TENANT.into(),
        name: name.into(),
        module: sha256_hex(bytes),
        spec: spec(),
        placement: None,
        trial: None,
    }
}

#[test]
fn a_deploy_writes_one_version_record_and_a_head_that_does_not_grow() -> Result<()> {
    let s = State::temporary()?;
    s.apply(1, &put(b"m"))?;
    let head_size = |s: &State| s.functions.get(function_key(DEFAULT_TENANT, "f")).ok().flatten().map(|v| v.len());
    s.apply(2, &deploy("f", b"m"))?;
    let first = head_size(&s).expect("a head record");
    for i in 3..503 {
        s.apply(i, &deploy("f", b"m"))?;
    }
    assert_eq!(head_size(&s), Some(first + 4), "the head holds only numbers (active and latest, 1 -> 501)");
    assert_eq!(s.versions.len(), 501);
    let f = s.function(DEFAULT_TENANT, "f")?.expect("deployed");
    assert_eq!((f.active, f.latest, f.current.map(|v| v.created_at)), (501, 501, Some(502)));
    let back = Command::Rollback { tenant: DEFAULT_TENANT.into(), name: "f".into(), version: 7 };
    assert_eq!(s.apply(503, &back)?, Applied::RolledBack { version: 7 });
    assert_eq!(s.function(DEFAULT_TENANT, "f")?.and_then(|f| f.current).map(|v| v.created_at), Some(8));
    let gone = Command::Rollback { tenant: DEFAULT_TENANT.into(), name: "f".into(), version: 502 };
    assert!(matches!(s.apply(504, &gone), Err(StateError::VersionNotFound { .. })));
    // Deleting the function removes every version with it.
    s.apply(505, &Command::Delete { tenant: DEFAULT_TENANT.into(), name: "f".into() })?;
    assert_eq!((s.versions.len(), s.functions.len()), (0, 0));
    Ok(())
}

#[test]
fn a_candidate_stands_beside_the_active_version_until_promoted_replaced_or_abandoned() -> Result<()> {
    use wasmgrid_api::{Trial, TrialMode, TrialSpec};
    let s = State::temporary()?;
    let shadow = TrialSpec { mode: TrialMode::Shadow, percent: 100.0, threshold: 0.5 };
    let tried = |trial| Command::Deploy {
        tenant: DEFAULT_TENANT.into(),
        name: "f".into(),
        module: sha256_hex(b"m"),
        spec: spec(),
        placement: None,
        trial,
    };
    let read = |s: &State| -> Result<(u64, Option<Trial>, Option<u64>)> {
        let f = s.function(DEFAULT_TENANT, "f")?.expect("deployed");
        Ok((f.active, f.trial, f.candidate.map(|v| v.version)))
    };
    s.apply(1, &put(b"m"))?;
    // A first version has nothing to stand beside: it is active.
    s.apply(2, &tried(Some(shadow)))?;
    assert_eq!(read(&s)?, (1, None, None));
    // The next one with a trial is the candidate; the active one stays.
    assert_eq!(s.apply(3, &tried(Some(shadow)))?, Applied::Deployed { version: 2 });
    assert_eq!(read(&s)?, (1, Some(Trial { version: 2, spec: shadow }), Some(2)));
    // A plain deploy makes its version active and ends the trial.
    s.apply(4, &tried(None))?;
    assert_eq!(read(&s)?, (3, None, None));
    // An existing version as a canary; not the active one, nor one missing.
    let canary = TrialSpec { mode: TrialMode::Canary, percent: 10.0, threshold: 0.5 };
    let set = |version| Command::SetTrial {
        tenant: DEFAULT_TENANT.into(),
        name: "f".into(),
        trial: Some(Trial { version, spec: canary }),
    };
    assert_eq!(s.apply(5, &set(2))?, Applied::TrialSet);
    assert_eq!(read(&s)?, (3, Some(Trial { version: 2, spec: canary }), Some(2)));
    assert!(matches!(s.apply(6, &set(3)), Err(StateError::Conflict(m)) if m.contains("active version")));
    assert!(matches!(s.apply(7, &set(9)), Err(StateError::VersionNotFound { version: 9, .. })));
    // Rolling back elsewhere keeps it; promoting it ends it.
    let activate = |version| Command::Rollback { tenant: DEFAULT_TENANT.into(), name: "f".into(), version };
    s.apply(8, &activate(1))?;
    assert_eq!(read(&s)?, (1, Some(Trial { version: 2, spec: canary }), Some(2)));
    s.apply(9, &activate(2))?;
    assert_eq!(read(&s)?, (2, None, None));
    // Abandoned: the active version alone.
    s.apply(10, &set(1))?;
    s.apply(11, &Command::SetTrial { tenant: DEFAULT_TENANT.into(), name: "f".into(), trial: None })?;
    assert_eq!(read(&s)?, (2, None, None));
    // A command from the log survives encoding (what replicas apply).
    let bytes = crate::codec::encode(&set(1)).map_err(|e| StateError::Storage(e.to_string()))?;
    let back: Command = crate::codec::decode(&bytes, |_| Err(crate::codec::CodecError::Decode("untagged".into())))
        .map_err(|e| StateError::Storage(e.to_string()))?;
    assert_eq!(back, set(1));
    Ok(())
}

#[test]
fn functions_stored_with_inline_versions_are_moved_at_start() -> Result<()> {
    let dir = tempfile::tempdir().map_err(|e| StateError::Storage(e.to_string()))?;
    {
        let s = State::open(dir.path())?;
        s.apply(1, &put(b"m"))?;
        // A function as stored before versions had records of their own.
        let version = |n: u64| Version { version: n, module: sha256_hex(b"m"), spec: spec(), created_at: n + 1 };
        let old = serde_json::json!({
            "tenant": DEFAULT_TENANT, "name": "old", "versions": [version(1), version(2), version(3)], "active": 2,
        });
        s.functions.insert(function_key(DEFAULT_TENANT, "old"), serde_json::to_vec(&old).expect("json"))?;
        s.meta.insert(APPLIED_KEY, &4u64.to_be_bytes())?;
        s.flush()?;
    }
    let s = reopen(dir.path())?;
    let f = s.function(DEFAULT_TENANT, "old")?.expect("kept");
    assert_eq!((f.active, f.latest, f.current.map(|v| v.version)), (2, 3, Some(2)));
    assert_eq!(s.versions(DEFAULT_TENANT, "old")?.iter().map(|v| v.version).collect::<Vec<_>>(), [1, 2, 3]);
    assert_eq!(s.apply(5, &deploy("old", b"m"))?, Applied::Deployed { version: 4 });
    Ok(())
}

#[test]
fn deploys_number_versions_and_rollback_switches_the_active_one() -> Result<()> {
    let s = State::temporary()?;
    assert_eq!(s.apply(1, &put(b"one"))?, Applied::ModuleStored { sha256: sha256_hex(b"one"), existed: false });
    assert_eq!(s.apply(2, &put(b"two"))?, Applied::ModuleStored { sha256: sha256_hex(b"two"), existed: false });
    assert_eq!(s.apply(3, &deploy("fraud", b"one"))?, Applied::Deployed { version: 1 });
    assert_eq!(s.apply(4, &deploy("fraud", b"two"))?, Applied::Deployed { version: 2 });
    let f = s.function(DEFAULT_TENANT, "fraud")?.expect("deployed");
    assert_eq!(f.active, 2);
    assert_eq!(f.active_version().map(|v| v.module.clone()), Some(sha256_hex(b"two")));
    let back = Command::Rollback { tenant: DEFAULT_TENANT.into(), name: "fraud".into(), version: 1 };
    assert_eq!(s.apply(5, &back)?, Applied::RolledBack { version: 1 });
    let f = s.function(DEFAULT_TENANT, "fraud")?.expect("still there");
    assert_eq!((f.active, s.versions(DEFAULT_TENANT, "fraud")?.len()), (1, 2), "rollback keeps every version");
    Ok(())
}

#[test]
fn a_module_is_stored_once_however_many_functions_use_it() -> Result<()> {
    let s = State::temporary()?;
    s.apply(1, &put(b"shared"))?;
    assert_eq!(s.apply(2, &put(b"shared"))?, Applied::ModuleStored { sha256: sha256_hex(b"shared"), existed: true });
    s.apply(3, &deploy("a", b"shared"))?;
    s.apply(4, &deploy("b", b"shared"))?;
    assert_eq!(s.module_count(), 1);
    assert_eq!(s.functions(DEFAULT_TENANT)?.len(), 2);
    Ok(())
}

#[test]
fn failed_commands_change_nothing_but_consume_their_index() -> Result<()> {
    let s = State::temporary()?;
    let missing = s.apply(1, &deploy("f", b"never uploaded"));
    assert!(matches!(missing, Err(StateError::ModuleNotFound { .. })), "{missing:?}");
    let lying = Command::PutModule { tenant: DEFAULT_TENANT.into(), sha256: sha256_hex(b"a"), bytes: b"b".to_vec() };
    assert!(matches!(s.apply(2, &lying), Err(StateError::ChecksumMismatch { .. })));
    let unknown = Command::Rollback { tenant: DEFAULT_TENANT.into(), name: "f".into(), version: 3 };
    assert!(matches!(s.apply(3, &unknown), Err(StateError::FunctionNotFound { .. })));
    s.apply(4, &put(b"m"))?;
    s.apply(5, &deploy("f", b"m"))?;
    let no_version = Command::Rollback { tenant: DEFAULT_TENANT.into(), name: "f".into(), version: 9 };
    assert!(matches!(s.apply(6, &no_version), Err(StateError::VersionNotFound { version: 9, .. })));
    assert_eq!(s.applied_index()?, 6);
    assert_eq!(s.module_count(), 1);
    assert_eq!(s.function(DEFAULT_TENANT, "f")?.map(|f| f.latest), Some(1));
    Ok(())
}

#[test]
fn replaying_an_applied_index_is_a_no_op() -> Result<()> {
    let s = State::temporary()?;
    s.apply(1, &put(b"m"))?;
    s.apply(2, &deploy("f", b"m"))?;
    assert_eq!(s.apply(2, &deploy("f", b"m"))?, Applied::AlreadyApplied);
    assert_eq!(s.apply(1, &put(b"m"))?, Applied::AlreadyApplied);
    assert_eq!(s.function(DEFAULT_TENANT, "f")?.map(|f| f.latest), Some(1));
    Ok(())
}

/// The state in `dir`, opened again: sled releases its lock on the files
/// shortly after the last handle drops, not at once.
fn reopen(dir: &Path) -> Result<State> {
    (0..200)
        .find_map(|_| {
            State::open(dir).ok().or_else(|| {
                std::thread::sleep(std::time::Duration::from_millis(10));
                None
            })
        })
        .ok_or_else(|| StateError::Storage("could not reopen".into()))
}

#[test]
fn state_survives_reopening() -> Result<()> {
    let dir = tempfile::tempdir().map_err(|e| StateError::Storage(e.to_string()))?;
    {
        let s = State::open(dir.path())?;
        s.apply(1, &put(b"m"))?;
        s.apply(2, &deploy("f", b"m"))?;
        s.flush()?;
    }
    let s = reopen(dir.path())?;
    assert_eq!(s.applied_index()?, 2);
    assert_eq!(s.module(&sha256_hex(b"m"))?, Some(b"m".to_vec()));
    assert_eq!(s.function(DEFAULT_TENANT, "f")?.map(|f| f.active), Some(1));
    Ok(())
}

#[test]
fn names_with_slashes_dots_or_odd_characters_are_refused() {
    for bad in ["", "a/b", "..", "a..b", ".hidden", "-x", "UPPER", "white space", "x".repeat(64).as_str(), "ü"] {
        assert!(validate_name(bad).is_err(), "{bad:?} should be refused");
    }
    for good in ["fraud", "fall-detect", "logreg_v2", "a.b", "0x"] {
        assert!(validate_name(good).is_ok(), "{good:?} should be accepted");
    }
    let s = State::temporary().expect("state");
    let bad = Command::Delete { tenant: DEFAULT_TENANT.into(), name: "../etc".into() };
    assert!(matches!(s.apply(1, &bad), Err(StateError::InvalidName { .. })));
}

#[test]
fn tenants_own_their_uploads_and_removing_one_removes_what_it_owned() -> Result<()> {
    let s = State::temporary()?;
    let deploy_as = |tenant: &str, name: &str, bytes: &[u8]| Command::Deploy {
        tenant: tenant.into(),
        name: name.into(),
        module: sha256_hex(bytes),
        spec: spec(),
        placement: None,
        trial: None,
    };
    assert!(matches!(s.apply(1, &put_for("acme", b"m")), Err(StateError::TenantNotFound { .. })));
    s.apply(2, &Command::CreateTenant { name: "acme".into(), quotas: Quotas::default() })?;
    let twice = s.apply(3, &Command::CreateTenant { name: "acme".into(), quotas: Quotas::default() });
    assert!(matches!(twice, Err(StateError::TenantExists { .. })), "{twice:?}");
    assert!(matches!(
        s.apply(4, &Command::CreateTenant { name: "default".into(), quotas: Quotas::default() }),
        Err(StateError::TenantExists { .. })
    ));
    assert_eq!(s.apply(5, &put(b"m"))?, Applied::ModuleStored { sha256: sha256_hex(b"m"), existed: false });
    // The same bytes from another tenant: stored once, but new to it.
    assert_eq!(s.apply(6, &put_for("acme", b"m"))?, Applied::ModuleStored { sha256: sha256_hex(b"m"), existed: false });
    assert_eq!(s.module_count(), 1);
    s.apply(7, &put(b"only-default"))?;
    let stolen = s.apply(8, &deploy_as("acme", "f", b"only-default"));
    assert!(matches!(stolen, Err(StateError::ModuleNotFound { .. })), "a tenant deploys only its uploads: {stolen:?}");
    s.apply(9, &deploy_as("acme", "f", b"m"))?;
    s.apply(10, &deploy("f", b"m"))?;
    let token = Command::CreateToken { sha256: "ab".repeat(32), tenant: Some("acme".into()), role: Role::Full };
    s.apply(11, &token)?;
    assert_eq!(s.routes_revision()?, 11, "a new token changes what the gateways accept");
    let orphan = Command::CreateToken { sha256: "cd".repeat(32), tenant: Some("nobody".into()), role: Role::Full };
    assert!(matches!(s.apply(12, &orphan), Err(StateError::TenantNotFound { .. })));
    assert_eq!(s.tokens()?.len(), 1);

    assert_eq!(s.apply(13, &Command::DeleteTenant { name: "acme".into() })?, Applied::TenantDeleted);
    assert_eq!(s.function("acme", "f")?, None);
    assert!(s.function(DEFAULT_TENANT, "f")?.is_some(), "another tenant's function of the same name stays");
    assert!(s.tokens()?.is_empty());
    assert!(!s.owns_module("acme", &sha256_hex(b"m"))?);
    assert!(s.owns_module(DEFAULT_TENANT, &sha256_hex(b"m"))?);
    assert_eq!(s.tenants()?.iter().map(|t| t.name.as_str()).collect::<Vec<_>>(), ["default"]);
    assert!(matches!(s.apply(14, &Command::DeleteTenant { name: "default".into() }), Err(StateError::DefaultTenant)));
    let gone = Command::RevokeToken { sha256: "ab".repeat(32) };
    assert!(matches!(s.apply(15, &gone), Err(StateError::TokenNotFound { .. })));
    Ok(())
}

#[test]
fn a_snapshot_restores_the_same_state_elsewhere() -> Result<()> {
    let a = State::temporary()?;
    a.apply(1, &put(b"m"))?;
    a.apply(2, &deploy("f", b"m"))?;
    a.apply(3, &deploy("g", b"m"))?;
    let (_, applied) = a.snapshot_data()?;
    assert_eq!(applied, 3);
    let b = State::temporary()?;
    b.apply(1, &put(b"stale"))?;
    b.apply(2, &deploy("old", b"stale"))?;
    a.apply(4, &Command::CreateTenant { name: "acme".into(), quotas: Quotas::default() })?;
    a.apply(5, &Command::CreateToken { sha256: "ab".repeat(32), tenant: Some("acme".into()), role: Role::ReadOnly })?;
    let (data, _) = a.snapshot_data()?;
    assert_eq!(b.restore(&data)?, 5);
    assert_eq!(b.tenants()?, a.tenants()?);
    assert_eq!(b.tokens()?, a.tokens()?);
    assert_eq!(b.functions(DEFAULT_TENANT)?, a.functions(DEFAULT_TENANT)?);
    assert_eq!(b.module(&sha256_hex(b"stale"))?, None, "restore replaces, not merges");
    assert_eq!(b.applied_index()?, 5);
    Ok(())
}

#[test]
fn oversized_modules_are_refused() {
    let s = State::temporary().expect("state");
    let big = vec![0u8; MAX_MODULE_BYTES + 1];
    let err = s.apply(1, &put(&big)).expect_err("too big");
    assert!(matches!(err, StateError::ModuleTooLarge { .. }));
    assert_eq!(s.module_count(), 0);
}

fn once(id: &str, command: Command) -> Command {
    Command::Once { id: id.into(), command: Box::new(command) }
}

#[test]
fn a_write_with_a_request_id_is_applied_once_and_answered_alike() -> Result<()> {
    let s = State::temporary()?;
    s.apply(1, &put(b"m"))?;
    let first = s.apply(2, &once("r1/0", deploy("f", b"m")))?;
    assert_eq!(first, Applied::Deployed { version: 1 });
    // The same request again, on a later index: answered, not applied.
    assert_eq!(s.apply(3, &once("r1/0", deploy("f", b"m")))?, first);
    assert_eq!(s.function(DEFAULT_TENANT, "f")?.map(|f| f.latest), Some(1));
    assert_eq!(s.applied_index()?, 3, "the duplicate still consumes its index");
    // Another id is another write.
    assert_eq!(s.apply(4, &once("r2/0", deploy("f", b"m")))?, Applied::Deployed { version: 2 });
    // A failed write is not remembered: its retry is applied (and fails) again.
    let exists = Command::CreateTenant { name: "default".into(), quotas: Quotas::default() };
    assert!(s.apply(5, &once("r3/0", exists.clone())).is_err());
    assert!(s.apply(6, &once("r3/0", exists)).is_err());

    // Snapshots carry the ids; they are forgotten after REQUEST_WINDOW entries.
    let copy = State::temporary()?;
    copy.restore(&s.snapshot_data()?.0)?;
    assert_eq!(copy.apply(7, &once("r1/0", deploy("f", b"m")))?, first);
    let far = 7 + REQUEST_WINDOW + 1024 - (7 + REQUEST_WINDOW) % 1024;
    assert_eq!(copy.apply(far, &once("r1/0", deploy("f", b"m")))?, Applied::Deployed { version: 3 });
    Ok(())
}

fn job_in_ranges(tasks: u32, range: u32) -> Command {
    use wasmgrid_api::{PartitionSpec, SpanSpec};
    let job = JobRecord { max_attempts: 2, ..JobRecord::sample("", 0) };
    let partitions: Vec<PartitionSpec> = (0..tasks)
        .map(|i| PartitionSpec {
            path: "/in/a".into(),
            format: "jsonl".into(),
            span: SpanSpec::Bytes { start: u64::from(i) * 10, end: u64::from(i + 1) * 10 },
            bytes: 10,
        })
        .collect();
    Command::Job(jobs::JobCommand::SubmitRanges { job: Box::new(job), partitions: Partitions(partitions), range })
}

fn finished(task: u32, attempt: u64, rows: u64, outcome: Option<&str>) -> Command {
    use wasmgrid_api::{Stage, TaskOutcome, TaskReport};
    let outcome = match outcome {
        None => TaskOutcome::Done { files: vec![format!("f{attempt}")], rows: vec![rows], records_in: rows, gpu_us: 0 },
        Some(error) => TaskOutcome::Failed { error: error.into() },
    };
    let report = TaskReport { job: "job-1".into(), stage: Stage::Map, task, attempt, outcome };
    Command::Job(jobs::JobCommand::Events { at_ms: 0, events: vec![jobs::TaskEvent { report, bytes: rows * 10 }] })
}

#[test]
fn a_job_in_ranges_records_one_winner_per_range_and_counts_its_tasks() -> Result<()> {
    let s = State::temporary()?;
    let Applied::JobSubmitted { id } = s.apply(1, &job_in_ranges(10, 4))? else { panic!("submitted") };
    assert_eq!((id.as_str(), s.job_range("job-1")?), ("job-1", 4));
    let won = |s: &State, index, command| match s.apply(index, &command) {
        Ok(Applied::TasksRecorded { won }) => won[0],
        other => panic!("{other:?}"),
    };
    // Tasks 4-7 are one range; a report at task 5 is not a range's.
    assert!(won(&s, 2, finished(4, 40, 4, None)));
    assert!(!won(&s, 3, finished(5, 50, 1, None)), "task 5 starts no range");
    assert!(!won(&s, 4, finished(4, 41, 4, None)), "the range has its winner");
    let job = s.job("job-1")?.expect("job");
    assert_eq!((job.map_done, job.rows_out, job.bytes_done), (4, 4, 40));
    // The last range is short (tasks 8-9); a failure names the range.
    assert!(!won(&s, 5, finished(8, 80, 0, Some("bad row"))));
    assert!(won(&s, 6, finished(8, 81, 2, None)));
    assert_eq!(s.job("job-1")?.expect("job").map_done, 6);
    assert!(won(&s, 7, finished(0, 1, 4, None)));
    let job = s.job("job-1")?.expect("job");
    assert_eq!((job.map_done, job.state), (10, wasmgrid_api::JobState::Committing), "every task has a winner");
    let records: Vec<u32> =
        s.task_records("job-1", Stage::Map)?.iter().filter(|(_, r)| r.winner.is_some()).map(|(t, _)| *t).collect();
    assert_eq!(records, [0, 4, 8], "one record per range, by its first task");

    // Twice failing fails the job, naming the range's tasks.
    let s = State::temporary()?;
    s.apply(1, &job_in_ranges(10, 4))?;
    s.apply(2, &finished(4, 1, 0, Some("bad row")))?;
    s.apply(3, &finished(4, 2, 0, Some("bad row")))?;
    let job = s.job("job-1")?.expect("job");
    assert_eq!(job.state, wasmgrid_api::JobState::Failed);
    assert_eq!(job.error.as_deref(), Some("map tasks 4-7 failed 2 time(s); last error: bad row"));
    Ok(())
}

fn trigger(name: &str, function: &str) -> wasmgrid_api::TriggerSpec {
    wasmgrid_api::TriggerSpec {
        name: name.into(),
        function: function.into(),
        source: wasmgrid_api::TriggerSource::Kafka {
            brokers: "kafka:9092".into(),
            topic: "accel".into(),
            group: "g".into(),
            output_topic: "falls".into(),
            dead_letter: None,
        },
        batch: 512,
        linger_ms: 5,
        max_attempts: 3,
    }
}

#[test]
fn a_trigger_calls_a_scorer_and_goes_with_its_tenant() -> Result<()> {
    let s = State::temporary()?;
    let create = |tenant: &str, spec| Command::PutTrigger { tenant: tenant.into(), spec };
    // No such function, then one that is not a scorer.
    assert!(matches!(s.apply(1, &create(DEFAULT_TENANT, trigger("t", "f"))), Err(StateError::FunctionNotFound { .. })));
    s.apply(2, &put(b"m"))?;
    let mapper = FunctionSpec { kind: "mapper".into(), ..spec() };
    let deploy_mapper = Command::Deploy {
        tenant: DEFAULT_TENANT.into(),
        name: "wc".into(),
        module: sha256_hex(b"m"),
        spec: mapper,
        placement: None,
        trial: None,
    };
    s.apply(3, &deploy_mapper)?;
    let refused = s.apply(4, &create(DEFAULT_TENANT, trigger("t", "wc")));
    assert!(matches!(&refused, Err(StateError::Conflict(m)) if m.contains("a trigger calls a scorer")), "{refused:?}");
    s.apply(5, &deploy("f", b"m"))?;
    assert_eq!(s.apply(6, &create(DEFAULT_TENANT, trigger("t", "f")))?, Applied::TriggerSet);
    let again = s.apply(7, &create(DEFAULT_TENANT, trigger("t", "f")));
    assert!(matches!(&again, Err(StateError::Conflict(m)) if m.contains("already exists")), "{again:?}");
    // A bad spec never reaches storage.
    let bad = wasmgrid_api::TriggerSpec { batch: 0, ..trigger("u", "f") };
    assert!(matches!(s.apply(8, &create(DEFAULT_TENANT, bad)), Err(StateError::Conflict(_))));
    let t = s.trigger(DEFAULT_TENANT, "t")?.expect("stored");
    assert_eq!((t.paused, t.created_at, t.spec.function.as_str()), (false, 6, "f"));
    let pause = Command::PauseTrigger { tenant: DEFAULT_TENANT.into(), name: "t".into(), paused: true };
    s.apply(9, &pause)?;
    assert!(s.trigger(DEFAULT_TENANT, "t")?.expect("stored").paused);
    assert!(pause.changes_routes(), "nodes learn of it with the route table");
    // A snapshot carries it.
    let (image, _) = s.snapshot_data()?;
    let other = State::temporary()?;
    other.restore(&image)?;
    assert_eq!(other.triggers(None)?, vec![s.trigger(DEFAULT_TENANT, "t")?.expect("stored")]);
    // Another tenant's trigger goes with its tenant; ours stays.
    s.apply(10, &Command::CreateTenant { name: "acme".into(), quotas: Quotas::default() })?;
    s.apply(11, &put_for("acme", b"m"))?;
    let acme_f = Command::Deploy {
        tenant: "acme".into(),
        name: "f".into(),
        module: sha256_hex(b"m"),
        spec: spec(),
        placement: None,
        trial: None,
    };
    s.apply(12, &acme_f)?;
    s.apply(13, &create("acme", trigger("t", "f")))?;
    assert_eq!(s.triggers(None)?.len(), 2);
    s.apply(14, &Command::DeleteTenant { name: "acme".into() })?;
    assert_eq!(s.triggers(None)?.iter().map(|t| t.tenant.as_str()).collect::<Vec<_>>(), vec![DEFAULT_TENANT]);
    let rm = Command::DeleteTrigger { tenant: DEFAULT_TENANT.into(), name: "t".into() };
    assert_eq!(s.apply(15, &rm)?, Applied::Deleted);
    assert!(matches!(s.apply(16, &rm), Err(StateError::TriggerNotFound { .. })));
    Ok(())
}
