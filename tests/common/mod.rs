//! Shared helpers for end-to-end tests: run the real `wasmgrid` binary and
//! generate data sets.

#![allow(dead_code)]

pub mod flights;
pub mod grid;
pub mod kafka;
pub mod load;
pub mod nats;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

/// Environment every `wasmgrid` process of this test binary gets (an S3
/// endpoint and its credentials, for example).
pub static EXTRA_ENV: std::sync::Mutex<Vec<(String, String)>> = std::sync::Mutex::new(Vec::new());

/// The admin token of every grid the tests start (written to the admin
/// token file before the control plane starts, so it is used instead of a
/// new one). Every `wasmgrid` process gets it as `WASMGRID_TOKEN`.
pub const TOKEN: &str = "wgt_0000000000000000000000000000000000000000000000000000000000test";

/// `Authorization` for [`TOKEN`], for raw HTTP clients.
pub fn auth_headers() -> reqwest::header::HeaderMap {
    let mut headers = reqwest::header::HeaderMap::new();
    headers.insert(reqwest::header::AUTHORIZATION, format!("Bearer {TOKEN}").parse().expect("header"));
    headers
}

/// An HTTP client that sends the admin token.
pub fn http() -> reqwest::Client {
    reqwest::Client::builder().default_headers(auth_headers()).build().expect("http client")
}

/// Writes [`TOKEN`] as the admin token file `path` (mode 0600).
pub fn write_token(path: &Path) {
    use std::os::unix::fs::PermissionsExt;
    std::fs::create_dir_all(path.parent().expect("parent")).expect("token dir");
    std::fs::write(path, format!("{TOKEN}\n")).expect("token file");
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)).expect("chmod");
}

/// The `wasmgrid` binary under test.
pub fn wasmgrid() -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_wasmgrid"));
    cmd.env_remove("WASMGRID_LOG").env_remove("WASMGRID_TOKEN_FILE").env("NO_COLOR", "1").env("WASMGRID_TOKEN", TOKEN);
    if let Ok(extra) = EXTRA_ENV.lock() {
        cmd.envs(extra.iter().map(|(k, v)| (k.as_str(), v.as_str())));
    }
    cmd
}

/// Runs `wasmgrid args...` with its compiled cache in `cache`.
pub fn run_in(cache: &Path, args: &[&str]) -> Output {
    wasmgrid().env("WASMGRID_CACHE_DIR", cache).args(args).output().expect("wasmgrid runs")
}

/// Stdout and stderr of a run, for assertion messages.
pub fn text(out: &Output) -> (String, String) {
    (String::from_utf8_lossy(&out.stdout).into_owned(), String::from_utf8_lossy(&out.stderr).into_owned())
}

/// Asserts success and returns stderr.
pub fn ok(out: Output) -> String {
    let (stdout, stderr) = text(&out);
    assert!(out.status.success(), "wasmgrid failed ({})\nstdout:\n{stdout}\nstderr:\n{stderr}", out.status);
    stderr
}

/// Asserts success and returns stdout.
pub fn ok_stdout(out: Output) -> String {
    let (stdout, stderr) = text(&out);
    assert!(out.status.success(), "wasmgrid failed ({})\nstdout:\n{stdout}\nstderr:\n{stderr}", out.status);
    stdout
}

/// `wasmgrid ARGS --url URLS`: a client command against a grid.
pub fn grid_cli(urls: &str, args: &[&str]) -> Output {
    wasmgrid().args(args).args(["--url", urls]).output().expect("wasmgrid runs")
}

/// [`grid_cli`], asserting success; returns stdout.
pub fn grid_ok(urls: &str, args: &[&str]) -> String {
    ok_stdout(grid_cli(urls, args))
}

/// Asserts failure with exit code 1 and returns stderr.
pub fn fails(out: Output) -> String {
    let (stdout, stderr) = text(&out);
    assert_eq!(out.status.code(), Some(1), "expected failure\nstdout:\n{stdout}\nstderr:\n{stderr}");
    stderr
}

