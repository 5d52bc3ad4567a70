//! The pages behind the mailed links, in the user's language: the invitation's locale when the
//! page belongs to an invitation, else the browser's `Accept-Language`, else English. The texts
//! are in `locales/<language>.toml`; the mails have their own templates in the email worker.

use std::collections::HashMap;

use onboarding_domain::password::{PasswordPolicy, PasswordRuleViolation};

/// A language the pages are written in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Lang {
    En,
    De,
}

impl Lang {
    /// The language's tag, for `<html lang>` and date formats.
    pub fn tag(self) -> &'static str {
        match self {
            Self::En => "en",
            Self::De => "de",
        }
    }

    /// The language of a tag such as `de-AT` or `en_GB`, if the pages have it.
    fn of_tag(tag: &str) -> Option<Self> {
        match tag
            .trim()
            .split(['-', '_'])
            .next()?
            .to_ascii_lowercase()
            .as_str()
        {
            "en" => Some(Self::En),
            "de" => Some(Self::De),
            _ => None,
        }
    }

    /// The invitation's locale wins (the mails were in it); else the most preferred language of
    /// `Accept-Language` that the pages have; else English.
    pub fn choose(locale: Option<&str>, accept_language: Option<&str>) -> Self {
        locale
            .and_then(Self::of_tag)
            .or_else(|| accept_language.and_then(Self::preferred))
            .unwrap_or(Self::En)
    }

    /// `de-AT,de;q=0.9,en;q=0.8` → German. Ranges with `q=0` are refused ones.
    fn preferred(header: &str) -> Option<Self> {
        let mut ranked: Vec<(f32, Self)> = header
            .split(',')
            .filter_map(|range| {
                let mut parts = range.split(';');
                let lang = Self::of_tag(parts.next()?)?;
                let q = parts
                    .find_map(|p| p.trim().strip_prefix("q="))
                    .map_or(Some(1.0), |q| q.trim().parse::<f32>().ok())?;
                (q > 0.0).then_some((q, lang))
            })
            .collect();
        // Stable: among equal weights the header's order decides.
        ranked.sort_by(|a, b| b.0.total_cmp(&a.0));
        ranked.first().map(|(_, lang)| *lang)
    }
}

/// Every page text in every language, and each language's texts as the templates read them
/// (`{{ t.form_title }}`), built once.
pub struct Texts {
    en: HashMap<String, String>,
    de: HashMap<String, String>,
    en_value: minijinja::Value,
    de_value: minijinja::Value,
}

/// A locale file that is not a table of texts.
#[derive(Debug, thiserror::Error)]
#[error("locales/{language}.toml: {source}")]
pub struct TextsError {
    language: &'static str,
    #[source]
    source: toml::de::Error,
}

impl Texts {
    pub fn load() -> Result<Self, TextsError> {
        let read = |language: &'static str, source: &str| {
            toml::from_str::<HashMap<String, String>>(source)
                .map_err(|source| TextsError { language, source })
        };
        let (en, de) = (
            read("en", include_str!("../locales/en.toml"))?,
            read("de", include_str!("../locales/de.toml"))?,
        );
        Ok(Self {
            en_value: minijinja::Value::from_serialize(&en),
            de_value: minijinja::Value::from_serialize(&de),
            en,
            de,
        })
    }

    /// The texts of one language, for the templates; cloning shares them.
    pub fn for_templates(&self, lang: Lang) -> minijinja::Value {
        match lang {
            Lang::En => self.en_value.clone(),
            Lang::De => self.de_value.clone(),
        }
    }

    fn all(&self, lang: Lang) -> &HashMap<String, String> {
        match lang {
            Lang::En => &self.en,
            Lang::De => &self.de,
        }
    }

    /// One text, with `{name}` placeholders filled in. A key a language lacks falls back to
    /// English (the unit test keeps the files in step).
    pub fn get(&self, lang: Lang, key: &str, args: &[(&str, &str)]) -> String {
        let text = self
            .all(lang)
            .get(key)
            .or_else(|| self.en.get(key))
            .map_or(key, String::as_str);
        args.iter().fold(text.to_owned(), |text, (name, value)| {
            text.replace(&format!("{{{name}}}"), value)
        })
    }

    /// The password rules as the form lists them.
    pub fn rules(&self, lang: Lang, policy: &PasswordPolicy) -> Vec<String> {
        let (min, max) = (policy.min_length.to_string(), policy.max_length.to_string());
        vec![
            self.get(lang, "rule_length", &[("min", &min), ("max", &max)]),
            self.get(lang, "rule_personal", &[]),
            self.get(lang, "rule_common", &[]),
            self.get(lang, "rule_name", &[]),
        ]
    }

    /// Why a password was refused.
    pub fn violation(&self, lang: Lang, v: &PasswordRuleViolation) -> String {
        use PasswordRuleViolation as V;
        match v {
            V::TooShort { min } => self.get(lang, "weak_too_short", &[("min", &min.to_string())]),
            V::TooLong { max } => self.get(lang, "weak_too_long", &[("max", &max.to_string())]),
            V::ContainsUsername => self.get(lang, "weak_contains_username", &[]),
            V::ContainsEmail => self.get(lang, "weak_contains_email", &[]),
            V::Common => self.get(lang, "weak_common", &[]),
            V::ContainsName => self.get(lang, "weak_contains_name", &[]),
            // zxcvbn's hint is English; the German text does without it.
            V::TooWeak { hint, .. } => self.get(lang, "weak_too_weak", &[("hint", hint)]),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_language_has_every_text_and_the_same_placeholders() {
        let texts = Texts::load().unwrap();
        let placeholders = |s: &str| -> Vec<String> {
            s.split('{')
                .skip(1)
                .filter_map(|p| p.split_once('}').map(|(name, _)| name.to_owned()))
                .collect()
        };
        let mut en_keys: Vec<&String> = texts.en.keys().collect();
        let mut de_keys: Vec<&String> = texts.de.keys().collect();
        en_keys.sort();
        de_keys.sort();
        assert_eq!(en_keys, de_keys);
        for (key, en) in &texts.en {
            let mut want = placeholders(en);
            let mut got = placeholders(&texts.de[key]);
            want.sort();
            got.sort();
            // German drops zxcvbn's English hint on purpose.
            if key != "weak_too_weak" {
                assert_eq!(got, want, "{key}");
            }
        }
    }

    #[test]
    fn the_invitations_locale_wins_then_the_browsers_preference_then_english() {
        assert_eq!(Lang::choose(Some("de-AT"), Some("en")), Lang::De);
        assert_eq!(Lang::choose(Some("fr"), Some("de-CH,en;q=0.5")), Lang::De);
        assert_eq!(Lang::choose(None, Some("fr, en;q=0.4, de;q=0.9")), Lang::De);
        assert_eq!(Lang::choose(None, Some("de;q=0, en")), Lang::En);
        assert_eq!(Lang::choose(None, Some("fr, es")), Lang::En);
        assert_eq!(Lang::choose(None, None), Lang::En);
    }

    #[test]
    fn placeholders_are_filled_in() {
        let texts = Texts::load().unwrap();
        assert_eq!(
            texts.get(Lang::De, "too_many_line", &[("seconds", "30")]),
            "Zu viele Versuche aus Ihrem Netzwerk. Warten Sie 30 Sekunden und versuchen Sie es dann erneut."
        );
        let rules = texts.rules(Lang::En, &PasswordPolicy::default());
        assert!(rules[0].starts_with("At least 8 and at most 128 characters"));
    }
}
