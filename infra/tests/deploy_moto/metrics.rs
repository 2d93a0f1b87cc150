//! The metric filters and alarms, checked in the template: moto 5.2.5 has no CloudFormation for
//! `AWS::Logs::MetricFilter` or `AWS::CloudWatch::Alarm` and skips both (as it skips the secrets,
//! see `template`). Each filter's pattern is run, by a small matcher for the part of CloudWatch's
//! JSON filter syntax the template uses, against sample lines of the services' log contract: it
//! must match its own lines and no other line of its service.

use super::template::{of_type, reference, template};
use serde_json::{Value as Json, json};
use serde_norway::Value;
use std::collections::{BTreeMap, BTreeSet};

/// The comparison of one term of a JSON filter pattern.
#[derive(Debug, Clone, Copy)]
enum Op {
    Eq,
    Gt,
    Ge,
    Lt,
    Le,
}

#[derive(Debug)]
enum Literal {
    Text(String),
    Number(f64),
}

/// `$.field OP literal`, on a top-level field (the log lines are flat objects).
#[derive(Debug)]
struct Term {
    field: String,
    op: Op,
    literal: Literal,
}

/// Parses `{ $.a = "x" && $.b >= 0 }`: terms joined by `&&`. Anything else CloudWatch allows
/// (`||`, `!=`, parentheses, wildcards, nested selectors) is refused rather than guessed at; the
/// template needs none of it.
fn parse_pattern(pattern: &str) -> Vec<Term> {
    let inner = pattern
        .trim()
        .strip_prefix('{')
        .and_then(|p| p.strip_suffix('}'))
        .unwrap_or_else(|| panic!("not a JSON pattern: {pattern}"));
    let unsupported = ["||", "!=", "(", "*", "[", "IS ", "EXISTS"];
    for syntax in unsupported {
        assert!(!inner.contains(syntax), "`{syntax}` is beyond this matcher: {pattern}");
    }
    inner.split("&&").map(|term| parse_term(term.trim(), pattern)).collect()
}

fn parse_term(term: &str, pattern: &str) -> Term {
    let rest = term
        .strip_prefix("$.")
        .unwrap_or_else(|| panic!("`{term}` has no $. selector in {pattern}"));
    let end = rest
        .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
        .unwrap_or(rest.len());
    let (field, rest) = rest.split_at(end);
    let operators = [
        (">=", Op::Ge),
        ("<=", Op::Le),
        ("=", Op::Eq),
        (">", Op::Gt),
        ("<", Op::Lt),
    ];
    let (op, literal) = operators
        .into_iter()
        .find_map(|(token, op)| rest.trim_start().strip_prefix(token).map(|l| (op, l.trim())))
        .unwrap_or_else(|| panic!("`{term}` has no comparison in {pattern}"));
    let literal = match literal.strip_prefix('"').and_then(|l| l.strip_suffix('"')) {
        Some(text) => Literal::Text(text.to_owned()),
        None => Literal::Number(
            literal
                .parse()
                .unwrap_or_else(|_| panic!("`{literal}` is neither text nor a number in {pattern}")),
        ),
    };
    if let (Literal::Text(_), Op::Gt | Op::Ge | Op::Lt | Op::Le) = (&literal, op) {
        panic!("`{term}` orders text in {pattern}");
    }
    Term {
        field: field.to_owned(),
        op,
        literal,
    }
}

/// Whether CloudWatch would count the line: every term holds, and a field that is missing or of
/// the other type (text against a number, or the reverse) fails its term.
fn matches(pattern: &str, line: &Json) -> bool {
    parse_pattern(pattern)
        .iter()
        .all(|term| match (&term.literal, &line[&term.field]) {
            (Literal::Text(want), Json::String(have)) => have == want,
            (Literal::Number(want), Json::Number(have)) => {
                let have = have.as_f64().expect("a finite number");
                match term.op {
                    Op::Eq => have == *want,
                    Op::Gt => have > *want,
                    Op::Ge => have >= *want,
                    Op::Lt => have < *want,
                    Op::Le => have <= *want,
                }
            }
            _ => false,
        })
}

