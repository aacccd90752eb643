//! `linux.seccomp` compiled to a classic BPF program and installed with seccomp(2).
//!
//! seccompiler was the first candidate, but it has one match action per filter, no ERRNO
//! values per rule and few architectures, while OCI profiles give every rule its own action;
//! so the program is assembled here (syscall numbers come from the `syscalls` crate).
//! Supported: x86_64 (native), x86 and x32; actions ALLOW, ERRNO, KILL, KILL_THREAD,
//! KILL_PROCESS, TRAP, TRACE, LOG; argument operators NE, LT, LE, EQ, GE, GT, MASKED_EQ on
//! 64-bit values; flags LOG, SPEC_ALLOW, TSYNC. NOTIFY (a listener) is refused as unimplemented.
//! As runc does, syscall names unknown for an architecture are skipped.

use crate::error::{Error, Result};
use oci_spec::runtime::{
    Arch, LinuxSeccomp, LinuxSeccompAction, LinuxSeccompFilterFlag, LinuxSeccompOperator,
};
use std::str::FromStr;

/// One classic BPF instruction (struct sock_filter).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SockFilter {
    pub code: u16,
    pub jt: u8,
    pub jf: u8,
    pub k: u32,
}

const BPF_LD_W_ABS: u16 = 0x20; // BPF_LD | BPF_W | BPF_ABS
const BPF_JEQ_K: u16 = 0x15; // BPF_JMP | BPF_JEQ | BPF_K
const BPF_JGT_K: u16 = 0x25;
const BPF_JGE_K: u16 = 0x35;
const BPF_JA: u16 = 0x05;
const BPF_RET_K: u16 = 0x06;
const BPF_AND_K: u16 = 0x54; // BPF_ALU | BPF_AND | BPF_K

const AUDIT_ARCH_X86_64: u32 = 0xC000_003E;
const AUDIT_ARCH_I386: u32 = 0x4000_0003;
const X32_SYSCALL_BIT: u32 = 0x4000_0000;

const RET_KILL_PROCESS: u32 = 0x8000_0000;
const RET_KILL_THREAD: u32 = 0x0000_0000;
const RET_TRAP: u32 = 0x0003_0000;
const RET_ERRNO: u32 = 0x0005_0000;
const RET_TRACE: u32 = 0x7ff0_0000;
const RET_LOG: u32 = 0x7ffc_0000;
const RET_ALLOW: u32 = 0x7fff_0000;

/// A jump target while the program is assembled.
#[derive(Clone, Copy, Debug)]
enum Target {
    Next,
    /// Skip this many instructions.
    Skip(u8),
    Label(usize),
}

#[derive(Clone, Copy, Debug)]
enum Op {
    Insn(SockFilter),
    /// Conditional jump: (code, k, if true, if false).
    Jump(u16, u32, Target, Target),
    /// Unconditional jump to a label.
    Ja(usize),
    Label(usize),
}

#[derive(Default)]
struct Asm {
    ops: Vec<Op>,
    labels: usize,
}

impl Asm {
    fn label(&mut self) -> usize {
        self.labels += 1;
        self.labels
    }
    fn put(&mut self, code: u16, k: u32) {
        self.ops.push(Op::Insn(SockFilter {
            code,
            jt: 0,
            jf: 0,
            k,
        }));
    }
    /// Continues when `code k` holds, else jumps to a label of any distance (through `ja`).
    fn unless_far(&mut self, code: u16, k: u32, far: usize) {
        self.ops
            .push(Op::Jump(code, k, Target::Skip(1), Target::Next));
        self.ops.push(Op::Ja(far));
    }

