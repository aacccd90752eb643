//! keelsonctl end to end against a private keelsond: the commands, tables and JSON crictl
//! users expect (version, info, pull/images/inspecti/rmi, runp/pods/inspectp/stopp/rmp,
//! create/start/ps/inspect/logs/exec/stats/stop/rm) and bad input refused with a one-line
//! message that names what is wrong, changing nothing.

use keelson_tests::cri::Keelsond;
use keelson_tests::cri::registry_with_busybox;
use keelson_tests::runtime::built_binary;
use serde_json::{Value, json};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, Instant};

/// keelsonctl pointed at one keelsond.
struct Ctl<'a> {
    k: &'a Keelsond,
    bin: PathBuf,
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

impl<'a> Ctl<'a> {
    fn new(k: &'a Keelsond) -> Ctl<'a> {
        let bin = built_binary("KEELSONCTL_BIN", "keelsonctl", "keelson-cri")
            .expect("keelsonctl binary (cargo build --workspace --bins)");
        Ctl { k, bin }
    }

    fn run(&self, args: &[&str]) -> Output {
        self.command(args).output().expect("run keelsonctl")
    }

    /// Stdout of a command that must succeed.
    fn ok(&self, args: &[&str]) -> String {
        let o = self.run(args);
        assert!(
            o.status.success(),
            "keelsonctl {args:?} failed ({}): {}\nstdout: {}\nkeelsond: {}",
            o.status,
            text(&o.stderr),
            text(&o.stdout),
            self.k.log()
        );
        text(&o.stdout)
    }

    /// Stderr of a command that must fail with one line `keelsonctl: ...`.
    fn fails(&self, args: &[&str]) -> String {
        let o = self.run(args);
        let err = text(&o.stderr);
        assert!(
            !o.status.success(),
            "keelsonctl {args:?} succeeded: {}",
            text(&o.stdout)
        );
        assert!(err.starts_with("keelsonctl: "), "{args:?}: {err}");
        assert_eq!(err.trim_end().lines().count(), 1, "{args:?}: {err}");
        err
    }

    /// A command run with `input` on its stdin.
    fn run_stdin(&self, args: &[&str], input: &[u8]) -> Output {
        use std::io::Write;
        let mut child = self
            .command(args)
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .expect("run keelsonctl");
        let mut stdin = child.stdin.take().expect("stdin");
        stdin.write_all(input).expect("write stdin");
        drop(stdin);
        let o = wait_output(child, Duration::from_secs(60));
        o.unwrap_or_else(|| {
            panic!(
                "keelsonctl {args:?} did not end\nkeelsond: {}",
                self.k.log()
            )
        })
    }

    fn command(&self, args: &[&str]) -> Command {
        let mut c = Command::new(&self.bin);
        c.arg("--runtime-endpoint")
            .arg(format!("unix://{}", self.k.socket().display()))
            .args(["--timeout", "60s"])
            .args(args)
            .env_remove("CONTAINER_RUNTIME_ENDPOINT")
            .env_remove("IMAGE_SERVICE_ENDPOINT");
        c
    }

    fn json(&self, args: &[&str]) -> Value {
        let out = self.ok(args);
        serde_json::from_str(&out).unwrap_or_else(|e| panic!("{args:?}: {e}: {out}"))
    }
}

/// crictl's pod config for this keelsond: logs in its log dir, the fixture's namespaces.
fn pod_json(k: &Keelsond, name: &str) -> Value {
    let uid = keelson_tests::unique::name("uid", name);
    json!({
        "metadata": {"name": name, "namespace": "default", "uid": uid, "attempt": 0},
        "hostname": name,
        "log_directory": k.log_dir().join(&uid).display().to_string(),
        "labels": {"io.kubernetes.pod.name": name, "io.kubernetes.pod.namespace": "default",
                   "io.kubernetes.pod.uid": uid},
        "linux": {"security_context": {"namespace_options":
            {"network": "POD", "pid": "CONTAINER", "ipc": 0}}},
    })
}

fn container_json(name: &str, pod: &str, image: &str, script: &str) -> Value {
    json!({
        "metadata": {"name": name},
        "image": {"image": image},
        "command": ["/bin/sh", "-c", script],
        "log_path": format!("{name}.log"),
        "labels": {"io.kubernetes.pod.name": pod, "io.kubernetes.pod.namespace": "default",
                   "io.kubernetes.container.name": name},
        "linux": {"security_context": {"namespace_options":
            {"network": "POD", "pid": "CONTAINER", "ipc": "POD"}}},
    })
}

fn write_json(dir: &Path, name: &str, v: &Value) -> String {
    let p = dir.join(name);
    std::fs::write(&p, serde_json::to_vec_pretty(v).expect("json")).expect("write config");
    p.display().to_string()
}

/// Polls `f` until it is true (10 s).
fn eventually(what: &str, mut f: impl FnMut() -> bool) {
    let end = Instant::now() + Duration::from_secs(10);
    while Instant::now() < end {
        if f() {
            return;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    panic!("timed out waiting for {what}");
}

/// The output of a child, killed (and `None`) if it has not ended within `limit`.
fn wait_output(mut child: std::process::Child, limit: Duration) -> Option<Output> {
    let end = Instant::now() + limit;
    loop {
        match child.try_wait() {
            Ok(Some(_)) => return child.wait_with_output().ok(),
            Ok(None) if Instant::now() < end => std::thread::sleep(Duration::from_millis(20)),
            _ => {
                let _ = child.kill();
                let _ = child.wait();
                return None;
            }
        }
    }
}

/// A child process killed when the test is done with it, also on failure.
struct KillOnDrop(std::process::Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Runs `keelsonctl exec -it <ctr> sh -c <script>` on a fresh pty of 33 rows and 101
/// columns that is its controlling terminal; once its output shows `resize_at`, the pty is
/// resized to 40x120 (the kernel signals SIGWINCH). Returns what it wrote, its exit code, and
/// whether the pty is in canonical mode again afterwards.
fn exec_on_pty(ctl: &Ctl, ctr: &str, script: &str, resize_at: &str) -> (String, Option<i32>, bool) {
    use nix::sys::termios::{LocalFlags, tcgetattr};
    use std::io::Read;
    use std::os::fd::AsRawFd;
    use std::os::unix::process::CommandExt;
    let size = nix::pty::Winsize {
        ws_row: 33,
        ws_col: 101,
        ws_xpixel: 0,
        ws_ypixel: 0,
    };
    let pty = nix::pty::openpty(Some(&size), None).expect("openpty");
    let slave = std::fs::File::from(pty.slave);
    let master = std::fs::File::from(pty.master);
    let mut cmd = ctl.command(&["exec", "-it", ctr, "sh", "-c", script]);
    cmd.stdin(slave.try_clone().expect("dup"))
        .stdout(slave.try_clone().expect("dup"))
        .stderr(slave.try_clone().expect("dup"));
    // SAFETY: only async-signal-safe calls between fork and exec: a new session whose
    // controlling terminal is the pty on stdin, so a resize signals keelsonctl.
    unsafe {
        cmd.pre_exec(|| {
            nix::unistd::setsid()?;
            if nix::libc::ioctl(0, nix::libc::TIOCSCTTY, 0) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let mut child = KillOnDrop(cmd.spawn().expect("keelsonctl"));
    let (tx, rx) = std::sync::mpsc::channel::<Vec<u8>>();
    let mut reader = master.try_clone().expect("dup master");
    std::thread::spawn(move || {
        let mut buf = [0u8; 4096];
        // Ends with EIO once no slave is left.
        while let Ok(n) = reader.read(&mut buf) {
            if n == 0 || tx.send(buf[..n].to_vec()).is_err() {
                break;
            }
        }
    });
    let mut out = Vec::new();
    let mut resized = false;
    let end = Instant::now() + Duration::from_secs(60);
    let status = loop {
        if let Ok(chunk) = rx.recv_timeout(Duration::from_millis(20)) {
            out.extend_from_slice(&chunk);
        }
        if !resized && String::from_utf8_lossy(&out).contains(resize_at) {
            let bigger = nix::libc::winsize {
                ws_row: 40,
                ws_col: 120,
                ws_xpixel: 0,
                ws_ypixel: 0,
            };
            // SAFETY: TIOCSWINSZ reads one winsize from the struct we own.
            let rc =
                unsafe { nix::libc::ioctl(master.as_raw_fd(), nix::libc::TIOCSWINSZ, &bigger) };
            assert_eq!(rc, 0, "resizing the pty");
            resized = true;
        }
        match child.0.try_wait() {
            Ok(Some(s)) => break s,
            Ok(None) if Instant::now() < end => {}
            other => panic!(
                "keelsonctl exec -it did not end ({other:?}): {}",
                String::from_utf8_lossy(&out)
            ),
        }
    };
    let restored = tcgetattr(&slave)
        .map(|t| t.local_flags.contains(LocalFlags::ICANON))
        .unwrap_or(false);
    drop(slave);
    while let Ok(chunk) = rx.recv_timeout(Duration::from_secs(5)) {
        out.extend_from_slice(&chunk);
    }
    (
        String::from_utf8_lossy(&out).into_owned(),
        status.code(),
        restored,
    )
}

fn is_id(s: &str) -> bool {
    s.len() >= 12 && s.bytes().all(|b| b.is_ascii_hexdigit())
}

/// The header of a table and the rows below it.
fn table(out: &str) -> (String, Vec<String>) {
    let mut lines = out.lines().map(str::to_string);
    (lines.next().unwrap_or_default(), lines.collect())
}

#[test]
fn version_info_and_images() {
    let (_reg, image) = registry_with_busybox("ctl");
    let k = Keelsond::start("ctl-img").expect("keelsond");
    let ctl = Ctl::new(&k);

    let v = ctl.ok(&["version"]);
    assert!(v.contains("RuntimeName:  keelsond\n"), "{v}");
    assert!(v.contains("RuntimeApiVersion:  v1\n"), "{v}");
    assert!(v.starts_with("Version:  "), "{v}");

    let info = ctl.json(&["info"]);
    let conditions = info["status"]["conditions"].as_array().expect("conditions");
    assert!(
        conditions
            .iter()
            .any(|c| c["type"] == "RuntimeReady" && c["status"] == true),
        "{info}"
    );
    assert!(info["config"].is_object(), "verbose info embedded: {info}");

    let pulled = ctl.ok(&["pull", &image]);
    assert!(
        pulled.starts_with("Image is up to date for sha256:"),
        "{pulled}"
    );
    let image_id = pulled
        .trim()
        .rsplit(' ')
        .next()
        .unwrap_or_default()
        .to_string();

    let (header, rows) = table(&ctl.ok(&["images"]));
    let cols: Vec<&str> = header
        .split("  ")
        .filter(|c| !c.is_empty())
        .map(str::trim)
        .collect();
    assert_eq!(cols, ["IMAGE", "TAG", "IMAGE ID", "SIZE"], "{header}");
    let (repo, tag) = image.rsplit_once(':').expect("tag");
    let row = rows
        .iter()
        .find(|r| r.starts_with(repo))
        .unwrap_or_else(|| panic!("no row for {repo}: {rows:?}"));
    let cells: Vec<&str> = row.split_whitespace().collect();
    assert_eq!(cells[1], tag, "{row}");
    assert_eq!(
        cells[2],
        &image_id["sha256:".len().."sha256:".len() + 13],
        "{row}"
    );
    assert!(cells[3].ends_with('B'), "size {row}");
    assert_eq!(ctl.ok(&["images", "-q"]).trim(), image_id);
    let digests = ctl.ok(&["images", "--digests"]);
    assert!(
        digests
            .lines()
            .next()
            .unwrap_or_default()
            .contains("DIGEST"),
        "{digests}"
    );

    let list = ctl.json(&["images", "-o", "json"]);
    assert_eq!(list["images"][0]["id"], json!(image_id), "{list}");
    assert!(
        list["images"][0]["size"].is_string(),
        "uint64 as string: {list}"
    );

    let st = ctl.json(&["inspecti", &image]);
    assert_eq!(st["status"]["id"], json!(image_id), "{st}");
    assert!(
        st["status"]["repoTags"]
            .as_array()
            .is_some_and(|t| t.contains(&json!(image))),
        "{st}"
    );
    assert!(st["info"].is_object(), "verbose info: {st}");

    let fs = ctl.json(&["imagefsinfo"]);
    assert!(
        fs["status"]["imageFilesystems"][0]["fsId"]["mountpoint"].is_string(),
        "{fs}"
    );

    assert_eq!(ctl.ok(&["rmi", &image]), format!("Deleted: {image}\n"));
    assert_eq!(ctl.ok(&["images", "-q"]), "");
    let err = ctl.fails(&["rmi", &image]);
    assert!(err.contains("no such image"), "{err}");
    let err = ctl.fails(&["inspecti", "sha256:0000"]);
    assert!(err.contains("no such image"), "{err}");
}

#[test]
fn pod_and_container_lifecycle() {
    let (_reg, image) = registry_with_busybox("life");
    let k = Keelsond::start("ctl-life").expect("keelsond");
    let ctl = Ctl::new(&k);
    let dir = tempfile::tempdir().expect("tmp");
    ctl.ok(&["pull", &image]);

    let pod_cfg = write_json(dir.path(), "pod.json", &pod_json(&k, "web"));
    let pod = ctl.ok(&["runp", &pod_cfg]).trim().to_string();
    assert!(is_id(&pod), "pod ID {pod:?}");

    let (header, rows) = table(&ctl.ok(&["pods"]));
    for col in [
        "POD ID",
        "CREATED",
        "STATE",
        "NAME",
        "NAMESPACE",
        "ATTEMPT",
        "RUNTIME",
    ] {
        assert!(header.contains(col), "{col} in {header}");
    }
    assert_eq!(
        header.find("CREATED"),
        Some(20),
        "tabwriter columns: {header}"
    );
    assert_eq!(rows.len(), 1, "{rows:?}");
    let cells: Vec<&str> = rows[0].split_whitespace().collect();
    assert_eq!(cells[0], &pod[..13]);
    assert!(rows[0].contains(" ago "), "{}", rows[0]);
    assert!(rows[0].contains("Ready"), "{}", rows[0]);
    assert!(
        rows[0].contains("web") && rows[0].contains("default"),
        "{}",
        rows[0]
    );
    assert!(rows[0].trim_end().ends_with("(default)"), "{}", rows[0]);
    assert_eq!(ctl.ok(&["pods", "-q"]), format!("{pod}\n"));
    assert_eq!(
        ctl.ok(&["pods", "-q", "--name", "^we.$"]),
        format!("{pod}\n")
    );
    assert_eq!(ctl.ok(&["pods", "-q", "--name", "nomatch"]), "");
    assert_eq!(ctl.ok(&["pods", "-q", "--state", "notready"]), "");
    assert_eq!(
        ctl.ok(&["pods", "-q", "--label", "io.kubernetes.pod.name=web"]),
        format!("{pod}\n")
    );
    let pods = ctl.json(&["pods", "-o", "json"]);
    assert_eq!(pods["items"][0]["state"], json!("SANDBOX_READY"), "{pods}");

    let st = ctl.json(&["inspectp", &pod[..12]]);
    assert_eq!(st["status"]["id"], json!(pod), "{st}");
    assert_eq!(st["status"]["state"], json!("SANDBOX_READY"), "{st}");
    assert_eq!(st["status"]["metadata"]["name"], json!("web"), "{st}");
    let created = st["status"]["createdAt"].as_str().unwrap_or_default();
    assert!(created.ends_with('Z') && created.contains('T'), "{st}");
    assert!(st["info"].is_object(), "{st}");

    // A container that prints and exits 3.
    let c_cfg = write_json(
        dir.path(),
        "exit3.json",
        &container_json("exit3", "web", &image, "echo hi; exit 3"),
    );
    let c = ctl
        .ok(&["create", &pod, &c_cfg, &pod_cfg])
        .trim()
        .to_string();
    assert!(is_id(&c), "container ID {c:?}");
    assert_eq!(ctl.ok(&["start", &c]), format!("{c}\n"));
    // keelsond may report a container whose monitor just went as exited with reason
    // "Unknown" (exit 255) for a moment before it sees the recorded exit status (it reads
    // the exit file, then checks the monitor); wait for the recorded one.
    eventually("exit3 to exit", || {
        ctl.ok(&["ps", "-q", "--state", "exited"]).contains(&c)
            && ctl.json(&["inspect", "-q", &c])["status"]["reason"] != json!("Unknown")
    });
    let (header, rows) = table(&ctl.ok(&["ps", "-a"]));
    for col in [
        "CONTAINER",
        "IMAGE",
        "CREATED",
        "STATE",
        "NAME",
        "ATTEMPT",
        "POD ID",
        "POD",
    ] {
        assert!(header.contains(col), "{col} in {header}");
    }
    let row = rows
        .iter()
        .find(|r| r.starts_with(&c[..13]))
        .unwrap_or_else(|| panic!("{c} in {rows:?}"));
    assert!(row.contains("Exited") && row.contains("exit3"), "{row}");
    assert!(row.contains(&pod[..13]) && row.contains("web"), "{row}");
    assert!(
        !ctl.ok(&["ps", "-q"]).contains(&c),
        "ps without -a lists running ones"
    );

    let st = ctl.json(&["inspect", &c]);
    assert_eq!(st["status"]["exitCode"], json!(3), "{st}");
    assert_eq!(st["status"]["state"], json!("CONTAINER_EXITED"), "{st}");
    assert_eq!(st["status"]["reason"], json!("Error"), "{st}");
    let finished = st["status"]["finishedAt"].as_str().unwrap_or_default();
    assert!(finished.starts_with("20"), "{st}");
    let log_path = st["status"]["logPath"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    assert!(Path::new(&log_path).is_file(), "{st}");

    assert_eq!(ctl.ok(&["logs", &c]), "hi\n");
    let stamped = ctl.ok(&["logs", "--timestamps", &c]);
    assert!(
        stamped.starts_with("20") && stamped.ends_with(" hi\n"),
        "{stamped:?}"
    );
    assert_eq!(ctl.ok(&["logs", "--tail", "0", &c]), "");
    assert_eq!(ctl.ok(&["logs", "--since", "1h", &c]), "hi\n");
    // Follow ends when the container is not running.
    assert_eq!(ctl.ok(&["logs", "-f", &c]), "hi\n");

    // Following a running container prints what it writes until it exits.
    let t_cfg = write_json(
        dir.path(),
        "ticker.json",
        &container_json(
            "ticker",
            "web",
            &image,
            "for i in 1 2 3; do echo line$i; sleep 1; done; echo oops >&2",
        ),
    );
    let t = ctl
        .ok(&["create", &pod, &t_cfg, &pod_cfg])
        .trim()
        .to_string();
    ctl.ok(&["start", &t]);
    let o = ctl.run(&["logs", "-f", &t]);
    assert!(o.status.success(), "{}", text(&o.stderr));
    assert_eq!(text(&o.stdout), "line1\nline2\nline3\n");
    assert_eq!(text(&o.stderr), "oops\n");
    let err = ctl.fails(&["logs", "--tail", "2", "--stream", "stdout", &t]);
    assert!(err.contains("mutually exclusive"), "{err}");
    assert_eq!(
        ctl.ok(&["logs", "--stream", "stdout", &t]),
        "line1\nline2\nline3\n"
    );
    assert_eq!(ctl.ok(&["logs", "--limit-bytes", "8", &t]), "line1\nli");
    let o = ctl.run(&["logs", "--tail", "2", &t]);
    assert_eq!(
        (text(&o.stdout), text(&o.stderr)),
        ("line3\n".into(), "oops\n".into())
    );
    assert_eq!(ctl.ok(&["rm", &t]), format!("{t}\n"));

    // exec into a sleeping container.
    let s_cfg = write_json(
        dir.path(),
        "sleeper.json",
        &container_json("sleeper", "web", &image, "echo started; exec sleep 3600"),
    );
    let s = ctl
        .ok(&["create", &pod, &s_cfg, &pod_cfg])
        .trim()
        .to_string();
    ctl.ok(&["start", &s]);
    eventually("sleeper to run", || ctl.ok(&["ps", "-q"]).contains(&s));
    let o = ctl.run(&["exec", &s, "sh", "-c", "echo out; echo err >&2; exit 7"]);
    assert_eq!(o.status.code(), Some(7), "{}", text(&o.stderr));
    assert_eq!(text(&o.stdout), "out\n");
    assert_eq!(text(&o.stderr), "err\n");
    assert_eq!(
        ctl.ok(&["exec", "--timeout", "10", &s, "cat", "/proc/1/comm"]),
        "sleep\n"
    );

    let stats = ctl.json(&["stats", "-o", "json"]);
    assert!(
        stats["stats"]
            .as_array()
            .is_some_and(|l| l.iter().any(|x| x["attributes"]["id"] == json!(s))),
        "{stats}"
    );
    let err = ctl.fails(&["rm", &s]);
    assert!(err.contains("is running, please stop it first"), "{err}");
    assert_eq!(ctl.ok(&["stop", "-t", "1", &s]), format!("{s}\n"));
    assert_eq!(ctl.ok(&["rm", &s]), format!("{s}\n"));
    let st = ctl.json(&["inspect", &c]);
    assert_eq!(st["status"]["id"], json!(c));

    // A ready pod is removed only with -f; stopp makes it NotReady.
    let err = ctl.fails(&["rmp", &pod]);
    assert!(err.contains("please stop it first"), "{err}");
    assert_eq!(ctl.ok(&["stopp", &pod]), format!("Stopped sandbox {pod}\n"));
    assert!(ctl.ok(&["pods"]).contains("NotReady"));
    assert_eq!(ctl.ok(&["rmp", &pod]), format!("Removed sandbox {pod}\n"));
    assert_eq!(ctl.ok(&["pods", "-q"]), "");
    assert_eq!(ctl.ok(&["ps", "-a", "-q"]), "");
    let err = ctl.fails(&["inspectp", &pod]);
    assert!(
        err.contains("NotFound") && err.contains("not found"),
        "{err}"
    );
}

#[test]
fn bad_input_is_refused_with_a_message() {
    let k = Keelsond::start("ctl-bad").expect("keelsond");
    let ctl = Ctl::new(&k);
    let dir = tempfile::tempdir().expect("tmp");

    let broken = dir.path().join("broken.json");
    std::fs::write(&broken, "{\"metadata\": {\"name\": \"x\",\n}").expect("write");
    let err = ctl.fails(&["runp", &broken.display().to_string()]);
    assert!(
        err.contains("broken.json") && err.contains("line 2"),
        "{err}"
    );

    let mut cfg = pod_json(&k, "typo");
    cfg["linux"]["security_context"]["namespace_options"]["netwrk"] = json!("POD");
    let typo = write_json(dir.path(), "typo.json", &cfg);
    let err = ctl.fails(&["runp", &typo]);
    assert!(
        err.contains("typo.json")
            && err.contains("\"netwrk\"")
            && err.contains("linux.security_context.namespace_options"),
        "{err}"
    );

    let mut cfg = pod_json(&k, "enum");
    cfg["linux"]["security_context"]["namespace_options"]["pid"] = json!("SOMETIMES");
    let bad_enum = write_json(dir.path(), "enum.json", &cfg);
    let err = ctl.fails(&["runp", &bad_enum]);
    assert!(
        err.contains("SOMETIMES") && err.contains("NamespaceMode"),
        "{err}"
    );

    let nometa = write_json(dir.path(), "nometa.json", &json!({"hostname": "x"}));
    let err = ctl.fails(&["runp", &nometa]);
    assert!(err.contains("metadata is not set"), "{err}");
    let err = ctl.fails(&["runp", "/nonexistent/pod.json"]);
    assert!(err.contains("/nonexistent/pod.json not found"), "{err}");

    // None of that reached keelsond.
    assert_eq!(ctl.ok(&["pods", "-q"]), "");

    for args in [
        ["inspect", "0123456789ab"],
        ["inspectp", "0123456789ab"],
        ["stopp", "0123456789ab"],
        ["rmp", "0123456789ab"],
        ["stop", "0123456789ab"],
        ["rm", "0123456789ab"],
        ["logs", "0123456789ab"],
        ["start", "0123456789ab"],
    ] {
        let err = ctl.fails(&args);
        assert!(err.contains("not found"), "{args:?}: {err}");
    }
    let err = ctl.fails(&["exec", "0123456789ab", "true"]);
    assert!(err.contains("not found"), "{err}");

    let err = ctl.fails(&["port-forward", "0123456789ab", "8080:80"]);
    assert!(err.contains("not found"), "{err}");
    let err = ctl.fails(&["port-forward", "0123456789ab", "8080:http"]);
    assert!(err.contains("invalid port"), "{err}");
    let err = ctl.fails(&["attach", "0123456789ab"]);
    assert!(err.contains("not found"), "{err}");
    let err = ctl.fails(&["exec", "-i", "0123456789ab", "cat"]);
    assert!(err.contains("not found"), "{err}");
    // A filter that matches no pod: the table's header only (as crictl).
    let (head, rows) = table(&ctl.ok(&["statsp", "-s", "0", "0123456789ab"]));
    assert!(head.starts_with("POD") && head.contains("POD ID"), "{head}");
    assert!(rows.is_empty(), "{rows:?}");
    let err = ctl.fails(&["pods", "-o", "yaml"]);
    assert!(err.contains("yaml"), "{err}");
    let err = ctl.fails(&["pods", "--label", "novalue"]);
    assert!(err.contains("incorrectly specified label"), "{err}");

    // No daemon at the endpoint: a one-line error naming it.
    let o = Command::new(&ctl.bin)
        .args(["-r", "unix:///nonexistent/keelsond.sock", "version"])
        .output()
        .expect("run");
    let err = text(&o.stderr);
    assert!(!o.status.success(), "{err}");
    assert!(
        err.starts_with("keelsonctl: ") && err.contains("/nonexistent/keelsond.sock"),
        "{err}"
    );
}

#[test]
fn pod_stats_and_interactive_streaming() {
    use std::io::{BufRead, Read, Write};
    let (_reg, image) = registry_with_busybox("ctlstream");
    let k = Keelsond::start("ctl-stream").expect("keelsond");
    let ctl = Ctl::new(&k);
    let dir = tempfile::tempdir().expect("tmp");
    ctl.ok(&["pull", &image]);
    // The kubelet's way: a pod cgroup (relative: below keelsond's own) holding the sandbox
    // and its containers, which is what the pod's stats read.
    let mut pod_v = pod_json(&k, "streamer");
    pod_v["linux"]["cgroup_parent"] = json!(keelson_tests::unique::name("kt-pod", "streamer"));
    let pod_cfg = write_json(dir.path(), "pod.json", &pod_v);
    let pod = ctl.ok(&["runp", &pod_cfg]).trim().to_string();

    // A web server (busybox httpd) and a `cat` reading its stdin once.
    let web_cfg = write_json(
        dir.path(),
        "web.json",
        &container_json(
            "web",
            "streamer",
            &image,
            "mkdir -p /www && echo hello-forwarded > /www/index.html && exec httpd -f -p 8080 -h /www",
        ),
    );
    let web = ctl
        .ok(&["create", &pod, &web_cfg, &pod_cfg])
        .trim()
        .to_string();
    ctl.ok(&["start", &web]);
    let mut cat = container_json("cat", "streamer", &image, "exec cat");
    cat["stdin"] = json!(true);
    cat["stdin_once"] = json!(true);
    let cat_cfg = write_json(dir.path(), "cat.json", &cat);
    let cat = ctl
        .ok(&["create", &pod, &cat_cfg, &pod_cfg])
        .trim()
        .to_string();
    ctl.ok(&["start", &cat]);
    eventually("both containers to run", || {
        let ps = ctl.ok(&["ps", "-q"]);
        ps.contains(&web) && ps.contains(&cat)
    });

    // exec -i: stdin piped from here, output back, the remote exit code is keelsonctl's.
    let o = ctl.run_stdin(
        &["exec", "-i", &web, "sh", "-c", "cat; echo err >&2; exit 5"],
        b"input line\n",
    );
    assert_eq!(o.status.code(), Some(5), "{}", text(&o.stderr));
    assert_eq!(text(&o.stdout), "input line\n");
    assert_eq!(text(&o.stderr), "err\n");
    let o = ctl.run_stdin(&["exec", "-i", &web, "sh", "-c", "wc -c"], b"12345");
    assert!(o.status.success(), "{}", text(&o.stderr));
    assert_eq!(text(&o.stdout).trim(), "5");
    // With -t (stdin not a terminal here: no raw mode) the output comes through the tty.
    let o = ctl.run_stdin(
        &["exec", "-it", &web, "sh", "-c", "test -t 0 && echo tty"],
        b"",
    );
    assert!(o.status.success(), "{}", text(&o.stderr));
    assert_eq!(text(&o.stdout).trim(), "tty");

    // On a terminal (a pty here): raw mode while it runs, the size sent to the remote tty,
    // the terminal's mode given back afterwards, the remote exit code.
    // A resize of the local terminal reaches the remote one (SIGWINCH -> resize channel).
    // The first size travels on the resize channel too, as with kubectl, and may land just
    // after the process started: the script waits for it (5 s at most) before printing it.
    let (out, code, restored) = exec_on_pty(
        &ctl,
        &web,
        "i=0; while [ \"$(stty size 2>/dev/null)\" != '33 101' ] && [ $i -lt 100 ]; do \
         sleep 0.05; i=$((i+1)); done; stty size; \
         i=0; while [ \"$(stty size)\" = '33 101' ] && [ $i -lt 300 ]; do \
         sleep 0.1; i=$((i+1)); done; echo now $(stty size); exit 3",
        "33 101",
    );
    assert_eq!(code, Some(3), "{out}");
    assert!(out.contains("33 101"), "{out:?}");
    assert!(out.contains("now 40 120"), "{out:?}");
    assert!(restored, "the terminal was left in raw mode");

    // attach -i to `cat`: what goes in comes out; closing stdin ends cat (stdin_once).
    let o = ctl.run_stdin(&["attach", "-i", &cat], b"through attach\n");
    assert!(o.status.success(), "{}", text(&o.stderr));
    assert_eq!(text(&o.stdout), "through attach\n");
    eventually("cat to exit", || {
        ctl.ok(&["ps", "-q", "--state", "exited"]).contains(&cat)
    });

    // port-forward: a free local port to the pod's 8080, one connection from here.
    let child = ctl
        .command(&["port-forward", &pod, ":8080"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("port-forward");
    let mut pf = KillOnDrop(child);
    let mut first = String::new();
    let mut pf_out = std::io::BufReader::new(pf.0.stdout.take().expect("stdout"));
    pf_out.read_line(&mut first).expect("read");
    let local: u16 = first
        .strip_prefix("Forwarding from 127.0.0.1:")
        .and_then(|r| r.split_whitespace().next())
        .and_then(|p| p.parse().ok())
        .unwrap_or_else(|| panic!("first line {first:?}"));
    assert!(first.trim_end().ends_with("-> 8080"), "{first:?}");
    let mut body = String::new();
    // httpd may still be starting: retry the request a few times.
    for _ in 0..50 {
        let mut s = std::net::TcpStream::connect(("127.0.0.1", local)).expect("connect");
        s.set_read_timeout(Some(Duration::from_secs(30)))
            .expect("timeout");
        s.write_all(b"GET / HTTP/1.0\r\n\r\n").expect("request");
        body.clear();
        let _ = s.read_to_string(&mut body);
        if body.contains("hello-forwarded") {
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(
        body.starts_with("HTTP/1.") && body.contains("hello-forwarded"),
        "{body:?}\nkeelsond: {}",
        k.log()
    );
    drop(pf);
    drop(pf_out);

    // Traffic on the pod's eth0 from the test host netns.
    let st = ctl.json(&["inspectp", &pod]);
    let ip = st["status"]["network"]["ip"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    let o = k
        .host_exec(&["busybox", "ping", "-c", "1", "-W", "10", &ip])
        .expect("ping");
    assert!(o.status.success(), "ping {ip}: {}", text(&o.stderr));

    // Pod stats: the pod cgroup's CPU and memory, eth0's counters (the HTTP exchange went
    // through it), the processes and containers.
    let sp = ctl.json(&["statsp", "-o", "json"]);
    let list = sp["stats"].as_array().cloned().unwrap_or_default();
    assert_eq!(list.len(), 1, "{sp}");
    let s = &list[0];
    assert_eq!(s["attributes"]["id"], json!(pod), "{s}");
    assert_eq!(
        s["attributes"]["metadata"]["name"],
        json!("streamer"),
        "{s}"
    );
    let num = |v: &Value| v.as_str().and_then(|x| x.parse::<u64>().ok()).unwrap_or(0);
    let linux = &s["linux"];
    assert!(
        num(&linux["cpu"]["usageCoreNanoSeconds"]["value"]) > 0,
        "{s}"
    );
    assert!(num(&linux["memory"]["workingSetBytes"]["value"]) > 0, "{s}");
    assert!(num(&linux["memory"]["usageBytes"]["value"]) > 0, "{s}");
    assert_eq!(
        linux["network"]["defaultInterface"]["name"],
        json!("eth0"),
        "{s}"
    );
    assert!(
        num(&linux["network"]["defaultInterface"]["rxBytes"]["value"]) > 0,
        "{s}"
    );
    assert!(
        num(&linux["network"]["defaultInterface"]["txBytes"]["value"]) > 0,
        "{s}"
    );
    // httpd runs; cat has exited.
    assert!(num(&linux["process"]["processCount"]["value"]) >= 1, "{s}");
    let ids: Vec<&str> = linux["containers"]
        .as_array()
        .map(|l| {
            l.iter()
                .filter_map(|c| c["attributes"]["id"].as_str())
                .collect()
        })
        .unwrap_or_default();
    assert!(
        ids.contains(&web.as_str()) && ids.contains(&cat.as_str()),
        "{s}"
    );
    // Filters: by label and by id prefix.
    let by_label = ctl.json(&[
        "statsp",
        "-o",
        "json",
        "--label",
        "io.kubernetes.pod.name=streamer",
    ]);
    assert_eq!(
        by_label["stats"].as_array().map(Vec::len),
        Some(1),
        "{by_label}"
    );
    let none = ctl.json(&[
        "statsp",
        "-o",
        "json",
        "--label",
        "io.kubernetes.pod.name=other",
    ]);
    assert_eq!(none["stats"], json!([]), "{none}");
    let (head, rows) = table(&ctl.ok(&["statsp", &pod[..12]]));
    for col in ["POD", "POD ID", "CPU %", "MEM"] {
        assert!(head.contains(col), "{col} in {head}");
    }
    assert_eq!(rows.len(), 1, "{rows:?}");
    assert!(
        rows[0].starts_with("streamer") && rows[0].contains(&pod[..13]),
        "{rows:?}"
    );

    // A stopped pod has no stats (UNAVAILABLE), an unknown one is NOT_FOUND.
    ctl.ok(&["stopp", &pod]);
    assert_eq!(ctl.json(&["statsp", "-o", "json"])["stats"], json!([]));
    k.block_on(async {
        let mut rt = k.runtime().await.expect("client");
        let e = rt
            .pod_sandbox_stats(keelson_proto::runtime::v1::PodSandboxStatsRequest {
                pod_sandbox_id: pod.clone(),
            })
            .await
            .expect_err("stopped pod");
        assert_eq!(e.code(), tonic::Code::Unavailable, "{e:?}");
        let e = rt
            .pod_sandbox_stats(keelson_proto::runtime::v1::PodSandboxStatsRequest {
                pod_sandbox_id: "0123456789abcdef".into(),
            })
            .await
            .expect_err("unknown pod");
        assert_eq!(e.code(), tonic::Code::NotFound, "{e:?}");
    });
    ctl.ok(&["rmp", &pod]);
}
