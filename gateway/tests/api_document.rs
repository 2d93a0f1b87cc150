//! The API document (`/openapi.json`, `/docs`) against what the gateway serves.
//!
//! In process: the document lists exactly the gateway's routes (a route missing from it, or one
//! documented but not served, fails), each operation states the problem statuses and headers a
//! client meets, and `/docs` renders every operation. Against the real system (LocalStack and
//! the three services): schemathesis generates requests from the document and checks every
//! answer against it, no 5xx, on both backends.

use axum::body::Body;
use axum::http::Request;
use serde_json::Value;
use std::collections::BTreeSet;
use testkit::api::GatewayApi;
use testkit::{Backend, OPERATOR_TOKEN, Options, System};

testkit::on_both_backends!(schemathesis_finds_no_contradiction);

/// Every route the gateway serves, as (method, path). The public routes, the page, the document
/// and the health checks; the operator routes are in [`OPERATOR`].
const PUBLIC: [(&str, &str); 9] = [
    ("GET", "/"),
    ("GET", "/assets/{file}"),
    ("GET", "/openapi.json"),
    ("GET", "/docs"),
    ("POST", "/api/enrollments"),
    ("GET", "/api/enrollments/{id}"),
    ("GET", "/api/enrollments/{id}/events"),
    ("GET", "/health"),
    ("GET", "/ready"),
];
const OPERATOR: [(&str, &str); 5] = [
    ("GET", "/metrics"),
    ("GET", "/api/enrollments"),
    ("GET", "/api/enrollments/stalled"),
    ("GET", "/api/customers/{id}"),
    ("GET", "/api/customers/{id}/points"),
];

fn get(uri: &str) -> Request<Body> {
    Request::get(uri).body(Body::empty()).unwrap()
}

async fn document(api: &GatewayApi) -> Value {
    let answer = api.call(get("/openapi.json")).await;
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
    let show = &doc["paths"]["/api/enrollments/{id}"]["get"];
    assert!(show["responses"]["200"]["headers"].get("Preference-Applied").is_some());
    for path in ["/api/enrollments/{id}", "/api/enrollments/{id}/events"] {
        let responses = doc["paths"][path]["get"]["responses"].as_object().unwrap();
        for status in ["400", "404", "503"] {
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
    assert_eq!(
        schemas["Status"]["enum"],
        serde_json::json!([
            "pending",
            "enrolled",
            "completed",
            "rejected",
            "compensating",
            "rolled_back"
        ])
    );
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
    let answer = api.call(get("/docs")).await;
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

/// schemathesis against the real gateway, in front of the real system: requests generated from
/// the document (valid and invalid), each answer checked against it.
async fn schemathesis_finds_no_contradiction(backend: Backend) {
    let system = System::start(backend, Options::default()).await;
    let script = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("contract/schemathesis.sh");
    let seed = std::env::var("SCHEMATHESIS_SEED").unwrap_or_else(|_| "20261125".to_owned());
    let output = tokio::process::Command::new(&script)
        .arg("run")
        .arg(system.url("/openapi.json"))
        .args(["--url", &system.url("")])
        .args([
            "--checks",
            "not_a_server_error,status_code_conformance,content_type_conformance,\
             response_headers_conformance,response_schema_conformance",
        ])
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
    // It tested every operation of the document, not an empty or unreadable one.
    let count = |label: &str| -> Option<String> {
        let line = stdout.lines().find(|l| l.trim_start().starts_with(label))?;
        Some(line.trim_start()[label.len()..].trim().to_owned())
    };
    // (All but `GET /openapi.json`, which schemathesis leaves out as the document's own address.)
    let documented = operations(
        &reqwest::get(system.url("/openapi.json"))
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
