//! Logs to standard error: the level from `ONBOARD_LOG`, the format from `--log-format`; with the
//! `otlp` feature and `observability.otlp_endpoint`, spans to an OpenTelemetry collector too.

use clap::ValueEnum;
use onboarding_config::ObservabilitySettings;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::Layer;

/// How a log line is written (`--log-format`, `ONBOARD_LOG_FORMAT`).
#[derive(Clone, Copy, ValueEnum)]
pub enum LogFormat {
    /// Human-readable lines, coloured on a terminal.
    Text,
    /// One JSON object per line.
    Json,
}

/// The levels without `ONBOARD_LOG`. warp's own lines about each request are left out: the
/// gateway writes one `request answered` line per request itself, in the request's span.
const DEFAULT_FILTER: &str = "info,sqlx=warn,rdkafka=warn,warp::filters::trace=off";

/// What must outlive the process's work: the span exporter, flushed by [`Telemetry::shutdown`].
pub struct Telemetry {
    #[cfg(feature = "otlp")]
    exporter: Option<crate::otlp::Exporter>,
}

impl Telemetry {
    /// Sends the spans still buffered, if any are exported.
    pub fn shutdown(self) {
        #[cfg(feature = "otlp")]
        if let Some(exporter) = self.exporter {
            exporter.shutdown();
        }
    }
}

/// Starts logging (and, with an OTLP endpoint, tracing) for the process; `service` names it in
/// the traces (`onboard-gateway`, …). A build without the `otlp` feature refuses an endpoint
/// rather than ignore it.
pub fn init(
    format: LogFormat,
    observability: &ObservabilitySettings,
    service: &str,
) -> anyhow::Result<Telemetry> {
    let filter = tracing_subscriber::EnvFilter::try_from_env("ONBOARD_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(DEFAULT_FILTER));
    let lines = tracing_subscriber::fmt::layer()
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_writer(std::io::stderr);
    let lines = match format {
        LogFormat::Json => lines.json().boxed(),
        LogFormat::Text => lines.boxed(),
    };
    // One filter for both: the spans a trace needs are at info, which ONBOARD_LOG must keep for
    // the engine's crates (the default does); the log lines inside spans become span events.
    let registry = tracing_subscriber::registry().with(filter).with(lines);
    #[cfg(feature = "otlp")]
    {
        let (exporter, layer) = match &observability.otlp_endpoint {
            Some(endpoint) => {
                let (exporter, tracer) = crate::otlp::Exporter::start(endpoint, service)?;
                let layer = tracing_opentelemetry::layer().with_tracer(tracer);
                (Some(exporter), Some(layer))
            }
            None => (None, None),
        };
        registry.with(layer).init();
        Ok(Telemetry { exporter })
    }
    #[cfg(not(feature = "otlp"))]
    {
        let _ = service;
        if let Some(endpoint) = &observability.otlp_endpoint {
            anyhow::bail!(
                "observability.otlp_endpoint is set ({endpoint}), but this build of onboard has no \
                 OTLP exporter: build it with `cargo build --release -p onboard --features otlp`, \
                 or remove the key"
            );
        }
        registry.init();
        Ok(Telemetry {})
    }
}

#[cfg(test)]
mod tests {
    use super::LogFormat;

    #[test]
    fn the_log_format_is_text_or_json() {
        let parse = crate::one_of::<LogFormat>("log format");
        assert!(matches!(parse("json"), Ok(LogFormat::Json)));
        assert!(matches!(parse("text"), Ok(LogFormat::Text)));
        assert_eq!(
            parse("xml").err().as_deref(),
            Some("unknown log format `xml`; use text or json")
        );
    }
}
