// The wasmgrid dashboard: plain JavaScript over the control plane's /v1
// API, with the token the user signs in with. Views are re-read every two
// seconds; a job's progress follows its server-sent events.
"use strict";

const TOKEN_KEY = "wasmgrid-token";
const REFRESH_MS = 2000;

let token = sessionStorage.getItem(TOKEN_KEY);
let me = null;
let timer = null;
// The live progress bars of this view, by job id, and their streams.
let bars = new Map();
let streams = [];

// ---- DOM helpers ---------------------------------------------------------

function el(tag, attrs, ...children) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v === undefined || v === null || v === false) continue;
    if (k === "onclick") node.addEventListener("click", v);
    else node.setAttribute(k, v === true ? "" : String(v));
  }
  for (const child of children.flat()) {
    if (child === undefined || child === null) continue;
    node.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return node;
}

function svg(tag, attrs, ...children) {
  const node = document.createElementNS("http://www.w3.org/2000/svg", tag);
  for (const [k, v] of Object.entries(attrs || {})) node.setAttribute(k, String(v));
  for (const child of children) node.append(child instanceof Node ? child : document.createTextNode(String(child)));
  return node;
}

function table(headers, rows, empty) {
  if (rows.length === 0) return el("p", { class: "empty" }, empty);
  return el("table", {},
    el("thead", {}, el("tr", {}, headers.map((h) => el("th", { class: h.num ? "num" : null }, h.label || h)))),
    el("tbody", {}, rows));
}

function num(value) {
  return el("td", { class: "num" }, value);
}

function stateCell(state) {
  return el("td", { class: `state-${state}` }, state);
}

// ---- formatting ----------------------------------------------------------

function fmtUs(us) {
  if (us >= 1e6) return `${(us / 1e6).toFixed(2)} s`;
  if (us >= 1e3) return `${(us / 1e3).toFixed(us >= 1e5 ? 0 : 2)} ms`;
  return `${us} µs`;
}

function fmtBytes(n) {
  const units = ["B", "KiB", "MiB", "GiB", "TiB"];
  let i = 0;
  while (n >= 1024 && i < units.length - 1) { n /= 1024; i++; }
  return `${i === 0 ? n : n.toFixed(1)} ${units[i]}`;
}

function fmtTime(ms) {
  return ms ? new Date(ms).toLocaleTimeString() : "-";
}

function fmtCount(n) {
  return Number(n).toLocaleString("en-US");
}

// ---- the API -------------------------------------------------------------

class ApiError extends Error {
  constructor(status, message) { super(message); this.status = status; }
}

async function api(path) {
  const response = await fetch(path, { headers: { Authorization: `Bearer ${token}` }, cache: "no-store" });
  if (!response.ok) {
    let message = `${response.status} ${response.statusText}`;
    try { message = (await response.json()).error.message; } catch (_) { /* not JSON */ }
    throw new ApiError(response.status, message);
  }
  return response.json();
}

// Reads a job's server-sent events, calling `onJob` with each JobInfo,
// until the job ends or the view changes.
async function follow(id, onJob) {
  const stop = new AbortController();
  streams.push(stop);
  try {
    const response = await fetch(`/v1/jobs/${encodeURIComponent(id)}/events`, {
      headers: { Authorization: `Bearer ${token}`, Accept: "text/event-stream" },
      signal: stop.signal,
    });
    if (!response.ok) return;
    const reader = response.body.getReader();
    const decoder = new TextDecoder();
    let buffer = "";
    for (;;) {
      const { value, done } = await reader.read();
      if (done) return;
      buffer += decoder.decode(value, { stream: true });
      let end;
      while ((end = buffer.indexOf("\n\n")) >= 0) {
        const block = buffer.slice(0, end);
        buffer = buffer.slice(end + 2);
        const data = block.split("\n").filter((l) => l.startsWith("data:")).map((l) => l.slice(5).trim()).join("\n");
        if (data) onJob(JSON.parse(data));
      }
    }
  } catch (e) {
    if (e.name !== "AbortError") console.warn(`events of job ${id}:`, e);
  }
}

// ---- job progress --------------------------------------------------------

const FINAL = new Set(["succeeded", "failed", "cancelled"]);

