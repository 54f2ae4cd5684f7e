//! Artifacts: files functions read by name, stored once under their
//! sha256 on every control-plane replica, outside the consensus log.
//! A 20 MB file deployed with `--artifact` is uploaded in chunks, reaches
//! every replica byte for byte (copied from a peer), is listed, streams
//! back from a follower, is not uploaded again, and another tenant can
//! neither read it nor claim it by its hash.

mod common;

use std::path::Path;
use std::time::{Duration, Instant};

use common::grid::Replicas;
use common::grid_ok;
use sha2::{Digest, Sha256};
use wasmgrid_test_artifacts as guests;

fn as_tenant(urls: &str, token: &str, args: &[&str]) -> std::process::Output {
    common::wasmgrid().env("WASMGRID_TOKEN", token).args(args).args(["--url", urls]).output().expect("runs")
}

/// `n` bytes that do not compress, from `seed`.
fn noise(n: usize, seed: u64) -> Vec<u8> {
    let mut rng = common::Rng::new(seed);
    let mut out = Vec::with_capacity(n + 8);
    while out.len() < n {
        out.extend_from_slice(&rng.next().to_le_bytes());
    }
    out.truncate(n);
    out
}

fn sha256_of(path: &Path) -> String {
    hex::encode(Sha256::digest(std::fs::read(path).expect("read")))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_artifact_is_uploaded_in_chunks_and_copied_to_every_replica_outside_the_log() {
    let replicas = Replicas::start(3, 1000);
    replicas.wait_leader(Duration::from_secs(15)).await;
    let urls = replicas.urls();
    let dir = replicas.dir.path();
    let model = dir.join("model.bin");
    std::fs::write(&model, noise(20_000_123, 5)).expect("model");
    let sha256 = sha256_of(&model);
    let flag = format!("model={}", model.display());

    let out = grid_ok(&urls, &["deploy", "echo", guests::ECHO_SCORER, "--artifact", &flag]);
    assert!(out.contains(&format!("artifact model: {} (20000123 bytes, uploaded)", &sha256[..12])), "{out}");
    let versions = grid_ok(&urls, &["functions", "versions", "echo", "--json"]);
    assert!(versions.contains("\"model\"") && versions.contains(&sha256), "{versions}");

    // On every replica, byte for byte; none of them holds it in its log.
    let deadline = Instant::now() + Duration::from_secs(30);
    for id in 1..=3 {
        let stored = replicas.data(id).join("blobs").join(&sha256);
        while std::fs::metadata(&stored).map_or(0, |m| m.len()) != 20_000_123 {
            assert!(Instant::now() < deadline, "replica {id} never got the artifact");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        assert_eq!(sha256_of(&stored), sha256, "replica {id}");
        let size: u64 = walk(&replicas.data(id))
            .into_iter()
            .filter(|p| !p.starts_with(replicas.data(id).join("blobs")))
            .map(|p| std::fs::metadata(p).map_or(0, |m| m.len()))
            .sum();
        assert!(size < 10_000_000, "replica {id} holds {size} bytes besides its blobs: the log carried the artifact");
    }

    let listed = grid_ok(&urls, &["artifacts", "ls"]);
    assert!(listed.contains(&sha256) && listed.contains("20000123"), "{listed}");
    // Streamed back by a follower.
    let leader = replicas.wait_leader(Duration::from_secs(5)).await;
    let follower = (1..=3).find(|id| *id != leader).expect("a follower");
    let response = common::http()
        .get(format!("{}/v1/artifacts/{sha256}", replicas.url(follower)))
        .headers(common::auth_headers())
        .send()
        .await
        .expect("download");
    assert_eq!(response.status(), 200);
    let body = response.bytes().await.expect("body");
    assert_eq!(hex::encode(Sha256::digest(&body)), sha256);

    // Deployed again: not uploaded again.
    let out = grid_ok(&urls, &["deploy", "echo", guests::ECHO_SCORER, "--artifact", &flag]);
    assert!(out.contains("20000123 bytes, already stored"), "{out}");

    // Another tenant: cannot read it, nor claim it by naming its hash.
    grid_ok(&urls, &["tenants", "create", "other"]);
    let token = grid_ok(&urls, &["tokens", "create", "--tenant", "other"]).trim().to_string();
    let response = common::http()
        .get(format!("{}/v1/artifacts/{sha256}", replicas.url(leader)))
        .bearer_auth(&token)
        .send()
        .await
        .expect("download");
    assert_eq!(response.status(), 404);
    let claim = common::http()
        .post(format!("{}/v1/artifacts/{sha256}", replicas.url(leader)))
        .bearer_auth(&token)
        .json(&serde_json::json!({"size": 20_000_123}))
        .send()
        .await
        .expect("commit");
    assert_eq!(claim.status(), 400, "{}", claim.text().await.unwrap_or_default());
    common::ok(as_tenant(&urls, &token, &["deploy", "f", guests::ECHO_SCORER]));
    let module = sha256_of(Path::new(guests::ECHO_SCORER));
    let deploy = common::http()
        .post(format!("{}/v1/functions/f/versions", replicas.url(leader)))
        .bearer_auth(&token)
        .json(&serde_json::json!({"module": module, "artifacts": {"model": sha256}}))
        .send()
        .await
        .expect("deploy");
    assert_eq!(deploy.status(), 404);
    let text = deploy.text().await.unwrap_or_default();
    assert!(text.contains(&format!("artifact `model`: no artifact with sha256 {sha256}; upload it first")), "{text}");

    // A chunk that skips ahead is refused, naming where the upload stands.
    let other = noise(1000, 9);
    let name = hex::encode(Sha256::digest(&other));
    let put = |offset: usize, bytes: Vec<u8>| {
        common::http()
            .put(format!("{}/v1/artifacts/{name}/chunks?offset={offset}", replicas.url(leader)))
            .bearer_auth(&token)
            .body(bytes)
            .send()
    };
    assert_eq!(put(0, other[..400].to_vec()).await.expect("put").status(), 200);
    let gap = put(600, other[600..].to_vec()).await.expect("put");
    assert_eq!(gap.status(), 409);
    assert!(gap.text().await.unwrap_or_default().contains("holds 400 bytes; a chunk at offset 600"));
}

fn walk(dir: &Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let path = entry.path();
        if path.is_dir() {
            out.extend(walk(&path));
        } else {
            out.push(path);
        }
    }
    out
}
