//! The deployed IAM policies, read back from the emulator: least privilege for every role.

use infra::app::Deployment;
use serde_json::Value;
use std::collections::{BTreeMap, BTreeSet};

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

/// The sender identity the deployments under test are given (`MailFrom`).
pub const MAIL_FROM: &str = "no-reply@mail.example.com";

/// The one mail-sending action, for the customer-api alone.
const SEND_MAIL: &str = "ses:SendEmail";

/// Marks a resource the emulator left unresolved (see [`SECRET_ACTION`]).
const UNRESOLVED: &str = "<unresolved>";

/// moto 5.2.5 does not model `AWS::SecretsManager::Secret` in CloudFormation, so the `!Ref` to
/// each secret comes back null there (on AWS it is the secret's ARN); which secret each grant
/// names is checked in the template instead
/// (`template::only_the_gateway_reads_the_operator_token_and_the_webhook_keys`).
const SECRET_ACTION: &str = "secretsmanager:GetSecretValue";

fn strings(value: &Value) -> Vec<String> {
    match value {
        Value::String(s) => vec![s.clone()],
        Value::Null => vec![UNRESOLVED.to_owned()],
        Value::Array(items) => items.iter().flat_map(strings).collect(),
        _ => Vec::new(),
    }
}

/// action -> resources, over every inline policy of the role (a resource named twice counts twice).
async fn grants(iam: &aws_sdk_iam::Client, role: &str) -> BTreeMap<String, Vec<String>> {
    let mut grants: BTreeMap<String, Vec<String>> = BTreeMap::new();
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
                if action == SEND_MAIL {
                    // Only from the one sender address, whichever identity covers it.
                    let from = &statement["Condition"]["StringEquals"]["ses:FromAddress"];
                    assert_eq!(
                        from, MAIL_FROM,
                        "{role}: {SEND_MAIL} without its ses:FromAddress condition"
                    );
                }
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

/// One role's expected scope: the queues it consumes (its saga queue and its lookups' queue), the
/// queues it sends to (commands and queries, or replies), its topic, how many
/// secrets it reads (its database's two, and the gateway the operator token and the webhook keys).
struct Scope {
    role: &'static str,
    service: &'static str,
    own_queues: &'static [&'static str],
    send_to: &'static [&'static str],
    topic: Option<&'static str>,
    secrets: usize,
    /// Whether it sends mail (`ses:SendEmail` from [`MAIL_FROM`]'s identities).
    mails: bool,
}

const SCOPES: [Scope; 3] = [
    Scope {
        role: "GatewayRole",
        service: "gateway",
        own_queues: &[
            "GatewayEventsQueueArn",
            "GatewayRepliesQueueArn",
            "WebhookDeliveriesQueueArn",
        ],
        send_to: &[
            "CustomerCommandsQueueArn",
            "TransactionCommandsQueueArn",
            "CustomerQueriesQueueArn",
            "TransactionQueriesQueueArn",
        ],
        // The saga's status changes, the webhooks' fan-out.
        topic: Some("StatusEventsTopicArn"),
        secrets: 4,
        mails: false,
    },
    Scope {
        role: "CustomerApiRole",
        service: "customer-api",
        own_queues: &["CustomerCommandsQueueArn", "CustomerQueriesQueueArn"],
        send_to: &["GatewayRepliesQueueArn"],
        topic: Some("CustomerEventsTopicArn"),
        secrets: 2,
        mails: true,
    },
    Scope {
        role: "TransactionApiRole",
        service: "transaction-api",
        own_queues: &["TransactionCommandsQueueArn", "TransactionQueriesQueueArn"],
        send_to: &["GatewayRepliesQueueArn"],
        topic: Some("TransactionEventsTopicArn"),
        secrets: 2,
        mails: false,
    },
];

/// What the CloudWatch agent calls, on the instance's own log group only.
const LOG_ACTIONS: [&str; 3] = ["logs:CreateLogStream", "logs:DescribeLogStreams", "logs:PutLogEvents"];

/// Checks every role of the deployment: each service's queue, topic, artifact and log
/// permissions are exactly its own, and nothing is a wildcard but the end of its own log group's
/// ARN (`log_groups`: service -> `arn:...:log-group:<name>:*`, the form IAM matches for the
/// group's actions and for the streams in it, which are named after instances yet to exist).
pub async fn assert_least_privilege(
    iam: &aws_sdk_iam::Client,
    roles: &BTreeMap<String, String>,
    messaging: &BTreeMap<String, String>,
    log_groups: &BTreeMap<String, String>,
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
        "logs:CreateLogStream",
        "logs:DescribeLogStreams",
        "logs:PutLogEvents",
        SEND_MAIL,
    ]);
    assert_eq!(roles.len(), SCOPES.len(), "roles: {roles:?}");
    for scope in &SCOPES {
        let service = scope.service;
        let own_log_group = &log_groups[service];
        let listed = grants(iam, &roles[scope.role]).await;
        let secrets = listed.get(SECRET_ACTION).map(Vec::len);
        assert_eq!(secrets, Some(scope.secrets), "{service}: secrets read");
        let grants: BTreeMap<String, BTreeSet<String>> = listed
            .into_iter()
            .map(|(action, resources)| (action, resources.into_iter().collect()))
            .collect();
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
                let own_streams = LOG_ACTIONS.contains(&action.as_str())
                    && resource == own_log_group
                    && resource.matches(['*', '?']).count() == 1
                    && resource.ends_with(":*");
                assert!(!wildcard || own_streams, "{service}: {action} on {resource}");
            }
        }
        let own: Vec<&String> = scope.own_queues.iter().map(|k| &messaging[*k]).collect();
        for action in ["sqs:ReceiveMessage", "sqs:DeleteMessage", "sqs:ChangeMessageVisibility"] {
            assert_eq!(grants.get(action), Some(&set(&own)), "{service}: {action}");
        }
        let send: Vec<&String> = scope.send_to.iter().map(|k| &messaging[*k]).collect();
        let sent = grants.get("sqs:SendMessage").cloned().unwrap_or_default();
        assert_eq!(sent, set(&send), "{service}: sqs:SendMessage");
        let mut readable = send.clone();
        readable.extend(own);
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
            format!("{prefix}manifest.sha256"),
            format!("{prefix}bin/{service}"),
            format!("{prefix}ec2/bootstrap.sh"),
            format!("{prefix}ec2/saga-service@.service"),
        ]);
        assert_eq!(grants.get("s3:GetObject"), Some(&objects), "{service}: s3:GetObject");
        for action in LOG_ACTIONS {
            assert_eq!(grants.get(action), Some(&set(&[own_log_group])), "{service}: {action}");
        }
        // The address's SES identity and its domain's, nothing else.
        let identities: Option<BTreeSet<String>> = grants.get(SEND_MAIL).map(|resources| {
            resources
                .iter()
                .map(|arn| {
                    let identity = arn
                        .strip_prefix("arn:aws:ses:")
                        .and_then(|rest| rest.split_once(":identity/"));
                    identity.map_or_else(|| format!("not an SES identity: {arn}"), |(_, name)| name.to_owned())
                })
                .collect()
        });
        let domain = MAIL_FROM.split_once('@').map(|(_, d)| d).unwrap_or_default();
        let expected = scope.mails.then(|| set(&[MAIL_FROM, domain]));
        assert_eq!(identities, expected, "{service}: {SEND_MAIL}");
    }
}
