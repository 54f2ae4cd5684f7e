#!/usr/bin/env python3
"""Simulates phones sending accelerometer windows to the fall-detect scorer.

Each phone is a thread with its own keep-alive HTTP connection. Every
1/--rate seconds it posts one window (--samples samples per axis) to
POST /v1/fn/default/fall-detect on the gateway; about --falls of the
windows contain a fall (free fall, impact, stillness). At the end it
prints calls, throughput, errors by status, latency percentiles and how
many falls the model flagged (fall_probability > 0.5) against how many
were sent.

    deploy/phones.py --gateway http://127.0.0.1:7401 --phones 200 --rate 5 --seconds 10

The phones send the token in WASMGRID_TOKEN (an invoke-only token is
enough: `wasmgrid tokens create --tenant default --invoke-only`), or the
one in --token-file, or .wasmgrid/admin-token. Standard library only.
"""

import argparse
import http.client
import json
import os
import random
import threading
import time
import urllib.parse
from collections import Counter


def window(rng, samples, fall):
    ax, ay, az = [], [], []
    for i in range(samples):
        if fall and samples // 3 <= i < samples // 3 + 4:  # free fall
            x, y, z = rng.gauss(0, 0.05), rng.gauss(0, 0.05), rng.gauss(0.1, 0.05)
        elif fall and i == samples // 3 + 4:  # impact
            x, y, z = rng.gauss(2.5, 0.3), rng.gauss(1.8, 0.3), rng.gauss(2.6, 0.3)
        else:  # walking or still
            x, y, z = rng.gauss(0, 0.08), rng.gauss(0, 0.08), rng.gauss(1.0, 0.08)
        ax.append(f"{x:.3f}")
        ay.append(f"{y:.3f}")
        az.append(f"{z:.3f}")
    return {"ax": " ".join(ax), "ay": " ".join(ay), "az": " ".join(az)}


def phone(n, args, url, stop, results, lock):
    rng = random.Random(n)
    conn = http.client.HTTPConnection(url.hostname, url.port, timeout=10)
    path = f"/v1/fn/default/{args.function}"
    period = 1.0 / args.rate
    next_at = time.monotonic() + rng.random() * period
    local = []
    while not stop.is_set():
        delay = next_at - time.monotonic()
        if delay > 0:
            time.sleep(delay)
        next_at += period
        fall = rng.random() < args.falls
        row = dict(window(rng, args.samples, fall), phone=f"p-{n}")
        body = json.dumps({"rows": [row]})
        started = time.monotonic()
        try:
            conn.request("POST", path, body, {"content-type": "application/json", "authorization": f"Bearer {args.token}"})
            response = conn.getresponse()
            data = response.read()
            status = response.status
        except (OSError, http.client.HTTPException):
            conn.close()
            conn = http.client.HTTPConnection(url.hostname, url.port, timeout=10)
            status, data = 0, b""
        took = time.monotonic() - started
        flagged = False
        if status == 200:
            flagged = json.loads(data)["rows"][0]["fall_probability"] > 0.5
        local.append((status, took, fall, flagged))
    with lock:
        results.extend(local)


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--gateway", default="http://127.0.0.1:7401")
    p.add_argument("--function", default="fall-detect")
    p.add_argument("--phones", type=int, default=100)
    p.add_argument("--rate", type=float, default=2.0, help="windows per second per phone")
    p.add_argument("--seconds", type=float, default=10.0)
    p.add_argument("--samples", type=int, default=50, help="samples per axis per window")
    p.add_argument("--falls", type=float, default=0.02, help="share of windows with a fall")
    p.add_argument("--json", action="store_true", help="print the summary as JSON")
    p.add_argument("--token-file", default=".wasmgrid/admin-token", help="used when WASMGRID_TOKEN is not set")
    args = p.parse_args()
    args.token = os.environ.get("WASMGRID_TOKEN", "").strip()
    if not args.token:
        try:
            with open(args.token_file) as f:
                args.token = f.read().strip()
        except OSError as e:
            p.error(f"no token: set WASMGRID_TOKEN or --token-file ({e})")
    url = urllib.parse.urlparse(args.gateway)

    stop, lock, results = threading.Event(), threading.Lock(), []
    threads = [threading.Thread(target=phone, args=(n, args, url, stop, results, lock)) for n in range(args.phones)]
    started = time.monotonic()
    for t in threads:
        t.start()
    time.sleep(args.seconds)
    stop.set()
    for t in threads:
        t.join()
    elapsed = time.monotonic() - started

    latencies = sorted(r[1] for r in results if r[0] == 200)
    pct = lambda q: latencies[min(len(latencies) - 1, int(q * len(latencies)))] * 1e3 if latencies else float("nan")
    summary = {
        "phones": args.phones,
        "calls": len(results),
        "per_second": round(len(results) / elapsed, 1),
        "statuses": dict(Counter(r[0] for r in results)),
        "p50_ms": round(pct(0.50), 3),
        "p99_ms": round(pct(0.99), 3),
        "falls_sent": sum(1 for r in results if r[2]),
        "falls_flagged": sum(1 for r in results if r[2] and r[3]),
        "false_alarms": sum(1 for r in results if r[3] and not r[2]),
    }
    if args.json:
        print(json.dumps(summary))
    else:
        print(f"{summary['phones']} phones, {summary['calls']} windows in {elapsed:.1f} s "
              f"({summary['per_second']}/s); statuses {summary['statuses']}")
        print(f"latency p50 {summary['p50_ms']} ms, p99 {summary['p99_ms']} ms")
        print(f"falls sent {summary['falls_sent']}, flagged {summary['falls_flagged']}, "
              f"false alarms {summary['false_alarms']}")


if __name__ == "__main__":
    main()
