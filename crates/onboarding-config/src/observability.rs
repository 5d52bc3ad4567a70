//! `[observability]`: where processes without the gateway serve `/metrics` and `/healthz`, and
//! where traces go.

use std::fmt;
use std::net::SocketAddr;

use serde::Deserialize;

/// Where processes without the gateway (`relay`, `email-worker`, `scheduler`, `intake`,
/// `provisioner`) serve `/metrics` and `/healthz`, and the OTLP receiver spans are sent to. The
/// gateway always serves them on its own address.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ObservabilitySettings {
    pub metrics_bind: Option<SocketAddr>,
    /// An OpenTelemetry collector's OTLP/HTTP address (`http://collector:4318`); spans are posted
    /// to `<otlp_endpoint>/v1/traces`. Only a build with the `otlp` feature can send them.
    pub otlp_endpoint: Option<OtlpEndpoint>,
}

/// An `http://` or `https://` address with a host, without a trailing `/`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(try_from = "String")]
pub struct OtlpEndpoint(String);

impl OtlpEndpoint {
    /// The URL the spans are posted to: the endpoint followed by `/v1/traces`, as the OTLP/HTTP
    /// specification says for a base endpoint.
    pub fn traces_url(&self) -> String {
        format!("{}/v1/traces", self.0)
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl TryFrom<String> for OtlpEndpoint {
    type Error = String;

    fn try_from(url: String) -> Result<Self, String> {
        let rest = url
            .strip_prefix("https://")
            .or_else(|| url.strip_prefix("http://"));
        match rest {
            Some(rest) if !rest.is_empty() && !rest.starts_with('/') && !rest.contains(char::is_whitespace) => {
                Ok(Self(url.trim_end_matches('/').to_owned()))
            }
            _ => Err("must be an http:// or https:// address with a host, such as http://otel-collector:4318 (the OTLP/HTTP port)".to_owned()),
        }
    }
}

impl fmt::Display for OtlpEndpoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::OtlpEndpoint;

    #[test]
    fn an_otlp_endpoint_is_an_http_address_with_a_host() {
        let e = OtlpEndpoint::try_from("http://collector:4318/".to_owned()).unwrap();
        assert_eq!(e.traces_url(), "http://collector:4318/v1/traces");
        assert!(OtlpEndpoint::try_from("https://otel.example.com".to_owned()).is_ok());
        for bad in [
            "collector:4318",
            "http://",
            "grpc://collector:4317",
            "http:///x",
            "http://a b",
        ] {
            let err = OtlpEndpoint::try_from(bad.to_owned()).unwrap_err();
            assert!(err.contains("http://otel-collector:4318"), "{bad}: {err}");
        }
    }
}
