//! A bus on the emulator the tests run against (LocalStack, or moto), whatever credentials and
//! region the environment holds: tests and test tools only, never for AWS.

use aws_config::BehaviorVersion;
use aws_sdk_sqs::types::QueueAttributeName;
use utility::messaging::bus::Bus;

/// `AWS_ENDPOINT_URL`, else LocalStack's default address.
pub fn emulator_endpoint() -> String {
    std::env::var("AWS_ENDPOINT_URL").unwrap_or_else(|_| "http://127.0.0.1:4566".to_owned())
}

/// A bus on the emulator at [`emulator_endpoint`].
pub async fn bus() -> Bus {
    bus_at(&emulator_endpoint()).await
}

/// A bus on the emulator at `endpoint`, with its dummy credentials and `us-east-1`.
pub async fn bus_at(endpoint: &str) -> Bus {
    let sdk = aws_config::defaults(BehaviorVersion::latest())
        .endpoint_url(endpoint)
        .region(aws_config::Region::new("us-east-1"))
        .test_credentials()
        .load()
        .await;
    Bus::new(&sdk)
}

/// A queue of one test's own on the emulator.
#[derive(Debug, Clone)]
pub struct ScratchQueue {
    pub url: String,
    pub arn: String,
}

/// Creates a queue named `<label>-<random>` (so no test meets another's messages) with the
/// attributes given, and reads back its ARN (for a subscription or a redrive policy). Panics on
/// failure: tests only.
pub async fn scratch_queue(bus: &Bus, label: &str, attributes: &[(QueueAttributeName, String)]) -> ScratchQueue {
    let name = format!("{label}-{}", uuid::Uuid::new_v4().simple());
    let mut create = bus.sqs().create_queue().queue_name(&name);
    for (key, value) in attributes {
        create = create.attributes(key.clone(), value);
    }
    let url = create
        .send()
        .await
        .unwrap_or_else(|e| panic!("create queue {name}: {e:?}"))
        .queue_url
        .expect("a created queue has a URL");
    let arn = bus
        .queue_arn(&url)
        .await
        .unwrap_or_else(|e| panic!("attributes of {name}: {e}"))
        .expect("a queue has an ARN");
    ScratchQueue { url, arn }
}
