//! librdkafka errors made safe to show: its configuration errors repeat the value of the
//! property they refuse, which may be a password.

use rdkafka::error::KafkaError;

/// A Kafka client error that can be shown and logged: a configuration error keeps the property
/// and librdkafka's description but drops the value; any other error is kept whole as the cause.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// librdkafka refused a property of the client configuration.
    #[error("kafka client configuration: {description} (property `{property}`)")]
    Configuration {
        /// The refused property's name, so the operator knows which line to fix.
        property: String,
        /// librdkafka's reason (it does not repeat the value).
        description: String,
    },
    /// Any other client error; it carries no configuration value.
    #[error(transparent)]
    Kafka(KafkaError),
}

impl From<KafkaError> for ClientError {
    fn from(e: KafkaError) -> Self {
        match e {
            KafkaError::ClientConfig(_, description, property, _value) => Self::Configuration {
                property,
                description,
            },
            other => Self::Kafka(other),
        }
    }
}

/// A client error as text, without the property value librdkafka's configuration errors repeat:
/// for callers that report errors as strings (the gateway's start-up error).
pub fn redact(e: &KafkaError) -> String {
    ClientError::from(e.clone()).to_string()
}
