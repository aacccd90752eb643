//! A loaded network and the CNI operations on it: ADD (with DEL of the whole list when a plugin
//! fails), DEL, CHECK, STATUS and GC.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde_json::{Map, Value};

use super::CniOptions;
use super::attachment::Attachment;
use super::cache::{self, CACHE_KIND, CachedAttachment};
use super::config::{NetworkConfigList, PluginConfig, version_at_least};
use super::error::{CniError, Command, PluginError};
use super::exec::{CniEnv, exec_plugin, find_in_path, join_path};
use super::result::CniResult;

/// A validated network configuration list, ready to run, with the bin dirs, cache dir and
/// plugin timeout it runs with.
#[derive(Debug, Clone)]
pub struct Network {
    list: NetworkConfigList,
    source: Option<PathBuf>,
    opts: Arc<CniOptions>,
}

/// An attachment GC must keep (`{"containerID", "ifname"}` in `cni.dev/valid-attachments`).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct GcAttachment {
    #[serde(rename = "containerID")]
    pub container_id: String,
    #[serde(rename = "ifname")]
    pub ifname: String,
}

/// What DEL/CHECK run with: the ADD's cached parameters where the cache has them.
struct Recalled {
    list: NetworkConfigList,
    args: String,
    capability_args: Map<String, Value>,
    prev_result: Option<Value>,
    found: bool,
}

impl Network {
    pub(crate) fn new(
        list: NetworkConfigList,
        source: Option<PathBuf>,
        opts: Arc<CniOptions>,
    ) -> Self {
        Network { list, source, opts }
    }

    /// The network name (`name` of the conflist).
    pub fn name(&self) -> &str {
        &self.list.name
    }

    /// The CNI version the plugins are called with.
    pub fn cni_version(&self) -> &str {
        &self.list.cni_version
    }

    /// The file the network was loaded from, if any.
    pub fn source(&self) -> Option<&Path> {
        self.source.as_deref()
    }

    /// The parsed conflist.
    pub fn config(&self) -> &NetworkConfigList {
        &self.list
    }

    /// The plugin types, in ADD order.
    pub fn plugin_types(&self) -> Vec<&str> {
        self.list
            .plugins
            .iter()
            .map(|p| p.plugin_type.as_str())
            .collect()
    }

    /// The capabilities some plugin declares (e.g. `portMappings`).
    pub fn capabilities(&self) -> Vec<String> {
        self.list.capabilities()
    }

    /// The cache file of an attachment of this network.
    pub fn cache_path(&self, att: &Attachment) -> PathBuf {
        cache::cache_path(
            &self.opts.cache_dir,
            &self.list.name,
            &att.container_id,
            &att.ifname,
        )
    }

    /// The cached ADD of an attachment, if any.
    pub fn cached(&self, att: &Attachment) -> Result<Option<CachedAttachment>, CniError> {
        att.validate()?;
        let path = self.cache_path(att);
        cache::read(&path).map_err(|reason| CniError::Cache {
            network: self.list.name.clone(),
            path,
            reason,
            rollback: None,
        })
    }

    /// ADD: runs the plugins in order, each with the previous one's result as `prevResult`,
    /// caches the final result and returns it. If a plugin fails (or its result is unusable, or
    /// the cache cannot be written), DEL runs for the whole list in reverse and the first error
    /// is returned (with the DEL's error, if that failed too).
    pub fn add(&self, att: &Attachment) -> Result<CniResult, CniError> {
        att.validate()?;
        let span = tracing::info_span!("cni_add", network = %self.list.name, container_id = %att.container_id, ifname = %att.ifname);
        let _enter = span.enter();
        let args = att.args_string();
        let mut prev: Option<CniResult> = None;
        for plugin in &self.list.plugins {
            let stdout = match self.invoke(
                &self.list,
                plugin,
                Command::Add,
                att,
                &args,
                prev.as_ref().map(|r| &r.raw),
                &att.capability_args,
            ) {
                Ok(out) => out,
                Err(e) => return Err(self.undo_add(att, e)),
            };
            match CniResult::parse(&stdout, &self.list.cni_version) {
                Ok(r) => prev = Some(r),
                Err(reason) => {
                    let e = CniError::InvalidResult {
                        network: self.list.name.clone(),
                        plugin: plugin.plugin_type.clone(),
                        reason,
                        rollback: None,
                    };
                    return Err(self.undo_add(att, e));
                }
            }
        }
        let path = self.cache_path(att);
        let Some(result) = prev else {
            // Unreachable for a validated list (it has plugins); refuse rather than cache nothing.
            let e = CniError::InvalidResult {
                network: self.list.name.clone(),
                plugin: String::new(),
                reason: "the list ran no plugin".into(),
                rollback: None,
            };
            return Err(self.undo_add(att, e));
        };
        let entry = CachedAttachment {
            kind: CACHE_KIND.into(),
            container_id: att.container_id.clone(),
            config: self.list.bytes.clone(),
            ifname: att.ifname.clone(),
            network_name: self.list.name.clone(),
            netns: att.netns.clone(),
            cni_args: att
                .args
                .iter()
                .map(|(k, v)| [k.clone(), v.clone()])
                .collect(),
            capability_args: att.capability_args.clone(),
            result: Some(result.raw.clone()),
        };
        if let Err(e) = cache::write(&path, &entry) {
            let e = CniError::Cache {
                network: self.list.name.clone(),
                path,
                reason: e.to_string(),
                rollback: None,
            };
            return Err(self.undo_add(att, e));
        }
        tracing::info!(ips = ?result.sandbox_ips(&att.ifname), "CNI ADD done");
        Ok(result)
    }

