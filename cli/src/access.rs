//! The `tenants`, `tokens`, `whoami` and `usage` commands.

use anyhow::{Context, Result, bail};
use clap::{Args, Subcommand};
use wasmgrid_api::{Quotas, Role, TokenRequest};

use crate::client::{ClientArgs, client, print_json, table, tokio_runtime};
use crate::units;

/// A quota on the command line: a number (sizes with units), or `none`.
#[derive(Debug, Clone, Copy)]
pub struct Limit(Option<u64>);

fn parse_count(s: &str) -> Result<Limit, String> {
    match s {
        "none" | "unlimited" => Ok(Limit(None)),
        n => n.parse().map(|n| Limit(Some(n))).map_err(|_| format!("`{n}` is not a number (or `none`)")),
    }
}

fn parse_bytes(s: &str) -> Result<Limit, String> {
    match s {
        "none" | "unlimited" => Ok(Limit(None)),
        n => units::parse_size(n).map(|n| Limit(Some(n))),
    }
}

/// A tenant's quotas, as flags; each one given replaces that quota.
#[derive(Args, Debug)]
pub struct QuotaArgs {
    /// Functions it may have [new tenants: 100].
    #[arg(long, value_parser = parse_count)]
    functions: Option<Limit>,
    /// Bytes of modules it may store [new tenants: 1GiB].
    #[arg(long, value_parser = parse_bytes)]
    module_bytes: Option<Limit>,
    /// Largest memory limit of one of its functions [new tenants: 1GiB].
    #[arg(long, value_parser = parse_bytes)]
    memory: Option<Limit>,
    /// Its calls running at once on one node; more get 429 [none].
    #[arg(long, value_parser = parse_count)]
    concurrency: Option<Limit>,
    /// Its batch task attempts running at once on the grid [none].
    #[arg(long, value_parser = parse_count)]
    task_slots: Option<Limit>,
    /// Milliseconds of GPU time its calls and jobs may use, in all; then
    /// their `gpu` calls are refused [none].
    #[arg(long, value_parser = parse_count)]
    gpu_ms: Option<Limit>,
}

impl QuotaArgs {
    /// `base` with each quota given on the command line replaced.
    fn apply(&self, base: &Quotas) -> Quotas {
        let pick = |flag: Option<Limit>, current: Option<u64>| flag.map_or(current, |Limit(l)| l);
        Quotas {
            functions: pick(self.functions, base.functions),
            module_bytes: pick(self.module_bytes, base.module_bytes),
            memory: pick(self.memory, base.memory),
            concurrency: pick(self.concurrency, base.concurrency),
            task_slots: pick(self.task_slots, base.task_slots),
            gpu_ms: pick(self.gpu_ms, base.gpu_ms),
        }
    }
}

fn show(limit: Option<u64>) -> String {
    limit.map_or_else(|| "-".into(), |l| l.to_string())
}