function setProgress(box, job) {
  const total = job.map_tasks + job.reduce_tasks;
  const done = job.map_done + job.reduce_done;
  box.dataset.done = done;
  box.dataset.total = total;
  box.dataset.state = job.state;
  box.querySelector(".bar").style.width = total ? `${(100 * done) / total}%` : (FINAL.has(job.state) ? "100%" : "0%");
  box.querySelector(".text").textContent = `${done} / ${total} tasks · ${job.stage} · ${job.state}`;
}

// The progress bar of `job`: the same element across refreshes of a view,
// kept current by the job's event stream while it runs.
function progress(job) {
  let box = bars.get(job.id);
  if (!box) {
    box = el("div", { class: "progress", "data-job": job.id }, el("div", { class: "bar" }), el("div", { class: "text" }));
    bars.set(job.id, box);
    setProgress(box, job);
    if (!FINAL.has(job.state)) follow(job.id, (update) => setProgress(box, update));
  }
  return box;
}

// ---- charts --------------------------------------------------------------

const W = 400, H = 150, LEFT = 44, RIGHT = 8, TOP = 10, BOTTOM = 22;

// A line chart of `points` over the kept span: one line per series
// ({ label, color, value(point) }), the y axis from 0.
function chart(title, report, points, series, format) {
  const now = Date.now();
  // The last minute at least, back to the first window with calls.
  const first = points.length ? points[0].at_ms : now;
  const from = Math.max(now - report.kept_ms, Math.min(first, now - 60000));
  const x = (ms) => LEFT + ((ms - from) / (now - from)) * (W - LEFT - RIGHT);
  const max = Math.max(0, ...points.flatMap((p) => series.map((s) => s.value(p))));
  const top = max > 0 ? max * 1.1 : 1;
  const y = (v) => H - BOTTOM - (v / top) * (H - TOP - BOTTOM);
  const plot = svg("svg", { class: "chart", viewBox: `0 0 ${W} ${H}`, preserveAspectRatio: "none", role: "img", "aria-label": title, "data-points": points.length },
    svg("line", { class: "axis", x1: LEFT, y1: H - BOTTOM, x2: W - RIGHT, y2: H - BOTTOM }),
    svg("line", { class: "axis", x1: LEFT, y1: TOP, x2: LEFT, y2: H - BOTTOM }),
    svg("text", { x: LEFT - 4, y: TOP + 8, "text-anchor": "end" }, format(top)),
    svg("text", { x: LEFT - 4, y: H - BOTTOM, "text-anchor": "end" }, "0"),
    svg("text", { x: LEFT, y: H - 6 }, `-${Math.round((now - from) / 60000)} min`),
    svg("text", { x: W - RIGHT, y: H - 6, "text-anchor": "end" }, "now"));
  for (const s of series) {
    const d = points.map((p, i) => `${i ? "L" : "M"}${x(p.at_ms + report.window_ms / 2).toFixed(1)},${y(s.value(p)).toFixed(1)}`).join(" ");
    if (points.length === 1) {
      plot.append(svg("circle", { cx: x(points[0].at_ms + report.window_ms / 2), cy: y(s.value(points[0])), r: 2.5, fill: s.color }));
    }
    plot.append(svg("path", { class: "series", d, stroke: s.color, "data-series": s.label }));
  }
  const legend = el("div", { class: "legend" }, series.map((s) => {
    const key = el("span", {}, s.label);
    key.style.color = s.color;
    return key;
  }));
  return el("div", {}, el("div", { class: "label" }, title), plot, legend);
}

function functionCharts(report, functions) {
  const byName = new Map(report.functions.map((f) => [`${f.tenant}/${f.function}`, f]));
  const perSecond = (n) => n / (report.window_ms / 1000);
  // Mappers and reducers run in batch jobs only: no per-request calls.
  const served = functions.filter((f) => f.kind !== "mapper" && f.kind !== "reducer");
  const cards = served.map((f) => {
    const traffic = byName.get(`${f.tenant}/${f.name}`);
    const points = traffic ? traffic.points : [];
    return el("div", { class: "card chart-card", "data-function": f.name },
      el("h3", {}, f.name, el("span", { class: "label" }, ` v${f.active} · ${f.tenant}`)),
      chart("calls per second", report, points, [
        { label: "calls/s", color: "#2f6fdb", value: (p) => perSecond(p.calls) },
        { label: "errors/s", color: "#c0392b", value: (p) => perSecond(p.errors) },
      ], (v) => v.toFixed(v < 10 ? 1 : 0)),
      chart("latency", report, points, [
        { label: "p50", color: "#1f8a4c", value: (p) => p.p50_us },
        { label: "p99", color: "#b7791f", value: (p) => p.p99_us },
      ], fmtUs));
  });
  if (cards.length === 0) return el("p", { class: "empty" }, "No functions that serve requests.");
  return el("div", { class: "charts" }, cards);
}

