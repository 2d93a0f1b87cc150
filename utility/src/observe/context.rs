//! The W3C trace context (`traceparent`) of a span: written into what the span produces (an
//! outbox row, a message attribute), read back by whoever handles it, so that a saga is one
//! trace across the services and the bus. The spans themselves are `tracing` spans; the
//! subscriber that turns them into OpenTelemetry spans is installed by
//! [`crate::runtime::telemetry`].

use opentelemetry::trace::{SpanContext, TraceContextExt};
use tracing_opentelemetry::OpenTelemetrySpanExt;

/// The W3C `traceparent` of `span`, to send with what it produces (`None` when the span is
/// disabled or no tracing layer is installed).
pub fn traceparent(span: &tracing::Span) -> Option<String> {
    let context = span.context();
    let span_ref = context.span();
    let span_context = span_ref.span_context();
    span_context.is_valid().then(|| {
        format!(
            "00-{}-{}-{:02x}",
            span_context.trace_id(),
            span_context.span_id(),
            span_context.trace_flags().to_u8()
        )
    })
}

/// Makes the span that `traceparent` names the parent of `span`, which must not have been
/// entered yet. A malformed or absent value leaves `span` where it is (a new trace, or its
/// contextual parent).
pub fn set_parent(span: &tracing::Span, traceparent: Option<&str>) {
    let Some(remote) = traceparent.and_then(parse_traceparent) else {
        return;
    };
    let context = opentelemetry::Context::new().with_remote_span_context(remote);
    let _ = span.set_parent(context);
}

/// Starts `span`, which must not have been entered yet, in a trace of its own, with a link to the
/// span that `traceparent` names: where a caller is not trusted to choose the trace id and its
/// sampling (the public edge), its context is kept for correlation and nothing else. A malformed
/// or absent value adds no link.
pub fn link_caller(span: &tracing::Span, traceparent: Option<&str>) {
    let _ = span.set_parent(opentelemetry::Context::new());
    if let Some(remote) = traceparent.and_then(parse_traceparent) {
        span.add_link(remote);
    }
}

/// Reads a version-00 W3C `traceparent` (`00-<32 hex>-<16 hex>-<2 hex>`); all-zero ids are invalid.
pub fn parse_traceparent(value: &str) -> Option<SpanContext> {
    use opentelemetry::trace::{SpanId, TraceFlags, TraceId, TraceState};
    let mut parts = value.trim().split('-');
    let (version, trace, span, flags) = (parts.next()?, parts.next()?, parts.next()?, parts.next()?);
    let hex =
        |s: &str, len: usize| s.len() == len && s.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b));
    if parts.next().is_some() || version != "00" || !hex(trace, 32) || !hex(span, 16) || !hex(flags, 2) {
        return None;
    }
    let trace_id = TraceId::from_hex(trace).ok()?;
    let span_id = SpanId::from_hex(span).ok()?;
    let flags = TraceFlags::new(u8::from_str_radix(flags, 16).ok()?);
    let context = SpanContext::new(trace_id, span_id, flags, true, TraceState::default());
    context.is_valid().then_some(context)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn traceparent_is_read_as_w3c_says() {
        let good = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01";
        let context = parse_traceparent(good).expect("valid");
        assert_eq!(context.trace_id().to_string(), "0af7651916cd43dd8448eb211c80319c");
        assert_eq!(context.span_id().to_string(), "b7ad6b7169203331");
        assert!(context.is_sampled() && context.is_remote());
        for bad in [
            "",
            "01-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
            "00-00000000000000000000000000000000-b7ad6b7169203331-01",
            "00-0af7651916cd43dd8448eb211c80319c-0000000000000000-01",
            "00-0AF7651916CD43DD8448EB211C80319C-b7ad6b7169203331-01",
            "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01-extra",
            "00-0af7651916cd43dd8448eb211c8031-b7ad6b7169203331-01",
        ] {
            assert!(parse_traceparent(bad).is_none(), "{bad}");
        }
    }
}
