//! `onboard email preview|test-send`: the mail templates rendered with sample values, and a
//! sample sent through the configured SMTP server.

use std::path::PathBuf;

use anyhow::{Context, Result};
use clap::{Subcommand, ValueEnum};
use onboarding_config::Settings;
use onboarding_domain::value::{Locale, TimeZone};
use onboarding_email_worker::templates::Rendered;
use onboarding_email_worker::{Invitation, Mailer};

#[derive(Subcommand)]
pub enum EmailCommand {
    /// Render a template (`invitation` or `welcome`) with sample values: subject, text and HTML.
    Preview {
        #[arg(value_parser = crate::one_of::<Template>("template"))]
        template: Template,
        #[arg(long)]
        locale: Option<String>,
        /// Show times in this IANA time zone (e.g. Europe/Berlin), as for a user invited with it.
        #[arg(long)]
        time_zone: Option<String>,
        /// Write the HTML part to this file instead of printing it.
        #[arg(long)]
        html_out: Option<PathBuf>,
    },
    /// Send a sample invitation mail to ADDRESS and print the SMTP server's answer.
    TestSend {
        address: String,
        #[arg(long)]
        locale: Option<String>,
    },
}

/// The mails there are templates for.
#[derive(Clone, Copy, ValueEnum)]
pub enum Template {
    Invitation,
    Welcome,
}

pub async fn run(settings: &Settings, command: EmailCommand) -> Result<()> {
    let mailer = Mailer::new(
        &settings.output_adapter.email,
        &settings.organisation.name,
        std::num::NonZeroU32::MIN,
    )?;
    match command {
        EmailCommand::Preview {
            template,
            locale,
            time_zone,
            html_out,
        } => {
            let time_zone = time_zone
                .as_deref()
                .map(TimeZone::parse)
                .transpose()
                .map_err(|e| anyhow::anyhow!("--time-zone: {}", e.0))?;
            let time_zone = time_zone.as_ref().map(|t| t.as_str());
            let r = sample(&mailer, template, locale_arg(locale)?.as_deref(), time_zone)?;
            println!(
                "template: {} version {} locale {}",
                r.template.id, r.template.version, r.template.locale
            );
            println!("subject: {}\n\n{}", r.subject, r.text);
            match html_out {
                Some(path) => {
                    std::fs::write(&path, &r.html)
                        .with_context(|| format!("cannot write {}", path.display()))?;
                    println!("(HTML part written to {})", path.display());
                }
                None => println!("--- HTML ---\n{}", r.html),
            }
            Ok(())
        }
        EmailCommand::TestSend { address, locale } => {
            let r = sample(
                &mailer,
                Template::Invitation,
                locale_arg(locale)?.as_deref(),
                None,
            )?;
            let accepted = mailer
                .send(&address, &r)
                .await
                .map_err(|e| anyhow::anyhow!("the SMTP server did not accept the mail: {e}"))?;
            println!(
                "accepted: {} (Message-ID {})",
                accepted.smtp_response, accepted.message_id
            );
            Ok(())
        }
    }
}

/// The template rendered with sample values (Jane, links that do not work, 24 hours to go).
fn sample(
    mailer: &Mailer,
    template: Template,
    locale: Option<&str>,
    time_zone: Option<&str>,
) -> Result<Rendered> {
    let expires = chrono::Utc::now() + chrono::Duration::hours(24);
    let rendered = match template {
        Template::Invitation => mailer.render(&Invitation {
            to: "jane@pickup.example",
            username: "Jane",
            link: "https://id.example/confirm?code=SAMPLE",
            revoke_link: "https://id.example/revoke?code=SAMPLE",
            locale,
            time_zone,
            expires_at: expires,
        }),
        Template::Welcome => mailer.render_welcome("Jane", chrono::Utc::now(), locale, time_zone),
    };
    rendered.context("the template does not render")
}

fn locale_arg(locale: Option<String>) -> Result<Option<String>> {
    locale
        .map(|l| Locale::parse(&l).map(|l| l.as_str().to_owned()))
        .transpose()
        .map_err(|e| anyhow::anyhow!("--locale: {}", e.0))
}

#[cfg(test)]
mod tests {
    use clap::ValueEnum;
    use onboarding_email_worker::templates::Kind;

    use super::Template;

    #[test]
    fn the_templates_the_cli_names_are_the_catalogues() {
        let names: Vec<String> = Template::value_variants()
            .iter()
            .filter_map(|t| t.to_possible_value())
            .map(|v| v.get_name().to_owned())
            .collect();
        let ids: Vec<&str> = Kind::ALL.iter().map(|k| k.id()).collect();
        assert_eq!(names, ids);
    }

    #[test]
    fn an_unknown_template_is_refused_with_the_ones_there_are() {
        let parse = crate::one_of::<Template>("template");
        assert!(matches!(parse("welcome"), Ok(Template::Welcome)));
        assert_eq!(
            parse("nonsense").err().as_deref(),
            Some("unknown template `nonsense`; use invitation or welcome")
        );
    }
}
