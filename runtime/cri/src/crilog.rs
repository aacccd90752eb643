//! The CRI container log format, as the kubelet reads it and containerd writes it:
//!
//! ```text
//! <timestamp> <stream> <tag> <content>\n
//! 2016-10-06T00:17:09.669794202Z stdout F a full line
//! 2016-10-06T00:17:10.113242941Z stderr P the first part of a long line
//! ```
//!
//! - `timestamp`: Go's `time.RFC3339Nano` (trailing zeros of the fraction trimmed, no fraction
//!   at all on a whole second); the writer uses UTC (`Z`), the parser also takes `±hh:mm`.
//! - `stream`: `stdout` or `stderr` (a terminal's output is `stdout`).
//! - `tag`: `F` (full: the record ends a line) or `P` (partial: the line goes on in a later
//!   record of the same stream).
//!
//! [`LineSplitter`] cuts a stream into records exactly as containerd's `redirectLogs`
//! (internal/cri/io/logger.go) does:
//! - a line ends at `\n`; the `\n`, and a `\r` right before it, are not part of the content
//!   (so `\r\n` output, e.g. a terminal's, logs like `\n`); any other `\r` is kept;
//! - an empty line is an `F` record with empty content;
//! - a line longer than the maximum ([`MAX_LINE`], containerd's default
//!   `max_container_log_line_size`) becomes `P` records of exactly the maximum length,
//!   ended by an `F` record with the rest;
//! - a last line without `\n` at end of file is written as a `P` record (containerd treats it
//!   as partial); nothing is written for an empty rest.

use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// The longest content of one record: containerd's default `max_container_log_line_size`.
pub const MAX_LINE: usize = 16 * 1024;

/// Mode of a newly created log file (as containerd's CRI plugin creates it).
const LOG_FILE_MODE: u32 = 0o640;

/// Which output of the container a record comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Stream {
    Stdout,
    Stderr,
}

impl Stream {
    pub fn as_str(self) -> &'static str {
        match self {
            Stream::Stdout => "stdout",
            Stream::Stderr => "stderr",
        }
    }
}

/// Whether a record ends its line.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Tag {
    /// `P`: the line continues in the next record of the same stream.
    Partial,
    /// `F`: the record ends a line.
    Full,
}

impl Tag {
    pub fn as_str(self) -> &'static str {
        match self {
            Tag::Partial => "P",
            Tag::Full => "F",
        }
    }
}

/// One parsed log record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record {
    pub time: SystemTime,
    pub stream: Stream,
    pub tag: Tag,
    pub content: Vec<u8>,
}

/// Why a log line is not a CRI record.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ParseError {
    #[error("line {line}: {reason}")]
    Record { line: usize, reason: String },
    #[error("line {line}: the last record has no end of line")]
    Truncated { line: usize },
}

/// Cuts one stream's output into records the way containerd does (see the module docs).
#[derive(Debug)]
pub struct LineSplitter {
    pending: Vec<u8>,
    max_len: usize,
}

impl LineSplitter {
    /// A splitter cutting lines longer than `max_len` bytes (at least 1).
    pub fn new(max_len: usize) -> LineSplitter {
        LineSplitter {
            pending: Vec::new(),
            max_len: max_len.max(1),
        }
    }

    /// Takes the next bytes of the stream and emits every record they complete.
    pub fn feed(&mut self, mut data: &[u8], mut emit: impl FnMut(Tag, &[u8])) {
        while !data.is_empty() {
            match data.iter().position(|&b| b == b'\n') {
                Some(i) => {
                    self.pending.extend_from_slice(&data[..i]);
                    data = &data[i + 1..];
                    if self.pending.last() == Some(&b'\r') {
                        self.pending.pop();
                    }
                    self.emit_long(false, &mut emit);
                    emit(Tag::Full, &self.pending);
                    self.pending.clear();
                }
                None => {
                    self.pending.extend_from_slice(data);
                    data = &[];
                    self.emit_long(true, &mut emit);
                }
            }
        }
    }

    /// End of the stream: what is left of an unterminated line becomes a `P` record.
    pub fn finish(&mut self, mut emit: impl FnMut(Tag, &[u8])) {
        self.emit_long(false, &mut emit);
        if !self.pending.is_empty() {
            emit(Tag::Partial, &self.pending);
            self.pending.clear();
        }
    }