/// A counter or gauge from a node's `/metrics` (read with the admin token).
pub async fn node_metric(node_url: &str, name: &str) -> f64 {
    let text = http().get(format!("{node_url}/metrics")).send().await.expect("metrics").text().await.expect("text");
    text.lines()
        .find_map(|l| l.strip_prefix(name).and_then(|rest| rest.trim().parse().ok()))
        .unwrap_or_else(|| panic!("no {name} in\n{text}"))
}

/// Where `name` would be in each directory of PATH, in order.
pub fn on_path(name: &str) -> impl Iterator<Item = PathBuf> + '_ {
    std::env::var_os("PATH")
        .into_iter()
        .flat_map(|p| std::env::split_paths(&p).collect::<Vec<_>>())
        .map(move |d| d.join(name))
}

/// `wasmgrid trigger status NAME --json`.
pub fn trigger_status(urls: &str, name: &str) -> wasmgrid_api::TriggerStatus {
    serde_json::from_str(&grid_ok(urls, &["trigger", "status", name, "--json"])).expect("status json")
}

/// Sums (records, produced, dead letters) over every node's partitions.
pub fn trigger_totals(s: &wasmgrid_api::TriggerStatus) -> (u64, u64, u64) {
    s.nodes
        .iter()
        .flat_map(|(_, u)| &u.partitions)
        .fold((0, 0, 0), |t, p| (t.0 + p.records, t.1 + p.produced, t.2 + p.dead_letters))
}

/// Waits until every node running trigger `name` says `state`.
pub async fn wait_trigger_state(urls: &str, name: &str, state: &str) -> wasmgrid_api::TriggerStatus {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    loop {
        let s = trigger_status(urls, name);
        if !s.nodes.is_empty() && s.nodes.iter().all(|(_, u)| u.state == state) {
            return s;
        }
        assert!(std::time::Instant::now() < deadline, "trigger {name} never got to {state}: {s:?}");
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    }
}

/// The sum of a metric's series over all their labels on a node's
/// `/metrics` (0 when it has none yet).
pub async fn node_metric_sum(node_url: &str, name: &str) -> f64 {
    let text = http().get(format!("{node_url}/metrics")).send().await.expect("metrics").text().await.expect("text");
    let labelled = format!("{name}{{");
    text.lines()
        .filter(|l| l.starts_with(&labelled))
        .filter_map(|l| l.rsplit_once(' ').and_then(|(_, v)| v.parse::<f64>().ok()))
        .sum()
}

/// The text of every `part-*` file in an output directory, in listing order.
pub fn parts_text(dir: &Path) -> String {
    std::fs::read_dir(dir)
        .expect("output")
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().starts_with("part-"))
        .map(|e| std::fs::read_to_string(e.path()).expect("part"))
        .collect()
}

/// Runs `command`, asserting success; returns stdout.
pub fn succeed(command: &mut Command) -> String {
    let out = command.output().unwrap_or_else(|e| panic!("{command:?} runs: {e}"));
    let (stdout, stderr) = text(&out);
    assert!(out.status.success(), "{command:?} failed ({})\nstdout:\n{stdout}\nstderr:\n{stderr}", out.status);
    stdout
}

/// Every word and its count, counted here.
pub fn count_words(dir: &Path) -> std::collections::HashMap<String, u64> {
    let mut counts = std::collections::HashMap::new();
    for entry in std::fs::read_dir(dir).expect("corpus") {
        let text = std::fs::read_to_string(entry.expect("entry").path()).expect("read");
        for w in text.split_ascii_whitespace() {
            *counts.entry(w.to_string()).or_insert(0) += 1;
        }
    }
    counts
}

