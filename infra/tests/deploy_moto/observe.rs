//! The deployed log groups, read back from the emulator: each service's log group with the
//! retention the stack was given.
//!
//! No SDK crate of the workspace speaks CloudWatch Logs, and one read call does not justify
//! another crate: this talks to moto over HTTP directly, in the service's JSON protocol (moto
//! does not check signatures; it routes on the credential scope).

use super::edge::Resources;
use serde_json::{Value, json};
use std::collections::{BTreeMap, BTreeSet};
use std::io::{Read, Write};

/// One JSON-protocol call to the emulator at `endpoint` (`http://host:port`).
async fn call(endpoint: &str, scope: &'static str, target: &'static str, body: Value) -> Value {
    let address = endpoint
        .strip_prefix("http://")
        .expect("a plain-HTTP emulator")
        .to_owned();
    let content_type = if scope == "logs" {
        "application/x-amz-json-1.1"
    } else {
        "application/x-amz-json-1.0"
    };
    let body = body.to_string();
    let request = format!(
        "POST / HTTP/1.1\r\nHost: {address}\r\nContent-Type: {content_type}\r\nX-Amz-Target: {target}\r\n\
         Authorization: AWS4-HMAC-SHA256 Credential=test/20260101/us-east-1/{scope}/aws4_request, \
         SignedHeaders=host, Signature=0\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    let response = tokio::task::spawn_blocking(move || {
        let mut stream = std::net::TcpStream::connect(&address).expect("connect to moto");
        stream.write_all(request.as_bytes()).expect("send to moto");
        let mut response = String::new();
        stream.read_to_string(&mut response).expect("read moto's answer");
        response
    })
    .await
    .unwrap();
    let (head, body) = response.split_once("\r\n\r\n").expect("an HTTP response");
    assert!(head.starts_with("HTTP/1.1 200"), "{target}: {head}\n{body}");
    assert!(
        !head.to_ascii_lowercase().contains("transfer-encoding: chunked"),
        "{target}: chunked"
    );
    serde_json::from_str(body).unwrap_or_else(|e| panic!("{target}: {e}: {body}"))
}

/// The log groups whose names start with `/<prefix>/`: name -> (ARN as IAM grants it, retention).
pub async fn log_groups(endpoint: &str, prefix: &str) -> BTreeMap<String, (String, Option<i64>)> {
    let body = json!({ "logGroupNamePrefix": format!("/{prefix}/") });
    let out = call(endpoint, "logs", "Logs_20140328.DescribeLogGroups", body).await;
    let groups = out["logGroups"].as_array().expect("logGroups");
    groups
        .iter()
        .map(|g| {
            let name = g["logGroupName"].as_str().expect("logGroupName").to_owned();
            // DescribeLogGroups gives both forms; IAM matches a group's own actions and its
            // streams against the one ending in `:*`.
            let arn = g["arn"].as_str().expect("arn").to_owned();
            assert_eq!(
                Some(arn.as_str()),
                g["logGroupArn"].as_str().map(|a| format!("{a}:*")).as_deref()
            );
            (name, (arn, g["retentionInDays"].as_i64()))
        })
        .collect()
}

/// One log group per service, `/<prefix>/<service>`, created by the stack, keeping lines for
/// `retention` days. Returns service -> the group's ARN in the form IAM grants (`...:*`).
pub async fn assert_log_groups(
    endpoint: &str,
    resources: &Resources,
    prefix: &str,
    retention: i64,
) -> BTreeMap<String, String> {
    let groups = log_groups(endpoint, prefix).await;
    let expected: BTreeSet<String> = infra::release::SERVICES
        .iter()
        .map(|s| format!("/{prefix}/{s}"))
        .collect();
    assert_eq!(groups.keys().cloned().collect::<BTreeSet<_>>(), expected);
    let owned: BTreeSet<String> = resources["AWS::Logs::LogGroup"].values().cloned().collect();
    assert_eq!(owned, expected, "the stack's log groups");
    for (name, (_, days)) in &groups {
        assert_eq!(*days, Some(retention), "{name}: retention");
    }
    infra::release::SERVICES
        .iter()
        .map(|s| (s.to_string(), groups[&format!("/{prefix}/{s}")].0.clone()))
        .collect()
}
