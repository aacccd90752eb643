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
//! would bring back the unrelocated file contents. Writable mappings are never touched, except
//! the main thread's stack below the stack pointer ([`drop_dead_stack`]): `create` ran much
//! deeper than the loop ever goes, and what lies below the stack pointer is dead; and pages of
//! anonymous mappings that hold only zeros ([`drop_zero_pages`]), which read as zeros again.

use std::fs::File;
use std::io::{BufRead, BufReader};
use std::os::unix::fs::FileExt;

/// pagemap entry bits (Documentation/admin-guide/mm/pagemap.rst).
const PM_PRESENT: u64 = 1 << 63;
const PM_FILE: u64 = 1 << 61;

/// One mapping of `/proc/self/maps`: its address range.
#[derive(Debug, PartialEq, Eq)]
struct Mapping {
    start: usize,
    end: usize,
}

/// The mappings of a `/proc/<pid>/maps` text that `keep(perms, path)` accepts (`path` is
/// absent for anonymous mappings).
fn mappings(maps: impl BufRead, keep: impl Fn(&str, Option<&str>) -> bool) -> Vec<Mapping> {
    maps.lines()
        .map_while(Result::ok)
        .filter_map(|line| {
            let mut f = line.split_whitespace();
            let (range, perms) = (f.next()?, f.next()?);
            // offset, dev, inode, then the path.
            keep(perms, f.nth(3)).then_some(())?;
            let (a, b) = range.split_once('-')?;
            Some(Mapping {
                start: usize::from_str_radix(a, 16).ok()?,
                end: usize::from_str_radix(b, 16).ok()?,
            })
        })
        .collect()
}

/// The read-only (`r--p` or `r-xp`) mappings of files in a `/proc/<pid>/maps` text.
fn read_only_file_mappings(maps: impl BufRead) -> Vec<Mapping> {
    mappings(maps, |perms, path| {
        path.is_some_and(|p| p.starts_with('/')) && (perms == "r--p" || perms == "r-xp")
    })
}

/// The page size, if the kernel tells it.
fn page_size() -> Option<usize> {
    // SAFETY: sysconf has no preconditions.
    let n = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    usize::try_from(n).ok().filter(|&n| n > 0)
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
    let Some(page) = page_size() else {
        return;
    };
    let entry = |index: usize| {
        let mut buf = [0u8; 8];
        pagemap
            .read_exact_at(&mut buf, (index * 8) as u64)
            .ok()
            .map(|()| u64::from_ne_bytes(buf))
    };
    // Every run first, then the madvise calls in one tight loop: code run after the drop
    // faults back in (with its neighbours), so as little as possible runs after it.
    let runs: Vec<(usize, usize)> = read_only_file_mappings(BufReader::new(maps))
        .iter()
        .flat_map(|m| clean_runs(m, page, entry))
        .collect();
    let mut dropped = 0usize;
    for &(start, len) in &runs {
        // SAFETY: the range is page-aligned and lies inside a read-only private file mapping
        // of this process whose pages are unmodified file pages; MADV_DONTNEED only unmaps
        // them, and the next access faults in the same file contents.
        let r = unsafe { libc::madvise(start as *mut libc::c_void, len, libc::MADV_DONTNEED) };
        if r == 0 {
            dropped += len;
        }
    }
    tracing::debug!(kib = dropped / 1024, "start-up pages dropped");
}

/// Gives back what the monitor touched since it last did: free heap, clean file pages of
/// read-only mappings, anonymous zero pages and the dead part of the stack. Called `SETTLE`
/// (supervise.rs) after the loop started, after a log reopen and after an attach session, so
/// that only what the quiet loop runs stays resident; not while the container starts, which
/// it would slow down.
pub fn settle() {
    trim_heap();
    drop_zero_pages();
    drop_dead_stack();
    // Last: code that runs after it comes back in.
    drop_startup_pages();
}

/// Gives the free heap (what the engine's `create` used) back to the system.
fn trim_heap() {
    #[cfg(target_env = "gnu")]
    // SAFETY: malloc_trim only releases free memory of the allocator; no pointer is involved.
    unsafe {
        libc::malloc_trim(0);
    }
}

