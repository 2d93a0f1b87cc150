//! The deployed edge, read back from the emulator: which listeners serve, which routes the
//! public listener forwards (and that no operator route is among them), what the target groups
//! check, and who may reach each security group.

use aws_sdk_ec2::types::IpPermission;
use aws_sdk_elasticloadbalancingv2::types::{Action, ActionTypeEnum, Listener, Rule};
use std::collections::{BTreeMap, BTreeSet};

/// Resource type -> logical id -> physical id, as `main::resources` returns it.
pub type Resources = BTreeMap<String, BTreeMap<String, String>>;

fn physical<'a>(resources: &'a Resources, kind: &str, logical: &str) -> &'a str {
    resources
        .get(kind)
        .and_then(|r| r.get(logical))
        .unwrap_or_else(|| panic!("no {kind} {logical}: {resources:?}"))
}

async fn listeners(elb: &aws_sdk_elasticloadbalancingv2::Client, alb: &str) -> BTreeMap<i32, Listener> {
    let out = elb.describe_listeners().load_balancer_arn(alb).send().await.unwrap();
    out.listeners()
        .iter()
        .map(|l| (l.port().unwrap_or_default(), l.clone()))
        .collect()
}

fn only_action(actions: &[Action]) -> &Action {
    assert_eq!(actions.len(), 1, "{actions:?}");
    &actions[0]
}

/// The fixed 404 every unrouted request gets: a problem document.
fn assert_not_found(action: &Action) {
    assert_eq!(action.r#type(), Some(&ActionTypeEnum::FixedResponse), "{action:?}");
    let fixed = action.fixed_response_config().expect("fixed response");
    assert_eq!(fixed.status_code(), Some("404"));
    assert_eq!(fixed.content_type(), Some("application/json"));
    let body: serde_json::Value = serde_json::from_str(fixed.message_body().unwrap_or_default()).expect("JSON body");
    assert_eq!(body["status"], 404);
    assert_eq!(body["title"], "Not Found");
}

/// Where a request goes on the public listener.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Route {
    Gateway,
    NotFound,
}

/// One non-default rule as the load balancer holds it.
#[derive(Debug)]
struct PublicRule {
    priority: u32,
    paths: Vec<String>,
    methods: Vec<String>,
    route: Route,
}

fn public_rule(rule: &Rule, gateway_tg: &str) -> PublicRule {
    let mut paths = Vec::new();
    let mut methods = Vec::new();
    let mut values = 0;
    for condition in rule.conditions() {
        let these: Vec<String> = match condition.field() {
            Some("path-pattern") => condition
                .path_pattern_config()
                .expect("PathPatternConfig")
                .values()
                .to_vec(),
            Some("http-request-method") => condition
                .http_request_method_config()
                .expect("HttpRequestMethodConfig")
                .values()
                .to_vec(),
            other => panic!("unexpected condition {other:?} in {rule:?}"),
        };
        // The load balancer's limits: three values per condition, five per rule.
        assert!(these.len() <= 3, "more than three values in a condition: {rule:?}");
        values += these.len();
        match condition.field() {
            Some("path-pattern") => paths = these,
            _ => methods = these,
        }
    }
    assert!(values <= 5, "more than five condition values in a rule: {rule:?}");
    let action = only_action(rule.actions());
    let route = match action.r#type() {
        Some(ActionTypeEnum::Forward) => {
            assert_eq!(action.target_group_arn(), Some(gateway_tg), "{rule:?}");
            Route::Gateway
        }
        _ => {
            assert_not_found(action);
            Route::NotFound
        }
    };
    PublicRule {
        priority: rule.priority().unwrap_or_default().parse().expect("numeric priority"),
        paths,
        methods,
        route,
    }
}

/// An ALB path pattern: case-sensitive, `*` any run of characters, `?` one character.
fn matches(pattern: &str, path: &str) -> bool {
    fn go(p: &[u8], s: &[u8]) -> bool {
        match (p.first(), s.first()) {
            (None, None) => true,
            (Some(b'*'), _) => go(&p[1..], s) || (!s.is_empty() && go(p, &s[1..])),
            (Some(b'?'), Some(_)) => go(&p[1..], &s[1..]),
            (Some(a), Some(b)) if a == b => go(&p[1..], &s[1..]),
            _ => false,
        }
    }
    go(pattern.as_bytes(), path.as_bytes())
}

/// What the listener does with a request: the first matching rule by priority, else the default.
fn route(rules: &[PublicRule], method: &str, path: &str) -> Route {
    rules
        .iter()
        .find(|r| {
            r.paths.iter().any(|p| matches(p, path)) && (r.methods.is_empty() || r.methods.iter().any(|m| m == method))
        })
        .map_or(Route::NotFound, |r| r.route)
}

