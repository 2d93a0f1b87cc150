//! The whole EC2 deployment as one operation (`sagactl deploy-app` / `destroy-app`): the
//! artifact bucket (`artifacts.yaml`), the release uploaded into it, the messaging topology
//! (`messaging.yaml`), the network (`network.yaml`, unless an existing VPC is given) and the
//! application (`app.yaml`), each a CloudFormation stack named `<prefix>-artifacts`,
//! `<prefix>-messaging`, `<prefix>-network`, `<prefix>-app`. The messaging outputs become the
//! application's parameters, so instances are told their queue URLs and topic ARNs and need no
//! CloudFormation permission. Every step is create-or-update, so running it again is safe.

use crate::release::{self, Release, ReleaseError, Uploaded};
use crate::{InfraError, MessagingParams};
use aws_config::SdkConfig;
use std::collections::HashMap;
use std::path::PathBuf;
use std::time::Duration;
use utility::messaging::Endpoint;

pub const ARTIFACTS_TEMPLATE: &str = include_str!("../artifacts.yaml");
pub const NETWORK_TEMPLATE: &str = include_str!("../network.yaml");
pub const APP_TEMPLATE: &str = include_str!("../app.yaml");

/// Network outputs the application template takes as parameters of the same name. Passing
/// `VpcId` yourself (with the subnets) skips the network stack: the application goes into that VPC.
pub const NETWORK_INPUTS: [&str; 3] = ["VpcId", "PublicSubnetIds", "PrivateSubnetIds"];

/// Messaging outputs the application template takes as parameters of the same name, from the
/// endpoint table: every queue's URL and ARN, every topic's ARN, and every DLQ's name (the
/// dimension of its alarm).
pub fn messaging_inputs() -> Vec<&'static str> {
    let mut keys = Vec::new();
    for endpoint in <Endpoint as strum::VariantArray>::VARIANTS {
        let outputs = endpoint.outputs();
        for key in [outputs.address, outputs.arn, outputs.dead_letter.queue_name] {
            if !keys.contains(&key) {
                keys.push(key);
            }
        }
    }
    keys
}

#[derive(Debug, thiserror::Error)]
pub enum DeployError {
    #[error(transparent)]
    Stack(#[from] InfraError),
    #[error(transparent)]
    Release(#[from] ReleaseError),
    #[error("the application is deleted, the messaging stack kept: {0}")]
    Teardown(#[from] crate::teardown::TeardownError),
    #[error("stack `{stack}` has no output `{key}`; is it an older version of the template?")]
    MissingOutput { stack: String, key: &'static str },
    #[error(
        "stack `{stack}` protects its databases from deletion; turn that off first: \
         sagactl deploy-app --release {release} --parameter DatabaseDeletionProtection=false \
         with the deployment's other parameters (CertificateArn, ...) (each database still leaves a final snapshot)"
    )]
    DeletionProtected { stack: String, release: String },
    #[error(
        "no CertificateArn: the public load balancer would take names and e-mails over plain HTTP; \
         give --parameter CertificateArn=<ARN>, or --parameter AllowPlainHttp=true for a development deployment"
    )]
    PlainHttp,
    #[error(
        "no MailFrom: the customer-api mails enrollment confirmations from an address SES has verified; \
         give --parameter MailFrom=<address> (DEPLOY.md, \"Mail\")"
    )]
    NoMailFrom,
    #[error("cannot read the CIDRs of the public subnets {subnets} (for LoadBalancerCidrs): {detail}")]
    Subnets { subnets: String, detail: String },
}

