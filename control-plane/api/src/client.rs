//! A control-plane client that fails over between replicas.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use bytes::Bytes;
use reqwest::{Method, StatusCode};
use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::types::*;

/// What a call to the control plane (or a node) can fail with.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// The server answered with an error.
    #[error("{message} ({status}, {code})")]
    Http {
        /// The HTTP status.
        status: u16,
        /// The error code from the body.
        code: String,
        /// The message from the body.
        message: String,
    },
    /// No replica could be reached.
    #[error("cannot reach the control plane at {urls}: {last}")]
    Unreachable {
        /// The URLs tried.
        urls: String,
        /// The last failure.
        last: String,
    },
    /// A URL is not usable.
    #[error("bad URL `{url}`: {reason}")]
    BadUrl {
        /// The URL given.
        url: String,
        /// What is wrong with it.
        reason: String,
    },
    /// The answer was not what the API promises.
    #[error("unexpected answer from {url}: {reason}")]
    Decode {
        /// Who answered.
        url: String,
        /// What was wrong.
        reason: String,
    },
}

impl ApiError {
    /// The HTTP status, when the server answered.
    pub fn status(&self) -> Option<u16> {
        match self {
            ApiError::Http { status, .. } => Some(*status),
            _ => None,
        }
    }
}

/// Accepts `host:port`, `http://host:port` or `http://host:port/`; returns
/// `http://host:port` with no trailing slash.
pub fn normalize_url(url: &str) -> Result<String, ApiError> {
    let url = url.trim();
    if url.is_empty() {
        return Err(ApiError::BadUrl { url: url.into(), reason: "empty".into() });
    }
    let full = if url.contains("://") { url.to_string() } else { format!("http://{url}") };
    if !full.starts_with("http://") && !full.starts_with("https://") {
        return Err(ApiError::BadUrl { url: url.into(), reason: "only http:// and https:// are supported".into() });
    }
    let parsed = reqwest::Url::parse(&full).map_err(|e| ApiError::BadUrl { url: url.into(), reason: e.to_string() })?;
    if parsed.host().is_none() {
        return Err(ApiError::BadUrl { url: url.into(), reason: "no host".into() });
    }
    Ok(full.trim_end_matches('/').to_string())
}

/// How long an idle pooled connection is kept: under the servers' default
/// header timeout (10 s), which closes idle connections, so a request is
/// not sent on a connection the server is closing.
const IDLE: Duration = Duration::from_secs(5);

/// Talks to a control plane through any of its replicas.
#[derive(Debug)]
pub struct Client {
    urls: Vec<String>,
    current: AtomicUsize,
    http: reqwest::Client,
    token: Option<String>,
    tenant: Option<String>,
}

/// What a request carries.
enum Body {
    None,
    Json(Bytes),
    Wasm(Bytes),
    Octets(Bytes),
}

impl Client {
    /// A client for the replicas at `urls` (tried in order, starting with
    /// the last one that answered). Requests time out after `timeout`.
    pub fn new(urls: &[impl AsRef<str>], timeout: Duration) -> Result<Self, ApiError> {
        let urls = urls.iter().map(|u| normalize_url(u.as_ref())).collect::<Result<Vec<_>, _>>()?;
        if urls.is_empty() {
            return Err(ApiError::BadUrl { url: String::new(), reason: "no control-plane URL given".into() });
        }
        let http = crate::tls::client_builder()
            .map_err(|reason| ApiError::BadUrl { url: urls.join(","), reason: reason.to_string() })?
            .timeout(timeout)
            .connect_timeout(Duration::from_secs(1))
            .pool_idle_timeout(IDLE)
            .build()
            .map_err(|e| ApiError::BadUrl { url: urls.join(","), reason: e.to_string() })?;
        Ok(Client { urls, current: AtomicUsize::new(0), http, token: None, tenant: None })
    }

    /// Sends `token` as `Authorization: Bearer` with every request.
    pub fn with_token(mut self, token: Option<String>) -> Self {
        self.token = token;
        self
    }

    /// Acts on `tenant` (an admin token only; a tenant token always acts
    /// on its own tenant).
    pub fn with_tenant(mut self, tenant: Option<String>) -> Self {
        self.tenant = tenant;
        self
    }

    fn authorize(&self, mut request: reqwest::RequestBuilder) -> reqwest::RequestBuilder {
        if let Some(token) = &self.token {
            request = request.bearer_auth(token);
        }
        if let Some(tenant) = &self.tenant {
            request = request.header(crate::TENANT_HEADER, tenant);
        }
        request
    }

