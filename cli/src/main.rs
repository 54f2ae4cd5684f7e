//! The `wasmgrid` command. Glue only: it parses arguments and calls the
//! libraries: `wasmgrid-jobs` for `run`, `wasmgrid-node` and
//! `wasmgrid-control-plane` for the serving roles (wiring the jobs crate's
//! `FileJobIo` and the runtime's `init` check into the control plane), and
//! `wasmgrid-api`'s client for every other command.

mod access;
mod build;
mod certs;
mod client;
mod cluster;
mod compile;
mod functions;
mod jobs;
mod new;
mod otel;
mod serve;
mod tokens;
mod triggers;
mod units;

use std::collections::BTreeMap;
use std::io::Write as _;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Context, Result};
use clap::{Args, Parser, Subcommand};
use indicatif::{ProgressBar, ProgressStyle};
use wasmgrid_data::Format;
use wasmgrid_jobs::local::{self, LocalJob, Progress};
use wasmgrid_runtime::{Limits, Runtime};

#[derive(Parser)]
#[command(name = "wasmgrid", version, about = "Run WebAssembly data functions on a laptop or a grid")]
struct Cli {
    /// Log more (-v: debug, -vv: trace).
    #[arg(short, long, action = clap::ArgAction::Count, global = true)]
    verbose: u8,
    /// Log only warnings and errors.
    #[arg(short, long, global = true)]
    quiet: bool,
    /// How logs and the serving commands' messages are written: `text`
    /// for people, `json` (one object per line) for log collectors.
    #[arg(long, global = true, value_enum, default_value = "text", env = "WASMGRID_LOG_FORMAT")]
    log_format: LogFormat,
    /// Send traces (OTLP over HTTP, protobuf) to this collector, e.g.
    /// http://127.0.0.1:4318: the serving commands' calls, guest calls,
    /// job submits and batch attempts.
    #[arg(long, global = true, env = "OTEL_EXPORTER_OTLP_ENDPOINT", value_name = "URL")]
    otlp_endpoint: Option<String>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run a function over local data, no grid needed.
    Run(Box<RunArgs>),
    /// A laptop grid in one process: a control plane and a node, data in ./.wasmgrid.
    Dev {
        #[command(flatten)]
        args: serve::DevArgs,
        #[command(flatten)]
        compile: compile::CompileArgs,
    },
    /// Run a control-plane replica.
    ControlPlane(serve::ControlPlaneArgs),
    /// Run a node: join the grid and serve functions.
    Node(Box<serve::NodeArgs>),
    /// Upload a component and make it a function's new active version.
    Deploy(functions::DeployArgs),
    /// List, inspect, roll back and remove functions.
    #[command(subcommand)]
    Functions(functions::FunctionsCommand),
    /// Files functions read by name (models, lookup tables): list them.
    #[command(subcommand)]
    Artifacts(functions::ArtifactsCommand),
    /// The grid's nodes.
    #[command(subcommand)]
    Nodes(cluster::NodesCommand),
    /// The control plane's replicas.
    #[command(subcommand)]
    Cluster(cluster::ClusterCommand),
    /// Feed scorers from Kafka topics: create, list, inspect, pause, resume, remove.
    #[command(subcommand)]
    Trigger(triggers::TriggerCommand),
    /// Call a scorer on a node with rows of JSON.
    Invoke(functions::InvokeArgs),
    /// Batch jobs: fan a function out over partitioned data on the grid.
    #[command(subcommand)]
    Job(jobs::JobCommand),
    /// Manage tenants (admin token).
    #[command(subcommand)]
    Tenants(access::TenantsCommand),
    /// Manage tokens (admin token).
    #[command(subcommand)]
    Tokens(access::TokensCommand),
    /// Show the tenant and role of the token in use.
    Whoami(client::ClientArgs),
    /// What the tenant's functions and jobs used.
    Usage(client::ClientArgs),
    /// The latest per-request calls' logs of a function, from every node.
    Logs(functions::LogsArgs),
    /// Certificates for a grid on a private network.
    #[command(subcommand)]
    Tls(certs::TlsCommand),
    /// Build a function into a component: a Rust project (its directory or
    /// Cargo.toml), or a Python module with one @wasmgrid.scorer, mapper or reducer.
    Build(build::BuildArgs),
    /// Create a function project (scorer or mapper, in Rust or Python) that
    /// builds, runs on its sample data and has a test.
    New(new::NewArgs),
    /// Compile a component in a limited worker process (internal).
    #[command(name = "__compile", hide = true)]
    Compile { settings: String, input: PathBuf, output: PathBuf },
}