    fn finish(self) -> Result<Vec<SockFilter>> {
        // Label positions in instruction indexes.
        let mut pos = vec![0usize; self.labels + 1];
        let mut n = 0;
        for op in &self.ops {
            match op {
                Op::Label(l) => pos[*l] = n,
                _ => n += 1,
            }
        }
        let mut out = Vec::with_capacity(n);
        for op in &self.ops {
            let here = out.len();
            let off = |t: Target| -> Result<u8> {
                match t {
                    Target::Next => Ok(0),
                    Target::Skip(n) => Ok(n),
                    Target::Label(l) => u8::try_from(pos[l] - here - 1).map_err(|_| {
                        Error::Config("seccomp: a rule is too large to jump over".into())
                    }),
                }
            };
            match *op {
                Op::Insn(i) => out.push(i),
                Op::Jump(code, k, t, f) => out.push(SockFilter {
                    code,
                    jt: off(t)?,
                    jf: off(f)?,
                    k,
                }),
                Op::Ja(l) => out.push(SockFilter {
                    code: BPF_JA,
                    jt: 0,
                    jf: 0,
                    k: (pos[l] - here - 1) as u32,
                }),
                Op::Label(_) => {}
            }
        }
        if out.len() > 4096 {
            return Err(Error::Config(format!(
                "seccomp: program of {} instructions is too long",
                out.len()
            )));
        }
        Ok(out)
    }
}