    /// The replica URLs.
    pub fn urls(&self) -> &[String] {
        &self.urls
    }

    /// The URL the last successful request went to.
    pub fn current_url(&self) -> &str {
        &self.urls[self.current.load(Ordering::Relaxed) % self.urls.len()]
    }

    async fn send(&self, method: Method, path: &str, body: Body) -> Result<(String, reqwest::Response), ApiError> {
        let start = self.current.load(Ordering::Relaxed);
        let mut last = String::from("no replica answered");
        for i in 0..self.urls.len() {
            let index = (start + i) % self.urls.len();
            let url = &self.urls[index];
            let mut request = self.authorize(self.http.request(method.clone(), format!("{url}{path}")));
            request = match &body {
                Body::None => request,
                Body::Json(bytes) => request.header("content-type", "application/json").body(bytes.clone()),
                Body::Wasm(bytes) => request.header("content-type", "application/wasm").body(bytes.clone()),
                Body::Octets(bytes) => request.header("content-type", "application/octet-stream").body(bytes.clone()),
            };
            match request.send().await {
                Ok(response) => {
                    self.current.store(index, Ordering::Relaxed);
                    return Ok((url.clone(), response));
                }
                // Only a failed connection is safe to try elsewhere: a
                // request that was sent may have been acted on.
                Err(e) if e.is_connect() => last = describe(&e),
                Err(e) => return Err(ApiError::Unreachable { urls: url.clone(), last: describe(&e) }),
            }
        }
        Err(ApiError::Unreachable { urls: self.urls.join(", "), last })
    }

    async fn call<T: DeserializeOwned>(&self, method: Method, path: &str, body: Body) -> Result<T, ApiError> {
        let (url, response) = self.send(method, path, body).await?;
        decode(&url, response).await
    }

    fn json(value: &impl Serialize) -> Body {
        Body::Json(serde_json::to_vec(value).unwrap_or_default().into())
    }

    /// Uploads a module; it is stored once under its sha256.
    pub async fn upload_module(&self, bytes: Vec<u8>) -> Result<ModuleInfo, ApiError> {
        self.call(Method::POST, "/v1/modules", Body::Wasm(bytes.into())).await
    }

    /// Downloads a module by sha256 (the caller verifies the hash).
    pub async fn module(&self, sha256: &str) -> Result<Vec<u8>, ApiError> {
        let (url, response) = self.send(Method::GET, &format!("/v1/modules/{}", segment(sha256)), Body::None).await?;
        if !response.status().is_success() {
            return Err(error_from(&url, response).await);
        }
        let bytes = response.bytes().await.map_err(|e| ApiError::Decode { url, reason: describe(&e) })?;
        Ok(bytes.to_vec())
    }

    /// Sends the bytes of artifact `sha256` from `offset`: one chunk of an
    /// upload, which [`Client::commit_artifact`] completes.
    pub async fn upload_chunk(&self, sha256: &str, offset: u64, bytes: Bytes) -> Result<ChunkReceived, ApiError> {
        let path = format!("/v1/artifacts/{}/chunks?offset={offset}", segment(sha256));
        self.call(Method::PUT, &path, Body::Octets(bytes)).await
    }

    /// Completes the upload of artifact `sha256`, of `size` bytes: the
    /// control plane checks its hash and stores it.
    pub async fn commit_artifact(&self, sha256: &str, size: u64) -> Result<ArtifactInfo, ApiError> {
        let path = format!("/v1/artifacts/{}", segment(sha256));
        self.call(Method::POST, &path, Self::json(&CommitArtifact { size })).await
    }

    /// The tenant's artifacts.
    pub async fn artifacts(&self) -> Result<ArtifactList, ApiError> {
        self.call(Method::GET, "/v1/artifacts", Body::None).await
    }

    /// The response carrying artifact `sha256`'s bytes, to stream (the
    /// caller verifies the hash).
    pub async fn artifact(&self, sha256: &str) -> Result<reqwest::Response, ApiError> {
        let (url, response) = self.send(Method::GET, &format!("/v1/artifacts/{}", segment(sha256)), Body::None).await?;
        if !response.status().is_success() {
            return Err(error_from(&url, response).await);
        }
        Ok(response)
    }

    /// Adds a version to a function (creating it) and makes it active.
    pub async fn deploy(&self, name: &str, request: &DeployRequest) -> Result<FunctionSummary, ApiError> {
        self.call(Method::POST, &format!("/v1/functions/{}/versions", segment(name)), Self::json(request)).await
    }

    /// Every function.
    pub async fn functions(&self) -> Result<FunctionList, ApiError> {
        self.call(Method::GET, "/v1/functions", Body::None).await
    }