#[derive(Args)]
struct RunArgs {
    /// The scorer or mapper component (.wasm).
    function: PathBuf,
    /// Input file, directory or glob (CSV with a header, JSON lines, Parquet or text).
    #[arg(long, short)]
    input: String,
    /// Output directory.
    #[arg(long, short)]
    output: PathBuf,
    /// Reducer component for the pairs the mapper emits.
    #[arg(long)]
    reduce: Option<PathBuf>,
    /// Config value the function sees (repeatable).
    #[arg(long = "config", short = 'c', value_name = "KEY=VALUE", value_parser = units::parse_key_value)]
    config: Vec<(String, String)>,
    /// A file the function reads by name (`artifacts` interface): a model,
    /// a lookup table (repeatable).
    #[arg(long = "artifact", value_name = "NAME=PATH", value_parser = units::parse_key_value)]
    artifacts: Vec<(String, String)>,
    /// Output format.
    #[arg(long, short, default_value = "jsonl", value_parser = parse_output_format)]
    format: Format,
    /// Input format, when the extension does not tell.
    #[arg(long)]
    input_format: Option<Format>,
    /// Column types of CSV or JSON-lines input, `name:type,...` (int,
    /// float, str, bool), or `@FILE` with one `name:type` a line; other
    /// columns' types are inferred.
    #[arg(long, value_name = "COLUMNS", value_parser = parse_schema)]
    schema: Option<wasmgrid_data::ColumnTypes>,
    /// Worker threads (default: one per core).
    #[arg(long, short)]
    threads: Option<usize>,
    /// Reduce partitions: output files of the reduce stage (default: one per core).
    #[arg(long, requires = "reduce")]
    reduce_partitions: Option<usize>,
    /// Memory limit per instance.
    #[arg(long, default_value = "256MiB", value_parser = units::parse_size)]
    memory: u64,
    /// Time limit per call (a scorer's batch, a mapper's partition, a reducer's key).
    #[arg(long, default_value = "60s", value_parser = units::parse_duration)]
    timeout: Duration,
    /// Fuel per call (enables instruction metering; slower).
    #[arg(long)]
    fuel: Option<u64>,
    /// Output limit per invocation.
    #[arg(long, default_value = "1GiB", value_parser = units::parse_size)]
    max_output: u64,
    /// Target partition size.
    #[arg(long, default_value = "64MiB", value_parser = units::parse_size)]
    partition_size: u64,
    /// Rows per scorer call.
    #[arg(long, default_value_t = 4096)]
    batch_rows: usize,
    /// Replace earlier results in the output directory.
    #[arg(long)]
    overwrite: bool,
    #[command(flatten)]
    compile: compile::CompileArgs,
    /// Print the summary as JSON on stdout.
    #[arg(long)]
    json: bool,
}

/// `--schema`: `name:type,...`, or `@FILE` holding them one a line.
pub(crate) fn parse_schema(s: &str) -> Result<wasmgrid_data::ColumnTypes, String> {
    match s.strip_prefix('@') {
        Some(path) => std::fs::read_to_string(path).map_err(|e| format!("reading {path}: {e}"))?.parse(),
        None => s.parse(),
    }
}

fn parse_output_format(s: &str) -> Result<Format, String> {
    match s.parse::<Format>()? {
        Format::Text => Err("output format must be jsonl, csv or parquet".into()),
        f => Ok(f),
    }
}

