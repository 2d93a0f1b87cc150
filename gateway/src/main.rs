use gateway::{Application, Config};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let info = utility::service_info!();
    let Some(config) = utility::runtime::config::from_command_line::<Config>(info) else {
        return Ok(()); // --help or --version
    };
    let telemetry = utility::runtime::telemetry::init(config.common.log_format, info.name);
    let shutdown = utility::runtime::shutdown_on_signal();
    let bus = utility::messaging::bus::Bus::from_env().await;
    let app = Application::build(config, bus)
        .await
        .inspect_err(|err| tracing::error!(error = format!("{err:#}"), "start-up failed"))?;
    let stopped = app.run_until_stopped(shutdown).await;
    telemetry.shutdown();
    stopped
}
