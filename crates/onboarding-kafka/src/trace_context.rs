//! The W3C trace context (`traceparent`, `tracestate`) in Kafka record headers, read and written
//! through the OpenTelemetry propagator the process installed. Only a build of `onboard` with
//! the `otlp` feature and an `observability.otlp_endpoint` installs one (docs/adr/0029); in any
//! other process these functions read and write nothing, and a span stays a plain `tracing`
//! span.

use opentelemetry::propagation::{Extractor, Injector};
use rdkafka::message::{Header, Headers, OwnedHeaders};
use tracing_opentelemetry::OpenTelemetrySpanExt;

/// A record's headers as the propagator reads them (text values only).
struct Reading<'a, H: Headers>(&'a H);

impl<H: Headers> Extractor for Reading<'_, H> {
    fn get(&self, key: &str) -> Option<&str> {
        self.0
            .iter()
            .find(|h| h.key == key)
            .and_then(|h| h.value)
            .and_then(|v| std::str::from_utf8(v).ok())
    }

    fn keys(&self) -> Vec<&str> {
        self.0.iter().map(|h| h.key).collect()
    }
}

/// What the propagator writes, to be added as headers.
#[derive(Default)]
struct Writing(Vec<(String, String)>);

impl Injector for Writing {
    fn set(&mut self, key: &str, value: String) {
        self.0.push((key.to_owned(), value));
    }
}

/// Makes `span` (the span of handling one record) a child of the trace the record's headers
/// carry, if they carry one, and returns it.
pub fn follow<H: Headers>(headers: Option<&H>, span: tracing::Span) -> tracing::Span {
    if let Some(headers) = headers {
        let parent =
            opentelemetry::global::get_text_map_propagator(|p| p.extract(&Reading(headers)));
        // Fails only when no OpenTelemetry layer runs, where there is nothing to follow.
        let _ = span.set_parent(parent);
    }
    span
}

/// `headers` with the trace context of `span` added (nothing without a propagator).
pub fn carry(span: &tracing::Span, headers: OwnedHeaders) -> OwnedHeaders {
    let mut writing = Writing::default();
    opentelemetry::global::get_text_map_propagator(|p| {
        p.inject_context(&span.context(), &mut writing)
    });
    writing.0.iter().fold(headers, |headers, (key, value)| {
        headers.insert(Header {
            key: key.as_str(),
            value: Some(value.as_str()),
        })
    })
}

#[cfg(test)]
mod tests {
    use rdkafka::message::{Header, Headers, OwnedHeaders};

    use super::{Extractor, Reading};

    #[test]
    fn the_propagator_reads_text_headers_by_name() {
        let headers = OwnedHeaders::new()
            .insert(Header {
                key: "traceparent",
                value: Some("00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"),
            })
            .insert(Header {
                key: "binary",
                value: Some(&[0xff_u8, 0xfe][..]),
            })
            .insert::<str>(Header {
                key: "empty",
                value: None,
            });
        let reading = Reading(&headers);
        assert_eq!(
            reading.get("traceparent"),
            Some("00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01")
        );
        assert_eq!(reading.get("binary"), None);
        assert_eq!(reading.get("empty"), None);
        assert_eq!(reading.get("tracestate"), None);
        assert_eq!(reading.keys(), vec!["traceparent", "binary", "empty"]);
        assert_eq!(headers.count(), 3);
    }
}