#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> ExitCode {
    let cli = Cli::parse();
    if let Command::Compile { settings, input, output } = &cli.command {
        return ExitCode::from(wasmgrid_runtime::worker_main(settings, input, output) as u8);
    }
    // Traces are exported by the serving commands only.
    let service = match &cli.command {
        Command::Dev { .. } => Some("wasmgrid-dev"),
        Command::ControlPlane(_) => Some("wasmgrid-control-plane"),
        Command::Node(_) => Some("wasmgrid-node"),
        _ => None,
    };
    let endpoint = cli.otlp_endpoint.as_deref().filter(|e| !e.trim().is_empty());
    let _traces = match init_logging(cli.verbose, cli.quiet, cli.log_format, endpoint.zip(service)) {
        Ok(traces) => traces,
        Err(e) => {
            eprintln!("error: {}", error_chain(&e));
            return ExitCode::FAILURE;
        }
    };
    match dispatch(cli.command) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) if cli.log_format == LogFormat::Json => {
            tracing::error!("{}", error_chain(&e));
            ExitCode::FAILURE
        }
        Err(e) => {
            eprintln!("error: {}", error_chain(&e));
            ExitCode::FAILURE
        }
    }
}

/// An error and its causes, each said once: many errors already include
/// their cause's text in their own message, and printing the chain as is
/// would say it twice.
fn error_chain(e: &anyhow::Error) -> String {
    let mut text = e.to_string();
    for cause in e.chain().skip(1) {
        let cause = cause.to_string();
        if !text.contains(&cause) {
            text.push_str(": ");
            text.push_str(&cause);
        }
    }
    text
}

/// How logs are written.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
enum LogFormat {
    /// Lines for people.
    Text,
    /// One JSON object per line.
    Json,
}

/// Whether logs are JSON: the serving commands' own messages follow.
static JSON_LOGS: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// A serving command's message to its operator: a line on stderr, or an
/// `info` event when logs are JSON.
pub(crate) fn notice(message: std::fmt::Arguments<'_>) {
    if JSON_LOGS.load(std::sync::atomic::Ordering::Relaxed) {
        tracing::info!("{message}");
    } else {
        // A closed stderr must not stop a serving process.
        let _ = writeln!(std::io::stderr(), "{message}");
    }
}

