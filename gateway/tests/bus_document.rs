//! The bus document (`/asyncapi.json`, AsyncAPI 3.0) against the messaging template and the
//! AsyncAPI specification.
//!
//! The document is generated from the code's declarations; `infra/messaging.yaml` is what is
//! deployed. Here the two are held to each other: every queue and topic of the template is a
//! channel with the template's name (and a queue's dead-letter queue its DLQ), every channel is
//! in the template, and every SNS subscription of the template is a consumer of its topic's
//! publishing operation with the same queue, filter, raw delivery and dead-letter queue, and no
//! other. The AsyncAPI parser validates the document against the specification's schema and the
//! bindings' schemas (`gateway/contract/asyncapi/check.sh`, Node.js). `/docs` shows it.

use axum::body::Body;
use axum::http::Request;
use serde_json::{Value, json};
use serde_norway::Value as Yaml;
use std::collections::{BTreeMap, BTreeSet};
use testkit::Backend;
use testkit::api::GatewayApi;

async fn fetch(api: &GatewayApi, uri: &str) -> testkit::api::Answer {
    let answer = api.call(Request::get(uri).body(Body::empty()).unwrap()).await;
    assert_eq!(answer.status, 200, "{uri}: {}", answer.text);
    answer
}

/// `!Sub "${NamePrefix}-x"` as the document writes addresses: `{prefix}-x`.
fn name_of(resource: &Yaml) -> Option<String> {
    let properties = &resource["Properties"];
    let name = ["QueueName", "TopicName"]
        .iter()
        .find_map(|key| match &properties[*key] {
            Yaml::Tagged(tagged) if tagged.tag == "Sub" => tagged.value.as_str(),
            _ => None,
        })?;
    Some(name.replace("${NamePrefix}", "{prefix}"))
}

/// `!Ref X` / `!GetAtt X.Arn`: the logical id `X`.
fn logical_id(value: &Yaml) -> Option<&str> {
    match value {
        Yaml::Tagged(tagged) if tagged.tag == "Ref" => tagged.value.as_str(),
        Yaml::Tagged(tagged) if tagged.tag == "GetAtt" => tagged.value.as_str()?.strip_suffix(".Arn"),
        _ => None,
    }
}

/// What the template deploys, in the document's terms.
struct Template {
    /// Every topic and queue name, dead-letter queues included.
    names: BTreeSet<String>,
    /// Work queue name -> its dead-letter queue's name.
    dead_letter: BTreeMap<String, String>,
    /// Topic name -> its subscriptions, each as the document's consumer object.
    subscriptions: BTreeMap<String, Vec<Value>>,
}

fn template() -> Template {
    let template: Yaml = serde_norway::from_str(infra::MESSAGING_TEMPLATE).expect("messaging.yaml parses");
    let resources = template["Resources"].as_mapping().expect("Resources");
    let by_id: BTreeMap<&str, &Yaml> = resources.iter().map(|(k, v)| (k.as_str().unwrap(), v)).collect();
    let name = |id: &str| name_of(by_id[id]).unwrap_or_else(|| panic!("{id} has no name"));
    let mut parsed = Template {
        names: by_id.values().filter_map(|r| name_of(r)).collect(),
        dead_letter: BTreeMap::new(),
        subscriptions: BTreeMap::new(),
    };
    for (id, resource) in &by_id {
        let properties = &resource["Properties"];
        if let Some(dlq) = logical_id(&properties["RedrivePolicy"]["deadLetterTargetArn"])
            && resource["Type"].as_str() == Some("AWS::SQS::Queue")
        {
            parsed.dead_letter.insert(name(id), name(dlq));
        }
        if resource["Type"].as_str() == Some("AWS::SNS::Subscription") {
            let topic = name(logical_id(&properties["TopicArn"]).expect("TopicArn"));
            // The whole filter: `type`, and any attribute a subscription also requires.
            let filter = serde_json::to_value(&properties["FilterPolicy"]).expect("a filter policy");
            assert!(filter["type"].is_array(), "{id}: a filter on type");
            let dlq = logical_id(&properties["RedrivePolicy"]["deadLetterTargetArn"]).expect("a subscription DLQ");
            parsed.subscriptions.entry(topic).or_default().push(json!({
                "protocol": properties["Protocol"].as_str(),
                "endpoint": {"name": name(logical_id(&properties["Endpoint"]).expect("Endpoint"))},
                "filterPolicy": filter,
                "filterPolicyScope": properties["FilterPolicyScope"].as_str(),
                "rawMessageDelivery": properties["RawMessageDelivery"].as_bool(),
                "redrivePolicy": {"deadLetterQueue": {"name": name(dlq)}},
            }));
        }
    }
    parsed
}

