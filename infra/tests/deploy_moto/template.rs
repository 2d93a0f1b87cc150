//! What moto 5.2.5 does not model, checked in the template itself: security-group egress (moto
//! ignores it in CloudFormation and reports allow-all), the RDS deletion policy and deletion
//! protection (it drops both), and the secrets (it has no `AWS::SecretsManager::Secret`, so their
//! `!Ref`s come back null and IAM alone cannot tell the operator token or the webhook keys from a
//! database secret).

use serde_norway::Value;
use std::collections::{BTreeMap, BTreeSet};

pub fn template() -> Value {
    serde_norway::from_str(infra::app::APP_TEMPLATE).expect("app.yaml parses")
}

fn resources(template: &Value) -> Vec<(&str, &Value)> {
    template["Resources"]
        .as_mapping()
        .expect("Resources")
        .iter()
        .map(|(k, v)| (k.as_str().expect("logical id"), v))
        .collect()
}

pub fn of_type<'a>(template: &'a Value, kind: &str) -> Vec<(&'a str, &'a Value)> {
    resources(template)
        .into_iter()
        .filter(|(_, r)| r["Type"].as_str() == Some(kind))
        .collect()
}

/// The logical id a `!Ref` (or `{Ref: ...}`) names.
pub fn reference(value: &Value) -> Option<&str> {
    match value {
        Value::Tagged(tagged) if tagged.tag == "Ref" => tagged.value.as_str(),
        Value::Mapping(map) => map.get("Ref").and_then(Value::as_str),
        _ => None,
    }
}

/// (protocol, from, to, destination): a destination is a CIDR or a security group's logical id.
type Egress = BTreeSet<(String, i64, i64, String)>;

fn egress_rule(rule: &Value) -> (String, i64, i64, String) {
    let protocol = rule["IpProtocol"].as_str().expect("IpProtocol").to_owned();
    let destination = match (rule.get("CidrIp"), rule.get("DestinationSecurityGroupId")) {
        (Some(cidr), None) => cidr.as_str().expect("CIDR").to_owned(),
        (None, Some(group)) => reference(group).expect("a !Ref to a group").to_owned(),
        other => panic!("egress rule without exactly one destination: {other:?}"),
    };
    let port = |key| rule.get(key).and_then(Value::as_i64).unwrap_or(-1);
    (protocol, port("FromPort"), port("ToPort"), destination)
}

/// Every group's egress, inline and as separate resources: instances reach 443 and their own
/// database, the gateway also the internal load balancer; load balancers only their targets;
/// databases nothing. No group is left with the default allow-all (no inline egress rule: rules
/// added as separate resources do not remove it).
#[test]
fn security_groups_allow_only_the_egress_the_services_use() {
    let template = template();
    let mut actual: BTreeMap<String, Egress> = BTreeMap::new();
    for (logical, group) in of_type(&template, "AWS::EC2::SecurityGroup") {
        let rules = group["Properties"]
            .get("SecurityGroupEgress")
            .and_then(Value::as_sequence);
        // Without inline egress CloudFormation keeps the default allow-all rule, and separate
        // SecurityGroupEgress resources are added beside it, not instead of it.
        let allow_all = || {
            [("-1".to_owned(), -1, -1, "0.0.0.0/0".to_owned())]
                .into_iter()
                .collect()
        };
        let rules = rules.map_or_else(allow_all, |r| r.iter().map(egress_rule).collect());
        actual.insert(logical.to_owned(), rules);
    }
    for (logical, rule) in of_type(&template, "AWS::EC2::SecurityGroupEgress") {
        let props = &rule["Properties"];
        let group = reference(&props["GroupId"]).unwrap_or_else(|| panic!("{logical}: GroupId"));
        actual
            .get_mut(group)
            .expect("a group of this template")
            .insert(egress_rule(props));
    }
    let rule = |p: &str, from: i64, to: i64, d: &str| (p.to_owned(), from, to, d.to_owned());
    let https = rule("tcp", 443, 443, "0.0.0.0/0");
    let nothing = rule("-1", -1, -1, "127.0.0.1/32");
    let expected: BTreeMap<String, Egress> = [
        (
            "PublicAlbSecurityGroup",
            vec![rule("tcp", 8080, 8080, "GatewaySecurityGroup")],
        ),
        (
            "GatewaySecurityGroup",
            vec![https.clone(), rule("tcp", 5432, 5432, "GatewayDatabaseSecurityGroup")],
        ),
        (
            "InternalAlbSecurityGroup",
            vec![rule("tcp", 8080, 8080, "GatewaySecurityGroup")],
        ),
        (
            "CustomerApiSecurityGroup",
            vec![
                https.clone(),
                rule("tcp", 5432, 5432, "CustomerApiDatabaseSecurityGroup"),
            ],
        ),
        (
            "TransactionApiSecurityGroup",
            vec![https, rule("tcp", 5432, 5432, "TransactionApiDatabaseSecurityGroup")],
        ),
        ("GatewayDatabaseSecurityGroup", vec![nothing.clone()]),
        ("CustomerApiDatabaseSecurityGroup", vec![nothing.clone()]),
        ("TransactionApiDatabaseSecurityGroup", vec![nothing]),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v.into_iter().collect()))
    .collect();
    assert_eq!(actual, expected);
}