/// The public routes, and requests that must not get through: every operator route, other
/// methods on public paths, and near misses.
const REQUESTS: &[(&str, &str, Route)] = &[
    ("POST", "/api/enrollments", Route::Gateway),
    ("OPTIONS", "/api/enrollments", Route::Gateway),
    (
        "GET",
        "/api/enrollments/0194b3c5-1c1f-7000-8000-000000000001",
        Route::Gateway,
    ),
    (
        "HEAD",
        "/api/enrollments/0194b3c5-1c1f-7000-8000-000000000001",
        Route::Gateway,
    ),
    (
        "GET",
        "/api/enrollments/0194b3c5-1c1f-7000-8000-000000000001/events",
        Route::Gateway,
    ),
    (
        "OPTIONS",
        "/api/enrollments/0194b3c5-1c1f-7000-8000-000000000001",
        Route::Gateway,
    ),
    ("GET", "/", Route::Gateway),
    ("HEAD", "/", Route::Gateway),
    ("GET", "/assets/app.js", Route::Gateway),
    ("GET", "/openapi.json", Route::Gateway),
    ("GET", "/asyncapi.json", Route::Gateway),
    ("GET", "/docs", Route::Gateway),
    ("GET", "/docs/index.html", Route::Gateway),
    ("GET", "/health", Route::Gateway),
    ("POST", "/api/confirmations", Route::Gateway),
    ("OPTIONS", "/api/confirmations", Route::Gateway),
    ("POST", "/api/enrollments/AAAAAAAAAAAAAAAAAAAAAA/resend", Route::Gateway),
    ("GET", "/confirm", Route::Gateway),
    ("GET", "/.well-known/webhook-keys", Route::Gateway),
    // Operator routes: never forwarded by the public listener.
    ("GET", "/api/enrollments", Route::NotFound),
    ("GET", "/api/enrollments/stalled", Route::NotFound),
    ("HEAD", "/api/enrollments/stalled", Route::NotFound),
    ("OPTIONS", "/api/enrollments/stalled", Route::NotFound),
    ("GET", "/api/enrollments/stalled/", Route::NotFound),
    (
        "GET",
        "/api/customers/0194b3c5-1c1f-7000-8000-000000000001",
        Route::NotFound,
    ),
    (
        "GET",
        "/api/customers/0194b3c5-1c1f-7000-8000-000000000001/points",
        Route::NotFound,
    ),
    (
        "GET",
        "/api/sagas/0194b3c5-1c1f-7000-8000-000000000001",
        Route::NotFound,
    ),
    ("GET", "/metrics", Route::NotFound),
    ("GET", "/ready", Route::NotFound),
    (
        "DELETE",
        "/api/enrollments/0194b3c5-1c1f-7000-8000-000000000001/personal-data",
        Route::NotFound,
    ),
    ("POST", "/api/enrollments/stalled/resend", Route::NotFound),
    // Other methods and paths.
    ("PUT", "/api/enrollments", Route::NotFound),
    (
        "DELETE",
        "/api/enrollments/0194b3c5-1c1f-7000-8000-000000000001",
        Route::NotFound,
    ),
    (
        "POST",
        "/api/enrollments/0194b3c5-1c1f-7000-8000-000000000001",
        Route::NotFound,
    ),
    ("POST", "/health", Route::NotFound),
    ("GET", "/api/confirmations", Route::NotFound),
    ("GET", "/API/enrollments", Route::NotFound),
    ("GET", "/healthz", Route::NotFound),
    ("GET", "/docsx", Route::NotFound),
];

/// Checks the public load balancer: with a certificate, HTTPS on 443 serving the routes and 80
/// redirecting to it; without, 80 serving them; and exactly the public routes forwarded.
/// The operator listener (internal load balancer, 8080) carries the bearer token: HTTPS with the
/// deployment's certificate when there is one, plain HTTP only in a deployment that allowed it.
pub async fn assert_operator_listener(
    elb: &aws_sdk_elasticloadbalancingv2::Client,
    resources: &Resources,
    certificate: Option<&str>,
) {
    let alb = physical(resources, "AWS::ElasticLoadBalancingV2::LoadBalancer", "InternalAlb");
    let listeners = listeners(elb, alb).await;
    assert_eq!(listeners.keys().copied().collect::<Vec<_>>(), [8080]);
    let operator = &listeners[&8080];
    match certificate {
        Some(arn) => {
            assert_eq!(operator.protocol().map(|p| p.as_str()), Some("HTTPS"));
            assert_eq!(operator.ssl_policy(), Some("ELBSecurityPolicy-TLS13-1-2-2021-06"));
            let certificates: Vec<_> = operator
                .certificates()
                .iter()
                .filter_map(|c| c.certificate_arn())
                .collect();
            assert_eq!(certificates, [arn]);
        }
        None => assert_eq!(operator.protocol().map(|p| p.as_str()), Some("HTTP")),
    }
}