fn action(a: LinuxSeccompAction, errno: Option<u32>) -> Result<u32> {
    let data = errno.unwrap_or(libc::EPERM as u32) & 0xffff;
    Ok(match a {
        LinuxSeccompAction::ScmpActAllow => RET_ALLOW,
        LinuxSeccompAction::ScmpActErrno => RET_ERRNO | data,
        LinuxSeccompAction::ScmpActKill | LinuxSeccompAction::ScmpActKillThread => RET_KILL_THREAD,
        LinuxSeccompAction::ScmpActKillProcess => RET_KILL_PROCESS,
        LinuxSeccompAction::ScmpActTrap => RET_TRAP,
        LinuxSeccompAction::ScmpActTrace => RET_TRACE | data,
        LinuxSeccompAction::ScmpActLog => RET_LOG,
        LinuxSeccompAction::ScmpActNotify => {
            return Err(Error::Unimplemented(
                "seccomp action SCMP_ACT_NOTIFY (listener)".into(),
            ));
        }
    })
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Abi {
    X86_64,
    X32,
    X86,
}

fn syscall_nr(abi: Abi, name: &str) -> Option<u32> {
    match abi {
        Abi::X86_64 => syscalls::x86_64::Sysno::from_str(name)
            .ok()
            .map(|s| s.id() as u32),
        // x32 uses the x86_64 numbers with the x32 bit (its own variants above 512 aside).
        Abi::X32 => syscalls::x86_64::Sysno::from_str(name)
            .ok()
            .map(|s| s.id() as u32 | X32_SYSCALL_BIT),
        Abi::X86 => syscalls::x86::Sysno::from_str(name)
            .ok()
            .map(|s| s.id() as u32),
    }
}

fn abis(arches: &[Arch]) -> Result<Vec<Abi>> {
    let mut out = vec![Abi::X86_64];
    for a in arches {
        let abi = match a {
            Arch::ScmpArchNative | Arch::ScmpArchX86_64 => Abi::X86_64,
            Arch::ScmpArchX32 => Abi::X32,
            Arch::ScmpArchX86 => Abi::X86,
            other => {
                // Another machine's architecture can never match this host's syscalls.
                tracing::debug!(arch = ?other, "seccomp: architecture not on this host, skipped");
                continue;
            }
        };
        if !out.contains(&abi) {
            out.push(abi);
        }
    }
    Ok(out)
}

/// Compiles the profile for this (x86_64) host.
pub fn compile(s: &LinuxSeccomp) -> Result<Vec<SockFilter>> {
    if !cfg!(target_arch = "x86_64") {
        return Err(Error::Unimplemented(
            "seccomp on architectures other than x86_64".into(),
        ));
    }
    let default = action(s.default_action(), s.default_errno_ret())?;
    let abis = abis(s.architectures().as_deref().unwrap_or_default())?;
    let mut asm = Asm::default();
    let kill = asm.label();
    asm.put(BPF_LD_W_ABS, 4); // arch
    for abi in &abis {
        let audit = if *abi == Abi::X86 {
            AUDIT_ARCH_I386
        } else {
            AUDIT_ARCH_X86_64
        };
        let next_abi = asm.label();
        if *abi == Abi::X32 && abis.contains(&Abi::X86_64) {
            // Shares the arch value with x86_64: handled inside the x86_64 section.
            continue;
        }
        asm.unless_far(BPF_JEQ_K, audit, next_abi);
        asm.put(BPF_LD_W_ABS, 0); // nr
        if *abi == Abi::X86_64 {
            let native = asm.label();
            asm.unless_far(BPF_JGE_K, X32_SYSCALL_BIT, native);
            if abis.contains(&Abi::X32) {
                rules(&mut asm, s, Abi::X32, default)?;
            } else {
                asm.put(BPF_RET_K, default);
            }
            asm.ops.push(Op::Label(native));
        }
        rules(&mut asm, s, *abi, default)?;
        asm.ops.push(Op::Label(next_abi));
        asm.put(BPF_LD_W_ABS, 4);
    }
    // An architecture the profile does not list.
    asm.ops.push(Op::Ja(kill));
    asm.ops.push(Op::Label(kill));
    asm.put(BPF_RET_K, RET_KILL_PROCESS);
    asm.finish()
}

/// The rules for one ABI (nr is loaded), ending with the default action.
fn rules(asm: &mut Asm, s: &LinuxSeccomp, abi: Abi, default: u32) -> Result<()> {
    for rule in s.syscalls().iter().flatten() {
        let act = action(rule.action(), rule.errno_ret().or(s.default_errno_ret()))?;
        for name in rule.names() {
            let Some(nr) = syscall_nr(abi, name) else {
                continue;
            };
            let next = asm.label();
            asm.ops
                .push(Op::Jump(BPF_JEQ_K, nr, Target::Next, Target::Label(next)));
            let args = rule.args().clone().unwrap_or_default();
            for arg in &args {
                arg_check(
                    asm,
                    arg.index(),
                    arg.op(),
                    arg.value(),
                    arg.value_two().unwrap_or(0),
                    next,
                )?;
            }
            asm.put(BPF_RET_K, act);
            asm.ops.push(Op::Label(next));
            if !args.is_empty() {
                // Argument checks clobber the accumulator: load nr again.
                asm.put(BPF_LD_W_ABS, 0);
            }
        }
    }
    asm.put(BPF_RET_K, default);
    Ok(())
}

/// Emits checks of one 64-bit argument; falls through when it matches, jumps to `fail` else.
fn arg_check(
    asm: &mut Asm,
    index: usize,
    op: LinuxSeccompOperator,
    value: u64,
    two: u64,
    fail: usize,
) -> Result<()> {
    if index > 5 {
        return Err(Error::Config(format!(
            "seccomp: argument index {index} is above 5"
        )));
    }
    let lo_off = 16 + 8 * index as u32;
    let hi_off = lo_off + 4;
    let (vhi, vlo) = ((value >> 32) as u32, value as u32);
    let f = Target::Label(fail);
    match op {
        LinuxSeccompOperator::ScmpCmpEq | LinuxSeccompOperator::ScmpCmpNe => {
            let (hit, miss) = if op == LinuxSeccompOperator::ScmpCmpEq {
                (Target::Next, f)
            } else {
                let pass = asm.label();
                // NE: any differing half passes.
                asm.put(BPF_LD_W_ABS, hi_off);
                asm.ops
                    .push(Op::Jump(BPF_JEQ_K, vhi, Target::Next, Target::Label(pass)));
                asm.put(BPF_LD_W_ABS, lo_off);
                asm.ops
                    .push(Op::Jump(BPF_JEQ_K, vlo, f, Target::Label(pass)));
                asm.ops.push(Op::Label(pass));
                return Ok(());
            };
            asm.put(BPF_LD_W_ABS, hi_off);
            asm.ops.push(Op::Jump(BPF_JEQ_K, vhi, Target::Next, miss));
            asm.put(BPF_LD_W_ABS, lo_off);
            asm.ops.push(Op::Jump(BPF_JEQ_K, vlo, hit, miss));
        }
        LinuxSeccompOperator::ScmpCmpMaskedEq => {
            // value is the mask, valueTwo the expected result.
            let (mhi, mlo) = ((value >> 32) as u32, value as u32);
            let (ehi, elo) = ((two >> 32) as u32, two as u32);
            asm.put(BPF_LD_W_ABS, hi_off);
            asm.put(BPF_AND_K, mhi);
            asm.ops.push(Op::Jump(BPF_JEQ_K, ehi, Target::Next, f));
            asm.put(BPF_LD_W_ABS, lo_off);
            asm.put(BPF_AND_K, mlo);
            asm.ops.push(Op::Jump(BPF_JEQ_K, elo, Target::Next, f));
        }
        LinuxSeccompOperator::ScmpCmpGt
        | LinuxSeccompOperator::ScmpCmpGe
        | LinuxSeccompOperator::ScmpCmpLt
        | LinuxSeccompOperator::ScmpCmpLe => {
            // Unsigned 64-bit: the high words decide unless equal, then the low words.
            let pass = asm.label();
            let greater = matches!(
                op,
                LinuxSeccompOperator::ScmpCmpGt | LinuxSeccompOperator::ScmpCmpGe
            );
            asm.put(BPF_LD_W_ABS, hi_off);
            if greater {
                asm.ops
                    .push(Op::Jump(BPF_JGT_K, vhi, Target::Label(pass), Target::Next));
                asm.ops.push(Op::Jump(BPF_JEQ_K, vhi, Target::Next, f));
                asm.put(BPF_LD_W_ABS, lo_off);
                let code = if op == LinuxSeccompOperator::ScmpCmpGt {
                    BPF_JGT_K
                } else {
                    BPF_JGE_K
                };
                asm.ops.push(Op::Jump(code, vlo, Target::Label(pass), f));
            } else {
                // hi < vhi passes: hi >= vhi goes on checking.
                asm.ops
                    .push(Op::Jump(BPF_JGE_K, vhi, Target::Next, Target::Label(pass)));
                asm.ops.push(Op::Jump(BPF_JEQ_K, vhi, Target::Next, f));
                asm.put(BPF_LD_W_ABS, lo_off);
                // LT: lo < vlo  <=> !(lo >= vlo); LE: lo <= vlo <=> !(lo > vlo)
                let code = if op == LinuxSeccompOperator::ScmpCmpLt {
                    BPF_JGE_K
                } else {
                    BPF_JGT_K
                };
                asm.ops.push(Op::Jump(code, vlo, f, Target::Label(pass)));
            }
            asm.ops.push(Op::Label(pass));
        }
    }
    Ok(())
}

fn flags(s: &LinuxSeccomp) -> Result<u32> {
    let mut f = 0u32;
    for flag in s.flags().iter().flatten() {
        f |= match flag {
            LinuxSeccompFilterFlag::SeccompFilterFlagTsync => 1,
            LinuxSeccompFilterFlag::SeccompFilterFlagLog => 2,
            LinuxSeccompFilterFlag::SeccompFilterFlagSpecAllow => 4,
            LinuxSeccompFilterFlag::SeccompFilterFlagWaitKillableRecv => {
                return Err(Error::Unimplemented(
                    "seccomp flag SECCOMP_FILTER_FLAG_WAIT_KILLABLE_RECV (needs a listener)".into(),
                ));
            }
        };
    }
    Ok(f)
}

/// Checks a profile before any process exists.
pub fn check(s: &LinuxSeccomp) -> Result<()> {
    if s.listener_path().is_some() {
        return Err(Error::Unimplemented(
            "seccomp listenerPath (seccomp notify)".into(),
        ));
    }
    flags(s)?;
    compile(s).map(|_| ())
}

/// Installs the filter on the calling thread. Needs no_new_privs or CAP_SYS_ADMIN.
pub fn install(s: &LinuxSeccomp) -> Result<()> {
    let prog = compile(s)?;
    let fprog = libc::sock_fprog {
        len: prog.len() as u16,
        filter: prog.as_ptr() as *mut libc::sock_filter,
    };
    // SAFETY: seccomp(SECCOMP_SET_MODE_FILTER) reads `fprog`, which points at `prog`; both
    // outlive the call.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_seccomp,
            libc::SECCOMP_SET_MODE_FILTER,
            flags(s)?,
            &fprog as *const libc::sock_fprog,
        )
    };
    if rc != 0 {
        return Err(Error::Io {
            context: "installing the seccomp filter".into(),
            source: std::io::Error::last_os_error(),
        });
    }
    Ok(())
}

