//! `sagactl`: operate the saga's messaging topology, its dead-letter queues and its EC2 deployment.
//!
//! Uses the standard AWS configuration: `AWS_ENDPOINT_URL` points it at LocalStack (or another
//! emulator), otherwise it talks to AWS with the usual credential chain and `AWS_REGION`.
//! Before it changes anything it says where (endpoint, region, account); `destroy` and
//! `destroy-app` refuse a non-local endpoint without `--yes`. Logs (stack events included) go to
//! stderr; stdout carries only results, so `--json` output can be piped.

use anyhow::Context;
use clap::{Parser, Subcommand};
use infra::MessagingParams;
use infra::app::{self, AppOptions, ReleaseSource};
use infra::target::{self, Endpoint};
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

#[derive(Parser)]
#[command(
    version,
    about = "Operate the enrollment saga's messaging topology, dead-letter queues and EC2 deployment"
)]
struct Cli {
    /// Longest wait for one stack to settle (creating RDS instances alone can take 10-20 minutes).
    #[arg(long, global = true, env = "SAGACTL_WAIT_MINUTES", default_value_t = 60)]
    wait_minutes: u64,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Create or update the messaging stack and print its outputs.
    Deploy {
        /// Prefix of every topic and queue name.
        #[arg(long, env = "NAME_PREFIX", default_value = "saga")]
        prefix: String,
        /// Stack name (default: <prefix>-messaging, which is what the services look for).
        #[arg(long, env = "TOPOLOGY_STACK")]
        stack: Option<String>,
        /// IAM ARN (wildcards allowed) of the role operators redrive dead letters with: besides
        /// the services, the only principal the queue policies let send. Default: nobody else.
        #[arg(long, env = "REDRIVE_PRINCIPAL_ARN", default_value = "")]
        redrive_principal: String,
        /// The customer-api's sender address. On an emulator on this machine, deploy verifies it
        /// as an SES identity (SES refuses mail from any other); on AWS, verifying it is a step of
        /// its own (DEPLOY.md).
        #[arg(long, env = "MAIL_FROM", default_value = infra::mail::DEFAULT_MAIL_FROM)]
        mail_from: String,
    },
    /// Delete the messaging stack and everything in it. Refuses while the application stack
    /// (<prefix>-app) exists, and while any queue or DLQ holds messages.
    Destroy {
        #[arg(long, env = "NAME_PREFIX", default_value = "saga")]
        prefix: String,
        #[arg(long, env = "TOPOLOGY_STACK")]
        stack: Option<String>,
        /// Required unless the endpoint is local (an emulator on this machine).
        #[arg(long)]
        yes: bool,
        /// Delete the queues and DLQs even though they hold messages, which are lost.
        #[arg(long)]
        discard_messages: bool,
    },
    /// Print the stack's outputs (queue URLs, topic ARNs).
    Outputs {
        #[arg(long, env = "TOPOLOGY_STACK", default_value = "saga-messaging")]
        stack: String,
    },
    /// Deploy everything to EC2 (see DEPLOY.md): artifact bucket, release upload, messaging and
    /// application stacks. Creates or updates; prints the gateway's URL.
    DeployApp {
        #[arg(long, env = "NAME_PREFIX", default_value = "saga")]
        prefix: String,
        /// Directory holding the gateway, customer-api and transaction-api binaries.
        #[arg(long, default_value = "target/release", conflicts_with = "release")]
        bin_dir: PathBuf,
        /// Run a release uploaded before, named by its manifest's SHA-256 (64 hex digits, as an
        /// earlier deploy printed it): roll back.
        #[arg(long)]
        release: Option<String>,
        #[arg(long, env = "GATEWAY_INSTANCES", default_value_t = 1)]
        gateway_instances: u32,
        #[arg(long, env = "CUSTOMER_API_INSTANCES", default_value_t = 1)]
        customer_api_instances: u32,
        #[arg(long, env = "TRANSACTION_API_INSTANCES", default_value_t = 1)]
        transaction_api_instances: u32,
        /// Any other template parameter, e.g. --parameter InstanceType=t3.small (repeatable).
        #[arg(long = "parameter", value_name = "KEY=VALUE", value_parser = parse_parameter)]
        parameters: Vec<(String, String)>,
    },
    /// Remove the application, the messaging stack and the artifact bucket with every release.
    /// Keeps the messaging stack (and stops there) while any queue or DLQ holds messages.
    DestroyApp {
        #[arg(long, env = "NAME_PREFIX", default_value = "saga")]
        prefix: String,
        /// Required unless the endpoint is local (an emulator on this machine).
        #[arg(long)]
        yes: bool,
        /// Delete the queues and DLQs even though they hold messages, which are lost.
        #[arg(long)]
        discard_messages: bool,
    },
    /// Inspect the dead-letter queues and move messages back to their source queue.
    Dlq {
        #[command(subcommand)]
        command: DlqCommand,
    },
}