pub async fn assert_public_listener(
    elb: &aws_sdk_elasticloadbalancingv2::Client,
    resources: &Resources,
    certificate: Option<&str>,
) {
    let alb = physical(resources, "AWS::ElasticLoadBalancingV2::LoadBalancer", "PublicAlb");
    let gateway_tg = physical(
        resources,
        "AWS::ElasticLoadBalancingV2::TargetGroup",
        "GatewayTargetGroup",
    );
    let listeners = listeners(elb, alb).await;
    let http = &listeners[&80];
    assert_eq!(http.protocol().map(|p| p.as_str()), Some("HTTP"));
    let serving = match certificate {
        Some(arn) => {
            assert_eq!(listeners.keys().copied().collect::<Vec<_>>(), [80, 443]);
            let redirect = only_action(http.default_actions());
            assert_eq!(redirect.r#type(), Some(&ActionTypeEnum::Redirect), "{redirect:?}");
            let to = redirect.redirect_config().expect("redirect config");
            assert_eq!(to.protocol(), Some("HTTPS"));
            assert_eq!(to.port(), Some("443"));
            assert_eq!(to.status_code().map(|c| c.as_str()), Some("HTTP_301"));
            let https = &listeners[&443];
            assert_eq!(https.protocol().map(|p| p.as_str()), Some("HTTPS"));
            assert_eq!(https.ssl_policy(), Some("ELBSecurityPolicy-TLS13-1-2-2021-06"));
            let certificates: Vec<_> = https
                .certificates()
                .iter()
                .filter_map(|c| c.certificate_arn())
                .collect();
            assert_eq!(certificates, [arn]);
            // Port 80 only redirects: it has no rules of its own.
            let on_http = elb
                .describe_rules()
                .listener_arn(http.listener_arn().unwrap())
                .send()
                .await
                .unwrap();
            let extra: Vec<_> = on_http
                .rules()
                .iter()
                .filter(|r| r.is_default() != Some(true))
                .collect();
            assert!(extra.is_empty(), "rules on the redirecting listener: {extra:?}");
            https
        }
        None => {
            assert_eq!(listeners.keys().copied().collect::<Vec<_>>(), [80], "plain HTTP only");
            http
        }
    };
    assert_not_found(only_action(serving.default_actions()));
    let described = elb
        .describe_rules()
        .listener_arn(serving.listener_arn().unwrap())
        .send()
        .await
        .unwrap();
    let mut rules: Vec<PublicRule> = described
        .rules()
        .iter()
        .filter(|r| r.is_default() != Some(true) && r.priority() != Some("default"))
        .map(|r| public_rule(r, gateway_tg))
        .collect();
    rules.sort_by_key(|r| r.priority);
    let shape: Vec<(u32, Vec<&str>, Vec<&str>, Route)> = rules
        .iter()
        .map(|r| {
            let paths = r.paths.iter().map(String::as_str).collect();
            let methods = r.methods.iter().map(String::as_str).collect();
            (r.priority, paths, methods, r.route)
        })
        .collect();
    assert_eq!(
        shape,
        [
            (
                10,
                vec!["/api/enrollments/stalled", "/api/enrollments/stalled/*"],
                vec![],
                Route::NotFound
            ),
            (20, vec!["/api/enrollments"], vec!["POST", "OPTIONS"], Route::Gateway),
            (
                30,
                vec!["/api/enrollments/*"],
                vec!["GET", "HEAD", "OPTIONS"],
                Route::Gateway
            ),
            (
                35,
                vec!["/api/confirmations", "/api/enrollments/*/resend"],
                vec!["POST", "OPTIONS"],
                Route::Gateway
            ),
            (40, vec!["/", "/health"], vec!["GET", "HEAD"], Route::Gateway),
            (
                45,
                vec!["/openapi.json", "/asyncapi.json"],
                vec!["GET", "HEAD"],
                Route::Gateway
            ),
            (
                50,
                vec!["/assets/*", "/docs", "/docs/*"],
                vec!["GET", "HEAD"],
                Route::Gateway
            ),
            (
                55,
                vec!["/confirm", "/.well-known/webhook-keys"],
                vec!["GET", "HEAD"],
                Route::Gateway
            ),
        ]
    );
    for (method, path, expected) in REQUESTS {
        assert_eq!(route(&rules, method, path), *expected, "{method} {path}");
    }
}

/// The internal load balancer: the operator listener alone, forwarding every path to the
/// gateway's second target group. No listener for the customer-api (8081) or the
/// transaction-api (8082): the gateway asks them over the bus.
pub async fn assert_internal_listeners(elb: &aws_sdk_elasticloadbalancingv2::Client, resources: &Resources) {
    let alb = physical(resources, "AWS::ElasticLoadBalancingV2::LoadBalancer", "InternalAlb");
    let listeners = listeners(elb, alb).await;
    let tg = |logical| physical(resources, "AWS::ElasticLoadBalancingV2::TargetGroup", logical).to_owned();
    let (port, target) = (8080, tg("GatewayOperatorTargetGroup"));
    let listener = &listeners[&port];
    assert_eq!(listener.protocol().map(|p| p.as_str()), Some("HTTP"));
    let action = only_action(listener.default_actions());
    assert_eq!(action.r#type(), Some(&ActionTypeEnum::Forward));
    assert_eq!(action.target_group_arn(), Some(target.as_str()), "port {port}");
    assert!(
        !listeners.contains_key(&8081) && !listeners.contains_key(&8082),
        "{:?}",
        listeners.keys()
    );
    assert_eq!(listeners.len(), 1, "{:?}", listeners.keys());
}

/// Every target group checks `/health`, the process answering, never `/ready`.
pub async fn assert_health_checks(elb: &aws_sdk_elasticloadbalancingv2::Client, resources: &Resources) {
    let groups = &resources["AWS::ElasticLoadBalancingV2::TargetGroup"];
    let out = elb
        .describe_target_groups()
        .set_target_group_arns(Some(groups.values().cloned().collect()))
        .send()
        .await
        .unwrap();
    assert_eq!(out.target_groups().len(), 2);
    for group in out.target_groups() {
        assert_eq!(group.health_check_path(), Some("/health"), "{group:?}");
    }
}

/// (protocol, from, to, source): a source is a CIDR or the logical id of a security group.
type Ingress = BTreeSet<(String, i32, i32, String)>;

fn ingress(permissions: &[IpPermission], names: &BTreeMap<String, String>) -> Ingress {
    let mut rules = Ingress::new();
    for p in permissions {
        let key = |source: String| {
            (
                p.ip_protocol().unwrap_or_default().to_owned(),
                p.from_port().unwrap_or_default(),
                p.to_port().unwrap_or_default(),
                source,
            )
        };
        for range in p.ip_ranges() {
            rules.insert(key(range.cidr_ip().unwrap_or_default().to_owned()));
        }
        for pair in p.user_id_group_pairs() {
            let id = pair.group_id().unwrap_or_default();
            rules.insert(key(names.get(id).cloned().unwrap_or_else(|| id.to_owned())));
        }
    }
    rules
}

/// Who may connect to what: each security group's ingress, exactly. (Egress is checked in the
/// template: moto 5.2.5 ignores egress rules in CloudFormation.)
pub async fn assert_ingress(ec2: &aws_sdk_ec2::Client, resources: &Resources, https: bool) {
    let groups = &resources["AWS::EC2::SecurityGroup"];
    let names: BTreeMap<String, String> = groups.iter().map(|(l, p)| (p.clone(), l.clone())).collect();
    let out = ec2
        .describe_security_groups()
        .set_group_ids(Some(groups.values().cloned().collect()))
        .send()
        .await
        .unwrap();
    let actual: BTreeMap<String, Ingress> = out
        .security_groups()
        .iter()
        .map(|g| {
            let logical = names[g.group_id().unwrap_or_default()].clone();
            (logical, ingress(g.ip_permissions(), &names))
        })
        .collect();
    let rule = |from: i32, to: i32, source: &str| ("tcp".to_owned(), from, to, source.to_owned());
    let mut public = vec![rule(80, 80, "0.0.0.0/0")];
    if https {
        public.push(rule(443, 443, "0.0.0.0/0"));
    }
    let expected: BTreeMap<String, Ingress> = [
        ("PublicAlbSecurityGroup", public),
        (
            "GatewaySecurityGroup",
            vec![
                rule(8080, 8080, "PublicAlbSecurityGroup"),
                rule(8080, 8080, "InternalAlbSecurityGroup"),
            ],
        ),
        ("InternalAlbSecurityGroup", vec![rule(8080, 8080, "10.40.0.0/16")]),
        // Nothing connects to the services: the gateway asks them over the bus.
        ("CustomerApiSecurityGroup", vec![]),
        ("TransactionApiSecurityGroup", vec![]),
        (
            "GatewayDatabaseSecurityGroup",
            vec![rule(5432, 5432, "GatewaySecurityGroup")],
        ),
        (
            "CustomerApiDatabaseSecurityGroup",
            vec![rule(5432, 5432, "CustomerApiSecurityGroup")],
        ),
        (
            "TransactionApiDatabaseSecurityGroup",
            vec![rule(5432, 5432, "TransactionApiSecurityGroup")],
        ),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v.into_iter().collect()))
    .collect();
    assert_eq!(actual, expected);
}
