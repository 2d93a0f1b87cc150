//! The customer-api: owns the customer database and the addresses. It consumes `Enroll`,
//! `ConfirmEnrollment`, `ResendConfirmation`, `ForgetEnrollment` and `Unenroll` commands from its
//! queue and publishes `ConfirmationRequested`, `ConfirmationLapsed`, `CustomerEnrolled`, `EnrollmentRejected` and
//! `CustomerUnenrolled` to the customer events topic, always through its outbox. It is the one
//! service that sends mail (SES), through a mail outbox of its own ([`mail`]).

pub mod confirmation;
mod customers;
pub mod mail;

pub use customers::fill_email_keys;
mod lookup;

use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;
use utility::domain::Subaddresses;
use utility::messaging::{Endpoint, Participant};
use utility::runtime::config::{CommonConfig, ServiceInfo};
use utility::runtime::{Service, ServiceCore, Task};

pub use customers::CustomerHandler;

#[derive(Debug, Clone, Serialize, Deserialize, schemars::JsonSchema)]
pub struct Config {
    #[serde(flatten)]
    pub common: CommonConfig,
    /// Whether `ada+news@example.com` is the customer `ada@example.com` (`fold`) or a customer of
    /// its own (`distinct`). Applies to enrollments from then on: a customer keeps the key it was
    /// enrolled under.
    pub email_subaddresses: Subaddresses,
    /// The address confirmation mails are sent from: an identity verified in SES (on LocalStack,
    /// `sagactl deploy` verifies it), and on AWS the one the deployment's role may send from.
    pub mail_from: String,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            common: CommonConfig::new(([127, 0, 0, 1], 8081).into(), "sqlite:data/customer-api.db"),
            email_subaddresses: Subaddresses::default(),
            mail_from: utility::domain::DEFAULT_MAIL_FROM.to_owned(),
        }
    }
}

impl AsRef<CommonConfig> for Config {
    fn as_ref(&self) -> &CommonConfig {
        &self.common
    }
}

/// Consumed queue first, then what the service publishes to, then its lookups: the queries it
/// answers and the gateway's reply queue it answers on.
pub const ENDPOINTS: [Endpoint; 4] = [
    Endpoint::CustomerCommands,
    Endpoint::CustomerEvents,
    Endpoint::CustomerQueries,
    Endpoint::GatewayReplies,
];

/// This service's own migrations (the shared outbox and processed-message tables come with
/// [`utility::storage::connect`]).
pub fn migrations() -> sqlx::migrate::Migrator {
    sqlx::migrate!()
}

/// The customer-api as a [`Service`]: customer commands in, customer events and mail out.
pub struct CustomerApi {
    subaddresses: Subaddresses,
    mail_from: String,
    /// Shared by the handler (which wakes it after a commit that wrote mail) and the mail relay.
    mail_signal: Arc<Notify>,
    mail_metrics: mail::MailMetrics,
}

impl Service for CustomerApi {
    const INFO: ServiceInfo = utility::service_info!();
    const QUEUE: Endpoint = Endpoint::CustomerCommands;
    const ENDPOINTS: &'static [Endpoint] = &ENDPOINTS;
    type Config = Config;
    type Handler = CustomerHandler;

    fn migrations() -> sqlx::migrate::Migrator {
        migrations()
    }

    fn from_config(config: Config) -> anyhow::Result<Self> {
        let mail_from = utility::domain::Email::parse(&config.mail_from).map_err(|e| {
            anyhow::anyhow!(
                "MAIL_FROM `{}` is not an e-mail address: {}",
                config.mail_from,
                e.message
            )
        })?;
        Ok(Self {
            subaddresses: config.email_subaddresses,
            mail_from: mail_from.as_str().to_owned(),
            mail_signal: Arc::new(Notify::new()),
            mail_metrics: mail::MailMetrics::default(),
        })
    }

    fn handler(&self, _: &ServiceCore) -> CustomerHandler {
        CustomerHandler {
            subaddresses: self.subaddresses,
            mail_signal: self.mail_signal.clone(),
        }
    }

    /// `/metrics` only (with `/health` and `/ready`): lookups come over the bus.
    fn routes(&self, core: &ServiceCore, _: &CancellationToken) -> anyhow::Result<axum::Router> {
        Ok(core.metrics_routes())
    }

    fn tasks(&self, core: &ServiceCore, shutdown: &CancellationToken) -> Vec<(&'static str, Task)> {
        let queue = Participant::CustomerApi.lookups();
        let fill = customers::keep_email_keys_filled(core.background_pool.clone(), self.subaddresses, shutdown.clone());
        let forget = confirmation::keep_forgetting_expired(core.background_pool.clone(), shutdown.clone());
        self.mail_metrics.register(&core.metrics);
        core.metrics
            .add_source(mail::pending_gauge(&self.mail_metrics, core.background_pool.clone()));
        let relay = mail::MailRelay::new(
            core.background_pool.clone(),
            ses_client(core),
            self.mail_from.clone(),
            self.mail_signal.clone(),
            core.config.relay_interval(),
            self.mail_metrics.clone(),
        );
        vec![
            (
                "lookup responder",
                core.responder(queue, lookup::CustomerLookups, shutdown),
            ),
            ("address key filler", Box::pin(fill)),
            ("pending enrollment sweeper", Box::pin(forget)),
            ("mail relay", Box::pin(relay.run(shutdown.clone()))),
        ]
    }
}

/// An SES client on the bus's endpoint, region and credentials, failing fast when SES does not
/// even accept a connection.
fn ses_client(core: &ServiceCore) -> aws_sdk_ses::Client {
    let timeouts = aws_sdk_ses::config::timeout::TimeoutConfig::builder()
        .connect_timeout(Duration::from_secs(3))
        .operation_attempt_timeout(Duration::from_secs(10))
        .build();
    let config = aws_sdk_ses::config::Builder::from(core.bus.sdk_config())
        .timeout_config(timeouts)
        .build();
    aws_sdk_ses::Client::from_conf(config)
}

/// The service built and ready to run: `Application::build(config, bus)`, then `run_until_stopped`.
pub type Application = utility::runtime::Application<CustomerApi>;
