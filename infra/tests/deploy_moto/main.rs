//! `sagactl deploy-app` end to end against moto in server mode (LocalStack's free edition has no
//! AutoScaling, ELBv2, RDS or launch templates): the real deploy code creates the artifact bucket,
//! uploads a release of tiny stand-in binaries, deploys the messaging and application stacks, is
//! run again (idempotent), rolls out a new release and back, and destroys it all. Along the way
//! the deployed IAM policies are read back and checked for least privilege.
//!
//! moto comes from `infra/moto/moto.sh` (a pinned virtual environment, created on first use).

use aws_sdk_cloudformation::config::{Credentials, Region};
use infra::app::{self, AppOptions, Clients, Deployment, ReleaseSource};
use serde_json::Value;
use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

/// A moto server on a free port, stopped when dropped.
struct Moto {
    child: tokio::process::Child,
    endpoint: String,
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
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let child = tokio::process::Command::new(&server)
            .args(["-H", "127.0.0.1", "-p", &port.to_string()])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .unwrap_or_else(|e| panic!("start {}: {e}", server.display()));
        let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
        while tokio::net::TcpStream::connect(("127.0.0.1", port)).await.is_err() {
            assert!(
                tokio::time::Instant::now() < deadline,
                "moto_server did not listen on {port} within 60 s"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        Self {
            child,
            endpoint: format!("http://127.0.0.1:{port}"),
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

impl Drop for Moto {
    fn drop(&mut self) {
        let _ = self.child.start_kill();
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

async fn release_keys(s3: &aws_sdk_s3::Client, bucket: &str) -> BTreeSet<String> {
    let out = s3.list_objects_v2().bucket(bucket).send().await.unwrap();
    out.contents()
        .iter()
        .filter_map(|o| o.key().map(str::to_owned))
        .collect()
}

/// An inline policy document as IAM returns it: URL-encoded JSON on AWS; moto 5.2.5 returns the
/// documents CloudFormation created as Python dict text, which differs in its quotes and `None`.
fn parse_policy(raw: &str) -> Value {
    let decoded = percent_decode(raw);
    serde_json::from_str(&decoded)
        .or_else(|_| serde_json::from_str(&decoded.replace('\'', "\"").replace("None", "null")))
        .unwrap_or_else(|e| panic!("policy document is not JSON ({e}): {decoded}"))
}

fn percent_decode(raw: &str) -> String {
    let bytes = raw.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let hex = bytes
            .get(i + 1..i + 3)
            .and_then(|h| u8::from_str_radix(std::str::from_utf8(h).ok()?, 16).ok());
        match (bytes[i], hex) {
            (b'%', Some(b)) => {
                out.push(b);
                i += 3;
            }
            (b, _) => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8(out).unwrap()
}

/// Marks a resource the emulator left unresolved (see [`SECRET_ACTION`]).
const UNRESOLVED: &str = "<unresolved>";

/// moto 5.2.5 does not model `AWS::SecretsManager::Secret` in CloudFormation, so the `!Ref` to
/// each service's secret comes back null there (on AWS it is the secret's ARN).
const SECRET_ACTION: &str = "secretsmanager:GetSecretValue";

fn strings(value: &Value) -> Vec<String> {
    match value {
        Value::String(s) => vec![s.clone()],
        Value::Null => vec![UNRESOLVED.to_owned()],
        Value::Array(items) => items.iter().flat_map(strings).collect(),
        _ => Vec::new(),
    }
}

/// action -> resources, over every inline policy of the role.
async fn grants(iam: &aws_sdk_iam::Client, role: &str) -> BTreeMap<String, BTreeSet<String>> {
    let mut grants: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    let names = iam.list_role_policies().role_name(role).send().await.unwrap();
    assert!(!names.policy_names().is_empty(), "role {role} has no inline policy");
    let attached = iam.list_attached_role_policies().role_name(role).send().await.unwrap();
    assert!(
        attached.attached_policies().is_empty(),
        "role {role} has managed policies attached"
    );
    for name in names.policy_names() {
        let doc = iam
            .get_role_policy()
            .role_name(role)
            .policy_name(name)
            .send()
            .await
            .unwrap();
        let doc = parse_policy(doc.policy_document());
        for statement in doc["Statement"].as_array().expect("Statement list") {
            assert_eq!(statement["Effect"], "Allow");
            assert!(statement.get("NotAction").is_none() && statement.get("NotResource").is_none());
            for action in strings(&statement["Action"]) {
                grants
                    .entry(action)
                    .or_default()
                    .extend(strings(&statement["Resource"]));
            }
        }
    }
    grants
}

fn set<S: AsRef<str>>(items: &[S]) -> BTreeSet<String> {
    items.iter().map(|s| s.as_ref().to_owned()).collect()
}

/// One role's expected scope: the queue it consumes, the queues it sends to, its topic.
struct Scope {
    role: &'static str,
    service: &'static str,
    own_queue: &'static str,
    send_to: &'static [&'static str],
    topic: Option<&'static str>,
}

const SCOPES: [Scope; 3] = [
    Scope {
        role: "GatewayRole",
        service: "gateway",
        own_queue: "GatewayEventsQueueArn",
        send_to: &["CustomerCommandsQueueArn", "TransactionCommandsQueueArn"],
        topic: None,
    },
    Scope {
        role: "CustomerApiRole",
        service: "customer-api",
        own_queue: "CustomerCommandsQueueArn",
        send_to: &[],
        topic: Some("CustomerEventsTopicArn"),
    },
    Scope {
        role: "TransactionApiRole",
        service: "transaction-api",
        own_queue: "TransactionCommandsQueueArn",
        send_to: &[],
        topic: Some("TransactionEventsTopicArn"),
    },
];

/// Checks every role of the deployment: nothing is a wildcard, and each service's queue, topic
/// and artifact permissions are exactly its own.
async fn assert_least_privilege(
    iam: &aws_sdk_iam::Client,
    roles: &BTreeMap<String, String>,
    messaging: &BTreeMap<String, String>,
    deployment: &Deployment,
) {
    let allowed = set(&[
        "sqs:ReceiveMessage",
        "sqs:DeleteMessage",
        "sqs:ChangeMessageVisibility",
        "sqs:GetQueueAttributes",
        "sqs:SendMessage",
        "sns:Publish",
        "sns:GetTopicAttributes",
        "s3:GetObject",
        "secretsmanager:GetSecretValue",
    ]);
    assert_eq!(roles.len(), SCOPES.len(), "roles: {roles:?}");
    for scope in &SCOPES {
        let service = scope.service;
        let grants = grants(iam, &roles[scope.role]).await;
        for (action, resources) in &grants {
            assert!(!action.contains('*'), "{service}: wildcard action {action}");
            assert!(allowed.contains(action), "{service}: unexpected action {action}");
            assert!(!resources.is_empty(), "{service}: {action} without resource");
            for resource in resources {
                assert!(
                    resource != UNRESOLVED || action == SECRET_ACTION,
                    "{service}: {action} on null"
                );
                let wildcard = resource.contains('*') || resource.contains('?');
                assert!(!wildcard, "{service}: {action} on {resource}");
            }
        }
        let own = &messaging[scope.own_queue];
        for action in ["sqs:ReceiveMessage", "sqs:DeleteMessage", "sqs:ChangeMessageVisibility"] {
            assert_eq!(grants.get(action), Some(&set(&[own])), "{service}: {action}");
        }
        let send: Vec<&String> = scope.send_to.iter().map(|k| &messaging[*k]).collect();
        let sent = grants.get("sqs:SendMessage").cloned().unwrap_or_default();
        assert_eq!(sent, set(&send), "{service}: sqs:SendMessage");
        let mut readable = send.clone();
        readable.push(own);
        assert_eq!(
            grants.get("sqs:GetQueueAttributes"),
            Some(&set(&readable)),
            "{service}: sqs:GetQueueAttributes"
        );
        let topics: Vec<&String> = scope.topic.iter().map(|k| &messaging[*k]).collect();
        let published = grants.get("sns:Publish").cloned().unwrap_or_default();
        assert_eq!(published, set(&topics), "{service}: sns:Publish");
        let prefix = format!("arn:aws:s3:::{}/releases/{}/", deployment.bucket, deployment.release_id);
        let objects = set(&[
            format!("{prefix}bin/{service}"),
            format!("{prefix}ec2/bootstrap.sh"),
            format!("{prefix}ec2/saga-service@.service"),
        ]);
        assert_eq!(grants.get("s3:GetObject"), Some(&objects), "{service}: s3:GetObject");
        let secrets = grants.get(SECRET_ACTION).map(BTreeSet::len);
        assert_eq!(secrets, Some(1), "{service}: exactly one secret");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deploy_app_end_to_end_on_moto() {
    let moto = Moto::start().await;
    let sdk = moto.sdk().await;
    let clients = Clients::new(&sdk);
    let cfn = &clients.cloudformation;
    let iam = aws_sdk_iam::Client::new(&sdk);
    let bins = tempfile::tempdir().unwrap();
    fake_binaries(bins.path(), "v1");
    let prefix = format!("dep{}", std::process::id());
    let options = AppOptions {
        name_prefix: prefix.clone(),
        release: ReleaseSource::Build(bins.path().to_owned()),
        instances: [1, 2, 1],
        overrides: vec![("BonusBudgetPoints".to_owned(), "5000".to_owned())],
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
    ];
    let expected: BTreeSet<String> = names
        .iter()
        .map(|k| format!("releases/{}/{k}", first.release_id))
        .collect();
    assert_eq!(v1_keys, expected);

    let messaging_resources = resources(cfn, &stacks.messaging).await;
    assert_eq!(messaging_resources["AWS::SNS::Topic"].len(), 2);
    assert_eq!(messaging_resources["AWS::SQS::Queue"].len(), 8);
    let app_resources = resources(cfn, &stacks.app).await;
    for (kind, count) in [
        ("AWS::IAM::Role", 3),
        ("AWS::IAM::InstanceProfile", 3),
        ("AWS::EC2::LaunchTemplate", 3),
        ("AWS::AutoScaling::AutoScalingGroup", 3),
        ("AWS::ElasticLoadBalancingV2::LoadBalancer", 2),
        ("AWS::ElasticLoadBalancingV2::TargetGroup", 4),
        ("AWS::RDS::DBInstance", 3),
        ("AWS::EC2::SecurityGroup", 8),
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
    assert_least_privilege(&iam, roles, &messaging_outputs, &first).await;

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
    assert_least_privilege(&iam, roles, &messaging_outputs, &third).await;

    // Roll back to the first release without building anything.
    let rollback = AppOptions {
        release: ReleaseSource::Existing(first.release_id.clone()),
        ..options.clone()
    };
    let back = app::deploy(&clients, &rollback).await.expect("roll back");
    assert_eq!(
        back.app_outputs["ReleasePrefix"],
        format!("releases/{}", first.release_id)
    );
    assert_least_privilege(&iam, roles, &messaging_outputs, &back).await;
    let unknown = AppOptions {
        release: ReleaseSource::Existing("0123456789abcdef".to_owned()),
        ..options.clone()
    };
    let err = app::deploy(&clients, &unknown).await.unwrap_err().to_string();
    assert!(err.contains("never uploaded"), "{err}");

    // The databases are protected from deletion by default: destroy refuses before it deletes
    // anything, and names the way out, which is a deploy that turns the protection off.
    let err = app::destroy(&clients, &prefix).await.unwrap_err();
    assert!(matches!(err, app::DeployError::DeletionProtected { .. }), "{err}");
    assert!(err.to_string().contains("DatabaseDeletionProtection=false"), "{err}");
    for stack in all_stacks {
        assert!(stack_status(cfn, stack).await.is_some(), "{stack} was deleted");
    }
    let unprotected = AppOptions {
        overrides: vec![("DatabaseDeletionProtection".to_owned(), "false".to_owned())],
        ..rollback.clone()
    };
    app::deploy(&clients, &unprotected)
        .await
        .expect("turn deletion protection off");

    // Destroy removes every stack, the bucket with its releases, and the roles. moto 5.2.5 cannot
    // delete the network stack (it has no CloudFormation delete for internet gateways, NAT
    // gateways, routes or VPC endpoints, so the VPC keeps dependencies): there, and only there,
    // destroy may stop at that last stack with a DependencyViolation.
    match app::destroy(&clients, &prefix).await {
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
    for role in roles.values() {
        assert!(
            iam.get_role().role_name(role).send().await.is_err(),
            "role {role} still exists"
        );
    }
}

/// With `VpcId` and the subnets given, the application goes into that VPC: no network stack is
/// created, and destroy (which then has nothing to do for the network) completes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deploy_app_into_an_existing_vpc() {
    let moto = Moto::start().await;
    let sdk = moto.sdk().await;
    let clients = Clients::new(&sdk);
    let cfn = &clients.cloudformation;
    let prefix = format!("own{}", std::process::id());
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
            .chain([("DatabaseDeletionProtection".to_owned(), "false".to_owned())])
            .collect(),
    };
    let deployment = app::deploy(&clients, &options).await.expect("deploy into existing VPC");
    assert!(!deployment.network_created);
    let stacks = deployment.stacks;
    assert_eq!(stack_status(cfn, &stacks.app).await.as_deref(), Some("CREATE_COMPLETE"));
    assert_eq!(
        stack_status(cfn, &stacks.network).await,
        None,
        "a network stack was created"
    );
    let groups = resources(cfn, &stacks.app).await;
    assert_eq!(groups["AWS::AutoScaling::AutoScalingGroup"].len(), 3);

    app::destroy(&clients, &prefix).await.expect("destroy");
    for stack in [&stacks.artifacts, &stacks.messaging, &stacks.app] {
        assert_eq!(stack_status(cfn, stack).await, None, "{stack} still exists");
    }
    assert!(
        stack_status(cfn, &existing).await.is_some(),
        "destroy touched a network it did not create"
    );
    // Destroying what is already gone is fine (an interrupted destroy can be re-run).
    app::destroy(&clients, &prefix).await.expect("second destroy");
}