/// The private anonymous mappings (heap, `.bss`, anonymous `mmap`s; not the stack) of a
/// `/proc/<pid>/maps` text.
fn anonymous_mappings(maps: impl BufRead) -> Vec<Mapping> {
    mappings(maps, |perms, path| {
        perms == "rw-p" && matches!(path, None | Some("[heap]"))
    })
}

/// Drops the resident pages of private anonymous mappings that hold only zeros (memory
/// allocated zeroed, or written and cleared, and not used since: a zeroed 32 KiB table of the
/// tracing registry, say). Such a page reads as zeros again after `MADV_DONTNEED`, so nothing
/// changes for the program. The pages are read through `/proc/self/mem`; the monitor is
/// single-threaded and nothing writes its memory between the check and the `madvise`.
fn drop_zero_pages() {
    let (Ok(maps), Ok(pagemap), Ok(mem)) = (
        File::open("/proc/self/maps"),
        File::open("/proc/self/pagemap"),
        File::open("/proc/self/mem"),
    ) else {
        return;
    };
    let Some(page) = page_size() else {
        return;
    };
    let mut content = vec![0u8; page];
    let mut dropped = 0usize;
    for m in anonymous_mappings(BufReader::new(maps)) {
        let mut addr = m.start;
        while addr < m.end {
            let mut entry = [0u8; 8];
            let present = pagemap
                .read_exact_at(&mut entry, (addr / page * 8) as u64)
                .is_ok_and(|()| {
                    let e = u64::from_ne_bytes(entry);
                    e & PM_PRESENT != 0 && e & PM_FILE == 0
                });
            let zero = present
                && mem.read_exact_at(&mut content, addr as u64).is_ok()
                && content.iter().all(|&b| b == 0);
            if zero && !std::ptr::eq(content.as_ptr(), addr as *const u8) {
                // SAFETY: one page-aligned page of a private anonymous mapping of this
                // single-threaded process that holds only zeros (not the buffer just read
                // into); after MADV_DONTNEED it reads as zeros again, so its content, as any
                // reference into it sees it, does not change.
                let r =
                    unsafe { libc::madvise(addr as *mut libc::c_void, page, libc::MADV_DONTNEED) };
                if r == 0 {
                    dropped += page;
                }
            }
            addr += page;
        }
    }
    tracing::debug!(kib = dropped / 1024, "zero pages dropped");
}

/// What stays mapped below the stack pointer: the frames of the calls this module makes
/// (`madvise`, a leaf syscall wrapper) and x86_64's 128-byte red zone, with room to spare.
const STACK_MARGIN: usize = 16 * 1024;

/// The `[stack]` mapping of a `/proc/<pid>/maps` text.
fn stack_mapping(maps: impl BufRead) -> Option<Mapping> {
    mappings(maps, |_, path| path == Some("[stack]")).pop()
}

/// The page-aligned range of `stack` that lies more than [`STACK_MARGIN`] below `sp`.
fn dead_stack_range(stack: &Mapping, sp: usize, page: usize) -> Option<(usize, usize)> {
    if sp <= stack.start || sp > stack.end {
        return None;
    }
    let end = sp.checked_sub(STACK_MARGIN)? & !(page - 1);
    (end > stack.start).then(|| (stack.start, end - stack.start))
}

