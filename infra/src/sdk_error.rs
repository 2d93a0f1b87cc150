//! AWS SDK errors as one readable line. The SDK's own `DisplayErrorContext` appends the raw
//! response (headers, body, extensions), several kilobytes per error; an operator needs the
//! service's code and message, or for a failure before any answer, the chain of causes.

use aws_sdk_cloudformation::error::{ProvideErrorMetadata, SdkError};
use std::error::Error;
use utility::error::chain;

/// `Code: message` for an error the service answered, else the causes joined by `: `.
pub fn describe<E, R>(err: &SdkError<E, R>) -> String
where
    E: ProvideErrorMetadata + Error + 'static,
    R: std::fmt::Debug + 'static,
{
    let text = match err {
        SdkError::ServiceError(service) => {
            let e = service.err();
            match (e.code(), e.message()) {
                (Some(code), Some(message)) => format!("{code}: {message}"),
                (Some(code), None) => code.to_owned(),
                _ => chain(e),
            }
        }
        other => chain(other),
    };
    one_line(&text)
}

pub fn one_line(text: &str) -> String {
    text.split_whitespace().collect::<Vec<_>>().join(" ")
}

#[cfg(test)]
mod tests {
    use super::*;
    use aws_sdk_cloudformation::error::ErrorMetadata;
    use aws_sdk_cloudformation::operation::delete_stack::DeleteStackError;

    #[test]
    fn a_service_error_is_its_code_and_message_on_one_line() {
        let meta = ErrorMetadata::builder()
            .code("DependencyViolation")
            .message("resource sg-1 has a dependent object\n(see the VPC)")
            .build();
        let err: SdkError<DeleteStackError, ()> = SdkError::service_error(DeleteStackError::generic(meta), ());
        assert_eq!(
            describe(&err),
            "DependencyViolation: resource sg-1 has a dependent object (see the VPC)"
        );
    }

    #[test]
    fn a_failure_before_any_answer_is_its_chain_of_causes() {
        let io = std::io::Error::new(std::io::ErrorKind::ConnectionRefused, "connection refused");
        let err: SdkError<DeleteStackError, ()> = SdkError::construction_failure(io);
        let text = describe(&err);
        assert!(text.contains("connection refused"), "{text}");
        assert!(!text.contains('\n'));
    }
}
