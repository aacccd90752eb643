//! keelson as podman's OCI runtime: `podman --runtime keelson run` with the flags users
//! reach for (-t, --user, --cap-drop, --read-only, --memory) and `podman exec`.

use keelson_tests::containerd::oci_archive;
use keelson_tests::podman::Podman;
use keelson_tests::{Bundle, Runtime, unique};
use std::process::Output;

const IMAGE: &str = "docker.io/library/keelson-podman-busybox:latest";

fn text(o: &Output) -> String {
    format!(
        "exit {:?}\nstdout: {}\nstderr: {}",
        o.status.code(),
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

/// One podman, one image, every scenario in turn (podman's own state is not made for
/// parallel users of one storage).
#[test]
fn podman_runs_containers_with_keelson() {
    let rt = Runtime::keelson().expect("keelson");
    let pm = Podman::new(&rt.bin).expect("podman fixture");
    let bundle = Bundle::busybox("podman-image").expect("bundle");
    let dir = tempfile::tempdir().expect("tmp");
    let archive = dir.path().join("image.tar");
    oci_archive(&bundle.rootfs(), IMAGE, &archive).expect("archive");
    let out = pm
        .cmd(&["load".as_ref(), "-i".as_ref(), archive.as_os_str()])
        .expect("load");
    assert!(out.status.success(), "{}", text(&out));
    let flags = Podman::run_flags();
    let run = |extra: &[&str], cmd: &str| -> Output {
        let mut args = vec!["run", "--rm"];
        args.extend(&flags);
        args.extend(extra);
        args.extend([IMAGE, "sh", "-c", cmd]);
        pm.cmd(&args).expect("podman run")
    };

    // A plain run: output and exit code.
    let out = run(&[], "echo plain-ok; exit 4");
    assert_eq!(out.status.code(), Some(4), "{}", text(&out));
    assert!(stdout(&out).contains("plain-ok"), "{}", text(&out));

    // --user, --cap-drop ALL, --read-only (with podman's tmpcopyup tmpfs mounts).
    let out = run(
        &["--user", "1000:1000", "--cap-drop", "ALL", "--read-only"],
        "echo ids=$(id -u):$(id -g); grep CapEff /proc/self/status; touch /x 2>&1; touch /tmp/ok && echo tmp=ok",
    );
    assert!(out.status.success(), "{}", text(&out));
    let s = stdout(&out);
    assert!(s.contains("ids=1000:1000"), "{}", text(&out));
    assert!(s.contains("CapEff:\t0000000000000000"), "{}", text(&out));
    assert!(s.contains("Read-only file system"), "{}", text(&out));
    assert!(s.contains("tmp=ok"), "{}", text(&out));

    // --memory lands in the container's cgroup.
    let out = run(
        &["--memory", "64m"],
        "cat /sys/fs/cgroup/memory/memory.limit_in_bytes 2>/dev/null || cat /sys/fs/cgroup/memory.max",
    );
    assert!(out.status.success(), "{}", text(&out));
    assert_eq!(stdout(&out).trim(), "67108864", "{}", text(&out));

    // -t: the container gets a terminal through the console socket.
    let mut args = vec!["run", "--rm", "-t"];
    args.extend(&flags);
    args.extend([IMAGE, "sh", "-c", "tty; [ -t 1 ] && echo is-a-tty"]);
    let out = pm.cmd_tty(&args).expect("podman run -t");
    assert!(out.status.success(), "{}", text(&out));
    assert!(stdout(&out).contains("/dev/pts/0"), "{}", text(&out));
    assert!(stdout(&out).contains("is-a-tty"), "{}", text(&out));

    // exec into a running container.
    let name = unique::name("kt", "pe");
    let mut args = vec!["run", "-d", "--name", name.as_str()];
    args.extend(&flags);
    args.extend([IMAGE, "sleep", "1000"]);
    let out = pm.cmd(&args).expect("run -d");
    assert!(out.status.success(), "{}", text(&out));
    let out = pm
        .cmd(&[
            "exec",
            name.as_str(),
            "sh",
            "-c",
            "echo exec-ok; cat /proc/1/comm; exit 6",
        ])
        .expect("exec");
    assert_eq!(out.status.code(), Some(6), "{}", text(&out));
    assert!(
        stdout(&out).contains("exec-ok") && stdout(&out).contains("sleep"),
        "{}",
        text(&out)
    );
    let out = pm
        .cmd(&["rm", "--force", "--time", "0", name.as_str()])
        .expect("rm");
    assert!(out.status.success(), "{}", text(&out));
}
