//! How keelsonctl shows things, the way crictl does: tables aligned like Go's `tabwriter`
//! (minimum cell width 20, padding 3), sizes and ages like docker's `go-units`, shortened
//! IDs, RFC 3339 times, JSON with sorted keys, and the small regular expressions the
//! `--name`/`--namespace` filters take.

use serde_json::{Map, Value};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// How many characters of an ID a table shows.
pub const TRUNCATED_ID_LEN: usize = 13;

/// Rows of cells, written aligned on [`Table::render`].
#[derive(Debug, Default)]
pub struct Table {
    rows: Vec<Vec<String>>,
}

impl Table {
    pub fn new() -> Table {
        Table::default()
    }

    pub fn row<S: Into<String>>(&mut self, cells: impl IntoIterator<Item = S>) {
        self.rows.push(cells.into_iter().map(Into::into).collect());
    }

    /// Every column but the last is padded to its widest cell plus 3, at least 20
    /// characters; the last cell of a row is written as it is.
    pub fn render(&self) -> String {
        const MIN_WIDTH: usize = 20;
        const PADDING: usize = 3;
        let mut widths: Vec<usize> = Vec::new();
        for row in &self.rows {
            for (i, cell) in row.iter().enumerate().take(row.len().saturating_sub(1)) {
                let w = cell.chars().count() + PADDING;
                match widths.get_mut(i) {
                    Some(x) => *x = (*x).max(w),
                    None => widths.push(w.max(MIN_WIDTH)),
                }
            }
        }
        let mut out = String::new();
        for row in &self.rows {
            for (i, cell) in row.iter().enumerate() {
                out.push_str(cell);
                if i + 1 < row.len() {
                    let pad = widths[i].max(MIN_WIDTH) - cell.chars().count();
                    out.extend(std::iter::repeat_n(' ', pad));
                }
            }
            out.push('\n');
        }
        out
    }
}

/// `id` without `prefix`, cut to [`TRUNCATED_ID_LEN`] characters.
pub fn truncate_id(id: &str, prefix: &str) -> String {
    let id = id.strip_prefix(prefix).unwrap_or(id);
    id.chars().take(TRUNCATED_ID_LEN).collect()
}

/// Go's `fmt.Sprintf("%.*g", precision, v)` for a finite `v >= 0`.
fn go_g(v: f64, precision: usize) -> String {
    if v == 0.0 {
        return "0".into();
    }
    let p = precision.max(1);
    let sci = format!("{:.*e}", p - 1, v);
    let Some((mantissa, exp)) = sci.split_once('e') else {
        return sci;
    };
    let exp: i32 = exp.parse().unwrap_or(0);
    let trim = |s: &str| -> String {
        if s.contains('.') {
            s.trim_end_matches('0').trim_end_matches('.').to_string()
        } else {
            s.to_string()
        }
    };
    if exp < -4 || exp >= p as i32 {
        let sign = if exp < 0 { '-' } else { '+' };
        format!("{}e{sign}{:02}", trim(mantissa), exp.abs())
    } else {
        let decimals = (p as i32 - 1 - exp).max(0) as usize;
        trim(&format!("{v:.decimals$}"))
    }
}

/// docker's `units.HumanSizeWithPrecision`: decimal units (kB = 1000 B).
pub fn human_size_with_precision(size: f64, precision: usize) -> String {
    const UNITS: [&str; 9] = ["B", "kB", "MB", "GB", "TB", "PB", "EB", "ZB", "YB"];
    let mut size = size;
    let mut i = 0;
    while size >= 1000.0 && i < UNITS.len() - 1 {
        size /= 1000.0;
        i += 1;
    }
    format!("{}{}", go_g(size, precision), UNITS[i])
}

/// docker's `units.HumanSize` (4 significant digits).
pub fn human_size(size: f64) -> String {
    human_size_with_precision(size, 4)
}