/// The word counts a job published, asserting each word appears once, that
/// each file has the rows the `_SUCCESS` manifest says, and that the output
/// holds nothing else.
pub fn published_counts(out: &Path) -> std::collections::HashMap<String, u64> {
    let manifest: serde_json::Value =
        serde_json::from_slice(&std::fs::read(out.join("_SUCCESS")).expect("_SUCCESS")).expect("manifest");
    let mut counts = std::collections::HashMap::new();
    let files = manifest["files"].as_array().expect("files");
    for f in files {
        let name = f["name"].as_str().expect("name");
        let text = std::fs::read_to_string(out.join(name)).expect("part");
        assert_eq!(text.lines().count() as u64, f["rows"].as_u64().expect("rows"), "{name}: rows in the manifest");
        for line in text.lines() {
            let v: serde_json::Value = serde_json::from_str(line).expect("json line");
            let word = v["word"].as_str().expect("word").to_string();
            let n = v["count"].as_u64().expect("count");
            assert!(counts.insert(word.clone(), n).is_none(), "{word} published twice");
        }
    }
    // Nothing but the manifest and the files it lists.
    let mut names: Vec<String> =
        std::fs::read_dir(out).expect("out").map(|e| e.expect("entry").file_name().to_string_lossy().into()).collect();
    names.sort();
    let mut expected: Vec<String> = files.iter().map(|f| f["name"].as_str().unwrap_or_default().to_string()).collect();
    expected.push("_SUCCESS".into());
    expected.sort();
    assert_eq!(names, expected, "the output holds exactly the published files");
    counts
}

/// A deterministic pseudo-random generator (xorshift), so data sets are reproducible.
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Self {
        Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1)
    }
    pub fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    /// Uniform in [0, 1).
    pub fn unit(&mut self) -> f64 {
        (self.next() >> 11) as f64 / (1u64 << 53) as f64
    }
    pub fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

/// Writes `files` text files of about `bytes_each` bytes of words from a
/// Zipf-like vocabulary into `dir`.
pub fn write_corpus(dir: &Path, files: usize, bytes_each: usize, seed: u64) -> Vec<PathBuf> {
    std::fs::create_dir_all(dir).expect("corpus dir");
    let vocab: Vec<String> = (0..5000).map(|i| format!("w{i}{}", ["", "a", "bb", "ccc"][i % 4])).collect();
    let mut rng = Rng::new(seed);
    let mut paths = Vec::new();
    for f in 0..files {
        let mut s = String::with_capacity(bytes_each + 64);
        while s.len() < bytes_each {
            let words = 1 + rng.below(14);
            for w in 0..words {
                // Skewed toward frequent words.
                let r = rng.unit();
                let idx = ((r * r * r) * vocab.len() as f64) as usize;
                s.push_str(&vocab[idx.min(vocab.len() - 1)]);
                s.push(if w + 1 == words {
                    '\n'
                } else if rng.below(9) == 0 {
                    '\t'
                } else {
                    ' '
                });
            }
        }
        let path = dir.join(format!("part-{f:03}.txt"));
        std::fs::write(&path, s).expect("write corpus file");
        paths.push(path);
    }
    paths
}

/// (kind, body) of every code block marked `<!-- sh -->` or `<!-- output -->`.
pub fn guide_blocks(text: &str) -> Vec<(&'static str, String)> {
    let mut out = Vec::new();
    let mut rest = text;
    while let Some(at) = rest.find("<!-- ") {
        rest = &rest[at + 5..];
        let kind = match rest {
            r if r.starts_with("sh -->") => "sh",
            r if r.starts_with("python -->") => "python",
            r if r.starts_with("output -->") => "output",
            _ => continue,
        };
        let body = &rest[rest.find("```").expect("a block follows")..];
        let body = &body[body.find('\n').expect("fence") + 1..];
        let end = body.find("```").expect("block closes");
        out.push((kind, body[..end].trim_end().to_string()));
        rest = &body[end..];
    }
    out
}

/// Writes `rows` as JSON lines.
pub fn write_jsonl(path: &Path, rows: &[serde_json::Value]) {
    let text: String = rows.iter().map(|r| format!("{r}\n")).collect();
    std::fs::write(path, text).expect("write rows");
}

