//! A stack's events as they happen: while `sagactl` waits for a stack, each new event is logged
//! (resource, type, status, reason), so a long wait (RDS creation, a rolling update) shows its
//! progress and a failure shows its cause when it happens, not only at the end.

use aws_sdk_cloudformation::Client;
use aws_sdk_cloudformation::types::StackEvent;

/// Pages read per poll at most; a poll every few seconds never falls that far behind.
const MAX_PAGES: usize = 5;

/// Remembers the newest event already seen, so each poll logs only what is new.
pub(crate) struct EventLog {
    newest: Option<String>,
}

impl EventLog {
    /// Starts after the stack's newest event (none when the stack does not exist yet), so the
    /// history of earlier operations is not repeated.
    pub(crate) async fn start(client: &Client, stack: &str) -> Self {
        let newest = match client.describe_stack_events().stack_name(stack).send().await {
            Ok(page) => page
                .stack_events()
                .first()
                .and_then(|e| e.event_id().map(str::to_owned)),
            Err(_) => None,
        };
        Self { newest }
    }

    /// Logs the events since the last call, oldest first, and returns how many. A stack that
    /// is gone (deleted) simply has no new events.
    pub(crate) async fn log_new(&mut self, client: &Client, stack: &str) -> usize {
        let mut fresh: Vec<StackEvent> = Vec::new();
        let mut token: Option<String> = None;
        'pages: for _ in 0..MAX_PAGES {
            let Ok(page) = client
                .describe_stack_events()
                .stack_name(stack)
                .set_next_token(token.take())
                .send()
                .await
            else {
                break;
            };
            for event in page.stack_events() {
                if event.event_id().is_some() && event.event_id() == self.newest.as_deref() {
                    break 'pages;
                }
                fresh.push(event.clone());
            }
            match page.next_token() {
                Some(next) => token = Some(next.to_owned()),
                None => break,
            }
        }
        if let Some(id) = fresh.first().and_then(|e| e.event_id()) {
            self.newest = Some(id.to_owned());
        }
        for event in fresh.iter().rev() {
            tracing::info!("{}", line(event));
        }
        fresh.len()
    }
}

/// `Resource (Type) STATUS: reason`.
fn line(event: &StackEvent) -> String {
    let resource = event.logical_resource_id().unwrap_or("?");
    let kind = event.resource_type().unwrap_or("?");
    let status = event.resource_status().map(|s| s.as_str()).unwrap_or("?");
    match event.resource_status_reason().filter(|r| !r.is_empty()) {
        Some(reason) => format!("{resource} ({kind}) {status}: {}", crate::sdk_error::one_line(reason)),
        None => format!("{resource} ({kind}) {status}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use aws_sdk_cloudformation::types::ResourceStatus;

    #[test]
    fn an_event_is_one_line_with_its_reason() {
        let event = StackEvent::builder()
            .logical_resource_id("GatewayDatabase")
            .resource_type("AWS::RDS::DBInstance")
            .resource_status(ResourceStatus::CreateFailed)
            .resource_status_reason("Cannot find version 16.0\nfor postgres")
            .build();
        assert_eq!(
            line(&event),
            "GatewayDatabase (AWS::RDS::DBInstance) CREATE_FAILED: Cannot find version 16.0 for postgres"
        );
        let quiet = StackEvent::builder()
            .logical_resource_id("Vpc")
            .resource_type("AWS::EC2::VPC")
            .resource_status(ResourceStatus::CreateComplete)
            .build();
        assert_eq!(line(&quiet), "Vpc (AWS::EC2::VPC) CREATE_COMPLETE");
    }
}
