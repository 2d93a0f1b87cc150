//! The API document (`/openapi.json`, `/docs`) against what the gateway serves.
//!
//! In process: the document lists exactly the gateway's routes (a route missing from it, or one
//! documented but not served, fails), each operation states the problem statuses and headers a
//! client meets, `/docs` renders every operation, and the limits, patterns and answers it states
//! are the gateway's. Against the real system (LocalStack and the three services): schemathesis
//! generates requests and scenarios from the document and holds every answer to it with all of
//! its checks, on both backends.

use axum::body::Body;
use axum::http::Request;
use serde_json::Value;
use std::collections::BTreeSet;
use testkit::api::GatewayApi;
use testkit::{Backend, OPERATOR_TOKEN, Options, System};

testkit::on_both_backends!(schemathesis_finds_no_contradiction);

/// Every route the gateway serves, as (method, path). The public routes, the page, the document
/// and the health checks; the operator routes are in [`OPERATOR`].
const PUBLIC: [(&str, &str); 14] = [
    ("GET", "/"),
    ("GET", "/assets/{file}"),
    ("GET", "/openapi.json"),
    ("GET", "/asyncapi.json"),
    ("GET", "/docs"),
    ("POST", "/api/enrollments"),
    ("GET", "/api/enrollments/{view_key}"),
    ("GET", "/api/enrollments/{view_key}/events"),
    ("POST", "/api/enrollments/{view_key}/resend"),
    ("GET", "/confirm"),
    ("POST", "/api/confirmations"),
    ("GET", "/.well-known/webhook-keys"),
    ("GET", "/health"),
    ("GET", "/ready"),
];
const OPERATOR: [(&str, &str); 7] = [
    ("GET", "/metrics"),
    ("GET", "/api/enrollments"),
    ("GET", "/api/sagas/{id}"),
    ("GET", "/api/enrollments/stalled"),
    ("GET", "/api/customers/{id}"),
    ("GET", "/api/customers/{id}/points"),
    ("DELETE", "/api/enrollments/{id}/personal-data"),
];

fn get(uri: &str) -> Request<Body> {
    Request::get(uri).body(Body::empty()).unwrap()
}

/// The whole document, as an operator reads it.
async fn document(api: &GatewayApi) -> Value {
    let request = Request::get("/openapi.json")
        .header("authorization", format!("Bearer {OPERATOR_TOKEN}"))
        .body(Body::empty())
        .unwrap();
    let answer = api.call(request).await;
    assert_eq!(answer.status, 200, "{}", answer.body);
    assert_eq!(answer.header("content-type"), Some("application/json"));
    answer.body
}

fn operations(doc: &Value) -> BTreeSet<(String, String)> {
    doc["paths"]
        .as_object()
        .expect("paths")
        .iter()
        .flat_map(|(path, item)| {
            item.as_object()
                .expect("path item")
                .keys()
                .map(move |method| (method.to_uppercase(), path.clone()))
        })
        .collect()
}

fn expected(routes: &[(&str, &str)]) -> BTreeSet<(String, String)> {
    routes.iter().map(|(m, p)| ((*m).to_owned(), (*p).to_owned())).collect()
}

#[tokio::test]
async fn only_operators_read_the_operator_part_of_the_document() {
    let api = GatewayApi::start(Backend::Sqlite).await;
    for token in [None, Some("not-the-operator-token")] {
        let mut request = Request::get("/openapi.json");
        if let Some(token) = token {
            request = request.header("authorization", format!("Bearer {token}"));
        }
        let answer = api.call(request.body(Body::empty()).unwrap()).await;
        assert_eq!(answer.status, 200, "{}", answer.body);
        assert_eq!(answer.header("vary"), Some("authorization"));
        assert_eq!(operations(&answer.body), expected(&PUBLIC), "with {token:?}");
        assert!(!answer.text.contains("operator_token"), "{}", answer.text);
        let docs = api.call(get("/docs")).await;
        assert_eq!(docs.status, 200);
        assert!(
            !docs.text.contains("id=\"getCustomer\""),
            "the public page lists operator routes"
        );
    }
    let docs = api
        .call(
            Request::get("/docs")
                .header("authorization", format!("Bearer {OPERATOR_TOKEN}"))
                .body(Body::empty())
                .unwrap(),
        )
        .await;
    assert!(
        docs.text.contains("id=\"getCustomer\""),
        "the operator's page lists the operator routes"
    );
}