/// (id, score) of every row in the JSON-lines files of an output directory, by id.
pub fn scores_in(dir: &Path) -> Vec<(u64, f64)> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).expect("output") {
        let path = entry.expect("entry").path();
        if path.extension().is_some_and(|e| e == "jsonl") {
            for line in std::fs::read_to_string(&path).expect("part").lines() {
                let v: serde_json::Value = serde_json::from_str(line).expect("json line");
                out.push((v["id"].as_u64().expect("id"), v["score"].as_f64().expect("score")));
            }
        }
    }
    out.sort_by_key(|(id, _)| *id);
    out
}

/// A Python with pandas and pytest for `wasmgrid.local` and the client:
/// `WASMGRID_PYTHON`, else the one beside componentize-py
/// (deploy/test-setup.sh installs them there), else `python3`; `None` when
/// it lacks them and they are not required (`WASMGRID_REQUIRE_PYTHON`).
pub fn local_python() -> Option<PathBuf> {
    let python = std::env::var_os("WASMGRID_PYTHON").map(PathBuf::from).unwrap_or_else(|| {
        let beside = std::env::var_os("COMPONENTIZE_PY").map(|c| Path::new(&c).with_file_name("python"));
        beside.filter(|p| p.exists()).unwrap_or_else(|| PathBuf::from("python3"))
    });
    let has = Command::new(&python).args(["-c", "import pandas, pytest"]).output();
    if has.is_ok_and(|o| o.status.success()) {
        return Some(python);
    }
    assert!(
        std::env::var_os("WASMGRID_REQUIRE_PYTHON").is_none(),
        "{} lacks pandas or pytest (deploy/test-setup.sh installs them)",
        python.display()
    );
    eprintln!("no Python with pandas and pytest: Python not tested");
    None
}

/// Follows the guide `docs/guide/NAME`: starts `wasmgrid dev`, runs every
/// `sh` block in order in a scratch directory with the real `wasmgrid` on
/// `PATH`, `WASMGRID_URL` pointing at the grid and `env` set (for the grid
/// too), the guests built where the guide says to build them, and compares
/// each output (module hashes aside) with the `output` block after it.
/// `python` blocks are a notebook's cells: each run of them (up to the next
/// `sh` block or the end) is one Python process with the SDK on its path,
/// and each cell's output is compared with the `output` block after it.
pub fn follow_guide(name: &str, env: &[(&str, &str)], min_commands: usize) {
    if let Ok(mut extra) = EXTRA_ENV.lock() {
        extra.extend(env.iter().map(|(k, v)| (k.to_string(), v.to_string())));
    }
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let guide = std::fs::read_to_string(root.join("docs/guide").join(name)).expect("guide");
    let tmp = tempfile::tempdir().expect("tempdir");
    let bin = tmp.path().join("bin");
    let work = tmp.path().join("work");
    std::fs::create_dir_all(&bin).expect("bin");
    std::fs::create_dir_all(&work).expect("work");
    std::os::unix::fs::symlink(env!("CARGO_BIN_EXE_wasmgrid"), bin.join("wasmgrid")).expect("symlink");
    // Where `wasmgrid dev` keeps its data when started in the guide's
    // directory: the CLI finds the admin token there, as a reader's does.
    let dev = grid::Dev::start(&work.join(".wasmgrid"));

    let guests_dir = Path::new(wasmgrid_test_artifacts::LOGREG).parent().expect("dir").display().to_string();
    let path = format!("{}:{}", bin.display(), std::env::var("PATH").unwrap_or_default());
    let blocks = guide_blocks(&guide);
    assert!(blocks.iter().filter(|b| b.0 != "output").count() >= min_commands, "{blocks:?}");
    let python_cells = |cells: &mut Vec<(String, Option<String>)>| {
        if cells.is_empty() {
            return;
        }
        let python = local_python().expect("a Python with pandas for the guide's cells");
        run_cells(&python, &std::mem::take(cells), &work, &dev.control_plane, &guests_dir);
    };
    let mut cells: Vec<(String, Option<String>)> = Vec::new();
    let mut last = None;
    for (kind, body) in blocks {
        match kind {
            "python" => {
                // The next output block is this cell's, not the last command's.
                last = None;
                cells.push((body, None));
            }
            "output" if last.is_none() && !cells.is_empty() => {
                let cell = cells.last_mut().expect("a cell");
                assert!(cell.1.is_none(), "two output blocks after `{}`", cell.0);
                cell.1 = Some(body);
            }
            "sh" => {
                python_cells(&mut cells);
                let script = body.replace("target/wasm32-wasip2/guest", &guests_dir);
                let out = Command::new("bash")
                    .args(["-e", "-c", &script])
                    .current_dir(&work)
                    .env_remove("WASMGRID_TOKEN")
                    .env_remove("WASMGRID_TOKEN_FILE")
                    .env("PATH", &path)
                    .env("WASMGRID_URL", &dev.control_plane)
                    .env("NO_COLOR", "1")
                    .envs(env.iter().copied())
                    .output()
                    .expect("bash");
                let (stdout, stderr) = text(&out);
                assert!(out.status.success(), "`{body}` failed\n{stdout}\n{stderr}");
                last = Some((body, stdout));
            }
            _ => {
                let (command, stdout) = last.take().expect("an output block follows a command");
                assert_eq!(normalize_hashes(&stdout), normalize_hashes(&body), "output of `{command}`");
            }
        }
    }
    python_cells(&mut cells);
}

