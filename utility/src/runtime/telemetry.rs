//! Structured logs and traces through `tracing`.
//!
//! - Logs: readable lines for a terminal, or one flat JSON object per line (`LOG_FORMAT=json`)
//!   that carries the `trace_id` and `span_id` of the request or message it was written in,
//!   beside the fields of the spans around it (`correlation_id`, `enrollment_id`, ...).
//!   `RUST_LOG` overrides the default filter.
//! - Traces: every `tracing` span is also an OpenTelemetry span ([`tracing_opentelemetry`]), so
//!   trace and span ids exist for the logs whether or not anything is exported. Spans are
//!   exported over OTLP/HTTP only when the standard variables ask for it
//!   (`OTEL_EXPORTER_OTLP_ENDPOINT` or `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`; the other `OTEL_*`
//!   variables, such as `OTEL_EXPORTER_OTLP_PROTOCOL`, `OTEL_EXPORTER_OTLP_HEADERS`,
//!   `OTEL_TRACES_SAMPLER`, `OTEL_SERVICE_NAME` and `OTEL_BSP_SCHEDULE_DELAY`, are read by the
//!   SDK). Unset, nothing is sent and no exporter thread runs. `OTEL_SDK_DISABLED=true` turns
//!   the export off even when an endpoint is set.
//! - Across the bus, the W3C trace context travels as `traceparent`
//!   ([`crate::observe::context`]), so one enrollment is one trace over the three services.

use opentelemetry::trace::{TraceContextExt, TracerProvider as _};
use opentelemetry_sdk::trace::SdkTracerProvider;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use std::fmt;
use tracing::field::{Field, Visit};
use tracing::{Event, Subscriber};
use tracing_subscriber::fmt::format::Writer;
use tracing_subscriber::fmt::{FmtContext, FormatEvent, FormatFields, FormattedFields};
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::registry::LookupSpan;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{EnvFilter, Layer};

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// One compact line per event, for `make up` and development.
    #[default]
    Text,
    /// One JSON object per line with span fields flattened in, for journald and log shippers.
    Json,
}

const DEFAULT_FILTER: &str =
    "info,aws_config=warn,aws_smithy_runtime=warn,aws_sdk_sqs=warn,aws_sdk_sns=warn,sqlx=warn,tower_http=info";

/// Which spans become trace spans: this project's INFO spans (requests, messages, publishes,
/// outbox writes), not the SDKs' and drivers' internals, nor the DEBUG spans of idle polling.
const TRACE_FILTER: &str = "info,aws_config=off,aws_smithy_runtime=off,aws_smithy_runtime_api=off,aws_sdk_sqs=off,\
     aws_sdk_sns=off,aws_sdk_cloudformation=off,sqlx=off,hyper=off,hyper_util=off,h2=off,reqwest=off,tower=off,\
     tower_http=off";

/// What [`init`] set up; [`Telemetry::shutdown`] exports the spans still buffered.
#[must_use = "call shutdown() before the process exits, or buffered spans are lost"]
pub struct Telemetry {
    provider: Option<SdkTracerProvider>,
}

impl Telemetry {
    /// Exports what is buffered and stops the exporter (at most the SDK's export timeout).
    pub fn shutdown(self) {
        if let Some(provider) = self.provider
            && let Err(err) = provider.shutdown()
        {
            eprintln!("telemetry: exporting the last spans failed: {err}");
        }
    }
}

/// Whether the standard variables ask for spans to be exported.
fn export_requested() -> bool {
    let set = |name: &str| std::env::var(name).is_ok_and(|v| !v.trim().is_empty());
    let disabled = std::env::var("OTEL_SDK_DISABLED").is_ok_and(|v| v.trim().eq_ignore_ascii_case("true"));
    let exporter_none = std::env::var("OTEL_TRACES_EXPORTER").is_ok_and(|v| v.trim().eq_ignore_ascii_case("none"));
    !disabled && !exporter_none && (set("OTEL_EXPORTER_OTLP_ENDPOINT") || set("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"))
}

fn tracer_provider(service: &'static str) -> SdkTracerProvider {
    let mut resource = opentelemetry_sdk::Resource::builder();
    if std::env::var("OTEL_SERVICE_NAME").is_err() {
        resource = resource.with_service_name(service);
    }
    let builder = SdkTracerProvider::builder().with_resource(resource.build());
    if !export_requested() {
        return builder.build();
    }
    match opentelemetry_otlp::SpanExporter::builder().with_http().build() {
        Ok(exporter) => builder.with_batch_exporter(exporter).build(),
        Err(err) => {
            eprintln!("telemetry: OTLP export is off, the exporter could not be built: {err}");
            builder.build()
        }
    }
}