    /// One function with its versions.
    pub async fn function(&self, name: &str) -> Result<FunctionInfo, ApiError> {
        self.call(Method::GET, &format!("/v1/functions/{}", segment(name)), Body::None).await
    }

    /// Makes an earlier version active.
    pub async fn rollback(&self, name: &str, version: u64) -> Result<FunctionSummary, ApiError> {
        let body = Self::json(&RollbackRequest { version });
        self.call(Method::POST, &format!("/v1/functions/{}/rollback", segment(name)), body).await
    }

    /// Makes `version` active (the candidate's promotion ends its trial).
    pub async fn promote(&self, name: &str, version: u64) -> Result<FunctionSummary, ApiError> {
        let body = Self::json(&RollbackRequest { version });
        self.call(Method::POST, &format!("/v1/functions/{}/promote", segment(name)), body).await
    }

    /// Runs a version as the function's candidate (shadow or canary).
    pub async fn set_trial(&self, name: &str, request: &TrialRequest) -> Result<FunctionSummary, ApiError> {
        self.call(Method::PUT, &format!("/v1/functions/{}/trial", segment(name)), Self::json(request)).await
    }

    /// Ends the function's trial without promoting its candidate.
    pub async fn end_trial(&self, name: &str) -> Result<FunctionSummary, ApiError> {
        self.call(Method::DELETE, &format!("/v1/functions/{}/trial", segment(name)), Body::None).await
    }

    /// How the function's candidate compares with its active version.
    pub async fn diff(&self, name: &str) -> Result<TrialReport, ApiError> {
        self.call(Method::GET, &format!("/v1/functions/{}/diff", segment(name)), Body::None).await
    }

    /// Removes a function and its versions.
    pub async fn delete(&self, name: &str) -> Result<FunctionSummary, ApiError> {
        self.call(Method::DELETE, &format!("/v1/functions/{}", segment(name)), Body::None).await
    }

    /// Creates a trigger.
    pub async fn create_trigger(&self, spec: &TriggerSpec) -> Result<Trigger, ApiError> {
        self.call(Method::POST, "/v1/triggers", Self::json(spec)).await
    }

    /// The tenant's triggers.
    pub async fn triggers(&self) -> Result<TriggerList, ApiError> {
        self.call(Method::GET, "/v1/triggers", Body::None).await
    }

    /// A trigger and what each node running it reported.
    pub async fn trigger(&self, name: &str) -> Result<TriggerStatus, ApiError> {
        self.call(Method::GET, &format!("/v1/triggers/{}", segment(name)), Body::None).await
    }

    /// Pauses (`true`) or resumes a trigger.
    pub async fn pause_trigger(&self, name: &str, paused: bool) -> Result<Trigger, ApiError> {
        let action = if paused { "pause" } else { "resume" };
        self.call(Method::POST, &format!("/v1/triggers/{}/{action}", segment(name)), Body::None).await
    }

    /// Removes a trigger.
    pub async fn delete_trigger(&self, name: &str) -> Result<Trigger, ApiError> {
        self.call(Method::DELETE, &format!("/v1/triggers/{}", segment(name)), Body::None).await
    }

    /// Every registered node.
    pub async fn nodes(&self) -> Result<NodeList, ApiError> {
        self.call(Method::GET, "/v1/nodes", Body::None).await
    }

    /// The answering replica's view of the cluster.
    pub async fn cluster(&self) -> Result<ClusterStatus, ApiError> {
        self.call(Method::GET, "/v1/cluster", Body::None).await
    }

    /// Hands leadership to replica `id`; the cluster's status once it leads.
    pub async fn transfer_leader(&self, id: u64) -> Result<ClusterStatus, ApiError> {
        self.call(Method::POST, "/v1/cluster/leader", Self::json(&TransferLeader { id })).await
    }

    /// Adds replica `id`, reached at `url`, to the cluster as a learner
    /// (admin); the leader promotes it to a voter once it has caught up.
    pub async fn add_replica(&self, id: u64, url: &str) -> Result<ClusterStatus, ApiError> {
        self.call(Method::POST, "/v1/cluster/replicas", Self::json(&AddReplica { id, url: url.into() })).await
    }

    /// Removes replica `id` from the cluster (admin).
    pub async fn remove_replica(&self, id: u64) -> Result<ClusterStatus, ApiError> {
        self.call(Method::DELETE, &format!("/v1/cluster/replicas/{id}"), Body::None).await
    }

