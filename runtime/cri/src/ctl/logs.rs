//! `logs`: reads the container's CRI log file (the path ContainerStatus reports) the way the
//! kubelet does: stdout records to stdout and stderr records to stderr, partial records
//! joined with what follows, `--tail` counting records from the end of the file, and
//! `--follow` polling the file (a rotated file is reopened) until the container stops.

use super::Ctl;
use super::cli::LogsArgs;
use super::containers::container_status;
use crate::crilog::{self, Stream, Tag};
use anyhow::{Context, Result, bail};
use keelson_proto::runtime::v1 as pb;
use std::io::{Read, Seek, SeekFrom, Write};
use std::os::unix::fs::MetadataExt;
use std::time::{Duration, Instant, SystemTime};

/// How often a followed log is polled for new records.
const POLL: Duration = Duration::from_millis(100);
/// How long a followed log may stay idle before the container's state is checked.
const IDLE_CHECK: Duration = Duration::from_secs(1);

/// `--since`: an RFC 3339 time (a missing zone is UTC, a date alone is its midnight), a
/// duration back from now (`42m`), or Unix seconds.
pub fn parse_since(s: &str, now: SystemTime) -> Result<SystemTime> {
    let s = s.trim();
    if let Some(t) = crilog::parse_timestamp(s) {
        return Ok(t);
    }
    if s.len() == 19
        && let Some(t) = crilog::parse_timestamp(&format!("{s}Z"))
    {
        return Ok(t);
    }
    if s.len() == 10
        && let Some(t) = crilog::parse_timestamp(&format!("{s}T00:00:00Z"))
    {
        return Ok(t);
    }
    if let Ok(d) = humantime::parse_duration(s) {
        return Ok(now.checked_sub(d).unwrap_or(SystemTime::UNIX_EPOCH));
    }
    if let Ok(secs) = s.parse::<f64>()
        && secs.is_finite()
        && secs >= 0.0
    {
        return Ok(SystemTime::UNIX_EPOCH + Duration::from_secs_f64(secs));
    }
    bail!("--since {s:?}: not a time (2013-01-02T13:23:37Z), a duration (42m) or Unix seconds")
}

/// The log file of the container's previous attempt: `<dir>/<attempt-1>.log`.
fn previous_path(path: &str, attempt: u32, name: &str) -> Result<String> {
    if attempt == 0 {
        bail!("previous terminated container {name} not found");
    }
    let dir_end = path.rfind('/').map_or(0, |i| i + 1);
    let ext = path
        .rfind('.')
        .filter(|&i| i >= dir_end)
        .map_or("", |i| &path[i..]);
    Ok(format!("{}{}{ext}", &path[..dir_end], attempt - 1))
}

/// Where records go, and how much may still be written (`--limit-bytes`).
struct Sink {
    stream: Option<Stream>,
    timestamps: bool,
    since: Option<SystemTime>,
    left: Option<u64>,
    bad: usize,
}

impl Sink {
    /// Writes one record line (without its `\n`); false once the byte limit is reached.
    fn record(&mut self, line: &[u8]) -> Result<bool> {
        if line.is_empty() {
            return Ok(true);
        }
        let r = match crilog::parse_record(line) {
            Ok(r) => r,
            Err(_) => {
                self.bad += 1;
                return Ok(true);
            }
        };
        if self.since.is_some_and(|s| r.time < s) || self.stream.is_some_and(|s| s != r.stream) {
            return Ok(true);
        }
        let mut msg = Vec::with_capacity(r.content.len() + 40);
        if self.timestamps {
            msg.extend_from_slice(crilog::format_timestamp(r.time).as_bytes());
            msg.push(b' ');
        }
        msg.extend_from_slice(&r.content);
        if r.tag == Tag::Full {
            msg.push(b'\n');
        }
        let mut go_on = true;
        if let Some(left) = self.left.as_mut() {
            if (msg.len() as u64) >= *left {
                msg.truncate(*left as usize);
                go_on = false;
            }
            *left -= msg.len() as u64;
        }
        match r.stream {
            Stream::Stdout => {
                let mut o = std::io::stdout().lock();
                o.write_all(&msg)?;
                o.flush()?;
            }
            Stream::Stderr => {
                let mut e = std::io::stderr().lock();
                e.write_all(&msg)?;
                e.flush()?;
            }
        }
        Ok(go_on)
    }
}

async fn still_running(ctl: &Ctl, id: &str) -> bool {
    match container_status(ctl, id, false).await {
        Ok(r) => r
            .status
            .is_some_and(|s| s.state == pb::ContainerState::ContainerRunning as i32),
        Err(_) => false,
    }
}

