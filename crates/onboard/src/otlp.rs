//! The OpenTelemetry trace exporter (the `otlp` feature): spans of the `tracing` spans the roles
//! open (a gateway request, a relay publish, an email worker's or provisioner's record), sent
//! over OTLP/HTTP in protobuf to `observability.otlp_endpoint`, and the W3C trace context
//! propagator that carries a trace from the gateway through PostgreSQL and Kafka to the
//! consumers (docs/adr/0027).

use std::time::Duration;

use anyhow::{Context, Result};
use onboarding_config::OtlpEndpoint;
use opentelemetry::trace::TracerProvider as _;
use opentelemetry_otlp::{Protocol, WithExportConfig};
use opentelemetry_sdk::propagation::TraceContextPropagator;
use opentelemetry_sdk::trace::{SdkTracer, SdkTracerProvider};
use opentelemetry_sdk::Resource;

/// How long one export may take; spans that cannot be sent are dropped, never retried forever.
const EXPORT_TIMEOUT: Duration = Duration::from_secs(10);

/// The tracer provider; [`Exporter::shutdown`] sends what is still buffered.
pub struct Exporter {
    provider: SdkTracerProvider,
}

impl Exporter {
    /// A batch exporter to `endpoint`, the spans' `service.name` being `service`, and the trace
    /// context propagator installed for the whole process.
    pub fn start(endpoint: &OtlpEndpoint, service: &str) -> Result<(Self, SdkTracer)> {
        let exporter = opentelemetry_otlp::SpanExporter::builder()
            .with_http()
            .with_protocol(Protocol::HttpBinary)
            .with_endpoint(endpoint.traces_url())
            .with_timeout(EXPORT_TIMEOUT)
            .build()
            .with_context(|| format!("observability.otlp_endpoint ({endpoint})"))?;
        let provider = SdkTracerProvider::builder()
            .with_batch_exporter(exporter)
            .with_resource(
                Resource::builder()
                    .with_service_name(service.to_owned())
                    .build(),
            )
            .build();
        opentelemetry::global::set_text_map_propagator(TraceContextPropagator::new());
        let tracer = provider.tracer("onboard");
        Ok((Self { provider }, tracer))
    }

    /// Sends the spans still buffered (waits up to the export timeout).
    pub fn shutdown(self) {
        if let Err(e) = self.provider.shutdown() {
            eprintln!("warning: the last spans were not sent to the OTLP endpoint: {e}");
        }
    }
}
