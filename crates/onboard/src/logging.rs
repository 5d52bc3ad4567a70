//! Logs to standard error: the level from `ONBOARD_LOG`, the format from `--log-format`.

use clap::ValueEnum;

/// How a log line is written (`--log-format`, `ONBOARD_LOG_FORMAT`).
#[derive(Clone, Copy, ValueEnum)]
pub enum LogFormat {
    /// Human-readable lines, coloured on a terminal.
    Text,
    /// One JSON object per line.
    Json,
}

/// The levels without `ONBOARD_LOG`. warp's own lines about each request are left out: the
/// gateway writes one `request answered` line per request itself, in the request's span.
const DEFAULT_FILTER: &str = "info,sqlx=warn,rdkafka=warn,warp::filters::trace=off";

pub fn init(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_env("ONBOARD_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(DEFAULT_FILTER));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Json => builder.json().init(),
        LogFormat::Text => builder.init(),
    }
}

#[cfg(test)]
mod tests {
    use super::LogFormat;

    #[test]
    fn the_log_format_is_text_or_json() {
        let parse = crate::one_of::<LogFormat>("log format");
        assert!(matches!(parse("json"), Ok(LogFormat::Json)));
        assert!(matches!(parse("text"), Ok(LogFormat::Text)));
        assert_eq!(
            parse("xml").err().as_deref(),
            Some("unknown log format `xml`; use text or json")
        );
    }
}
