//! Leader forwarding: a follower sends requests that need the leader to it
//! and relays the answer, and waits out an election under way.

use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use axum::body::{Body, Bytes};
use axum::extract::{Request, State as Shared};
use axum::http::{Method, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use wasmgrid_api::*;

use super::answer::*;
use super::*;

impl App {
    pub(super) fn status(&self) -> Status {
        self.0.replica.status()
    }

    /// The leader's id and URL, or `None` when this replica leads. Waits a
    /// little for an election under way.
    pub(super) async fn leader(&self) -> Answer<Option<(u64, String)>> {
        let wait = self.0.request_timeout.min(Duration::from_secs(2));
        if !self.0.replica.wait_for(wait, |s| s.leader != 0).await {
            return Err(ProposeError::NoLeader.into());
        }
        let status = self.status();
        if status.is_leader {
            return Ok(None);
        }
        match status.members.get(&status.leader) {
            Some(url) => Ok(Some((status.leader, url.clone()))),
            None => Err(Failure::internal(format!("the leader {} is not a known replica", status.leader))),
        }
    }

    /// A function of `tenant` from this replica's state; 404 if it has none.
    pub(super) fn function(&self, tenant: &str, name: String) -> Answer<Function> {
        let f = self.0.replica.state().function(tenant, &name)?;
        Ok(f.ok_or(StateError::FunctionNotFound { tenant: tenant.into(), name })?)
    }

    /// Replicates `command`; inside a request with an id, as that
    /// request's next write, applied at most once.
    pub(super) async fn propose(&self, command: Command) -> Answer<Applied> {
        let once = REQUEST.try_with(|(id, writes)| format!("{id}/{}", writes.fetch_add(1, Ordering::Relaxed)));
        let command = match once {
            Ok(id) => Command::Once { id, command: Box::new(command) },
            Err(_) => command,
        };
        Ok(self.0.replica.propose(command).await?)
    }

    pub(super) async fn barrier(&self) -> Answer<()> {
        Ok(self.0.replica.read_barrier().await?)
    }

    /// A stored module's bytes: from this replica's state, after a read
    /// barrier if it has not applied the upload yet; 404 if it was never stored.
    pub(super) async fn module(&self, sha256: &str) -> Answer<Vec<u8>> {
        let state = self.0.replica.state();
        if let Some(bytes) = state.module(sha256)? {
            return Ok(bytes);
        }
        self.barrier().await?;
        Ok(state.module(sha256)?.ok_or_else(|| StateError::ModuleNotFound { sha256: sha256.into() })?)
    }

    /// Refuses a function that needs a GPU when no live node has one.
    pub(super) fn require_gpu_node(&self, name: &str) -> Answer<()> {
        let nodes = self.0.nodes.lock().map_err(poisoned)?;
        let any = nodes.values().any(|(at, beat)| at.elapsed() < NODE_LIVENESS && beat.gpu.is_some());
        if any {
            return Ok(());
        }
        Err(Failure::new(
            StatusCode::CONFLICT,
            "no_gpu_node",
            format!(
                "function `{name}` requires a GPU, and no live node has one (start a node with a GPU, or deploy with `--gpu preferred` to run anywhere)"
            ),
        ))
    }

    /// The world of a stored module: from memory, else by reading it.
    pub(super) async fn kind_of(&self, sha256: &str) -> Answer<&'static str> {
        if let Some(kind) = self.0.kinds.lock().map_err(poisoned)?.get(sha256) {
            return Ok(kind);
        }
        let bytes = self.module(sha256).await?;
        let kind = crate::module::inspect(&bytes).map_err(|e| Failure::internal(format!("stored module: {e}")))?;
        self.0.kinds.lock().map_err(poisoned)?.insert(sha256.to_string(), kind);
        Ok(kind)
    }
}

/// The least time a forwarded request is given, however little of the
/// caller's request timeout is left.
const MIN_FORWARD: Duration = Duration::from_millis(100);

/// Set on the answer of a replica that was forwarded a request but no
/// longer leads.
const NOT_LEADER: &str = "x-wasmgrid-not-leader";

tokio::task_local! {
    /// The id of the write request being handled (namespaced by its token)
    /// and how many commands it has proposed: a retried request proposes
    /// the same commands in the same order, so each keeps its id.
    static REQUEST: (String, AtomicU32);
}

/// Runs a request on this replica, the leader, under its request id.
async fn run_here(request: Request, next: Next) -> Response {
    let Some(id) = request.headers().get(REQUEST_ID_HEADER) else { return next.run(request).await };
    let valid =
        |s: &str| (1..=64).contains(&s.len()) && s.bytes().all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b));
    let Some(id) = id.to_str().ok().filter(|s| valid(s)) else {
        let message = format!("{REQUEST_ID_HEADER}: 1 to 64 of A-Z a-z 0-9 . _ -");
        return Failure::bad(message).into_response();
    };
    // One token's ids cannot name another's writes.
    let auth = request.headers().get(header::AUTHORIZATION).map_or(&b""[..], |v| v.as_bytes());
    let scope = format!("{}:{id}", &token_hash(&String::from_utf8_lossy(auth))[..16]);
    REQUEST.scope((scope, AtomicU32::new(0)), next.run(request)).await
}

/// A request id for a write forwarded without one.
fn new_request_id(replica: u64) -> String {
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let nanos = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_nanos());
    format!("r{replica}-{nanos:x}-{}", NEXT.fetch_add(1, Ordering::Relaxed))
}

