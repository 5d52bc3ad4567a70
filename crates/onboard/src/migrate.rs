//! `onboard migrate`: the database schema and the Kafka topics.

use anyhow::{Context, Result};
use onboarding_config::Settings;

#[derive(clap::Args)]
pub struct Args {
    /// Only the database; leave Kafka alone.
    #[arg(long)]
    skip_kafka: bool,
}

pub async fn run(settings: &Settings, Args { skip_kafka }: Args) -> Result<()> {
    let pool = onboarding_store::connect_for_maintenance(settings).await?;
    onboarding_store::migrate(&pool).await?;
    println!("database schema is up to date");
    if !skip_kafka {
        onboarding_kafka::create_event_topics(&settings.kafka)
            .await
            .with_context(|| {
                format!(
                    "cannot create Kafka topic `{}` on {}",
                    settings.kafka.topic, settings.kafka.bootstrap_servers
                )
            })?;
        println!("kafka topic `{}` is ready", settings.kafka.topic);
        onboarding_intake::create_topics(settings)
            .await
            .with_context(|| {
                format!(
                    "cannot create the intake topics on {}",
                    settings.kafka.bootstrap_servers
                )
            })?;
        println!(
            "kafka topics `{}`, `{}`, `{}` are ready",
            settings.intake.requests_topic,
            settings.intake.outcomes_topic,
            settings.intake.dead_letter_topic
        );
    }
    Ok(())
}
