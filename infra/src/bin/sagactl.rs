//! `sagactl`: operate the saga's messaging topology.
//!
//! Uses the standard AWS configuration: `AWS_ENDPOINT_URL` points it at LocalStack, otherwise it
//! talks to AWS with the usual credential chain and `AWS_REGION`.

use anyhow::Context;
use clap::{Parser, Subcommand};
use infra::MessagingParams;

#[derive(Parser)]
#[command(version, about = "Operate the enrollment saga's messaging topology")]
struct Cli {
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
    },
    /// Delete the messaging stack and everything in it.
    Destroy {
        #[arg(long, env = "NAME_PREFIX", default_value = "saga")]
        prefix: String,
        #[arg(long, env = "TOPOLOGY_STACK")]
        stack: Option<String>,
    },
    /// Print the stack's outputs (queue URLs, topic ARNs).
    Outputs {
        #[arg(long, env = "TOPOLOGY_STACK", default_value = "saga-messaging")]
        stack: String,
    },
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    utility::telemetry::init(utility::telemetry::LogFormat::Text);
    let cli = Cli::parse();
    let sdk = utility::bus::load_aws_config().await;
    let client = aws_sdk_cloudformation::Client::new(&sdk);
    match cli.command {
        Command::Deploy { prefix, stack } => {
            let params = MessagingParams::new(prefix);
            let stack = stack.unwrap_or_else(|| params.stack_name());
            let outputs = infra::deploy_messaging(&client, &stack, &params)
                .await
                .with_context(|| format!("deploying stack {stack}"))?;
            println!("stack {stack} is ready");
            print_outputs(outputs);
        }
        Command::Destroy { prefix, stack } => {
            let stack = stack.unwrap_or_else(|| MessagingParams::new(prefix).stack_name());
            infra::delete(&client, &stack)
                .await
                .with_context(|| format!("deleting stack {stack}"))?;
            println!("stack {stack} is deleted");
        }
        Command::Outputs { stack } => print_outputs(infra::outputs(&client, &stack).await?),
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