    /// The route table, once its revision is past `since` or `wait` passed.
    pub async fn routes(&self, since: u64, wait: Duration) -> Result<RouteTable, ApiError> {
        let path = format!("/v1/routes?since={since}&wait_ms={}", wait.as_millis());
        self.call(Method::GET, &path, Body::None).await
    }

    /// Reports a node alive.
    pub async fn heartbeat(&self, id: &str, heartbeat: &Heartbeat) -> Result<HeartbeatReply, ApiError> {
        self.call(Method::POST, &format!("/v1/nodes/{}/heartbeat", segment(id)), Self::json(heartbeat)).await
    }

    /// Submits a batch job.
    pub async fn submit_job(&self, request: &JobRequest) -> Result<JobInfo, ApiError> {
        self.call(Method::POST, "/v1/jobs", Self::json(request)).await
    }

    /// Every job, newest first.
    pub async fn jobs(&self) -> Result<JobList, ApiError> {
        self.call(Method::GET, "/v1/jobs", Body::None).await
    }

    /// One job.
    pub async fn job(&self, id: &str) -> Result<JobInfo, ApiError> {
        self.call(Method::GET, &format!("/v1/jobs/{}", segment(id)), Body::None).await
    }

    /// The failures of a job's tasks.
    pub async fn job_logs(&self, id: &str) -> Result<JobLogs, ApiError> {
        self.call(Method::GET, &format!("/v1/jobs/{}/logs", segment(id)), Body::None).await
    }

    /// Cancels a job.
    pub async fn cancel_job(&self, id: &str) -> Result<JobInfo, ApiError> {
        self.call(Method::POST, &format!("/v1/jobs/{}/cancel", segment(id)), Body::None).await
    }

    /// Asks for tasks (a node's long-poll).
    pub async fn lease(&self, request: &LeaseRequest) -> Result<Lease, ApiError> {
        self.call(Method::POST, "/v1/tasks/lease", Self::json(request)).await
    }

    /// Reports finished attempts.
    pub async fn report(&self, request: &ReportRequest) -> Result<serde_json::Value, ApiError> {
        self.call(Method::POST, "/v1/tasks/report", Self::json(request)).await
    }

    /// What the caller's tenant used.
    pub async fn usage(&self) -> Result<Usage, ApiError> {
        self.call(Method::GET, "/v1/usage", Body::None).await
    }

    /// Who the token is.
    pub async fn whoami(&self) -> Result<Identity, ApiError> {
        self.call(Method::GET, "/v1/whoami", Body::None).await
    }

    /// Creates a tenant (admin) with the default quotas.
    pub async fn create_tenant(&self, name: &str) -> Result<TenantInfo, ApiError> {
        self.create_tenant_with(name, &Quotas::default()).await
    }

    /// Creates a tenant (admin) with `quotas` over the defaults.
    pub async fn create_tenant_with(&self, name: &str, quotas: &Quotas) -> Result<TenantInfo, ApiError> {
        let request = TenantRequest { name: name.into(), quotas: quotas.clone() };
        self.call(Method::POST, "/v1/tenants", Self::json(&request)).await
    }

    /// Replaces a tenant's quotas (admin).
    pub async fn set_quotas(&self, name: &str, quotas: &Quotas) -> Result<TenantInfo, ApiError> {
        self.call(Method::PUT, &format!("/v1/tenants/{}/quotas", segment(name)), Self::json(quotas)).await
    }

    /// Every tenant (admin).
    pub async fn tenants(&self) -> Result<TenantList, ApiError> {
        self.call(Method::GET, "/v1/tenants", Body::None).await
    }

    /// Removes a tenant with its functions and tokens (admin).
    pub async fn delete_tenant(&self, name: &str) -> Result<TenantInfo, ApiError> {
        self.call(Method::DELETE, &format!("/v1/tenants/{}", segment(name)), Body::None).await
    }

    /// Makes a token (admin); the answer is the only copy of its secret.
    pub async fn create_token(&self, request: &TokenRequest) -> Result<NewToken, ApiError> {
        self.call(Method::POST, "/v1/tokens", Self::json(request)).await
    }

    /// Every token, without secrets (admin).
    pub async fn tokens(&self) -> Result<TokenList, ApiError> {
        self.call(Method::GET, "/v1/tokens", Body::None).await
    }

    /// Revokes a token by id (admin).
    pub async fn revoke_token(&self, id: &str) -> Result<TokenInfo, ApiError> {
        self.call(Method::DELETE, &format!("/v1/tokens/{}", segment(id)), Body::None).await
    }
}