/// Syscalls the default profile refuses (with EPERM): they reach kernel state shared by the
/// whole machine (modules, clocks, swap, reboot, keyrings, mounts, namespaces, tracing other
/// processes, BPF, perf), the same set container runtimes deny for `RuntimeDefault` to
/// containers that lack the matching capability.
const DEFAULT_DENY: &[&str] = &[
    "acct",
    "add_key",
    "bpf",
    "clock_adjtime",
    "clock_settime",
    "create_module",
    "delete_module",
    "finit_module",
    "fsconfig",
    "fsmount",
    "fsopen",
    "fspick",
    "get_kernel_syms",
    "get_mempolicy",
    "init_module",
    "ioperm",
    "iopl",
    "kcmp",
    "kexec_file_load",
    "kexec_load",
    "keyctl",
    "lookup_dcookie",
    "mbind",
    "mount",
    "mount_setattr",
    "move_mount",
    "move_pages",
    "name_to_handle_at",
    "nfsservctl",
    "open_by_handle_at",
    "open_tree",
    "perf_event_open",
    "pivot_root",
    "process_vm_readv",
    "process_vm_writev",
    "ptrace",
    "query_module",
    "quotactl",
    "quotactl_fd",
    "reboot",
    "request_key",
    "set_mempolicy",
    "setns",
    "settimeofday",
    "swapoff",
    "swapon",
    "sysfs",
    "_sysctl",
    "umount2",
    "unshare",
    "uselib",
    "userfaultfd",
    "ustat",
    "vm86",
    "vm86old",
    "personality",
    "clone",
    "clone3",
    "socket",
];