    /// Emits `P` records of `max_len` bytes while more than that is pending. A `\r` at the very
    /// end of an open line is not counted: it may turn out to be half of a `\r\n`.
    fn emit_long(&mut self, line_open: bool, emit: &mut impl FnMut(Tag, &[u8])) {
        loop {
            let mut len = self.pending.len();
            if line_open && self.pending.last() == Some(&b'\r') {
                len -= 1;
            }
            if len <= self.max_len {
                return;
            }
            emit(Tag::Partial, &self.pending[..self.max_len]);
            self.pending.drain(..self.max_len);
        }
    }
}

/// Appends one record (with its end of line) to `buf`.
pub fn encode_record(
    buf: &mut Vec<u8>,
    time: SystemTime,
    stream: Stream,
    tag: Tag,
    content: &[u8],
) {
    push_timestamp(buf, time);
    buf.push(b' ');
    buf.extend_from_slice(stream.as_str().as_bytes());
    buf.push(b' ');
    buf.extend_from_slice(tag.as_str().as_bytes());
    buf.push(b' ');
    buf.extend_from_slice(content);
    buf.push(b'\n');
}

/// A CRI log file open for appending; [`LogFile::reopen`] follows a rotation (the kubelet
/// renames the file, then asks for it to be reopened).
#[derive(Debug)]
pub struct LogFile {
    path: PathBuf,
    file: File,
    buf: Vec<u8>,
}

fn open_append(path: &Path) -> io::Result<File> {
    OpenOptions::new()
        .append(true)
        .create(true)
        .mode(LOG_FILE_MODE)
        .custom_flags(libc::O_CLOEXEC | libc::O_NOCTTY)
        .open(path)
}