// ---- views ---------------------------------------------------------------

function jobRow(job) {
  const fn = job.reduce ? `${job.function} v${job.version} → ${job.reduce[0]}` : `${job.function} v${job.version}`;
  return el("tr", { class: "link", "data-job": job.id, onclick: () => { location.hash = `#jobs/${job.id}`; } },
    el("td", { class: "mono" }, job.id), el("td", {}, fn), stateCell(job.state),
    el("td", {}, progress(job)), num(job.running), num(job.failed_attempts), el("td", {}, fmtTime(job.submitted_ms)));
}

const JOB_HEADERS = ["job", "function", "state", "progress", { label: "running", num: true }, { label: "failed attempts", num: true }, "submitted"];

async function overview() {
  const [nodes, functions, jobs, report] = await Promise.all([
    api("/v1/nodes"), api("/v1/functions"), api("/v1/jobs"), api("/v1/traffic"),
  ]);
  let cluster = null;
  if (me.role === "admin") cluster = await api("/v1/cluster").catch(() => null);
  const alive = nodes.nodes.filter((n) => n.state === "alive").length;
  const running = jobs.jobs.filter((j) => !FINAL.has(j.state)).length;
  const card = (label, value, id) => el("div", { class: "card", id }, el("div", { class: "label" }, label), el("div", { class: "value" }, value));
  return el("div", { id: "overview" },
    el("h1", {}, "Overview"),
    el("div", { class: "cards" },
      cluster ? card("leader", cluster.leader ? `replica ${cluster.leader} · term ${cluster.term}` : "none", "card-leader") : null,
      card("nodes alive", `${alive} of ${nodes.nodes.length}`, "card-nodes"),
      card("functions", functions.functions.length, "card-functions"),
      card("jobs running", running, "card-jobs")),
    el("h2", {}, "Jobs"),
    table(JOB_HEADERS, jobs.jobs.slice(0, 8).map(jobRow), "No jobs yet."),
    el("h2", {}, "Functions"),
    functionCharts(report, functions.functions));
}

async function clusterView() {
  if (me.role !== "admin") return el("p", { class: "empty" }, "The cluster's replicas are shown to the admin token only.");
  const c = await api("/v1/cluster");
  const rows = c.members.map((m) => el("tr", { "data-replica": m.id },
    num(m.id), stateCell(m.role), el("td", { class: "mono" }, m.url), num(m.matched ?? "-"), num(m.lag ?? "-")));
  return el("div", { id: "cluster" },
    el("h1", {}, "Cluster"),
    el("div", { class: "cards" },
      ...[["leader", c.leader ? `replica ${c.leader}` : "none (no quorum)"], ["term", c.term], ["commit", fmtCount(c.commit)],
        ["applied", fmtCount(c.applied)], ["first index", fmtCount(c.first_index)]]
        .map(([l, v]) => el("div", { class: "card" }, el("div", { class: "label" }, l), el("div", { class: "value" }, v)))),
    el("h2", {}, "Replicas"),
    table(["id", "role", "url", { label: "matched", num: true }, { label: "lag", num: true }], rows, "No replicas."));
}

async function nodesView() {
  const [list, functions] = await Promise.all([api("/v1/nodes"), api("/v1/functions")]);
  // The functions whose active version's module a node has compiled.
  const placed = (node) => functions.functions.filter((f) => node.warm.includes(f.module)).map((f) => f.name).join(", ") || "-";
  const rows = list.nodes.map((n) => el("tr", { "data-node": n.id },
    el("td", {}, n.id), stateCell(n.state), el("td", { class: "mono" }, n.address),
    num(n.inflight), num(fmtCount(n.invocations)), el("td", { class: "placed" }, placed(n)), el("td", {}, n.gpu || "-"),
    num(n.last_seen_ms === null || n.last_seen_ms === undefined ? "-" : `${(n.last_seen_ms / 1000).toFixed(1)} s ago`)));
  return el("div", { id: "nodes" }, el("h1", {}, "Nodes"),
    table(["id", "state", "gateway", { label: "calls running", num: true }, { label: "calls served", num: true },
      "functions ready", "GPU", { label: "last heartbeat", num: true }], rows, "No nodes have joined."));
}

