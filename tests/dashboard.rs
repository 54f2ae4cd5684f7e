//! The dashboard at `/ui`, in a real browser: headless Chromium driven
//! over WebDriver (Debian's `chromium` and `chromium-driver`) against a
//! real `wasmgrid dev` serving a function under traffic and running a
//! batch job. The test signs in, reads the DOM of every view, watches the
//! job's progress advance over its event stream, and keeps a screenshot of
//! the overview (job progress and a function's latency chart) in
//! `target/test-artifacts/dashboard.png`.
//!
//! Without Chromium and its driver the browser test says why and passes,
//! unless `WASMGRID_REQUIRE_BROWSER` is set (CI, through
//! `deploy/test-setup.sh`). The page's headers and the traffic the
//! dashboard charts are checked without a browser too.

mod common;

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use base64::Engine;
use common::grid::{Dev, free_port};
use serde_json::{Value, json};
use wasmgrid_test_artifacts as guests;

const CHROMIUM: &str = "/usr/bin/chromium";
const DRIVER: &str = "/usr/bin/chromedriver";
/// WebDriver's key for an element reference.
const ELEMENT: &str = "element-6066-11e4-a52e-4f735466cecf";

/// A chromedriver process and one browser session on it.
struct Browser {
    driver: Child,
    base: String,
    http: reqwest::blocking::Client,
}

