//! Load generators for the benchmarks: `wrk` for saturation and floods,
//! `hey` for latency at a fixed rate (`apt-get install wrk hey`). Every
//! request is a POST of one JSON body file, with a bearer token.

use std::path::Path;
use std::process::Command;

/// What `wrk` measured.
pub struct Wrk {
    /// Requests per second.
    pub rate: f64,
    /// Requests in all.
    pub requests: f64,
    /// Answers that were not 2xx.
    pub non_2xx: u64,
    /// wrk's report.
    pub text: String,
}

/// `wrk` with `connections` connections (one thread) for `seconds`,
/// posting `body_file` with `token`, at CPU priority `nice` (0: as usual);
/// its Lua script goes in `dir`.
pub fn wrk(url: &str, body_file: &Path, token: &str, connections: u32, seconds: u32, nice: i32, dir: &Path) -> Wrk {
    let script = dir.join(format!("post-{}.lua", std::process::id()));
    std::fs::write(
        &script,
        format!(
            "local f = io.open(\"{}\", \"r\")\nwrk.method = \"POST\"\nwrk.body = f:read(\"*a\")\nf:close()\nwrk.headers[\"Content-Type\"] = \"application/json\"\nwrk.headers[\"Authorization\"] = \"Bearer {token}\"\n",
            body_file.display()
        ),
    )
    .expect("lua");
    let out = Command::new("nice")
        .args(["-n", &nice.to_string(), "wrk"])
        .args(["-t", "1", "-c", &connections.to_string(), "-d", &format!("{seconds}s"), "-s"])
        .arg(&script)
        .arg(url)
        .output()
        .expect("wrk runs (apt-get install wrk)");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let rate = text
        .lines()
        .find_map(|l| l.strip_prefix("Requests/sec:").and_then(|v| v.trim().parse().ok()))
        .unwrap_or_else(|| panic!("no throughput from wrk:\n{text}"));
    let requests = text
        .lines()
        .find_map(|l| l.trim().split_once(" requests in ").and_then(|(n, _)| n.parse().ok()))
        .unwrap_or_else(|| panic!("no request count from wrk:\n{text}"));
    let non_2xx = text
        .lines()
        .find_map(|l| l.trim().strip_prefix("Non-2xx or 3xx responses:").and_then(|v| v.trim().parse().ok()))
        .unwrap_or(0);
    Wrk { rate, requests, non_2xx, text }
}

/// (p50, p99) latency in microseconds of `hey` at `rate` requests per
/// second (8 workers) for `seconds`, and the share of answers that were 200.
pub fn hey(url: &str, body_file: &Path, token: &str, rate: f64, seconds: u32) -> (f64, f64, f64) {
    let workers = 8.0_f64;
    let per_worker = (rate / workers).max(1.0).round() as u64;
    let out = Command::new("hey")
        .args(["-z", &format!("{seconds}s"), "-c", "8", "-q", &per_worker.to_string(), "-m", "POST"])
        .args(["-T", "application/json", "-H", &format!("Authorization: Bearer {token}"), "-D"])
        .arg(body_file)
        // hey sends the Host header, port and all, as the TLS server name,
        // which is no valid name; a bare host name is.
        .args(if url.starts_with("https://") { &["-host", "localhost"][..] } else { &[] })
        .arg(url)
        .output()
        .expect("hey runs (apt-get install hey)");
    let text = String::from_utf8_lossy(&out.stdout);
    let seconds_after = |prefix: &str| {
        text.lines()
            .find_map(|l| l.trim().strip_prefix(prefix))
            .and_then(|v| v.split_whitespace().next()?.parse::<f64>().ok())
            .map(|s| s * 1e6)
    };
    // hey leaves out a percentile it has too few calls for (99% under 100
    // calls): the slowest call stands for it.
    let pct = |p: &str| {
        seconds_after(&format!("{p}% in "))
            .or_else(|| seconds_after("Slowest:"))
            .unwrap_or_else(|| panic!("no {p}% latency from hey:\n{text}"))
    };
    // "  [200]	1000 responses" under "Status code distribution:".
    let count = |status: Option<&str>| -> f64 {
        text.lines()
            .filter_map(|l| {
                let l = l.trim();
                let (code, rest) = l.strip_prefix('[')?.split_once(']')?;
                let n: f64 = rest.split_whitespace().next()?.parse().ok()?;
                status.is_none_or(|s| s == code).then_some(n)
            })
            .sum()
    };
    let ok = count(Some("200")) / count(None).max(1.0);
    (pct("50"), pct("99"), ok)
}