/// Each database survives its stack: a final snapshot on deletion or replacement, deletion
/// protection on unless the parameter (default true) turns it off, storage that grows, encrypted.
#[test]
fn databases_are_snapshotted_and_protected_from_deletion() {
    let template = template();
    let databases = of_type(&template, "AWS::RDS::DBInstance");
    assert_eq!(databases.len(), 3);
    for (logical, db) in databases {
        assert_eq!(db["DeletionPolicy"].as_str(), Some("Snapshot"), "{logical}");
        assert_eq!(db["UpdateReplacePolicy"].as_str(), Some("Snapshot"), "{logical}");
        let props = &db["Properties"];
        assert_eq!(
            reference(&props["DeletionProtection"]),
            Some("DatabaseDeletionProtection"),
            "{logical}"
        );
        assert_eq!(
            reference(&props["MaxAllocatedStorage"]),
            Some("DatabaseMaxStorageGiB"),
            "{logical}"
        );
        assert_eq!(reference(&props["MultiAZ"]), Some("DatabaseMultiAz"), "{logical}");
        assert_eq!(props["StorageEncrypted"].as_bool(), Some(true), "{logical}");
        assert_eq!(props["PubliclyAccessible"].as_bool(), Some(false), "{logical}");
    }
    let parameters = &template["Parameters"];
    assert_eq!(
        parameters["DatabaseDeletionProtection"]["Default"].as_str(),
        Some("true")
    );
    assert_eq!(
        parameters["DatabaseMultiAz"]["AllowedValues"]
            .as_sequence()
            .map(Vec::len),
        Some(2)
    );
    assert_eq!(parameters["BonusPoints"]["MinValue"].as_i64(), Some(1));
}

/// The operator token and the webhook signing keys are generated secrets of letters and digits
/// (the bootstrap turns the keys' word into an Ed25519 key), only the gateway's role may read each
/// (in a statement of its own), and only the gateway's instances are told where they are.
#[test]
fn only_the_gateway_reads_the_operator_token_and_the_webhook_keys() {
    let template = template();
    for (logical_secret, told_as) in [
        ("OperatorTokenSecret", "OPERATOR_TOKEN_SECRET_ARN"),
        ("WebhookSigningKeysSecret", "WEBHOOK_SIGNING_KEYS_SECRET_ARN"),
    ] {
        let secret = &template["Resources"][logical_secret];
        assert_eq!(
            secret["Type"].as_str(),
            Some("AWS::SecretsManager::Secret"),
            "{logical_secret}"
        );
        let generate = &secret["Properties"]["GenerateSecretString"];
        // The webhook keys' word must carry 256 bits: 43 letters and digits or more.
        let least = if told_as.starts_with("WEBHOOK") { 43 } else { 32 };
        assert!(
            generate["PasswordLength"].as_i64().unwrap_or_default() >= least,
            "{logical_secret}"
        );
        assert_eq!(generate["ExcludePunctuation"].as_bool(), Some(true), "{logical_secret}");
        assert!(
            generate.get("SecretStringTemplate").is_none(),
            "{logical_secret}: the secret is the value itself"
        );

        let mut readers = Vec::new();
        for (logical, policy) in of_type(&template, "AWS::IAM::Policy") {
            let statements = policy["Properties"]["PolicyDocument"]["Statement"]
                .as_sequence()
                .expect("statements");
            for statement in statements {
                let resources: Vec<Option<&str>> = statement["Resource"]
                    .as_sequence()
                    .map(|r| r.iter().map(reference).collect())
                    .unwrap_or_default();
                if resources.contains(&Some(logical_secret)) {
                    assert_eq!(resources, [Some(logical_secret)], "{logical}: shared statement");
                    let actions: Vec<&str> = statement["Action"]
                        .as_sequence()
                        .map(|a| a.iter().filter_map(Value::as_str).collect())
                        .unwrap_or_default();
                    assert_eq!(actions, ["secretsmanager:GetSecretValue"], "{logical}");
                    readers.push(logical);
                }
            }
        }
        assert_eq!(readers, ["GatewayPolicy"], "{logical_secret}");
        let told: Vec<&str> = of_type(&template, "AWS::EC2::LaunchTemplate")
            .into_iter()
            .filter(|(_, lt)| {
                serde_norway::to_string(lt)
                    .unwrap()
                    .contains(&format!("{told_as}=${{{logical_secret}}}"))
            })
            .map(|(logical, _)| logical)
            .collect();
        assert_eq!(told, ["GatewayLaunchTemplate"], "{logical_secret}");
    }
}

