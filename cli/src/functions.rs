//! The client verbs for functions: `deploy`, `functions`, `invoke` and
//! `logs`.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use clap::{Args, Subcommand};
use wasmgrid_api::{
    Client, DeployRequest, FunctionSummary, GpuPlacement, InvokeRequest, NodeState, TrialMode, TrialReport,
    TrialRequest, TrialSpec,
};

use crate::client::{
    ClientArgs, client, client_timed, log_sources, print_guest_output, print_json, short, table, tokio_runtime,
};
use crate::units;

#[derive(Args, Debug)]
#[command(group = clap::ArgGroup::new("trial").args(["shadow", "canary"]))]
pub struct DeployArgs {
    /// The function's name (a-z, 0-9, '-', '_', '.').
    name: String,
    /// The component (.wasm).
    #[arg(required_unless_present = "onnx")]
    function: Option<PathBuf>,
    /// Serve this ONNX model with the stock `onnx-score` component (no code
    /// to write): the model is its artifact `model`; name the columns of a
    /// wide input with `-c features=a,b,...`.
    #[arg(long, value_name = "MODEL.onnx", conflicts_with = "function")]
    onnx: Option<PathBuf>,
    /// Memory limit per instance.
    #[arg(long, value_parser = units::parse_size)]
    memory: Option<u64>,
    /// Time limit per call.
    #[arg(long, value_parser = units::parse_duration)]
    timeout: Option<Duration>,
    /// Config value the function sees (repeatable).
    #[arg(long = "config", short = 'c', value_name = "KEY=VALUE", value_parser = units::parse_key_value)]
    config: Vec<(String, String)>,
    /// Where it may run: `required` only on nodes with a GPU (refused while
    /// none is alive), `preferred` on GPU nodes first, `any` anywhere.
    #[arg(long, value_name = "any|preferred|required", default_value = "any", value_parser = parse_placement)]
    gpu: GpuPlacement,
    /// Serve it on the gateways without a token (for public HTTP endpoints).
    #[arg(long)]
    public: bool,
    /// On how many nodes it is placed: those load it, and every other
    /// node's gateway forwards its calls to them [default: 2].
    #[arg(long, value_name = "N|all")]
    replicas: Option<wasmgrid_api::Replicas>,
    /// A file its calls read by name (`artifacts` interface): a model, a
    /// lookup table; up to 4 GiB, uploaded in chunks and stored once
    /// (repeatable).
    #[arg(long = "artifact", value_name = "NAME=PATH", value_parser = units::parse_key_value)]
    artifacts: Vec<(String, String)>,
    /// Run the new version as a shadow: it scores a copy of the calls the
    /// active version answers, its answers compared (`functions diff`),
    /// never returned; promote it with `functions promote`.
    #[arg(long, conflicts_with = "canary")]
    shadow: bool,
    /// Run the new version as a canary answering this share of calls
    /// (`10%`), chosen by a stable hash of each call's `wasmgrid-key`
    /// header.
    #[arg(long, value_name = "PERCENT", value_parser = units::parse_percent)]
    canary: Option<f64>,
    /// A shadow's or canary's decision threshold: `functions diff` counts
    /// a row's numeric outputs as a disagreement when one version scores
    /// at or over it and the other under [default: 0.5].
    #[arg(long, requires = "trial")]
    threshold: Option<f64>,
    #[command(flatten)]
    client: ClientArgs,
}

impl DeployArgs {
    /// The trial the new version runs as, if any.
    fn trial(&self) -> Option<TrialSpec> {
        let threshold = self.threshold.unwrap_or(wasmgrid_api::DEFAULT_THRESHOLD);
        match (self.shadow, self.canary) {
            (true, _) => Some(TrialSpec { mode: TrialMode::Shadow, percent: 100.0, threshold }),
            (false, Some(percent)) => Some(TrialSpec { mode: TrialMode::Canary, percent, threshold }),
            (false, None) => None,
        }
    }
}