async function functionsView() {
  const [functions, report] = await Promise.all([api("/v1/functions"), api("/v1/traffic")]);
  const rows = functions.functions.map((f) => el("tr", { "data-function": f.name },
    el("td", {}, f.name), el("td", {}, f.tenant), num(f.active), num(f.versions), el("td", {}, f.kind),
    el("td", { class: "mono" }, f.module.slice(0, 12))));
  return el("div", { id: "functions" }, el("h1", {}, "Functions"),
    table(["name", "tenant", { label: "active version", num: true }, { label: "versions", num: true }, "world", "module"], rows,
      "No functions deployed."),
    el("h2", {}, `Calls, last ${Math.round(report.kept_ms / 60000)} minutes`),
    functionCharts(report, functions.functions));
}

async function jobsView(id) {
  if (id) return jobView(id);
  const jobs = await api("/v1/jobs");
  return el("div", { id: "jobs" }, el("h1", {}, "Jobs"), table(JOB_HEADERS, jobs.jobs.map(jobRow), "No jobs yet."));
}

async function jobView(id) {
  const path = `/v1/jobs/${encodeURIComponent(id)}`;
  const [job, logs, attempts] = await Promise.all([api(path), api(`${path}/logs`), api(`${path}/attempts`)]);
  const facts = [
    ["function", `${job.function} v${job.version}`], ["reducer", job.reduce ? `${job.reduce[0]} v${job.reduce[1]}` : "-"],
    ["input", job.input], ["output", job.output], ["state", job.state], ["stage", job.stage],
    ["map tasks", `${job.map_done} / ${job.map_tasks}` + (job.map_range > 1 ? ` (in ranges of ${job.map_range})` : "")],
    ["reduce tasks", `${job.reduce_done} / ${job.reduce_tasks}`],
    ["input bytes", `${fmtBytes(job.bytes_done)} of ${fmtBytes(job.bytes_in)}`], ["records in", fmtCount(job.records_in)],
    ["rows out", fmtCount(job.rows_out)], ["submitted", fmtTime(job.submitted_ms)], ["finished", fmtTime(job.finished_ms)],
  ];
  const failures = logs.tasks.map((t) => el("tr", {}, el("td", {}, t.stage),
    el("td", { class: "num" }, t.count > 1 ? `${t.task}-${t.task + t.count - 1}` : String(t.task)), num(t.failures),
    el("td", {}, t.done ? "done" : "not done"), el("td", {}, el("pre", { class: "log" }, t.last_error || ""))));
  return el("div", { id: "job", "data-job": job.id },
    el("h1", {}, `Job ${job.id}`),
    progress(job),
    job.error ? el("p", { class: "error" }, job.error) : null,
    el("table", {}, el("tbody", {}, facts.map(([k, v]) => el("tr", {}, el("th", {}, k), el("td", {}, v))))),
    el("h2", {}, "Tasks that failed"),
    table(["stage", { label: "task", num: true }, { label: "failures", num: true }, "", "last error"], failures, "No failed attempts."),
    el("h2", {}, "What the latest attempts logged"),
    table(["when", "node", "attempt", "output"], attempts.attempts.map(attemptRow), "No attempt logged anything."),
    attempts.unreachable.length ? el("p", { class: "error" }, `Not asked: ${attempts.unreachable.join("; ")}`) : null);
}

function attemptRow(a) {
  const lines = [
    ...a.lines.map((l) => `[${l.level}] ${l.message}`),
    a.stdout && `stdout: ${a.stdout}`,
    a.stderr && `stderr: ${a.stderr}`,
    a.error && `error: ${a.error}`,
    a.dropped ? `(${a.dropped} more lines dropped)` : null,
  ].filter(Boolean);
  return el("tr", { class: "attempt" }, el("td", {}, fmtTime(a.at_ms)), el("td", {}, a.node),
    el("td", {}, `${a.stage} ${a.task} #${a.attempt}`), el("td", {}, el("pre", { class: "log" }, lines.join("\n"))));
}

