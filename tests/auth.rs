//! Authorisation, walked endpoint by endpoint on a real control plane and
//! node: every API endpoint and the gateway are called with no token, a
//! bad token, a revoked token, another tenant's token, a read-only token,
//! an invoke-only token, the right token and the admin token, and each
//! answer's status is checked. Another tenant's resources are a 404 that
//! reads exactly like a name nobody uses.

mod common;

use std::time::{Duration, Instant};

use common::grid::{Node, Replicas};
use reqwest::Method;
use serde_json::{Value, json};
use wasmgrid_api::{Client, DeployRequest, Role, TokenRequest};
use wasmgrid_test_artifacts as guests;

/// Who calls, in the order of every expectation row below.
const WHO: [&str; 8] = ["none", "bad", "revoked", "other", "read-only", "invoke-only", "right", "admin"];

struct Tokens {
    revoked: String,
    other: String,
    read_only: String,
    invoke_only: String,
    right: String,
    node: String,
}

impl Tokens {
    fn of(&self, who: &str) -> Option<&str> {
        match who {
            "none" => None,
            "bad" => Some("wgt_not-a-token-anyone-was-given"),
            "revoked" => Some(&self.revoked),
            "other" => Some(&self.other),
            "read-only" => Some(&self.read_only),
            "invoke-only" => Some(&self.invoke_only),
            "right" => Some(&self.right),
            "admin" => Some(common::TOKEN),
            "node" => Some(&self.node),
            other => panic!("nobody is {other}"),
        }
    }
}

/// One call: (status, body).
async fn call(
    method: Method,
    url: &str,
    token: Option<&str>,
    tenant: Option<&str>,
    body: Option<&Value>,
) -> (u16, String) {
    try_call(method, url, token, tenant, body).await.expect("an answer, never a dropped connection")
}

async fn try_call(
    method: Method,
    url: &str,
    token: Option<&str>,
    tenant: Option<&str>,
    body: Option<&Value>,
) -> reqwest::Result<(u16, String)> {
    let mut request = reqwest::Client::new().request(method, url);
    if let Some(token) = token {
        request = request.bearer_auth(token);
    }
    if let Some(tenant) = tenant {
        request = request.header(wasmgrid_api::TENANT_HEADER, tenant);
    }
    if let Some(body) = body {
        request = request.json(body);
    }
    let response = request.send().await?;
    let status = response.status().as_u16();
    Ok((status, response.text().await?))
}

fn client(replicas: &Replicas, token: &str) -> Client {
    replicas.client(1).with_token(Some(token.into()))
}

async fn make_token(admin: &Client, tenant: Option<&str>, role: Role) -> String {
    admin.create_token(&TokenRequest { tenant: tenant.map(str::to_string), role }).await.expect("token").token
}

