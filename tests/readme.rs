//! The README's commands stay true: the demo script runs, and every
//! `wasmgrid` command of the tour runs as written (with the paths pointed at
//! this build's binaries and a temporary demo directory).

mod common;

use std::path::Path;
use std::process::Command;

use wasmgrid_test_artifacts as guests;

fn readme() -> String {
    std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("README.md")).expect("README.md")
}

/// The first code block after `marker`.
fn block_after(text: &str, marker: &str) -> String {
    let rest = &text[text.find(marker).unwrap_or_else(|| panic!("README has {marker}"))..];
    let start = rest.find("```").expect("a code block");
    let body = &rest[start..];
    let body = &body[body.find('\n').expect("fence line") + 1..];
    body[..body.find("```").expect("closing fence")].trim().to_string()
}

/// Every `wasmgrid ...` command in the README's shell blocks, continuation lines joined.
fn tour_commands(text: &str) -> Vec<String> {
    let mut commands = Vec::new();
    let mut in_sh = false;
    let mut current = String::new();
    for line in text.lines() {
        if line.starts_with("```") {
            in_sh = line.trim() == "```sh";
            continue;
        }
        if !in_sh {
            continue;
        }
        let l = line.trim();
        if current.is_empty() && !l.starts_with("wasmgrid ") {
            continue;
        }
        current.push_str(l.trim_end_matches('\\'));
        current.push(' ');
        if !l.ends_with('\\') {
            commands.push(std::mem::take(&mut current));
        }
    }
    commands
}

fn guests_dir() -> String {
    Path::new(guests::LOGREG).parent().expect("guest dir").display().to_string()
}

fn run_demo(demo: &Path) -> String {
    let script = block_after(&readme(), "<!-- demo-command -->");
    assert_eq!(script, "./deploy/demo.sh");
    let out = Command::new("bash")
        .arg(Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy/demo.sh"))
        .env("WASMGRID", env!("CARGO_BIN_EXE_wasmgrid"))
        .env("GUESTS", guests_dir())
        .env("DEMO_DIR", demo)
        .env("DEV_DIR", demo.join("dev"))
        .env("DEV_LISTEN", "127.0.0.1:0")
        .env("DEV_GATEWAY", "127.0.0.1:0")
        .env("WASMGRID_CACHE_DIR", demo.join("cache"))
        .env("NO_COLOR", "1")
        .output()
        .expect("bash runs");
    let (stdout, stderr) = common::text(&out);
    assert!(out.status.success(), "demo failed\nstdout:\n{stdout}\nstderr:\n{stderr}");
    stdout
}

#[test]
fn demo_script_counts_words_and_scores_transactions() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let demo = tmp.path().join("demo");
    let stdout = run_demo(&demo);
    // The vocabulary is skewed toward its first word.
    let top = stdout.lines().find(|l| l.ends_with(" grid")).expect("a count for `grid`");
    let top_count: u64 = top.split(' ').next().and_then(|n| n.parse().ok()).expect("a number");
    let total: u64 = std::fs::read_dir(demo.join("wordcount"))
        .expect("wordcount output")
        .map(|e| e.expect("entry").path())
        .filter(|p| p.extension().is_some_and(|e| e == "jsonl"))
        .flat_map(|p| std::fs::read_to_string(p).expect("read").lines().map(str::to_string).collect::<Vec<_>>())
        .map(|l| serde_json::from_str::<serde_json::Value>(&l).expect("json")["count"].as_u64().expect("count"))
        .sum();
    assert_eq!(total, 8 * 2000 * 10, "every word of every file counted once");
    assert!(top_count > total / 4, "{top_count} of {total}");
    assert!(stdout.contains("id,amount,age_days,foreign,score"), "{stdout}");
    // The grid part: version 1 scores, version 2 scores, then the rollback.
    let scores: Vec<f64> = stdout
        .lines()
        .filter(|l| l.starts_with("{\"amount\":420"))
        .map(|l| serde_json::from_str::<serde_json::Value>(l).expect("row")["score"].as_f64().expect("score"))
        .collect();
    let sigmoid = |z: f64| 1.0 / (1.0 + (-z).exp());
    assert_eq!(scores.len(), 2, "{stdout}");
    assert!((scores[0] - sigmoid(-3.0 + 4.2 + 2.0)).abs() < 1e-9, "{stdout}");
    assert!((scores[1] - sigmoid(-4.0 + 8.4 + 1.0)).abs() < 1e-9, "{stdout}");
    assert!(stdout.contains("fraud now serves version 1"), "{stdout}");
    let scored = std::fs::read_to_string(demo.join("scores/part-00000.csv")).expect("scores");
    assert_eq!(scored.lines().count(), 1001);
}

