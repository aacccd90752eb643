//! Logging in the shapes runc's callers parse: logrus text (`time="…" level=error msg="…"`)
//! or JSON (`{"level":"error","msg":"…","time":"…"}`), to `--log` or stderr.

use std::fmt;
use std::fs::OpenOptions;
use std::io::Write;
use std::path::Path;
use std::sync::Mutex;
use tracing::{Event, Level, Subscriber};
use tracing_subscriber::Layer;
use tracing_subscriber::layer::{Context, SubscriberExt};
use tracing_subscriber::util::SubscriberInitExt;

#[derive(Clone, Copy, PartialEq, Eq, Debug, clap::ValueEnum)]
pub enum Format {
    Text,
    Json,
}

pub struct Logger {
    out: Mutex<Box<dyn Write + Send>>,
    format: Format,
    max: Level,
}

struct Visitor {
    msg: String,
    fields: Vec<(String, String)>,
}

impl tracing::field::Visit for Visitor {
    fn record_debug(&mut self, field: &tracing::field::Field, value: &dyn fmt::Debug) {
        if field.name() == "message" {
            self.msg = format!("{value:?}");
        } else {
            self.fields
                .push((field.name().to_string(), format!("{value:?}")));
        }
    }
    fn record_str(&mut self, field: &tracing::field::Field, value: &str) {
        if field.name() == "message" {
            self.msg = value.to_string();
        } else {
            self.fields
                .push((field.name().to_string(), value.to_string()));
        }
    }
}

fn level_name(l: &Level) -> &'static str {
    match *l {
        Level::ERROR => "error",
        Level::WARN => "warning",
        Level::INFO => "info",
        Level::DEBUG => "debug",
        Level::TRACE => "trace",
    }
}

impl Logger {
    pub fn line(&self, level: &Level, msg: &str, fields: &[(String, String)]) -> String {
        let time = keelson_container::state::rfc3339_nano(std::time::SystemTime::now());
        match self.format {
            Format::Json => {
                let mut m = serde_json::Map::new();
                m.insert("level".into(), level_name(level).into());
                m.insert("msg".into(), msg.into());
                m.insert("time".into(), time.into());
                for (k, v) in fields {
                    m.insert(k.clone(), v.clone().into());
                }
                serde_json::Value::Object(m).to_string()
            }
            Format::Text => {
                let mut s = format!("time={time:?} level={} msg={msg:?}", level_name(level));
                for (k, v) in fields {
                    s.push_str(&format!(" {k}={v:?}"));
                }
                s
            }
        }
    }

    pub fn write(&self, level: &Level, msg: &str, fields: &[(String, String)]) {
        let line = self.line(level, msg, fields);
        if let Ok(mut o) = self.out.lock() {
            let _ = writeln!(o, "{line}");
            let _ = o.flush();
        }
    }
}

impl<S: Subscriber> Layer<S> for &'static Logger {
    fn on_event(&self, event: &Event<'_>, _ctx: Context<'_, S>) {
        let level = event.metadata().level();
        if *level > self.max {
            return;
        }
        let mut v = Visitor {
            msg: String::new(),
            fields: Vec::new(),
        };
        event.record(&mut v);
        self.write(level, &v.msg, &v.fields);
    }
}

/// Sets up the global logger; returns it so fatal errors can be written in the same format.
pub fn init(log: Option<&Path>, format: Format, debug: bool) -> anyhow::Result<&'static Logger> {
    let out: Box<dyn Write + Send> = match log {
        Some(p) => Box::new(
            OpenOptions::new()
                .create(true)
                .append(true)
                .open(p)
                .map_err(|e| anyhow::anyhow!("opening log file {}: {e}", p.display()))?,
        ),
        None => Box::new(std::io::stderr()),
    };
    let logger: &'static Logger = Box::leak(Box::new(Logger {
        out: Mutex::new(out),
        format,
        max: if debug { Level::DEBUG } else { Level::WARN },
    }));
    let _ = tracing_subscriber::registry().with(logger).try_init();
    Ok(logger)
}
