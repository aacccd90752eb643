//! Giving back the pages the monitor needed only to start.
//!
//! A monitor spends a moment running the engine's `create` (argument parsing, spec loading,
//! namespace and mount setup) and then hours in a small poll loop. The code pages of that
//! start-up stay in its resident set although they are never run again. Once in the loop, the
//! monitor unmaps the clean file-backed pages of its read-only mappings with
//! `madvise(MADV_DONTNEED)`: they stay in the page cache (shared with every other monitor) and
//! the few the loop uses fault back in.
//!
//! Only pages that are still the file's own are dropped: `/proc/self/pagemap` tells for each
//! present page whether it is file-backed (bit 61) or a private copy (relocated RELRO data,
//! written before it was made read-only), and private copies are kept, since dropping them
//! would bring back the unrelocated file contents. Writable mappings are never touched.

use std::fs::File;
use std::io::{BufRead, BufReader};
use std::os::unix::fs::FileExt;

/// pagemap entry bits (Documentation/admin-guide/mm/pagemap.rst).
const PM_PRESENT: u64 = 1 << 63;
const PM_FILE: u64 = 1 << 61;

/// One read-only, file-backed mapping of `/proc/self/maps`.
#[derive(Debug, PartialEq, Eq)]
struct Mapping {
    start: usize,
    end: usize,
}

/// The read-only (`r--p` or `r-xp`) mappings of files in a `/proc/<pid>/maps` text.
fn read_only_file_mappings(maps: impl BufRead) -> Vec<Mapping> {
    let mut out = Vec::new();
    for line in maps.lines().map_while(Result::ok) {
        let mut f = line.split_whitespace();
        let (Some(range), Some(perms)) = (f.next(), f.next()) else {
            continue;
        };
        // offset, dev, inode, then the path (absent for anonymous mappings).
        let path = f.nth(3);
        if !path.is_some_and(|p| p.starts_with('/')) || !(perms == "r--p" || perms == "r-xp") {
            continue;
        }
        let Some((a, b)) = range.split_once('-') else {
            continue;
        };
        if let (Ok(start), Ok(end)) = (usize::from_str_radix(a, 16), usize::from_str_radix(b, 16)) {
            out.push(Mapping { start, end });
        }
    }
    out
}

/// Runs of pages in `m` whose pagemap entries say present and file-backed.
fn clean_runs(
    m: &Mapping,
    page: usize,
    entry: impl Fn(usize) -> Option<u64>,
) -> Vec<(usize, usize)> {
    let mut runs = Vec::new();
    let mut run: Option<usize> = None;
    let mut addr = m.start;
    while addr < m.end {
        let clean = entry(addr / page).is_some_and(|e| e & PM_PRESENT != 0 && e & PM_FILE != 0);
        match (clean, run) {
            (true, None) => run = Some(addr),
            (false, Some(s)) => {
                runs.push((s, addr - s));
                run = None;
            }
            _ => {}
        }
        addr += page;
    }
    if let Some(s) = run {
        runs.push((s, m.end - s));
    }
    runs
}

/// Drops the clean file-backed pages of the monitor's read-only mappings from its resident
/// set. Best effort: anything it cannot read is left as it is.
pub fn drop_startup_pages() {
    let (Ok(maps), Ok(pagemap)) = (
        File::open("/proc/self/maps"),
        File::open("/proc/self/pagemap"),
    ) else {
        return;
    };
    // SAFETY: sysconf has no preconditions.
    let page = match unsafe { libc::sysconf(libc::_SC_PAGESIZE) } {
        n if n > 0 => n as usize,
        _ => return,
    };
    let entry = |index: usize| {
        let mut buf = [0u8; 8];
        pagemap
            .read_exact_at(&mut buf, (index * 8) as u64)
            .ok()
            .map(|()| u64::from_ne_bytes(buf))
    };
    let mut dropped = 0usize;
    for m in read_only_file_mappings(BufReader::new(maps)) {
        for (start, len) in clean_runs(&m, page, entry) {
            // SAFETY: the range is page-aligned and lies inside a read-only private file
            // mapping of this process whose pages are unmodified file pages; MADV_DONTNEED
            // only unmaps them, and the next access faults in the same file contents.
            let r = unsafe { libc::madvise(start as *mut libc::c_void, len, libc::MADV_DONTNEED) };
            if r == 0 {
                dropped += len;
            }
        }
    }
    tracing::debug!(kib = dropped / 1024, "start-up pages dropped");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_read_only_file_mappings_are_candidates() {
        let maps = "\
55d0a0000000-55d0a0010000 r--p 00000000 fe:00 123 /usr/bin/keelson-monitor
55d0a0010000-55d0a0200000 r-xp 00010000 fe:00 123 /usr/bin/keelson-monitor
55d0a0200000-55d0a0210000 rw-p 00200000 fe:00 123 /usr/bin/keelson-monitor
55d0a1000000-55d0a1021000 rw-p 00000000 00:00 0 [heap]
7f0000000000-7f0000001000 r--p 00000000 00:00 0
7ffd00000000-7ffd00021000 rw-p 00000000 00:00 0 [stack]
";
        assert_eq!(
            read_only_file_mappings(maps.as_bytes()),
            vec![
                Mapping {
                    start: 0x55d0a0000000,
                    end: 0x55d0a0010000
                },
                Mapping {
                    start: 0x55d0a0010000,
                    end: 0x55d0a0200000
                },
            ]
        );
    }

    #[test]
    fn runs_skip_absent_and_private_pages() {
        let m = Mapping {
            start: 0x10000,
            end: 0x16000,
        };
        // Pages 0x10..0x15: file, file, private copy, absent, file, file.
        let e = |i: usize| {
            Some(match i {
                0x10 | 0x11 | 0x14 | 0x15 => PM_PRESENT | PM_FILE,
                0x12 => PM_PRESENT,
                _ => 0,
            })
        };
        assert_eq!(
            clean_runs(&m, 0x1000, e),
            vec![(0x10000, 0x2000), (0x14000, 0x2000)]
        );
    }

    #[test]
    fn dropping_pages_keeps_the_process_working() {
        // Run in this test process: code and relocated data must still work afterwards.
        let before: Vec<String> = (0..100).map(|i| format!("{i:x}")).collect();
        drop_startup_pages();
        let after: Vec<String> = (0..100).map(|i| format!("{i:x}")).collect();
        assert_eq!(before, after);
        let v: serde_json::Value = serde_json::from_str(r#"{"a": [1, 2]}"#).expect("json");
        assert_eq!(v["a"][1], 2);
    }
}