    /// The DEL after a failed ADD: every plugin in reverse, best effort, no prevResult.
    fn undo_add(&self, att: &Attachment, error: CniError) -> CniError {
        tracing::warn!(%error, "CNI ADD failed; running DEL for the whole list");
        let args = att.args_string();
        let mut failed = None;
        for plugin in self.list.plugins.iter().rev() {
            if let Err(e) = self.invoke(
                &self.list,
                plugin,
                Command::Del,
                att,
                &args,
                None,
                &att.capability_args,
            ) {
                tracing::error!(error = %e, "DEL after failed ADD failed");
                failed.get_or_insert(e);
            }
        }
        let _ = cache::remove(&self.cache_path(att));
        error.with_rollback(failed)
    }

    /// DEL: runs the plugins in reverse order with `prevResult` = the cached ADD result (for
    /// cniVersion >= 0.4.0), then removes the cache entry. With a cache entry, the cached
    /// conflist (if it still parses and names this network), CNI_ARGS and capability args are
    /// used, so DEL undoes exactly what ADD did. Without one (never added, or already deleted)
    /// the plugins run without `prevResult`; they succeed for what is not there, which makes DEL
    /// idempotent. `att.netns` may be empty or name a netns that is gone; it is passed as given.
    pub fn del(&self, att: &Attachment) -> Result<(), CniError> {
        att.validate()?;
        let span = tracing::info_span!("cni_del", network = %self.list.name, container_id = %att.container_id, ifname = %att.ifname);
        let _enter = span.enter();
        let path = self.cache_path(att);
        let recalled = self.recall(att, &path, true);
        for plugin in recalled.list.plugins.iter().rev() {
            self.invoke(
                &recalled.list,
                plugin,
                Command::Del,
                att,
                &recalled.args,
                recalled.prev_result.as_ref(),
                &recalled.capability_args,
            )?;
        }
        cache::remove(&path).map_err(|e| CniError::Cache {
            network: self.list.name.clone(),
            path,
            reason: e.to_string(),
            rollback: None,
        })?;
        tracing::info!(cached = recalled.found, "CNI DEL done");
        Ok(())
    }

    /// CHECK (cniVersion >= 0.4.0): runs the plugins in order with the cached ADD result as
    /// `prevResult` and the ADD's parameters. Succeeds at once when the list sets
    /// `disableCheck`; fails with [`CniError::NotAdded`] without a cached result.
    pub fn check(&self, att: &Attachment) -> Result<(), CniError> {
        att.validate()?;
        if !version_at_least(&self.list.cni_version, "0.4.0") {
            return Err(CniError::CheckNotSupported {
                network: self.list.name.clone(),
                version: self.list.cni_version.clone(),
            });
        }
        if self.list.disable_check {
            return Ok(());
        }
        let path = self.cache_path(att);
        // CHECK runs the current config (libcni), with the ADD's parameters.
        let recalled = self.recall(att, &path, false);
        if recalled.prev_result.is_none() {
            return Err(CniError::NotAdded {
                network: self.list.name.clone(),
                container_id: att.container_id.clone(),
                ifname: att.ifname.clone(),
            });
        }
        for plugin in &recalled.list.plugins {
            self.invoke(
                &recalled.list,
                plugin,
                Command::Check,
                att,
                &recalled.args,
                recalled.prev_result.as_ref(),
                &recalled.capability_args,
            )?;
        }
        Ok(())
    }