#[test]
fn the_pattern_matcher_reads_json_patterns_the_way_cloudwatch_does() {
    let pattern = r#"{ $.message = "saga finished" && $.duration_ms >= 0 }"#;
    assert!(matches(pattern, &json!({"message": "saga finished", "duration_ms": 0})));
    assert!(matches(
        pattern,
        &json!({"message": "saga finished", "duration_ms": 12.5})
    ));
    assert!(!matches(
        pattern,
        &json!({"message": "saga finished", "duration_ms": -1})
    ));
    assert!(!matches(
        pattern,
        &json!({"message": "saga finished", "duration_ms": "12"})
    ));
    assert!(!matches(pattern, &json!({"message": "saga finished"})));
    assert!(!matches(
        pattern,
        &json!({"message": "saga finished!", "duration_ms": 1})
    ));
    assert!(matches(r#"{ $.n = 1 }"#, &json!({"n": 1.0})));
    assert!(!matches(r#"{ $.level = "ERROR" }"#, &json!({"level": "error"})));
}

/// Sample lines of the contract the services log by (issue 10): flat JSON objects with
/// timestamp, level, target, message, the event's fields, and trace and span ids. Named, per
/// service.
fn samples(service: &str) -> Vec<(&'static str, Json)> {
    let trace = json!({"trace_id": "4bf92f3577b34da6a3ce929d0e0e4736", "span_id": "00f067aa0ba902b7"});
    let line = |level: &str, message: &str, fields: Json| {
        let mut line = json!({
            "timestamp": "2026-01-05T10:15:30.123456Z",
            "level": level,
            "target": format!("{}::module", service.replace('-', "_")),
            "message": message,
        });
        let object = line.as_object_mut().unwrap();
        object.extend(trace.as_object().unwrap().clone());
        object.extend(fields.as_object().unwrap().clone());
        line
    };
    let enrollment = "0194a3c2-7a51-7c3e-9d2b-5f0e8c1a2b3c";
    let mut gauges = json!({"service": service, "outbox_pending": 3, "outbox_oldest_age_seconds": 4.25});
    if service == "gateway" {
        gauges["stalled_sagas"] = json!(2);
    }
    if service == "transaction-api" {
        gauges["bonus_points_granted"] = json!(4500);
        gauges["bonus_budget_remaining_points"] = json!(500);
    }
    let mut lines = vec![
        ("gauges", line("INFO", "gauges", gauges)),
        (
            "error",
            line("ERROR", "publishing the outbox failed", json!({"error": "timed out"})),
        ),
        (
            "warn",
            line("WARN", "message redelivered", json!({"enrollment_id": enrollment})),
        ),
        (
            "info",
            line("INFO", "enrollment received", json!({"enrollment_id": enrollment})),
        ),
    ];
    if service == "customer-api" {
        let fields = json!({"mail_id": "0194a3c2-0000-7c3e-9d2b-5f0e8c1a2b3c", "enrollment_id": enrollment,
            "code": "MessageRejected", "reason": "Email address is not verified: <recipient>"});
        let message = "SES refused a mail for good; it is set aside in the mail outbox";
        lines.push(("mail set aside", line("ERROR", message, fields)));
    }
    if service == "gateway" {
        // The one line each delivery ends with (gateway/src/webhooks/delivery.rs), and a retry.
        let webhook = |outcome: &str, attempts: i64, status: Option<u16>, error: Option<&str>| {
            json!({"webhook_id": "msg_0194a3c2", "enrollment_id": enrollment, "outcome": outcome,
                "attempts": attempts, "status": status, "error": error})
        };
        lines.extend([
            (
                "webhook given up",
                line(
                    "WARN",
                    "webhook delivery finished",
                    webhook("failed", 31, Some(503), Some("HTTP 503")),
                ),
            ),
            (
                "webhook refused",
                line(
                    "WARN",
                    "webhook delivery finished",
                    webhook("failed", 1, None, Some("refused: 10.0.0.7 is a private address")),
                ),
            ),
            (
                "webhook delivered",
                line("DEBUG", "webhook delivery finished", webhook("delivered", 1, Some(204), None)),
            ),
            (
                "webhook retried",
                line(
                    "INFO",
                    "webhook attempt failed; retried later",
                    json!({"webhook_id": "msg_0194a3c2", "enrollment_id": enrollment, "reason": "HTTP 503", "attempts": 2}),
                ),
            ),
        ]);
        for (name, outcome, duration) in [
            ("saga completed", "completed", 1840),
            ("saga rejected", "rejected", 95),
            ("saga rolled back", "rolled_back", 30_211),
            ("saga expired", "expired", 86_400_412),
        ] {
            let fields = json!({"outcome": outcome, "duration_ms": duration, "enrollment_id": enrollment});
            lines.push((name, line("INFO", "saga finished", fields)));
        }
    }
    lines
}

/// What one metric filter must be.
struct Expected {
    metric: String,
    service: &'static str,
    /// The samples of its service it counts.
    counts: &'static [&'static str],
    /// `"1"` (a count) or the `$.field` whose number it publishes.
    value: &'static str,
    unit: &'static str,
}

const SERVICES: [(&str, &str); 3] = [
    ("gateway", "Gateway"),
    ("customer-api", "CustomerApi"),
    ("transaction-api", "TransactionApi"),
];

fn expected_filters() -> Vec<Expected> {
    let gateway = |metric: &str, counts, value, unit| Expected {
        metric: metric.to_owned(),
        service: "gateway",
        counts,
        value,
        unit,
    };
    let outcomes = &["saga completed", "saga rejected", "saga rolled back", "saga expired"];
    let mut expected = vec![
        gateway("SagasCompleted", &["saga completed"], "1", "Count"),
        gateway("SagasRejected", &["saga rejected"], "1", "Count"),
        gateway("SagasRolledBack", &["saga rolled back"], "1", "Count"),
        gateway("SagasExpired", &["saga expired"], "1", "Count"),
        gateway("SagaDuration", outcomes, "$.duration_ms", "Milliseconds"),
        gateway("StalledSagas", &["gauges"], "$.stalled_sagas", "Count"),
        gateway(
            "WebhookDeliveriesFailed",
            &["webhook given up", "webhook refused"],
            "1",
            "Count",
        ),
        Expected {
            metric: "MailsFailed".to_owned(),
            service: "customer-api",
            counts: &["mail set aside"],
            value: "1",
            unit: "Count",
        },
    ];
    let transaction = |metric: &str, value| Expected {
        metric: metric.to_owned(),
        service: "transaction-api",
        counts: &["gauges"],
        value,
        unit: "Count",
    };
    expected.extend([
        transaction("BonusPointsGranted", "$.bonus_points_granted"),
        transaction("BonusBudgetRemaining", "$.bonus_budget_remaining_points"),
    ]);
    for (service, prefix) in SERVICES {
        let per_service = |measure: &str, counts, value, unit| Expected {
            metric: format!("{prefix}{measure}"),
            service,
            counts,
            value,
            unit,
        };
        // The customer-api's mail set aside is an ERROR line too.
        let errors: &[&str] = match service {
            "customer-api" => &["error", "mail set aside"],
            _ => &["error"],
        };
        expected.extend([
            per_service("OutboxOldestAge", &["gauges"], "$.outbox_oldest_age_seconds", "Seconds"),
            per_service("OutboxPending", &["gauges"], "$.outbox_pending", "Count"),
            per_service("ErrorLines", errors, "1", "Count"),
        ]);
    }
    expected
}

/// The one transformation of a metric filter, and the filter's log group and pattern.
struct Filter<'a> {
    logical: &'a str,
    group: &'a str,
    pattern: &'a str,
    transformation: &'a Value,
}

/// The filters by the metric they publish: one, or several for a metric that counts lines of
/// different messages (CloudWatch adds up what each publishes).
fn filters(template: &Value) -> BTreeMap<String, Vec<Filter<'_>>> {
    let mut by_metric: BTreeMap<String, Vec<Filter<'_>>> = BTreeMap::new();
    for (logical, filter) in of_type(template, "AWS::Logs::MetricFilter") {
        let props = &filter["Properties"];
        let transformations = props["MetricTransformations"].as_sequence().expect("transformations");
        assert_eq!(transformations.len(), 1, "{logical}");
        let transformation = &transformations[0];
        let metric = transformation["MetricName"].as_str().expect("MetricName").to_owned();
        let filter = Filter {
            logical,
            group: reference(&props["LogGroupName"]).unwrap_or_else(|| panic!("{logical}: LogGroupName")),
            pattern: props["FilterPattern"].as_str().expect("FilterPattern"),
            transformation,
        };
        by_metric.entry(metric).or_default().push(filter);
    }
    by_metric
}

/// `!Sub "${NamePrefix}/Saga"`: the namespace of every metric from the logs.
fn is_saga_namespace(value: &Value) -> bool {
    matches!(value, Value::Tagged(t) if t.tag == "Sub" && t.value.as_str() == Some("${NamePrefix}/Saga"))
}

/// The metrics the filters publish (in `<NamePrefix>/Saga`), for the dashboard's audit.
pub fn published_metrics() -> BTreeSet<String> {
    filters(&template()).into_keys().collect()
}

/// Every metric of the log contract has its filters, on its own service's log group, that count
/// exactly its lines among the service's sample lines (no line twice) and publish a number from
/// each.
#[test]
fn metric_filters_turn_the_log_contract_into_the_saga_metrics() {
    let template = template();
    let filters = filters(&template);
    let expected = expected_filters();
    let names: BTreeSet<&str> = expected.iter().map(|e| e.metric.as_str()).collect();
    assert_eq!(filters.keys().map(String::as_str).collect::<BTreeSet<_>>(), names);
    for want in &expected {
        let metric = &want.metric;
        let prefix = SERVICES.iter().find(|(s, _)| *s == want.service).unwrap().1;
        for filter in &filters[metric] {
            let logical = filter.logical;
            assert_eq!(filter.group, format!("{prefix}LogGroup"), "{logical}: log group");
            let t = filter.transformation;
            assert!(is_saga_namespace(&t["MetricNamespace"]), "{logical}: namespace");
            assert_eq!(t["Unit"].as_str(), Some(want.unit), "{logical}: unit");
            assert_eq!(t["MetricValue"].as_str(), Some(want.value), "{logical}: value");
            // Counts are 0 on every other line (no gaps); a gauge has no default, which would
            // drag its average down.
            let default = t.get("DefaultValue").and_then(Value::as_i64);
            assert_eq!(default, (want.value == "1").then_some(0), "{logical}: DefaultValue");
        }

        let counted: Vec<&str> = samples(want.service)
            .iter()
            .filter(|(name, line)| {
                let matched = filters[metric].iter().filter(|f| matches(f.pattern, line)).count();
                assert!(matched <= 1, "{metric}: {name} counted by {matched} filters");
                matched == 1
            })
            .map(|(name, line)| {
                if let Some(field) = want.value.strip_prefix("$.") {
                    assert!(line[field].is_number(), "{metric}: {name} has no number at {field}");
                }
                *name
            })
            .collect();
        assert_eq!(counted, want.counts, "{metric}: counts");
    }
}

/// The `$.message = "..."` terms of a pattern.
fn messages(pattern: &str) -> Vec<String> {
    parse_pattern(pattern)
        .into_iter()
        .filter(|term| term.field == "message")
        .filter_map(|term| match term.literal {
            Literal::Text(text) => Some(text),
            Literal::Number(_) => None,
        })
        .collect()
}

fn rust_sources(dir: &std::path::Path) -> Vec<String> {
    let mut texts = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display())) {
        let path = entry.unwrap().path();
        if path.is_dir() {
            texts.extend(rust_sources(&path));
        } else if path.extension().is_some_and(|e| e == "rs") {
            texts.push(std::fs::read_to_string(&path).unwrap());
        }
    }
    texts
}