/// Calls a node's gateway: scores `rows` with the function.
pub async fn invoke(
    http: &reqwest::Client,
    token: Option<&str>,
    node_url: &str,
    tenant: &str,
    name: &str,
    request: &InvokeRequest,
) -> Result<InvokeResponse, ApiError> {
    let url = format!("{}/v1/fn/{}/{}", normalize_url(node_url)?, segment(tenant), segment(name));
    let mut outgoing = http.post(&url).json(request);
    if let Some(token) = token {
        outgoing = outgoing.bearer_auth(token);
    }
    let response =
        outgoing.send().await.map_err(|e| ApiError::Unreachable { urls: url.clone(), last: describe(&e) })?;
    decode(&url, response).await
}

impl Client {
    /// The latest calls' logs of `tenant/name` kept by the node at
    /// `node_url`, with this client's token.
    pub async fn call_logs(&self, node_url: &str, tenant: &str, name: &str) -> Result<CallLogs, ApiError> {
        let url = format!("{}/v1/logs/{}/{}", normalize_url(node_url)?, segment(tenant), segment(name));
        self.node_get(url).await
    }

    /// What the latest attempts of `tenant`'s job `id` on the node at
    /// `node_url` logged, with this client's token.
    pub async fn attempt_logs(&self, node_url: &str, tenant: &str, id: &str) -> Result<AttemptLogs, ApiError> {
        let url = format!("{}/v1/jobs/{}/{}/logs", normalize_url(node_url)?, segment(tenant), segment(id));
        self.node_get(url).await
    }

    async fn node_get<T: DeserializeOwned>(&self, url: String) -> Result<T, ApiError> {
        let mut request = self.http.get(&url);
        if let Some(token) = &self.token {
            request = request.bearer_auth(token);
        }
        let response =
            request.send().await.map_err(|e| ApiError::Unreachable { urls: url.clone(), last: describe(&e) })?;
        decode(&url, response).await
    }

    /// Scores `rows` with `tenant`'s function on the node at `node_url`,
    /// with this client's token.
    pub async fn invoke(
        &self,
        node_url: &str,
        tenant: &str,
        name: &str,
        request: &InvokeRequest,
    ) -> Result<InvokeResponse, ApiError> {
        invoke(&self.http, self.token.as_deref(), node_url, tenant, name, request).await
    }
}

/// Percent-encodes a path segment, so a name with `/` in it reaches the
/// server whole (and is refused there with a clear message).
pub fn segment(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

fn describe(e: &reqwest::Error) -> String {
    use std::error::Error as _;
    let mut message = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        message.push_str(": ");
        message.push_str(&s.to_string());
        source = s.source();
    }
    message
}

async fn decode<T: DeserializeOwned>(url: &str, response: reqwest::Response) -> Result<T, ApiError> {
    if !response.status().is_success() {
        return Err(error_from(url, response).await);
    }
    let bytes = response.bytes().await.map_err(|e| ApiError::Decode { url: url.into(), reason: describe(&e) })?;
    serde_json::from_slice(&bytes).map_err(|e| ApiError::Decode { url: url.into(), reason: e.to_string() })
}

async fn error_from(url: &str, response: reqwest::Response) -> ApiError {
    let status = response.status();
    let bytes = response.bytes().await.unwrap_or_default();
    match serde_json::from_slice::<ErrorBody>(&bytes) {
        Ok(body) => ApiError::Http { status: status.as_u16(), code: body.error.code, message: body.error.message },
        Err(_) => ApiError::Http {
            status: status.as_u16(),
            code: code_for(status).into(),
            message: format!("{url} answered {status}: {}", String::from_utf8_lossy(&bytes).trim()),
        },
    }
}

fn code_for(status: StatusCode) -> &'static str {
    match status.as_u16() {
        400 => "bad_request",
        404 => "not_found",
        409 => "conflict",
        413 => "too_large",
        503 => "no_quorum",
        _ => "internal",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_are_normalized() {
        assert_eq!(normalize_url("127.0.0.1:7400").expect("valid"), "http://127.0.0.1:7400");
        assert_eq!(normalize_url("http://localhost:1/").expect("valid"), "http://localhost:1");
        assert_eq!(normalize_url("https://x:1/").expect("valid"), "https://x:1");
        assert!(normalize_url("ftp://x:1").is_err());
        assert!(normalize_url("").is_err());
        assert!(normalize_url("http://").is_err());
    }

    #[test]
    fn segments_are_escaped() {
        assert_eq!(segment("wordcount-1.2_x"), "wordcount-1.2_x");
        assert_eq!(segment("a/b"), "a%2Fb");
        assert_eq!(segment(".."), "..");
        assert_eq!(segment("a b"), "a%20b");
    }
}
