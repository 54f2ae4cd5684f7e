//! The Kubernetes manifests in `deploy/kubernetes`: the base and every
//! overlay rendered with `kubectl kustomize`, validated against the
//! Kubernetes API's schemas (`kubernetes-validate --strict`, offline), then
//! checked for what a schema cannot see: Services that select the pods
//! they mean, the Raft peers the StatefulSet's pods really are, probes on
//! the health endpoints, a disruption budget that keeps a quorum, the
//! image's unprivileged user, and flags and variables the binary under
//! test accepts.
//!
//! Needs kubectl (with kustomize) and kubernetes-validate (in
//! `target/ci-venv`, as `deploy/test-setup.sh` installs it, or
//! `WASMGRID_KUBERNETES_VALIDATE`); without them the test says why and
//! passes, unless `WASMGRID_REQUIRE_KUBERNETES` is set.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

use serde_json::Value;

/// The API version the manifests are validated against: the oldest one
/// still maintained upstream that has every field they use.
const KUBERNETES: &str = "1.30.0";

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn validator() -> PathBuf {
    std::env::var_os("WASMGRID_KUBERNETES_VALIDATE")
        .map(PathBuf::from)
        .unwrap_or_else(|| root().join("target/ci-venv/bin/kubernetes-validate"))
}

/// Why the manifests cannot be checked here, if they cannot.
fn missing_tools() -> Option<String> {
    let kustomize = Command::new("kubectl").args(["kustomize", "--help"]).output();
    if !kustomize.is_ok_and(|o| o.status.success()) {
        return Some("no kubectl with kustomize".into());
    }
    if !validator().exists() {
        return Some(format!("no {} (pip install kubernetes-validate)", validator().display()));
    }
    None
}

/// The kustomization in `dir`, rendered, validated, as JSON objects.
fn render(dir: &Path) -> Vec<Value> {
    let yaml = common::succeed(Command::new("kubectl").arg("kustomize").arg(dir));
    let file = tempfile::NamedTempFile::new().expect("temp file");
    std::fs::write(file.path(), &yaml).expect("write the rendered manifests");
    common::succeed(Command::new(validator()).args(["--strict", "--quiet", "-k", KUBERNETES]).arg(file.path()));
    // The validator's Python has PyYAML (it reads YAML itself).
    let python = validator().with_file_name("python");
    let json = common::succeed(
        Command::new(python)
            .arg("-c")
            .arg("import json, sys, yaml; print(json.dumps([d for d in yaml.safe_load_all(open(sys.argv[1])) if d]))")
            .arg(file.path()),
    );
    serde_json::from_str(&json).expect("JSON from the rendered YAML")
}

fn of_kind<'a>(docs: &'a [Value], kind: &str) -> impl Iterator<Item = &'a Value> {
    docs.iter().filter(move |d| d["kind"] == kind)
}

fn named<'a>(docs: &'a [Value], kind: &str, name: &str) -> &'a Value {
    of_kind(docs, kind).find(|d| d["metadata"]["name"] == name).unwrap_or_else(|| panic!("no {kind} {name}"))
}

/// Whether `selector` (a map of labels) picks pods labelled `labels`.
fn selects(selector: &Value, labels: &Value) -> bool {
    let selector = selector.as_object().expect("selector");
    !selector.is_empty() && selector.iter().all(|(k, v)| &labels[k] == v)
}

fn env<'a>(container: &'a Value, name: &str) -> Option<&'a str> {
    container["env"].as_array()?.iter().find(|e| e["name"] == name)?["value"].as_str()
}

/// The serving command and its `--flags` in a container's shell script
/// (`exec wasmgrid SUBCOMMAND --flag ...`).
fn command_of(container: &Value) -> (String, Vec<String>) {
    let script = container["args"][0].as_str().expect("a script in args");
    let words: Vec<&str> = script.split_whitespace().collect();
    assert_eq!(&words[..2], ["exec", "wasmgrid"], "the script execs wasmgrid: {script}");
    let flags = words.iter().filter(|w| w.starts_with("--")).map(|w| w.split('=').next().unwrap_or(w).to_string());
    (words[2].to_string(), flags.collect())
}