/// The messages the filters look for are the ones the services log: each is a string literal
/// in its service's code or the shared runtime's, so rewording a line there without its filter
/// fails here rather than silencing a metric and its alarm.
#[test]
fn every_message_a_filter_counts_is_logged_by_its_service() {
    let template = template();
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let shared = rust_sources(&root.join("utility/src"));
    for (metric, filters) in filters(&template) {
        for filter in filters {
            let service = SERVICES
                .iter()
                .find(|(_, prefix)| filter.group == format!("{prefix}LogGroup"))
                .unwrap_or_else(|| panic!("{}: log group {}", filter.logical, filter.group))
                .0;
            let own = rust_sources(&root.join(service).join("src"));
            for message in messages(filter.pattern) {
                let literal = format!("\"{message}\"");
                assert!(
                    own.iter().chain(&shared).any(|text| text.contains(&literal)),
                    "{metric} ({}) counts {literal}, which {service} does not log",
                    filter.logical
                );
            }
        }
    }
}

/// `!Select [5, !Split [":", !Ref <arn parameter>]]`: a queue's name, from its ARN.
fn queue_name_from_arn(value: &Value) -> Option<&str> {
    let Value::Tagged(select) = value else { return None };
    let args = select.value.as_sequence().filter(|_| select.tag == "Select")?;
    let Value::Tagged(split) = args.get(1)? else {
        return None;
    };
    let split_args = split.value.as_sequence().filter(|_| split.tag == "Split")?;
    let index = args.first()?.as_i64();
    let separator = split_args.first()?.as_str();
    (index == Some(5) && separator == Some(":"))
        .then(|| reference(split_args.get(1)?))
        .flatten()
}