/// The IPv4 CIDRs of `subnets` (comma-separated ids), comma-separated: where the public load
/// balancer's nodes live, so the only peers whose `X-Forwarded-For` the gateway may believe.
/// Derived rather than typed, since a wrong value quietly puts every client into the balancer's
/// two or three rate-limit buckets.
pub async fn subnet_cidrs(ec2: &aws_sdk_ec2::Client, subnets: &str) -> Result<String, DeployError> {
    let ids: Vec<String> = subnets
        .split(',')
        .map(|s| s.trim().to_owned())
        .filter(|s| !s.is_empty())
        .collect();
    let failed = |detail: String| DeployError::Subnets {
        subnets: subnets.to_owned(),
        detail,
    };
    let described = ec2
        .describe_subnets()
        .set_subnet_ids(Some(ids.clone()))
        .send()
        .await
        .map_err(|e| failed(aws_sdk_ec2::error::DisplayErrorContext(e).to_string()))?;
    let mut cidrs = Vec::new();
    for id in &ids {
        let cidr = described
            .subnets()
            .iter()
            .find(|s| s.subnet_id() == Some(id.as_str()))
            .and_then(|s| s.cidr_block())
            .ok_or_else(|| failed(format!("{id} has no IPv4 CIDR")))?;
        cidrs.push(cidr.to_owned());
    }
    if cidrs.is_empty() {
        return Err(failed("no subnet".to_owned()));
    }
    Ok(cidrs.join(","))
}

/// A deployment without a certificate serves the public API over plain HTTP: only when asked
/// for by name (the template's rule says the same to CloudFormation; this says it before anything
/// is uploaded).
pub fn check_transport(overrides: &[(String, String)]) -> Result<(), DeployError> {
    let value = |key: &str| overrides.iter().rev().find(|(k, _)| k == key).map(|(_, v)| v.as_str());
    let certificate = value("CertificateArn").is_some_and(|arn| !arn.is_empty());
    if certificate || value("AllowPlainHttp") == Some("true") {
        Ok(())
    } else {
        Err(DeployError::PlainHttp)
    }
}

/// The sender of the customer-api's mail has no default (no address would be verified in a new
/// account): refused before anything is uploaded when not given.
pub fn check_mail_from(overrides: &[(String, String)]) -> Result<(), DeployError> {
    let given = overrides.iter().rev().find(|(k, _)| k == "MailFrom");
    match given {
        Some((_, address)) if !address.trim().is_empty() => Ok(()),
        _ => Err(DeployError::NoMailFrom),
    }
}

/// What to run: a fresh release built from a directory of binaries, or one uploaded before (a
/// roll-back, or a re-deploy with other parameters).
#[derive(Debug, Clone)]
pub enum ReleaseSource {
    Build(PathBuf),
    Existing(String),
}

#[derive(Debug, Clone)]
pub struct AppOptions {
    pub name_prefix: String,
    pub release: ReleaseSource,
    /// Desired instances of gateway, customer-api, transaction-api.
    pub instances: [u32; 3],
    /// Further template parameters (`InstanceType`, `DatabaseInstanceClass`, `BonusBudgetPoints`,
    /// `AllowedCidr`, `AlarmTopicArn`, ...), passed through unchanged.
    pub overrides: Vec<(String, String)>,
}

/// The messaging template's parameter naming who may redrive dead letters.
const REDRIVE_PRINCIPAL: &str = "RedrivePrincipalArn";

/// Stack names of a deployment.
#[derive(Debug, Clone)]
pub struct Stacks {
    pub artifacts: String,
    pub messaging: String,
    pub network: String,
    pub app: String,
}

impl Stacks {
    pub fn for_prefix(prefix: &str) -> Self {
        Self {
            artifacts: format!("{prefix}-artifacts"),
            messaging: MessagingParams::new(prefix).stack_name(),
            network: format!("{prefix}-network"),
            app: format!("{prefix}-app"),
        }
    }
}

/// What a deployment produced.
#[derive(Debug, Clone)]
pub struct Deployment {
    pub stacks: Stacks,
    pub bucket: String,
    pub release_id: String,
    /// The stack's `ReleaseManifestSha256`.
    pub release_manifest_sha256: String,
    /// False when the application went into an existing VPC.
    pub network_created: bool,
    pub gateway_url: String,
    pub app_outputs: HashMap<String, String>,
}

/// Clients for one AWS endpoint (real AWS, or an emulator through `AWS_ENDPOINT_URL`), and how
/// long to wait for each stack.
#[derive(Debug, Clone)]
pub struct Clients {
    pub cloudformation: aws_sdk_cloudformation::Client,
    pub ec2: aws_sdk_ec2::Client,
    pub s3: aws_sdk_s3::Client,
    /// SQS and SNS: how many messages the queues hold before they are deleted.
    pub bus: utility::messaging::bus::Bus,
    pub settle_limit: Duration,
}