/// docker's `units.HumanDuration`.
pub fn human_duration(d: Duration) -> String {
    let secs = d.as_secs();
    let hours_f = d.as_secs_f64() / 3600.0;
    if secs < 1 {
        return "Less than a second".into();
    }
    if secs == 1 {
        return "1 second".into();
    }
    if secs < 60 {
        return format!("{secs} seconds");
    }
    let minutes = secs / 60;
    if minutes == 1 {
        return "About a minute".into();
    }
    if minutes < 60 {
        return format!("{minutes} minutes");
    }
    let hours = (hours_f + 0.5) as u64;
    if hours == 1 {
        return "About an hour".into();
    }
    if hours < 48 {
        return format!("{hours} hours");
    }
    if hours < 24 * 7 * 2 {
        return format!("{} days", hours / 24);
    }
    if hours < 24 * 30 * 2 {
        return format!("{} weeks", hours / 24 / 7);
    }
    if hours < 24 * 365 * 2 {
        return format!("{} months", hours / 24 / 30);
    }
    format!("{} years", (hours_f as u64) / 24 / 365)
}

/// A CRI timestamp (nanoseconds since the epoch) as a time.
pub fn time_of(ns: i64) -> SystemTime {
    let d = Duration::from_nanos(ns.unsigned_abs());
    if ns >= 0 {
        UNIX_EPOCH + d
    } else {
        UNIX_EPOCH - d
    }
}

/// "N ago" for a CRI timestamp, as crictl's tables show it.
pub fn ago(ns: i64) -> String {
    let d = SystemTime::now()
        .duration_since(time_of(ns))
        .unwrap_or_default();
    format!("{} ago", human_duration(d))
}

/// A CRI timestamp as Go's `time.RFC3339Nano` (UTC).
pub fn rfc3339(ns: i64) -> String {
    crate::crilog::format_timestamp(time_of(ns))
}

/// Go's zero `time.Time` as RFC 3339 (what crictl shows for a time that never was).
pub const ZERO_TIME: &str = "0001-01-01T00:00:00Z";

/// `v` with the keys of every object in sorted order (as Go writes a `map[string]any`).
pub fn sorted(v: Value) -> Value {
    match v {
        Value::Object(m) => {
            let mut items: Vec<(String, Value)> = m.into_iter().collect();
            items.sort_by(|a, b| a.0.cmp(&b.0));
            let mut out = Map::new();
            for (k, v) in items {
                out.insert(k, sorted(v));
            }
            Value::Object(out)
        }
        Value::Array(a) => Value::Array(a.into_iter().map(sorted).collect()),
        v => v,
    }
}

/// JSON with a two-space indent.
pub fn pretty(v: &Value) -> String {
    serde_json::to_string_pretty(v).unwrap_or_else(|_| v.to_string())
}

// ------------------------------------------------------------- name patterns

#[derive(Debug, Clone)]
enum Atom {
    Any,
    Char(char),
    Class {
        negated: bool,
        items: Vec<(char, char)>,
    },
}

