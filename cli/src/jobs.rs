//! `wasmgrid job ...`: batch jobs on the grid.

use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use clap::{Args, Subcommand};
use indicatif::{ProgressBar, ProgressStyle};
use wasmgrid_api::{Client, JobInfo, JobRequest, JobState, Stage};

use crate::client::{ClientArgs, client, log_sources, print_guest_output, print_json, table, tokio_runtime};
use crate::units;

#[derive(Args, Debug)]
pub struct SubmitArgs {
    /// The deployed scorer or mapper.
    name: String,
    /// Run this version of it (a shadow or canary scored offline before it
    /// is promoted, or an earlier one) [default: the active version].
    #[arg(long)]
    version: Option<u64>,
    /// Input: a file, directory or glob the nodes can read.
    #[arg(long)]
    input: String,
    /// Output directory (shared by the nodes).
    #[arg(long)]
    output: String,
    /// Output format: jsonl, csv or parquet.
    #[arg(long, default_value = "jsonl")]
    format: String,
    /// Input format, when the extension does not tell.
    #[arg(long)]
    input_format: Option<String>,
    /// Column types of CSV or JSON-lines input, `name:type,...` (int,
    /// float, str, bool), or `@FILE` with one `name:type` a line; other
    /// columns' types are inferred.
    #[arg(long, value_name = "COLUMNS", value_parser = crate::parse_schema)]
    schema: Option<wasmgrid_data::ColumnTypes>,
    /// The deployed reducer for the pairs the mapper emits.
    #[arg(long)]
    reduce: Option<String>,
    /// Reduce partitions: output files of the reduce stage (default: 2
    /// with --reduce; 1 for an aggregator, whose groups are spread over
    /// them by key).
    #[arg(long)]
    reduce_partitions: Option<u32>,
    /// Target partition size.
    #[arg(long, default_value = "64MiB", value_parser = units::parse_size)]
    partition_size: u64,
    /// Attempts per task before the job fails.
    #[arg(long, default_value_t = 4)]
    max_attempts: u32,
    /// Map tasks run together as one attempt [default: chosen from the
    /// partitions: 1 for large ones, more for many small ones].
    #[arg(long, value_name = "TASKS")]
    range: Option<u32>,
    /// Time limit of one call [default: the function's].
    #[arg(long, value_parser = units::parse_duration)]
    timeout: Option<Duration>,
    /// Replace earlier results in the output directory.
    #[arg(long)]
    overwrite: bool,
    /// Wait for the job to end, showing progress.
    #[arg(long)]
    wait: bool,
    #[command(flatten)]
    client: ClientArgs,
}

