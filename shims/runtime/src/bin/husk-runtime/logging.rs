//! Logs in runc's formats, so containerd's runc shim can read our errors
//! from `--log FILE --log-format json`: one `{"level","msg","time"}` object
//! per line.

use std::fmt::Write as _;
use std::path::Path;

use tracing::field::{Field, Visit};
use tracing_subscriber::fmt::format::Writer;
use tracing_subscriber::fmt::{FmtContext, FormatEvent, FormatFields};
use tracing_subscriber::registry::LookupSpan;

struct RuncJson;

#[derive(Default)]
struct Message(String);

impl Visit for Message {
    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        if field.name() == "message" {
            let _ = write!(self.0, "{value:?}");
        } else {
            let _ = write!(self.0, " {}={value:?}", field.name());
        }
    }
    fn record_str(&mut self, field: &Field, value: &str) {
        if field.name() == "message" {
            self.0.push_str(value);
        } else {
            let _ = write!(self.0, " {}={value}", field.name());
        }
    }
}

impl<S, N> FormatEvent<S, N> for RuncJson
where
    S: tracing::Subscriber + for<'a> LookupSpan<'a>,
    N: for<'a> FormatFields<'a> + 'static,
{
    fn format_event(
        &self,
        _: &FmtContext<'_, S, N>,
        mut w: Writer<'_>,
        event: &tracing::Event<'_>,
    ) -> std::fmt::Result {
        let mut msg = Message::default();
        event.record(&mut msg);
        let line = serde_json::json!({
            "level": event.metadata().level().as_str().to_ascii_lowercase(),
            "msg": msg.0,
            "time": husk_runtime::state::now_rfc3339(),
        });
        writeln!(w, "{line}")
    }
}

/// Sends logs to `file` (in `format`) or to stderr. `debug` lowers the level.
pub fn init(file: Option<&Path>, format: &str, debug: bool) -> Result<(), String> {
    let level = if debug { "debug" } else { "warn" };
    let filter = tracing_subscriber::EnvFilter::try_from_env("HUSK_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(level));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(false);
    let json = match format {
        "json" => true,
        "text" => false,
        other => return Err(format!("unknown --log-format {other:?}; use text or json")),
    };
    match file {
        Some(path) => {
            let f = std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(path)
                .map_err(|e| format!("open log file {}: {e}", path.display()))?;
            let writer = std::sync::Mutex::new(f);
            if json {
                builder.event_format(RuncJson).with_writer(writer).init();
            } else {
                builder.with_writer(writer).init();
            }
        }
        None if json => builder
            .event_format(RuncJson)
            .with_writer(std::io::stderr)
            .init(),
        None => builder.with_writer(std::io::stderr).init(),
    }
    Ok(())
}
