//! Mail templates: files per locale (subject, text, HTML), chosen by the user's locale with
//! fallback (`pt-BR` → `pt` → the default locale). Each render says which template, version
//! (a digest of the files) and locale it used, so the send can be recorded with them.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use minijinja::Environment;
use onboarding_domain::TemplateRef;
use sha2::{Digest, Sha256};

/// The mails the engine sends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Invitation,
    Welcome,
}

impl Kind {
    pub const ALL: [Kind; 2] = [Kind::Invitation, Kind::Welcome];

    pub fn id(self) -> &'static str {
        match self {
            Kind::Invitation => "invitation",
            Kind::Welcome => "welcome",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|k| k.id() == s)
    }
}

const PARTS: [&str; 3] = ["subject.txt", "txt", "html"];

/// Built into the binary; a `templates_dir` replaces them.
const BUILTIN: &[(&str, &str, &str)] = &[
    (
        "en",
        "invitation.subject.txt",
        include_str!("../templates/en/invitation.subject.txt"),
    ),
    (
        "en",
        "invitation.txt",
        include_str!("../templates/en/invitation.txt"),
    ),
    (
        "en",
        "invitation.html",
        include_str!("../templates/en/invitation.html"),
    ),
    (
        "en",
        "welcome.subject.txt",
        include_str!("../templates/en/welcome.subject.txt"),
    ),
    (
        "en",
        "welcome.txt",
        include_str!("../templates/en/welcome.txt"),
    ),
    (
        "en",
        "welcome.html",
        include_str!("../templates/en/welcome.html"),
    ),
    (
        "de",
        "invitation.subject.txt",
        include_str!("../templates/de/invitation.subject.txt"),
    ),
    (
        "de",
        "invitation.txt",
        include_str!("../templates/de/invitation.txt"),
    ),
    (
        "de",
        "invitation.html",
        include_str!("../templates/de/invitation.html"),
    ),
    (
        "de",
        "welcome.subject.txt",
        include_str!("../templates/de/welcome.subject.txt"),
    ),
    (
        "de",
        "welcome.txt",
        include_str!("../templates/de/welcome.txt"),
    ),
    (
        "de",
        "welcome.html",
        include_str!("../templates/de/welcome.html"),
    ),
];

/// Why the templates cannot be used; the message names the file and the cause.
#[derive(Debug, thiserror::Error)]
pub enum TemplateError {
    #[error("templates: cannot read {}: {source}", dir.display())]
    ReadDir {
        dir: PathBuf,
        source: std::io::Error,
    },
    #[error("templates: {}: {source}; every locale needs all six files", path.display())]
    ReadFile {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("templates: {name}: {source}")]
    Parse {
        name: String,
        source: minijinja::Error,
    },
    #[error("templates: no templates for the default locale `{0}`; add {0}/ or change output_adapter.email.default_locale")]
    NoDefaultLocale(String),
}

pub struct Rendered {
    pub subject: String,
    pub text: String,
    pub html: String,
    pub template: TemplateRef,
}

pub struct Catalogue {
    env: Environment<'static>,
    /// Version of each (kind, locale): the first 12 hex digits of SHA-256 over its files.
    versions: BTreeMap<(String, String), String>,
    default_locale: String,
}

impl Catalogue {
    /// The built-in templates, or those in `dir`. Every locale must have every file; the
    /// default locale must exist; each template must parse.
    pub fn load(
        dir: Option<&Path>,
        default_locale: &str,
        subject_override: Option<&str>,
    ) -> Result<Self, TemplateError> {
        let mut files: Vec<(String, String, String)> = Vec::new();
        match dir {
            None => files.extend(
                BUILTIN
                    .iter()
                    .map(|(l, n, t)| (l.to_string(), n.to_string(), t.to_string())),
            ),
            Some(dir) => {
                let entries = std::fs::read_dir(dir).map_err(|source| TemplateError::ReadDir {
                    dir: dir.to_owned(),
                    source,
                })?;
                for entry in entries.flatten() {
                    if !entry.path().is_dir() {
                        continue;
                    }
                    let locale = entry.file_name().to_string_lossy().into_owned();
                    for kind in Kind::ALL {
                        for part in PARTS {
                            let name = format!("{}.{part}", kind.id());
                            let path = entry.path().join(&name);
                            let text = std::fs::read_to_string(&path)
                                .map_err(|source| TemplateError::ReadFile { path, source })?;
                            files.push((locale.clone(), name, text));
                        }
                    }
                }
            }
        }
        let mut env = Environment::new();
        let mut hashes: BTreeMap<(String, String), Sha256> = BTreeMap::new();
        for (locale, name, text) in files {
            let kind = name.split('.').next().unwrap_or_default().to_owned();
            let text = match (subject_override, name.as_str()) {
                (Some(subject), "invitation.subject.txt") => subject.to_owned(),
                _ => text,
            };
            hashes
                .entry((kind, locale.clone()))
                .or_default()
                .update(text.as_bytes());
            // Only `.html` names turn on HTML escaping in minijinja.
            let name = format!("{locale}/{name}");
            env.add_template_owned(name.clone(), text)
                .map_err(|source| TemplateError::Parse { name, source })?;
        }
        let versions: BTreeMap<_, _> = hashes
            .into_iter()
            .map(|(k, h)| (k, hex::encode(h.finalize())[..12].to_owned()))
            .collect();
        if !versions.contains_key(&("invitation".to_owned(), default_locale.to_owned())) {
            return Err(TemplateError::NoDefaultLocale(default_locale.to_owned()));
        }
        Ok(Self {
            env,
            versions,
            default_locale: default_locale.to_owned(),
        })
    }