impl LogFile {
    /// Opens (creating if needed) `path` for appending. Its directory must exist.
    pub fn open(path: &Path) -> io::Result<LogFile> {
        Ok(LogFile {
            path: path.to_path_buf(),
            file: open_append(path)?,
            buf: Vec::with_capacity(256),
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Opens the path again, so records go to a new file after a rename. On error the old file
    /// stays in use.
    pub fn reopen(&mut self) -> io::Result<()> {
        self.file = open_append(&self.path)?;
        Ok(())
    }

    /// Writes one record, stamped now, with one `write` call.
    pub fn write(&mut self, stream: Stream, tag: Tag, content: &[u8]) -> io::Result<()> {
        self.write_at(SystemTime::now(), stream, tag, content)
    }

    /// Writes one record with the given time.
    pub fn write_at(
        &mut self,
        time: SystemTime,
        stream: Stream,
        tag: Tag,
        content: &[u8],
    ) -> io::Result<()> {
        self.buf.clear();
        encode_record(&mut self.buf, time, stream, tag, content);
        let res = self.file.write_all(&self.buf);
        // Do not keep a huge buffer after one long record.
        if self.buf.capacity() > 4 * MAX_LINE {
            self.buf = Vec::with_capacity(256);
        }
        res
    }
}

/// Parses one record (without its end of line).
pub fn parse_record(line: &[u8]) -> Result<Record, String> {
    let mut parts = line.splitn(4, |&b| b == b' ');
    let (Some(ts), Some(stream), Some(tag), Some(content)) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err("not `<time> <stream> <tag> <content>`".into());
    };
    let ts = std::str::from_utf8(ts).map_err(|_| "timestamp is not UTF-8".to_string())?;
    let time = parse_timestamp(ts).ok_or_else(|| format!("bad timestamp {ts:?}"))?;
    let stream = match stream {
        b"stdout" => Stream::Stdout,
        b"stderr" => Stream::Stderr,
        other => {
            return Err(format!(
                "unknown stream {:?}",
                String::from_utf8_lossy(other)
            ));
        }
    };
    // Tags may grow into a `:`-separated list; the first one is P or F.
    let first_tag = tag.split(|&b| b == b':').next().unwrap_or_default();
    let tag = match first_tag {
        b"P" => Tag::Partial,
        b"F" => Tag::Full,
        other => return Err(format!("unknown tag {:?}", String::from_utf8_lossy(other))),
    };
    Ok(Record {
        time,
        stream,
        tag,
        content: content.to_vec(),
    })
}

/// Parses a whole log file's content; every record must end with `\n`.
pub fn parse_log(data: &[u8]) -> Result<Vec<Record>, ParseError> {
    let mut out = Vec::new();
    let mut rest = data;
    let mut line = 0;
    while !rest.is_empty() {
        line += 1;
        let Some(end) = rest.iter().position(|&b| b == b'\n') else {
            return Err(ParseError::Truncated { line });
        };
        let record =
            parse_record(&rest[..end]).map_err(|reason| ParseError::Record { line, reason })?;
        out.push(record);
        rest = &rest[end + 1..];
    }
    Ok(out)
}

/// Joins records into the lines they carry, per stream in order of their last record: `P`
/// records are prepended to the next record of their stream. A line still open at the end
/// (only `P` records) is returned too.
pub fn assemble(records: &[Record]) -> Vec<(Stream, Vec<u8>)> {
    let mut out = Vec::new();
    let mut open: Vec<(Stream, Vec<u8>)> = Vec::new();
    for r in records {
        let buf = match open.iter_mut().find(|(s, _)| *s == r.stream) {
            Some((_, buf)) => buf,
            None => {
                open.push((r.stream, Vec::new()));
                let last = open.len() - 1;
                &mut open[last].1
            }
        };
        buf.extend_from_slice(&r.content);
        if r.tag == Tag::Full {
            out.push((r.stream, std::mem::take(buf)));
            open.retain(|(s, _)| *s != r.stream);
        }
    }
    out.extend(open);
    out
}

/// `t` as Go's `time.RFC3339Nano` in UTC.
pub fn format_timestamp(t: SystemTime) -> String {
    let mut buf = Vec::with_capacity(30);
    push_timestamp(&mut buf, t);
    String::from_utf8_lossy(&buf).into_owned()
}

fn push_timestamp(buf: &mut Vec<u8>, t: SystemTime) {
    let (secs, nanos) = match t.duration_since(UNIX_EPOCH) {
        Ok(d) => (d.as_secs() as i64, d.subsec_nanos()),
        Err(e) => {
            let d = e.duration();
            let mut secs = -(d.as_secs() as i64);
            let mut nanos = d.subsec_nanos();
            if nanos > 0 {
                secs -= 1;
                nanos = 1_000_000_000 - nanos;
            }
            (secs, nanos)
        }
    };
    let days = secs.div_euclid(86_400);
    let sod = secs.rem_euclid(86_400);
    let (y, m, d) = civil_from_days(days);
    // Writing into a Vec cannot fail.
    let _ = write!(
        buf,
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}",
        sod / 3600,
        (sod / 60) % 60,
        sod % 60
    );
    if nanos > 0 {
        let mut digits = [0u8; 9];
        let mut n = nanos;
        for slot in digits.iter_mut().rev() {
            *slot = b'0' + (n % 10) as u8;
            n /= 10;
        }
        let len = 9 - digits.iter().rev().take_while(|&&c| c == b'0').count();
        buf.push(b'.');
        buf.extend_from_slice(&digits[..len]);
    }
    buf.push(b'Z');
}

/// Parses an RFC 3339 timestamp as Go's `time.Parse(time.RFC3339Nano, ..)` accepts it:
/// `YYYY-MM-DDTHH:MM:SS[.fraction]` then `Z` or `±hh:mm`; up to 9 fraction digits.
pub fn parse_timestamp(s: &str) -> Option<SystemTime> {
    let b = s.as_bytes();
    let num = |r: std::ops::Range<usize>| -> Option<i64> {
        let part = b.get(r)?;
        if part.is_empty() || !part.iter().all(u8::is_ascii_digit) {
            return None;
        }
        std::str::from_utf8(part).ok()?.parse().ok()
    };
    let sep = |i: usize, c: u8| b.get(i) == Some(&c);
    if !(sep(4, b'-') && sep(7, b'-') && sep(10, b'T') && sep(13, b':') && sep(16, b':')) {
        return None;
    }
    let (year, month, day) = (num(0..4)?, num(5..7)?, num(8..10)?);
    let (hour, min, sec) = (num(11..13)?, num(14..16)?, num(17..19)?);
    if !(1..=12).contains(&month)
        || day < 1
        || day > days_in_month(year, month)
        || hour > 23
        || min > 59
        || sec > 59
    {
        return None;
    }
    let mut i = 19;
    let mut nanos: i64 = 0;
    if sep(i, b'.') {
        let start = i + 1;
        let mut end = start;
        while b.get(end).is_some_and(u8::is_ascii_digit) {
            end += 1;
        }
        let digits = end - start;
        if digits == 0 || digits > 9 {
            return None;
        }
        nanos = num(start..end)? * 10i64.pow((9 - digits) as u32);
        i = end;
    }
    let offset = match b.get(i)? {
        b'Z' if i + 1 == b.len() => 0,
        c @ (b'+' | b'-') if i + 6 == b.len() && sep(i + 3, b':') => {
            let (oh, om) = (num(i + 1..i + 3)?, num(i + 4..i + 6)?);
            if oh > 23 || om > 59 {
                return None;
            }
            let off = oh * 3600 + om * 60;
            if *c == b'+' { off } else { -off }
        }
        _ => return None,
    };
    let secs =
        days_from_civil(year, month as u32, day as u32) * 86_400 + hour * 3600 + min * 60 + sec
            - offset;
    let t = if secs >= 0 {
        UNIX_EPOCH.checked_add(Duration::new(secs as u64, nanos as u32))?
    } else {
        UNIX_EPOCH
            .checked_sub(Duration::from_secs(secs.unsigned_abs()))?
            .checked_add(Duration::from_nanos(nanos as u64))?
    };
    Some(t)
}

fn days_in_month(y: i64, m: i64) -> i64 {
    match m {
        2 if (y % 4 == 0 && y % 100 != 0) || y % 400 == 0 => 29,
        2 => 28,
        4 | 6 | 9 | 11 => 30,
        _ => 31,
    }
}

/// Days since 1970-01-01 to (year, month, day), proleptic Gregorian (Howard Hinnant's
/// algorithm).
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (if m <= 2 { y + 1 } else { y }, m, d)
}