#[tokio::test]
async fn the_document_lists_exactly_the_served_routes() {
    let api = GatewayApi::start(Backend::Sqlite).await;
    let doc = document(&api).await;
    assert!(
        doc["openapi"].as_str().unwrap().starts_with("3.1."),
        "{}",
        doc["openapi"]
    );
    let all: Vec<_> = PUBLIC.iter().chain(&OPERATOR).copied().collect();
    assert_eq!(operations(&doc), expected(&all), "documented routes");

    // Each documented operation is served: the router answers it with something other than its
    // unknown-route 404 or a 405. (`/health` and `/ready` are mounted by the service around this
    // router; `saga.rs` calls them on the real gateway.)
    let id = uuid::Uuid::now_v7();
    for (method, path) in operations(&doc) {
        if path == "/health" || path == "/ready" {
            continue;
        }
        let uri = path.replace("{id}", &id.to_string()).replace("{file}", "app.css");
        let mut request = Request::builder().method(method.as_str()).uri(&uri);
        if OPERATOR.iter().any(|(m, p)| *m == method && *p == path) {
            request = request.header("authorization", format!("Bearer {OPERATOR_TOKEN}"));
        }
        let body = if method == "POST" {
            request = request.header("content-type", "application/json");
            Body::from(r#"{"name": "Ada", "email": "ada@example.com"}"#)
        } else {
            Body::empty()
        };
        let answer = api.call(request.body(body).unwrap()).await;
        let unrouted = answer.status == 405 || (answer.status == 404 && answer.body["detail"] == "no such route");
        assert!(
            !unrouted,
            "{method} {uri} is documented but not served: {}",
            answer.status
        );
    }

    // And no route is served beside the document: every path a `.route(...)` call in the
    // gateway's sources (or the health routes it mounts) names is a documented one. `routes!`
    // registers only documented handlers, so this is where an undocumented route would come in.
    let documented: BTreeSet<String> = operations(&doc).into_iter().map(|(_, path)| path).collect();
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut sources = vec![root.join("../utility/src/http/health.rs")];
    let mut dirs = vec![root.join("src")];
    while let Some(dir) = dirs.pop() {
        for entry in std::fs::read_dir(dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                dirs.push(path);
            } else if path.extension().is_some_and(|e| e == "rs") {
                sources.push(path);
            }
        }
    }
    let mut plain_routes = 0;
    for file in &sources {
        let text = std::fs::read_to_string(file).unwrap();
        for call in [".route(", ".route_service(", ".nest(", ".nest_service("] {
            for (at, _) in text.match_indices(call) {
                let rest = text[at + call.len()..].trim_start();
                if rest.starts_with(')') {
                    continue; // a method of that name with no argument (`MessageType::route()`)
                }
                let literal = rest.strip_prefix('"').and_then(|r| r.split('"').next());
                let path = literal.unwrap_or_else(|| panic!("{}: {call} without a literal path", file.display()));
                assert!(
                    documented.contains(path),
                    "{}: {path} is served but not documented",
                    file.display()
                );
                plain_routes += 1;
            }
        }
    }
    assert!(
        plain_routes >= 2,
        "the source scan found no route at all: has the router moved?"
    );

    // Without an operator token the operator routes are neither served nor documented.
    let config = gateway::Config {
        operator_token: None,
        ..testkit::gateway_config()
    };
    let closed = GatewayApi::with_config(Backend::Sqlite, config).await;
    let doc = document(&closed).await;
    assert_eq!(operations(&doc), expected(&PUBLIC), "documented routes without a token");
    for (_, path) in OPERATOR {
        let uri = path.replace("{id}", &id.to_string());
        assert_eq!(closed.call(get(&uri)).await.status, 404, "{uri}");
    }
}

