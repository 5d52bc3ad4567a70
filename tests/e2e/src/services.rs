//! The services `tests/run` started for the whole run, found through its environment variables.

use std::path::PathBuf;

/// Where the services started by `tests/run` are.
pub struct Services {
    pub database_url: String,
    pub kafka: String,
    pub smtp_host: String,
    pub smtp_port: u16,
    pub maildev: String,
    pub onboard: PathBuf,
}

/// An environment variable `tests/run` sets.
pub(crate) fn var(name: &str) -> String {
    std::env::var(name).unwrap_or_else(|_| {
        panic!("{name} is not set: run the end-to-end tests with `tests/run`, which starts PostgreSQL, the Kafka broker and MailDev")
    })
}

impl Services {
    pub fn from_env() -> Self {
        Self {
            database_url: var("TEST_DATABASE_URL"),
            kafka: var("TEST_KAFKA_BOOTSTRAP"),
            smtp_host: var("TEST_SMTP_HOST"),
            smtp_port: var("TEST_SMTP_PORT")
                .parse()
                .expect("TEST_SMTP_PORT is a port"),
            maildev: var("TEST_MAILDEV_URL"),
            onboard: PathBuf::from(var("ONBOARD_BIN")),
        }
    }
}