/// The profile applied for `RuntimeDefault`: everything is allowed except [`DEFAULT_DENY`];
/// `clone` only without namespace flags, `clone3` answers ENOSYS (so libc falls back to the
/// checked `clone`), `personality` only for the harmless personas, `socket` not for AF_VSOCK.
pub fn default_profile() -> LinuxSeccomp {
    let allowed: Vec<String> = syscalls::x86_64::Sysno::iter()
        .map(|s| s.name().to_string())
        .filter(|n| !DEFAULT_DENY.contains(&n.as_str()))
        .collect();
    let personas: Vec<serde_json::Value> = [0u64, 8, 0x20000, 0x20008, 0xffff_ffff]
        .iter()
        .map(|v| {
            serde_json::json!({"names": ["personality"], "action": "SCMP_ACT_ALLOW",
            "args": [{"index": 0, "value": v, "op": "SCMP_CMP_EQ"}]})
        })
        .collect();
    let mut syscalls = vec![serde_json::json!({"names": allowed, "action": "SCMP_ACT_ALLOW"})];
    syscalls.extend(personas);
    syscalls.push(serde_json::json!({"names": ["clone"], "action": "SCMP_ACT_ALLOW",
        "args": [{"index": 0, "value": 0x7E02_0000u64, "valueTwo": 0, "op": "SCMP_CMP_MASKED_EQ"}]}));
    syscalls.push(serde_json::json!({"names": ["clone3"], "action": "SCMP_ACT_ERRNO", "errnoRet": libc::ENOSYS}));
    syscalls.push(
        serde_json::json!({"names": ["socket"], "action": "SCMP_ACT_ALLOW",
        "args": [{"index": 0, "value": 40, "op": "SCMP_CMP_NE"}]}),
    );
    let v = serde_json::json!({
        "defaultAction": "SCMP_ACT_ERRNO",
        "defaultErrnoRet": libc::EPERM,
        "architectures": ["SCMP_ARCH_X86_64", "SCMP_ARCH_X86", "SCMP_ARCH_X32"],
        "syscalls": syscalls
    });
    // The document above is built from known-good parts; parsing it cannot fail.
    serde_json::from_value(v).unwrap_or_else(|_| LinuxSeccomp::default())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A tiny classic-BPF interpreter for what `compile` emits.
    fn run(prog: &[SockFilter], arch: u32, nr: u32, args: [u64; 6]) -> u32 {
        let mut data = [0u8; 64];
        data[0..4].copy_from_slice(&nr.to_le_bytes());
        data[4..8].copy_from_slice(&arch.to_le_bytes());
        for (i, a) in args.iter().enumerate() {
            data[16 + 8 * i..24 + 8 * i].copy_from_slice(&a.to_le_bytes());
        }
        let mut acc = 0u32;
        let mut pc = 0usize;
        loop {
            let i = prog[pc];
            pc += 1;
            let word = |k: u32| {
                u32::from_le_bytes(
                    data[k as usize..k as usize + 4]
                        .try_into()
                        .expect("4 bytes"),
                )
            };
            match i.code {
                BPF_LD_W_ABS => acc = word(i.k),
                BPF_AND_K => acc &= i.k,
                BPF_JA => pc += i.k as usize,
                BPF_RET_K => return i.k,
                c => {
                    let hit = match c {
                        BPF_JEQ_K => acc == i.k,
                        BPF_JGT_K => acc > i.k,
                        BPF_JGE_K => acc >= i.k,
                        _ => panic!("opcode {c:#x}"),
                    };
                    pc += if hit { i.jt } else { i.jf } as usize;
                }
            }
        }
    }

    fn profile(v: serde_json::Value) -> LinuxSeccomp {
        serde_json::from_value(v).expect("profile")
    }

    #[test]
    fn rules_actions_and_arguments() {
        let p = profile(serde_json::json!({
            "defaultAction": "SCMP_ACT_ERRNO",
            "defaultErrnoRet": 38,
            "architectures": ["SCMP_ARCH_X86_64", "SCMP_ARCH_X86", "SCMP_ARCH_X32"],
            "syscalls": [
                {"names": ["read", "write", "no_such_call"], "action": "SCMP_ACT_ALLOW"},
                {"names": ["mkdir"], "action": "SCMP_ACT_ERRNO", "errnoRet": 13},
                {"names": ["personality"], "action": "SCMP_ACT_ALLOW",
                 "args": [{"index": 0, "value": 8, "op": "SCMP_CMP_EQ"}]},
                {"names": ["kill"], "action": "SCMP_ACT_ALLOW",
                 "args": [{"index": 1, "value": 4294967296u64, "op": "SCMP_CMP_GT"}]},
                {"names": ["clone"], "action": "SCMP_ACT_ALLOW",
                 "args": [{"index": 0, "value": 2114060288, "valueTwo": 0, "op": "SCMP_CMP_MASKED_EQ"}]},
                {"names": ["dup"], "action": "SCMP_ACT_ALLOW",
                 "args": [{"index": 0, "value": 3, "op": "SCMP_CMP_LE"}]}
            ]
        }));
        let prog = compile(&p).expect("compile");
        let x = |nr: u32, a0: u64, a1: u64| run(&prog, AUDIT_ARCH_X86_64, nr, [a0, a1, 0, 0, 0, 0]);
        assert_eq!(x(0, 0, 0), RET_ALLOW, "read");
        assert_eq!(x(1, 0, 0), RET_ALLOW, "write");
        assert_eq!(x(83, 0, 0), RET_ERRNO | 13, "mkdir");
        assert_eq!(x(39, 0, 0), RET_ERRNO | 38, "getpid: default");
        assert_eq!(x(135, 8, 0), RET_ALLOW, "personality(8)");
        assert_eq!(
            x(135, 8 | (1 << 32), 0),
            RET_ERRNO | 38,
            "personality high word"
        );
        assert_eq!(x(62, 0, (1 << 32) + 1), RET_ALLOW, "kill > 2^32");
        assert_eq!(x(62, 0, 1 << 32), RET_ERRNO | 38, "kill == 2^32");
        assert_eq!(x(56, 0x11, 0), RET_ALLOW, "clone without namespace flags");
        assert_eq!(
            x(56, 0x2000_0000, 0),
            RET_ERRNO | 38,
            "clone(CLONE_NEWUSER)"
        );
        assert_eq!(x(32, 3, 0), RET_ALLOW, "dup(3)");
        assert_eq!(x(32, 4, 0), RET_ERRNO | 38, "dup(4)");
        // x32 ABI: same numbers with the x32 bit.
        assert_eq!(x(X32_SYSCALL_BIT, 0, 0), RET_ALLOW, "x32 read");
        // i386: write is 4, mkdir 39.
        assert_eq!(run(&prog, AUDIT_ARCH_I386, 4, [0; 6]), RET_ALLOW);
        assert_eq!(run(&prog, AUDIT_ARCH_I386, 39, [0; 6]), RET_ERRNO | 13);
        // An arch the profile does not list.
        assert_eq!(run(&prog, 0xC000_00B7, 0, [0; 6]), RET_KILL_PROCESS);
    }

    #[test]
    fn default_profile_compiles_and_denies_what_it_should() {
        let prog = compile(&default_profile()).expect("compile default profile");
        let x = |nr: u32, a0: u64| run(&prog, AUDIT_ARCH_X86_64, nr, [a0, 0, 0, 0, 0, 0]);
        assert_eq!(x(0, 0), RET_ALLOW, "read");
        assert_eq!(x(59, 0), RET_ALLOW, "execve");
        assert_eq!(x(165, 0), RET_ERRNO | 1, "mount");
        assert_eq!(x(272, 0), RET_ERRNO | 1, "unshare");
        assert_eq!(x(56, 0x1200011), RET_ALLOW, "fork-style clone");
        assert_eq!(x(56, 0x1000_0000), RET_ERRNO | 1, "clone(CLONE_NEWUSER)");
        assert_eq!(x(435, 0), RET_ERRNO | 38, "clone3 -> ENOSYS");
        assert_eq!(x(41, 2), RET_ALLOW, "socket(AF_INET)");
        assert_eq!(x(41, 40), RET_ERRNO | 1, "socket(AF_VSOCK)");
        assert_eq!(x(135, 8), RET_ALLOW, "personality(PER_LINUX32)");
        assert_eq!(x(135, 1), RET_ERRNO | 1, "personality(other)");
    }

    #[test]
    fn every_action_has_its_kernel_return_value() {
        use LinuxSeccompAction as A;
        let cases = [
            (A::ScmpActAllow, None, RET_ALLOW),
            (A::ScmpActErrno, Some(5), RET_ERRNO | 5),
            (A::ScmpActErrno, None, RET_ERRNO | 1),
            (A::ScmpActKill, None, RET_KILL_THREAD),
            (A::ScmpActKillThread, None, RET_KILL_THREAD),
            (A::ScmpActKillProcess, None, RET_KILL_PROCESS),
            (A::ScmpActTrap, None, RET_TRAP),
            (A::ScmpActTrace, Some(7), RET_TRACE | 7),
            (A::ScmpActLog, None, RET_LOG),
        ];
        for (a, errno, want) in cases {
            assert_eq!(action(a, errno).expect("action"), want, "{a:?}");
            // And as a rule in a program.
            let mut rule = serde_json::json!({"names": ["getpid"], "action": a});
            if let Some(e) = errno {
                rule["errnoRet"] = e.into();
            }
            let p =
                profile(serde_json::json!({"defaultAction": "SCMP_ACT_ALLOW", "syscalls": [rule]}));
            let prog = compile(&p).expect("compile");
            assert_eq!(
                run(&prog, AUDIT_ARCH_X86_64, 39, [0; 6]),
                want,
                "{a:?} in a program"
            );
        }
        let flags = profile(serde_json::json!({"defaultAction": "SCMP_ACT_ALLOW",
            "flags": ["SECCOMP_FILTER_FLAG_LOG", "SECCOMP_FILTER_FLAG_SPEC_ALLOW", "SECCOMP_FILTER_FLAG_TSYNC"]}));
        assert_eq!(super::flags(&flags).expect("flags"), 1 | 2 | 4);
    }

    #[test]
    fn x32_is_refused_unless_listed_and_notify_is_unimplemented() {
        let p = profile(serde_json::json!({"defaultAction": "SCMP_ACT_ALLOW",
            "syscalls": [{"names": ["read"], "action": "SCMP_ACT_KILL_PROCESS"}]}));
        let prog = compile(&p).expect("compile");
        assert_eq!(run(&prog, AUDIT_ARCH_X86_64, 0, [0; 6]), RET_KILL_PROCESS);
        assert_eq!(run(&prog, AUDIT_ARCH_X86_64, 1, [0; 6]), RET_ALLOW);
        let n = profile(serde_json::json!({"defaultAction": "SCMP_ACT_NOTIFY"}));
        assert!(matches!(compile(&n), Err(Error::Unimplemented(_))));
    }
}