#[tokio::test]
async fn each_operation_states_its_headers_and_problem_answers() {
    let api = GatewayApi::start(Backend::Sqlite).await;
    let doc = document(&api).await;
    let submit = &doc["paths"]["/api/enrollments"]["post"];
    let headers: BTreeSet<&str> = submit["parameters"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|p| p["in"] == "header")
        .map(|p| p["name"].as_str().unwrap())
        .collect();
    assert!(
        headers.contains("Idempotency-Key") && headers.contains("Prefer"),
        "{headers:?}"
    );
    // Ignored when malformed, so no value of it is refused: nothing but a string is declared.
    assert_eq!(
        submit_header(&doc, "traceparent")["schema"],
        serde_json::json!({"type": "string"})
    );
    let statuses: BTreeSet<&str> = submit["responses"]
        .as_object()
        .unwrap()
        .keys()
        .map(String::as_str)
        .collect();
    for status in [
        "201", "202", "400", "405", "408", "409", "413", "415", "422", "429", "431", "503",
    ] {
        assert!(
            statuses.contains(status),
            "POST /api/enrollments does not document {status}: {statuses:?}"
        );
    }
    assert!(submit["responses"]["202"]["headers"].get("Location").is_some());
    assert!(submit["responses"]["429"]["headers"].get("Retry-After").is_some());
    assert!(submit["responses"]["503"]["headers"].get("Retry-After").is_some());
    let show = &doc["paths"]["/api/enrollments/{view_key}"]["get"];
    assert!(show["responses"]["200"]["headers"].get("Preference-Applied").is_some());
    for path in ["/api/enrollments/{view_key}", "/api/enrollments/{view_key}/events"] {
        let responses = doc["paths"][path]["get"]["responses"].as_object().unwrap();
        for status in ["400", "404", "429", "503"] {
            assert!(responses.contains_key(status), "GET {path} does not document {status}");
        }
    }

    // Every error answer of every operation is a problem document; every operator operation
    // requires the token and documents its 401.
    let problem_ref = "#/components/schemas/Problem";
    for (path, item) in doc["paths"].as_object().unwrap() {
        for (method, operation) in item.as_object().unwrap() {
            for (status, response) in operation["responses"].as_object().unwrap() {
                if status.starts_with('4') || status.starts_with('5') {
                    let schema = &response["content"]["application/problem+json"]["schema"]["$ref"];
                    assert_eq!(schema, problem_ref, "{method} {path} {status}");
                }
            }
            let tags = operation["tags"].as_array().unwrap();
            if tags.iter().any(|t| t == "operator") {
                assert_eq!(
                    operation["security"][0]["operator_token"],
                    Value::Array(vec![]),
                    "{method} {path}"
                );
                assert!(operation["responses"].get("401").is_some(), "{method} {path}");
            } else {
                assert!(operation.get("security").is_none(), "{method} {path} is public");
            }
        }
    }
    let schemas = doc["components"]["schemas"].as_object().unwrap();
    for reference in references(&doc) {
        let name = reference.strip_prefix("#/components/schemas/").unwrap_or(&reference);
        assert!(schemas.contains_key(name), "{reference} does not resolve");
    }
    for schema in [
        "Problem",
        "PublicView",
        "HistoryEntry",
        "Status",
        "EnrollmentInput",
        "OperatorEntry",
    ] {
        assert!(schemas.contains_key(schema), "schema {schema} missing");
    }
    // Present only where there is a customer to follow, never null (see http_api.rs).
    let entry = &schemas["OperatorEntry"];
    assert_eq!(
        entry["properties"]["customer_id"],
        serde_json::json!({"type": "string", "format": "uuid", "description": entry["properties"]["customer_id"]["description"]})
    );
    assert!(
        !entry["required"].as_array().unwrap().iter().any(|f| f == "customer_id"),
        "{entry}"
    );
    // The document names exactly the declared statuses, in their order.
    let declared: Vec<&str> = gateway::saga::Status::all().iter().map(|s| s.name()).collect();
    assert_eq!(schemas["Status"]["enum"], serde_json::json!(declared));
}

/// The header parameter `name` of `POST /api/enrollments`.
fn submit_header<'a>(doc: &'a Value, name: &str) -> &'a Value {
    doc["paths"]["/api/enrollments"]["post"]["parameters"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["in"] == "header" && p["name"] == name)
        .unwrap_or_else(|| panic!("no {name} header documented"))
}

fn submission(name: &str, email: &str, key: Option<&str>) -> Request<Body> {
    let mut request = Request::post("/api/enrollments").header("content-type", "application/json");
    if let Some(key) = key {
        request = request.header("idempotency-key", key);
    }
    let body = serde_json::json!({"name": name, "email": email});
    request.body(Body::from(body.to_string())).unwrap()
}