#[test]
fn tour_commands_run_as_written() {
    let text = readme();
    let commands = tour_commands(&text);
    assert!(commands.len() >= 3, "the tour has wasmgrid commands: {commands:?}");
    let tmp = tempfile::tempdir().expect("tempdir");
    let demo = tmp.path().join("demo");
    run_demo(&demo);
    // The tour's `wasmgrid dev`, on free ports, started where the commands
    // run: they find its admin token under .wasmgrid, as a reader's do.
    let work = tmp.path().join("work");
    let mut dev = common::grid::Dev::start(&work.join(".wasmgrid"));
    let mut url = dev.control_plane.clone();
    // Set once the tour restarts `wasmgrid dev --tls`: the CA it printed.
    let mut ca = None;
    for command in commands {
        if command.trim() == "wasmgrid dev" {
            continue;
        }
        if command.trim() == "wasmgrid dev --tls" {
            drop(dev);
            dev = common::grid::Dev::start_with(&work.join(".wasmgrid"), &["--tls"]);
            assert!(dev.control_plane.starts_with("https://"), "{}", dev.control_plane);
            url = dev.control_plane.clone();
            ca = Some(work.join(".wasmgrid/tls/ca.pem"));
            continue;
        }
        let shell = command
            .replace("target/wasm32-wasip2/guest", &guests_dir())
            .replace(".wasmgrid/demo", &demo.display().to_string())
            .replace("https://127.0.0.1:7400", &url);
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
        let out = loop {
            let out = Command::new("bash")
                .arg("-c")
                .arg(format!("wasmgrid() {{ \"$WASMGRID\" \"$@\"; }}; {shell}"))
                .current_dir(&work)
                .env_remove("WASMGRID_TOKEN")
                .env_remove("WASMGRID_TOKEN_FILE")
                .env("WASMGRID", env!("CARGO_BIN_EXE_wasmgrid"))
                .env("WASMGRID_CACHE_DIR", demo.join("cache"))
                .env("WASMGRID_URL", &url)
                .envs(ca.iter().map(|ca| ("WASMGRID_CA", ca)))
                .output()
                .expect("bash runs");
            // A node compiles a new function before serving it: `invoke` may wait.
            if out.status.success() || !shell.contains("wasmgrid invoke") || std::time::Instant::now() > deadline {
                break out;
            }
            std::thread::sleep(std::time::Duration::from_millis(100));
        };
        let (stdout, stderr) = common::text(&out);
        assert!(out.status.success(), "`{command}` failed\nstdout:\n{stdout}\nstderr:\n{stderr}");
        if let Some(output_dir) = shell.split("--output ").nth(1).and_then(|s| s.split_whitespace().next()) {
            assert!(Path::new(output_dir).join("_SUCCESS").exists(), "`{command}` wrote {output_dir}/_SUCCESS");
        }
        if shell.contains("wasmgrid invoke fraud") {
            assert!(stdout.contains("\"score\":0.96083"), "{stdout}");
        }
    }
    // The TLS step ran, and without the CA the same call is refused.
    assert!(ca.is_some(), "the tour restarts `wasmgrid dev --tls`");
    let out = Command::new(env!("CARGO_BIN_EXE_wasmgrid"))
        .args(["functions", "ls", "--url", &url])
        .current_dir(&work)
        .env_remove("WASMGRID_CA")
        .output()
        .expect("wasmgrid runs");
    let (_, stderr) = common::text(&out);
    assert!(!out.status.success() && stderr.contains("certificate"), "{stderr}");
}
