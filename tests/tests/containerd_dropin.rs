//! keelson as containerd's runc: Debian's containerd (runc v2 shim) runs, execs into, lists,
//! pauses, resumes, kills and deletes containers through `--runc-binary keelson`.

use keelson_tests::containerd::{Containerd, oci_archive};
use keelson_tests::{Bundle, Runtime, unique};
use std::process::Output;

const IMAGE: &str = "docker.io/library/keelson-busybox:latest";

fn text(o: &Output) -> String {
    format!(
        "exit {:?}\nstdout: {}\nstderr: {}",
        o.status.code(),
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

/// A containerd with the busybox image imported.
fn daemon() -> Containerd {
    let ctd = Containerd::start().expect("containerd starts");
    let bundle = Bundle::busybox("ctd-image").expect("bundle");
    let dir = tempfile::tempdir().expect("tmp");
    let archive = dir.path().join("image.tar");
    oci_archive(&bundle.rootfs(), IMAGE, &archive).expect("oci archive");
    let out = ctd
        .ctr(&["images".as_ref(), "import".as_ref(), archive.as_os_str()])
        .expect("ctr import");
    assert!(
        out.status.success(),
        "import: {}\n{}",
        text(&out),
        ctd.log()
    );
    ctd
}

fn keelson_bin() -> String {
    Runtime::keelson()
        .expect("keelson")
        .bin
        .to_string_lossy()
        .into_owned()
}

#[test]
fn ctr_run_to_completion_with_output_and_exit_code() {
    let ctd = daemon();
    let bin = keelson_bin();
    let id = unique::container_id("ctd-run");
    let out = ctd
        .ctr(&[
            "run",
            "--rm",
            "--runc-binary",
            &bin,
            IMAGE,
            &id,
            "sh",
            "-c",
            "echo hello-from-keelson; id -u; exit 3",
        ])
        .expect("ctr run");
    assert_eq!(out.status.code(), Some(3), "{}\n{}", text(&out), ctd.log());
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains("hello-from-keelson"), "{}", text(&out));
    assert!(stdout.lines().any(|l| l == "0"), "{}", text(&out));
    // --rm removed the container.
    let ls = ctd.ctr(&["containers", "ls", "-q"]).expect("ls");
    assert!(
        !String::from_utf8_lossy(&ls.stdout).contains(&id),
        "{}",
        text(&ls)
    );
}

#[test]
fn ctr_task_exec_ps_pause_resume_kill_delete() {
    let ctd = daemon();
    let bin = keelson_bin();
    let id = unique::container_id("ctd-task");
    let out = ctd
        .ctr(&[
            "run",
            "-d",
            "--runc-binary",
            &bin,
            IMAGE,
            &id,
            "sleep",
            "1000",
        ])
        .expect("run -d");
    assert!(out.status.success(), "{}\n{}", text(&out), ctd.log());

    let out = ctd
        .ctr(&[
            "task",
            "exec",
            "--exec-id",
            "e1",
            &id,
            "sh",
            "-c",
            "echo exec-ok; cat /proc/1/comm; exit 5",
        ])
        .expect("exec");
    assert_eq!(out.status.code(), Some(5), "{}", text(&out));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.contains("exec-ok") && stdout.contains("sleep"),
        "{}",
        text(&out)
    );

    let out = ctd.ctr(&["task", "ps", &id]).expect("ps");
    assert!(out.status.success(), "{}", text(&out));
    let pids: Vec<String> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .skip(1)
        .filter_map(|l| l.split_whitespace().next().map(str::to_string))
        .collect();
    assert_eq!(pids.len(), 1, "{}", text(&out));

    let status = |ctd: &Containerd| {
        let out = ctd.ctr(&["task", "ls"]).expect("task ls");
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .find(|l| l.starts_with(&id))
            .and_then(|l| l.split_whitespace().nth(2).map(str::to_string))
            .unwrap_or_default()
    };
    assert_eq!(status(&ctd), "RUNNING");
    assert!(
        ctd.ctr(&["task", "pause", &id])
            .expect("pause")
            .status
            .success()
    );
    assert_eq!(status(&ctd), "PAUSED");
    assert!(
        ctd.ctr(&["task", "resume", &id])
            .expect("resume")
            .status
            .success()
    );
    assert_eq!(status(&ctd), "RUNNING");
    let out = ctd.ctr(&["task", "kill", "-s", "KILL", &id]).expect("kill");
    assert!(out.status.success(), "{}", text(&out));
    let end = std::time::Instant::now() + std::time::Duration::from_secs(15);
    while status(&ctd) != "STOPPED" && std::time::Instant::now() < end {
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    assert_eq!(status(&ctd), "STOPPED");
    let out = ctd.ctr(&["task", "delete", &id]).expect("delete");
    assert!(out.status.success(), "{}", text(&out));
    let out = ctd.ctr(&["containers", "rm", &id]).expect("rm");
    assert!(out.status.success(), "{}", text(&out));
    // keelson's state for the namespace is gone with the container.
    let root = std::path::Path::new("/run/containerd/runc")
        .join(&ctd.namespace)
        .join(&id);
    assert!(!root.exists(), "{} left", root.display());
}
