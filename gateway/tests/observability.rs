//! What an operator sees, from the three real binaries (not in-process: each is its own
//! `service.name`, configured by the standard `OTEL_*` variables as in production) on a real
//! LocalStack:
//! - one enrollment is one trace: the spans the services export over OTLP (to a receiver in
//!   this test) share one trace id, not the client's (its span is only linked), and form one
//!   parent chain across the bus, in causal order;
//! - their JSON log lines carry that trace id (at DEBUG too, which this test turns on), and the
//!   access log line says who asked what;
//! - `/metrics` of each service counts what happened, and the `gauges` line reports the backlog.

use serde_json::Value;
use std::collections::{BTreeSet, HashMap};
use testkit::{DEADLINE, OPERATOR_TOKEN, Poll, Processes, Shown, eventually};

fn attribute<'a>(span: &'a Value, key: &str) -> Option<&'a str> {
    span["attributes"].as_array()?.iter().find(|a| a["key"] == key)?["value"]["stringValue"].as_str()
}

/// The value of the sample `name{labels}` in Prometheus text, if present.
fn sample(text: &str, name_and_labels: &str) -> Option<f64> {
    text.lines().find_map(|line| {
        line.strip_prefix(name_and_labels)?
            .strip_prefix(' ')?
            .trim()
            .parse()
            .ok()
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_enrollment_is_one_trace_across_the_three_services_and_its_logs_join() {
    let mut layout = testkit::Layout {
        traces: true,
        ..testkit::Layout::default()
    };
    layout.env.retain(|(name, _)| name != "RUST_LOG");
    layout.env.push((
        "RUST_LOG".to_owned(),
        "debug,aws=info,aws_smithy=info,aws_config=info,hyper=info,h2=info,sqlx=info,tower=info,reqwest=info"
            .to_owned(),
    ));
    let system = Processes::start_with(layout).await.expect("the services start");
    let client_trace = uuid::Uuid::new_v4().simple().to_string();
    let client_span = &uuid::Uuid::new_v4().simple().to_string()[..16];
    let traceparent = format!("00-{client_trace}-{client_span}-01");
    let email = format!("trace-{}@example.com", uuid::Uuid::new_v4().simple());
    let (id, response) = system
        .enroll(
            &email,
            &[("traceparent", &traceparent), ("x-request-id", "req-observability-1")],
        )
        .await;
    assert_eq!(response.headers()["x-request-id"], "req-observability-1");

    // The hops a completed saga makes, as (service, span name), in causal order.
    let hops = [
        ("gateway", "POST /api/enrollments"),
        ("gateway", "outbox enqueue Enroll"),
        ("gateway", "publish customer-commands"),
        ("customer-api", "process customer-commands"),
        ("customer-api", "outbox enqueue CustomerEnrolled"),
        ("customer-api", "publish customer-events"),
        ("gateway", "process gateway-events"),
        ("gateway", "outbox enqueue PostBonusPoints"),
        ("gateway", "publish transaction-commands"),
        ("transaction-api", "process transaction-commands"),
        ("transaction-api", "outbox enqueue BonusPointsPosted"),
        ("transaction-api", "publish transaction-events"),
        ("gateway", "process gateway-events"),
    ];
    // Wait until the terminal hop's span has been exported, then read the chain up from it.
    // The client's traceparent does not choose the saga's trace: the submission's span starts a
    // trace of its own, with a link to the client's span.
    let saga_trace = eventually("the submission's span to arrive over OTLP", DEADLINE, async || {
        let spans = system.collector.spans();
        let submission = spans.iter().find(|s| {
            s["name"] == "POST /api/enrollments"
                && s["links"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .any(|l| l["traceId"] == client_trace.as_str() && l["spanId"] == client_span)
        });
        let found = submission.map(|s| s["traceId"].as_str().unwrap_or("").to_owned());
        let seen = format!("{} spans, none of the submission linking the client's", spans.len());
        Poll::ready_if(found.is_some(), found.unwrap_or_default(), seen)
    })
    .await
    .unwrap_or_else(|timed_out| panic!("{timed_out}"));
    assert_ne!(saga_trace, client_trace, "the client chose the saga's trace id");
    assert!(
        system
            .collector
            .spans()
            .iter()
            .all(|s| s["traceId"] != client_trace.as_str()),
        "a span joined the client's trace"
    );
    let chain = eventually("the saga's spans to arrive over OTLP", DEADLINE, async || {
        let trace: Vec<Value> = system
            .collector
            .spans()
            .into_iter()
            .filter(|s| s["traceId"] == saga_trace.as_str())
            .collect();
        let terminal = trace
            .iter()
            .find(|s| s["service"] == "gateway" && attribute(s, "message_type") == Some("BonusPointsPosted"));
        let Some(terminal) = terminal else {
            return Poll::Pending(format!("{} spans of the trace, none of the terminal hop", trace.len()));
        };
        let by_id: HashMap<&str, &Value> = trace.iter().map(|s| (s["spanId"].as_str().unwrap_or(""), s)).collect();
        let mut chain = vec![terminal.clone()];
        let mut parent = terminal["parentSpanId"].as_str().unwrap_or("");
        while let Some(span) = by_id.get(parent) {
            chain.push((*span).clone());
            parent = span["parentSpanId"].as_str().unwrap_or("");
        }
        chain.reverse();
        // Complete once the root is reached: the submission's span, which has no parent.
        let reached =
            chain[0]["name"] == "POST /api/enrollments" && chain[0]["parentSpanId"].as_str().unwrap_or("").is_empty();
        let seen = format!("a chain of {} spans up from the terminal hop", chain.len());
        Poll::ready_if(reached, chain, seen)
    })
    .await
    .unwrap_or_else(|timed_out| {
        let spans = system.collector.spans();
        let names: Vec<String> = spans
            .iter()
            .map(|s| {
                format!(
                    "{} {} {} <- {}",
                    s["service"], s["name"], s["spanId"], s["parentSpanId"]
                )
            })
            .collect();
        panic!(
            "no complete chain in trace {saga_trace} ({timed_out}); spans received:\n{}",
            names.join("\n")
        )
    });

    // One trace, the client's; spans from all three services.
    let services: BTreeSet<&str> = chain.iter().filter_map(|s| s["service"].as_str()).collect();
    assert_eq!(services, BTreeSet::from(["customer-api", "gateway", "transaction-api"]));
    // The hops appear in the chain in causal order (the chain may hold spans between them,
    // such as the handler's own).
    let names: Vec<(String, String)> = chain
        .iter()
        .map(|s| {
            (
                s["service"].as_str().unwrap().to_owned(),
                s["name"].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    let mut position = 0;
    for (service, name) in hops {
        // A consumer's span names its queue, which carries the stack's prefix.
        let matches = |n: &str| {
            n == name
                || name
                    .strip_prefix("process ")
                    .is_some_and(|q| n.ends_with(&format!("-{q}")))
        };
        let found = names[position..].iter().position(|(s, n)| s == service && matches(n));
        let Some(offset) = found else {
            panic!("hop {service} `{name}` missing after position {position} in the chain {names:#?}");
        };
        position += offset + 1;
    }
    // Causal order in time as well: every span starts no earlier than its parent.
    let starts: Vec<u128> = chain
        .iter()
        .map(|s| {
            s["startTimeUnixNano"]
                .as_str()
                .and_then(|t| t.parse().ok())
                .unwrap_or(0)
        })
        .collect();
    assert!(starts.windows(2).all(|w| w[0] <= w[1]), "start times {starts:?}");

    // Every line is JSON.
    for service in [system.gateway(), system.customer(), system.transaction()] {
        for line in service.logs() {
            assert!(line.is_object(), "not a JSON log line: {line}");
        }
    }
    // Logs join: every line that names this enrollment carries the trace id.
    let mut joined = 0;
    for service in [system.gateway(), system.customer(), system.transaction()] {
        for line in service.logs() {
            let names_it = line["correlation_id"] == id.as_str() || line["enrollment_id"] == id.as_str();
            if names_it {
                assert_eq!(line["trace_id"], saga_trace.as_str(), "{line}");
                assert!(line["span_id"].as_str().is_some_and(|s| s.len() == 16), "{line}");
                joined += 1;
            }
        }
    }
    assert!(joined >= 6, "only {joined} log lines named the enrollment");
    // The view key (the capability to follow it, in `Location`) is in no line and no span, at
    // DEBUG, though the enrollment was read at its address until it finished: the access log and
    // the request span name the route, not the path.
    let location = response.headers()["location"].to_str().unwrap();
    let view_key = location.rsplit('/').next().unwrap();
    assert_eq!(view_key.len(), 22, "{location}");
    for service in [system.gateway(), system.customer(), system.transaction()] {
        for line in service.logs() {
            assert!(
                !line.to_string().contains(view_key),
                "a log line carries the view key: {line}"
            );
        }
    }
    for span in system.collector.spans() {
        assert!(
            !span.to_string().contains(view_key),
            "a span carries the view key: {span}"
        );
    }
    let reads = system
        .gateway()
        .logs()
        .into_iter()
        .filter(|l| l["message"] == "request" && l["method"] == "GET")
        .filter(|l| l["route"] == "/api/enrollments/{view_key}")
        .count();
    assert!(reads >= 1, "no access line of a read at the enrollment's address");
    // The access log line of the submission: at DEBUG, since it was neither slow nor an error
    // (a line per request at INFO would be most of a saga's log volume).
    let access = system
        .gateway()
        .logs()
        .into_iter()
        .find(|l| l["message"] == "request" && l["request_id"] == "req-observability-1")
        .expect("the access log line");
    assert_eq!(access["level"], "DEBUG");
    assert_eq!(access["method"], "POST");
    assert_eq!(access["route"], "/api/enrollments");
    assert_eq!(access["status"], 202);
    assert!(access["latency_ms"].as_f64().is_some(), "{access}");
    assert_eq!(access["trace_id"], saga_trace.as_str());
    // And the saga's end.
    let finished = system
        .gateway()
        .logs()
        .into_iter()
        .find(|l| l["message"] == "saga finished" && l["enrollment_id"] == id.as_str())
        .expect("the saga finished line");
    assert_eq!(finished["outcome"], "completed");
    assert!(finished["duration_ms"].as_u64().is_some(), "{finished}");
    system.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_count_what_happened() {
    let system = Processes::start(true, 1).await;
    let n = 3;
    for _ in 0..n {
        let email = format!("metrics-{}@example.com", uuid::Uuid::new_v4().simple());
        system.enroll(&email, &[]).await;
    }
    let gateway = system.metrics(system.gateway()).await;
    assert_eq!(
        sample(&gateway, r#"saga_sagas{status="completed"}"#),
        Some(f64::from(n)),
        "{gateway}"
    );
    assert_eq!(sample(&gateway, r#"saga_sagas{status="rolled_back"}"#), Some(0.0));
    assert_eq!(sample(&gateway, "saga_sagas_stalled"), Some(0.0));
    assert_eq!(
        sample(&gateway, r#"saga_duration_seconds_count{outcome="completed"}"#),
        Some(f64::from(n))
    );
    let queue = |name: &str| system.stack.output(name).rsplit('/').next().unwrap().to_owned();
    let events = queue("GatewayEventsQueueUrl");
    for kind in ["CustomerEnrolled", "BonusPointsPosted"] {
        let labels = format!(r#"saga_messages_total{{queue="{events}",type="{kind}",outcome="handled"}}"#);
        assert_eq!(sample(&gateway, &labels), Some(f64::from(n)), "{labels}\n{gateway}");
    }
    assert_eq!(
        sample(
            &gateway,
            r#"saga_http_requests_total{method="POST",route="/api/enrollments",status="202"}"#
        ),
        Some(f64::from(n))
    );
    assert!(
        gateway.contains(r#"saga_db_connections{pool="http",state="in_use"}"#),
        "{gateway}"
    );
    assert!(
        gateway.contains("saga_relay_publish_duration_seconds_count"),
        "{gateway}"
    );
    // Every outbox row went out: the backlog returns to zero on each service.
    for service in [system.gateway(), system.customer(), system.transaction()] {
        let what = format!("the outbox backlog of {} to drain", service.name);
        eventually(&what, DEADLINE, async || {
            let answer = system
                .http
                .get(service.url("/metrics"))
                .bearer_auth(OPERATOR_TOKEN)
                .send()
                .await;
            let text = match answer {
                Ok(answer) => answer.text().await.unwrap_or_default(),
                Err(err) => return Poll::Pending((None, None, Some(err.to_string()))),
            };
            let pending = sample(&text, "saga_outbox_pending");
            let oldest = sample(&text, "saga_outbox_oldest_pending_age_seconds");
            Poll::ready_if(pending == Some(0.0) && oldest == Some(0.0), (), (pending, oldest, None))
        })
        .await
        .unwrap();
    }
    let customer = system.metrics(system.customer()).await;
    let commands = queue("CustomerCommandsQueueUrl");
    let labels = format!(r#"saga_messages_total{{queue="{commands}",type="Enroll",outcome="handled"}}"#);
    assert_eq!(sample(&customer, &labels), Some(f64::from(n)), "{customer}");
    // The gateway's /metrics is an operator route.
    let anonymous = system.http.get(system.gateway().url("/metrics")).send().await.unwrap();
    assert_eq!(anonymous.status(), 401);
    // The gauges line, every GAUGES_LOG_SECONDS: the backlog, and on the gateway the stalled sagas.
    let gauges = eventually("a gauges line after the sagas", DEADLINE, async || {
        let logs = system.gateway().logs();
        let last = logs.iter().rev().find(|l| l["message"] == "gauges").cloned();
        match logs
            .into_iter()
            .rev()
            .find(|l| l["message"] == "gauges" && l["outbox_pending"] == 0)
        {
            Some(line) => Poll::Ready(line),
            None => Poll::Pending(last.map(Shown)),
        }
    })
    .await
    .unwrap();
    assert_eq!(gauges["service"], "gateway");
    assert_eq!(gauges["stalled_sagas"], 0);
    assert!(gauges["outbox_oldest_age_seconds"].is_number(), "{gauges}");
    system.stop().await;
}
