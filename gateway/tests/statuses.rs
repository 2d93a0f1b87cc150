//! The saga's statuses are declared once, in `gateway::saga::Status`; what other files say of them
//! is held to that declaration here.
//!
//! - The EC2 application stack (`infra/app.yaml`) turns the gateway's `saga finished` log line
//!   into one count per outcome: a terminal status without a metric filter would finish sagas
//!   that no dashboard or alarm sees, and a filter for a status that is not terminal would count
//!   nothing. (The moto audit, `infra/tests/deploy_moto`, holds the dashboard to the filters.)
//! - The test harness (`testkit`, which cannot depend on the gateway for everyone) names the
//!   terminal statuses its waits end on.

use gateway::saga::Status;
use serde_norway::Value;
use std::collections::BTreeSet;

#[test]
fn there_is_one_outcome_metric_per_terminal_status() {
    let template: Value = serde_norway::from_str(infra::app::APP_TEMPLATE).expect("app.yaml parses");
    let mut counted = Vec::new();
    for (name, resource) in template["Resources"].as_mapping().expect("Resources") {
        if resource["Type"].as_str() != Some("AWS::Logs::MetricFilter") {
            continue;
        }
        let pattern = resource["Properties"]["FilterPattern"].as_str().unwrap_or_default();
        if !pattern.contains(r#"$.message = "saga finished""#) {
            continue;
        }
        if let Some(rest) = pattern.split(r#"$.outcome = ""#).nth(1) {
            let outcome = rest.split('"').next().unwrap_or_default().to_owned();
            assert!(
                outcome.parse::<Status>().is_ok(),
                "{name:?} counts an unknown status {outcome:?}"
            );
            counted.push(outcome);
        }
    }
    let unique: BTreeSet<String> = counted.iter().cloned().collect();
    assert_eq!(unique.len(), counted.len(), "an outcome is counted twice: {counted:?}");
    let terminal: BTreeSet<String> = Status::terminal().map(|s| s.name().to_owned()).collect();
    assert_eq!(
        unique, terminal,
        "app.yaml's outcome metrics and the terminal statuses disagree"
    );
}

#[test]
fn the_test_harness_waits_for_the_terminal_statuses() {
    let harness: BTreeSet<&str> = testkit::TERMINAL.into_iter().collect();
    let terminal: BTreeSet<&str> = Status::terminal().map(Status::name).collect();
    assert_eq!(
        harness, terminal,
        "testkit::TERMINAL and the terminal statuses disagree"
    );
}