#[derive(Subcommand, Debug)]
pub enum JobCommand {
    /// Submit a job: run a function over every partition of the input.
    Submit(Box<SubmitArgs>),
    /// List jobs, newest first.
    Ls {
        #[command(flatten)]
        client: ClientArgs,
    },
    /// A job's state and progress.
    Status {
        /// The job id.
        id: String,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Wait for a job to end, showing progress; fails if the job fails.
    Wait {
        /// The job id.
        id: String,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// The errors of a job's failed attempts, per task, then what its
    /// latest attempts on each node logged (guest logs, stdout, stderr).
    Logs {
        /// The job id.
        id: String,
        /// Only this node's attempts [default: every alive node].
        #[arg(long)]
        node: Option<String>,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Cancel a job: its tasks stop and nothing is published.
    Cancel {
        /// The job id.
        id: String,
        #[command(flatten)]
        client: ClientArgs,
    },
}

/// A path as the grid sees it: absolute (the grid does not share our
/// working directory); URIs are left alone.
fn absolute(path: &str) -> Result<String> {
    if path.contains("://") {
        return Ok(path.to_string());
    }
    let path = path.strip_prefix("file://").unwrap_or(path);
    Ok(std::path::absolute(Path::new(path)).with_context(|| format!("resolving {path}"))?.display().to_string())
}

fn tasks(job: &JobInfo) -> (u32, u32) {
    (job.map_done + job.reduce_done, job.map_tasks + job.reduce_tasks)
}

fn describe(job: &JobInfo) -> String {
    let (done, total) = tasks(job);
    let mut s = format!(
        "{} {}: {}/{} tasks ({} stage), {} running, {} failed attempts, {} records in, {} rows out",
        job.id,
        job.state.name(),
        done,
        total,
        job.stage.name(),
        job.running,
        job.failed_attempts,
        job.records_in,
        job.rows_out
    );
    if job.gpu_ms > 0 {
        s.push_str(&format!(", {} ms in gpu calls", job.gpu_ms));
    }
    if let Some(e) = &job.error {
        s.push_str(&format!("\nerror: {e}"));
    }
    s
}

/// Polls until the job ends, with a progress bar on a terminal.
async fn wait(client: &Client, id: &str, json: bool) -> Result<JobInfo> {
    let bar = if json { ProgressBar::hidden() } else { ProgressBar::new(0) };
    bar.set_style(
        ProgressStyle::with_template("{spinner} {msg} [{bar:30}] {pos}/{len} tasks, ETA {eta}")
            .unwrap_or_else(|_| ProgressStyle::default_bar())
            .progress_chars("=> "),
    );
    let started = Instant::now();
    let mut failures = 0;
    loop {
        let job = match client.job(id).await {
            Ok(job) => {
                failures = 0;
                job
            }
            // Ride out a failover.
            Err(e) if failures < 20 => {
                failures += 1;
                tracing::debug!("job status: {e}");
                tokio::time::sleep(Duration::from_millis(500)).await;
                continue;
            }
            Err(e) => return Err(e.into()),
        };
        let (done, total) = tasks(&job);
        bar.set_length(u64::from(total));
        bar.set_position(u64::from(done));
        bar.set_message(format!(
            "{} {} ({}), {} running, {} failed, {} rows",
            job.id,
            job.state.name(),
            job.stage.name(),
            job.running,
            job.failed_attempts,
            job.rows_out
        ));
        if job.state.is_final() {
            bar.finish_and_clear();
            if !json {
                eprintln!("{} in {:.1}s", describe(&job), started.elapsed().as_secs_f64());
            }
            return Ok(job);
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

fn finished(job: &JobInfo, json: bool) -> Result<()> {
    if json {
        print_json(job)?;
    }
    match job.state {
        JobState::Succeeded => Ok(()),
        _ => bail!(
            "job {} {}{}",
            job.id,
            job.state.name(),
            job.error.as_ref().map_or(String::new(), |e| format!(": {e}"))
        ),
    }
}

pub fn job(command: JobCommand) -> Result<()> {
    let rt = tokio_runtime()?;
    match command {
        JobCommand::Submit(args) => submit(&rt, &args),
        JobCommand::Ls { client: args } => list(&rt, &args),
        JobCommand::Status { id, client: args } => {
            let job = rt.block_on(client(&args)?.job(&id))?;
            if args.json {
                return print_json(&job);
            }
            println!("{}", describe(&job));
            if job.stage == Stage::Reduce || job.reduce_tasks > 0 {
                println!("map {}/{}, reduce {}/{}", job.map_done, job.map_tasks, job.reduce_done, job.reduce_tasks);
            }
            println!("input:  {} ({} of {} bytes read)", job.input, job.bytes_done, job.bytes_in);
            if let Some(schema) = &job.schema {
                println!("schema: {schema}");
            }
            println!("output: {}", job.output);
            Ok(())
        }
        JobCommand::Wait { id, client: args } => {
            let c = client(&args)?;
            let job = rt.block_on(wait(&c, &id, args.json))?;
            finished(&job, args.json)
        }
        JobCommand::Logs { id, node, client: args } => logs(&rt, &id, node.as_ref(), &args),
        JobCommand::Cancel { id, client: args } => {
            let job = rt.block_on(client(&args)?.cancel_job(&id))?;
            if args.json {
                return print_json(&job);
            }
            println!("{} {}", job.id, job.state.name());
            Ok(())
        }
    }
}

/// `wasmgrid job submit`.
fn submit(rt: &tokio::runtime::Runtime, args: &SubmitArgs) -> Result<()> {
    let request = JobRequest {
        function: args.name.clone(),
        version: args.version,
        input: absolute(&args.input)?,
        output: absolute(&args.output)?,
        input_format: args.input_format.clone(),
        schema: args.schema.as_ref().map(ToString::to_string),
        format: Some(args.format.clone()),
        reduce: args.reduce.clone(),
        reduce_partitions: args.reduce_partitions,
        partition_size: Some(args.partition_size),
        max_attempts: Some(args.max_attempts),
        range: args.range,
        timeout_ms: args.timeout.map(|t| t.as_millis().max(1) as u64),
        overwrite: args.overwrite,
    };
    let c = client(&args.client)?;
    rt.block_on(async {
        let job = c.submit_job(&request).await.context("submitting the job")?;
        if let Some(version) = args.version.filter(|&v| v != job.version) {
            // A control plane of a release before `version` runs the active one.
            let _ = c.cancel_job(&job.id).await;
            bail!("the control plane ran version {} instead of {version}; upgrade it to choose a version", job.version);
        }
        if !args.wait {
            if args.client.json {
                return print_json(&job);
            }
            println!("{}", job.id);
            return Ok(());
        }
        eprintln!("submitted {} ({} map task(s))", job.id, job.map_tasks);
        let job = wait(&c, &job.id, args.client.json).await?;
        finished(&job, args.client.json)
    })
}

/// `wasmgrid job ls`.
fn list(rt: &tokio::runtime::Runtime, args: &ClientArgs) -> Result<()> {
    let list = rt.block_on(client(args)?.jobs())?;
    if args.json {
        return print_json(&list);
    }
    let rows = list
        .jobs
        .iter()
        .map(|j| {
            let (done, total) = tasks(j);
            let reduce = j.reduce.as_ref().map_or(String::new(), |(r, _)| format!(" -> {r}"));
            vec![
                j.id.clone(),
                j.state.name().into(),
                format!("{}@{}{reduce}", j.function, j.version),
                format!("{done}/{total}"),
                j.rows_out.to_string(),
                j.output.clone(),
            ]
        })
        .collect();
    table(&["ID", "STATE", "FUNCTION", "TASKS", "ROWS", "OUTPUT"], rows);
    Ok(())
}

/// `wasmgrid job logs`: the failures the control plane recorded, and what
/// the attempts logged on the nodes, merged by time.
fn logs(rt: &tokio::runtime::Runtime, id: &str, node: Option<&String>, args: &ClientArgs) -> Result<()> {
    let c = client(args)?;
    let logs = rt.block_on(c.job_logs(id))?;
    let (tenant, nodes) = log_sources(&c, rt, args, node)?;
    let mut attempts = Vec::new();
    for (node, url) in &nodes {
        match rt.block_on(c.attempt_logs(url, &tenant, id)) {
            Ok(kept) => attempts.extend(kept.attempts.into_iter().map(|a| (node.clone(), a))),
            // No attempt of the job logged on that node.
            Err(wasmgrid_api::ApiError::Http { status: 404, .. }) => {}
            Err(e) => return Err(e).with_context(|| format!("reading the job's logs from node {node}")),
        }
    }
    attempts.sort_by_key(|(_, a)| a.at_ms);
    if args.json {
        let attempts: Vec<_> =
            attempts.iter().map(|(node, a)| serde_json::json!({ "node": node, "attempt": a })).collect();
        return print_json(&serde_json::json!({ "id": logs.id, "tasks": logs.tasks, "attempts": attempts }));
    }
    if logs.tasks.is_empty() {
        println!("{}: no task failed", logs.id);
    }
    for t in &logs.tasks {
        let outcome = if t.done { "then succeeded" } else { "not done" };
        println!(
            "{} {}: {} failed attempt(s), {outcome}; last error: {}",
            t.stage.name(),
            wasmgrid_api::tasks_label(t.task, t.count),
            t.failures,
            t.last_error.as_deref().unwrap_or("-")
        );
    }
    for (node, a) in &attempts {
        let at = a.at_ms as f64 / 1000.0;
        let head = format!("{at:.3} {node} {}{}#{}", a.stage.name(), a.task, a.attempt);
        print_guest_output(&head, &a.output);
    }
    Ok(())
}
