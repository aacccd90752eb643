//! Running a shell script inside a bundle and reading what it printed.

use std::io;

use serde_json::Value;

use crate::{Bundle, CgroupScope, CmdOutput, Runtime, spec, unique};

/// Runs `sh -c <script>` in `bundle` with `runtime run` (foreground) and returns its stdout,
/// stderr and exit code.
///
/// Sets `process.args` and saves the config. If the config names no `linux.cgroupsPath`, the
/// container is put into a fresh [`CgroupScope`] for the run (and the config is restored
/// afterwards), so nothing is left in the machine's cgroups whatever the runtime does. The
/// container is force-deleted afterwards.
pub fn probe(runtime: &Runtime, bundle: &mut Bundle, script: &str) -> io::Result<CmdOutput> {
    probe_as(runtime, bundle, &unique::container_id("probe"), script)
}

/// [`probe`] with a chosen container id.
pub fn probe_as(
    runtime: &Runtime,
    bundle: &mut Bundle,
    id: &str,
    script: &str,
) -> io::Result<CmdOutput> {
    bundle.set_args(&["sh", "-c", script]);
    let has_cgroups_path = bundle.config()["linux"]["cgroupsPath"].is_string();
    let scope = if has_cgroups_path {
        None
    } else {
        let scope = CgroupScope::new("probe")?;
        bundle.set_cgroups_path(scope.cgroups_path());
        Some(scope)
    };
    let result = bundle.save().and_then(|()| {
        let _guard = runtime.guard(id);
        runtime.run(bundle, id)
    });
    if scope.is_some() {
        spec::linux_mut(bundle.config_mut()).remove("cgroupsPath");
        bundle.save()?;
    }
    drop(scope);
    result
}

/// The lines of `key=value` output as pairs, for scripts that print one fact per line.
pub fn key_values(stdout: &str) -> Vec<(String, String)> {
    stdout
        .lines()
        .filter_map(|l| l.split_once('='))
        .map(|(k, v)| (k.trim().to_string(), v.trim().to_string()))
        .collect()
}

/// The value printed for `key` by a `key=value` script.
pub fn value_of(stdout: &str, key: &str) -> Option<String> {
    key_values(stdout)
        .into_iter()
        .find(|(k, _)| k == key)
        .map(|(_, v)| v)
}

/// Sets `process.<key>` to `value` in a config (not saved).
pub fn set_process_field(config: &mut Value, key: &str, value: Value) {
    spec::object_at(config, &["process"]).insert(key.to_string(), value);
}
