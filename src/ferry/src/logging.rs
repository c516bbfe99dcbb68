//! Logging in runc's (logrus's) shapes, because callers parse it: conmon and containerd's shim
//! pass `--log FILE --log-format json` and read `{"level":"error","msg":...,"time":...}` lines
//! back to learn why a command failed; without `--log`, text lines go to stderr.

use std::fmt::{self, Write as _};
use std::fs::File;
use std::io::{self, Write};
use std::path::Path;
use std::sync::Arc;

use tracing::field::{Field, Visit};
use tracing::{Event, Level, Subscriber};
use tracing_subscriber::fmt::format::Writer;
use tracing_subscriber::fmt::{FmtContext, FormatEvent, FormatFields};
use tracing_subscriber::registry::LookupSpan;

/// Why logging could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum LogError {
    /// The `--log` file could not be opened.
    #[error("open log file {path:?}: {source}")]
    Open {
        /// the file
        path: std::path::PathBuf,
        /// the OS error
        #[source]
        source: io::Error,
    },
    /// A global subscriber already exists.
    #[error("install logger: {0}")]
    Install(String),
}

/// logrus's level names.
fn level_name(level: &Level) -> &'static str {
    match *level {
        Level::ERROR => "error",
        Level::WARN => "warning",
        Level::INFO => "info",
        Level::DEBUG => "debug",
        Level::TRACE => "trace",
    }
}

#[derive(Default)]
struct Fields {
    msg: String,
    extra: Vec<(String, String)>,
}

impl Visit for Fields {
    fn record_str(&mut self, field: &Field, value: &str) {
        if field.name() == "message" {
            self.msg = value.to_string();
        } else {
            self.extra
                .push((field.name().to_string(), value.to_string()));
        }
    }
    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        if field.name() == "message" {
            self.msg = format!("{value:?}");
        } else {
            self.extra
                .push((field.name().to_string(), format!("{value:?}")));
        }
    }
}

/// One log line in logrus's text or JSON shape.
pub fn render(
    json: bool,
    level: &Level,
    time: &str,
    msg: &str,
    extra: &[(String, String)],
) -> String {
    if json {
        let mut obj = serde_json::Map::new();
        for (k, v) in extra {
            obj.insert(k.clone(), serde_json::Value::String(v.clone()));
        }
        obj.insert("level".into(), level_name(level).into());
        obj.insert("msg".into(), msg.into());
        obj.insert("time".into(), time.into());
        // serde_json's map is ordered by key, as logrus's JSON formatter orders it.
        serde_json::Value::Object(obj).to_string()
    } else {
        let quote = |s: &str| serde_json::Value::String(s.to_string()).to_string();
        let mut line = format!(
            "time={} level={} msg={}",
            quote(time),
            level_name(level),
            quote(msg)
        );
        for (k, v) in extra {
            let _ = write!(line, " {k}={}", quote(v));
        }
        line
    }
}

struct RuncFormat {
    json: bool,
}

impl<S, N> FormatEvent<S, N> for RuncFormat
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    N: for<'a> FormatFields<'a> + 'static,
{
    fn format_event(
        &self,
        _ctx: &FmtContext<'_, S, N>,
        mut writer: Writer<'_>,
        event: &Event<'_>,
    ) -> fmt::Result {
        let mut fields = Fields::default();
        event.record(&mut fields);
        let time = chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
        let line = render(
            self.json,
            event.metadata().level(),
            &time,
            &fields.msg,
            &fields.extra,
        );
        writeln!(writer, "{line}")
    }
}

/// Appends to the shared log file (one write per line, so lines from forked children stay whole).
#[derive(Clone)]
struct FileWriter(Arc<File>);

impl Write for FileWriter {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        (&*self.0).write(buf)
    }
    fn flush(&mut self) -> io::Result<()> {
        (&*self.0).flush()
    }
}

/// Installs the global logger. Returns whether logs go to a file (then errors are also
/// printed plainly on stderr, as runc does).
pub fn init(log: Option<&Path>, json: bool, debug: bool) -> Result<bool, LogError> {
    // libcontainer and libcgroups warn about every cgroup v1 controller this machine lacks;
    // below --debug only ferry's own warnings and everyone's errors are worth a caller's eye.
    let filter = if debug { "debug" } else { "ferry=warn,error" };
    let builder = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::new(filter))
        .event_format(RuncFormat { json });
    let to_file = match log {
        Some(path) if path != Path::new("/dev/stderr") => {
            use std::os::unix::fs::OpenOptionsExt;
            let file = std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .mode(0o644)
                .open(path)
                .map_err(|source| LogError::Open {
                    path: path.to_path_buf(),
                    source,
                })?;
            let file = Arc::new(file);
            builder
                .with_writer(move || FileWriter(file.clone()))
                .try_init()
                .map_err(|e| LogError::Install(e.to_string()))?;
            true
        }
        _ => {
            builder
                .with_writer(io::stderr)
                .try_init()
                .map_err(|e| LogError::Install(e.to_string()))?;
            false
        }
    };
    Ok(to_file)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_line_is_logrus_shape() {
        let line = render(
            true,
            &Level::ERROR,
            "2026-11-27T01:01:00Z",
            "container does not exist",
            &[],
        );
        assert_eq!(
            line,
            r#"{"level":"error","msg":"container does not exist","time":"2026-11-27T01:01:00Z"}"#
        );
    }

    #[test]
    fn text_line_is_logrus_shape() {
        let line = render(
            false,
            &Level::ERROR,
            "2026-11-27T01:01:00Z",
            "container does not exist",
            &[],
        );
        assert_eq!(
            line,
            r#"time="2026-11-27T01:01:00Z" level=error msg="container does not exist""#
        );
        let line = render(
            false,
            &Level::WARN,
            "t",
            "say \"hi\"",
            &[("k".into(), "v".into())],
        );
        assert_eq!(line, r#"time="t" level=warning msg="say \"hi\"" k="v""#);
    }
}
