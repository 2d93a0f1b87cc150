//! `sagactl deploy-app` end to end against moto in server mode (LocalStack's free edition has no
//! AutoScaling, ELBv2, RDS or launch templates): the real deploy code creates the artifact bucket,
//! uploads a release of tiny stand-in binaries, deploys the messaging and application stacks, is
//! run again (idempotent), rolls out a new release and back, and destroys it all. Along the way
//! the deployed stack is audited: least-privilege IAM policies (`iam`), listeners, public routes,
//! health checks and ingress (`edge`), encrypted root volumes and the release check in the user
//! data (`instances`), encrypted topics, the log groups and the dashboard (`observe`); what moto
//! does not model is checked in the template (`template`; metric filters and alarms: `metrics`).
//!
//! moto comes from `infra/moto/moto.sh` (a pinned virtual environment, created on first use).

mod edge;
mod iam;
mod instances;
mod metrics;
mod observe;
mod template;

use aws_sdk_cloudformation::config::{Credentials, Region};
use infra::app::{self, AppOptions, Clients, ReleaseSource};
use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;
use testkit::{Poll, Process, eventually};

/// A moto server on a free port, stopped when dropped.
struct Moto {
    _server: Process,
    endpoint: String,
    /// Its output: a request a line, too much for the test's own.
    _logs: tempfile::TempDir,
}

impl Moto {
    async fn start() -> Self {
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("moto/moto.sh");
        let out = std::process::Command::new("bash")
            .arg(&script)
            .arg("path")
            .stderr(Stdio::inherit())
            .output()
            .expect("run infra/moto/moto.sh");
        assert!(out.status.success(), "infra/moto/moto.sh path failed");
        let stdout = String::from_utf8_lossy(&out.stdout);
        let server = PathBuf::from(stdout.trim().lines().last().unwrap_or_default());
        let port = testkit::free_port();
        let logs = tempfile::tempdir().unwrap();
        let mut process = Process::new("moto_server", &server)
            .arg("-H")
            .arg("127.0.0.1")
            .arg("-p")
            .arg(port.to_string())
            .log_file(logs.path().join("moto.log"));
        process
            .start()
            .unwrap_or_else(|e| panic!("start {}: {e:#}", server.display()));
        let what = format!("moto_server to listen on {port}");
        eventually(
            &what,
            Duration::from_secs(60),
            async || match tokio::net::TcpStream::connect(("127.0.0.1", port)).await {
                Ok(_) => Poll::Ready(()),
                Err(err) => Poll::Pending(err.kind()),
            },
        )
        .await
        .unwrap();
        Self {
            _server: process,
            endpoint: format!("http://127.0.0.1:{port}"),
            _logs: logs,
        }
    }

    async fn sdk(&self) -> aws_config::SdkConfig {
        // Explicit settings win over the LocalStack variables `make test` exports.
        aws_config::defaults(aws_config::BehaviorVersion::latest())
            .endpoint_url(&self.endpoint)
            .region(Region::new("us-east-1"))
            .credentials_provider(Credentials::new("test", "test", None, None, "moto"))
            .load()
            .await
    }
}

fn fake_binaries(dir: &Path, version: &str) {
    for service in infra::release::SERVICES {
        std::fs::write(dir.join(service), format!("#!/bin/sh\necho {service} {version}\n")).unwrap();
    }
}

async fn stack_status(cfn: &aws_sdk_cloudformation::Client, stack: &str) -> Option<String> {
    let out = cfn.describe_stacks().stack_name(stack).send().await.ok()?;
    out.stacks()
        .first()
        .and_then(|s| s.stack_status())
        .map(|s| s.as_str().to_owned())
        .filter(|s| s != "DELETE_COMPLETE")
}

