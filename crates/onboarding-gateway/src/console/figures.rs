//! How the console writes times, durations and rates, and what it knows of consumer lag.

use chrono::{DateTime, Utc};

use crate::i18n::{Lang, Texts};

/// An instant in the reader's language, in UTC (admins compare across time zones).
pub(crate) fn when(lang: Lang, at: DateTime<Utc>) -> String {
    onboarding_domain::display::format_instant(at, lang.tag(), None)
}

/// A duration in its two largest units, e.g. `3 d 4 h`, `12 min` (`console_unit_*`).
pub(crate) fn duration(texts: &Texts, lang: Lang, seconds: i64) -> String {
    let seconds = seconds.max(0);
    let unit = |key: &str, n: i64| texts.get(lang, key, &[("n", &n.to_string())]);
    let (d, h, m) = (
        seconds / 86_400,
        seconds % 86_400 / 3600,
        seconds % 3600 / 60,
    );
    if d > 0 {
        format!(
            "{} {}",
            unit("console_unit_days", d),
            unit("console_unit_hours", h)
        )
    } else if h > 0 {
        format!(
            "{} {}",
            unit("console_unit_hours", h),
            unit("console_unit_minutes", m)
        )
    } else if m > 0 {
        unit("console_unit_minutes", m)
    } else {
        unit("console_unit_seconds", seconds)
    }
}

/// `part` of `whole` as a percentage with one decimal, or `None` for an empty whole.
pub(crate) fn percent(part: i64, whole: i64) -> Option<String> {
    (whole > 0).then(|| format!("{:.1} %", part as f64 * 100.0 / whole as f64))
}

/// The consumer lag this process's email worker last measured (`onboard_consumer_lag`, summed
/// over partitions), from the process's metrics; `None` when no email worker runs here.
pub(crate) fn consumer_lag(metrics_text: Option<&str>) -> Option<i64> {
    let mut found = false;
    let mut total = 0.0;
    for line in metrics_text?.lines() {
        let Some(rest) = line.strip_prefix("onboard_consumer_lag") else {
            continue;
        };
        if !(rest.starts_with('{') || rest.starts_with(' ')) {
            continue;
        }
        if let Some(value) = rest.rsplit(' ').next().and_then(|v| v.parse::<f64>().ok()) {
            found = true;
            total += value;
        }
    }
    found.then_some(total as i64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_keep_their_two_largest_units() {
        let texts = Texts::load().unwrap();
        assert_eq!(duration(&texts, Lang::En, 42), "42 s");
        assert_eq!(duration(&texts, Lang::En, 3 * 60 + 5), "3 min");
        assert_eq!(duration(&texts, Lang::En, 2 * 3600 + 60), "2 h 1 min");
        assert_eq!(duration(&texts, Lang::En, 86_400 * 3 + 3600 * 4), "3 d 4 h");
        assert_eq!(
            duration(&texts, Lang::De, 86_400 * 3 + 3600 * 4),
            "3 T. 4 Std."
        );
    }

    #[test]
    fn consumer_lag_is_the_sum_over_partitions_or_unknown() {
        let text = "# TYPE onboard_consumer_lag gauge\n\
                    onboard_consumer_lag{partition=\"0\"} 3\n\
                    onboard_consumer_lag{partition=\"1\"} 4\n\
                    onboard_consumer_lag_other 99\n";
        assert_eq!(consumer_lag(Some(text)), Some(7));
        assert_eq!(consumer_lag(Some("onboard_outbox_backlog 5\n")), None);
        assert_eq!(consumer_lag(None), None);
        assert_eq!(percent(1, 3).as_deref(), Some("33.3 %"));
        assert_eq!(percent(1, 0), None);
    }
}
