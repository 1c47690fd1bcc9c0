//! runc-compatible logging: `--log FILE` and `--log-format text|json`. containerd's shim reads
//! the last `{"level":"error","msg":…}` line of the JSON log to report why a command failed,
//! so lines are logrus-shaped: `{"level","msg","time"}`.

use std::io::Write;
use std::sync::Mutex;
use tracing::field::{Field, Visit};
use tracing::{Event, Level, Subscriber};
use tracing_subscriber::layer::{Context, Layer};

#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Format {
    Text,
    Json,
}

pub struct LogLayer {
    out: Mutex<Box<dyn Write + Send>>,
    format: Format,
}

impl LogLayer {
    pub fn new(out: Box<dyn Write + Send>, format: Format) -> LogLayer {
        LogLayer {
            out: Mutex::new(out),
            format,
        }
    }
}

struct Message(String);

impl Visit for Message {
    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        if field.name() == "message" {
            self.0 = format!("{value:?}");
        } else {
            self.0.push_str(&format!(" {}={value:?}", field.name()));
        }
    }
    fn record_str(&mut self, field: &Field, value: &str) {
        if field.name() == "message" {
            self.0 = value.to_string();
        } else {
            self.0.push_str(&format!(" {}={value}", field.name()));
        }
    }
}

pub fn level_name(level: &Level) -> &'static str {
    match *level {
        Level::ERROR => "error",
        Level::WARN => "warning",
        Level::INFO => "info",
        Level::DEBUG => "debug",
        Level::TRACE => "trace",
    }
}

/// One log line in the chosen format.
pub fn line(format: Format, level: &str, msg: &str) -> String {
    let time = chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Nanos, true);
    match format {
        Format::Json => {
            serde_json::json!({"level": level, "msg": msg, "time": time}).to_string() + "\n"
        }
        Format::Text => format!("time={time:?} level={level} msg={msg:?}\n"),
    }
}

impl<S: Subscriber> Layer<S> for LogLayer {
    fn on_event(&self, event: &Event<'_>, _ctx: Context<'_, S>) {
        let mut msg = Message(String::new());
        event.record(&mut msg);
        let text = line(self.format, level_name(event.metadata().level()), &msg.0);
        if let Ok(mut out) = self.out.lock() {
            let _ = out.write_all(text.as_bytes());
        }
    }
}