/// The lengths the document states are the domain's, and the gateway takes exactly up to them:
/// a value of the documented maximum is accepted and one character more is refused.
#[tokio::test]
async fn the_documented_limits_are_the_ones_the_gateway_applies() {
    let api = GatewayApi::start(Backend::Sqlite).await;
    let doc = document(&api).await;
    let input = &doc["components"]["schemas"]["EnrollmentInput"]["properties"];
    let max = |schema: &Value| schema["maxLength"].as_u64().expect("maxLength") as usize;
    let (name_max, email_max) = (max(&input["name"]), max(&input["email"]));
    let key_max = max(&submit_header(&doc, "Idempotency-Key")["schema"]);
    assert_eq!(name_max, utility::domain::CustomerName::MAX_CHARS);
    assert_eq!(email_max, utility::domain::Email::MAX_CHARS);
    for (what, limit) in [("name", name_max), ("email", email_max), ("Idempotency-Key", key_max)] {
        let description = match what {
            "Idempotency-Key" => submit_header(&doc, what)["description"].as_str(),
            field => input[field]["description"].as_str(),
        };
        assert!(
            description.unwrap().contains(&limit.to_string()),
            "{what}: the description does not state {limit}"
        );
    }

    let email = |length: usize| format!("{}@example.com", "e".repeat(length - "@example.com".len()));
    let fine = api.call(submission(
        &"n".repeat(name_max),
        &email(email_max),
        Some(&"k".repeat(key_max)),
    ));
    assert_eq!(fine.await.status, 202, "every field at its documented maximum");
    let refused = |answer: &testkit::api::Answer| -> Vec<String> {
        answer.problem(422)["invalid-params"]
            .as_array()
            .unwrap()
            .iter()
            .map(|p| p["name"].as_str().unwrap().to_owned())
            .collect()
    };
    let long_name = api
        .call(submission(&"n".repeat(name_max + 1), "ada@example.com", None))
        .await;
    assert_eq!(refused(&long_name), ["name"]);
    let long_email = api.call(submission("Ada", &email(email_max + 1), None)).await;
    assert_eq!(refused(&long_email), ["email"]);
    let long_key = api
        .call(submission("Ada", "ada@example.com", Some(&"k".repeat(key_max + 1))))
        .await;
    assert!(
        long_key.problem(400)["detail"]
            .as_str()
            .unwrap()
            .contains("Idempotency-Key"),
        "{}",
        long_key.body
    );
}

/// Every `Idempotency-Key` the document allows is one the gateway accepts: keys drawn from the
/// documented pattern and length (the boundaries included) are each answered 202, never 400.
#[tokio::test]
async fn every_idempotency_key_the_document_allows_is_accepted() {
    use proptest::strategy::{Strategy, ValueTree};
    let api = GatewayApi::start(Backend::Sqlite).await;
    let doc = document(&api).await;
    let schema = &submit_header(&doc, "Idempotency-Key")["schema"];
    let pattern = schema["pattern"].as_str().expect("the key's pattern is documented");
    let (min, max) = (
        schema["minLength"].as_u64().unwrap() as usize,
        schema["maxLength"].as_u64().unwrap() as usize,
    );
    let regex = pattern.trim_start_matches('^').trim_end_matches('$');
    let keys = proptest::string::string_regex(regex)
        .expect("a pattern proptest reads")
        .prop_filter("within the documented length", move |k| (min..=max).contains(&k.len()));
    let mut runner = proptest::test_runner::TestRunner::deterministic();
    let mut drawn: Vec<String> = (0..200)
        .map(|_| keys.new_tree(&mut runner).unwrap().current())
        .collect();
    drawn.extend(["!".repeat(min), format!("a{}z", " ".repeat(max - 2)), "~".repeat(max)]);
    for key in drawn {
        let answer = api.call(submission("Ada", "ada@example.com", Some(&key))).await;
        assert_eq!(answer.status, 202, "Idempotency-Key {key:?}: {}", answer.body);
    }
}

/// Every `$ref` in `value`.
fn references(value: &Value) -> Vec<String> {
    match value {
        Value::Object(map) => map
            .iter()
            .flat_map(|(key, value)| match (key.as_str(), value) {
                ("$ref", Value::String(reference)) => vec![reference.clone()],
                _ => references(value),
            })
            .collect(),
        Value::Array(items) => items.iter().flat_map(references).collect(),
        _ => Vec::new(),
    }
}