#[tokio::test]
async fn the_bus_document_is_the_deployed_topology() {
    let api = GatewayApi::start(Backend::Sqlite).await;
    let answer = fetch(&api, "/asyncapi.json").await;
    assert_eq!(answer.header("content-type"), Some("application/json"));
    let doc = answer.body;
    assert_eq!(doc["asyncapi"], "3.0.0");
    let template = template();

    let mut channel_names = BTreeSet::new();
    for (name, channel) in doc["channels"].as_object().expect("channels") {
        let address = channel["address"].as_str().expect("address").to_owned();
        assert!(
            template.names.contains(&address),
            "{name}: {address} is not in messaging.yaml"
        );
        if let Some(sqs) = channel["bindings"].get("sqs") {
            assert_eq!(sqs["queue"]["name"], address.as_str(), "{name}");
            let dlq = &template.dead_letter[&address];
            assert_eq!(
                sqs["deadLetterQueue"]["name"],
                dlq.as_str(),
                "{name}: dead-letter queue"
            );
            channel_names.insert(dlq.clone());
        } else {
            assert_eq!(channel["bindings"]["sns"]["name"], address.as_str(), "{name}");
        }
        channel_names.insert(address);
    }
    let subscription_dlqs: BTreeSet<String> = template
        .subscriptions
        .values()
        .flatten()
        .map(|s| {
            s["redrivePolicy"]["deadLetterQueue"]["name"]
                .as_str()
                .unwrap()
                .to_owned()
        })
        .collect();
    channel_names.extend(subscription_dlqs);
    assert_eq!(
        channel_names, template.names,
        "queues and topics of messaging.yaml missing from the document"
    );

    let mut consumers: BTreeMap<String, Vec<Value>> = BTreeMap::new();
    for (id, operation) in doc["operations"].as_object().expect("operations") {
        let Some(found) = operation["bindings"]["sns"]["consumers"].as_array() else {
            continue;
        };
        let channel = operation["channel"]["$ref"]
            .as_str()
            .expect("channel")
            .rsplit('/')
            .next()
            .unwrap();
        let topic = doc["channels"][channel]["address"]
            .as_str()
            .expect("address")
            .to_owned();
        assert_eq!(operation["action"], "send", "{id}");
        consumers.entry(topic).or_default().extend(found.iter().cloned());
    }
    assert_eq!(
        consumers, template.subscriptions,
        "the subscriptions of messaging.yaml and the document disagree"
    );
}

#[tokio::test]
async fn the_bus_document_is_valid_asyncapi_and_on_the_reference_page() {
    let api = GatewayApi::start(Backend::Sqlite).await;
    let doc = fetch(&api, "/asyncapi.json").await;
    let dir = tempfile::tempdir().expect("temporary directory");
    let file = dir.path().join("asyncapi.json");
    std::fs::write(&file, &doc.text).expect("write the document");
    let script = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("contract/asyncapi/check.sh");
    let out = tokio::process::Command::new(&script)
        .arg("validate")
        .arg(&file)
        .output()
        .await
        .expect("run gateway/contract/asyncapi/check.sh");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "the AsyncAPI parser refuses the document:\n{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.trim_end().ends_with("valid"), "{stdout}");

    let page = fetch(&api, "/docs").await.text;
    assert!(page.contains(r#"<a href="/asyncapi.json">/asyncapi.json</a>"#));
    for message in doc.body["components"]["messages"].as_object().expect("messages").keys() {
        assert!(
            page.contains(&format!(r#"id="bus-message-{message}""#)),
            "/docs lacks {message}"
        );
    }
    for channel in doc.body["channels"].as_object().expect("channels").keys() {
        assert!(
            page.contains(&format!(r#"id="bus-channel-{channel}""#)),
            "/docs lacks {channel}"
        );
    }
    // A subscription's filter on an attribute besides `type` (decision 0045) is shown with it.
    assert!(
        page.contains(
            "admitting <code>type</code> <code>EnrollmentStatusChanged</code> with <code>callback</code> <code>yes</code>."
        ),
        "/docs lacks the webhook deliveries' filter"
    );
}