impl Clients {
    pub fn new(sdk: &SdkConfig) -> Self {
        // Emulators answer on one host name, so bucket names go in the path there.
        let s3 = aws_sdk_s3::config::Builder::from(sdk)
            .force_path_style(sdk.endpoint_url().is_some())
            .build();
        Self {
            cloudformation: aws_sdk_cloudformation::Client::new(sdk),
            ec2: aws_sdk_ec2::Client::new(sdk),
            s3: aws_sdk_s3::Client::from_conf(s3),
            bus: utility::messaging::bus::Bus::new(sdk),
            settle_limit: crate::DEFAULT_SETTLE_LIMIT,
        }
    }
}

/// The application stack's parameters that come from the deployment itself (the release, the
/// instance counts); the messaging and network outputs and the caller's overrides join them.
pub fn release_parameters(
    prefix: &str,
    bucket: &str,
    release: &Uploaded,
    instances: [u32; 3],
) -> Vec<(String, String)> {
    vec![
        ("NamePrefix".to_owned(), prefix.to_owned()),
        ("ArtifactBucket".to_owned(), bucket.to_owned()),
        ("ReleasePrefix".to_owned(), release::prefix(&release.id)),
        ("ReleaseManifestSha256".to_owned(), release.manifest_sha256.clone()),
        ("GatewayInstances".to_owned(), instances[0].to_string()),
        ("CustomerApiInstances".to_owned(), instances[1].to_string()),
        ("TransactionApiInstances".to_owned(), instances[2].to_string()),
    ]
}

/// Creates or updates everything and returns the gateway's URL.
#[tracing::instrument(skip_all, fields(prefix = %options.name_prefix))]
pub async fn deploy(clients: &Clients, options: &AppOptions) -> Result<Deployment, DeployError> {
    check_transport(&options.overrides)?;
    check_mail_from(&options.overrides)?;
    let stacks = Stacks::for_prefix(&options.name_prefix);
    let cfn = &clients.cloudformation;
    let limit = clients.settle_limit;

    let artifacts = crate::deploy_stack_within(cfn, &stacks.artifacts, ARTIFACTS_TEMPLATE, &[], limit).await?;
    let bucket = output(&artifacts, &stacks.artifacts, "BucketName")?;
    let release = match &options.release {
        ReleaseSource::Build(dir) => Release::collect(dir)?.upload(&clients.s3, &bucket).await?,
        ReleaseSource::Existing(id) => release::verify_uploaded(&clients.s3, &bucket, id).await?,
    };
    tracing::info!(release = %release.id, manifest = %release.manifest_sha256, %bucket, "release in place");

    // The one parameter of the messaging stack a deploy may set (`--parameter
    // RedrivePrincipalArn=...`); it is not the application template's.
    let messaging_params = MessagingParams {
        redrive_principal_arn: options
            .overrides
            .iter()
            .rfind(|(k, _)| k == REDRIVE_PRINCIPAL)
            .map(|(_, v)| v.clone())
            .unwrap_or_default(),
        ..MessagingParams::new(&options.name_prefix)
    };
    let messaging = crate::deploy_messaging_within(cfn, &stacks.messaging, &messaging_params, limit).await?;
    let mut parameters = release_parameters(&options.name_prefix, &bucket, &release, options.instances);
    for key in messaging_inputs() {
        parameters.push((key.to_owned(), output(&messaging, &stacks.messaging, key)?));
    }
    let existing_vpc = options.overrides.iter().any(|(k, _)| k == "VpcId");
    if !existing_vpc {
        let network_parameters = [("NamePrefix".to_owned(), options.name_prefix.clone())];
        let network =
            crate::deploy_stack_within(cfn, &stacks.network, NETWORK_TEMPLATE, &network_parameters, limit).await?;
        for key in NETWORK_INPUTS {
            parameters.push((key.to_owned(), output(&network, &stacks.network, key)?));
        }
    }
    for (key, value) in options.overrides.iter().filter(|(k, _)| k != REDRIVE_PRINCIPAL) {
        parameters.retain(|(k, _)| k != key);
        parameters.push((key.clone(), value.clone()));
    }
    if !parameters.iter().any(|(k, _)| k == "LoadBalancerCidrs") {
        let public = parameters
            .iter()
            .find(|(k, _)| k == "PublicSubnetIds")
            .map(|(_, v)| v.clone())
            .unwrap_or_default();
        let cidrs = subnet_cidrs(&clients.ec2, &public).await?;
        tracing::info!(%cidrs, "load balancer CIDRs, from the public subnets");
        parameters.push(("LoadBalancerCidrs".to_owned(), cidrs));
    }
    let app_outputs = crate::deploy_stack_within(cfn, &stacks.app, APP_TEMPLATE, &parameters, limit).await?;
    let gateway_url = output(&app_outputs, &stacks.app, "GatewayUrl")?;
    Ok(Deployment {
        stacks,
        bucket,
        release_id: release.id,
        release_manifest_sha256: release.manifest_sha256,
        network_created: !existing_vpc,
        gateway_url,
        app_outputs,
    })
}

