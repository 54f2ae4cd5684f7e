//! The container image and the compose cluster, for real: the image built
//! from `deploy/Dockerfile` (its `prebuilt` stage, with the binary under
//! test), then `deploy/compose.yaml` as written: three control-plane
//! replicas and two nodes on a private network, TLS between them with the
//! CA the `setup` service makes, the nodes enrolled by `enroll`. Every
//! command goes through the compose network (`docker-compose run cli ...`),
//! except one call from the host through a published port.
//!
//! Needs Docker, docker-compose and the base image the Dockerfile names
//! (`deploy/docker/debian-base.sh` makes it from Debian's packages); without
//! them the test says why and passes, unless `WASMGRID_REQUIRE_DOCKER` is
//! set (CI, through `deploy/test-setup.sh`).

mod common;

use std::path::PathBuf;
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use common::grid::free_port;
use common::text;
use wasmgrid_test_artifacts as guests;

const BASE_IMAGE: &str = "debian:bookworm-slim";

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// Why containers cannot run here, if they cannot.
fn missing_tools() -> Option<String> {
    let works = |program: &str, args: &[&str]| {
        Command::new(program).args(args).output().map(|o| o.status.success()).unwrap_or(false)
    };
    if !works("docker", &["info"]) {
        return Some("Docker is not running (or not installed)".into());
    }
    if !works("docker-compose", &["version"]) {
        return Some("docker-compose is not installed".into());
    }
    if !works("docker", &["image", "inspect", BASE_IMAGE]) {
        return Some(format!("no {BASE_IMAGE} image: make it with deploy/docker/debian-base.sh"));
    }
    None
}

/// The image, built from deploy/Dockerfile's `prebuilt` stage with the
/// binary under test (its debug info stripped: the image's size is what a
/// release build gives).
struct Image(String);

impl Image {
    fn build(tag: &str) -> Image {
        let context = tempfile::tempdir().expect("build context");
        let binary = context.path().join("wasmgrid");
        let stripped = Command::new("objcopy")
            .args(["--strip-debug", env!("CARGO_BIN_EXE_wasmgrid")])
            .arg(&binary)
            .status()
            .is_ok_and(|s| s.success());
        if !stripped {
            std::fs::copy(env!("CARGO_BIN_EXE_wasmgrid"), &binary).expect("copy the binary");
        }
        let mut build = Command::new("docker");
        build.args(["build", "--quiet", "--target", "prebuilt", "-t", tag, "-f"]);
        build.arg(root().join("deploy/Dockerfile")).arg(context.path());
        common::succeed(&mut build);
        Image(tag.to_string())
    }
}

impl Drop for Image {
    fn drop(&mut self) {
        let _ = Command::new("docker").args(["image", "rm", "--force", &self.0]).output();
    }
}

/// A running `deploy/compose.yaml` project; taken down (volumes too) on drop.
struct Compose {
    project: String,
    env: Vec<(String, String)>,
}

impl Compose {
    fn command(&self) -> Command {
        let mut command = Command::new("docker-compose");
        command.arg("--file").arg(root().join("deploy/compose.yaml")).args(["--project-name", &self.project]);
        command.envs(self.env.iter().map(|(k, v)| (k.as_str(), v.as_str())));
        command
    }

    fn compose(&self, args: &[&str]) -> String {
        common::succeed(self.command().args(args))
    }

    /// `wasmgrid ARGS` in the `cli` service, inside the network.
    fn cli(&self, args: &[&str]) -> Output {
        self.command().args(["run", "--rm", "-T", "cli"]).args(args).output().expect("docker-compose runs")
    }

    fn cli_ok(&self, args: &[&str]) -> String {
        let out = self.cli(args);
        let (stdout, stderr) = text(&out);
        assert!(
            out.status.success(),
            "wasmgrid {args:?} in the cli service failed\nstdout:\n{stdout}\nstderr:\n{stderr}"
        );
        stdout
    }

    /// A file from the `secrets` volume.
    fn secret(&self, name: &str) -> String {
        let path = format!("/etc/wasmgrid/secrets/{name}");
        self.compose(&["run", "--rm", "-T", "--entrypoint", "cat", "cli", &path])
    }

    fn status(&self) -> Option<serde_json::Value> {
        let out = self.cli(&["cluster", "status", "--json"]);
        out.status.success().then(|| serde_json::from_slice(&out.stdout).ok()).flatten()
    }