    /// STATUS (CNI 1.1): asks every plugin whether it is ready for ADDs. A list of an older
    /// cniVersion is always ready (as in libcni).
    pub fn status(&self) -> Result<(), CniError> {
        if !version_at_least(&self.list.cni_version, "1.1.0") {
            return Ok(());
        }
        let none = Attachment::default();
        for plugin in &self.list.plugins {
            self.invoke(
                &self.list,
                plugin,
                Command::Status,
                &none,
                "",
                None,
                &Map::new(),
            )?;
        }
        Ok(())
    }

    /// GC: DELs every cached attachment of this network that is not in `valid` (with its cached
    /// parameters), then, for cniVersion >= 1.1.0, runs every plugin's GC with
    /// `cni.dev/valid-attachments`. Nothing happens when the list sets `disableGC`.
    pub fn gc(&self, valid: &[GcAttachment]) -> Result<(), CniError> {
        if self.list.disable_gc {
            return Ok(());
        }
        let mut errors = Vec::new();
        for stale in cache::list(&self.opts.cache_dir, None) {
            if stale.network_name != self.list.name
                || valid
                    .iter()
                    .any(|v| v.container_id == stale.container_id && v.ifname == stale.ifname)
            {
                continue;
            }
            let att = Attachment {
                container_id: stale.container_id.clone(),
                netns: stale.netns.clone(),
                ifname: stale.ifname.clone(),
                args: stale
                    .cni_args
                    .iter()
                    .map(|[k, v]| (k.clone(), v.clone()))
                    .collect(),
                capability_args: stale.capability_args.clone(),
            };
            tracing::info!(container_id = %att.container_id, ifname = %att.ifname, "CNI GC: deleting stale attachment");
            if let Err(e) = self.del(&att) {
                errors.push(e);
            }
        }
        if version_at_least(&self.list.cni_version, "1.1.0") {
            let valid_json = serde_json::to_value(valid).unwrap_or(Value::Array(Vec::new()));
            let none = Attachment::default();
            for plugin in &self.list.plugins {
                let mut plugin = plugin.clone();
                plugin
                    .raw
                    .insert("cni.dev/valid-attachments".into(), valid_json.clone());
                if let Err(e) = self.invoke(
                    &self.list,
                    &plugin,
                    Command::Gc,
                    &none,
                    "",
                    None,
                    &Map::new(),
                ) {
                    errors.push(e);
                }
            }
        }
        if errors.is_empty() {
            Ok(())
        } else {
            Err(CniError::Gc {
                network: self.list.name.clone(),
                errors,
            })
        }
    }

    /// The parameters of the ADD an attachment's cache entry recorded (or the given ones), with
    /// the cached conflist instead of the current one if `cached_config` (and it is usable), and
    /// the cached result in the version of the conflist chosen.
    fn recall(&self, att: &Attachment, path: &Path, cached_config: bool) -> Recalled {
        let entry = match cache::read(path) {
            Ok(e) => e,
            Err(reason) => {
                tracing::warn!(path = %path.display(), %reason, "ignoring unusable CNI cache entry");
                None
            }
        };
        let Some(entry) = entry else {
            return Recalled {
                list: self.list.clone(),
                args: att.args_string(),
                capability_args: att.capability_args.clone(),
                prev_result: None,
                found: false,
            };
        };
        let list = NetworkConfigList::from_conflist_bytes(&entry.config)
            .ok()
            .filter(|l| cached_config && l.name == self.list.name)
            .unwrap_or_else(|| self.list.clone());
        let args = if entry.cni_args.is_empty() {
            att.args_string()
        } else {
            entry
                .cni_args
                .iter()
                .map(|[k, v]| format!("{k}={v}"))
                .collect::<Vec<_>>()
                .join(";")
        };
        let capability_args = if entry.capability_args.is_empty() {
            att.capability_args.clone()
        } else {
            entry.capability_args.clone()
        };
        // prevResult on DEL/CHECK exists since 0.4.0; it is given in the list's version.
        let prev_result = if version_at_least(&list.cni_version, "0.4.0") {
            entry
                .result
                .and_then(|r| match CniResult::from_value(r) {
                    Ok(r) => Some(r),
                    Err(reason) => {
                        tracing::warn!(%reason, "ignoring unusable cached CNI result");
                        None
                    }
                })
                .map(|r| r.to_version(&list.cni_version))
        } else {
            None
        };
        Recalled {
            list,
            args,
            capability_args,
            prev_result,
            found: true,
        }
    }