/// Waits until the node answers `url` for `token` with `status`.
async fn node_answers(url: &str, token: Option<&str>, status: u16) -> String {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        // The node may not listen yet.
        let (s, body) = try_call(Method::POST, url, token, None, Some(&json!({"amount": 10.0})))
            .await
            .unwrap_or_else(|e| (0, e.to_string()));
        if s == status {
            return body;
        }
        assert!(Instant::now() < deadline, "{url} never answered {status}: {s} {body}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_endpoint_admits_only_the_right_token() {
    let replicas = Replicas::start(1, 1000);
    replicas.wait_leader(Duration::from_secs(15)).await;
    let admin = replicas.client(1);
    admin.create_tenant("acme").await.expect("acme");
    admin.create_tenant("globex").await.expect("globex");
    let revoked = make_token(&admin, Some("acme"), Role::Full).await;
    let revoked_id = wasmgrid_api::token_id(&wasmgrid_api::token_hash(&revoked));
    admin.revoke_token(&revoked_id).await.expect("revoke");
    let tokens = Tokens {
        revoked,
        other: make_token(&admin, Some("globex"), Role::Full).await,
        read_only: make_token(&admin, Some("acme"), Role::ReadOnly).await,
        invoke_only: make_token(&admin, Some("acme"), Role::InvokeOnly).await,
        right: make_token(&admin, Some("acme"), Role::Full).await,
        node: make_token(&admin, None, Role::Node).await,
    };

    // acme's things: a scorer `f`, a function `g` to remove, a module only
    // acme uploaded, and a job the admin ran for acme over a local file.
    let acme = client(&replicas, &tokens.right);
    let model = r#"{"features": ["amount"], "weights": [0.01], "bias": -1.0}"#;
    let logreg = acme.upload_module(std::fs::read(guests::LOGREG).expect("logreg")).await.expect("upload");
    let private = acme.upload_module(std::fs::read(guests::FALL_DETECT).expect("fall")).await.expect("upload");
    let request = DeployRequest {
        module: logreg.sha256.clone(),
        config: [("model".to_string(), model.to_string())].into(),
        ..DeployRequest::default()
    };
    acme.deploy("f", &request).await.expect("deploy f");
    acme.deploy("g", &request).await.expect("deploy g");
    let data = replicas.dir.path().join("rows.jsonl");
    common::write_jsonl(&data, &[json!({"amount": 1.0}), json!({"amount": 2.0})]);
    let job = replicas
        .client(1)
        .with_tenant(Some("acme".into()))
        .submit_job(&wasmgrid_api::JobRequest {
            function: "f".into(),
            input: data.display().to_string(),
            output: replicas.dir.path().join("out").display().to_string(),
            ..Default::default()
        })
        .await
        .expect("job")
        .id;
    let node = Node::start(&replicas.urls(), &replicas.dir.path().join("node"));
    let cp = replicas.url(1);
    let fn_url = format!("{}/v1/fn/acme/f", node.url);
    node_answers(&fn_url, Some(&tokens.right), 200).await;

    let beat = serde_json::to_value(wasmgrid_api::Heartbeat {
        address: "http://127.0.0.1:9".into(),
        ..wasmgrid_api::Heartbeat::default()
    })
    .expect("json");
    // (method, path, body, expected status for each of WHO; 0 = not asked).
    let api: Vec<(Method, String, Option<Value>, [u16; 8])> = vec![
        (Method::GET, "/v1/health".into(), None, [200, 200, 200, 200, 200, 200, 200, 200]),
        (Method::GET, "/v1/whoami".into(), None, [401, 401, 401, 200, 200, 200, 200, 200]),
        (Method::GET, "/v1/functions".into(), None, [401, 401, 401, 200, 200, 403, 200, 200]),
        (Method::GET, "/v1/functions/f".into(), None, [401, 401, 401, 404, 200, 403, 200, 200]),
        (Method::GET, format!("/v1/modules/{}", private.sha256), None, [401, 401, 401, 404, 200, 403, 200, 200]),
        (
            Method::POST,
            "/v1/functions/f/versions".into(),
            Some(json!({"module": private.sha256})),
            [401, 401, 401, 404, 403, 403, 201, 201],
        ),
        (
            Method::POST,
            "/v1/functions/f/rollback".into(),
            Some(json!({"version": 1})),
            [401, 401, 401, 404, 403, 403, 200, 200],
        ),
        (Method::DELETE, "/v1/functions/g".into(), None, [401, 401, 401, 404, 403, 403, 200, 0]),
        (Method::GET, "/v1/nodes".into(), None, [401, 401, 401, 200, 200, 200, 200, 200]),
        (Method::POST, "/v1/nodes/n1/heartbeat".into(), Some(beat.clone()), [401, 401, 401, 403, 403, 403, 403, 0]),
        (Method::GET, "/v1/routes?wait_ms=0".into(), None, [401, 401, 401, 403, 403, 403, 403, 200]),
        (
            Method::POST,
            "/v1/jobs".into(),
            Some(json!({"function": "f", "input": "s3://nowhere/in.jsonl", "output": "s3://nowhere/out"})),
            [401, 401, 401, 404, 403, 403, 400, 0],
        ),
        (Method::GET, "/v1/jobs".into(), None, [401, 401, 401, 200, 200, 403, 200, 200]),
        (Method::GET, format!("/v1/jobs/{job}"), None, [401, 401, 401, 404, 200, 403, 200, 200]),
        (Method::GET, format!("/v1/jobs/{job}/logs"), None, [401, 401, 401, 404, 200, 403, 200, 200]),
        (Method::GET, format!("/v1/jobs/{job}/events"), None, [401, 401, 401, 404, 200, 403, 200, 200]),
        (Method::POST, format!("/v1/jobs/{job}/cancel"), None, [401, 401, 401, 404, 403, 403, 200, 200]),
        (
            Method::POST,
            "/v1/tasks/lease".into(),
            Some(json!({"node": "n1", "max": 1, "wait_ms": 0})),
            [401, 401, 401, 403, 403, 403, 403, 0],
        ),
        (
            Method::POST,
            "/v1/tasks/report".into(),
            Some(json!({"node": "n1", "results": []})),
            [401, 401, 401, 403, 403, 403, 403, 0],
        ),
        (Method::POST, "/v1/raft".into(), Some(json!("garbage")), [401, 401, 401, 403, 403, 403, 403, 400]),
        (Method::GET, "/v1/cluster".into(), None, [401, 401, 401, 403, 403, 403, 403, 200]),
        (Method::GET, "/v1/tenants".into(), None, [401, 401, 401, 403, 403, 403, 403, 200]),
        (
            Method::POST,
            "/v1/tenants".into(),
            Some(json!({"name": "initech"})),
            [401, 401, 401, 403, 403, 403, 403, 201],
        ),
        (Method::DELETE, "/v1/tenants/initech".into(), None, [401, 401, 401, 403, 403, 403, 403, 200]),
        (Method::GET, "/v1/tokens".into(), None, [401, 401, 401, 403, 403, 403, 403, 200]),
        (
            Method::POST,
            "/v1/tokens".into(),
            Some(json!({"tenant": "globex", "role": "read-only"})),
            [401, 401, 401, 403, 403, 403, 403, 201],
        ),
        (Method::DELETE, "/v1/tokens/tok_000000000000".into(), None, [401, 401, 401, 403, 403, 403, 403, 404]),
    ];
    let mut failures = Vec::new();
    for (method, path, body, expected) in &api {
        for (who, want) in WHO.iter().zip(expected) {
            if *want == 0 {
                continue;
            }
            // The admin acts on acme, as the tenant tokens do.
            let tenant = (*who == "admin").then_some("acme");
            let (status, text) =
                call(method.clone(), &format!("{cp}{path}"), tokens.of(who), tenant, body.as_ref()).await;
            if status != *want {
                failures.push(format!("{method} {path} as {who}: {status} (want {want}): {text}"));
            }
            if *who == "other" && text.contains("acme") {
                failures.push(format!("{method} {path} as another tenant mentions acme: {text}"));
            }
        }
    }

    // Nodes' endpoints take the node token.
    let node_token = tokens.of("node");
    for (method, path, body) in [
        (Method::GET, format!("/v1/modules/{}", private.sha256), None),
        (Method::GET, "/v1/routes?wait_ms=0".to_string(), None),
        (Method::POST, "/v1/nodes/n1/heartbeat".to_string(), Some(beat.clone())),
        (Method::POST, "/v1/tasks/lease".to_string(), Some(json!({"node": "n1", "max": 1, "wait_ms": 0}))),
    ] {
        let (status, text) = call(method.clone(), &format!("{cp}{path}"), node_token, None, body.as_ref()).await;
        if status != 200 {
            failures.push(format!("{method} {path} as a node: {status}: {text}"));
        }
    }
    for (method, path) in [(Method::GET, "/v1/functions"), (Method::GET, "/v1/tokens")] {
        let (status, _) = call(method.clone(), &format!("{cp}{path}"), node_token, None, None).await;
        if status != 403 {
            failures.push(format!("{method} {path} as a node: {status} (want 403)"));
        }
    }

    // Which modules a node has warm: acme sees its own, another tenant
    // none of acme's, the admin all.
    let nodes_url = format!("{cp}/v1/nodes");
    let deadline = Instant::now() + Duration::from_secs(20);
    while !call(Method::GET, &nodes_url, tokens.of("right"), None, None).await.1.contains(&logreg.sha256) {
        assert!(Instant::now() < deadline, "the node never reported acme's module warm");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let (_, seen) = call(Method::GET, &nodes_url, tokens.of("admin"), None, None).await;
    assert!(seen.contains(&logreg.sha256), "the admin sees every warm module: {seen}");
    let (status, seen) = call(Method::GET, &nodes_url, tokens.of("other"), None, None).await;
    if status != 200 || seen.contains(&logreg.sha256) {
        failures.push(format!("GET /v1/nodes as another tenant shows acme's warm module: {status} {seen}"));
    }

    // The gateway, with the same callers.
    let gateway: Vec<(Method, String, [u16; 8])> = vec![
        (Method::POST, "/v1/fn/acme/f".into(), [401, 401, 401, 404, 403, 200, 200, 200]),
        (Method::POST, "/v1/http/acme/f/".into(), [401, 401, 401, 404, 403, 400, 400, 400]),
        (Method::GET, "/metrics".into(), [401, 401, 401, 403, 403, 403, 403, 200]),
        (Method::GET, "/v1/routes".into(), [401, 401, 401, 403, 403, 403, 403, 200]),
        (Method::GET, "/v1/health".into(), [200, 200, 200, 200, 200, 200, 200, 200]),
    ];
    let row = json!({"amount": 10.0});
    for (method, path, expected) in &gateway {
        for (who, want) in WHO.iter().zip(expected) {
            let (status, text) =
                call(method.clone(), &format!("{}{path}", node.url), tokens.of(who), None, Some(&row)).await;
            if status != *want {
                failures.push(format!("gateway {method} {path} as {who}: {status} (want {want}): {text}"));
            }
        }
    }
    assert!(failures.is_empty(), "{} wrong answers:\n{}", failures.len(), failures.join("\n"));

    // Another tenant's function or job reads exactly like one nobody has.
    let (_, theirs) = call(Method::POST, &fn_url, tokens.of("other"), None, Some(&row)).await;
    let (_, nobodys) =
        call(Method::POST, &format!("{}/v1/fn/acme/zz", node.url), tokens.of("right"), None, Some(&row)).await;
    assert_eq!(theirs, nobodys.replace("acme/zz", "acme/f"));
    let (_, theirs) = call(Method::GET, &format!("{cp}/v1/jobs/{job}"), tokens.of("other"), None, None).await;
    let (_, nobodys) = call(Method::GET, &format!("{cp}/v1/jobs/job-99999"), tokens.of("other"), None, None).await;
    assert_eq!(theirs, nobodys.replace("job-99999", &job));
    // The same bytes uploaded by another tenant are new to it.
    let theirs = client(&replicas, &tokens.other)
        .upload_module(std::fs::read(guests::LOGREG).expect("logreg"))
        .await
        .expect("upload");
    assert!(!theirs.existed, "another tenant learns nothing from an upload");
    // Listings hold the caller's own things only.
    let (_, listed) = call(Method::GET, &format!("{cp}/v1/functions"), tokens.of("other"), None, None).await;
    assert!(!listed.contains("\"f\""), "{listed}");
    let (_, listed) = call(Method::GET, &format!("{cp}/v1/jobs"), tokens.of("other"), None, None).await;
    assert!(!listed.contains(&job), "{listed}");
    // A tenant token acts on its own tenant only.
    let (status, _) = call(Method::GET, &format!("{cp}/v1/functions"), tokens.of("right"), Some("globex"), None).await;
    assert_eq!(status, 403);
    // Tenants run jobs on object stores, not on the grid's own files.
    let local = json!({"function": "f", "input": data.display().to_string(), "output": "/tmp/out"});
    let (status, text) = call(Method::POST, &format!("{cp}/v1/jobs"), tokens.of("right"), None, Some(&local)).await;
    assert_eq!(status, 403, "{text}");
    assert!(text.contains("only the admin token"), "{text}");
    // Nodes see token hashes, never tokens.
    let (_, routes) = call(Method::GET, &format!("{cp}/v1/routes?wait_ms=0"), tokens.of("node"), None, None).await;
    for who in ["right", "read-only", "invoke-only", "other", "admin"] {
        assert!(!routes.contains(tokens.of(who).expect("token")), "the route table holds {who}'s token");
    }

    // A token revoked now stops working on the gateway within moments.
    let invoke_only_id = wasmgrid_api::token_id(&wasmgrid_api::token_hash(&tokens.invoke_only));
    admin.revoke_token(&invoke_only_id).await.expect("revoke");
    node_answers(&fn_url, Some(&tokens.invoke_only), 401).await;
    // A public function takes calls without a token; private ones do not.
    let public = DeployRequest { public: true, ..request.clone() };
    acme.deploy("open", &public).await.expect("deploy open");
    node_answers(&format!("{}/v1/fn/acme/open", node.url), None, 200).await;
    // Removing a tenant removes its functions and its tokens.
    admin.delete_tenant("acme").await.expect("rm acme");
    node_answers(&fn_url, Some(&tokens.right), 401).await;
    node_answers(&fn_url, Some(common::TOKEN), 404).await;
    node_answers(&format!("{}/v1/fn/acme/open", node.url), None, 401).await;
}
