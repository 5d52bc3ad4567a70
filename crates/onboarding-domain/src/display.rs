//! How the engine shows things to people: an instant in their language and time zone, the same
//! in the mails and on the pages behind their links.

/// An instant as the user reads it: in the given language and, when the invitation names an
/// IANA time zone, in that zone's local time (with the zone's name, so a reader elsewhere can
/// tell); in UTC otherwise.
pub fn format_instant(
    at: chrono::DateTime<chrono::Utc>,
    locale: &str,
    time_zone: Option<&str>,
) -> String {
    let german = locale.split('-').next() == Some("de");
    match time_zone.and_then(|tz| tz.parse::<chrono_tz::Tz>().ok()) {
        Some(tz) => {
            let local = at.with_timezone(&tz);
            if german {
                format!("{} Uhr ({})", local.format("%d.%m.%Y um %H:%M"), tz.name())
            } else {
                format!(
                    "{} ({} time)",
                    local.format("%A %-d %B %Y, %H:%M"),
                    tz.name()
                )
            }
        }
        None if german => at.format("%d.%m.%Y um %H:%M UTC").to_string(),
        None => at.format("%A %-d %B %Y, %H:%M UTC").to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn instants_are_shown_in_the_users_time_zone_with_daylight_saving() {
        let winter: chrono::DateTime<chrono::Utc> = "2026-11-28T12:00:00Z".parse().unwrap();
        let summer: chrono::DateTime<chrono::Utc> = "2026-07-01T12:00:00Z".parse().unwrap();
        assert_eq!(
            format_instant(winter, "de", Some("Europe/Berlin")),
            "28.11.2026 um 13:00 Uhr (Europe/Berlin)"
        );
        assert_eq!(
            format_instant(summer, "en", Some("Europe/Berlin")),
            "Wednesday 1 July 2026, 14:00 (Europe/Berlin time)"
        );
        assert_eq!(
            format_instant(winter, "en", Some("America/New_York")),
            "Saturday 28 November 2026, 07:00 (America/New_York time)"
        );
        assert_eq!(
            format_instant(winter, "en", None),
            "Saturday 28 November 2026, 12:00 UTC"
        );
        assert_eq!(
            format_instant(winter, "de", None),
            "28.11.2026 um 12:00 UTC"
        );
    }
}
