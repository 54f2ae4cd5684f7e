//! The `trigger` commands: scorers fed from a Kafka topic or a NATS
//! JetStream stream.

use std::time::Duration;

use anyhow::Result;
use clap::Subcommand;
use wasmgrid_api::{Trigger, TriggerSource, TriggerSpec, latency_quantile};

use crate::client::{ClientArgs, client, print_json, table, tokio_runtime};
use crate::units;

#[derive(Subcommand, Debug)]
pub enum TriggerCommand {
    /// Feed a scorer from a Kafka topic (`--kafka`) or a NATS JetStream
    /// stream (`--nats`): every node serving the function reads its share,
    /// batches records (one JSON object each) into calls and writes the
    /// scored rows to the output topic or subject. A record is committed
    /// (Kafka) or acknowledged (JetStream) once its output is acknowledged.
    Create(Box<CreateArgs>),
    /// List the tenant's triggers.
    Ls {
        #[command(flatten)]
        client: ClientArgs,
    },
    /// A trigger's consumers: per node and partition, records read and
    /// written, dead letters, errors, committed offset and lag.
    Status {
        /// The trigger.
        name: String,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Stop a trigger's consumers (its offsets stay committed).
    Pause {
        /// The trigger.
        name: String,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Start a paused trigger's consumers again, where they left off.
    Resume {
        /// The trigger.
        name: String,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Remove a trigger.
    Rm {
        /// The trigger.
        name: String,
        #[command(flatten)]
        client: ClientArgs,
    },
}

/// `trigger create`: the source (one of `--kafka` and `--nats`, with their
/// own flags), the scorer and how records are batched.
#[derive(clap::Args, Debug)]
#[command(group = clap::ArgGroup::new("source").required(true).args(["kafka", "nats"]))]
pub struct CreateArgs {
    /// The trigger's name.
    pub name: String,
    /// Kafka: bootstrap brokers, host:port[,host:port...].
    #[arg(long, value_name = "BROKERS", requires_all = ["topic", "output_topic"])]
    pub kafka: Option<String>,
    /// Kafka: the topic to read.
    #[arg(long, requires = "kafka")]
    pub topic: Option<String>,
    /// Kafka: the consumer group (where the trigger resumes); default: wasmgrid-NAME.
    #[arg(long, requires = "kafka")]
    pub group: Option<String>,
    /// Kafka: the topic the scored rows go to.
    #[arg(long, requires = "kafka")]
    pub output_topic: Option<String>,
    /// NATS: servers, [nats://]host:port[,...].
    #[arg(long, value_name = "SERVERS", requires_all = ["stream", "output_subject"])]
    pub nats: Option<String>,
    /// NATS: the JetStream stream to read.
    #[arg(long, requires = "nats")]
    pub stream: Option<String>,
    /// NATS: only the stream's messages on this subject (wildcards allowed).
    #[arg(long, requires = "nats")]
    pub subject: Option<String>,
    /// NATS: the durable consumer (where the trigger resumes); default: wasmgrid-NAME.
    #[arg(long, requires = "nats")]
    pub consumer: Option<String>,
    /// NATS: the subject the scored rows are published to (a stream must capture it).
    #[arg(long, requires = "nats")]
    pub output_subject: Option<String>,
    /// NATS: how long a record may go unacknowledged before JetStream
    /// hands it to another node.
    #[arg(long, default_value = "30s", value_parser = units::parse_duration, requires = "nats")]
    pub ack_wait: Duration,
    /// The scorer to call.
    #[arg(long)]
    pub function: String,
    /// Most records per call.
    #[arg(long, default_value_t = 512)]
    pub batch: u32,
    /// Longest a partial batch waits for more records.
    #[arg(long, default_value = "5ms", value_parser = units::parse_duration)]
    pub linger: Duration,
    /// Where a record goes once every attempt failed, with the error
    /// (a topic, or a subject for NATS).
    #[arg(long, value_name = "TOPIC|SUBJECT")]
    pub dead_letter: Option<String>,
    /// Calls a record gets before it is a dead letter.
    #[arg(long, default_value_t = 3)]
    pub max_attempts: u32,
    #[command(flatten)]
    pub client: ClientArgs,
}

pub fn trigger(command: TriggerCommand) -> Result<()> {
    let rt = tokio_runtime()?;
    match command {
        TriggerCommand::Create(args) => {
            let CreateArgs {
                name,
                kafka,
                topic,
                group,
                output_topic,
                nats,
                stream,
                subject,
                consumer,
                output_subject,
                ack_wait,
                function,
                batch,
                linger,
                dead_letter,
                max_attempts,
                client: args,
            } = *args;
            let source = match (kafka, nats) {
                (Some(brokers), _) => TriggerSource::Kafka {
                    brokers,
                    topic: topic.unwrap_or_default(),
                    group: group.unwrap_or_else(|| format!("wasmgrid-{name}")),
                    output_topic: output_topic.unwrap_or_default(),
                    dead_letter,
                },
                (None, Some(servers)) => TriggerSource::Nats {
                    servers,
                    stream: stream.unwrap_or_default(),
                    consumer: consumer.unwrap_or_else(|| format!("wasmgrid-{name}")),
                    subject,
                    output_subject: output_subject.unwrap_or_default(),
                    dead_letter,
                    ack_wait_ms: u64::try_from(ack_wait.as_millis()).unwrap_or(u64::MAX),
                },
                (None, None) => anyhow::bail!("a trigger reads --kafka BROKERS or --nats SERVERS"),
            };
            let spec = TriggerSpec {
                name,
                function,
                source,
                batch,
                linger_ms: u64::try_from(linger.as_millis()).unwrap_or(u64::MAX),
                max_attempts,
            };
            let t = rt.block_on(client(&args)?.create_trigger(&spec))?;
            if args.json {
                return print_json(&t);
            }
            println!("{}", describe(&t));
            Ok(())
        }
        TriggerCommand::Ls { client: args } => {
            let list = rt.block_on(client(&args)?.triggers())?;
            if args.json {
                return print_json(&list);
            }
            let rows = list.triggers.iter().map(row).collect();
            table(&["NAME", "STATE", "INPUT", "FUNCTION", "OUTPUT", "BATCH", "DEAD LETTERS"], rows);
            Ok(())
        }
        TriggerCommand::Status { name, client: args } => {
            let status = rt.block_on(client(&args)?.trigger(&name))?;
            if args.json {
                return print_json(&status);
            }
            let t = &status.trigger;
            println!("{}", describe(t));
            println!("state:   {}", state(t));
            if status.nodes.is_empty() {
                println!("no node runs it yet (it runs where `{}` is placed)", t.spec.function);
                return Ok(());
            }
            for (node, u) in &status.nodes {
                let (p50, p99) = (latency_quantile(&u.latency, 0.5), latency_quantile(&u.latency, 0.99));
                let error = u.error.as_deref().map(|e| format!(", last error: {e}")).unwrap_or_default();
                println!("{node}: {}, {} calls, batch p50 {p50} µs, p99 {p99} µs{error}", u.state, u.calls);
            }
            let rows = status
                .nodes
                .iter()
                .flat_map(|(node, u)| {
                    u.partitions.iter().map(move |p| {
                        vec![
                            p.partition.to_string(),
                            node.clone(),
                            if p.assigned { "yes" } else { "no" }.into(),
                            p.records.to_string(),
                            p.produced.to_string(),
                            p.dead_letters.to_string(),
                            p.errors.to_string(),
                            if p.committed < 0 { "-".into() } else { p.committed.to_string() },
                            if p.lag < 0 { "-".into() } else { p.lag.to_string() },
                        ]
                    })
                })
                .collect();
            println!();
            table(
                &["PARTITION", "NODE", "ASSIGNED", "RECORDS", "PRODUCED", "DEAD", "ERRORS", "COMMITTED", "LAG"],
                rows,
            );
            Ok(())
        }
        TriggerCommand::Pause { name, client: args } => pause(&rt, &name, &args, true),
        TriggerCommand::Resume { name, client: args } => pause(&rt, &name, &args, false),
        TriggerCommand::Rm { name, client: args } => {
            let t = rt.block_on(client(&args)?.delete_trigger(&name))?;
            if args.json {
                return print_json(&t);
            }
            let kept = match t.spec.source {
                TriggerSource::Kafka { .. } => "its group's offsets stay in the brokers",
                TriggerSource::Nats { .. } => "its durable consumer stays in the stream",
            };
            println!("removed trigger {} ({kept})", t.spec.name);
            Ok(())
        }
    }
}

fn pause(rt: &tokio::runtime::Runtime, name: &str, args: &ClientArgs, paused: bool) -> Result<()> {
    let t = rt.block_on(client(args)?.pause_trigger(name, paused))?;
    if args.json {
        return print_json(&t);
    }
    println!("trigger {} {}", t.spec.name, if paused { "paused" } else { "resumed" });
    Ok(())
}

/// `trigger NAME: kafka IN -> FUNCTION -> kafka OUT`.
fn describe(t: &Trigger) -> String {
    format!("trigger {}: {} -> {} -> {}", t.spec.name, t.spec.source.input(), t.spec.function, t.spec.source.output())
}

fn state(t: &Trigger) -> &'static str {
    if t.paused { "paused" } else { "running" }
}

fn row(t: &Trigger) -> Vec<String> {
    let dead = t.spec.source.dead_letter().unwrap_or("-").to_string();
    vec![
        t.spec.name.clone(),
        state(t).into(),
        t.spec.source.input(),
        t.spec.function.clone(),
        t.spec.source.output(),
        t.spec.batch.to_string(),
        dead,
    ]
}
