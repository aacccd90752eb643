//! `/containerLogs/...?follow=true`: the log so far (after `sinceSeconds`/`sinceTime` and
//! `tailLines`), then new lines as the runtime writes them, until the container stops or the
//! client goes away; `limitBytes` ends the stream once reached. Like upstream's CRI log
//! reader, a rotated log (the file renamed and a new one opened by ReopenContainerLog) is read
//! to its end and the new file followed. New data is looked for every 200 ms (upstream waits
//! on fsnotify), the container's state every second.

use crate::Shared;
use crate::cri::Container;
use http_body_util::{BodyExt, StreamBody, combinators::UnsyncBoxBody};
use hyper::Response;
use hyper::body::{Bytes, Frame};
use keelson_proto::runtime::v1 as pb;
use std::collections::HashMap;
use std::convert::Infallible;
use std::io::{Read, Seek, SeekFrom};
use std::os::unix::fs::MetadataExt;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio_stream::StreamExt;

pub type Body = UnsyncBoxBody<Bytes, Infallible>;

/// Joins CRI partial lines (`P`) with their final part (`F`), per stream, across reads.
#[derive(Default)]
pub struct Joiner {
    partial: HashMap<String, (String, String)>,
}

impl Joiner {
    /// One CRI log line `<RFC3339Nano> <stream> <P|F> <content>` → a whole line (time of its
    /// first part, content) once complete.
    pub fn feed(&mut self, line: &str) -> Option<(String, String)> {
        let mut it = line.splitn(4, ' ');
        let ts = it.next()?;
        let stream = it.next()?;
        let tag = it.next()?;
        let content = it.next().unwrap_or("");
        let entry = self
            .partial
            .entry(stream.to_string())
            .or_insert_with(|| (ts.to_string(), String::new()));
        entry.1.push_str(content);
        if tag.starts_with('F') {
            self.partial.remove(stream)
        } else {
            None
        }
    }
}

/// The options of a log request that shape the output.
pub struct Opts {
    pub timestamps: bool,
    pub tail: Option<usize>,
    /// Only lines at or after this time (ns).
    pub since_ns: Option<i64>,
    pub limit: Option<usize>,
}

impl Opts {
    /// From the query; Err is the message of a 400.
    pub fn parse(q: &HashMap<String, String>) -> Result<Opts, String> {
        let num = |k: &str| -> Result<Option<i64>, String> {
            q.get(k)
                .map(|v| {
                    v.parse::<i64>()
                        .map_err(|_| format!("{k}: {v:?} is not a number"))
                })
                .transpose()
        };
        let since_seconds = num("sinceSeconds")?;
        let since_time = q.get("sinceTime");
        if since_seconds.is_some() && since_time.is_some() {
            return Err("at most one of sinceTime or sinceSeconds may be specified".into());
        }
        let since_ns = match (since_seconds, since_time) {
            (Some(s), _) if s < 1 => return Err("sinceSeconds: must be greater than 0".into()),
            (Some(s), _) => Some(crate::now_ns() - s * 1_000_000_000),
            (None, Some(t)) => Some(
                t.parse::<k8s_openapi::jiff::Timestamp>()
                    .map_err(|e| format!("sinceTime {t:?}: {e}"))?
                    .as_nanosecond() as i64,
            ),
            (None, None) => None,
        };
        let tail = num("tailLines")?;
        let limit = num("limitBytes")?;
        if tail.is_some_and(|t| t < 0) || limit.is_some_and(|l| l < 1) {
            return Err("tailLines must not be negative and limitBytes must be positive".into());
        }
        Ok(Opts {
            timestamps: q.get("timestamps").is_some_and(|v| v == "true" || v == "1"),
            tail: tail.map(|t| t as usize),
            since_ns,
            limit: limit.map(|l| l as usize),
        })
    }

    pub fn keep(&self, ts: &str) -> bool {
        match self.since_ns {
            None => true,
            Some(cut) => ts
                .parse::<k8s_openapi::jiff::Timestamp>()
                .is_ok_and(|t| t.as_nanosecond() as i64 >= cut),
        }
    }

    pub fn format(&self, ts: &str, line: &str, out: &mut String) {
        if self.timestamps {
            out.push_str(ts);
            out.push(' ');
        }
        out.push_str(line);
        out.push('\n');
    }
}

