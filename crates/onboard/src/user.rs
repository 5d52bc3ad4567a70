//! `onboard user show|erase|export` and `onboard events`: one user, found by id or by name; the
//! store that the other commands open as well.

use anyhow::{bail, Context, Result};
use clap::Subcommand;
use onboarding_config::Settings;
use onboarding_domain::value::{UserDomain, Username};
use onboarding_store::Store;
use uuid::Uuid;

#[derive(Subcommand)]
pub enum UserCommand {
    /// Show a user's state as JSON (never a secret).
    Show {
        /// User id, or username (with --domain).
        user: String,
        #[arg(long, default_value = UserDomain::PRIMARY)]
        domain: String,
    },
    /// Erase a user's personal data (GDPR Art. 17): destroys her data key, her credential and the
    /// projections' personal columns, records UserErased; the provisioner removes her user store
    /// entry. Cannot be undone.
    Erase {
        /// User id, or username (with --domain).
        user: String,
        #[arg(long, default_value = UserDomain::PRIMARY)]
        domain: String,
    },
    /// Write everything the engine holds about a user as JSON (GDPR Art. 15), to stdout.
    Export {
        /// User id, or username (with --domain).
        user: String,
        #[arg(long, default_value = UserDomain::PRIMARY)]
        domain: String,
    },
}

#[derive(clap::Args)]
pub struct EventsArgs {
    /// User id, or username (with --domain).
    user: String,
    #[arg(long, default_value = UserDomain::PRIMARY)]
    domain: String,
}

pub async fn run(settings: &Settings, command: UserCommand) -> Result<()> {
    match command {
        UserCommand::Show { user, domain } => {
            let store = store(settings).await?;
            let id = resolve(&store, &user, &domain).await?;
            let account = store
                .load(id)
                .await?
                .with_context(|| format!("no user with id {id}"))?;
            println!(
                "{}",
                serde_json::to_string_pretty(&onboarding_gateway::user_view(
                    &account,
                    chrono::Utc::now()
                ))?
            );
            Ok(())
        }
        UserCommand::Erase { user, domain } => {
            let store = store(settings).await?;
            let id = resolve(&store, &user, &domain).await?;
            let erasure = store
                .erase(id, &onboarding_store::Actor::system("cli"))
                .await
                .with_context(|| format!("cannot erase user {id}"))?;
            if erasure.events_in_clear > 0 {
                eprintln!(
                    "note: {} of her events were written before personal data was sealed and \
                     keep it in clear in the append-only log (docs/adr/0030)",
                    erasure.events_in_clear
                );
            }
            let account = store
                .load(id)
                .await?
                .with_context(|| format!("no user with id {id}"))?;
            let mut view = onboarding_gateway::user_view(&account, chrono::Utc::now());
            view["events_in_clear"] = serde_json::json!(erasure.events_in_clear);
            println!("{}", serde_json::to_string_pretty(&view)?);
            Ok(())
        }
        UserCommand::Export { user, domain } => {
            let store = store(settings).await?;
            let id = resolve(&store, &user, &domain).await?;
            let account = store
                .load(id)
                .await?
                .with_context(|| format!("no user with id {id}"))?;
            let mut export = store
                .export_of(id)
                .await?
                .with_context(|| format!("no user with id {id}"))?;
            export["user_id"] = serde_json::json!(id);
            export["exported_at"] = serde_json::json!(chrono::Utc::now());
            export["account"] = onboarding_gateway::user_view(&account, chrono::Utc::now());
            println!("{}", serde_json::to_string_pretty(&export)?);
            Ok(())
        }
    }
}

/// `onboard events`: one user's events, oldest first, as JSON lines (password hashes redacted).
pub async fn events(settings: &Settings, EventsArgs { user, domain }: EventsArgs) -> Result<()> {
    let store = store(settings).await?;
    let id = resolve(&store, &user, &domain).await?;
    for mut event in store.events_of(id).await? {
        if let Some(hash) = event.payload.pointer_mut("/PasswordSet/password_hash") {
            *hash = serde_json::Value::String("<redacted>".into());
        }
        println!("{}", serde_json::to_string(&event)?);
    }
    Ok(())
}

/// The event store the configuration names.
pub async fn store(settings: &Settings) -> Result<Store> {
    let pool = onboarding_store::connect(settings).await?;
    let services = onboarding_store::services(settings)?;
    let keys = onboarding_store::PersonalKeys::from_settings(settings)?;
    Ok(Store::new(pool, services, keys))
}

/// A user named on the command line: a user id, or a username in `domain`.
pub async fn resolve(store: &Store, user: &str, domain: &str) -> Result<Uuid> {
    if let Ok(id) = Uuid::parse_str(user) {
        return Ok(id);
    }
    let username = Username::parse(user).map_err(|e| anyhow::anyhow!(e.0))?;
    let domain = UserDomain::parse(domain).map_err(|e| anyhow::anyhow!(e.0))?;
    if let Some(id) = store
        .user_id_by_username(domain.as_str(), &username)
        .await?
    {
        return Ok(id);
    }
    // A revoked invitation gave its name back; it is still found by name while nobody holds it.
    match store
        .revoked_under(domain.as_str(), &username.key())
        .await?
        .as_slice()
    {
        [] => bail!("no user `{username}` in domain {domain}"),
        [id] => Ok(*id),
        several => bail!(
            "no live user `{username}` in domain {domain}, but {} revoked invitations were made under \
             that name; name one by its id: {}",
            several.len(),
            several
                .iter()
                .map(Uuid::to_string)
                .collect::<Vec<_>>()
                .join(", ")
        ),
    }
}