/// Removes the application, the messaging topology, the artifact bucket (emptied first) and
/// the network. Parts already gone are skipped, so an interrupted destroy can simply be run again.
/// Refuses, before it deletes anything, while the databases are protected from deletion. Once the
/// application is gone, stops with the messaging stack kept while a queue or DLQ holds messages,
/// unless `discard_messages` ([`crate::teardown`]).
#[tracing::instrument(skip_all, fields(prefix = prefix))]
pub async fn destroy(clients: &Clients, prefix: &str, discard_messages: bool) -> Result<(), DeployError> {
    let stacks = Stacks::for_prefix(prefix);
    let cfn = &clients.cloudformation;
    let limit = clients.settle_limit;
    if let Some(app) = crate::parameters(cfn, &stacks.app).await? {
        let parameter = |key: &str| app.get(key).map(String::as_str);
        if parameter("DatabaseDeletionProtection") == Some("true") {
            let release = parameter("ReleasePrefix").unwrap_or_default();
            return Err(DeployError::DeletionProtected {
                stack: stacks.app,
                release: release.trim_start_matches("releases/").to_owned(),
            });
        }
    }
    crate::delete_within(cfn, &stacks.app, limit).await?;
    crate::teardown::delete_messaging(cfn, &clients.bus, &stacks.messaging, None, discard_messages, limit).await?;
    let artifacts = crate::outputs(cfn, &stacks.artifacts).await?.unwrap_or_default();
    if let Some(bucket) = artifacts.get("BucketName") {
        let removed = release::empty_bucket(&clients.s3, bucket).await?;
        tracing::info!(%bucket, removed, "artifact bucket emptied");
    }
    crate::delete_within(cfn, &stacks.artifacts, limit).await?;
    crate::delete_within(cfn, &stacks.network, limit).await?;
    Ok(())
}

fn output(outputs: &HashMap<String, String>, stack: &str, key: &'static str) -> Result<String, DeployError> {
    outputs.get(key).cloned().ok_or_else(|| DeployError::MissingOutput {
        stack: stack.to_owned(),
        key,
    })
}

#[cfg(test)]
mod tests {
    #[test]
    fn plain_http_only_when_asked_for_by_name() {
        let given = |pairs: &[(&str, &str)]| {
            super::check_transport(
                &pairs
                    .iter()
                    .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                    .collect::<Vec<_>>(),
            )
        };
        assert!(given(&[]).is_err());
        assert!(given(&[("CertificateArn", "")]).is_err());
        assert!(given(&[("AllowPlainHttp", "false")]).is_err());
        assert!(given(&[("AllowPlainHttp", "TRUE")]).is_err());
        assert!(given(&[("CertificateArn", "arn:aws:acm:eu-west-1:1:certificate/x")]).is_ok());
        assert!(given(&[("AllowPlainHttp", "true")]).is_ok());
    }