/// Checks one pod template: security, probes, and that `wasmgrid` accepts
/// its flags and variables.
fn check_pod(workload: &Value) {
    let name = workload["metadata"]["name"].as_str().expect("name");
    let pod = &workload["spec"]["template"]["spec"];
    assert_eq!(pod["securityContext"]["runAsNonRoot"], true, "{name}");
    assert_eq!(pod["securityContext"]["runAsUser"], 10001, "{name}: the image's wasmgrid user");
    let container = &pod["containers"][0];
    let security = &container["securityContext"];
    assert_eq!(security["allowPrivilegeEscalation"], false, "{name}");
    assert_eq!(security["capabilities"]["drop"], serde_json::json!(["ALL"]), "{name}");
    let ports: Vec<&str> =
        container["ports"].as_array().expect("ports").iter().filter_map(|p| p["name"].as_str()).collect();
    for (probe, path) in [("readinessProbe", "/v1/ready"), ("livenessProbe", "/v1/health")] {
        let get = &container[probe]["httpGet"];
        assert_eq!(get["path"], path, "{name}: {probe}");
        assert_eq!(get["scheme"], "HTTPS", "{name}: {probe}");
        assert!(ports.contains(&get["port"].as_str().unwrap_or_default()), "{name}: {probe} on a named port");
    }
    // Every flag and WASMGRID_ variable is one the binary under test takes.
    let (subcommand, flags) = command_of(container);
    let help = common::ok_stdout(common::wasmgrid().args([subcommand.as_str(), "--help"]).output().expect("help"));
    for flag in &flags {
        assert!(
            help.contains(&format!("{flag} "))
                || help.contains(&format!("{flag}="))
                || help.contains(&format!("{flag}\n")),
            "{name}: `wasmgrid {subcommand}` has no {flag}"
        );
    }
    let script = container["args"][0].as_str().unwrap_or_default();
    for var in container["env"].as_array().expect("env").iter().filter_map(|e| e["name"].as_str()) {
        if var.starts_with("WASMGRID_") && !script.contains(&format!("${var}")) {
            assert!(help.contains(&format!("[env: {var}=")), "{name}: `wasmgrid {subcommand}` reads no {var}");
        }
    }
}