async function tenantsView() {
  const usage = await api("/v1/usage");
  const tenants = me.role === "admin" ? await api("/v1/tenants") : null;
  const quota = (v) => (v === null || v === undefined ? "-" : fmtCount(v));
  const tenantRows = tenants ? tenants.tenants.map((t) => el("tr", { "data-tenant": t.name },
    el("td", {}, t.name), num(quota(t.quotas.functions)), num(t.quotas.module_bytes ? fmtBytes(t.quotas.module_bytes) : "-"),
    num(t.quotas.memory ? fmtBytes(t.quotas.memory) : "-"), num(quota(t.quotas.concurrency)), num(quota(t.quotas.task_slots)),
    num(quota(t.quotas.gpu_ms)))) : [];
  const usageRows = usage.functions.map((u) => el("tr", {},
    el("td", {}, u.function), num(fmtCount(u.calls)), num(fmtCount(u.errors)), num(fmtUs(u.wall_us)), num(fmtUs(u.cpu_us)),
    num(fmtBytes(u.bytes_in)), num(fmtBytes(u.bytes_out))));
  return el("div", { id: "tenants" },
    el("h1", {}, "Tenants"),
    tenants ? table(["tenant", { label: "functions", num: true }, { label: "modules", num: true }, { label: "memory", num: true },
      { label: "calls at once", num: true }, { label: "task slots", num: true }, { label: "GPU ms", num: true }], tenantRows, "No tenants.") : null,
    el("h2", {}, `Usage of ${usage.tenant}`),
    table(["function", { label: "calls", num: true }, { label: "errors", num: true }, { label: "wall time", num: true },
      { label: "CPU time", num: true }, { label: "in", num: true }, { label: "out", num: true }], usageRows, "No calls yet."),
    el("p", {}, `Jobs: ${usage.jobs.jobs}, tasks ${fmtCount(usage.jobs.tasks)}, records in ${fmtCount(usage.jobs.records_in)}, rows out ${fmtCount(usage.jobs.rows_out)}.`));
}

const VIEWS = { overview, cluster: clusterView, nodes: nodesView, functions: functionsView, jobs: jobsView, tenants: tenantsView };

// ---- navigation and sign-in ----------------------------------------------

function leaveView() {
  clearInterval(timer);
  for (const stop of streams) stop.abort();
  streams = [];
  bars = new Map();
}

function render() {
  leaveView();
  const [name, arg] = location.hash.slice(1).split("/");
  const view = VIEWS[name] || overview;
  const current = VIEWS[name] ? name : "overview";
  for (const a of document.querySelectorAll("#nav a")) a.classList.toggle("active", a.getAttribute("href") === `#${current}`);
  const section = document.getElementById("view");
  const refresh = async () => {
    try {
      const content = await view(arg && decodeURIComponent(arg));
      section.replaceChildren(content);
      section.dataset.view = current;
      section.dataset.updated = Date.now();
    } catch (e) {
      if (e.status === 401) { signOut(`The control plane refused the token: ${e.message}`); return; }
      section.replaceChildren(el("p", { class: "error", id: "view-error" }, e.message));
    }
  };
  refresh();
  timer = setInterval(refresh, REFRESH_MS);
}

function showLogin(message) {
  document.getElementById("login").hidden = false;
  document.getElementById("view").hidden = true;
  document.getElementById("nav").hidden = true;
  document.getElementById("logout").hidden = true;
  document.getElementById("who").textContent = "";
  document.getElementById("login-error").textContent = message || "";
}

function signOut(message) {
  leaveView();
  token = null;
  me = null;
  sessionStorage.removeItem(TOKEN_KEY);
  showLogin(message);
}

async function signIn() {
  try {
    me = await api("/v1/whoami");
  } catch (e) {
    signOut(e.status === 401 ? "That token is not valid here." : e.message);
    return;
  }
  sessionStorage.setItem(TOKEN_KEY, token);
  document.getElementById("login").hidden = true;
  document.getElementById("view").hidden = false;
  document.getElementById("nav").hidden = false;
  document.getElementById("logout").hidden = false;
  document.getElementById("who").textContent = `${me.tenant} · ${me.role}`;
  render();
}

document.getElementById("login-form").addEventListener("submit", (event) => {
  event.preventDefault();
  token = document.getElementById("token").value.trim();
  document.getElementById("token").value = "";
  if (token) signIn();
});
document.getElementById("logout").addEventListener("click", () => signOut());
window.addEventListener("hashchange", () => { if (me) render(); });

if (token) signIn(); else showLogin();
