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
    let keys = onboarding_store::PersonalKeys::from_settings(settings)?;
    let pool = onboarding_store::connect_for_maintenance(settings).await?;
    let keyed_registry_before = onboarding_store::keyed_registry_schema_applied(&pool).await?;
    onboarding_store::migrate(&pool).await?;
    println!("database schema is up to date");
    match keys.registry().keyed_by() {
        // This run brought the keyed registry: processes of the release before may still serve
        // and look names up in clear only, so the names in clear are keyed by a later run.
        Some(keyed_by) if !keyed_registry_before => {
            onboarding_store::check_registry_key(&pool, keys.registry())
                .await
                .context("cannot key the username registry")?;
            let left = onboarding_store::names_in_clear(&pool).await?;
            if left > 0 {
                println!(
                    "username registry: keyed by {keyed_by}; {left} name(s) in clear left for \
                     now: run `onboard migrate` again once every process runs this release, to \
                     key them (docs/adr/0035)"
                );
            } else {
                println!("username registry: keyed by {keyed_by}; 0 name(s) rewritten from clear");
            }
        }
        _ => report(
            &onboarding_store::key_the_registry(&pool, keys.registry())
                .await
                .context("cannot key the username registry")?,
        ),
    }
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

/// Says how the username registry keeps names after `onboard migrate` keyed its rows written
/// in clear (docs/adr/0035; safe while the engine runs).
fn report(keying: &onboarding_store::RegistryKeying) {
    match &keying.keyed_by {
        None => println!(
            "username registry: names in clear (no personal_data.key_encryption_key_file; \
             docs/adr/0035)"
        ),
        Some(key) => println!(
            "username registry: keyed by {key}; {} name(s) rewritten from clear",
            keying.rewritten
        ),
    }
    for twice in &keying.left_in_clear {
        eprintln!(
            "warning: accounts {} and {} hold the same name in domain {}; the row of {} stays \
             in clear, and the name stays held: revoke or erase the account that should not \
             have it, then run `onboard migrate` again",
            twice.holder, twice.user_id, twice.domain, twice.user_id
        );
    }
}