/// Installs the global subscriber for `service` (its `service.name`). Safe to call more than
/// once (tests do): later calls change nothing and return an inert [`Telemetry`].
pub fn init(format: LogFormat, service: &'static str) -> Telemetry {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(DEFAULT_FILTER));
    // Colour only for a terminal: piped logs (make up, journald) stay plain text.
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stdout());
    let provider = tracer_provider(service);
    let tracer = provider.tracer(service);
    let traces = tracing_opentelemetry::layer()
        .with_tracer(tracer)
        .with_level(true)
        .with_location(false)
        .with_threads(false)
        .with_filter(EnvFilter::new(TRACE_FILTER));
    let logs = match format {
        LogFormat::Text => tracing_subscriber::fmt::layer().with_ansi(ansi).compact().boxed(),
        LogFormat::Json => tracing_subscriber::fmt::layer()
            .with_ansi(false)
            .fmt_fields(tracing_subscriber::fmt::format::JsonFields::new())
            .event_format(JsonLine)
            .boxed(),
    };
    let installed = tracing_subscriber::registry()
        .with(traces)
        .with(logs.with_filter(filter))
        .try_init()
        .is_ok();
    if !installed {
        let _ = provider.shutdown();
        return Telemetry { provider: None };
    }
    opentelemetry::global::set_text_map_propagator(opentelemetry_sdk::propagation::TraceContextPropagator::new());
    opentelemetry::global::set_tracer_provider(provider.clone());
    Telemetry {
        provider: Some(provider),
    }
}

/// One flat JSON object per event: `timestamp`, `level`, `target`, the event's fields (with
/// `message`), the fields of every span around it (innermost wins), and `trace_id`/`span_id` of
/// the span it happened in.
struct JsonLine;

impl<S, N> FormatEvent<S, N> for JsonLine
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    N: for<'a> FormatFields<'a> + 'static,
{
    fn format_event(&self, ctx: &FmtContext<'_, S, N>, mut writer: Writer<'_>, event: &Event<'_>) -> fmt::Result {
        let mut line = Map::new();
        line.insert(
            "timestamp".into(),
            Value::String(chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Micros, true)),
        );
        line.insert("level".into(), Value::String(event.metadata().level().to_string()));
        line.insert("target".into(), Value::String(event.metadata().target().to_owned()));
        // Span fields, outermost first, so an inner span's field of the same name wins.
        if let Some(scope) = ctx.event_scope() {
            for span in scope.from_root() {
                let extensions = span.extensions();
                if let Some(fields) = extensions.get::<FormattedFields<N>>()
                    && let Ok(Value::Object(map)) = serde_json::from_str::<Value>(&fields.fields)
                {
                    line.extend(map);
                }
            }
        }
        event.record(&mut JsonFields(&mut line));
        // The OpenTelemetry context is activated when a span is entered.
        let context = opentelemetry::Context::current();
        let span_ref = context.span();
        let span_context = span_ref.span_context();
        if span_context.is_valid() {
            line.insert("trace_id".into(), Value::String(span_context.trace_id().to_string()));
            line.insert("span_id".into(), Value::String(span_context.span_id().to_string()));
        }
        let text = serde_json::to_string(&line).map_err(|_| fmt::Error)?;
        writeln!(writer, "{text}")
    }
}

/// Collects an event's fields into the line.
struct JsonFields<'a>(&'a mut Map<String, Value>);

impl Visit for JsonFields<'_> {
    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        self.0
            .insert(field.name().to_owned(), Value::String(format!("{value:?}")));
    }
    fn record_str(&mut self, field: &Field, value: &str) {
        self.0.insert(field.name().to_owned(), Value::String(value.to_owned()));
    }
    fn record_i64(&mut self, field: &Field, value: i64) {
        self.0.insert(field.name().to_owned(), Value::from(value));
    }
    fn record_u64(&mut self, field: &Field, value: u64) {
        self.0.insert(field.name().to_owned(), Value::from(value));
    }
    fn record_f64(&mut self, field: &Field, value: f64) {
        self.0.insert(field.name().to_owned(), Value::from(value));
    }
    fn record_bool(&mut self, field: &Field, value: bool) {
        self.0.insert(field.name().to_owned(), Value::from(value));
    }
}
