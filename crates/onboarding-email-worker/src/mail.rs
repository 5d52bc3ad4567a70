//! Rendering and sending the invitation mail.

use std::num::NonZeroU32;
use std::time::Duration;

use chrono::{DateTime, Utc};
use lettre::address::Envelope;
use lettre::message::{Mailbox, MultiPart};
use lettre::transport::smtp::authentication::Credentials;
use lettre::transport::smtp::client::{Certificate, Tls, TlsParameters};
use lettre::transport::smtp::extension::ClientId;
use lettre::Message;
use minijinja::context;

use onboarding_domain::display::format_instant;

use crate::smtp::{Pool, Server, SmtpError};
use crate::templates::{Catalogue, Kind, Rendered};
use onboarding_config::EmailSettings;
use secrecy::ExposeSecret;
use uuid::Uuid;

/// What made a mail or the mailer's setup fail, kept as the error's source.
pub type Cause = Box<dyn std::error::Error + Send + Sync + 'static>;

/// Why a mail was not sent. The message (stored as the reason on the mail's failure event)
/// starts with `transient` or `permanent` and names the cause's message too.
#[derive(Debug, thiserror::Error)]
pub enum MailError {
    /// Worth retrying: 4xx, timeouts, connection refused.
    #[error("transient: {0}")]
    Transient(#[source] SmtpError),
    /// Retrying cannot help: 5xx.
    #[error("permanent: {0}")]
    Permanent(#[source] SmtpError),
    /// Retrying cannot help: the mail cannot be addressed or built; `what` says which part.
    #[error("permanent: {what}")]
    Unsendable {
        what: String,
        #[source]
        source: Option<Cause>,
    },
}

impl MailError {
    pub fn is_permanent(&self) -> bool {
        !matches!(self, Self::Transient(_))
    }

    fn unsendable(what: String, source: impl Into<Cause>) -> Self {
        Self::Unsendable {
            what,
            source: Some(source.into()),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum SetupError {
    /// A setting of `[output_adapter.email]` cannot be used; `what` names it and why.
    #[error("output_adapter.email: {what}")]
    Email {
        what: String,
        #[source]
        source: Cause,
    },
    #[error(transparent)]
    Template(#[from] crate::templates::TemplateError),
}

impl SetupError {
    fn email(what: String, source: impl Into<Cause>) -> Self {
        Self::Email {
            what,
            source: source.into(),
        }
    }
}

/// The recipient as it goes on the wire: the domain in its ASCII form (punycode: `bücher.example`
/// becomes `xn--bcher-kva.example`), which every server accepts; the local part as given (quoted
/// local parts keep their quotes; a non-ASCII one is sent with SMTPUTF8).
pub fn recipient(to: &str) -> Result<Mailbox, MailError> {
    let refused = |why: &str| MailError::Unsendable {
        what: format!("recipient address refused: {why}"),
        source: None,
    };
    let (local, domain) = to.rsplit_once('@').ok_or_else(|| refused("no @"))?;
    let domain = if domain.starts_with('[') {
        domain.to_owned()
    } else {
        idna::domain_to_ascii(domain)
            .map_err(|_| refused("the domain is not a valid internationalised name"))?
    };
    let address = lettre::Address::new(local, domain)
        .map_err(|e| MailError::unsendable(format!("recipient address refused: {e}"), e))?;
    Ok(Mailbox::new(None, address))
}

/// What goes into one invitation mail.
pub struct Invitation<'a> {
    pub to: &'a str,
    pub username: &'a str,
    pub link: &'a str,
    /// "I didn't expect this": declines the invitation.
    pub revoke_link: &'a str,
    /// The user's locale, if the invitation has one.
    pub locale: Option<&'a str>,
    /// The user's IANA time zone, if the invitation has one: the expiry is shown in it.
    pub time_zone: Option<&'a str>,
    pub expires_at: DateTime<Utc>,
}

pub struct Mailer {
    transport: Pool,
    templates: Catalogue,
    from: Mailbox,
    /// MAIL FROM: where bounces go.
    envelope_from: lettre::Address,
    reply_to: Option<Mailbox>,
    message_id_domain: String,
    organisation: String,
}

/// The result of a send the SMTP server accepted.
pub struct Accepted {
    pub message_id: String,
    pub smtp_response: String,
}

impl Mailer {
    /// A mailer keeping at most `connections` SMTP connections open.
    pub fn new(
        settings: &EmailSettings,
        organisation: &str,
        connections: NonZeroU32,
    ) -> Result<Self, SetupError> {
        let host = settings.hostname.as_str();
        let tls_parameters = || -> Result<TlsParameters, SetupError> {
            let mut params = TlsParameters::builder(host.to_owned());
            if let Some(path) = &settings.ca_file {
                let pem = std::fs::read(path).map_err(|e| {
                    SetupError::email(
                        format!("ca_file {}: cannot read it: {e}", path.display()),
                        e,
                    )
                })?;
                let cert = Certificate::from_pem(&pem).map_err(|e| {
                    SetupError::email(format!(
                        "ca_file {} holds no PEM certificate ({e}); give the CA's certificate in PEM form",
                        path.display()
                    ), e)
                })?;
                params = params.add_root_certificate(cert);
            }
            params
                .build()
                .map_err(|e| SetupError::email(format!("TLS setup: {e}"), e))
        };
        let tls = if settings.enable_tls {
            Tls::Wrapper(tls_parameters()?)
        } else if settings.enable_start_tls {
            Tls::Required(tls_parameters()?)
        } else if settings.opportunistic_start_tls {
            Tls::Opportunistic(tls_parameters()?)
        } else {
            Tls::None
        };
        let message_id_domain = settings.message_id_domain();
        let server = Server {
            host: host.to_owned(),
            port: settings.port,
            tls,
            hello_name: ClientId::Domain(
                settings
                    .hello_name
                    .clone()
                    .unwrap_or_else(|| message_id_domain.clone()),
            ),
            credentials: settings.enable_authentication.then(|| {
                Credentials::new(
                    settings.username.clone(),
                    settings.password.expose_secret().to_owned(),
                )
            }),
            timeout: Duration::from_secs(settings.timeout_seconds),
        };
        let address = settings
            .from_address
            .parse::<lettre::Address>()
            .map_err(|e| {
                SetupError::email(format!("from_address is not a valid address: {e}"), e)
            })?;
        let from = Mailbox::new(
            Some(settings.from_name.clone()).filter(|n| !n.is_empty()),
            address,
        );
        let envelope_from = match &settings.envelope_from {
            Some(a) => a.parse::<lettre::Address>().map_err(|e| {
                SetupError::email(format!("envelope_from is not a valid address: {e}"), e)
            })?,
            None => from.email.clone(),
        };
        let reply_to = settings
            .reply_to
            .as_deref()
            .map(|a| {
                a.parse::<Mailbox>().map_err(|e| {
                    SetupError::email(format!("reply_to is not a valid address: {e}"), e)
                })
            })
            .transpose()?;

        let templates = Catalogue::load(
            settings.templates_dir.as_deref(),
            &settings.default_locale,
            settings.invitation_subject.as_deref(),
        )?;

        Ok(Self {
            transport: Pool::new(server, connections.get()),
            templates,
            from,
            envelope_from,
            reply_to,
            message_id_domain,
            organisation: organisation.to_owned(),
        })
    }

    pub fn render(&self, inv: &Invitation<'_>) -> Result<Rendered, minijinja::Error> {
        let locale = self.templates.resolve(Kind::Invitation, inv.locale);
        self.templates.render(
            Kind::Invitation,
            inv.locale,
            context! {
                organisation => &self.organisation,
                username => inv.username,
                link => inv.link,
                revoke_link => inv.revoke_link,
                expires_at => inv.expires_at.to_rfc3339(),
                expires_at_text => format_instant(inv.expires_at, &locale, inv.time_zone),
            },
        )
    }

    pub fn render_welcome(
        &self,
        username: &str,
        activated_at: DateTime<Utc>,
        locale: Option<&str>,
        time_zone: Option<&str>,
    ) -> Result<Rendered, minijinja::Error> {
        let resolved = self.templates.resolve(Kind::Welcome, locale);
        self.templates.render(
            Kind::Welcome,
            locale,
            context! {
                organisation => &self.organisation,
                username,
                activated_at_text => format_instant(activated_at, &resolved, time_zone),
            },
        )
    }

    /// The Message-ID of the one mail meant for `seed` (e.g. `invitation/<code id>`): the same
    /// on every attempt, so a mail sent again after a crash between the SMTP server's acceptance
    /// and its record is the same message to the recipient's mail client, which shows it once.
    pub fn message_id_for(&self, seed: &str) -> String {
        use sha2::{Digest, Sha256};
        let digest = Sha256::digest(format!("onboard-mail/{seed}").as_bytes());
        format!(
            "<{}@{}>",
            hex::encode(&digest[..16]),
            self.message_id_domain
        )
    }

    /// Sends a one-off mail with a fresh Message-ID (`onboard email test-send`).
    pub async fn send(&self, to: &str, mail: &Rendered) -> Result<Accepted, MailError> {
        let message_id = format!("<{}@{}>", Uuid::new_v4(), self.message_id_domain);
        self.send_as(to, mail, message_id).await
    }

    /// Sends with the given Message-ID (see [`Mailer::message_id_for`]).
    pub async fn send_as(
        &self,
        to: &str,
        mail: &Rendered,
        message_id: String,
    ) -> Result<Accepted, MailError> {
        let to = recipient(to)?;
        // The envelope is set explicitly: the bounce address may differ from From, and lettre
        // cannot derive one from a To header with a quoted local part.
        let envelope = Envelope::new(Some(self.envelope_from.clone()), vec![to.email.clone()])
            .map_err(|e| MailError::unsendable(format!("cannot build the envelope: {e}"), e))?;
        let mut builder = Message::builder()
            .envelope(envelope)
            .from(self.from.clone())
            .to(to);
        if let Some(reply_to) = &self.reply_to {
            builder = builder.reply_to(reply_to.clone());
        }
        let message = builder
            .subject(mail.subject.clone())
            .message_id(Some(message_id.clone()))
            .multipart(MultiPart::alternative_plain_html(
                mail.text.clone(),
                mail.html.clone(),
            ))
            .map_err(|e| MailError::unsendable(format!("cannot build the message: {e}"), e))?;
        match self
            .transport
            .send(message.envelope(), &message.formatted())
            .await
        {
            Ok(response) => Ok(Accepted {
                message_id,
                smtp_response: format!(
                    "{} {}",
                    response.code(),
                    response.message().collect::<Vec<_>>().join(" ")
                ),
            }),
            Err(e) if e.is_permanent() => Err(MailError::Permanent(e)),
            Err(e) => Err(MailError::Transient(e)),
        }
    }

    /// Checks that the SMTP server answers (logged at start-up; sending retries anyway).
    pub async fn test_connection(&self) -> Result<bool, SmtpError> {
        self.transport.test_connection().await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn recipients_go_out_with_ascii_domains_and_their_local_part_as_given() {
        for (given, wire) in [
            ("jane@pickup.example", "jane@pickup.example"),
            ("ja$ne+x!y@pickup.example", "ja$ne+x!y@pickup.example"),
            ("o'brien@pickup.example", "o'brien@pickup.example"),
            ("\"john doe\"@pickup.example", "\"john doe\"@pickup.example"),
            ("joerg@bücher.example", "joerg@xn--bcher-kva.example"),
            ("jörg@BÜCHER.example", "jörg@xn--bcher-kva.example"),
        ] {
            let mailbox = recipient(given).unwrap_or_else(|e| panic!("{given}: {e}"));
            assert_eq!(mailbox.email.to_string(), wire);
        }
        for bad in [
            "no-at-sign",
            "john doe@pickup.example",
            "jane@bad_domain!.example",
        ] {
            assert!(recipient(bad).unwrap_err().is_permanent(), "{bad}");
        }
    }
}