/// Resource type -> logical id -> physical id.
async fn resources(cfn: &aws_sdk_cloudformation::Client, stack: &str) -> BTreeMap<String, BTreeMap<String, String>> {
    let out = cfn.list_stack_resources().stack_name(stack).send().await.unwrap();
    let mut by_type: BTreeMap<String, BTreeMap<String, String>> = BTreeMap::new();
    for r in out.stack_resource_summaries() {
        by_type
            .entry(r.resource_type().unwrap_or_default().to_owned())
            .or_default()
            .insert(
                r.logical_resource_id().unwrap_or_default().to_owned(),
                r.physical_resource_id().unwrap_or_default().to_owned(),
            );
    }
    by_type
}

/// Both event topics are encrypted at rest with the AWS managed SNS key.
async fn assert_topics_encrypted(sns: &aws_sdk_sns::Client, messaging: &BTreeMap<String, String>) {
    for key in ["CustomerEventsTopicArn", "TransactionEventsTopicArn"] {
        let out = sns
            .get_topic_attributes()
            .topic_arn(&messaging[key])
            .send()
            .await
            .unwrap();
        let master_key = out
            .attributes()
            .and_then(|a| a.get("KmsMasterKeyId"))
            .map(String::as_str);
        assert_eq!(master_key, Some("alias/aws/sns"), "{key}");
    }
}

/// An IAM server certificate in the emulator, for the HTTPS listener (moto checks that a
/// listener's certificate exists; ACM ones would do as well on AWS).
async fn certificate(iam: &aws_sdk_iam::Client, name: &str) -> String {
    let out = iam
        .upload_server_certificate()
        .server_certificate_name(name)
        .certificate_body("-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----")
        .private_key("-----BEGIN PRIVATE KEY-----\nMIIB\n-----END PRIVATE KEY-----")
        .send()
        .await
        .expect("upload a server certificate");
    out.server_certificate_metadata()
        .map(|m| m.arn().to_owned())
        .expect("certificate ARN")
}

