//! A bus on the emulator the tests run against (LocalStack, or moto), whatever credentials and
//! region the environment holds: tests and test tools only, never for AWS.

use aws_config::BehaviorVersion;
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