/// Runs notebook `cells` (code, expected output) as one Python program in
/// `work`, against the grid at `url`, and compares each cell's output.
fn run_cells(python: &Path, cells: &[(String, Option<String>)], work: &Path, url: &str, guests_dir: &str) {
    const MARK: &str = "---- wasmgrid guide cell ----";
    let mut script = String::new();
    for (code, _) in cells {
        script.push_str(&code.replace("target/wasm32-wasip2/guest", guests_dir));
        script.push_str(&format!("\nprint({MARK:?}, flush=True)\n"));
    }
    let sdk = Path::new(env!("CARGO_MANIFEST_DIR")).join("sdk/python");
    let out = Command::new(python)
        .args(["-c", &script])
        .current_dir(work)
        .env_remove("WASMGRID_TOKEN")
        .env_remove("WASMGRID_TOKEN_FILE")
        .env("WASMGRID_URL", url)
        .env("PYTHONPATH", &sdk)
        .output()
        .expect("python runs");
    let (stdout, stderr) = text(&out);
    assert!(out.status.success(), "the guide's Python failed\n{stdout}\n{stderr}");
    let outputs: Vec<&str> = stdout.split(&format!("{MARK}\n")).collect();
    assert_eq!(outputs.len(), cells.len() + 1, "{stdout}");
    for ((code, expected), got) in cells.iter().zip(outputs) {
        if let Some(expected) = expected {
            assert_eq!(got.trim_end(), expected.trim_end(), "output of the cell\n{code}");
        }
    }
}

/// Module hashes depend on where the guest was built, token ids on
/// chance, artifact hashes of trained models on the CPU; compare without
/// them.
pub fn normalize_hashes(s: &str) -> String {
    let mut out = String::new();
    let mut rest = s;
    while let Some(at) = rest.find("tok_") {
        out.push_str(&rest[..at + 4]);
        rest = &rest[at + 4..];
        if rest.chars().take_while(char::is_ascii_hexdigit).count() == 12 {
            out.push_str("<id>");
            rest = &rest[12..];
        }
    }
    out.push_str(rest);
    let s = std::mem::take(&mut out);
    let mut rest = s.as_str();
    while let Some(at) = rest.find("module ") {
        out.push_str(&rest[..at + 7]);
        rest = &rest[at + 7..];
        let hex = rest.chars().take_while(char::is_ascii_hexdigit).count();
        if hex == 12 {
            out.push_str("<sha>");
            rest = &rest[12..];
        }
    }
    out.push_str(rest);
    // An artifact's hash: a model trained by floating-point code differs
    // in its last bits between CPUs.
    let s = std::mem::take(&mut out);
    for line in s.lines() {
        match line.strip_prefix("artifact ").and_then(|rest| rest.split_once(": ")) {
            Some((name, after)) if after.chars().take_while(char::is_ascii_hexdigit).count() == 12 => {
                out.push_str(&format!("artifact {name}: <sha>{}\n", &after[12..]));
            }
            _ => {
                out.push_str(line);
                out.push('\n');
            }
        }
    }
    out.trim().to_string()
}

