//! The messaging template and the declarations in code cannot drift apart. Every message type
//! declares who sends it and who receives it (`utility::messaging::message::MessageType::route`);
//! here `infra/messaging.yaml` is held to those declarations: for each topic and each service
//! that receives events from it there is exactly one subscription, from that topic to that
//! service's queue, with raw delivery, a dead-letter queue, and a filter policy on the `type`
//! message attribute that admits exactly the event types declared for that pair. An event type
//! missing from a filter would never arrive and its sagas would stall; one too many would cost a
//! receive and a warning for nothing. Beside `type`, a subscription filters on the attribute its
//! queue's declaration names, with the one value it admits, and on nothing else
//! (`utility::messaging::message::subscription_filter`).

use serde_norway::Value;
use std::collections::{BTreeMap, BTreeSet};
use strum::VariantArray;
use utility::messaging::message::{Kind, subscription_filter};
use utility::messaging::{Endpoint, MessageType, Participant};

/// `!Ref X` or `!GetAtt X.Arn`, as written in the template: the logical id `X`.
fn logical_id(value: &Value) -> Option<&str> {
    match value {
        Value::Tagged(tagged) if tagged.tag == "Ref" => tagged.value.as_str(),
        Value::Tagged(tagged) if tagged.tag == "GetAtt" => tagged.value.as_str()?.strip_suffix(".Arn"),
        _ => None,
    }
}

/// The logical id of each endpoint's resource, read from the output that names its ARN (the
/// endpoint table says which output that is).
fn resources(template: &Value) -> BTreeMap<String, Endpoint> {
    Endpoint::VARIANTS
        .iter()
        .map(|endpoint| {
            let output = endpoint.outputs().arn;
            let id = logical_id(&template["Outputs"][output]["Value"])
                .unwrap_or_else(|| panic!("output {output} names no resource"));
            (id.to_owned(), *endpoint)
        })
        .collect()
}

/// (topic, receiving queue) -> the event types the declarations send along that path.
fn declared() -> BTreeMap<(Endpoint, Endpoint), BTreeSet<String>> {
    let mut paths: BTreeMap<(Endpoint, Endpoint), BTreeSet<String>> = BTreeMap::new();
    for message_type in MessageType::VARIANTS {
        let route = message_type.route();
        for queue in route.subscribers {
            paths
                .entry((route.destination, *queue))
                .or_default()
                .insert(message_type.name().to_owned());
        }
        if route.kind != Kind::Event {
            continue;
        }
        for receiver in route.receivers {
            paths
                .entry((route.destination, receiver.queue()))
                .or_default()
                .insert(message_type.name().to_owned());
        }
    }
    paths
}

#[test]
fn the_subscriptions_deliver_exactly_the_declared_events() {
    let template: Value = serde_norway::from_str(infra::MESSAGING_TEMPLATE).expect("messaging.yaml parses");
    let resources = resources(&template);
    let mut found: BTreeMap<(Endpoint, Endpoint), BTreeSet<String>> = BTreeMap::new();
    for (name, resource) in template["Resources"].as_mapping().expect("Resources") {
        if resource["Type"].as_str() != Some("AWS::SNS::Subscription") {
            continue;
        }
        let name = name.as_str().unwrap_or_default();
        let properties = &resource["Properties"];
        let endpoint = |key: &str| {
            let id = logical_id(&properties[key]).unwrap_or_else(|| panic!("{name}: {key} names no resource"));
            *resources
                .get(id)
                .unwrap_or_else(|| panic!("{name}: {key} {id} is not an endpoint of the table"))
        };
        let (topic, queue) = (endpoint("TopicArn"), endpoint("Endpoint"));
        let others: BTreeMap<String, Vec<String>> = properties["FilterPolicy"]
            .as_mapping()
            .unwrap_or_else(|| panic!("{name}: no FilterPolicy"))
            .iter()
            .filter(|(key, _)| key.as_str() != Some("type"))
            .map(|(key, values)| {
                let key = key.as_str().expect("attribute names are strings").to_owned();
                let values = values
                    .as_sequence()
                    .unwrap_or_else(|| panic!("{name}: {key} is not a list"))
                    .iter()
                    .map(|v| v.as_str().expect("attribute values are strings").to_owned())
                    .collect();
                (key, values)
            })
            .collect();
        let declared_others: BTreeMap<String, Vec<String>> = subscription_filter(queue)
            .map(|(attribute, admitted)| (attribute.name.to_owned(), vec![admitted.to_owned()]))
            .into_iter()
            .collect();
        assert_eq!(
            others, declared_others,
            "{name}: the attributes it filters on beside `type`"
        );
        assert_eq!(properties["Protocol"].as_str(), Some("sqs"), "{name}");
        assert_eq!(
            properties["RawMessageDelivery"].as_bool(),
            Some(true),
            "{name}: raw delivery"
        );
        assert!(
            matches!(properties["RedrivePolicy"]["deadLetterTargetArn"], Value::Tagged(_)),
            "{name}: no dead-letter queue"
        );
        assert_eq!(
            properties["FilterPolicyScope"].as_str(),
            Some("MessageAttributes"),
            "{name}: the filter must read the `type` message attribute"
        );
        let types: Vec<String> = properties["FilterPolicy"]["type"]
            .as_sequence()
            .unwrap_or_else(|| panic!("{name} has no filter on `type`"))
            .iter()
            .map(|t| t.as_str().expect("type names are strings").to_owned())
            .collect();
        let unique: BTreeSet<String> = types.iter().cloned().collect();
        assert_eq!(unique.len(), types.len(), "{name}: a type is admitted twice: {types:?}");
        assert!(
            found.insert((topic, queue), unique).is_none(),
            "two subscriptions from {topic} to {queue}"
        );
    }
    assert_eq!(
        found,
        declared(),
        "messaging.yaml's subscriptions and the messages' declared routes disagree"
    );
}

