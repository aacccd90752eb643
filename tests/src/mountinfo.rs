//! Parsing of `/proc/<pid>/mountinfo` (proc(5)), for the host's view and for the text a
//! process inside a container prints.

use std::io;
use std::path::{Path, PathBuf};

/// One line of a mountinfo file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MountInfo {
    pub mount_id: u32,
    pub parent_id: u32,
    /// `major:minor` of the filesystem.
    pub dev: String,
    /// The path inside the filesystem that is mounted (field 4).
    pub root: String,
    pub mount_point: String,
    /// Per-mount options (field 6), e.g. `ro`, `nosuid`.
    pub mount_options: Vec<String>,
    /// Propagation tags such as `shared:3` or `master:1`.
    pub optional_fields: Vec<String>,
    pub fs_type: String,
    pub source: String,
    /// Per-superblock options, e.g. `size=65536k`, `mode=755`.
    pub super_options: Vec<String>,
}

impl MountInfo {
    /// Whether the per-mount options hold `opt` (e.g. `ro`, `nosuid`).
    pub fn has_option(&self, opt: &str) -> bool {
        self.mount_options.iter().any(|o| o == opt)
    }

    /// Whether the per-superblock options hold `opt` (e.g. `size=1024k`).
    pub fn has_super_option(&self, opt: &str) -> bool {
        self.super_options.iter().any(|o| o == opt)
    }

    /// The value of a per-superblock option `key=value`.
    pub fn super_option(&self, key: &str) -> Option<&str> {
        self.super_options
            .iter()
            .find_map(|o| o.strip_prefix(key).and_then(|rest| rest.strip_prefix('=')))
    }

    /// Whether this mount is in a peer group (`shared:N`).
    pub fn is_shared(&self) -> bool {
        self.optional_fields
            .iter()
            .any(|f| f.starts_with("shared:"))
    }

    /// Whether this mount receives propagation from a master (`master:N`).
    pub fn is_slave(&self) -> bool {
        self.optional_fields
            .iter()
            .any(|f| f.starts_with("master:"))
    }
}

/// Undoes the octal escapes (`\040` for space and so on) the kernel uses in paths.
pub fn unescape(field: &str) -> String {
    let bytes = field.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'\\' && i + 3 < bytes.len() {
            let digits = &bytes[i + 1..i + 4];
            if digits.iter().all(|d| (b'0'..=b'7').contains(d)) {
                let value = digits
                    .iter()
                    .fold(0u32, |acc, d| acc * 8 + u32::from(d - b'0'));
                if let Ok(byte) = u8::try_from(value) {
                    out.push(byte);
                    i += 4;
                    continue;
                }
            }
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn split_options(field: &str) -> Vec<String> {
    field
        .split(',')
        .filter(|s| !s.is_empty())
        .map(str::to_string)
        .collect()
}

/// Parses one mountinfo line; `None` when it is malformed.
pub fn parse_line(line: &str) -> Option<MountInfo> {
    let (left, right) = line.split_once(" - ")?;
    let mut left_fields = left.split(' ');
    let mount_id = left_fields.next()?.parse().ok()?;
    let parent_id = left_fields.next()?.parse().ok()?;
    let dev = left_fields.next()?.to_string();
    let root = unescape(left_fields.next()?);
    let mount_point = unescape(left_fields.next()?);
    let mount_options = split_options(left_fields.next()?);
    let optional_fields = left_fields
        .filter(|s| !s.is_empty())
        .map(str::to_string)
        .collect();
    let mut right_fields = right.split(' ');
    let fs_type = right_fields.next()?.to_string();
    let source = unescape(right_fields.next()?);
    let super_options = split_options(right_fields.next().unwrap_or(""));
    Some(MountInfo {
        mount_id,
        parent_id,
        dev,
        root,
        mount_point,
        mount_options,
        optional_fields,
        fs_type,
        source,
        super_options,
    })
}

/// Parses mountinfo text, skipping lines that are not mountinfo lines (so the output of a
/// probe script that prints other things too can be passed in whole).
pub fn parse(text: &str) -> Vec<MountInfo> {
    text.lines().filter_map(parse_line).collect()
}

/// This process's mount table.
pub fn current() -> io::Result<Vec<MountInfo>> {
    Ok(parse(&std::fs::read_to_string("/proc/self/mountinfo")?))
}

/// The last (topmost) mount at `mount_point` in `mounts`.
pub fn find<'a>(mounts: &'a [MountInfo], mount_point: &str) -> Option<&'a MountInfo> {
    mounts.iter().rev().find(|m| m.mount_point == mount_point)
}

/// Mount points of this process's mount table at or below `dir` (component-wise), deepest
/// first, so they can be unmounted in that order.
pub fn mounts_below(dir: &Path) -> io::Result<Vec<PathBuf>> {
    let mut found: Vec<PathBuf> = current()?
        .into_iter()
        .map(|m| PathBuf::from(m.mount_point))
        .filter(|p| p.starts_with(dir))
        .collect();
    found.sort_by_key(|p| std::cmp::Reverse(p.components().count()));
    found.dedup();
    Ok(found)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_a_line_with_optional_fields() {
        let line = "36 35 98:0 /mnt1 /mnt/with\\040space rw,noatime master:1 shared:7 - ext3 /dev/root rw,errors=continue";
        let m = parse_line(line).expect("parses");
        assert_eq!(m.mount_id, 36);
        assert_eq!(m.parent_id, 35);
        assert_eq!(m.root, "/mnt1");
        assert_eq!(m.mount_point, "/mnt/with space");
        assert!(m.has_option("noatime"));
        assert!(m.is_slave() && m.is_shared());
        assert_eq!(m.fs_type, "ext3");
        assert_eq!(m.super_option("errors"), Some("continue"));
    }

    #[test]
    fn skips_garbage() {
        let text = "hello\n22 27 0:21 / /proc rw,relatime - proc proc rw\nCapEff: 0\n";
        let all = parse(text);
        assert_eq!(all.len(), 1);
        assert_eq!(
            find(&all, "/proc").map(|m| m.fs_type.as_str()),
            Some("proc")
        );
    }

    #[test]
    fn unescapes_only_octal() {
        assert_eq!(unescape("a\\040b"), "a b");
        assert_eq!(unescape("a\\xyz"), "a\\xyz");
        assert_eq!(unescape("end\\04"), "end\\04");
    }
}