/// An MLP model (`{"features", "layers": [{"weights", "bias",
/// "activation"}]}`, as `mlp-score` takes it) evaluated on `row` in f64:
/// the reference its scores are checked against.
pub fn mlp_forward(model: &serde_json::Value, row: &serde_json::Value) -> f64 {
    let features = model["features"].as_array().expect("features");
    let mut x: Vec<f64> = features.iter().map(|f| row[f.as_str().expect("name")].as_f64().expect("feature")).collect();
    for layer in model["layers"].as_array().expect("layers") {
        let w: Vec<Vec<f64>> = serde_json::from_value(layer["weights"].clone()).expect("weights");
        let mut y: Vec<f64> = serde_json::from_value(layer["bias"].clone()).expect("bias");
        for (xi, wi) in x.iter().zip(&w) {
            for (yj, wij) in y.iter_mut().zip(wi) {
                *yj += xi * wij;
            }
        }
        for v in &mut y {
            *v = match layer["activation"].as_str() {
                Some("relu") => v.max(0.0),
                Some("tanh") => v.tanh(),
                Some("sigmoid") => 1.0 / (1.0 + (-*v).exp()),
                _ => *v,
            };
        }
        x = y;
    }
    x[0]
}

/// POSTs `body` to a gateway's `url` until it answers 200 (a node that has
/// not made the function ready yet answers otherwise), for up to `within`;
/// the answer.
pub async fn post_until_served(url: &str, body: &serde_json::Value, within: std::time::Duration) -> serde_json::Value {
    let deadline = std::time::Instant::now() + within;
    let http = http();
    loop {
        let response = http.post(url).json(body).send().await.expect("answer");
        let status = response.status();
        if status == 200 {
            return response.json().await.expect("json");
        }
        let text = response.text().await.unwrap_or_default();
        assert!(std::time::Instant::now() < deadline, "{url} never served: {status} {text}");
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
}

/// `(id, score)` of each row of a gateway's answer.
pub fn id_scores(answer: &serde_json::Value) -> Vec<(u64, f64)> {
    answer["rows"]
        .as_array()
        .expect("rows")
        .iter()
        .map(|r| (r["id"].as_u64().expect("id"), r["score"].as_f64().expect("score")))
        .collect()
}

/// Field `field` (`VmRSS`, `VmHWM`) of `/proc/PID/status`, in bytes.
fn status_bytes(pid: u32, field: &str) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("status");
    let line = status.lines().find(|l| l.strip_prefix(field).is_some_and(|r| r.starts_with(':'))).expect(field);
    line.split_whitespace().nth(1).and_then(|kb| kb.parse::<u64>().ok()).expect("kB") * 1024
}

/// Resident memory of process `pid` now, in bytes.
pub fn rss(pid: u32) -> u64 {
    status_bytes(pid, "VmRSS")
}

/// Peak resident memory of process `pid`, in bytes.
pub fn peak_rss(pid: u32) -> u64 {
    status_bytes(pid, "VmHWM")
}

/// CPU time (user + system) the process `pid` has used so far, in seconds.
pub fn cpu_seconds(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // Fields after the parenthesised command name; utime and stime are 14 and 15.
    let fields: Vec<&str> = stat.rsplit_once(')').map_or("", |(_, rest)| rest).split_whitespace().collect();
    let ticks = |i: usize| fields.get(i).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0);
    // In USER_HZ, which is 100 on Linux.
    (ticks(11) + ticks(12)) / 100.0
}