#[derive(Subcommand, Debug)]
pub enum TenantsCommand {
    /// Add a tenant (admin token).
    Create {
        /// Its name (a-z, 0-9, '-', '_', '.').
        name: String,
        #[command(flatten)]
        quotas: QuotaArgs,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Change a tenant's quotas (`none` lifts one) (admin token).
    Set {
        /// The tenant.
        name: String,
        #[command(flatten)]
        quotas: QuotaArgs,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// List the tenants (admin token).
    Ls {
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Remove a tenant with its functions and tokens (admin token).
    Rm {
        /// The tenant.
        name: String,
        #[command(flatten)]
        client: ClientArgs,
    },
}

#[derive(Subcommand, Debug)]
pub enum TokensCommand {
    /// Make a token and print it, once (admin token).
    Create(CreateToken),
    /// List tokens by id, never their secrets (admin token).
    Ls {
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Revoke a token by id; gateways refuse it within a moment (admin token).
    Revoke {
        /// Its id (`tok_...`, from `tokens ls`).
        id: String,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Print a new random token without storing it (for an admin token file).
    Generate,
}

/// `tokens create`: the tenant is `--tenant` (required but for `--node`).
#[derive(Args, Debug)]
pub struct CreateToken {
    /// Reads only: list and show functions and jobs.
    #[arg(long, conflicts_with_all = ["invoke_only", "node"])]
    read_only: bool,
    /// Calls the tenant's functions on the gateways, nothing else.
    #[arg(long, conflicts_with = "node")]
    invoke_only: bool,
    /// A token for `wasmgrid node` (no tenant).
    #[arg(long)]
    node: bool,
    #[command(flatten)]
    client: ClientArgs,
}

pub fn tenants(command: TenantsCommand) -> Result<()> {
    let rt = tokio_runtime()?;
    match command {
        TenantsCommand::Create { name, quotas, client: args } => {
            if let Err(reason) = wasmgrid_api::check_name(&name) {
                bail!("invalid tenant name `{name}`: {reason}");
            }
            let quotas = quotas.apply(&Quotas::tenant_defaults());
            let t = rt.block_on(client(&args)?.with_tenant(None).create_tenant_with(&name, &quotas))?;
            if args.json {
                return print_json(&t);
            }
            println!("created tenant {}", t.name);
        }
        TenantsCommand::Set { name, quotas, client: args } => {
            let c = client(&args)?.with_tenant(None);
            let current = rt.block_on(c.tenants())?.tenants.into_iter().find(|t| t.name == name);
            let Some(current) = current else { bail!("tenant `{name}` not found") };
            let t = rt.block_on(c.set_quotas(&name, &quotas.apply(&current.quotas)))?;
            if args.json {
                return print_json(&t);
            }
            println!("tenant {} quotas set", t.name);
        }
        TenantsCommand::Ls { client: args } => {
            let list = rt.block_on(client(&args)?.tenants())?;
            if args.json {
                return print_json(&list);
            }
            let rows = list
                .tenants
                .iter()
                .map(|t| {
                    let q = &t.quotas;
                    vec![
                        t.name.clone(),
                        t.created_at.to_string(),
                        show(q.functions),
                        show(q.module_bytes),
                        show(q.memory),
                        show(q.concurrency),
                        show(q.task_slots),
                        show(q.gpu_ms),
                    ]
                })
                .collect();
            let header =
                ["NAME", "CREATED", "FUNCTIONS", "MODULE BYTES", "MEMORY", "CONCURRENCY", "TASK SLOTS", "GPU MS"];
            table(&header, rows);
        }
        TenantsCommand::Rm { name, client: args } => {
            let t = rt.block_on(client(&args)?.delete_tenant(&name))?;
            if args.json {
                return print_json(&t);
            }
            println!("removed tenant {} with its functions and tokens", t.name);
        }
    }
    Ok(())
}

pub fn tokens(command: TokensCommand) -> Result<()> {
    let rt = tokio_runtime()?;
    match command {
        TokensCommand::Create(args) => {
            let tenant = args.client.tenant.clone();
            match (&tenant, args.node) {
                (None, false) => bail!("name the token's tenant with --tenant NAME (or make a --node token)"),
                (Some(_), true) => bail!("a node token belongs to no tenant; drop --tenant"),
                _ => {}
            }
            let role = match (args.node, args.read_only, args.invoke_only) {
                (true, ..) => Role::Node,
                (_, true, _) => Role::ReadOnly,
                (_, _, true) => Role::InvokeOnly,
                _ => Role::Full,
            };
            let request = TokenRequest { tenant, role };
            // The tenant is the token's, not one to act on.
            let made = rt.block_on(client(&args.client)?.with_tenant(None).create_token(&request))?;
            if args.client.json {
                return print_json(&made);
            }
            println!("{}", made.token);
            let whom = made.info.tenant.as_deref().map_or(String::new(), |t| format!(" for tenant {t}"));
            eprintln!("{} token {}{whom}: shown once, store it now", role.name(), made.info.id);
        }
        TokensCommand::Ls { client: args } => {
            let list = rt.block_on(client(&args)?.tokens())?;
            if args.json {
                return print_json(&list);
            }
            let rows = list
                .tokens
                .iter()
                .map(|t| {
                    vec![
                        t.id.clone(),
                        t.tenant.clone().unwrap_or_else(|| "-".into()),
                        t.role.name().into(),
                        t.created_at.to_string(),
                    ]
                })
                .collect();
            table(&["ID", "TENANT", "ROLE", "CREATED"], rows);
        }
        TokensCommand::Revoke { id, client: args } => {
            let t = rt.block_on(client(&args)?.revoke_token(&id))?;
            if args.json {
                return print_json(&t);
            }
            println!("revoked {}", t.id);
        }
        TokensCommand::Generate => println!("{}", wasmgrid_api::new_token().context("reading the OS random source")?),
    }
    Ok(())
}

/// `wasmgrid whoami`.
pub fn whoami(args: ClientArgs) -> Result<()> {
    let me = tokio_runtime()?.block_on(client(&args)?.whoami())?;
    if args.json {
        return print_json(&me);
    }
    println!("tenant {} ({} token {})", me.tenant, me.role.name(), me.token);
    Ok(())
}

/// `wasmgrid usage`.
pub fn usage(args: ClientArgs) -> Result<()> {
    let usage = tokio_runtime()?.block_on(client(&args)?.usage())?;
    if args.json {
        return print_json(&usage);
    }
    let ms = |us: u64| format!("{:.1}", us as f64 / 1000.0);
    let rows = usage
        .functions
        .iter()
        .map(|f| {
            vec![
                f.function.clone(),
                f.calls.to_string(),
                f.errors.to_string(),
                ms(f.wall_us),
                ms(f.cpu_us),
                ms(f.gpu_us),
                f.bytes_in.to_string(),
                f.bytes_out.to_string(),
            ]
        })
        .collect();
    println!("tenant {}: per-request calls", usage.tenant);
    table(&["FUNCTION", "CALLS", "ERRORS", "WALL MS", "CPU MS", "GPU MS", "BYTES IN", "BYTES OUT"], rows);
    let j = &usage.jobs;
    println!(
        "batch: {} jobs, {} tasks, {} records in ({} bytes), {} rows out, {} GPU ms",
        j.jobs, j.tasks, j.records_in, j.bytes_in, j.rows_out, j.gpu_ms
    );
    Ok(())
}