    /// Waits until a replica other than `not` leads and every replica in
    /// `caught_up` has everything the leader has; returns the leader.
    fn wait_leader(&self, not: Option<u64>, caught_up: &[u64], within: Duration) -> u64 {
        let deadline = Instant::now() + within;
        loop {
            if let Some(status) = self.status()
                && let Some(leader) = status["leader"].as_u64()
                && Some(leader) != not
            {
                let lag = |id: u64| {
                    status["members"]
                        .as_array()
                        .and_then(|m| m.iter().find(|m| m["id"] == id))
                        .map(|m| m["lag"].clone())
                };
                if caught_up.iter().all(|id| lag(*id) == Some(serde_json::json!(0))) {
                    return leader;
                }
            }
            assert!(
                Instant::now() < deadline,
                "no leader (other than {not:?}) with {caught_up:?} caught up in {within:?}"
            );
            std::thread::sleep(Duration::from_millis(500));
        }
    }

    fn logs(&self) -> String {
        let out = self.command().args(["logs", "--no-color", "--tail", "40"]).output().expect("logs");
        String::from_utf8_lossy(&out.stdout).into_owned()
    }
}

impl Drop for Compose {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("--- compose logs ---\n{}", self.logs());
        }
        let _ = self.command().args(["down", "--volumes", "--remove-orphans", "--timeout", "5"]).output();
    }
}