impl Browser {
    fn start() -> Browser {
        let port = free_port();
        let driver = Command::new(DRIVER)
            .arg(format!("--port={port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("chromedriver starts");
        let http = reqwest::blocking::Client::builder().timeout(Duration::from_secs(60)).build().expect("client");
        let root = format!("http://127.0.0.1:{port}");
        let deadline = Instant::now() + Duration::from_secs(20);
        while !http.get(format!("{root}/status")).send().is_ok_and(|r| r.status().is_success()) {
            assert!(Instant::now() < deadline, "chromedriver did not come up");
            std::thread::sleep(Duration::from_millis(100));
        }
        let args =
            ["--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--window-size=1400,1700"];
        let capabilities = json!({"capabilities": {"alwaysMatch": {
            "browserName": "chrome",
            "goog:chromeOptions": {"binary": CHROMIUM, "args": args},
        }}});
        let session: Value =
            http.post(format!("{root}/session")).json(&capabilities).send().expect("new session").json().expect("json");
        let id = session["value"]["sessionId"].as_str().unwrap_or_else(|| panic!("no session: {session}"));
        Browser { driver, base: format!("{root}/session/{id}"), http }
    }

    fn call(&self, method: reqwest::Method, path: &str, body: Value) -> Value {
        let request = self.http.request(method, format!("{}{path}", self.base));
        let request = if body.is_null() { request } else { request.json(&body) };
        let answer: Value = request.send().expect("webdriver").json().expect("webdriver json");
        if answer["value"].get("error").is_some() {
            panic!("webdriver {path}: {}", answer["value"]);
        }
        answer["value"].clone()
    }

    fn open(&self, url: &str) {
        self.call(reqwest::Method::POST, "/url", json!({ "url": url }));
    }

    /// Runs `script` in the page and returns what it returns.
    fn eval(&self, script: &str) -> Value {
        self.call(reqwest::Method::POST, "/execute/sync", json!({ "script": script, "args": [] }))
    }

    fn element(&self, css: &str) -> String {
        let found = self.call(reqwest::Method::POST, "/element", json!({ "using": "css selector", "value": css }));
        found[ELEMENT].as_str().unwrap_or_else(|| panic!("no element {css}")).to_string()
    }

    fn type_into(&self, css: &str, text: &str) {
        let id = self.element(css);
        self.call(reqwest::Method::POST, &format!("/element/{id}/value"), json!({ "text": text }));
    }

    fn click(&self, css: &str) {
        let id = self.element(css);
        self.call(reqwest::Method::POST, &format!("/element/{id}/click"), json!({}));
    }

    /// Waits until `script` returns something truthy (not null, false, 0
    /// or ""), and returns it.
    fn wait_for(&self, what: &str, script: &str) -> Value {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let value = self.eval(script);
            let truthy = match &value {
                Value::Null => false,
                Value::Bool(b) => *b,
                Value::Number(n) => n.as_f64() != Some(0.0),
                Value::String(s) => !s.is_empty(),
                _ => true,
            };
            if truthy {
                return value;
            }
            assert!(Instant::now() < deadline, "{what}: not within 30 s (last: {value})");
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    fn screenshot(&self, path: &std::path::Path) {
        let png = self.call(reqwest::Method::GET, "/screenshot", Value::Null);
        let bytes = base64::engine::general_purpose::STANDARD.decode(png.as_str().expect("base64")).expect("png");
        std::fs::create_dir_all(path.parent().expect("parent")).expect("artifact dir");
        std::fs::write(path, bytes).expect("write the screenshot");
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        let _ = self.http.delete(&self.base).send();
        let _ = self.driver.kill();
        let _ = self.driver.wait();
    }
}

/// A dev grid with function `score` (logistic regression on `x`) after
/// `calls` calls, and the slow mapper deployed as `slow`.
fn grid_under_traffic(dir: &std::path::Path, calls: usize) -> Dev {
    let dev = Dev::start(&dir.join("grid"));
    let model = r#"model={"features":["x"],"weights":[0.5],"bias":0.1}"#;
    common::grid_ok(&dev.control_plane, &["deploy", "score", guests::LOGREG, "--config", model]);
    common::grid_ok(
        &dev.control_plane,
        &["deploy", "slow", guests::HOSTILE_MAPPER, "--config", "mode=slow", "--config", "sleep_ms=250"],
    );
    let http = reqwest::blocking::Client::new();
    let url = format!("{}/v1/fn/default/score", dev.gateway);
    let call = |i: usize| http.post(&url).bearer_auth(common::TOKEN).json(&json!({"rows": [{"x": i as f64}]})).send();
    // The node serves it once its route table has it.
    let deadline = Instant::now() + Duration::from_secs(20);
    while !call(0).is_ok_and(|r| r.status().is_success()) {
        assert!(Instant::now() < deadline, "the node never served score");
        std::thread::sleep(Duration::from_millis(50));
    }
    for i in 1..calls {
        let answer = call(i).expect("call score");
        assert!(answer.status().is_success(), "call {i}: {}", answer.status());
    }
    dev
}

fn artifact(name: &str) -> PathBuf {
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("target"), PathBuf::from);
    target.join("test-artifacts").join(name)
}

#[test]
fn the_page_is_locked_down_and_the_traffic_it_charts_adds_up() {
    let dir = tempfile::tempdir().expect("tempdir");
    let dev = grid_under_traffic(dir.path(), 37);
    let http = reqwest::blocking::Client::new();

    // The page and its assets are open, with a strict policy; the data is not.
    let page = http.get(format!("{}/ui", dev.control_plane)).send().expect("page");
    assert_eq!(page.status().as_u16(), 200);
    let policy = page.headers()["content-security-policy"].to_str().expect("policy").to_string();
    assert!(policy.contains("default-src 'none'") && policy.contains("script-src 'self'"), "{policy}");
    assert!(page.text().expect("html").contains("/ui/app.js"));
    for (asset, kind) in [("app.js", "text/javascript"), ("app.css", "text/css")] {
        let answer = http.get(format!("{}/ui/{asset}", dev.control_plane)).send().expect("asset");
        assert!(answer.headers()["content-type"].to_str().unwrap_or_default().starts_with(kind));
    }
    assert_eq!(http.get(format!("{}/ui/secrets", dev.control_plane)).send().expect("404").status().as_u16(), 404);
    assert_eq!(http.get(format!("{}/v1/traffic", dev.control_plane)).send().expect("401").status().as_u16(), 401);

    // Every call lands in one window, once: the heartbeats' differences
    // add up to the calls made.
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let report: Value = http
            .get(format!("{}/v1/traffic", dev.control_plane))
            .bearer_auth(common::TOKEN)
            .send()
            .expect("traffic")
            .json()
            .expect("json");
        let score = report["functions"].as_array().and_then(|f| f.iter().find(|f| f["function"] == "score").cloned());
        let calls: u64 = score
            .iter()
            .flat_map(|f| f["points"].as_array().cloned().unwrap_or_default())
            .map(|p| p["calls"].as_u64().unwrap_or(0))
            .sum();
        if calls == 37 {
            let points = score.expect("score")["points"].clone();
            let last = &points[points.as_array().expect("points").len() - 1];
            assert!(
                last["p50_us"].as_u64().unwrap_or(0) > 0 && last["p99_us"].as_u64() >= last["p50_us"].as_u64(),
                "{points}"
            );
            assert_eq!(report["window_ms"], 5000);
            break;
        }
        assert!(calls < 37, "more calls charted than made: {report}");
        assert!(Instant::now() < deadline, "the traffic report never reached 37 calls: {report}");
        std::thread::sleep(Duration::from_millis(200));
    }
}

#[test]
fn the_dashboard_shows_the_grid_a_job_advancing_and_a_latency_chart() {
    let missing = [CHROMIUM, DRIVER].into_iter().find(|p| !std::path::Path::new(p).exists());
    if let Some(missing) = missing {
        assert!(
            std::env::var_os("WASMGRID_REQUIRE_BROWSER").is_none(),
            "WASMGRID_REQUIRE_BROWSER is set, but {missing} is missing"
        );
        eprintln!("skipping the dashboard test: no {missing} (apt-get install chromium chromium-driver)");
        return;
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let dev = grid_under_traffic(dir.path(), 50);
    // Steady traffic while the browser looks: a call every 5 ms.
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let traffic = {
        let (stop, url) = (stop.clone(), format!("{}/v1/fn/default/score", dev.gateway));
        std::thread::spawn(move || {
            let http = reqwest::blocking::Client::new();
            let mut i = 0;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let _ = http.post(&url).bearer_auth(common::TOKEN).json(&json!({"rows": [{"x": i}]})).send();
                i += 1;
                std::thread::sleep(Duration::from_millis(5));
            }
        })
    };

    let browser = Browser::start();
    let ui = format!("{}/ui", dev.control_plane);
    browser.open(&ui);
    // A wrong token is refused on the page.
    browser.wait_for("the sign-in form", "return !document.getElementById('login').hidden");
    browser.type_into("#token", "wgt_not_a_token");
    browser.click("#login-button");
    let refused = browser.wait_for("the refusal", "return document.getElementById('login-error').textContent");
    assert!(refused.as_str().unwrap_or_default().contains("not valid"), "{refused}");
    browser.type_into("#token", common::TOKEN);
    browser.click("#login-button");
    let who = browser.wait_for(
        "signed in",
        "return !document.getElementById('nav').hidden && document.getElementById('who').textContent",
    );
    assert_eq!(who, "default · admin");

    // The overview: the leader, the node, the function's charts filling
    // in window by window.
    let leader = browser.wait_for(
        "the leader card",
        "const c = document.querySelector('#card-leader .value'); return c && c.textContent",
    );
    assert!(leader.as_str().unwrap_or_default().starts_with("replica 1"), "{leader}");
    browser.wait_for(
        "the node alive",
        "const c = document.querySelector('#card-nodes .value'); return c && c.textContent === '1 of 1'",
    );
    browser.wait_for(
        "two windows in score's latency chart",
        "const s = document.querySelector('[data-function=score] svg[aria-label=latency]'); return s && Number(s.dataset.points) >= 2",
    );
    let p99 = browser.eval("return document.querySelector('[data-function=score] svg[aria-label=latency] path[data-series=p99]').getAttribute('d')");
    assert!(p99.as_str().is_some_and(|d| d.starts_with('M') && d.contains('L')), "the p99 line is drawn: {p99}");
    assert!(
        browser.eval("return !document.querySelector('[data-function=slow] svg')").as_bool().unwrap_or(false),
        "no request charts for a mapper"
    );

    // A job of about 40 tasks of a quarter of a second each: it runs for a while.
    let input = dir.path().join("rows.jsonl");
    let rows: String = (0..40).map(|i| format!("{{\"i\": {i}, \"pad\": \"{}\"}}\n", "x".repeat(40))).collect();
    std::fs::write(&input, rows).expect("input");
    let out = dir.path().join("out");
    let submitted = common::grid_ok(
        &dev.control_plane,
        &[
            "job",
            "submit",
            "slow",
            "--input",
            &input.display().to_string(),
            "--output",
            &out.display().to_string(),
            "--partition-size",
            "64B",
        ],
    );
    let job = submitted.trim().to_string();

    let done_of = |b: &Browser| -> (u64, u64, String) {
        let v = b.eval(&format!(
            "const p = document.querySelector('.progress[data-job=\"{job}\"]'); return p && [Number(p.dataset.done), Number(p.dataset.total), p.dataset.state]"
        ));
        (v[0].as_u64().unwrap_or(0), v[1].as_u64().unwrap_or(0), v[2].as_str().unwrap_or_default().to_string())
    };
    browser.wait_for(
        "the job's progress bar",
        &format!("return !!document.querySelector('.progress[data-job=\"{job}\"]')"),
    );
    let (first, total, _) = done_of(&browser);
    assert!(total >= 20, "about one task per row: {total}");
    // Advancing while it runs: the bar moves without leaving the page.
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut seen = vec![first];
    loop {
        let (done, _, state) = done_of(&browser);
        if done > *seen.last().unwrap_or(&0) {
            seen.push(done);
        }
        if seen.len() >= 3 && done < total {
            break;
        }
        assert!(state != "succeeded" || seen.len() >= 3, "the job ended before progress was seen advancing: {seen:?}");
        assert!(Instant::now() < deadline, "progress did not advance: {seen:?}");
        std::thread::sleep(Duration::from_millis(100));
    }
    let shot = artifact("dashboard.png");
    browser.screenshot(&shot);
    eprintln!("screenshot: {} (progress seen {seen:?} of {total})", shot.display());
    browser.wait_for(
        "the job to finish on the page",
        &format!("const p = document.querySelector('.progress[data-job=\"{job}\"]'); return p && p.dataset.state === 'succeeded' && p.dataset.done === p.dataset.total"),
    );

    // Every view, through the navigation.
    browser.click("a[href='#cluster']");
    let role = browser.wait_for(
        "the replicas",
        "const r = document.querySelector('tr[data-replica=\"1\"] td:nth-child(2)'); return r && r.textContent",
    );
    assert_eq!(role, "leader");
    browser.click("a[href='#nodes']");
    let node = browser.wait_for(
        "the node",
        "const r = document.querySelector('tr[data-node=dev] td:nth-child(2)'); return r && r.textContent",
    );
    assert_eq!(node, "alive");
    let placed = browser.wait_for("the node's functions", "const r = document.querySelector('tr[data-node=dev] td.placed'); return r && r.textContent.includes('score') && r.textContent");
    assert!(placed.as_str().unwrap_or_default().contains("slow"), "both functions are ready on the node: {placed}");
    browser.click("a[href='#functions']");
    browser.wait_for("the functions", "return document.querySelectorAll('#functions tr[data-function]').length === 2");
    browser.click("a[href='#jobs']");
    browser.wait_for("the job list", &format!("return !!document.querySelector('#jobs tr[data-job=\"{job}\"]')"));
    browser.click(&format!("#jobs tr[data-job=\"{job}\"]"));
    let facts = browser.wait_for(
        "the job's page",
        &format!("const j = document.querySelector('#job[data-job=\"{job}\"]'); return j && j.textContent"),
    );
    assert!(facts.as_str().unwrap_or_default().contains("succeeded"), "{facts}");
    // What the attempts wrote, gathered from the node through the control plane.
    let logged = browser.wait_for(
        "the attempts' output",
        "const r = document.querySelector('#job tr.attempt pre'); return r && r.textContent",
    );
    assert!(logged.as_str().unwrap_or_default().contains("stderr: slept 250 ms"), "{logged}");
    browser.click("a[href='#tenants']");
    browser.wait_for("the tenants", "return !!document.querySelector('tr[data-tenant=default]')");

    // Signing out forgets the token.
    browser.click("#logout");
    browser.wait_for("signed out", "return !document.getElementById('login').hidden && sessionStorage.length === 0");
    assert!(std::fs::metadata(&shot).is_ok_and(|m| m.len() > 10_000), "a real screenshot");
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    traffic.join().expect("traffic thread");
}
