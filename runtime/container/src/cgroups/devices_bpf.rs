//! cgroup v2 device control: the rules compiled to a BPF_PROG_TYPE_CGROUP_DEVICE program and
//! attached to the container's cgroup. No crate builds these programs, so the handful of
//! instructions is assembled here.
//!
//! The program sees `struct bpf_cgroup_dev_ctx { u32 access_type; u32 major; u32 minor; }`,
//! where `access_type` is `(access << 16) | type` (type 1 = block, 2 = char; access bits
//! 1 = mknod, 2 = read, 4 = write). Rules are checked from the last to the first, so the last
//! matching rule decides, as in the spec; no match denies.

use super::DeviceRule;
use crate::error::{Error, Result};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::path::Path;

#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Insn {
    code: u8,
    regs: u8,
    off: i16,
    imm: i32,
}

// Opcode parts (linux/bpf_common.h, linux/bpf.h).
const BPF_LDX: u8 = 0x01;
const BPF_ALU: u8 = 0x04;
const BPF_JMP: u8 = 0x05;
const BPF_ALU64: u8 = 0x07;
const BPF_W: u8 = 0x00;
const BPF_MEM: u8 = 0x60;
const BPF_K: u8 = 0x00;
const BPF_X: u8 = 0x08;
const BPF_AND: u8 = 0x50;
const BPF_RSH: u8 = 0x70;
const BPF_MOV: u8 = 0xb0;
const BPF_JNE: u8 = 0x50;
const BPF_EXIT: u8 = 0x90;

fn insn(code: u8, dst: u8, src: u8, off: i16, imm: i32) -> Insn {
    Insn {
        code,
        regs: (src << 4) | (dst & 0x0f),
        off,
        imm,
    }
}
fn ldx_w(dst: u8, src: u8, off: i16) -> Insn {
    insn(BPF_LDX | BPF_MEM | BPF_W, dst, src, off, 0)
}
fn mov32_imm(dst: u8, imm: i32) -> Insn {
    insn(BPF_ALU | BPF_MOV | BPF_K, dst, 0, 0, imm)
}
fn mov32_reg(dst: u8, src: u8) -> Insn {
    insn(BPF_ALU | BPF_MOV | BPF_X, dst, src, 0, 0)
}
fn and32_imm(dst: u8, imm: i32) -> Insn {
    insn(BPF_ALU | BPF_AND | BPF_K, dst, 0, 0, imm)
}
fn rsh32_imm(dst: u8, imm: i32) -> Insn {
    insn(BPF_ALU | BPF_RSH | BPF_K, dst, 0, 0, imm)
}
fn jne_imm(dst: u8, imm: i32, off: i16) -> Insn {
    insn(BPF_JMP | BPF_JNE | BPF_K, dst, 0, off, imm)
}
fn jne_reg(dst: u8, src: u8, off: i16) -> Insn {
    insn(BPF_JMP | BPF_JNE | BPF_X, dst, src, off, 0)
}
fn exit() -> Insn {
    insn(BPF_JMP | BPF_EXIT, 0, 0, 0, 0)
}
#[allow(dead_code)]
fn mov64_imm(dst: u8, imm: i32) -> Insn {
    insn(BPF_ALU64 | BPF_MOV | BPF_K, dst, 0, 0, imm)
}

fn access_bits(access: &str) -> Result<i32> {
    let mut bits = 0;
    for c in access.chars() {
        bits |= match c {
            'm' => 1,
            'r' => 2,
            'w' => 4,
            _ => {
                return Err(Error::Config(format!(
                    "device access {access:?}: only r, w and m are allowed"
                )));
            }
        };
    }
    Ok(bits)
}