#[derive(Subcommand)]
enum DlqCommand {
    /// List what sits in each DLQ, without consuming it.
    List {
        #[arg(long, env = "TOPOLOGY_STACK", default_value = "saga-messaging")]
        stack: String,
        /// Only the DLQs of this queue: customer-commands, transaction-commands or gateway-events.
        #[arg(long)]
        queue: Option<String>,
        /// Most messages shown per DLQ.
        #[arg(long, default_value_t = 1000)]
        limit: usize,
        /// One JSON document instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Move messages back to their source queue (once the cause is fixed).
    Redrive {
        #[arg(long, env = "TOPOLOGY_STACK", default_value = "saga-messaging")]
        stack: String,
        /// Only the DLQs of this queue: customer-commands, transaction-commands or gateway-events.
        #[arg(long)]
        queue: Option<String>,
        /// Every message.
        #[arg(long, conflicts_with = "message_id", required_unless_present = "message_id")]
        all: bool,
        /// SQS message ids as `dlq list` shows them (repeatable).
        #[arg(long = "message-id", value_name = "ID")]
        message_id: Vec<String>,
        /// How long to wait for each SQS message-move task.
        #[arg(long, default_value_t = 300)]
        wait_seconds: u64,
        #[arg(long)]
        json: bool,
    },
}

fn parse_parameter(raw: &str) -> Result<(String, String), String> {
    match raw.split_once('=') {
        Some((key, value)) if !key.is_empty() => Ok((key.to_owned(), value.to_owned())),
        _ => Err(format!("`{raw}` is not KEY=VALUE")),
    }
}

fn main() -> ExitCode {
    init_logs();
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(runtime) => runtime,
        Err(err) => return report(&anyhow::Error::new(err).context("starting the async runtime")),
    };
    match runtime.block_on(run(cli)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => report(&err),
    }
}

/// Logs to stderr (stdout is for results), at `info` unless `RUST_LOG` says otherwise.
fn init_logs() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info,aws_config=warn,aws_smithy_runtime=warn"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .compact()
        .init();
}

/// The error once, one line per cause.
fn report(err: &anyhow::Error) -> ExitCode {
    eprintln!("sagactl: error: {err}");
    for cause in err.chain().skip(1) {
        eprintln!("  caused by: {cause}");
    }
    ExitCode::FAILURE
}

/// Says where a changing command is about to act. `destructive` ones refuse a non-local
/// endpoint without `--yes`, before any call to it.
async fn announce(sdk: &aws_config::SdkConfig, action: &str, destructive: bool, yes: bool) -> anyhow::Result<()> {
    let endpoint = Endpoint::from_sdk(sdk);
    if destructive && !yes && !endpoint.is_local() {
        anyhow::bail!(
            "refusing to {action} on {endpoint}, which is not an emulator on this machine: \
             add --yes if that is what you mean (or `source localstack/env.sh` for LocalStack)"
        );
    }
    let target = target::identify(sdk).await.map_err(anyhow::Error::msg)?;
    tracing::info!("about to {action} on {target}");
    Ok(())
}