/// Callbacks are on on EC2 (the gateway gets signing keys) with the public-internet defaults:
/// https only and no host admitted on a private address (those two settings are for local
/// development and tests alone), and only to port 443, the one its security group opens.
#[test]
fn the_gateway_on_ec2_calls_back_over_https_to_public_addresses_only() {
    let template = template();
    for (logical, launch) in of_type(&template, "AWS::EC2::LaunchTemplate") {
        let user_data = serde_norway::to_string(&launch["Properties"]["LaunchTemplateData"]["UserData"]).unwrap();
        for setting in ["CALLBACK_ALLOW_HTTP", "CALLBACK_ALLOWED_HOSTS", "WEBHOOK_SIGNING_KEYS="] {
            assert!(!user_data.contains(setting), "{logical} sets {setting}");
        }
        // The security group lets callbacks reach 443 alone: a URL on another port is refused
        // at submission, not retried for a day.
        if user_data.contains("gateway.env") {
            let ports = user_data.split_once("CALLBACK_ALLOWED_PORTS=").map(|(_, rest)| {
                rest.split(|c: char| !c.is_ascii_digit() && c != ',')
                    .next()
                    .unwrap_or_default()
            });
            assert_eq!(
                ports,
                Some("443"),
                "{logical} lets callback URLs name ports its instances cannot reach"
            );
        }
    }
}

