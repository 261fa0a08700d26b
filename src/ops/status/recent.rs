//! The last WARN and ERROR log events, for `/status`: what an operator looking at a degraded
//! mount wants first, without access to the container's log.
//!
//! A `tracing_subscriber` layer (registered in main.rs beside the stderr formatter, behind the
//! same filter) copies each WARN/ERROR event into a small ring. It is a process-wide static
//! because logging is process-wide too: the layer is installed before `run` exists. The events
//! are the ones already written to stderr, so nothing reaches `/status` that the log does not
//! hold (and secrets reach neither). Outside text in them (keys, paths) is escaped where it is
//! logged ([`crate::escape`]), so it is not escaped again here: the two would then differ.

use std::collections::VecDeque;
use std::fmt::Write as _;
use std::sync::Mutex;

use serde::{Deserialize, Serialize};
use tracing::field::{Field, Visit};
use tracing::{Event, Level, Subscriber};
use tracing_subscriber::layer::{Context, Layer};

/// How many events are kept.
pub const KEEP: usize = 20;

static RECENT: Mutex<VecDeque<LogEvent>> = Mutex::new(VecDeque::new());

/// One log event as `/status` shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LogEvent {
    /// RFC 3339, UTC.
    pub time: String,
    /// `WARN` or `ERROR`.
    pub level: String,
    /// The module that logged it.
    pub target: String,
    /// The message followed by its fields (`key=value`), as on stderr.
    pub message: String,
}

/// The kept events, oldest first.
pub fn events() -> Vec<LogEvent> {
    RECENT
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .iter()
        .cloned()
        .collect()
}

/// The layer that keeps the events.
pub fn layer() -> RecentEvents {
    RecentEvents
}

/// See the module documentation.
#[derive(Debug)]
pub struct RecentEvents;

#[derive(Default)]
struct Text {
    message: String,
    fields: String,
}

impl Visit for Text {
    fn record_str(&mut self, field: &Field, value: &str) {
        if field.name() == "message" {
            self.message.push_str(value);
        } else {
            let _ = write!(self.fields, " {}={value}", field.name());
        }
    }

    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        if field.name() == "message" {
            let _ = write!(self.message, "{value:?}");
        } else {
            let _ = write!(self.fields, " {}={value:?}", field.name());
        }
    }
}

impl<S: Subscriber> Layer<S> for RecentEvents {
    fn on_event(&self, event: &Event<'_>, _ctx: Context<'_, S>) {
        let meta = event.metadata();
        // Levels compare by verbosity: WARN and ERROR are the ones "at most" WARN.
        if *meta.level() > Level::WARN {
            return;
        }
        let mut text = Text::default();
        event.record(&mut text);
        let ev = LogEvent {
            time: humantime::format_rfc3339_millis(std::time::SystemTime::now()).to_string(),
            level: meta.level().to_string(),
            target: meta.target().to_owned(),
            message: format!("{}{}", text.message, text.fields),
        };
        let mut ring = RECENT.lock().unwrap_or_else(|e| e.into_inner());
        if ring.len() == KEEP {
            ring.pop_front();
        }
        ring.push_back(ev);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tracing_subscriber::layer::SubscriberExt;

    #[test]
    fn keeps_the_last_warnings_and_errors_only() {
        let sub = tracing_subscriber::registry().with(layer());
        tracing::subscriber::with_default(sub, || {
            tracing::info!("not kept");
            for i in 0..KEEP + 5 {
                tracing::warn!(n = i, path = "a b", "upload failed");
            }
            tracing::error!(error = %"boom", "bad");
        });
        let ev = events();
        assert_eq!(ev.len(), KEEP);
        let last = ev.last().unwrap();
        assert_eq!(
            (last.level.as_str(), last.message.as_str()),
            ("ERROR", "bad error=boom")
        );
        assert_eq!(ev[0].message, "upload failed n=6 path=a b");
    }
}