async fn run(cli: Cli) -> anyhow::Result<()> {
    let wait = Duration::from_secs(cli.wait_minutes.saturating_mul(60));
    let sdk = utility::messaging::bus::load_aws_config().await;
    let client = aws_sdk_cloudformation::Client::new(&sdk);
    let clients = || app::Clients {
        settle_limit: wait,
        ..app::Clients::new(&sdk)
    };
    match cli.command {
        Command::Deploy {
            prefix,
            stack,
            redrive_principal,
            mail_from,
        } => {
            let params = MessagingParams {
                redrive_principal_arn: redrive_principal,
                ..MessagingParams::new(prefix)
            };
            let stack = stack.unwrap_or_else(|| params.stack_name());
            announce(&sdk, &format!("deploy stack {stack}"), false, false).await?;
            let outputs = infra::deploy_messaging_within(&client, &stack, &params, wait)
                .await
                .with_context(|| format!("deploying stack {stack}"))?;
            if Endpoint::from_sdk(&sdk).is_local() {
                infra::mail::verify_sender(&sdk, &mail_from).await?;
                tracing::info!(mail_from, "sender identity verified on the emulator");
            }
            println!("stack {stack} is ready");
            print_outputs(outputs);
        }
        Command::Destroy {
            prefix,
            stack,
            yes,
            discard_messages,
        } => {
            let app_stack = app::Stacks::for_prefix(&prefix).app;
            let stack = stack.unwrap_or_else(|| MessagingParams::new(prefix).stack_name());
            announce(&sdk, &format!("delete stack {stack}"), true, yes).await?;
            let bus = utility::messaging::bus::Bus::new(&sdk);
            infra::teardown::delete_messaging(&client, &bus, &stack, Some(&app_stack), discard_messages, wait)
                .await
                .with_context(|| format!("deleting stack {stack}"))?;
            println!("stack {stack} is deleted");
        }
        Command::Outputs { stack } => print_outputs(infra::existing_outputs(&client, &stack).await?),
        Command::DeployApp {
            prefix,
            bin_dir,
            release,
            gateway_instances,
            customer_api_instances,
            transaction_api_instances,
            parameters,
        } => {
            let options = AppOptions {
                name_prefix: prefix,
                release: match release {
                    Some(id) => ReleaseSource::Existing(id),
                    None => ReleaseSource::Build(bin_dir),
                },
                instances: [gateway_instances, customer_api_instances, transaction_api_instances],
                overrides: parameters,
            };
            let action = format!("deploy {}-*", options.name_prefix);
            announce(&sdk, &action, false, false).await?;
            let deployment = app::deploy(&clients(), &options)
                .await
                .context("deploying the application")?;
            println!(
                "release {} is deployed (manifest sha256 {}: roll back to it with --release {})",
                deployment.release_id, deployment.release_manifest_sha256, deployment.release_manifest_sha256
            );
            let stacks = &deployment.stacks;
            let network = deployment.network_created.then_some(&stacks.network);
            let names: Vec<&str> = [
                Some(&stacks.artifacts),
                Some(&stacks.messaging),
                network,
                Some(&stacks.app),
            ]
            .into_iter()
            .flatten()
            .map(String::as_str)
            .collect();
            println!("stacks: {}", names.join(", "));
            println!("gateway: {}", deployment.gateway_url);
            println!(
                "webhook keys: {}/.well-known/webhook-keys (what callback receivers verify with; see DEPLOY.md)",
                deployment.gateway_url.trim_end_matches('/')
            );
            if let Some(operator) = deployment.app_outputs.get("OperatorUrl") {
                println!("operator listener: {operator} (from OperatorCidr; see DEPLOY.md)");
            }
        }
        Command::DestroyApp {
            prefix,
            yes,
            discard_messages,
        } => {
            announce(&sdk, &format!("destroy deployment {prefix}-*"), true, yes).await?;
            app::destroy(&clients(), &prefix, discard_messages)
                .await
                .context("destroying the application")?;
            println!("deployment {prefix} is deleted");
        }
        Command::Dlq { command } => {
            if matches!(command, DlqCommand::Redrive { .. }) {
                announce(&sdk, "move dead letters back to their queues", false, false).await?;
            }
            dlq(command, utility::messaging::bus::Bus::new(&sdk)).await?
        }
    }
    Ok(())
}

async fn dlq(command: DlqCommand, bus: utility::messaging::bus::Bus) -> anyhow::Result<()> {
    use infra::dlq;
    let queues = |stack: &str, queue: Option<String>| {
        let bus = bus.clone();
        let stack = stack.to_owned();
        async move {
            let only = queue.as_deref().map(dlq::source_queue).transpose()?;
            let outputs = infra::existing_outputs(bus.cloudformation(), &stack)
                .await
                .with_context(|| format!("reading the outputs of stack {stack}"))?;
            anyhow::Ok(dlq::resolve(&outputs, only).with_context(|| format!("stack {stack}"))?)
        }
    };
    match command {
        DlqCommand::List {
            stack,
            queue,
            limit,
            json,
        } => {
            let queues = queues(&stack, queue).await?;
            let letters = dlq::list(&bus, &queues, limit).await?;
            if json {
                println!("{}", serde_json::to_string_pretty(&letters)?);
            } else {
                print!("{}", dlq::table(&queues, &letters));
            }
        }
        DlqCommand::Redrive {
            stack,
            queue,
            all,
            message_id,
            wait_seconds,
            json,
        } => {
            let queues = queues(&stack, queue).await?;
            let report = if all {
                dlq::redrive::all(&bus, &queues, std::time::Duration::from_secs(wait_seconds)).await?
            } else {
                dlq::redrive::selected(&bus, &queues, &message_id).await?
            };
            if json {
                println!("{}", serde_json::to_string_pretty(&report)?);
            } else {
                for moved in &report.moved {
                    println!(
                        "{} -> {}: {} moved ({})",
                        moved.dlq, moved.source, moved.moved, moved.via
                    );
                }
                println!("{} message(s) moved", report.total());
            }
            if !report.not_found.is_empty() {
                anyhow::bail!("not found in any DLQ looked at: {}", report.not_found.join(", "));
            }
        }
    }
    Ok(())
}

fn print_outputs(outputs: std::collections::HashMap<String, String>) {
    let mut outputs: Vec<_> = outputs.into_iter().collect();
    outputs.sort();
    for (key, value) in outputs {
        println!("{key}\t{value}");
    }
}