/// Drops the pages of the main thread's stack that lie below the current stack pointer (with
/// a margin): the engine's `create` used them, the loop runs in far fewer. They read as zeros
/// when touched again, which is fine for memory no live frame uses. Must be called on the
/// main thread, with no signal handler that could run on this stack (the monitor takes
/// signals through a signalfd).
#[inline(never)]
pub fn drop_dead_stack() {
    let Ok(maps) = File::open("/proc/self/maps") else {
        return;
    };
    let Some(page) = page_size() else {
        return;
    };
    let Some(stack) = stack_mapping(BufReader::new(maps)) else {
        return;
    };
    // The address of a local of this (never inlined) function: at or just above the stack
    // pointer, the lowest live frame being this one.
    let marker = 0u8;
    let sp = std::hint::black_box(&marker) as *const u8 as usize;
    let Some((start, len)) = dead_stack_range(&stack, sp, page) else {
        return;
    };
    // SAFETY: [start, start+len) is page-aligned, inside this thread's stack mapping and more
    // than STACK_MARGIN below every live frame (the stack grows down, and the only frames
    // below this function's are those of madvise, well within the margin); nothing refers to
    // that memory, and MADV_DONTNEED leaves it mapped, reading as zeros.
    let r = unsafe { libc::madvise(start as *mut libc::c_void, len, libc::MADV_DONTNEED) };
    if r == 0 {
        tracing::debug!(kib = len / 1024, "dead stack pages dropped");
    }
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
    fn the_stack_is_found_and_only_its_dead_part_dropped() {
        let maps = "\
55d0a1000000-55d0a1021000 rw-p 00000000 00:00 0 [heap]
7ffd00000000-7ffd00021000 rw-p 00000000 00:00 0                          [stack]
";
        let stack = stack_mapping(maps.as_bytes()).expect("stack found");
        assert_eq!(
            stack,
            Mapping {
                start: 0x7ffd00000000,
                end: 0x7ffd00021000
            }
        );
        // sp 0x1_8100 above the start: everything below sp - 16 KiB, page-aligned, goes.
        let sp = 0x7ffd00018100;
        assert_eq!(
            dead_stack_range(&stack, sp, 0x1000),
            Some((0x7ffd00000000, 0x14000))
        );
        // Too close to the start, or an sp outside the mapping: nothing.
        assert_eq!(dead_stack_range(&stack, 0x7ffd00002000, 0x1000), None);
        assert_eq!(dead_stack_range(&stack, 0x7ffe00000000, 0x1000), None);
        assert_eq!(stack_mapping("".as_bytes()), None);
    }

    #[test]
    fn anonymous_mappings_are_heap_bss_and_mmaps_only() {
        let maps = "\
55d0a0200000-55d0a0210000 rw-p 00200000 fe:00 123 /usr/bin/keelson-monitor
55d0a0210000-55d0a0212000 rw-p 00000000 00:00 0
55d0a1000000-55d0a1021000 rw-p 00000000 00:00 0 [heap]
7f0000000000-7f0000001000 r--p 00000000 00:00 0
7ffd00000000-7ffd00021000 rw-p 00000000 00:00 0 [stack]
";
        assert_eq!(
            anonymous_mappings(maps.as_bytes()),
            vec![
                Mapping {
                    start: 0x55d0a0210000,
                    end: 0x55d0a0212000
                },
                Mapping {
                    start: 0x55d0a1000000,
                    end: 0x55d0a1021000
                },
            ]
        );
    }

    #[test]
    fn dropping_zero_pages_keeps_memory_as_it_was() {
        // In a forked child: drop_zero_pages wants a single-threaded process, and the test
        // harness runs threads.
        let zeros = vec![0u8; 256 * 1024];
        let mut data = vec![0u8; 256 * 1024];
        for (i, b) in data.iter_mut().enumerate().step_by(4096 * 3) {
            *b = (i / 4096) as u8 | 1;
        }
        let before = data.clone();
        // SAFETY: the child only runs drop_zero_pages and compares memory, then _exits; glibc
        // makes malloc usable in the child of a multi-threaded fork.
        match unsafe { libc::fork() } {
            0 => {
                drop_zero_pages();
                let ok = zeros.iter().all(|&b| b == 0) && data == before;
                // SAFETY: ends the child without running the harness's exit handlers.
                unsafe { libc::_exit(if ok { 0 } else { 1 }) }
            }
            -1 => panic!("fork: {}", std::io::Error::last_os_error()),
            child => {
                let mut status = 0;
                // SAFETY: waits for our own child; status is a valid out pointer.
                let r = unsafe { libc::waitpid(child, &mut status, 0) };
                assert_eq!(r, child);
                assert!(
                    libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0,
                    "memory changed (status {status:#x})"
                );
            }
        }
    }

    #[test]
    fn dropping_pages_keeps_the_process_working() {
        // Run in this test process: code and relocated data must still work afterwards.
        let before: Vec<String> = (0..100).map(|i| format!("{i:x}")).collect();
        drop_startup_pages();
        // On a test thread: the main thread's stack is not this one's, nothing is dropped.
        drop_dead_stack();
        let after: Vec<String> = (0..100).map(|i| format!("{i:x}")).collect();
        assert_eq!(before, after);
        let v: serde_json::Value = serde_json::from_str(r#"{"a": [1, 2]}"#).expect("json");
        assert_eq!(v["a"][1], 2);
    }
}
