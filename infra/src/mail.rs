//! The customer-api's sender identity on an emulator: SES refuses mail from an address it has not
//! verified, so the local topology (`sagactl deploy` on LocalStack, the tests' stacks) verifies
//! `MAIL_FROM` beside deploying the queues. On AWS, verifying an identity is the operator's step
//! (DEPLOY.md): it proves ownership of a real address or domain, which no deploy can do.

use aws_config::SdkConfig;
use thiserror::Error;

pub use utility::domain::DEFAULT_MAIL_FROM;

#[derive(Debug, Error)]
#[error("SES could not verify the sender identity `{address}` ({detail}); is `ses` among LocalStack's services?")]
pub struct VerifyError {
    pub address: String,
    pub detail: String,
}

/// Verifies `address` as a sender identity (SES v1 `VerifyEmailIdentity`: LocalStack's community
/// edition emulates SES v1 only, and verifies at once). Doing it again is harmless.
pub async fn verify_sender(sdk: &SdkConfig, address: &str) -> Result<(), VerifyError> {
    aws_sdk_ses::Client::new(sdk)
        .verify_email_identity()
        .email_address(address)
        .send()
        .await
        .map(|_| ())
        .map_err(|err| VerifyError {
            address: address.to_owned(),
            detail: crate::sdk_error::describe(&err),
        })
}