/// The declarations name every queue of the template as some service's, and every topic as
/// some service's: nothing in the template is left without an owner in code.
#[test]
fn every_queue_and_topic_belongs_to_a_declared_service() {
    for endpoint in Endpoint::VARIANTS {
        let owned = Participant::VARIANTS.iter().any(|p| {
            p.queue() == *endpoint
                || p.lookups() == *endpoint
                || p.topic() == Some(*endpoint)
                || p.subscriptions().contains(endpoint)
        });
        assert!(owned, "{endpoint} belongs to no service");
    }
}

/// The services named by the role patterns in `value` (`...:role/${NamePrefix}/${AWS::Region}/<service>/*`,
/// the path infra/app.yaml gives each service's role), wherever they are in it.
fn role_services(value: &Value, found: &mut BTreeSet<String>) {
    const PATH: &str = ":role/${NamePrefix}/${AWS::Region}/";
    match value {
        Value::Tagged(tagged) if tagged.tag == "Sub" => {
            if let Some(service) = tagged
                .value
                .as_str()
                .and_then(|s| s.split_once(PATH))
                .and_then(|(_, rest)| rest.strip_suffix("/*"))
            {
                found.insert(service.to_owned());
            }
        }
        Value::Tagged(tagged) => role_services(&tagged.value, found),
        Value::Sequence(items) => items.iter().for_each(|v| role_services(v, found)),
        Value::Mapping(map) => map.values().for_each(|v| role_services(v, found)),
        _ => {}
    }
}

/// Every queue and topic has a policy that denies sending (publishing) to all but the service the
/// routes declare as the sender of what goes there: the gateway for the command queues, each
/// topic's own service, and for the gateway's queue no service at all (only SNS delivers there).
/// An identity policy granting `sqs:SendMessage` on `*` elsewhere in the account gets nowhere.
#[test]
fn only_the_declared_senders_may_put_messages_on_the_bus() {
    let template: Value = serde_norway::from_str(infra::MESSAGING_TEMPLATE).expect("messaging.yaml parses");
    let resources = resources(&template);
    let mut found: BTreeMap<Endpoint, BTreeSet<String>> = BTreeMap::new();
    for (name, resource) in template["Resources"].as_mapping().expect("Resources") {
        let (targets, action) = match resource["Type"].as_str() {
            Some("AWS::SQS::QueuePolicy") => ("Queues", "sqs:SendMessage"),
            Some("AWS::SNS::TopicPolicy") => ("Topics", "sns:Publish"),
            _ => continue,
        };
        let properties = &resource["Properties"];
        let endpoints: Vec<Endpoint> = properties[targets]
            .as_sequence()
            .unwrap_or_else(|| panic!("{name:?}: no {targets}"))
            .iter()
            .filter_map(|t| resources.get(logical_id(t)?).copied())
            .collect();
        for statement in properties["PolicyDocument"]["Statement"]
            .as_sequence()
            .expect("Statement")
        {
            if statement["Effect"].as_str() != Some("Deny") {
                continue;
            }
            assert_eq!(
                statement["Principal"].as_str(),
                Some("*"),
                "{name:?}: a Deny for everyone"
            );
            assert_eq!(statement["Action"].as_str(), Some(action), "{name:?}");
            let mut services = BTreeSet::new();
            role_services(&statement["Condition"], &mut services);
            for endpoint in &endpoints {
                assert!(
                    found.insert(*endpoint, services.clone()).is_none(),
                    "{endpoint}: two Deny statements"
                );
            }
        }
    }
    // Every service's queue, topic and subscribed queues, with no sender yet; the routes add
    // theirs (a subscribed queue has none: only its topic delivers there).
    let mut declared: BTreeMap<Endpoint, BTreeSet<String>> = Participant::VARIANTS
        .iter()
        .flat_map(|p| {
            [Some(p.queue()), p.topic()]
                .into_iter()
                .flatten()
                .chain(p.subscriptions().iter().copied())
        })
        .map(|e| (e, BTreeSet::new()))
        .collect();
    for message_type in MessageType::VARIANTS {
        let route = message_type.route();
        declared
            .entry(route.destination)
            .or_default()
            .insert(route.sender.name().to_owned());
    }
    assert_eq!(
        found, declared,
        "messaging.yaml's Deny statements and the messages' declared senders disagree"
    );
}