fn parse_placement(s: &str) -> Result<GpuPlacement, String> {
    match s {
        "any" => Ok(GpuPlacement::Any),
        "preferred" => Ok(GpuPlacement::Preferred),
        "required" => Ok(GpuPlacement::Required),
        other => Err(format!("`{other}` is not a GPU placement (any, preferred or required)")),
    }
}

#[derive(Subcommand, Debug)]
pub enum FunctionsCommand {
    /// List functions and their active versions.
    Ls {
        #[command(flatten)]
        client: ClientArgs,
    },
    /// List a function's versions.
    Versions {
        /// The function.
        name: String,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Serve an earlier version again.
    Rollback {
        /// The function.
        name: String,
        /// The version to serve.
        version: u64,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Make a version active: the shadow or canary after its trial (which
    /// ends), or any other.
    Promote {
        /// The function.
        name: String,
        /// The version to serve.
        version: u64,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// How the shadow or canary compares with the active version: per
    /// output column the rows compared, mean and largest absolute
    /// difference and the disagreement rate; both versions' calls and
    /// p50/p99 call time.
    Diff {
        /// The function.
        name: String,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Run an existing version as the shadow (replacing any shadow or
    /// canary).
    Shadow {
        /// The function.
        name: String,
        /// The candidate version.
        version: u64,
        /// The share of calls copied to it.
        #[arg(long, value_name = "PERCENT", value_parser = units::parse_percent, default_value = "100")]
        share: f64,
        /// The decision threshold disagreements are counted at.
        #[arg(long, default_value_t = wasmgrid_api::DEFAULT_THRESHOLD)]
        threshold: f64,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Run an existing version as a canary answering a share of calls, or
    /// change the canary's share.
    Canary {
        /// The function.
        name: String,
        /// The candidate version.
        version: u64,
        /// The share of calls it answers (`10%`).
        #[arg(value_parser = units::parse_percent)]
        percent: f64,
        /// The decision threshold disagreements are counted at.
        #[arg(long, default_value_t = wasmgrid_api::DEFAULT_THRESHOLD)]
        threshold: f64,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Stop the shadow or canary without promoting it.
    Abandon {
        /// The function.
        name: String,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Remove a function and all its versions.
    Rm {
        /// The function.
        name: String,
        #[command(flatten)]
        client: ClientArgs,
    },
}

/// The stock `onnx-score` component: `$WASMGRID_ONNX_SCORE`, else
/// `onnx_score.wasm` beside this binary, else where a build of this
/// checkout puts it (`target/guests/wasm32-wasip2/guest`).
fn onnx_score() -> Result<PathBuf> {
    if let Some(path) = std::env::var_os("WASMGRID_ONNX_SCORE") {
        return Ok(PathBuf::from(path));
    }
    let exe = std::env::current_exe().context("finding this binary")?;
    let dir = exe.parent().map(std::path::Path::to_path_buf).unwrap_or_default();
    let candidates = [dir.join("onnx_score.wasm"), dir.join("../guests/wasm32-wasip2/guest/onnx_score.wasm")];
    match candidates.iter().find(|p| p.exists()) {
        Some(path) => Ok(path.clone()),
        None => bail!(
            "the onnx-score component is not beside this binary: build it (`cargo build --profile guest \
             --target wasm32-wasip2 -p onnx-score`) or set WASMGRID_ONNX_SCORE to its path"
        ),
    }
}

#[derive(Subcommand, Debug)]
pub enum ArtifactsCommand {
    /// List the tenant's artifacts.
    Ls {
        #[command(flatten)]
        client: ClientArgs,
    },
}

/// Bytes per chunk of an artifact upload: small enough that neither side
/// holds much of a large artifact at once.
const CHUNK_BYTES: usize = 2 << 20;

/// Uploads the file at `path` as an artifact, in chunks (none if the
/// tenant stored it before); returns what the control plane recorded.
async fn upload_artifact(client: &Client, path: &std::path::Path) -> Result<wasmgrid_api::ArtifactInfo> {
    use std::io::Read;
    let (sha256, size) = wasmgrid_control_plane::blobs::hash_file(path).map_err(|e| anyhow::anyhow!("{e}"))?;
    if size > wasmgrid_control_plane::blobs::MAX_ARTIFACT_BYTES {
        bail!("{} is {size} bytes, over the artifact limit of 4 GiB", path.display());
    }
    let stored = client.artifacts().await?.artifacts.iter().any(|a| a.sha256 == sha256 && a.size == size);
    if !stored {
        let mut file = std::fs::File::open(path).with_context(|| format!("opening {}", path.display()))?;
        let mut offset = 0u64;
        loop {
            let mut chunk = Vec::with_capacity(CHUNK_BYTES);
            (&mut file).take(CHUNK_BYTES as u64).read_to_end(&mut chunk)?;
            let last = chunk.len() < CHUNK_BYTES;
            let received = client.upload_chunk(&sha256, offset, chunk.into()).await?.received;
            offset = received;
            if last {
                break;
            }
        }
        if offset != size {
            bail!("{} changed while it was uploaded ({offset} bytes sent, {size} hashed)", path.display());
        }
    }
    Ok(client.commit_artifact(&sha256, size).await?)
}

pub fn artifacts(command: ArtifactsCommand) -> Result<()> {
    let ArtifactsCommand::Ls { client: args } = command;
    let list = tokio_runtime()?.block_on(client(&args)?.artifacts())?;
    if args.json {
        return print_json(&list);
    }
    let rows = list.artifacts.iter().map(|a| vec![a.sha256.clone(), a.size.to_string()]).collect();
    table(&["SHA256", "BYTES"], rows);
    Ok(())
}

#[derive(Args, Debug)]
pub struct InvokeArgs {
    /// The function.
    name: String,
    /// Rows as JSON: {"rows": [{...}, ...]}, a list of rows, or one row.
    #[arg(long, short)]
    data: String,
    /// The node to call [default: an alive node the control plane lists].
    #[arg(long)]
    node: Option<String>,
    #[command(flatten)]
    client: ClientArgs,
}

pub fn deploy(args: DeployArgs) -> Result<()> {
    if let Err(reason) = wasmgrid_api::check_name(&args.name) {
        bail!("invalid function name `{}`: {reason}", args.name);
    }
    let mut args = args;
    let function = match (&args.function, &args.onnx) {
        (Some(function), _) => function.clone(),
        (None, Some(model)) => {
            args.artifacts.push(("model".into(), model.display().to_string()));
            onnx_score()?
        }
        (None, None) => bail!("name the component to deploy (or --onnx MODEL.onnx)"),
    };
    let bytes = std::fs::read(&function).with_context(|| format!("reading the component {}", function.display()))?;
    let limit = wasmgrid_control_plane::state::MAX_MODULE_BYTES;
    if bytes.len() > limit {
        bail!("{} is {} bytes, over the module limit of {limit} bytes", function.display(), bytes.len());
    }
    let trial = args.trial();
    let request = DeployRequest {
        module: String::new(),
        memory: args.memory,
        timeout_ms: args.timeout.map(|t| t.as_millis().max(1) as u64),
        config: args.config.into_iter().collect(),
        gpu: args.gpu,
        public: args.public,
        replicas: args.replicas,
        artifacts: Default::default(),
        trial,
    };
    // The leader compiles the component and runs its `init` before it
    // answers: give the deploy longer than other requests.
    let client = client_timed(&args.client, &args.client.url, Duration::from_secs(180))?;
    tokio_runtime()?.block_on(async {
        let module = client.upload_module(bytes).await.context("uploading the module")?;
        let mut artifacts = std::collections::BTreeMap::new();
        for (name, path) in &args.artifacts {
            let artifact = upload_artifact(&client, std::path::Path::new(path))
                .await
                .with_context(|| format!("uploading artifact `{name}` ({path})"))?;
            if !args.client.json {
                let how = if artifact.existed { "already stored" } else { "uploaded" };
                println!("artifact {name}: {} ({} bytes, {how})", short(&artifact.sha256), artifact.size);
            }
            artifacts.insert(name.clone(), artifact.sha256);
        }
        let request = DeployRequest { module: module.sha256.clone(), artifacts, ..request };
        let deployed = client.deploy(&args.name, &request).await.context("deploying")?;
        if args.client.json {
            return print_json(&deployed);
        }
        let stored = if module.existed { ", already stored" } else { "" };
        match (&request.trial, &deployed.trial) {
            (Some(_), Some(trial)) => println!(
                "deployed {} version {} as {} beside version {} ({}, module {}{stored})",
                deployed.name,
                trial.version,
                trial_words(trial),
                deployed.active,
                deployed.kind,
                short(&module.sha256),
            ),
            _ => println!(
                "deployed {} version {} ({}, module {}{stored})",
                deployed.name,
                deployed.active,
                deployed.kind,
                short(&module.sha256),
            ),
        }
        Ok(())
    })
}

pub fn functions(command: FunctionsCommand) -> Result<()> {
    let rt = tokio_runtime()?;
    match command {
        FunctionsCommand::Ls { client: args } => {
            let list = rt.block_on(client(&args)?.functions())?;
            if args.json {
                return print_json(&list);
            }
            let rows = list
                .functions
                .iter()
                .map(|f| {
                    let trial = f.trial.as_ref().map_or(String::new(), |t| match t.spec.mode {
                        TrialMode::Shadow => format!("{} shadow", t.version),
                        TrialMode::Canary => format!("{} canary {}%", t.version, t.spec.percent),
                    });
                    let (active, versions) = (f.active.to_string(), f.versions.to_string());
                    vec![f.name.clone(), active, versions, f.kind.clone(), short(&f.module), trial]
                })
                .collect();
            table(&["NAME", "ACTIVE", "VERSIONS", "KIND", "MODULE", "CANDIDATE"], rows);
        }
        FunctionsCommand::Versions { name, client: args } => {
            let f = rt.block_on(client(&args)?.function(&name))?;
            if args.json {
                return print_json(&f);
            }
            let rows = f
                .versions
                .iter()
                .map(|v| {
                    let config: Vec<String> = v.config.iter().map(|(k, v)| format!("{k}={v}")).collect();
                    vec![
                        v.version.to_string(),
                        if v.version == f.active { "*".into() } else { String::new() },
                        v.kind.clone(),
                        short(&v.module),
                        format!("{}MiB", v.memory >> 20),
                        format!("{}ms", v.timeout_ms),
                        v.gpu.name().into(),
                        config.join(","),
                    ]
                })
                .collect();
            table(&["VERSION", "ACTIVE", "KIND", "MODULE", "MEMORY", "TIMEOUT", "GPU", "CONFIG"], rows);
        }
        FunctionsCommand::Rollback { name, version, client: args } => {
            let f = rt.block_on(client(&args)?.rollback(&name, version))?;
            if args.json {
                return print_json(&f);
            }
            println!("{} now serves version {} (module {})", f.name, f.active, short(&f.module));
        }
        FunctionsCommand::Promote { name, version, client: args } => {
            let f = rt.block_on(client(&args)?.promote(&name, version))?;
            if args.json {
                return print_json(&f);
            }
            println!("{} now serves version {} (module {})", f.name, f.active, short(&f.module));
        }
        FunctionsCommand::Diff { name, client: args } => {
            let report = rt.block_on(client(&args)?.diff(&name))?;
            if args.json {
                return print_json(&report);
            }
            print_diff(&report);
        }
        FunctionsCommand::Shadow { name, version, share, threshold, client: args } => {
            let request =
                TrialRequest { version, mode: TrialMode::Shadow, percent: Some(share), threshold: Some(threshold) };
            let f = rt.block_on(client(&args)?.set_trial(&name, &request))?;
            print_trial(&f, args.json)?;
        }
        FunctionsCommand::Canary { name, version, percent, threshold, client: args } => {
            let request =
                TrialRequest { version, mode: TrialMode::Canary, percent: Some(percent), threshold: Some(threshold) };
            let f = rt.block_on(client(&args)?.set_trial(&name, &request))?;
            print_trial(&f, args.json)?;
        }
        FunctionsCommand::Abandon { name, client: args } => {
            let f = rt.block_on(client(&args)?.end_trial(&name))?;
            if args.json {
                return print_json(&f);
            }
            println!("{} serves version {} alone", f.name, f.active);
        }
        FunctionsCommand::Rm { name, client: args } => {
            let f = rt.block_on(client(&args)?.delete(&name))?;
            if args.json {
                return print_json(&f);
            }
            println!("removed {} ({} versions)", f.name, f.versions);
        }
    }
    Ok(())
}

/// "a shadow (100% of calls)", "a canary (10% of calls)".
fn trial_words(trial: &wasmgrid_api::Trial) -> String {
    let what = match trial.spec.mode {
        TrialMode::Shadow => "a shadow",
        TrialMode::Canary => "a canary",
    };
    format!("{what} ({}% of calls)", trial.spec.percent)
}

fn print_trial(f: &FunctionSummary, json: bool) -> Result<()> {
    if json {
        return print_json(f);
    }
    if let Some(trial) = &f.trial {
        println!("{} version {} runs as {} beside version {}", f.name, trial.version, trial_words(trial), f.active);
    }
    Ok(())
}

/// `functions diff`, as a person reads it.
fn print_diff(r: &TrialReport) {
    let nodes = if r.nodes == 1 { "1 node".to_string() } else { format!("{} nodes", r.nodes) };
    let mode = r.mode.name();
    println!(
        "{}: version {} as a {mode} of version {} ({}% of calls), reported by {nodes}",
        r.name, r.candidate.version, r.active.version, r.percent
    );
    let side = |role: &str, v: &wasmgrid_api::VersionLatency| {
        vec![
            role.to_string(),
            v.version.to_string(),
            v.calls.to_string(),
            v.errors.to_string(),
            format!("{}us", v.p50_us),
            format!("{}us", v.p99_us),
        ]
    };
    table(&["", "VERSION", "CALLS", "ERRORS", "P50", "P99"], vec![side("active", &r.active), side(mode, &r.candidate)]);
    if r.mode == TrialMode::Canary {
        return;
    }
    println!("rows compared: {}; shadow calls skipped (node busy): {}", r.rows, r.skipped);
    let rows = r
        .columns
        .iter()
        .map(|c| {
            vec![
                c.column.clone(),
                c.count.to_string(),
                format!("{:.6}", c.mean_abs),
                format!("{:.6}", c.max_abs),
                format!("{} ({:.2}%)", c.disagree, 100.0 * c.disagree_rate),
            ]
        })
        .collect();
    let disagree = format!("DISAGREE@{}", r.threshold);
    table(&["COLUMN", "ROWS", "MEAN|DIFF|", "MAX|DIFF|", &disagree], rows);
}

/// Reads `--data`: `{"rows": [...]}`, a list of rows, or one row.
fn invoke_request(data: &str) -> Result<InvokeRequest> {
    let value: serde_json::Value = serde_json::from_str(data).context("--data is not valid JSON")?;
    let rows = match value {
        serde_json::Value::Object(mut o) if o.contains_key("rows") => {
            let rows = o.remove("rows").unwrap_or_default();
            serde_json::from_value(rows).context("`rows` must be a list of objects")?
        }
        serde_json::Value::Object(o) => vec![o],
        serde_json::Value::Array(_) => serde_json::from_value(value).context("--data rows must be objects")?,
        _ => bail!("--data must be {{\"rows\": [...]}}, a list of rows or one row"),
    };
    Ok(InvokeRequest { rows })
}

/// Longest `invoke` waits for a node to start serving a function the
/// control plane has (a deploy that has not reached it, or a module it is
/// still compiling).
const SERVE_WAIT: Duration = Duration::from_secs(60);

/// Calls `name` on `node`; while the node answers that it does not serve a
/// function the control plane knows, waits for it to catch up.
async fn invoke_when_served(
    c: &Client,
    node: &str,
    tenant: &str,
    name: &str,
    request: &InvokeRequest,
) -> Result<wasmgrid_api::InvokeResponse> {
    let started = std::time::Instant::now();
    loop {
        match c.invoke(node, tenant, name, request).await {
            Err(e @ wasmgrid_api::ApiError::Http { status: 404, .. }) if started.elapsed() < SERVE_WAIT => {
                let wait = match c.function(name).await {
                    Ok(_) => true,
                    // An invoke-only token cannot ask: wait a little.
                    Err(wasmgrid_api::ApiError::Http { status: 403, .. }) => started.elapsed() < UNSEEN_WAIT,
                    Err(_) => false,
                };
                if !wait {
                    return Err(e.into());
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            other => return Ok(other?),
        }
    }
}

/// How long `invoke` waits for a function it cannot see in the control
/// plane (with an invoke-only token) to be served.
const UNSEEN_WAIT: Duration = Duration::from_secs(10);

#[derive(Args, Debug)]
pub struct LogsArgs {
    /// The function.
    name: String,
    /// Only this node [default: every alive node].
    #[arg(long)]
    node: Option<String>,
    #[command(flatten)]
    client: ClientArgs,
}

/// `wasmgrid logs NAME`: the latest calls' logs from every node, merged by time.
pub fn logs(args: LogsArgs) -> Result<()> {
    let c = client(&args.client)?;
    let rt = tokio_runtime()?;
    let (tenant, nodes) = log_sources(&c, &rt, &args.client, args.node.as_ref())?;
    let mut calls = Vec::new();
    let mut found = false;
    for (id, url) in &nodes {
        match rt.block_on(c.call_logs(url, &tenant, &args.name)) {
            Ok(logs) => {
                found = true;
                calls.extend(logs.calls.into_iter().map(|call| (id.clone(), call)));
            }
            // A node that never served it has nothing to say.
            Err(wasmgrid_api::ApiError::Http { status: 404, .. }) => {}
            Err(e) => return Err(e).with_context(|| format!("reading logs from node {id}")),
        }
    }
    if !found {
        bail!("no node has served `{tenant}/{}` since it started", args.name);
    }
    calls.sort_by_key(|(_, call)| call.at_ms);
    if args.client.json {
        let calls: Vec<_> =
            calls.iter().map(|(node, call)| serde_json::json!({ "node": node, "call": call })).collect();
        return print_json(&calls);
    }
    for (node, call) in calls {
        let at = call.at_ms as f64 / 1000.0;
        let head = format!("{at:.3} {node} v{}", call.version);
        print_guest_output(&head, &call.output);
    }
    Ok(())
}

pub fn invoke(args: InvokeArgs) -> Result<()> {
    let request = invoke_request(&args.data)?;
    let c = client(&args.client)?;
    let rt = tokio_runtime()?;
    let node = match args.node {
        Some(n) => n,
        None => {
            let nodes = rt.block_on(c.nodes()).context("finding a node")?;
            match nodes.nodes.into_iter().find(|n| n.state == NodeState::Alive) {
                Some(n) => n.address,
                None => bail!("no node is alive; start one with `wasmgrid node` (or use `wasmgrid dev`)"),
            }
        }
    };
    // The function's tenant: the one named, else the token's own.
    let tenant = match &args.client.tenant {
        Some(t) => t.clone(),
        None => rt.block_on(c.whoami()).context("asking the control plane whose token this is")?.tenant,
    };
    let response = rt.block_on(invoke_when_served(&c, &node, &tenant, &args.name, &request))?;
    if args.client.json {
        return print_json(&response);
    }
    for row in &response.rows {
        println!("{}", serde_json::to_string(row)?);
    }
    Ok(())
}