/// A logistic-regression model over feature `x` as logreg's config.
fn model(weight: f64) -> String {
    format!(r#"model={{"features":["x"],"weights":[{weight}],"bias":0}}"#)
}

fn sigmoid(z: f64) -> f64 {
    1.0 / (1.0 + (-z).exp())
}

/// The score `wasmgrid invoke --json` printed for one row.
fn score_of(stdout: &str) -> f64 {
    let answer: serde_json::Value = serde_json::from_str(stdout).unwrap_or_else(|e| panic!("{e}: {stdout}"));
    answer["rows"][0]["score"].as_f64().unwrap_or_else(|| panic!("no score in {stdout}"))
}

#[test]
fn the_image_runs_the_compose_cluster_through_a_leader_kill() {
    if let Some(why) = missing_tools() {
        assert!(std::env::var_os("WASMGRID_REQUIRE_DOCKER").is_none(), "WASMGRID_REQUIRE_DOCKER is set, but {why}");
        eprintln!("skipping the container test: {why}");
        return;
    }
    let project = format!("wgtest{}", std::process::id());
    let image = Image::build(&format!("wasmgrid-test:{project}"));
    let user =
        common::succeed(Command::new("docker").args(["image", "inspect", "--format", "{{.Config.User}}", &image.0]));
    assert_eq!(user.trim(), "wasmgrid", "the image runs as an unprivileged user");

    // Job inputs, outputs and the components, in a host directory that is
    // /data in every container.
    let jobs = tempfile::tempdir().expect("jobs dir");
    let corpus = jobs.path().join("corpus");
    common::write_corpus(&corpus, 6, 3000, 7);
    std::fs::create_dir(jobs.path().join("wasm")).expect("wasm dir");
    for (name, path) in
        [("logreg", guests::LOGREG), ("map", guests::WORDCOUNT_MAP), ("reduce", guests::WORDCOUNT_REDUCE)]
    {
        std::fs::copy(path, jobs.path().join(format!("wasm/{name}.wasm"))).expect("copy a component");
    }
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(jobs.path(), std::fs::Permissions::from_mode(0o777)).expect("chmod");
    }
    let (cp1_port, node1_port) = (free_port(), free_port());
    let compose = Compose {
        project,
        env: vec![
            ("WASMGRID_IMAGE".into(), image.0.clone()),
            ("WASMGRID_JOBS".into(), jobs.path().display().to_string()),
            ("WASMGRID_PORT_CP1".into(), cp1_port.to_string()),
            ("WASMGRID_PORT_CP2".into(), free_port().to_string()),
            ("WASMGRID_PORT_CP3".into(), free_port().to_string()),
            ("WASMGRID_PORT_NODE1".into(), node1_port.to_string()),
            ("WASMGRID_PORT_NODE2".into(), free_port().to_string()),
        ],
    };
    compose.compose(&["up", "--detach", "--quiet-pull"]);
    let leader = compose.wait_leader(None, &[1, 2, 3], Duration::from_secs(60));

    // Both nodes joined with the token `enroll` made.
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let listing = compose.cli(&["nodes", "ls", "--json"]);
        let alive = serde_json::from_slice::<serde_json::Value>(&listing.stdout)
            .ok()
            .and_then(|v| v["nodes"].as_array().map(|n| n.iter().filter(|n| n["state"] == "alive").count()));
        if alive == Some(2) {
            break;
        }
        assert!(Instant::now() < deadline, "two alive nodes within 60 s: {:?}", text(&listing));
        std::thread::sleep(Duration::from_millis(500));
    }

    // Per request, through each node's gateway, over TLS.
    compose.cli_ok(&["deploy", "score", "/data/wasm/logreg.wasm", "--config", &model(1.5)]);
    for node in ["https://node1:7401", "https://node2:7401"] {
        let answer = compose.cli_ok(&["invoke", "score", "--node", node, "--json", "--data", r#"{"x": 2.0}"#]);
        assert!((score_of(&answer) - sigmoid(3.0)).abs() < 1e-12, "{node} answered {answer}");
    }
    // From the host, through node 1's published port, trusting the CA.
    let secrets = tempfile::tempdir().expect("secrets");
    std::fs::write(secrets.path().join("ca.pem"), compose.secret("ca.pem")).expect("ca.pem");
    let admin = compose.secret("admin-token");
    let out = common::wasmgrid()
        .env("WASMGRID_CA", secrets.path().join("ca.pem"))
        .env("WASMGRID_TOKEN", admin.trim())
        .env("WASMGRID_URL", format!("https://localhost:{cp1_port}"))
        .args(["invoke", "score", "--json", "--data", r#"{"x": 2.0}"#, "--node"])
        .arg(format!("https://localhost:{node1_port}"))
        .output()
        .expect("wasmgrid runs");
    assert!(out.status.success(), "invoke from the host: {:?}", text(&out));
    assert!((score_of(&text(&out).0) - sigmoid(3.0)).abs() < 1e-12);

    // A batch job over the shared volume.
    compose.cli_ok(&["deploy", "wc-map", "/data/wasm/map.wasm"]);
    compose.cli_ok(&["deploy", "wc-reduce", "/data/wasm/reduce.wasm"]);
    let expected = common::count_words(&corpus);
    let submit = |out: &str| {
        compose.cli_ok(&[
            "job",
            "submit",
            "wc-map",
            "--input",
            "/data/corpus",
            "--output",
            out,
            "--reduce",
            "wc-reduce",
            "--reduce-partitions",
            "2",
            "--partition-size",
            "2KiB",
            "--wait",
        ])
    };
    submit("/data/counts-1");
    assert_eq!(common::published_counts(&jobs.path().join("counts-1")), expected, "the job's counts");

    // `docker kill` of the leader's container: another replica leads, takes
    // writes, and the grid keeps serving and running jobs.
    compose.compose(&["kill", &format!("cp{leader}")]);
    let others: Vec<u64> = [1, 2, 3].into_iter().filter(|id| *id != leader).collect();
    let next = compose.wait_leader(Some(leader), &[], Duration::from_secs(30));
    assert!(others.contains(&next));
    compose.cli_ok(&["deploy", "score", "/data/wasm/logreg.wasm", "--config", &model(-0.5)]);
    let deadline = Instant::now() + Duration::from_secs(30);
    for node in ["https://node1:7401", "https://node2:7401"] {
        loop {
            let answer = compose.cli_ok(&["invoke", "score", "--node", node, "--json", "--data", r#"{"x": 2.0}"#]);
            if (score_of(&answer) - sigmoid(-1.0)).abs() < 1e-12 {
                break;
            }
            assert!(Instant::now() < deadline, "{node} still serves the old version: {answer}");
            std::thread::sleep(Duration::from_millis(200));
        }
    }
    submit("/data/counts-2");
    assert_eq!(common::published_counts(&jobs.path().join("counts-2")), expected, "the counts after the leader's kill");

    // The killed replica comes back from its volume and catches up.
    compose.compose(&["start", &format!("cp{leader}")]);
    compose.wait_leader(None, &[1, 2, 3], Duration::from_secs(60));
    let versions = compose.cli_ok(&["functions", "versions", "score", "--json"]);
    assert!(versions.contains("\"version\": 2"), "two versions of score: {versions}");
}
