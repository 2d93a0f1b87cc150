//! The template and the code cannot drift apart: the SNS subscriptions that feed the gateway's
//! queue (`infra/messaging.yaml`) admit exactly the event types the saga's routing table handles.
//! An event type missing from a filter would never reach the gateway and its sagas would stall;
//! one too many would cost a receive and a warning for nothing.

use serde_norway::Value;
use std::collections::BTreeSet;

/// `!GetAtt Resource.Attribute` as written in the template.
fn get_att(value: &Value) -> Option<String> {
    match value {
        Value::Tagged(tagged) if tagged.tag == "GetAtt" => tagged.value.as_str().map(str::to_owned),
        _ => None,
    }
}

#[test]
fn the_gateway_subscriptions_admit_exactly_the_routed_events() {
    let template: Value = serde_norway::from_str(infra::MESSAGING_TEMPLATE).expect("messaging.yaml parses");
    let resources = template["Resources"].as_mapping().expect("Resources");
    let mut admitted = Vec::new();
    for (name, resource) in resources {
        if resource["Type"].as_str() != Some("AWS::SNS::Subscription") {
            continue;
        }
        let properties = &resource["Properties"];
        if get_att(&properties["Endpoint"]).as_deref() != Some("GatewayEventsQueue.Arn") {
            continue;
        }
        assert_eq!(
            properties["FilterPolicyScope"].as_str(),
            Some("MessageAttributes"),
            "{name:?}: the filter must read the `type` message attribute"
        );
        let types = properties["FilterPolicy"]["type"]
            .as_sequence()
            .unwrap_or_else(|| panic!("{name:?} has no filter on `type`"));
        for message_type in types {
            admitted.push(message_type.as_str().expect("type names are strings").to_owned());
        }
    }
    let unique: BTreeSet<String> = admitted.iter().cloned().collect();
    assert_eq!(unique.len(), admitted.len(), "a type is admitted twice: {admitted:?}");
    let routed: BTreeSet<String> = gateway::saga::ROUTED_EVENTS
        .iter()
        .map(|t| t.name().to_owned())
        .collect();
    assert_eq!(
        unique, routed,
        "the filter policies of messaging.yaml and gateway::saga::ROUTED_EVENTS disagree"
    );
}