async fn release_keys(s3: &aws_sdk_s3::Client, bucket: &str) -> BTreeSet<String> {
    let out = s3.list_objects_v2().bucket(bucket).send().await.unwrap();
    out.contents()
        .iter()
        .filter_map(|o| o.key().map(str::to_owned))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deploy_app_end_to_end_on_moto() {
    let moto = Moto::start().await;
    let sdk = moto.sdk().await;
    let clients = Clients::new(&sdk);
    let cfn = &clients.cloudformation;
    let iam = aws_sdk_iam::Client::new(&sdk);
    let elb = aws_sdk_elasticloadbalancingv2::Client::new(&sdk);
    let ec2 = aws_sdk_ec2::Client::new(&sdk);
    let sns = aws_sdk_sns::Client::new(&sdk);
    let bins = tempfile::tempdir().unwrap();
    fake_binaries(bins.path(), "v1");
    let prefix = format!("dep{}", std::process::id());
    let options = AppOptions {
        name_prefix: prefix.clone(),
        release: ReleaseSource::Build(bins.path().to_owned()),
        instances: [1, 2, 1],
        overrides: vec![
            ("BonusBudgetPoints".to_owned(), "5000".to_owned()),
            ("LogRetentionDays".to_owned(), "14".to_owned()),
            ("MailFrom".to_owned(), iam::MAIL_FROM.to_owned()),
            // No certificate in this deployment: plain HTTP, asked for by name.
            ("AllowPlainHttp".to_owned(), "true".to_owned()),
        ],
    };

    // First run: everything is created.
    let first = app::deploy(&clients, &options).await.expect("first deploy");
    assert!(first.network_created);
    let stacks = first.stacks.clone();
    let all_stacks = [&stacks.artifacts, &stacks.messaging, &stacks.network, &stacks.app];
    for stack in all_stacks {
        assert_eq!(
            stack_status(cfn, stack).await.as_deref(),
            Some("CREATE_COMPLETE"),
            "{stack}"
        );
    }
    let url = &first.gateway_url;
    assert!(url.starts_with("http://") && url.contains(".elb."), "{url}");
    let v1_keys = release_keys(&clients.s3, &first.bucket).await;
    let names = [
        "bin/customer-api",
        "bin/gateway",
        "bin/transaction-api",
        "ec2/bootstrap.sh",
        "ec2/saga-service@.service",
        "manifest.sha256",
    ];
    let expected: BTreeSet<String> = names
        .iter()
        .map(|k| format!("releases/{}/{k}", first.release_id))
        .collect();
    assert_eq!(v1_keys, expected);

    let messaging_resources = resources(cfn, &stacks.messaging).await;
    // The two services' event topics and the saga's status-change topic (webhooks' fan-out).
    assert_eq!(messaging_resources["AWS::SNS::Topic"].len(), 3);
    // Three work queues, three lookup queues, the webhook deliveries queue, and a dead-letter
    // queue for each and for each of the three subscriptions.
    assert_eq!(messaging_resources["AWS::SQS::Queue"].len(), 17);
    let app_resources = resources(cfn, &stacks.app).await;
    for (kind, count) in [
        ("AWS::IAM::Role", 3),
        ("AWS::IAM::InstanceProfile", 3),
        ("AWS::EC2::LaunchTemplate", 3),
        ("AWS::AutoScaling::AutoScalingGroup", 3),
        ("AWS::ElasticLoadBalancingV2::LoadBalancer", 2),
        // The gateway's two; nothing balances the customer-api or the transaction-api.
        ("AWS::ElasticLoadBalancingV2::TargetGroup", 2),
        ("AWS::ElasticLoadBalancingV2::ListenerRule", 8),
        ("AWS::RDS::DBInstance", 3),
        ("AWS::EC2::SecurityGroup", 8),
        ("AWS::Logs::LogGroup", 3),
        ("AWS::CloudWatch::Dashboard", 1),
    ] {
        let found = app_resources.get(kind).map(BTreeMap::len);
        assert_eq!(found, Some(count), "{kind}: {app_resources:?}");
    }
    for (logical, profile) in &app_resources["AWS::IAM::InstanceProfile"] {
        let got = iam.get_instance_profile().instance_profile_name(profile).send().await;
        let got = got.unwrap_or_else(|e| panic!("{logical}: {e}"));
        assert_eq!(
            got.instance_profile().map(|p| p.roles().len()),
            Some(1),
            "{logical} holds one role"
        );
    }
    let messaging_outputs: BTreeMap<String, String> = infra::existing_outputs(cfn, &stacks.messaging)
        .await
        .unwrap()
        .into_iter()
        .collect();
    let roles = &app_resources["AWS::IAM::Role"];
    let log_groups = observe::assert_log_groups(&moto.endpoint, &app_resources, &prefix, 14).await;
    iam::assert_least_privilege(&iam, roles, &messaging_outputs, &log_groups, &first).await;
    observe::assert_dashboard(&moto.endpoint, &prefix, &messaging_outputs, &first.app_outputs, 300).await;
    // Without a certificate: plain HTTP on 80, serving only the public routes.
    edge::assert_public_listener(&elb, &app_resources, None).await;
    edge::assert_operator_listener(&elb, &app_resources, None).await;
    edge::assert_internal_listeners(&elb, &app_resources).await;
    edge::assert_health_checks(&elb, &app_resources).await;
    edge::assert_ingress(&ec2, &app_resources, false).await;
    instances::assert_launch_templates(&ec2, &app_resources, &first).await;
    assert_topics_encrypted(&sns, &messaging_outputs).await;

    // Second run with the same binaries: same release, nothing re-uploaded, stacks settle again.
    let second = app::deploy(&clients, &options).await.expect("second deploy");
    assert_eq!(second.release_id, first.release_id);
    assert_eq!(second.gateway_url, first.gateway_url);
    assert_eq!(release_keys(&clients.s3, &first.bucket).await, v1_keys);
    for stack in all_stacks {
        let status = stack_status(cfn, stack).await.unwrap_or_default();
        assert!(
            status == "UPDATE_COMPLETE" || status == "CREATE_COMPLETE",
            "{stack}: {status}"
        );
    }

    // A new build rolls out as a new release; the roles follow it to the new objects only.
    fake_binaries(bins.path(), "v2");
    let third = app::deploy(&clients, &options).await.expect("deploy v2");
    assert_ne!(third.release_id, first.release_id);
    assert_eq!(
        third.app_outputs["ReleasePrefix"],
        format!("releases/{}", third.release_id)
    );
    iam::assert_least_privilege(&iam, roles, &messaging_outputs, &log_groups, &third).await;
    // The instances are told the new manifest, and check it.
    instances::assert_launch_templates(&ec2, &app_resources, &third).await;

    // Roll back to the first release without building anything.
    // Named by its id alone (a 64-bit check), the release is refused; by its manifest's SHA-256,
    // it is checked against exactly that.
    let by_id = AppOptions {
        release: ReleaseSource::Existing(first.release_id.clone()),
        ..options.clone()
    };
    let err = app::deploy(&clients, &by_id).await.unwrap_err().to_string();
    assert!(err.contains("SHA-256"), "{err}");
    let rollback = AppOptions {
        release: ReleaseSource::Existing(first.release_manifest_sha256.clone()),
        ..options.clone()
    };
    let back = app::deploy(&clients, &rollback).await.expect("roll back");
    assert_eq!(
        back.app_outputs["ReleasePrefix"],
        format!("releases/{}", first.release_id)
    );
    iam::assert_least_privilege(&iam, roles, &messaging_outputs, &log_groups, &back).await;
    let unknown = AppOptions {
        release: ReleaseSource::Existing("0123456789abcdef".repeat(4)),
        ..options.clone()
    };
    let err = app::deploy(&clients, &unknown).await.unwrap_err().to_string();
    assert!(err.contains("never uploaded"), "{err}");

    // The databases are protected from deletion by default: destroy refuses before it deletes
    // anything, and names the way out, which is a deploy that turns the protection off.
    let err = app::destroy(&clients, &prefix, false).await.unwrap_err();
    assert!(matches!(err, app::DeployError::DeletionProtected { .. }), "{err}");
    assert!(err.to_string().contains("DatabaseDeletionProtection=false"), "{err}");
    for stack in all_stacks {
        assert!(stack_status(cfn, stack).await.is_some(), "{stack} was deleted");
    }
    let unprotected = AppOptions {
        overrides: vec![
            ("DatabaseDeletionProtection".to_owned(), "false".to_owned()),
            ("AllowPlainHttp".to_owned(), "true".to_owned()),
            ("MailFrom".to_owned(), iam::MAIL_FROM.to_owned()),
        ],
        ..rollback.clone()
    };
    app::deploy(&clients, &unprotected)
        .await
        .expect("turn deletion protection off");

    // Destroy removes every stack, the bucket with its releases, and the roles. moto 5.2.5 cannot
    // delete the network stack (it has no CloudFormation delete for internet gateways, NAT
    // gateways, routes or VPC endpoints, so the VPC keeps dependencies): there, and only there,
    // destroy may stop at that last stack with a DependencyViolation.
    match app::destroy(&clients, &prefix, false).await {
        Ok(()) => assert_eq!(stack_status(cfn, &stacks.network).await, None, "network still exists"),
        Err(err) => {
            let text = format!("{err:?}");
            let moto_limit = text.contains(&stacks.network) && text.contains("DependencyViolation");
            assert!(moto_limit, "destroy failed: {text}");
        }
    }
    for stack in [&stacks.artifacts, &stacks.messaging, &stacks.app] {
        assert_eq!(stack_status(cfn, stack).await, None, "{stack} still exists");
    }
    let bucket_gone = clients.s3.head_bucket().bucket(&first.bucket).send().await.is_err();
    assert!(bucket_gone, "bucket {} still exists", first.bucket);
    let logs_left = observe::log_groups(&moto.endpoint, &prefix).await;
    assert!(logs_left.is_empty(), "log groups outlived the stack: {logs_left:?}");
    for role in roles.values() {
        assert!(
            iam.get_role().role_name(role).send().await.is_err(),
            "role {role} still exists"
        );
    }
}

/// With `VpcId` and the subnets given, the application goes into that VPC: no network stack is
/// created, and destroy (which then has nothing to do for the network) completes. This one is
/// deployed with a certificate: HTTPS on 443, port 80 redirecting to it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deploy_app_into_an_existing_vpc() {
    let moto = Moto::start().await;
    let sdk = moto.sdk().await;
    let clients = Clients::new(&sdk);
    let cfn = &clients.cloudformation;
    let prefix = format!("own{}", std::process::id());
    let iam = aws_sdk_iam::Client::new(&sdk);
    let elb = aws_sdk_elasticloadbalancingv2::Client::new(&sdk);
    let ec2 = aws_sdk_ec2::Client::new(&sdk);
    let certificate = certificate(&iam, &format!("{prefix}-gateway")).await;
    let existing = format!("{prefix}-existing-network");
    let parameters = [("NamePrefix".to_owned(), prefix.clone())];
    let network = infra::deploy_stack(cfn, &existing, app::NETWORK_TEMPLATE, &parameters)
        .await
        .expect("existing network");
    let bins = tempfile::tempdir().unwrap();
    fake_binaries(bins.path(), "v1");
    let options = AppOptions {
        name_prefix: prefix.clone(),
        release: ReleaseSource::Build(bins.path().to_owned()),
        instances: [1, 1, 1],
        overrides: app::NETWORK_INPUTS
            .iter()
            .map(|k| (k.to_string(), network[*k].clone()))
            .chain([
                ("DatabaseDeletionProtection".to_owned(), "false".to_owned()),
                ("CertificateArn".to_owned(), certificate.clone()),
                ("MailFrom".to_owned(), iam::MAIL_FROM.to_owned()),
            ])
            .collect(),
    };
    let deployment = app::deploy(&clients, &options).await.expect("deploy into existing VPC");
    assert!(!deployment.network_created);
    let stacks = deployment.stacks;
    // The gateway trusts X-Forwarded-For from the public subnets, derived from their ids.
    let app_parameters = infra::parameters(cfn, &stacks.app)
        .await
        .unwrap()
        .expect("app parameters");
    assert_eq!(app_parameters["LoadBalancerCidrs"], "10.40.0.0/24,10.40.1.0/24");
    assert_eq!(stack_status(cfn, &stacks.app).await.as_deref(), Some("CREATE_COMPLETE"));
    assert_eq!(
        stack_status(cfn, &stacks.network).await,
        None,
        "a network stack was created"
    );
    let app_resources = resources(cfn, &stacks.app).await;
    assert_eq!(app_resources["AWS::AutoScaling::AutoScalingGroup"].len(), 3);
    let url = &deployment.gateway_url;
    assert!(url.starts_with("https://") && url.contains(".elb."), "{url}");
    edge::assert_public_listener(&elb, &app_resources, Some(&certificate)).await;
    edge::assert_operator_listener(&elb, &app_resources, Some(&certificate)).await;
    edge::assert_ingress(&ec2, &app_resources, true).await;
    // The default retention, where the first test passes its own.
    observe::assert_log_groups(&moto.endpoint, &app_resources, &prefix, 30).await;

    app::destroy(&clients, &prefix, false).await.expect("destroy");
    for stack in [&stacks.artifacts, &stacks.messaging, &stacks.app] {
        assert_eq!(stack_status(cfn, stack).await, None, "{stack} still exists");
    }
    assert!(
        stack_status(cfn, &existing).await.is_some(),
        "destroy touched a network it did not create"
    );
    // Destroying what is already gone is fine (an interrupted destroy can be re-run).
    app::destroy(&clients, &prefix, false).await.expect("second destroy");
}