    /// Runs one plugin: finds its binary, builds its stdin, executes it with the CNI_*
    /// environment.
    #[allow(clippy::too_many_arguments)]
    fn invoke(
        &self,
        list: &NetworkConfigList,
        plugin: &PluginConfig,
        command: Command,
        att: &Attachment,
        args: &str,
        prev_result: Option<&Value>,
        capability_args: &Map<String, Value>,
    ) -> Result<Vec<u8>, CniError> {
        let fail = |error: PluginError| CniError::Plugin {
            network: list.name.clone(),
            plugin: plugin.plugin_type.clone(),
            command,
            error: Box::new(error),
            rollback: None,
        };
        let path_env = join_path(&self.opts.bin_dirs);
        let Some(binary) = find_in_path(&plugin.plugin_type, &self.opts.bin_dirs) else {
            return Err(fail(PluginError::NotFound {
                plugin: plugin.plugin_type.clone(),
                path: path_env,
            }));
        };
        let stdin = plugin_stdin(list, plugin, prev_result, capability_args);
        let env = CniEnv {
            command: command.as_env(),
            container_id: att.container_id.clone(),
            netns: att.netns.clone(),
            ifname: att.ifname.clone(),
            args: args.to_string(),
            path: path_env,
        };
        tracing::debug!(plugin = %plugin.plugin_type, command = command.as_env(), "running CNI plugin");
        exec_plugin(&binary, &stdin, &env, self.opts.plugin_timeout).map_err(fail)
    }
}

/// The JSON a plugin reads: its config with the list's `name` and `cniVersion`, `prevResult`
/// when there is one, and `runtimeConfig` holding the capability args of the capabilities the
/// plugin declares (only when there is at least one), as libcni builds it.
pub(crate) fn plugin_stdin(
    list: &NetworkConfigList,
    plugin: &PluginConfig,
    prev_result: Option<&Value>,
    capability_args: &Map<String, Value>,
) -> Vec<u8> {
    let mut conf = plugin.raw.clone();
    conf.insert("name".into(), Value::String(list.name.clone()));
    conf.insert("cniVersion".into(), Value::String(list.cni_version.clone()));
    if let Some(prev) = prev_result {
        conf.insert("prevResult".into(), prev.clone());
    }
    let runtime_config: Map<String, Value> = plugin
        .capabilities
        .iter()
        .filter(|(_, on)| **on)
        .filter_map(|(cap, _)| capability_args.get(cap).map(|v| (cap.clone(), v.clone())))
        .collect();
    if !runtime_config.is_empty() {
        conf.insert("runtimeConfig".into(), Value::Object(runtime_config));
    }
    // Serializing a map of JSON values cannot fail.
    serde_json::to_vec(&Value::Object(conf)).unwrap_or_default()
}

#[cfg(test)]
mod unit {
    use super::*;

    #[test]
    fn stdin_injects_name_version_prev_result_and_declared_capabilities_only() {
        let list = NetworkConfigList::from_conflist_bytes(
            br#"{"cniVersion":"1.0.0","name":"net","plugins":[
                {"type":"a","name":"ignored","cniVersion":"0.3.1","keep":1},
                {"type":"b","capabilities":{"portMappings":true,"bandwidth":false}}]}"#,
        )
        .unwrap();
        let mut caps = Map::new();
        caps.insert("portMappings".into(), serde_json::json!([{"hostPort": 1}]));
        caps.insert("bandwidth".into(), serde_json::json!({"ingressRate": 1}));
        let a: Value =
            serde_json::from_slice(&plugin_stdin(&list, &list.plugins[0], None, &caps)).unwrap();
        assert_eq!(a["name"], "net");
        assert_eq!(a["cniVersion"], "1.0.0");
        assert_eq!(a["keep"], 1);
        assert!(a.get("runtimeConfig").is_none());
        assert!(a.get("prevResult").is_none());
        let prev = serde_json::json!({"cniVersion": "1.0.0", "ips": []});
        let b: Value =
            serde_json::from_slice(&plugin_stdin(&list, &list.plugins[1], Some(&prev), &caps))
                .unwrap();
        assert_eq!(b["prevResult"], prev);
        assert_eq!(
            b["runtimeConfig"],
            serde_json::json!({"portMappings": [{"hostPort": 1}]})
        );
    }
}