/// Each service connects as an application role of its own (decision 0043): a generated secret
/// beside the owner's (the RDS master user, whose secret only the migration step reads), named
/// `<owner>_app`, readable by that service's role alone, and named to its instances.
#[test]
fn each_service_connects_as_an_application_role_not_as_the_owner() {
    let template = template();
    for (service, owner, master) in [
        ("Gateway", "gateway", "GatewayDatabase"),
        ("CustomerApi", "customers", "CustomerApiDatabase"),
        ("TransactionApi", "ledger", "TransactionApiDatabase"),
    ] {
        let app = format!("{service}AppDatabaseSecret");
        let owner_secret = format!("{service}DatabaseSecret");
        let secret = &template["Resources"][app.as_str()];
        assert_eq!(secret["Type"].as_str(), Some("AWS::SecretsManager::Secret"), "{app}");
        let generate = &secret["Properties"]["GenerateSecretString"];
        assert_eq!(
            generate["SecretStringTemplate"].as_str(),
            Some(format!(r#"{{"username": "{owner}_app"}}"#).as_str()),
            "{app}"
        );
        assert!(generate["PasswordLength"].as_i64().unwrap_or_default() >= 32, "{app}");
        assert_eq!(
            template["Resources"][master]["Properties"]["MasterUsername"].as_str(),
            Some(owner),
            "{master}: the owner is the master user"
        );
        let mut readers = Vec::new();
        for (logical, policy) in of_type(&template, "AWS::IAM::Policy") {
            let statements = policy["Properties"]["PolicyDocument"]["Statement"]
                .as_sequence()
                .expect("statements");
            for statement in statements {
                let resources: Vec<Option<&str>> = statement["Resource"]
                    .as_sequence()
                    .map(|r| r.iter().map(reference).collect())
                    .unwrap_or_default();
                if resources.contains(&Some(app.as_str())) {
                    assert_eq!(
                        resources,
                        [Some(owner_secret.as_str()), Some(app.as_str())],
                        "{logical}"
                    );
                    readers.push(logical);
                }
            }
        }
        assert_eq!(readers, [format!("{service}Policy")], "{app}");
        let told: Vec<&str> = of_type(&template, "AWS::EC2::LaunchTemplate")
            .into_iter()
            .filter(|(_, lt)| {
                let text = serde_norway::to_string(lt).unwrap();
                text.contains(&format!("APP_DATABASE_SECRET_ARN=${{{app}}}"))
                    && text.contains(&format!("DATABASE_SECRET_ARN=${{{owner_secret}}}"))
            })
            .map(|(logical, _)| logical)
            .collect();
        assert_eq!(told, [format!("{service}LaunchTemplate")], "{app}");
    }
}

/// The artifact bucket keeps every version of every object (moto 5.2.5 does not apply
/// `VersioningConfiguration` from CloudFormation, so the template is checked), and destroy
/// empties it version by version (`release::empty_bucket`, exercised by the end-to-end test).
#[test]
fn the_artifact_bucket_is_versioned() {
    let artifacts: Value = serde_norway::from_str(infra::app::ARTIFACTS_TEMPLATE).expect("artifacts.yaml parses");
    let buckets = of_type(&artifacts, "AWS::S3::Bucket");
    assert_eq!(buckets.len(), 1);
    let status = &buckets[0].1["Properties"]["VersioningConfiguration"]["Status"];
    assert_eq!(status.as_str(), Some("Enabled"));
}

/// The instances sit behind load balancers (ingress from their groups only), which read whole
/// headers before forwarding: an instance keeps idle connections longer than the balancer's 60 s
/// idle timeout, or the balancer would reuse a connection the service is closing (a 502). And
/// the unit bounds each service's memory.
#[test]
fn services_outlast_the_balancer_idle_timeout_and_their_memory_is_bounded() {
    let template = template();
    let balancer_idle = 60;
    for (logical, balancer) in of_type(&template, "AWS::ElasticLoadBalancingV2::LoadBalancer") {
        let attributes = balancer["Properties"]["LoadBalancerAttributes"].as_sequence();
        let idle = attributes
            .into_iter()
            .flatten()
            .find(|a| a["Key"].as_str() == Some("idle_timeout.timeout_seconds"));
        assert!(
            idle.is_none(),
            "{logical} changes the idle timeout: the instances' must follow"
        );
    }
    let templates = of_type(&template, "AWS::EC2::LaunchTemplate");
    assert_eq!(templates.len(), 3);
    for (logical, launch) in templates {
        let user_data = serde_norway::to_string(&launch["Properties"]["LaunchTemplateData"]["UserData"]).unwrap();
        let timeout: u64 = user_data
            .split("HTTP_HEADER_TIMEOUT_SECONDS=")
            .nth(1)
            .and_then(|rest| rest.split(|c: char| !c.is_ascii_digit()).next())
            .and_then(|n| n.parse().ok())
            .unwrap_or_else(|| panic!("{logical}: no HTTP_HEADER_TIMEOUT_SECONDS in the service's environment"));
        assert!(timeout > balancer_idle, "{logical}: {timeout} s");
    }
    let unit = infra::release::UNIT;
    let setting = |key: &str| {
        unit.lines()
            .find_map(|line| line.strip_prefix(key))
            .unwrap_or_else(|| panic!("the unit has no {key}"))
    };
    assert!(setting("MemoryMax=").ends_with('M'), "{unit}");
}

/// Without a certificate the stack is refused unless plain HTTP is asked for by name; with one,
/// the gateway is told to send HSTS, and without one not (a browser would then refuse the site).
#[test]
fn plain_http_needs_asking_for_and_https_brings_hsts() {
    let template = template();
    assert_eq!(
        template["Parameters"]["AllowPlainHttp"]["Default"].as_str(),
        Some("false")
    );
    let rule = serde_norway::to_string(&template["Rules"]["CertificateOrPlainHttpAllowed"]).unwrap();
    for needle in ["CertificateArn", "AllowPlainHttp", "'true'"] {
        assert!(rule.contains(needle), "the rule does not name {needle}:\n{rule}");
    }
    let (_, gateway) = of_type(&template, "AWS::EC2::LaunchTemplate")
        .into_iter()
        .find(|(logical, _)| logical.starts_with("Gateway"))
        .expect("the gateway's launch template");
    let user_data = serde_norway::to_string(&gateway["Properties"]["LaunchTemplateData"]["UserData"]).unwrap();
    assert!(user_data.contains("HSTS_MAX_AGE_SECONDS=${HstsMaxAge}"), "{user_data}");
    assert!(
        user_data.contains("HstsMaxAge: !If") && user_data.contains("HasCertificate"),
        "HSTS must follow the certificate:\n{user_data}"
    );
    // The operator listener is HTTPS whenever there is a certificate (the public one, or one of
    // its own), so plain HTTP there also needs AllowPlainHttp; its URL says which.
    let tls = serde_norway::to_string(&template["Conditions"]["OperatorOverTls"]).unwrap();
    for needle in ["CertificateArn", "OperatorCertificateArn"] {
        assert!(tls.contains(needle), "{tls}");
    }
    let listener = serde_norway::to_string(&template["Resources"]["OperatorListener"]["Properties"]).unwrap();
    assert!(
        listener.contains("OperatorOverTls") && listener.contains("HTTPS"),
        "{listener}"
    );
    let url = serde_norway::to_string(&template["Outputs"]["OperatorUrl"]["Value"]).unwrap();
    assert!(url.contains("OperatorOverTls") && url.contains("https://"), "{url}");
}