/// Every alarm watches one thing: each dead-letter queue holding anything, each work queue's
/// oldest message past `OldestMessageAlarmSeconds`, each topic's events the subscription filter
/// dropped for missing or unreadable attributes (no DLQ sees those), the gateway's stalled sagas
/// above 0 and any mail set aside (the maximum over five minutes above the threshold), the
/// webhook deliveries failed (their sum above `WebhookFailuresAlarmCount`), and the campaign's
/// budget left below `BonusBudgetAlarmPoints` (the minimum below it, only when both budget and
/// threshold are set).
/// All of them over five minutes, no data is no breach, and the alarm topic notified when there
/// is one.
#[test]
fn alarms_watch_dead_letters_waiting_messages_and_stalled_sagas() {
    let template = template();
    let mut watched = BTreeSet::new();
    for (logical, alarm) in of_type(&template, "AWS::CloudWatch::Alarm") {
        let props = &alarm["Properties"];
        let metric = props["MetricName"].as_str().expect("MetricName");
        let (statistic, comparison, condition) = match metric {
            "BonusBudgetRemaining" => ("Minimum", "LessThanThreshold", Some("HasBudgetAlarm")),
            "WebhookDeliveriesFailed" => ("Sum", "GreaterThanThreshold", None),
            _ => ("Maximum", "GreaterThanThreshold", None),
        };
        assert_eq!(props["Statistic"].as_str(), Some(statistic), "{logical}");
        assert_eq!(props["Period"].as_i64(), Some(300), "{logical}");
        assert_eq!(props["EvaluationPeriods"].as_i64(), Some(1), "{logical}");
        assert_eq!(props["ComparisonOperator"].as_str(), Some(comparison), "{logical}");
        assert_eq!(
            alarm.get("Condition").and_then(Value::as_str),
            condition,
            "{logical}: Condition"
        );
        assert_eq!(props["TreatMissingData"].as_str(), Some("notBreaching"), "{logical}");
        let actions: Value =
            serde_norway::from_str(r#"!If [HasAlarmTopic, [!Ref AlarmTopicArn], !Ref "AWS::NoValue"]"#).unwrap();
        assert_eq!(props["AlarmActions"], actions, "{logical}: AlarmActions");
        let name = match &props["AlarmName"] {
            Value::Tagged(t) if t.tag == "Sub" => t.value.as_str().unwrap_or_default(),
            _ => "",
        };
        assert!(name.starts_with("${NamePrefix}-"), "{logical}: AlarmName {name}");

        let threshold = match &props["Threshold"] {
            Value::Number(n) => n.to_string(),
            other => format!("!Ref {}", reference(other).expect("a number or a !Ref")),
        };
        let dimensions = props.get("Dimensions").and_then(Value::as_sequence);
        let queue = match dimensions.map(Vec::as_slice) {
            Some([d]) if matches!(d["Name"].as_str(), Some("QueueName" | "TopicName")) => {
                let value = &d["Value"];
                let parameter = reference(value).or_else(|| queue_name_from_arn(value));
                parameter.unwrap_or_else(|| panic!("{logical}: queue name {value:?}"))
            }
            None => "-",
            other => panic!("{logical}: dimensions {other:?}"),
        };
        let namespace = if is_saga_namespace(&props["Namespace"]) {
            "${NamePrefix}/Saga"
        } else {
            props["Namespace"].as_str().expect("Namespace")
        };
        assert!(
            watched.insert((namespace, metric, queue, threshold.clone())),
            "{logical} repeats an alarm"
        );
    }
    let sqs = |metric, queue: &str, threshold: &str| ("AWS/SQS", metric, queue.to_owned(), threshold.to_owned());
    let mut expected: BTreeSet<_> = [
        "CustomerCommandsDlqName",
        "TransactionCommandsDlqName",
        "GatewayEventsDlqName",
        "CustomerEventsSubscriptionDlqName",
        "TransactionEventsSubscriptionDlqName",
        "CustomerQueriesDlqName",
        "TransactionQueriesDlqName",
        "GatewayRepliesDlqName",
        "StatusEventsSubscriptionDlqName",
        "WebhookDeliveriesDlqName",
    ]
    .into_iter()
    .map(|dlq| sqs("ApproximateNumberOfMessagesVisible", dlq, "0"))
    .collect();
    for queue in [
        "CustomerCommandsQueueArn",
        "TransactionCommandsQueueArn",
        "GatewayEventsQueueArn",
    ] {
        expected.insert(sqs(
            "ApproximateAgeOfOldestMessage",
            queue,
            "!Ref OldestMessageAlarmSeconds",
        ));
    }
    for topic in [
        "CustomerEventsTopicArn",
        "TransactionEventsTopicArn",
        "StatusEventsTopicArn",
    ] {
        for metric in [
            "NumberOfNotificationsFilteredOut-InvalidAttributes",
            "NumberOfNotificationsFilteredOut-NoMessageAttributes",
        ] {
            expected.insert(("AWS/SNS", metric, topic.to_owned(), "0".to_owned()));
        }
    }
    expected.insert(("${NamePrefix}/Saga", "StalledSagas", "-".to_owned(), "0".to_owned()));
    expected.insert((
        "${NamePrefix}/Saga",
        "BonusBudgetRemaining",
        "-".to_owned(),
        "!Ref BonusBudgetAlarmPoints".to_owned(),
    ));
    expected.insert((
        "${NamePrefix}/Saga",
        "WebhookDeliveriesFailed",
        "-".to_owned(),
        "!Ref WebhookFailuresAlarmCount".to_owned(),
    ));
    expected.insert(("${NamePrefix}/Saga", "MailsFailed", "-".to_owned(), "0".to_owned()));
    let watched: BTreeSet<_> = watched
        .into_iter()
        .map(|(namespace, metric, queue, threshold)| (namespace, metric, queue.to_owned(), threshold))
        .collect();
    assert_eq!(watched, expected);
    for metric in [
        "StalledSagas",
        "BonusBudgetRemaining",
        "WebhookDeliveriesFailed",
        "MailsFailed",
    ] {
        assert!(
            published_metrics().contains(metric),
            "no filter publishes {metric}, which an alarm watches"
        );
    }
    let parameters = &template["Parameters"];
    assert_eq!(parameters["OldestMessageAlarmSeconds"]["Default"].as_i64(), Some(300));
    assert_eq!(parameters["WebhookFailuresAlarmCount"]["Default"].as_i64(), Some(20));
}

/// Retention is a parameter (default 30 days) that only takes the values CloudWatch Logs accepts,
/// and each log group holds it.
#[test]
fn log_retention_is_a_parameter_of_the_values_cloudwatch_accepts() {
    let template = template();
    let parameter = &template["Parameters"]["LogRetentionDays"];
    assert_eq!(parameter["Default"].as_i64(), Some(30));
    let allowed: Vec<i64> = parameter["AllowedValues"]
        .as_sequence()
        .expect("AllowedValues")
        .iter()
        .filter_map(Value::as_i64)
        .collect();
    let cloudwatch = [
        1, 3, 5, 7, 14, 30, 60, 90, 120, 150, 180, 365, 400, 545, 731, 1096, 1827, 2192, 2557, 2922, 3288, 3653,
    ];
    assert_eq!(allowed, cloudwatch);
    let groups = of_type(&template, "AWS::Logs::LogGroup");
    assert_eq!(groups.len(), 3);
    for (logical, group) in groups {
        let retention = reference(&group["Properties"]["RetentionInDays"]);
        assert_eq!(retention, Some("LogRetentionDays"), "{logical}");
    }
}
