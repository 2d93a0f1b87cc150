//! The deployed log groups and dashboard, read back from the emulator: each service's log group
//! with the retention the stack was given, and a dashboard whose body is JSON naming every work
//! queue, every dead-letter queue and exactly the metrics the template's filters publish.
//!
//! No SDK crate of the workspace speaks CloudWatch or CloudWatch Logs, and two read calls do not
//! justify two more crates: these talk to moto over HTTP directly, in the services' JSON
//! protocols (moto does not check signatures; it routes on the credential scope).

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

/// (namespace, metric, dimensions as name=value) of every metric a widget draws.
fn drawn(widget: &Value) -> Vec<(String, String, Vec<String>)> {
    let metrics = widget["properties"]["metrics"].as_array().cloned().unwrap_or_default();
    metrics
        .iter()
        .map(|m| {
            let parts: Vec<&str> = m
                .as_array()
                .expect("a metric is an array")
                .iter()
                .filter_map(Value::as_str)
                .collect();
            assert!(parts.len() >= 2 && parts.len().is_multiple_of(2), "metric {m}");
            let dimensions = parts[2..].chunks(2).map(|d| format!("{}={}", d[0], d[1])).collect();
            (parts[0].to_owned(), parts[1].to_owned(), dimensions)
        })
        .collect()
}

/// The dashboard: valid JSON with nothing left unsubstituted; each work queue's depth and oldest
/// message (with the alarm threshold marked), each dead-letter queue's depth, no other queue;
/// in `<prefix>/Saga` exactly the metrics the filters publish; the ERROR lines of the three log
/// groups.
pub async fn assert_dashboard(
    endpoint: &str,
    prefix: &str,
    messaging: &BTreeMap<String, String>,
    app_outputs: &std::collections::HashMap<String, String>,
    threshold: i64,
) {
    let name = &app_outputs["DashboardName"];
    assert_eq!(name, &format!("{prefix}-saga"));
    let body = json!({ "DashboardName": name });
    let out = call(
        endpoint,
        "monitoring",
        "GraniteServiceVersion20100801.GetDashboard",
        body,
    )
    .await;
    let text = out["DashboardBody"].as_str().expect("DashboardBody");
    assert!(!text.contains("${"), "unsubstituted: {text}");
    let dashboard: Value = serde_json::from_str(text).unwrap_or_else(|e| panic!("dashboard body: {e}: {text}"));
    let widgets = dashboard["widgets"].as_array().expect("widgets");

    let mut sqs = BTreeSet::new();
    let mut saga = BTreeSet::new();
    for widget in widgets {
        let title = widget["properties"]["title"].as_str().unwrap_or_default();
        assert_eq!(widget["properties"]["region"], "us-east-1", "{title}: region");
        for (namespace, metric, dimensions) in drawn(widget) {
            if namespace == "AWS/SQS" {
                assert_eq!(dimensions.len(), 1, "{title}: {metric}");
                sqs.insert((metric, dimensions[0].clone()));
            } else {
                assert_eq!(namespace, format!("{prefix}/Saga"), "{title}: {metric}");
                assert!(dimensions.is_empty(), "{title}: {metric}");
                saga.insert(metric);
            }
        }
        if drawn(widget)
            .iter()
            .any(|(_, m, _)| m == "ApproximateAgeOfOldestMessage")
        {
            let marks = &widget["properties"]["annotations"]["horizontal"];
            assert_eq!(marks[0]["value"], threshold, "{title}: the alarm threshold");
        }
    }
    let queue = |arn_key: &str| messaging[arn_key].rsplit(':').next().unwrap().to_owned();
    let mut expected = BTreeSet::new();
    for key in [
        "CustomerCommandsQueueArn",
        "TransactionCommandsQueueArn",
        "GatewayEventsQueueArn",
    ] {
        let name = format!("QueueName={}", queue(key));
        expected.insert(("ApproximateNumberOfMessagesVisible".to_owned(), name.clone()));
        expected.insert(("ApproximateAgeOfOldestMessage".to_owned(), name));
    }
    let dlqs: Vec<&String> = messaging
        .iter()
        .filter(|(k, _)| k.ends_with("DlqName"))
        .map(|(_, v)| v)
        .collect();
    assert_eq!(dlqs.len(), 10);
    for dlq in dlqs {
        expected.insert((
            "ApproximateNumberOfMessagesVisible".to_owned(),
            format!("QueueName={dlq}"),
        ));
    }
    assert_eq!(sqs, expected, "queues on the dashboard");
    assert_eq!(
        saga,
        super::metrics::published_metrics(),
        "saga metrics on the dashboard"
    );

    let queries: Vec<&str> = widgets
        .iter()
        .filter(|w| w["type"] == "log")
        .filter_map(|w| w["properties"]["query"].as_str())
        .collect();
    assert_eq!(queries.len(), 1, "one log widget");
    for service in infra::release::SERVICES {
        let source = format!("SOURCE '/{prefix}/{service}'");
        assert!(queries[0].contains(&source), "{source}: {}", queries[0]);
    }
    assert!(queries[0].contains("filter level = 'ERROR'"), "{}", queries[0]);
}