impl Atom {
    fn matches(&self, c: char) -> bool {
        match self {
            Atom::Any => c != '\n',
            Atom::Char(x) => *x == c,
            Atom::Class { negated, items } => {
                items.iter().any(|(lo, hi)| (*lo..=*hi).contains(&c)) != *negated
            }
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum Repeat {
    One,
    ZeroOrOne,
    ZeroOrMore,
    OneOrMore,
}

#[derive(Debug, Clone)]
struct Branch {
    start: bool,
    end: bool,
    items: Vec<(Atom, Repeat)>,
}

/// A regular expression of the subset crictl users type into `--name`/`--namespace`:
/// literals, `.`, `[...]`/`[^...]` with ranges, `\d \w \s` and escaped characters, the
/// quantifiers `* + ?`, anchors `^ $` and top-level `|`. Unanchored, it matches anywhere.
#[derive(Debug, Clone)]
pub struct Pattern {
    branches: Vec<Branch>,
}

fn class_escape(c: char) -> Option<Vec<(char, char)>> {
    match c {
        'd' => Some(vec![('0', '9')]),
        'w' => Some(vec![('a', 'z'), ('A', 'Z'), ('0', '9'), ('_', '_')]),
        's' => Some(vec![
            (' ', ' '),
            ('\t', '\t'),
            ('\n', '\n'),
            ('\r', '\r'),
            ('\x0b', '\x0c'),
        ]),
        _ => None,
    }
}

impl Pattern {
    pub fn new(src: &str) -> Result<Pattern, String> {
        let bad = |why: &str| format!("invalid regular expression {src:?}: {why}");
        let mut branches = Vec::new();
        for part in src.split('|') {
            let mut chars: Vec<char> = part.chars().collect();
            let start = chars.first() == Some(&'^');
            if start {
                chars.remove(0);
            }
            let end =
                chars.last() == Some(&'$') && !(chars.len() >= 2 && chars[chars.len() - 2] == '\\');
            if end {
                chars.pop();
            }
            let mut items: Vec<(Atom, Repeat)> = Vec::new();
            let mut i = 0;
            while i < chars.len() {
                let c = chars[i];
                i += 1;
                let atom = match c {
                    '.' => Atom::Any,
                    '*' | '+' | '?' => {
                        let Some(last) = items.last_mut() else {
                            return Err(bad("a quantifier with nothing before it"));
                        };
                        if last.1 != Repeat::One {
                            return Err(bad("repeated quantifiers are not supported"));
                        }
                        last.1 = match c {
                            '*' => Repeat::ZeroOrMore,
                            '+' => Repeat::OneOrMore,
                            _ => Repeat::ZeroOrOne,
                        };
                        continue;
                    }
                    '\\' => {
                        let Some(&e) = chars.get(i) else {
                            return Err(bad("trailing backslash"));
                        };
                        i += 1;
                        match class_escape(e) {
                            Some(items) => Atom::Class {
                                negated: false,
                                items,
                            },
                            None if e.is_ascii_alphanumeric() => {
                                return Err(bad(&format!("escape \\{e} is not supported")));
                            }
                            None => Atom::Char(e),
                        }
                    }
                    '[' => {
                        let negated = chars.get(i) == Some(&'^');
                        if negated {
                            i += 1;
                        }
                        let mut set = Vec::new();
                        let mut first = true;
                        loop {
                            let Some(&x) = chars.get(i) else {
                                return Err(bad("unclosed ["));
                            };
                            i += 1;
                            if x == ']' && !first {
                                break;
                            }
                            first = false;
                            let lo = if x == '\\' {
                                let Some(&e) = chars.get(i) else {
                                    return Err(bad("trailing backslash"));
                                };
                                i += 1;
                                if let Some(c) = class_escape(e) {
                                    set.extend(c);
                                    continue;
                                }
                                e
                            } else {
                                x
                            };
                            if chars.get(i) == Some(&'-')
                                && chars.get(i + 1).is_some_and(|&h| h != ']')
                            {
                                let hi = chars[i + 1];
                                i += 2;
                                if hi < lo {
                                    return Err(bad("range out of order"));
                                }
                                set.push((lo, hi));
                            } else {
                                set.push((lo, lo));
                            }
                        }
                        Atom::Class {
                            negated,
                            items: set,
                        }
                    }
                    '(' | ')' | '{' | '}' => {
                        return Err(bad("groups and counted repetition are not supported"));
                    }
                    '^' | '$' => return Err(bad("anchors only at the start or end")),
                    c => Atom::Char(c),
                };
                items.push((atom, Repeat::One));
            }
            branches.push(Branch { start, end, items });
        }
        Ok(Pattern { branches })
    }

    pub fn is_match(&self, s: &str) -> bool {
        let chars: Vec<char> = s.chars().collect();
        self.branches.iter().any(|b| {
            if b.start {
                match_here(&b.items, &chars, b.end)
            } else {
                (0..=chars.len()).any(|i| match_here(&b.items, &chars[i..], b.end))
            }
        })
    }
}

fn match_here(items: &[(Atom, Repeat)], s: &[char], end: bool) -> bool {
    let Some(((atom, rep), rest)) = items.split_first() else {
        return !end || s.is_empty();
    };
    let (min, max) = match rep {
        Repeat::One => (1, 1),
        Repeat::ZeroOrOne => (0, 1),
        Repeat::ZeroOrMore => (0, usize::MAX),
        Repeat::OneOrMore => (1, usize::MAX),
    };
    let mut n = 0;
    while n < max && n < s.len() && atom.matches(s[n]) {
        n += 1;
    }
    if n < min {
        return false;
    }
    (min..=n).rev().any(|k| match_here(rest, &s[k..], end))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table_aligns_like_tabwriter() {
        let mut t = Table::new();
        t.row(["POD ID", "CREATED", "NAME"]);
        t.row([
            "0123456789abc",
            "2 seconds ago",
            "a-pod-with-a-rather-long-name",
        ]);
        let out = t.render();
        let lines: Vec<&str> = out.lines().collect();
        assert_eq!(lines[0], format!("{:<20}{:<20}NAME", "POD ID", "CREATED"));
        assert_eq!(lines[1].find("2 seconds"), Some(20));
        let mut t = Table::new();
        t.row(["A-CELL-THAT-IS-LONGER-THAN-20", "x"]);
        t.row(["b", "y"]);
        let out = t.render();
        assert_eq!(out.lines().nth(1).unwrap().find('y'), Some(32));
    }

    #[test]
    fn sizes_like_go_units() {
        assert_eq!(human_size_with_precision(0.0, 3), "0B");
        assert_eq!(human_size_with_precision(999.0, 3), "999B");
        assert_eq!(human_size_with_precision(1_234_567.0, 3), "1.23MB");
        assert_eq!(human_size_with_precision(5_000_000.0, 3), "5MB");
        assert_eq!(human_size_with_precision(1_100_000.0, 3), "1.1MB");
        assert_eq!(human_size_with_precision(999_600.0, 3), "1e+03kB");
        assert_eq!(human_size(4_096.0), "4.096kB");
    }

    #[test]
    fn durations_like_go_units() {
        assert_eq!(
            human_duration(Duration::from_millis(300)),
            "Less than a second"
        );
        assert_eq!(human_duration(Duration::from_secs(1)), "1 second");
        assert_eq!(human_duration(Duration::from_secs(59)), "59 seconds");
        assert_eq!(human_duration(Duration::from_secs(90)), "About a minute");
        assert_eq!(human_duration(Duration::from_secs(600)), "10 minutes");
        assert_eq!(human_duration(Duration::from_secs(3600)), "About an hour");
        assert_eq!(human_duration(Duration::from_secs(5 * 3600)), "5 hours");
        assert_eq!(human_duration(Duration::from_secs(3 * 86400)), "3 days");
    }

    #[test]
    fn ids_and_times() {
        assert_eq!(
            truncate_id("sha256:0123456789abcdef", "sha256:"),
            "0123456789abc"
        );
        assert_eq!(truncate_id("short", ""), "short");
        assert_eq!(
            rfc3339(1_500_000_000_123_000_000),
            "2017-07-14T02:40:00.123Z"
        );
        assert_eq!(rfc3339(0), "1970-01-01T00:00:00Z");
    }

    #[test]
    fn patterns() {
        let p = |s: &str| Pattern::new(s).unwrap();
        assert!(p("web").is_match("my-web-pod"));
        assert!(!p("^web").is_match("my-web-pod"));
        assert!(p("^web$").is_match("web"));
        assert!(!p("^web$").is_match("web2"));
        assert!(p("^w.b-[0-9]+$").is_match("web-12"));
        assert!(!p("^w.b-[0-9]+$").is_match("web-"));
        assert!(p("a|^b").is_match("bcd"));
        assert!(p("colou?r").is_match("color"));
        assert!(p("[^a-z]").is_match("abc1"));
        assert!(!p("[^a-z]").is_match("abc"));
        assert!(p("").is_match("anything"));
        assert!(Pattern::new("(a)").is_err());
        assert!(Pattern::new("*a").is_err());
    }
}