/// The inverse of [`civil_from_days`].
fn days_from_civil(y: i64, m: u32, d: u32) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y.rem_euclid(400);
    let m = i64::from(m);
    let mp = if m > 2 { m - 3 } else { m + 9 };
    let doy = (153 * mp + 2) / 5 + i64::from(d) - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Feeds `chunks` one after the other, then ends the stream.
    fn split(max: usize, chunks: &[&[u8]]) -> Vec<(Tag, Vec<u8>)> {
        let mut s = LineSplitter::new(max);
        let mut out = Vec::new();
        for c in chunks {
            s.feed(c, |t, d| out.push((t, d.to_vec())));
        }
        s.finish(|t, d| out.push((t, d.to_vec())));
        out
    }

    fn rec(tag: Tag, s: &str) -> (Tag, Vec<u8>) {
        (tag, s.as_bytes().to_vec())
    }

    #[test]
    fn lines_are_full_records() {
        assert_eq!(
            split(MAX_LINE, &[b"one\ntwo\n\nthree\n"]),
            vec![
                rec(Tag::Full, "one"),
                rec(Tag::Full, "two"),
                rec(Tag::Full, ""),
                rec(Tag::Full, "three"),
            ]
        );
    }

    #[test]
    fn a_line_may_arrive_in_pieces() {
        assert_eq!(
            split(MAX_LINE, &[b"he", b"llo", b" world\nnext", b"\n"]),
            vec![rec(Tag::Full, "hello world"), rec(Tag::Full, "next")]
        );
    }

    #[test]
    fn long_lines_split_into_partials_then_full() {
        let line = vec![b'a'; 40 * 1024];
        let mut data = line.clone();
        data.push(b'\n');
        let out = split(MAX_LINE, &[&data]);
        let tags: Vec<Tag> = out.iter().map(|(t, _)| *t).collect();
        assert_eq!(tags, vec![Tag::Partial, Tag::Partial, Tag::Full]);
        let lens: Vec<usize> = out.iter().map(|(_, d)| d.len()).collect();
        assert_eq!(lens, vec![MAX_LINE, MAX_LINE, 40 * 1024 - 2 * MAX_LINE]);
        // Byte by byte gives the same records.
        let bytes: Vec<&[u8]> = data.chunks(1).collect();
        assert_eq!(split(MAX_LINE, &bytes), out);
        // Exactly the maximum is one full record.
        assert_eq!(
            split(4, &[b"abcd\nabcde\n"]),
            vec![
                rec(Tag::Full, "abcd"),
                rec(Tag::Partial, "abcd"),
                rec(Tag::Full, "e")
            ]
        );
    }

    #[test]
    fn unterminated_last_line_is_partial() {
        assert_eq!(
            split(MAX_LINE, &[b"done\nno newline"]),
            vec![rec(Tag::Full, "done"), rec(Tag::Partial, "no newline")]
        );
        assert_eq!(
            split(4, &[b"abcdefghij"]),
            vec![
                rec(Tag::Partial, "abcd"),
                rec(Tag::Partial, "efgh"),
                rec(Tag::Partial, "ij")
            ]
        );
        assert_eq!(split(MAX_LINE, &[b""]), vec![]);
    }

    #[test]
    fn crlf_ends_a_line_like_lf_and_other_cr_stay() {
        assert_eq!(
            split(MAX_LINE, &[b"dos\r\nmid\rdle\n\r\n", b"end\r"]),
            vec![
                rec(Tag::Full, "dos"),
                rec(Tag::Full, "mid\rdle"),
                rec(Tag::Full, ""),
                rec(Tag::Partial, "end\r"),
            ]
        );
        // A \r\n straddling the maximum is not split off as content.
        assert_eq!(split(4, &[b"abcd\r", b"\n"]), vec![rec(Tag::Full, "abcd")]);
        assert_eq!(
            split(4, &[b"abcd\r", b"x\n"]),
            vec![rec(Tag::Partial, "abcd"), rec(Tag::Full, "\rx")]
        );
    }

    #[test]
    fn timestamps_format_like_go() {
        let t = UNIX_EPOCH + Duration::new(1_795_365_746, 261_850_150);
        assert_eq!(format_timestamp(t), "2026-11-22T16:42:26.26185015Z");
        assert_eq!(
            format_timestamp(UNIX_EPOCH + Duration::from_secs(951_782_400)),
            "2000-02-29T00:00:00Z"
        );
        assert_eq!(
            format_timestamp(UNIX_EPOCH + Duration::new(0, 1)),
            "1970-01-01T00:00:00.000000001Z"
        );
    }

    #[test]
    fn timestamps_parse() {
        for (s, secs, nanos) in [
            ("2026-11-22T16:42:26.26185015Z", 1_795_365_746, 261_850_150),
            ("2000-02-29T00:00:00Z", 951_782_400, 0),
            ("2000-02-29T02:00:00.5+02:00", 951_782_400, 500_000_000),
            ("2000-02-28T23:00:00-01:00", 951_782_400, 0),
        ] {
            assert_eq!(
                parse_timestamp(s),
                Some(UNIX_EPOCH + Duration::new(secs, nanos)),
                "{s}"
            );
        }
        for bad in [
            "",
            "2000-02-30T00:00:00Z",
            "2000-02-29 00:00:00Z",
            "2000-02-29T00:00:00",
            "2000-02-29T00:00:00.Z",
            "2000-02-29T00:00:00.1234567890Z",
            "2000-02-29T24:00:00Z",
            "2000-02-29T00:00:00Zx",
        ] {
            assert_eq!(parse_timestamp(bad), None, "{bad}");
        }
        // Round trip over a range of days, before and after the epoch.
        for secs in (-3_000_000_000i64..4_000_000_000).step_by(86_399_999) {
            let t = if secs >= 0 {
                UNIX_EPOCH + Duration::new(secs as u64, 120)
            } else {
                UNIX_EPOCH - Duration::from_secs(secs.unsigned_abs()) + Duration::new(0, 120)
            };
            assert_eq!(parse_timestamp(&format_timestamp(t)), Some(t), "{secs}");
        }
    }

    #[test]
    fn records_round_trip_and_streams_interleave() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("c.log");
        let mut log = LogFile::open(&path).expect("open");
        let mut out = LineSplitter::new(8);
        let mut err = LineSplitter::new(8);
        let t0 = SystemTime::now();
        let write = |log: &mut LogFile, s: &mut LineSplitter, stream, data: &[u8]| {
            s.feed(data, |tag, d| log.write(stream, tag, d).expect("write"));
        };
        write(&mut log, &mut out, Stream::Stdout, b"out 1\nout-long-");
        write(&mut log, &mut err, Stream::Stderr, b"err 1\r\n");
        write(&mut log, &mut out, Stream::Stdout, b"line\n");
        write(&mut log, &mut err, Stream::Stderr, b"err\t2 x\n");
        err.finish(|_, _| panic!("nothing left on stderr"));
        out.finish(|_, _| panic!("nothing left on stdout"));
        let data = std::fs::read(&path).expect("read");
        let text = String::from_utf8(data.clone()).expect("utf8");
        let records = parse_log(&data).expect("parse");
        let got: Vec<(Stream, Tag, &[u8])> = records
            .iter()
            .map(|r| (r.stream, r.tag, r.content.as_slice()))
            .collect();
        assert_eq!(
            got,
            vec![
                (Stream::Stdout, Tag::Full, &b"out 1"[..]),
                (Stream::Stdout, Tag::Partial, &b"out-long"[..]),
                (Stream::Stderr, Tag::Full, &b"err 1"[..]),
                (Stream::Stdout, Tag::Full, &b"-line"[..]),
                (Stream::Stderr, Tag::Full, &b"err\t2 x"[..]),
            ],
            "{text}"
        );
        for r in &records {
            assert!(r.time >= t0 - Duration::from_secs(1) && r.time <= SystemTime::now());
        }
        for line in text.lines() {
            let ts = line.split(' ').next().expect("timestamp");
            assert!(ts.ends_with('Z'), "{line}");
        }
        assert_eq!(
            assemble(&records),
            vec![
                (Stream::Stdout, b"out 1".to_vec()),
                (Stream::Stderr, b"err 1".to_vec()),
                (Stream::Stdout, b"out-long-line".to_vec()),
                (Stream::Stderr, b"err\t2 x".to_vec()),
            ]
        );
    }

    #[test]
    fn reopen_follows_a_rename() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("c.log");
        let mut log = LogFile::open(&path).expect("open");
        log.write(Stream::Stdout, Tag::Full, b"before")
            .expect("write");
        std::fs::rename(&path, dir.path().join("c.log.1")).expect("rename");
        log.write(Stream::Stdout, Tag::Full, b"still old")
            .expect("write");
        log.reopen().expect("reopen");
        log.write(Stream::Stdout, Tag::Full, b"after")
            .expect("write");
        let old =
            parse_log(&std::fs::read(dir.path().join("c.log.1")).expect("old")).expect("parse old");
        let new = parse_log(&std::fs::read(&path).expect("new")).expect("parse new");
        assert_eq!(old.len(), 2);
        assert_eq!(new.len(), 1);
        assert_eq!(new[0].content, b"after");
    }

    #[test]
    fn bad_records_are_refused() {
        let good = b"2000-02-29T00:00:00Z stdout F hi\n";
        assert_eq!(parse_log(good).expect("good")[0].content, b"hi");
        // Extra tags after `:` are allowed, content may hold spaces and be empty.
        let r = parse_record(b"2000-02-29T00:00:00Z stderr P:x a  b").expect("tags");
        assert_eq!(
            (r.stream, r.tag, r.content),
            (Stream::Stderr, Tag::Partial, b"a  b".to_vec())
        );
        assert_eq!(
            parse_record(b"2000-02-29T00:00:00Z stdout F ")
                .expect("empty")
                .content,
            b""
        );
        for bad in [
            &b"2000-02-29T00:00:00Z stdout F"[..],
            b"2000-02-29T00:00:00Z stdin F x",
            b"2000-02-29T00:00:00Z stdout X x",
            b"yesterday stdout F x",
        ] {
            assert!(
                parse_record(bad).is_err(),
                "{}",
                String::from_utf8_lossy(bad)
            );
        }
        assert_eq!(
            parse_log(b"2000-02-29T00:00:00Z stdout F hi\n2000"),
            Err(ParseError::Truncated { line: 2 })
        );
    }
}
