//! `netns-exec`: the interpreter of the CNI plugin wrappers the benches give their runtimes.
//!
//! The benches run the plugins in a test "host" network namespace (see
//! `keelson_tests::cni::TestNet::write_runtime_cni`). A wrapper written as
//! `#!<this binary> <netns path> <plugin path>` makes the kernel run this program with
//! `argv = [this, "<netns path> <plugin path>", <wrapper path>, <args>...]`; it enters the
//! namespace and execs the plugin with the arguments and environment it was given. That is
//! one small exec instead of a shell plus `nsenter` (dynamically linked, with util-linux's
//! start-up) on every plugin call: harness overhead that is not the runtime's, taken out of
//! the figures for every runtime alike.

use std::ffi::OsString;
use std::os::unix::ffi::OsStrExt as _;
use std::os::unix::process::CommandExt as _;
use std::process::{Command, ExitCode};

use nix::sched::{CloneFlags, setns};

fn main() -> ExitCode {
    let args: Vec<OsString> = std::env::args_os().collect();
    let Some(spec) = args.get(1) else {
        eprintln!(
            "netns-exec: usage: #!netns-exec <netns path> <program> as a script's first line"
        );
        return ExitCode::from(2);
    };
    let spec = String::from_utf8_lossy(spec.as_bytes()).into_owned();
    let Some((netns, program)) = spec.trim().split_once(' ') else {
        eprintln!("netns-exec: expected \"<netns path> <program>\", got {spec:?}");
        return ExitCode::from(2);
    };
    let ns = match std::fs::File::open(netns) {
        Ok(f) => f,
        Err(e) => {
            eprintln!("netns-exec: open {netns}: {e}");
            return ExitCode::from(1);
        }
    };
    if let Err(e) = setns(&ns, CloneFlags::CLONE_NEWNET) {
        eprintln!("netns-exec: setns {netns}: {e}");
        return ExitCode::from(1);
    }
    drop(ns);
    // args[2] is the wrapper script; what follows are the caller's arguments.
    let err = Command::new(program.trim())
        .args(args.iter().skip(3))
        .exec();
    eprintln!("netns-exec: exec {program}: {err}");
    ExitCode::from(1)
}