#[tokio::test]
async fn docs_renders_every_operation_from_this_binary() {
    let api = GatewayApi::start(Backend::Sqlite).await;
    let doc = document(&api).await;
    let as_operator = Request::get("/docs")
        .header("authorization", format!("Bearer {OPERATOR_TOKEN}"))
        .body(Body::empty())
        .unwrap();
    let answer = api.call(as_operator).await;
    assert_eq!(answer.status, 200);
    assert!(answer.header("content-type").unwrap().starts_with("text/html"));
    let csp = answer.header("content-security-policy").expect("CSP");
    assert!(csp.contains("default-src 'self'"), "{csp}");
    let html = answer.text.as_str();
    for (path, item) in doc["paths"].as_object().unwrap() {
        for (method, operation) in item.as_object().unwrap() {
            let id = operation["operationId"].as_str().unwrap();
            assert!(
                html.contains(&format!("id=\"{id}\"")),
                "{method} {path} ({id}) not on /docs"
            );
            assert!(
                html.contains(&format!("{} {path}", method.to_uppercase())),
                "{method} {path}"
            );
        }
    }
    // Nothing is fetched from elsewhere: no absolute URL in a src or href.
    assert!(
        !html.contains("src=\"http") && !html.contains("href=\"http"),
        "external resource on /docs"
    );
    assert!(html.contains("Idempotency-Key") && html.contains("application/problem+json"));
}

/// Every check schemathesis has, in every phase; each phase runs until `--max-examples` cases
/// per operation (the stateful phase: scenarios of up to 6 steps), which keeps one run to
/// 650-800 cases and under 30 s.
const SCHEMATHESIS_CHECKS: [&str; 4] = ["--checks", "all", "--phases", "examples,coverage,fuzzing,stateful"];

/// schemathesis against the real gateway, in front of the real system: requests generated from
/// the document (valid and invalid, singly and as scenarios that follow the links it infers
/// between operations), each answer checked against the document: status, headers and body
/// conform, no 5xx, what the document calls valid is accepted and what it calls invalid refused.
async fn schemathesis_finds_no_contradiction(backend: Backend) {
    // Callbacks on, to loopback: what contract/schemathesis.toml has every submission name.
    let options = Options {
        callbacks: true,
        ..Options::default()
    };
    let system = System::start(backend, options).await;
    let script = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("contract/schemathesis.sh");
    let seed = std::env::var("SCHEMATHESIS_SEED").unwrap_or_else(|_| "20261125".to_owned());
    let started = std::time::Instant::now();
    let output = tokio::process::Command::new(&script)
        .arg("run")
        .arg(system.url("/openapi.json"))
        .args(["--url", &system.url("")])
        .args(SCHEMATHESIS_CHECKS)
        .args(["--header", &format!("Authorization: Bearer {OPERATOR_TOKEN}")])
        .args(["--max-examples", "40", "--seed", &seed, "--request-timeout", "40"])
        .args(["--max-failures", "10"])
        .env("NO_COLOR", "1")
        .kill_on_drop(true)
        .output()
        .await
        .expect("run gateway/contract/schemathesis.sh");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        output.status.success(),
        "schemathesis found answers that contradict the document (seed {seed}):\n{stdout}\n{stderr}"
    );
    let summary = |label: &str| -> Option<String> {
        let at = stdout.lines().position(|l| l.trim() == label)?;
        Some(stdout.lines().nth(at + 1)?.trim().to_owned())
    };
    eprintln!(
        "schemathesis ({backend:?}, seed {seed}): {} in {:.1} s",
        summary("Test cases:").unwrap_or_default(),
        started.elapsed().as_secs_f64()
    );
    // Every phase ran, the stateful one included (it is skipped when it finds no link to follow).
    let phases: Vec<&str> = stdout
        .lines()
        .skip_while(|l| l.trim() != "Test Phases:")
        .skip(1)
        .take_while(|l| !l.trim().is_empty())
        .map(str::trim)
        .collect();
    assert_eq!(
        phases,
        ["✅ Examples", "✅ Coverage", "✅ Fuzzing", "✅ Stateful"],
        "{stdout}"
    );
    // It tested every operation of the document, not an empty or unreadable one.
    let count = |label: &str| -> Option<String> {
        let line = stdout.lines().find(|l| l.trim_start().starts_with(label))?;
        Some(line.trim_start()[label.len()..].trim().to_owned())
    };
    // (All but `GET /openapi.json`, which schemathesis leaves out as the document's own address.)
    let documented = operations(
        &reqwest::Client::new()
            .get(system.url("/openapi.json"))
            .bearer_auth(OPERATOR_TOKEN)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap(),
    );
    let operations = documented.len() - 1;
    assert_eq!(
        count("Selected:"),
        Some(format!("{operations}/{operations}")),
        "{documented:?}"
    );
    assert_eq!(count("Tested:"), Some(operations.to_string()), "{stdout}");
    system.stop().await;
}