    #[test]
    fn a_deployment_names_its_mail_sender() {
        let given = |pairs: &[(&str, &str)]| {
            super::check_mail_from(
                &pairs
                    .iter()
                    .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                    .collect::<Vec<_>>(),
            )
        };
        assert!(given(&[]).is_err());
        assert!(given(&[("MailFrom", " ")]).is_err());
        assert!(given(&[("MailFrom", "no-reply@example.com")]).is_ok());
    }

    use super::*;

    /// Every messaging output the application needs exists in messaging.yaml, is a parameter of
    /// app.yaml, and each dead-letter queue has a depth alarm there.
    #[test]
    fn the_templates_agree() {
        let messaging = crate::MESSAGING_TEMPLATE;
        for key in NETWORK_INPUTS {
            assert!(
                NETWORK_TEMPLATE.contains(&format!("\n  {key}:\n")),
                "network.yaml lacks output {key}"
            );
            assert!(
                APP_TEMPLATE.contains(&format!("\n  {key}:\n")),
                "app.yaml lacks parameter {key}"
            );
        }
        let inputs = messaging_inputs();
        assert_eq!(inputs.len(), 27);
        for key in &inputs {
            assert!(
                messaging.contains(&format!("\n  {key}:\n")),
                "messaging.yaml lacks output {key}"
            );
            assert!(
                APP_TEMPLATE.contains(&format!("\n  {key}:\n")),
                "app.yaml lacks parameter {key}"
            );
        }
        let dlq_names: Vec<&str> = inputs.iter().copied().filter(|k| k.ends_with("DlqName")).collect();
        assert_eq!(dlq_names.len(), 10);
        for key in dlq_names {
            let dimension = format!("Dimensions: [{{ Name: QueueName, Value: !Ref {key} }}]");
            assert!(APP_TEMPLATE.contains(&dimension), "no alarm on {key}");
        }
        // Ten dead-letter alarms, three on the work queues' waiting messages (a lookup waits
        // seconds, then expires), one on stalled sagas, one on the campaign's budget, six on
        // events SNS filtered out (three topics) for missing or unreadable attributes, one on
        // failed webhook deliveries, one on mails set aside.
        assert_eq!(APP_TEMPLATE.matches("Type: AWS::CloudWatch::Alarm").count(), 23);
    }

    /// Every parameter `deploy` passes is one app.yaml declares, and every parameter app.yaml
    /// requires (no default) is one `deploy` passes: a renamed parameter fails here, not halfway
    /// through a deployment.
    #[test]
    fn deploy_passes_exactly_the_parameters_the_application_template_needs() {
        let template: serde_norway::Value = serde_norway::from_str(APP_TEMPLATE).expect("app.yaml parses");
        let declared = template["Parameters"].as_mapping().expect("Parameters");
        let release = Uploaded {
            id: "0123456789abcdef".to_owned(),
            manifest_sha256: "0".repeat(64),
        };
        let mut passed: Vec<String> = release_parameters("saga", "bucket", &release, [1, 1, 1])
            .into_iter()
            .map(|(k, _)| k)
            .collect();
        passed.extend(messaging_inputs().iter().map(|k| k.to_string()));
        passed.extend(NETWORK_INPUTS.iter().map(|k| k.to_string()));
        // Derived by deploy from the public subnets when not given.
        passed.push("LoadBalancerCidrs".to_owned());
        // Given by the operator: deploy refuses to start without it (`check_mail_from`).
        passed.push("MailFrom".to_owned());
        for key in &passed {
            assert!(declared.contains_key(key.as_str()), "app.yaml has no parameter {key}");
        }
        for (key, spec) in declared {
            let key = key.as_str().expect("parameter name");
            if spec.get("Default").is_none() {
                assert!(
                    passed.iter().any(|p| p == key),
                    "deploy does not pass {key}, which has no default"
                );
            }
        }
        let destroy_reads = ["DatabaseDeletionProtection", "ReleasePrefix"];
        for key in destroy_reads {
            assert!(declared.contains_key(key), "destroy reads parameter {key}");
        }
    }
}