/// The path the messaging policies recognise each service's role by is the one infra/app.yaml
/// gives it.
#[test]
fn the_application_roles_have_the_paths_the_bus_policies_expect() {
    let template: Value = serde_norway::from_str(infra::app::APP_TEMPLATE).expect("app.yaml parses");
    let mut paths = BTreeSet::new();
    for (_, resource) in template["Resources"].as_mapping().expect("Resources") {
        if resource["Type"].as_str() == Some("AWS::IAM::Role") {
            let path = &resource["Properties"]["Path"];
            match path {
                Value::Tagged(tagged) if tagged.tag == "Sub" => paths.insert(tagged.value.as_str().unwrap().to_owned()),
                other => panic!("a role without a !Sub path: {other:?}"),
            };
        }
    }
    let expected: BTreeSet<String> = Participant::VARIANTS
        .iter()
        .map(|p| format!("/${{NamePrefix}}/${{AWS::Region}}/{}/", p.name()))
        .collect();
    assert_eq!(paths, expected);
}

/// The lookups' queues (request/reply) carry exactly the declared queries and replies: no SNS
/// subscription delivers to them, each has a dead-letter queue of its own for malformed
/// messages, and a lookup nobody answered lives no longer than SQS's minimum retention.
#[test]
fn the_lookup_queues_are_their_own_and_short_lived() {
    let template: Value = serde_norway::from_str(infra::MESSAGING_TEMPLATE).expect("messaging.yaml parses");
    let resources = resources(&template);
    let lookups: BTreeSet<Endpoint> = Participant::VARIANTS.iter().map(|p| p.lookups()).collect();
    for message_type in MessageType::VARIANTS {
        let route = message_type.route();
        assert_eq!(
            route.kind.is_saga(),
            !lookups.contains(&route.destination),
            "{message_type}: only queries and replies travel on the lookup queues"
        );
    }
    for (name, resource) in template["Resources"].as_mapping().expect("Resources") {
        let name = name.as_str().unwrap_or_default();
        let Some(endpoint) = resources.get(name) else { continue };
        if !lookups.contains(endpoint) {
            continue;
        }
        let properties = &resource["Properties"];
        assert_eq!(
            properties["MessageRetentionPeriod"],
            serde_norway::from_str::<Value>("!FindInMap [Retention, Lookup, Seconds]").unwrap(),
            "{name}"
        );
        let dead_letter = logical_id(&properties["RedrivePolicy"]["deadLetterTargetArn"]).unwrap_or_default();
        assert_eq!(
            template["Outputs"][endpoint.outputs().dead_letter.url]["Value"],
            serde_norway::from_str::<Value>(&format!("!Ref {dead_letter}")).unwrap(),
            "{name}: its dead-letter queue is the endpoint table's"
        );
    }
    assert_eq!(
        template["Mappings"]["Retention"]["Lookup"]["Seconds"].as_u64(),
        Some(60)
    );
    for (_, resource) in template["Resources"].as_mapping().expect("Resources") {
        if resource["Type"].as_str() == Some("AWS::SNS::Subscription") {
            let id = logical_id(&resource["Properties"]["Endpoint"]).unwrap_or_default();
            assert!(
                resources.get(id).is_none_or(|e| !lookups.contains(e)),
                "a subscription delivers to {id}"
            );
        }
    }
}