/// What every rendering must hold.
fn check(docs: &[Value]) {
    let workloads: Vec<&Value> = of_kind(docs, "StatefulSet").chain(of_kind(docs, "Deployment")).collect();
    let labels_of = |w: &Value| w["spec"]["template"]["metadata"]["labels"].clone();
    // Every Service selects exactly one workload's pods.
    for service in of_kind(docs, "Service") {
        let selector = &service["spec"]["selector"];
        let picked = workloads.iter().filter(|w| selects(selector, &labels_of(w))).count();
        assert_eq!(picked, 1, "Service {} selects one workload", service["metadata"]["name"]);
    }
    for workload in &workloads {
        assert!(selects(&workload["spec"]["selector"]["matchLabels"], &labels_of(workload)));
        check_pod(workload);
    }
    // Each StatefulSet's pods get stable names from a headless Service.
    for set in of_kind(docs, "StatefulSet") {
        let service = named(docs, "Service", set["spec"]["serviceName"].as_str().expect("serviceName"));
        assert_eq!(service["spec"]["clusterIP"], "None", "{} is headless", service["metadata"]["name"]);
        assert!(selects(&service["spec"]["selector"], &labels_of(set)));
    }

    // The control plane: its peers are its own pods, replica N on ordinal
    // N - 1; they find each other before they are ready; the disruption
    // budget keeps a quorum.
    let control = named(docs, "StatefulSet", "wasmgrid-control-plane");
    let replicas = control["spec"]["replicas"].as_u64().expect("replicas");
    let container = &control["spec"]["template"]["spec"]["containers"][0];
    let peers = env(container, "WASMGRID_PEERS").expect("WASMGRID_PEERS");
    let expected: Vec<String> = (0..replicas)
        .map(|i| format!("{}=https://wasmgrid-control-plane-{i}.wasmgrid-control-plane:7400", i + 1))
        .collect();
    assert_eq!(peers, expected.join(","));
    let script = container["args"][0].as_str().unwrap_or_default();
    assert!(script.contains(r#"--id "$((${HOSTNAME##*-} + 1))""#), "the replica id is the ordinal plus one");
    let headless = named(docs, "Service", "wasmgrid-control-plane");
    assert_eq!(headless["spec"]["publishNotReadyAddresses"], true);
    assert_eq!(control["spec"]["podManagementPolicy"], "Parallel", "one replica alone never becomes ready");
    let budget = named(docs, "PodDisruptionBudget", "wasmgrid-control-plane");
    assert_eq!(budget["spec"]["minAvailable"].as_u64(), Some(replicas / 2 + 1), "the budget keeps a quorum");
    assert!(selects(&budget["spec"]["selector"]["matchLabels"], &labels_of(control)));

    // Nodes reach the control plane through its client Service.
    let node = named(docs, "StatefulSet", "wasmgrid-node");
    let node_container = &node["spec"]["template"]["spec"]["containers"][0];
    let url = env(node_container, "WASMGRID_URL").expect("WASMGRID_URL");
    let client = named(docs, "Service", url.trim_start_matches("https://").split(':').next().unwrap_or_default());
    assert!(selects(&client["spec"]["selector"], &labels_of(control)));

    // The Secrets the guide tells operators to create.
    let mut secrets: Vec<&str> = workloads
        .iter()
        .flat_map(|w| w["spec"]["template"]["spec"]["volumes"].as_array().into_iter().flatten())
        .filter_map(|v| v["secret"]["secretName"].as_str())
        .collect();
    secrets.sort();
    secrets.dedup();
    let guide = std::fs::read_to_string(root().join("docs/guide/kubernetes.md")).expect("the Kubernetes guide");
    for secret in secrets {
        assert!(guide.contains(secret), "the guide says how to create the Secret {secret}");
    }
}

#[test]
fn the_kubernetes_manifests_validate_and_fit_together() {
    if let Some(why) = missing_tools() {
        assert!(
            std::env::var_os("WASMGRID_REQUIRE_KUBERNETES").is_none(),
            "WASMGRID_REQUIRE_KUBERNETES is set, but {why}"
        );
        eprintln!("skipping the Kubernetes manifests test: {why}");
        return;
    }
    let dir = root().join("deploy/kubernetes");
    let base = render(&dir.join("base"));
    check(&base);
    let mut overlays = 0;
    for entry in std::fs::read_dir(dir.join("overlays")).expect("overlays") {
        let docs = render(&entry.expect("overlay").path());
        check(&docs);
        overlays += 1;
    }
    assert!(overlays >= 2, "the gpu and production overlays");

    let gpu = render(&dir.join("overlays/gpu"));
    let node = &named(&gpu, "StatefulSet", "wasmgrid-node")["spec"]["template"]["spec"];
    assert_eq!(node["containers"][0]["resources"]["limits"]["nvidia.com/gpu"], 1, "a GPU per node pod");
    assert!(node["containers"][0]["image"].as_str().is_some_and(|i| i.ends_with(":gpu")), "the GPU image");
    let production = render(&dir.join("overlays/production"));
    assert_eq!(named(&production, "StatefulSet", "wasmgrid-node")["spec"]["replicas"], 4);
}

#[test]
fn a_broken_manifest_is_caught() {
    if missing_tools().is_some() {
        return;
    }
    // The checks above must be able to fail: a misspelt field fails the
    // schema, and a peer list that misses a replica fails `check`.
    let yaml = common::succeed(Command::new("kubectl").arg("kustomize").arg(root().join("deploy/kubernetes/base")));
    let file = tempfile::NamedTempFile::new().expect("temp file");
    std::fs::write(file.path(), yaml.replace("readinessProbe", "readinesProbe")).expect("write");
    let out = Command::new(validator())
        .args(["--strict", "--quiet", "-k", KUBERNETES])
        .arg(file.path())
        .output()
        .expect("runs");
    assert!(!out.status.success(), "a misspelt field passed the schema");

    let mut docs = render(&root().join("deploy/kubernetes/base"));
    for d in docs.iter_mut().filter(|d| d["kind"] == "StatefulSet" && d["metadata"]["name"] == "wasmgrid-control-plane")
    {
        d["spec"]["replicas"] = 5.into();
    }
    let caught = std::panic::catch_unwind(|| check(&docs));
    assert!(caught.is_err(), "five replicas with three peers passed the checks");
}