/// Compiles the rules to the program's instructions.
pub fn compile(rules: &[DeviceRule]) -> Result<Vec<Insn>> {
    let mut prog = vec![
        ldx_w(2, 1, 0),  // r2 = access_type
        mov32_reg(3, 2), // r3 = type
        and32_imm(3, 0xffff),
        rsh32_imm(2, 16), // r2 = requested access
        ldx_w(4, 1, 4),   // r4 = major
        ldx_w(5, 1, 8),   // r5 = minor
    ];
    let mut decided = false;
    for rule in rules.iter().rev() {
        let mut block: Vec<Insn> = Vec::new();
        // Each check jumps past the end of this rule's block when it does not match; the
        // offsets are patched once the block's length is known.
        let mut jumps = Vec::new();
        if rule.kind != 'a' {
            let t = match rule.kind {
                'b' => 1,
                'c' => 2,
                k => return Err(Error::Config(format!("device rule type {k:?}"))),
            };
            jumps.push(block.len());
            block.push(jne_imm(3, t, 0));
        }
        let bits = if rule.kind == 'a' {
            7
        } else {
            access_bits(&rule.access)?
        };
        if bits != 7 {
            block.push(mov32_reg(6, 2));
            block.push(and32_imm(6, bits));
            jumps.push(block.len());
            block.push(jne_reg(6, 2, 0));
        }
        if rule.kind != 'a' {
            if let Some(major) = rule.major.filter(|m| *m >= 0) {
                jumps.push(block.len());
                block.push(jne_imm(4, major as i32, 0));
            }
            if let Some(minor) = rule.minor.filter(|m| *m >= 0) {
                jumps.push(block.len());
                block.push(jne_imm(5, minor as i32, 0));
            }
        }
        block.push(mov32_imm(0, i32::from(rule.allow)));
        block.push(exit());
        let len = block.len();
        let unconditional = jumps.is_empty();
        for j in jumps {
            // Jump to the first instruction after the block.
            block[j].off = (len - j - 1) as i16;
        }
        prog.extend(block);
        if unconditional {
            // This rule matches every access: earlier rules can never decide (and the
            // verifier refuses unreachable instructions).
            decided = true;
            break;
        }
    }
    if !decided {
        prog.push(mov32_imm(0, 0));
        prog.push(exit());
    }
    if prog.len() > 4096 {
        return Err(Error::Config("too many device rules".into()));
    }
    Ok(prog)
}

const BPF_PROG_LOAD: libc::c_long = 5;
const BPF_PROG_ATTACH: libc::c_long = 8;
const BPF_PROG_TYPE_CGROUP_DEVICE: u32 = 15;
const BPF_CGROUP_DEVICE: u32 = 6;
const BPF_F_ALLOW_MULTI: u32 = 2;

#[repr(C)]
#[derive(Default)]
struct ProgLoadAttr {
    prog_type: u32,
    insn_cnt: u32,
    insns: u64,
    license: u64,
    log_level: u32,
    log_size: u32,
    log_buf: u64,
    kern_version: u32,
    prog_flags: u32,
    _pad: [u64; 12],
}

#[repr(C)]
#[derive(Default)]
struct ProgAttachAttr {
    target_fd: u32,
    attach_bpf_fd: u32,
    attach_type: u32,
    attach_flags: u32,
    replace_bpf_fd: u32,
    _pad: [u32; 11],
}

