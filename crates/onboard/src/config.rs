//! `onboard config check`: the configuration checked as the roles check it at start, without
//! connecting to anything, so that a file can be tested before it is deployed (tests/run checks
//! the Kubernetes ConfigMap of deploy/k8s/ with it).

use std::num::NonZeroU32;
use std::path::Path;

use anyhow::{Context, Result};
use clap::Subcommand;
use onboarding_config::Settings;
use onboarding_email_worker::Mailer;

#[derive(Subcommand)]
pub enum ConfigCommand {
    /// Check the file and the ONBOARD__ variables as every role checks them at start: the keys
    /// and values, the Kafka client properties, the password hashing and policy (and its common
    /// passwords file), the code keys, the key-encryption key, the admin tokens, the page texts and the mail templates.
    /// Connects to nothing. Exit status 0 when the configuration is valid.
    Check,
}

pub fn run(settings: &Settings, path: &Path, command: ConfigCommand) -> Result<()> {
    match command {
        ConfigCommand::Check => {
            // Loading the file and the Kafka properties were checked before any command ran.
            onboarding_store::services(settings).context("the store's settings")?;
            onboarding_store::PersonalKeys::from_settings(settings)
                .context("the personal data settings")?;
            onboarding_gateway::check_settings(settings).context("the gateway's settings")?;
            Mailer::new(
                &settings.output_adapter.email,
                &settings.organisation.name,
                NonZeroU32::MIN,
            )
            .context("the email worker's settings")?;
            println!(
                "configuration {} is valid (nothing was connected to: PostgreSQL, Kafka and the \
                 SMTP server are checked by /readyz and `onboard email test-send`)",
                path.display()
            );
            Ok(())
        }
    }
}
