//! Logging: one line per event. Plain text on a terminal, JSON when asked (or when stderr is
//! neither a terminal nor the journal), and under journald (`JOURNAL_STREAM` names our stderr) the
//! journal's native protocol: each event a datagram to /run/systemd/journal/socket with its
//! priority (`journalctl -p err` works) and its fields as journal fields (`CUSTOMER_ID=...`,
//! `journalctl -u settled INVOICE_ID=in_...`). Where that socket cannot be used, plain text with
//! the syslog priority prefix journald reads (`<3>` for errors), no colours and no timestamps,
//! because the journal stamps every line itself. The level comes from RUST_LOG or the config.
//! Secrets never reach a field: they are `Secret`s, and webhook bodies are never logged.

use std::fmt;
use std::io::IsTerminal;

use tracing::{Event, Level, Subscriber};
use tracing_subscriber::EnvFilter;
use tracing_subscriber::fmt::format::{self, FormatEvent, FormatFields, Writer};
use tracing_subscriber::fmt::{FmtContext, FormattedFields};
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::registry::LookupSpan;
use tracing_subscriber::util::SubscriberInitExt;

use crate::config::{LogConfig, LogFormat};

/// The shape log lines take.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Output {
    Text,
    Json,
    Journald,
}

/// True when stderr is the journal stream systemd connected (`JOURNAL_STREAM=device:inode` matches
/// stderr's), not merely inherited by a child whose stderr goes elsewhere.
fn stderr_is_journal() -> bool {
    let Some(value) = std::env::var_os("JOURNAL_STREAM") else {
        return false;
    };
    let Some((dev, ino)) = value.to_str().and_then(|v| v.split_once(':')) else {
        return false;
    };
    let (Ok(dev), Ok(ino)) = (dev.parse::<u64>(), ino.parse::<u64>()) else {
        return false;
    };
    // SAFETY: fstat writes into a zeroed struct we own; fd 2 may be closed, which fstat reports.
    let mut st: libc::stat = unsafe { std::mem::zeroed() };
    if unsafe { libc::fstat(2, &mut st) } != 0 {
        return false;
    }
    st.st_dev as u64 == dev && st.st_ino as u64 == ino
}

/// Which output `format` means here.
pub fn output(format: LogFormat) -> Output {
    match format {
        LogFormat::Json => Output::Json,
        LogFormat::Text => Output::Text,
        LogFormat::Journald => Output::Journald,
        LogFormat::Auto if stderr_is_journal() => Output::Journald,
        LogFormat::Auto if std::io::stderr().is_terminal() => Output::Text,
        LogFormat::Auto => Output::Json,
    }
}

pub fn init(config: &LogConfig) {
    let filter = std::env::var("RUST_LOG")
        .ok()
        .and_then(|v| EnvFilter::try_new(v).ok())
        .or_else(|| EnvFilter::try_new(&config.level).ok())
        .unwrap_or_else(|| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    let result = match output(config.format) {
        Output::Json => builder
            .json()
            .flatten_event(true)
            .with_current_span(true)
            .try_init(),
        Output::Text => builder
            .with_target(false)
            .with_ansi(std::io::stderr().is_terminal())
            .try_init(),
        Output::Journald => match native_journal() {
            Some(layer) => {
                let filter = std::env::var("RUST_LOG")
                    .ok()
                    .and_then(|v| EnvFilter::try_new(v).ok())
                    .or_else(|| EnvFilter::try_new(&config.level).ok())
                    .unwrap_or_else(|| EnvFilter::new("info"));
                tracing_subscriber::registry()
                    .with(filter)
                    .with(layer)
                    .try_init()
                    .map_err(Into::into)
            }
            None => builder
                .with_ansi(false)
                .event_format(Journald::default())
                .try_init(),
        },
    };
    // A second init (tests building several applications in one process) keeps the first.
    let _ = result;
}

/// The journal's native protocol, when stderr is the journal (so the daemon runs under systemd)
/// and its socket answers; None otherwise (the caller writes the priority-prefixed stream form).
fn native_journal() -> Option<tracing_journald::Layer> {
    if !stderr_is_journal() {
        return None;
    }
    use tracing_journald::{Priority, PriorityMappings};
    // The same priorities as the stream form's prefixes (`priority` below).
    let mappings = PriorityMappings {
        error: Priority::Error,
        warn: Priority::Warning,
        info: Priority::Informational,
        debug: Priority::Debug,
        trace: Priority::Debug,
    };
    tracing_journald::layer().ok().map(|l| {
        l.with_field_prefix(None)
            .with_syslog_identifier("settled".into())
            .with_priority_mappings(mappings)
    })
}

/// journald's stream format: `<priority>` (sd-daemon(3)), then the spans and the event's fields as
/// the text format writes them, without a timestamp or a level word.
struct Journald {
    inner: format::Format<format::Full, ()>,
}

impl Default for Journald {
    fn default() -> Self {
        Journald {
            inner: format::format()
                .without_time()
                .with_level(false)
                .with_target(false)
                .with_ansi(false),
        }
    }
}

/// The syslog priority for a level (3 err, 4 warning, 6 info, 7 debug).
pub fn priority(level: &Level) -> u8 {
    match *level {
        Level::ERROR => 3,
        Level::WARN => 4,
        Level::INFO => 6,
        Level::DEBUG | Level::TRACE => 7,
    }
}

impl<S, N> FormatEvent<S, N> for Journald
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    N: for<'a> FormatFields<'a> + 'static,
    FormattedFields<N>: 'static,
{
    fn format_event(
        &self,
        ctx: &FmtContext<'_, S, N>,
        mut writer: Writer<'_>,
        event: &Event<'_>,
    ) -> fmt::Result {
        write!(writer, "<{}>", priority(event.metadata().level()))?;
        self.inner.format_event(ctx, writer, event)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn levels_map_to_syslog_priorities() {
        assert_eq!(priority(&Level::ERROR), 3);
        assert_eq!(priority(&Level::WARN), 4);
        assert_eq!(priority(&Level::INFO), 6);
        assert_eq!(priority(&Level::DEBUG), 7);
    }

    #[test]
    fn explicit_formats_win_over_the_environment() {
        assert_eq!(output(LogFormat::Json), Output::Json);
        assert_eq!(output(LogFormat::Text), Output::Text);
        assert_eq!(output(LogFormat::Journald), Output::Journald);
    }
}