/// Sends requests that need the leader to it, when this replica is not it.
/// A leader that cannot be reached (it just died) is waited out: the
/// request goes to whichever replica is elected next, within the request
/// timeout.
pub(super) async fn to_leader(Shared(app): Shared<App>, request: Request, next: Next) -> Response {
    if let Some(refused) = app.certificate_refusal(&request) {
        return refused.into_response();
    }
    let path = request.uri().path();
    // Node heartbeats (liveness, usage, traffic, trials) live in the leader's memory only.
    let needs_leader = (request.method() != Method::GET && path != "/v1/raft")
        || matches!(path, "/v1/nodes" | "/v1/usage" | "/v1/traffic")
        || (path.starts_with("/v1/jobs/") && path.ends_with("/attempts"))
        || (path.starts_with("/v1/functions/") && path.ends_with("/diff"));
    if !needs_leader {
        return next.run(request).await;
    }
    let deadline = Instant::now() + app.0.request_timeout;
    let (id, url) = match app.leader().await {
        Ok(None) => return run_here(request, next).await,
        Ok(Some(leader)) => leader,
        Err(e) => return e.into_response(),
    };
    if request.headers().contains_key(FORWARDED_HEADER) {
        // Leadership moved while the request was on its way: the replica
        // that forwarded it finds the new leader and sends it there.
        let mut refused = no_quorum(format!(
            "no quorum: replica {} is not the leader and the request was already forwarded once",
            app.0.replica.id()
        ))
        .into_response();
        refused.headers_mut().insert(NOT_LEADER, header::HeaderValue::from_static("1"));
        return refused;
    }
    let (mut parts, body) = request.into_parts();
    if !parts.headers.contains_key(REQUEST_ID_HEADER)
        && let Ok(id) = header::HeaderValue::from_str(&new_request_id(app.0.replica.id()))
    {
        parts.headers.insert(REQUEST_ID_HEADER, id);
    }
    let body = match axum::body::to_bytes(body, MAX_MODULE_BYTES + (1 << 20)).await {
        Ok(b) => b,
        Err(_) => {
            let message = format!("the body is over the limit of {MAX_MODULE_BYTES} bytes");
            return Failure::new(StatusCode::PAYLOAD_TOO_LARGE, "too_large", message).into_response();
        }
    };
    let mut leader = (id, url);
    loop {
        let failure = match forward(&app, &leader, &parts, body.clone(), deadline).await {
            Ok(response) => return response,
            Err(failure) => failure,
        };
        // The leader is gone: wait for the next one and send it the request
        // again. Its request id makes sure that a request the old leader
        // did apply is not applied twice (a deploy must not make two
        // versions): the new leader answers it as the first time.
        let gone = leader.0;
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() || !app.0.replica.wait_for(left, |s| s.leader != 0 && s.leader != gone).await {
            return failure.into_response();
        }
        match app.leader().await {
            Ok(None) => return run_here(Request::from_parts(parts, Body::from(body)), next).await,
            Ok(Some(l)) => leader = l,
            Err(e) => return e.into_response(),
        }
    }
}

/// Relays a request to the leader, by `deadline` (a deploy, which compiles
/// and runs `init` on the leader, by its own longer limit). Fails only when
/// the leader cannot be reached or does not answer in time (a paused leader
/// accepts connections but never answers); any answer it gives, errors
/// included, is relayed.
pub(super) async fn forward(
    app: &App,
    (leader, url): &(u64, String),
    parts: &axum::http::request::Parts,
    body: Bytes,
    deadline: Instant,
) -> Result<Response, Failure> {
    let leader = *leader;
    let path = parts.uri.path_and_query().map_or(parts.uri.path(), |p| p.as_str());
    let mut outgoing = app
        .0
        .http
        .request(parts.method.clone(), format!("{url}{path}"))
        .header(FORWARDED_HEADER, app.0.replica.id().to_string())
        .body(body);
    if parts.method == Method::POST && parts.uri.path().starts_with("/v1/functions/") {
        // A deploy runs the version's `init` on the leader first: a compile
        // and a run, each bounded on its own.
        outgoing = outgoing.timeout(DEPLOY_TIMEOUT);
    } else {
        outgoing = outgoing.timeout(deadline.saturating_duration_since(Instant::now()).max(MIN_FORWARD));
    }
    let names = [TENANT_HEADER, REQUEST_ID_HEADER].map(header::HeaderName::from_static);
    for name in [header::CONTENT_TYPE, header::AUTHORIZATION].into_iter().chain(names) {
        if let Some(value) = parts.headers.get(&name) {
            outgoing = outgoing.header(name, value);
        }
    }
    let answer = outgoing
        .send()
        .await
        .map_err(|e| no_quorum(format!("no quorum: the leader (replica {leader} at {url}) cannot be reached: {e}")))?;
    let status = answer.status();
    if answer.headers().contains_key(NOT_LEADER) {
        return Err(no_quorum(format!("no quorum: replica {leader} is no longer the leader")));
    }
    let content_type = answer.headers().get(header::CONTENT_TYPE).cloned();
    let bytes = answer
        .bytes()
        .await
        .map_err(|e| no_quorum(format!("no quorum: the leader (replica {leader}) stopped answering: {e}")))?;
    let mut response = Response::new(Body::from(bytes));
    *response.status_mut() = status;
    if let Some(ct) = content_type {
        response.headers_mut().insert(header::CONTENT_TYPE, ct);
    }
    Ok(response)
}

/// Records when this replica becomes leader (node liveness starts over).
pub(super) async fn watch_leadership(app: App) {
    let mut rx = app.0.replica.subscribe();
    let mut leading = false;
    loop {
        let now_leading = rx.borrow_and_update().is_leader;
        if now_leading != leading {
            leading = now_leading;
            if let Ok(mut since) = app.0.leader_since.lock() {
                *since = leading.then(Instant::now);
            }
            if let Ok(mut nodes) = app.0.nodes.lock() {
                nodes.clear();
            }
        }
        if rx.changed().await.is_err() {
            return;
        }
    }
}
