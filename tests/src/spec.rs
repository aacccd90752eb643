//! The OCI runtime config that `runc spec` (runc 1.1) writes, built in code.

use serde_json::{Value, json};

/// The capabilities `runc spec` grants.
pub const DEFAULT_CAPS: [&str; 3] = ["CAP_AUDIT_WRITE", "CAP_KILL", "CAP_NET_BIND_SERVICE"];

/// The masked paths of `runc spec`.
pub const DEFAULT_MASKED_PATHS: [&str; 10] = [
    "/proc/acpi",
    "/proc/asound",
    "/proc/kcore",
    "/proc/keys",
    "/proc/latency_stats",
    "/proc/timer_list",
    "/proc/timer_stats",
    "/proc/sched_debug",
    "/sys/firmware",
    "/proc/scsi",
];

/// The read-only paths of `runc spec`.
pub const DEFAULT_READONLY_PATHS: [&str; 5] = [
    "/proc/bus",
    "/proc/fs",
    "/proc/irq",
    "/proc/sys",
    "/proc/sysrq-trigger",
];

/// Exactly what `runc spec` writes to `config.json` (runc 1.1.5), including
/// `process.terminal = true`.
pub fn runc_default() -> Value {
    let caps = json!(DEFAULT_CAPS);
    json!({
        "ociVersion": "1.0.2-dev",
        "process": {
            "terminal": true,
            "user": { "uid": 0, "gid": 0 },
            "args": ["sh"],
            "env": [
                "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
                "TERM=xterm"
            ],
            "cwd": "/",
            "capabilities": {
                "bounding": caps,
                "effective": caps,
                "permitted": caps,
                "ambient": caps
            },
            "rlimits": [
                { "type": "RLIMIT_NOFILE", "hard": 1024, "soft": 1024 }
            ],
            "noNewPrivileges": true
        },
        "root": { "path": "rootfs", "readonly": true },
        "hostname": "runc",
        "mounts": [
            { "destination": "/proc", "type": "proc", "source": "proc" },
            {
                "destination": "/dev",
                "type": "tmpfs",
                "source": "tmpfs",
                "options": ["nosuid", "strictatime", "mode=755", "size=65536k"]
            },
            {
                "destination": "/dev/pts",
                "type": "devpts",
                "source": "devpts",
                "options": ["nosuid", "noexec", "newinstance", "ptmxmode=0666", "mode=0620", "gid=5"]
            },
            {
                "destination": "/dev/shm",
                "type": "tmpfs",
                "source": "shm",
                "options": ["nosuid", "noexec", "nodev", "mode=1777", "size=65536k"]
            },
            {
                "destination": "/dev/mqueue",
                "type": "mqueue",
                "source": "mqueue",
                "options": ["nosuid", "noexec", "nodev"]
            },
            {
                "destination": "/sys",
                "type": "sysfs",
                "source": "sysfs",
                "options": ["nosuid", "noexec", "nodev", "ro"]
            },
            {
                "destination": "/sys/fs/cgroup",
                "type": "cgroup",
                "source": "cgroup",
                "options": ["nosuid", "noexec", "nodev", "relatime", "ro"]
            }
        ],
        "linux": {
            "resources": {
                "devices": [ { "allow": false, "access": "rwm" } ]
            },
            "namespaces": [
                { "type": "pid" },
                { "type": "network" },
                { "type": "ipc" },
                { "type": "uts" },
                { "type": "mount" }
            ],
            "maskedPaths": DEFAULT_MASKED_PATHS,
            "readonlyPaths": DEFAULT_READONLY_PATHS
        }
    })
}

/// [`runc_default`] with `process.terminal = false`, so a container runs without a console.
pub fn busybox_default() -> Value {
    let mut spec = runc_default();
    if let Some(process) = spec.get_mut("process").and_then(Value::as_object_mut) {
        process.insert("terminal".into(), Value::Bool(false));
    }
    spec
}

/// `config["linux"]`, created as an empty object when missing or not an object.
pub fn linux_mut(config: &mut Value) -> &mut serde_json::Map<String, Value> {
    object_at(config, &["linux"])
}

/// The object at `path` below `config`, creating (or replacing non-objects with) empty objects
/// on the way.
pub fn object_at<'a>(
    config: &'a mut Value,
    path: &[&str],
) -> &'a mut serde_json::Map<String, Value> {
    let mut node = config;
    for key in path {
        if !node.is_object() {
            *node = Value::Object(serde_json::Map::new());
        }
        let map = match node {
            Value::Object(map) => map,
            _ => unreachable!("made an object above"),
        };
        node = map
            .entry((*key).to_string())
            .or_insert_with(|| Value::Object(serde_json::Map::new()));
    }
    if !node.is_object() {
        *node = Value::Object(serde_json::Map::new());
    }
    match node {
        Value::Object(map) => map,
        _ => unreachable!("made an object above"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn busybox_default_has_no_terminal() {
        let spec = busybox_default();
        assert_eq!(spec["process"]["terminal"], json!(false));
        assert_eq!(spec["root"]["readonly"], json!(true));
        assert_eq!(
            spec["linux"]["namespaces"].as_array().map(Vec::len),
            Some(5)
        );
    }

    #[test]
    fn object_at_creates_parents() {
        let mut spec = json!({"linux": 3});
        object_at(&mut spec, &["linux", "resources", "memory"]).insert("limit".into(), json!(1));
        assert_eq!(spec["linux"]["resources"]["memory"]["limit"], json!(1));
    }
}