/// Logs to stderr as `format` says; traces to an OTLP collector when
/// `traces` names one (and the service name), until the returned guard drops.
fn init_logging(
    verbose: u8,
    quiet: bool,
    format: LogFormat,
    traces: Option<(&str, &str)>,
) -> Result<Option<otel::Traces>> {
    use std::io::IsTerminal;
    use tracing_subscriber::Layer as _;
    use tracing_subscriber::layer::SubscriberExt as _;
    use tracing_subscriber::util::SubscriberInitExt as _;
    let default = match (quiet, verbose) {
        (true, _) => "warn",
        (false, 0) => "info",
        (false, 1) => "debug",
        (false, _) => "trace",
    };
    let filter = tracing_subscriber::EnvFilter::try_from_env("WASMGRID_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(format!("{default},cranelift=warn,wasmtime=warn")));
    // A closed stderr must not stop a serving process: the layers do not
    // report failed writes (by default with eprintln!, which panics then).
    let logs = if format == LogFormat::Json {
        JSON_LOGS.store(true, std::sync::atomic::Ordering::Relaxed);
        tracing_subscriber::fmt::layer()
            .json()
            .with_writer(std::io::stderr)
            .log_internal_errors(false)
            .with_current_span(false)
            .with_span_list(false)
            .boxed()
    } else {
        tracing_subscriber::fmt::layer()
            .with_ansi(std::io::stderr().is_terminal() && std::env::var_os("NO_COLOR").is_none())
            .with_writer(std::io::stderr)
            .log_internal_errors(false)
            .with_target(false)
            .without_time()
            .boxed()
    };
    let registry = tracing_subscriber::registry().with(logs.with_filter(filter));
    match traces {
        Some((endpoint, service)) => {
            let (layer, guard) = otel::layer(endpoint, service)?;
            registry.with(layer).init();
            Ok(Some(guard))
        }
        None => {
            registry.init();
            Ok(None)
        }
    }
}

fn dispatch(command: Command) -> Result<()> {
    match command {
        Command::Run(args) => run(*args),
        Command::Dev { args, compile } => serve::dev(args, &compile),
        Command::ControlPlane(args) => serve::control_plane(args),
        Command::Node(args) => serve::node(*args),
        Command::Deploy(args) => functions::deploy(args),
        Command::Functions(c) => functions::functions(c),
        Command::Artifacts(c) => functions::artifacts(c),
        Command::Nodes(c) => cluster::nodes(c),
        Command::Cluster(c) => cluster::cluster(c),
        Command::Invoke(args) => functions::invoke(args),
        Command::Trigger(c) => triggers::trigger(c),
        Command::Job(c) => jobs::job(c),
        Command::Tenants(c) => access::tenants(c),
        Command::Tokens(c) => access::tokens(c),
        Command::Whoami(args) => access::whoami(args),
        Command::Usage(args) => access::usage(args),
        Command::Logs(args) => functions::logs(args),
        Command::Build(args) => build::build(args),
        Command::New(args) => new::new(args),
        Command::Tls(c) => certs::tls(c),
        Command::Compile { .. } => Ok(()),
    }
}

fn run(args: RunArgs) -> Result<()> {
    let config = compile::runtime_config(&args.compile, args.fuel.is_some(), args.memory)?;
    let runtime = Runtime::new(config).context("starting the runtime")?;
    let mut job = LocalJob::new(&args.function, args.input.clone(), &args.output);
    job.input_format = args.input_format;
    job.types = args.schema.clone().unwrap_or_default();
    job.output_format = args.format;
    job.overwrite = args.overwrite;
    job.reduce = args.reduce.clone();
    job.config = args.config.into_iter().collect::<BTreeMap<_, _>>();
    job.artifacts = args.artifacts.into_iter().map(|(name, path)| (name, PathBuf::from(path))).collect();
    if let Some(t) = args.threads {
        anyhow::ensure!(t > 0, "--threads must be at least 1");
        job.threads = t;
    }
    if let Some(r) = args.reduce_partitions {
        anyhow::ensure!(r > 0, "--reduce-partitions must be at least 1");
        job.reduce_partitions = r;
    }
    job.limits = Limits {
        memory: args.memory,
        timeout: args.timeout,
        fuel: args.fuel,
        max_output_bytes: args.max_output,
        ..Limits::default()
    };
    job.partition_size = args.partition_size;
    anyhow::ensure!(args.batch_rows > 0, "--batch-rows must be at least 1");
    job.batch_rows = args.batch_rows;

    let progress = Bar::new();
    let summary = local::run(&runtime, &job, &progress)?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&summary)?);
    }
    eprintln!(
        "{}: {} partitions, {} records in, {} rows out in {} files{} -> {} ({:.2}s)",
        summary.kind,
        summary.partitions,
        summary.records_in,
        summary.rows_out,
        summary.files.len(),
        if summary.keys > 0 { format!(", {} keys reduced", summary.keys) } else { String::new() },
        args.output.display(),
        summary.elapsed.as_secs_f64()
    );
    Ok(())
}

/// A progress bar on stderr; indicatif hides it when stderr is not a terminal.
struct Bar {
    bar: ProgressBar,
}

impl Bar {
    fn new() -> Self {
        let bar = ProgressBar::new(0);
        bar.set_style(
            ProgressStyle::with_template("{msg:>10} [{bar:30}] {pos}/{len} ({eta} left)")
                .unwrap_or_else(|_| ProgressStyle::default_bar())
                .progress_chars("=> "),
        );
        Bar { bar }
    }
}

impl Progress for Bar {
    fn stage(&self, name: &str, total: u64) {
        self.bar.reset();
        self.bar.set_length(total);
        self.bar.set_message(name.to_string());
    }
    fn advance(&self, n: u64) {
        self.bar.inc(n);
    }
    fn finish(&self) {
        self.bar.finish_and_clear();
    }
}