/// Streams container `c`'s log.
pub fn follow(sh: Arc<Shared>, c: Container, opts: Opts) -> Response<Body> {
    let (tx, rx) = tokio::sync::mpsc::channel::<Bytes>(16);
    tokio::spawn(async move {
        if let Err(e) = run(&sh, &c, opts, tx).await {
            tracing::warn!(container = %c.id, error = %e, "following a container log ended");
        }
    });
    let stream = tokio_stream::wrappers::ReceiverStream::new(rx)
        .map(|b| Ok::<_, Infallible>(Frame::data(b)));
    let mut r = Response::new(BodyExt::boxed_unsync(StreamBody::new(stream)));
    r.headers_mut().insert(
        hyper::header::CONTENT_TYPE,
        hyper::header::HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    r
}

async fn run(
    sh: &Shared,
    c: &Container,
    opts: Opts,
    tx: tokio::sync::mpsc::Sender<Bytes>,
) -> std::io::Result<()> {
    let path = std::path::PathBuf::from(&c.log_path);
    let mut file = open(&path).await?;
    let mut ino = file.metadata()?.ino();
    let mut joiner = Joiner::default();
    let mut pending = Vec::new();
    let mut sent = 0usize;
    let mut cri = sh.cri.clone();

    // What is there already: filtered, tail applied, one chunk.
    let mut data = Vec::new();
    file.read_to_end(&mut data)?;
    let cut = data.iter().rposition(|b| *b == b'\n').map_or(0, |i| i + 1);
    pending.extend_from_slice(&data[cut..]);
    let text = String::from_utf8_lossy(&data[..cut]).into_owned();
    let mut lines: Vec<(String, String)> = text
        .lines()
        .filter_map(|l| joiner.feed(l))
        .filter(|(ts, _)| opts.keep(ts))
        .collect();
    if let Some(n) = opts.tail {
        let skip = lines.len().saturating_sub(n);
        lines.drain(..skip);
    }
    let mut out = String::new();
    for (ts, l) in &lines {
        opts.format(ts, l, &mut out);
    }
    if !send(&tx, out, &opts, &mut sent).await {
        return Ok(());
    }

    let mut last_check = Instant::now();
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let n = file.read(&mut buf)?;
        if n > 0 {
            pending.extend_from_slice(&buf[..n]);
            let Some(end) = pending.iter().rposition(|b| *b == b'\n') else {
                continue;
            };
            let chunk: Vec<u8> = pending.drain(..=end).collect();
            let mut out = String::new();
            for l in String::from_utf8_lossy(&chunk).lines() {
                if let Some((ts, line)) = joiner.feed(l)
                    && opts.keep(&ts)
                {
                    opts.format(&ts, &line, &mut out);
                }
            }
            if !send(&tx, out, &opts, &mut sent).await {
                return Ok(());
            }
            continue;
        }
        // At the end of the file: rotated away? Then on to the new one.
        if let Ok(m) = std::fs::metadata(&path)
            && m.ino() != ino
        {
            file = open(&path).await?;
            ino = file.metadata()?.ino();
            file.seek(SeekFrom::Start(0))?;
            continue;
        }
        if tx.is_closed() {
            return Ok(());
        }
        if last_check.elapsed() >= Duration::from_secs(1) {
            last_check = Instant::now();
            let running = match cri
                .runtime
                .container_status(pb::ContainerStatusRequest {
                    container_id: c.id.clone(),
                    verbose: false,
                })
                .await
            {
                Ok(r) => r
                    .into_inner()
                    .status
                    .is_some_and(|s| s.state == pb::ContainerState::ContainerRunning as i32),
                Err(e) if e.code() == tonic::Code::NotFound => false,
                // A passing runtime error ends nothing: ask again next second.
                Err(_) => true,
            };
            if !running {
                tracing::debug!(container = %c.id, "the container stopped: the followed log ends");
                // What it wrote last, then the end.
                let mut rest = Vec::new();
                file.read_to_end(&mut rest)?;
                pending.extend_from_slice(&rest);
                let mut out = String::new();
                for l in String::from_utf8_lossy(&pending).lines() {
                    if let Some((ts, line)) = joiner.feed(l)
                        && opts.keep(&ts)
                    {
                        opts.format(&ts, &line, &mut out);
                    }
                }
                send(&tx, out, &opts, &mut sent).await;
                return Ok(());
            }
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Opens the log, waiting a moment when it is missing: between the rename of a rotation and
/// the runtime's reopen there is no file at the path.
async fn open(path: &std::path::Path) -> std::io::Result<std::fs::File> {
    let mut tries = 0;
    loop {
        match std::fs::File::open(path) {
            Err(e) if e.kind() == std::io::ErrorKind::NotFound && tries < 50 => {
                tries += 1;
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            r => return r,
        }
    }
}

/// Sends `out` within limitBytes; false when the stream is done (limit reached, client gone).
async fn send(
    tx: &tokio::sync::mpsc::Sender<Bytes>,
    mut out: String,
    opts: &Opts,
    sent: &mut usize,
) -> bool {
    if out.is_empty() {
        return !tx.is_closed();
    }
    let mut done = false;
    if let Some(limit) = opts.limit {
        let room = limit.saturating_sub(*sent);
        if out.len() >= room {
            let mut cut = room;
            while !out.is_char_boundary(cut) {
                cut -= 1;
            }
            out.truncate(cut);
            done = true;
        }
    }
    *sent += out.len();
    if !out.is_empty() && tx.send(Bytes::from(out)).await.is_err() {
        return false;
    }
    !done
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn options() {
        let q = |s: &[(&str, &str)]| -> HashMap<String, String> {
            s.iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect()
        };
        let o = Opts::parse(&q(&[("sinceTime", "2024-01-01T00:00:01Z")])).expect("opts");
        assert!(!o.keep("2024-01-01T00:00:00.5Z"));
        assert!(o.keep("2024-01-01T00:00:01Z"));
        assert!(o.keep("2024-01-01T00:00:02.123456789Z"));
        let o = Opts::parse(&q(&[("sinceSeconds", "60")])).expect("opts");
        assert!(!o.keep("2000-01-01T00:00:00Z"));
        for bad in [
            q(&[("sinceSeconds", "1"), ("sinceTime", "2024-01-01T00:00:00Z")]),
            q(&[("sinceSeconds", "0")]),
            q(&[("sinceSeconds", "x")]),
            q(&[("sinceTime", "yesterday")]),
            q(&[("limitBytes", "0")]),
        ] {
            assert!(Opts::parse(&bad).is_err(), "{bad:?}");
        }
        let mut j = Joiner::default();
        assert_eq!(j.feed("2024-01-01T00:00:00Z stdout P a"), None);
        assert_eq!(
            j.feed("2024-01-01T00:00:01Z stdout F b"),
            Some(("2024-01-01T00:00:00Z".into(), "ab".into()))
        );
    }
}