    /// The best locale for a request: exact tag, then its language, then the default.
    pub fn resolve(&self, kind: Kind, requested: Option<&str>) -> String {
        // Language tags compare without regard to case (BCP 47).
        let find = |l: &str| {
            self.versions
                .keys()
                .find(|(k, loc)| k == kind.id() && loc.eq_ignore_ascii_case(l))
                .map(|(_, loc)| loc.clone())
        };
        requested
            .and_then(|req| find(req).or_else(|| req.split(['-', '_']).next().and_then(find)))
            .unwrap_or_else(|| self.default_locale.clone())
    }

    pub fn render(
        &self,
        kind: Kind,
        requested: Option<&str>,
        ctx: minijinja::Value,
    ) -> Result<Rendered, minijinja::Error> {
        let locale = self.resolve(kind, requested);
        let get = |part: &str| {
            self.env
                .get_template(&format!("{locale}/{}.{part}", kind.id()))
        };
        let subject = get("subject.txt")?.render(&ctx)?.trim().to_owned();
        let ctx = minijinja::context! { subject => &subject, ..ctx };
        Ok(Rendered {
            text: get("txt")?.render(&ctx)?,
            html: get("html")?.render(&ctx)?,
            template: TemplateRef {
                id: kind.id().to_owned(),
                version: self.versions[&(kind.id().to_owned(), locale.clone())].clone(),
                locale,
            },
            subject,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn catalogue() -> Catalogue {
        Catalogue::load(None, "en", None).unwrap()
    }

    #[test]
    fn locales_fall_back_from_region_to_language_to_the_default() {
        let c = catalogue();
        assert_eq!(c.resolve(Kind::Invitation, Some("de-AT")), "de");
        assert_eq!(c.resolve(Kind::Invitation, Some("de")), "de");
        assert_eq!(c.resolve(Kind::Invitation, Some("DE-at")), "de");
        assert_eq!(c.resolve(Kind::Invitation, Some("pt-BR")), "en");
        assert_eq!(c.resolve(Kind::Invitation, None), "en");
    }

    #[test]
    fn a_render_records_template_version_and_locale_and_escapes_html() {
        let c = catalogue();
        let r = c
            .render(
                Kind::Invitation,
                Some("de-CH"),
                minijinja::context! { organisation => "Pickup", username => "<Jane>", link => "https://x/confirm?code=a&b", revoke_link => "https://x/revoke", expires_at_text => "morgen" },
            )
            .unwrap();
        assert_eq!(r.subject, "Pickup: Legen Sie Ihr Passwort fest");
        assert_eq!(
            (r.template.id.as_str(), r.template.locale.as_str()),
            ("invitation", "de")
        );
        assert_eq!(r.template.version.len(), 12);
        assert!(r.html.contains("&lt;Jane&gt;"), "HTML is escaped");
        assert!(r.text.contains("<Jane>"), "text is not");
    }

    #[test]
    fn a_template_dir_without_all_files_is_refused_by_name() {
        let dir = std::env::temp_dir().join(format!("onboard-tpl-{}", std::process::id()));
        std::fs::create_dir_all(dir.join("en")).unwrap();
        std::fs::write(dir.join("en/invitation.txt"), "hi").unwrap();
        let err = Catalogue::load(Some(&dir), "en", None)
            .err()
            .unwrap()
            .to_string();
        assert!(err.contains("invitation.subject.txt"), "{err}");
        std::fs::remove_dir_all(dir).unwrap();
    }
}