pub async fn logs(ctl: &Ctl, a: &LogsArgs) -> Result<()> {
    let stream = match a.stream.as_deref() {
        None | Some("") => None,
        Some("stdout") => Some(Stream::Stdout),
        Some("stderr") => Some(Stream::Stderr),
        Some(s) => bail!("invalid stream {s:?}, must be \"stdout\" or \"stderr\""),
    };
    if a.tail >= 0 && stream.is_some() {
        bail!("--tail and --stream are mutually exclusive");
    }
    if a.reopen {
        let t = Some(ctl.timeout);
        let mut c = ctl.runtime().await?;
        let msg = pb::ReopenContainerLogRequest {
            container_id: a.id.clone(),
        };
        ctl.call(
            "ReopenContainerLog",
            t,
            c.reopen_container_log(ctl.req("ReopenContainerLog", msg, t)),
        )
        .await
        .context("reopen container logs")?;
        eprintln!("Container logs reopened");
    }
    let since = a
        .since
        .as_deref()
        .map(|s| parse_since(s, SystemTime::now()))
        .transpose()?;
    let st = container_status(ctl, &a.id, false)
        .await?
        .status
        .unwrap_or_default();
    let mut path = st.log_path.clone();
    if path.is_empty() {
        bail!("the container has not set log path");
    }
    if a.previous {
        let m = st.metadata.clone().unwrap_or_default();
        path = previous_path(&path, m.attempt, &m.name)?;
    }
    let mut sink = Sink {
        stream,
        timestamps: a.timestamps,
        since,
        left: u64::try_from(a.limit_bytes).ok(),
        bad: 0,
    };
    if sink.left == Some(0) {
        return Ok(());
    }
    let mut file = std::fs::File::open(&path).with_context(|| format!("open log file {path:?}"))?;
    let mut data = Vec::new();
    file.read_to_end(&mut data)
        .with_context(|| format!("reading {path}"))?;
    let mut pos = data.len() as u64;
    // A record still being written stays for the follow loop.
    let mut pending = Vec::new();
    if a.follow && !data.ends_with(b"\n") {
        let start = data.iter().rposition(|&b| b == b'\n').map_or(0, |i| i + 1);
        pending = data.split_off(start);
    }
    let mut lines: Vec<&[u8]> = data.split(|&b| b == b'\n').collect();
    if data.ends_with(b"\n") || data.is_empty() {
        lines.pop();
    }
    let skip = match usize::try_from(a.tail) {
        Ok(n) => lines.len().saturating_sub(n),
        Err(_) => 0,
    };
    for line in &lines[skip..] {
        if !sink.record(line)? {
            return Ok(());
        }
    }
    if !a.follow {
        report_bad(ctl, &sink, &path);
        return Ok(());
    }
    let mut idle_since = Instant::now();
    let mut last_round = false;
    loop {
        let mut chunk = Vec::new();
        file.read_to_end(&mut chunk)
            .with_context(|| format!("reading {path}"))?;
        if !chunk.is_empty() {
            pos += chunk.len() as u64;
            pending.extend_from_slice(&chunk);
            while let Some(end) = pending.iter().position(|&b| b == b'\n') {
                let line: Vec<u8> = pending.drain(..=end).collect();
                if !sink.record(&line[..line.len() - 1])? {
                    return Ok(());
                }
            }
            idle_since = Instant::now();
            continue;
        }
        if last_round {
            break;
        }
        // Rotated (a new file at the path) or truncated in place: start over.
        match std::fs::metadata(&path) {
            Ok(m) if m.ino() != file.metadata().map(|f| f.ino()).unwrap_or(0) => {
                if let Ok(f) = std::fs::File::open(&path) {
                    file = f;
                    pos = 0;
                    pending.clear();
                    continue;
                }
            }
            Ok(m) if m.len() < pos => {
                file.seek(SeekFrom::Start(0))?;
                pos = 0;
                pending.clear();
                continue;
            }
            _ => {}
        }
        if idle_since.elapsed() >= IDLE_CHECK {
            if !still_running(ctl, &a.id).await {
                // Whatever the container wrote before it stopped is read once more.
                last_round = true;
                continue;
            }
            idle_since = Instant::now();
        }
        tokio::time::sleep(POLL).await;
    }
    if !pending.is_empty() {
        sink.record(&pending)?;
    }
    report_bad(ctl, &sink, &path);
    Ok(())
}

fn report_bad(ctl: &Ctl, sink: &Sink, path: &str) {
    if sink.bad > 0 {
        ctl.debug(format_args!(
            "{path}: skipped {} lines that are not CRI log records",
            sink.bad
        ));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn since_takes_times_durations_and_seconds() {
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(10_000);
        let t = |s: &str| {
            parse_since(s, now)
                .unwrap()
                .duration_since(SystemTime::UNIX_EPOCH)
                .unwrap()
                .as_secs()
        };
        assert_eq!(t("1970-01-01T01:00:00Z"), 3600);
        assert_eq!(t("1970-01-01T01:00:00"), 3600);
        assert_eq!(t("1970-01-02"), 86400);
        assert_eq!(t("42m"), 10_000 - 42 * 60);
        assert_eq!(t("1234"), 1234);
        assert!(parse_since("yesterday", now).is_err());
    }

    #[test]
    fn previous_attempt_path() {
        assert_eq!(
            previous_path("/var/log/pods/p/c/2.log", 2, "c").unwrap(),
            "/var/log/pods/p/c/1.log"
        );
        assert!(previous_path("/x/0.log", 0, "c").is_err());
    }
}