/// Loads the program for `rules` and attaches it to the cgroup directory `dir`.
pub fn attach(dir: &Path, rules: &[DeviceRule]) -> Result<()> {
    let prog = compile(rules)?;
    let license = c"Apache-2.0";
    let mut log = vec![0u8; 64 * 1024];
    let attr = ProgLoadAttr {
        prog_type: BPF_PROG_TYPE_CGROUP_DEVICE,
        insn_cnt: prog.len() as u32,
        insns: prog.as_ptr() as u64,
        license: license.as_ptr() as u64,
        log_level: 1,
        log_size: log.len() as u32,
        log_buf: log.as_mut_ptr() as u64,
        ..Default::default()
    };
    // SAFETY: bpf(2) reads `attr` (and the instruction and license buffers it points to, which
    // outlive the call) and writes at most log_size bytes into `log`.
    let fd = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            BPF_PROG_LOAD,
            &attr as *const ProgLoadAttr,
            std::mem::size_of::<ProgLoadAttr>(),
        )
    };
    if fd < 0 {
        let err = std::io::Error::last_os_error();
        let msg = String::from_utf8_lossy(&log);
        let msg = msg.trim_end_matches('\0').trim();
        return Err(Error::Cgroup {
            path: dir.to_path_buf(),
            msg: format!("loading device filter: {err} {msg}"),
        });
    }
    // SAFETY: a successful BPF_PROG_LOAD returns a new descriptor we own.
    let prog_fd = unsafe { OwnedFd::from_raw_fd(fd as i32) };
    let cg = std::fs::File::open(dir).map_err(|e| Error::Cgroup {
        path: dir.to_path_buf(),
        msg: format!("opening for device filter: {e}"),
    })?;
    let attach = ProgAttachAttr {
        target_fd: cg.as_raw_fd() as u32,
        attach_bpf_fd: prog_fd.as_raw_fd() as u32,
        attach_type: BPF_CGROUP_DEVICE,
        attach_flags: BPF_F_ALLOW_MULTI,
        ..Default::default()
    };
    // SAFETY: bpf(2) reads the attach attributes; both descriptors are open.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            BPF_PROG_ATTACH,
            &attach as *const ProgAttachAttr,
            std::mem::size_of::<ProgAttachAttr>(),
        )
    };
    if rc != 0 {
        return Err(Error::Cgroup {
            path: dir.to_path_buf(),
            msg: format!(
                "attaching device filter: {}",
                std::io::Error::last_os_error()
            ),
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A tiny interpreter for the instructions `compile` emits, to check the rule semantics
    /// without a kernel.
    fn run(prog: &[Insn], kind: u32, access: u32, major: u32, minor: u32) -> u32 {
        let ctx = [(access << 16) | kind, major, minor];
        let mut r = [0u32; 11];
        let mut pc = 0usize;
        loop {
            let i = prog[pc];
            let (dst, src) = ((i.regs & 0x0f) as usize, (i.regs >> 4) as usize);
            pc += 1;
            match i.code {
                c if c == BPF_LDX | BPF_MEM | BPF_W => r[dst] = ctx[(i.off / 4) as usize],
                c if c == BPF_ALU | BPF_MOV | BPF_X => r[dst] = r[src],
                c if c == BPF_ALU | BPF_MOV | BPF_K => r[dst] = i.imm as u32,
                c if c == BPF_ALU | BPF_AND | BPF_K => r[dst] &= i.imm as u32,
                c if c == BPF_ALU | BPF_RSH | BPF_K => r[dst] >>= i.imm as u32,
                c if c == BPF_JMP | BPF_JNE | BPF_K => {
                    if r[dst] != i.imm as u32 {
                        pc += i.off as usize;
                    }
                }
                c if c == BPF_JMP | BPF_JNE | BPF_X => {
                    if r[dst] != r[src] {
                        pc += i.off as usize;
                    }
                }
                c if c == BPF_JMP | BPF_EXIT => return r[0],
                c => panic!("unknown opcode {c:#x}"),
            }
        }
    }

    fn rule(
        allow: bool,
        kind: char,
        major: Option<i64>,
        minor: Option<i64>,
        access: &str,
    ) -> DeviceRule {
        DeviceRule {
            allow,
            kind,
            major,
            minor,
            access: access.into(),
        }
    }

    #[test]
    fn last_matching_rule_decides() {
        let rules = vec![
            rule(false, 'a', None, None, "rwm"),
            rule(true, 'c', Some(1), Some(3), "rwm"),
            rule(true, 'c', Some(136), None, "rw"),
            rule(false, 'c', Some(1), Some(3), "w"),
        ];
        let p = compile(&rules).expect("compile");
        assert_eq!(run(&p, 2, 2, 1, 3), 1, "read /dev/null allowed");
        assert_eq!(
            run(&p, 2, 4, 1, 3),
            0,
            "write /dev/null denied by the last rule"
        );
        assert_eq!(run(&p, 2, 2, 136, 7), 1, "pts read allowed");
        assert_eq!(run(&p, 2, 1, 136, 7), 0, "pts mknod not allowed");
        assert_eq!(run(&p, 1, 2, 1, 3), 0, "block 1:3 denied");
        assert_eq!(run(&p, 2, 2, 1, 5), 0, "other char denied");
        let allow_all = compile(&[rule(true, 'a', None, None, "rwm")]).expect("compile");
        assert_eq!(run(&allow_all, 1, 7, 8, 0), 1);
        // Nothing may follow an unconditional exit (the verifier rejects unreachable code).
        assert_eq!(allow_all.last(), Some(&exit()));
        assert_eq!(allow_all.iter().filter(|i| **i == exit()).count(), 1);
    }
}
