//! Calling CNI plugins the way libcni (containernetworking/cni) does, for keelsond's pod
//! networking.
//!
//! This is synchronous library code: plugins are processes, and every call blocks until they
//! finish (or are killed at the timeout). keelsond calls it from `tokio::task::spawn_blocking`.
//! As the spec requires of a runtime, keelsond must not run two operations for the same sandbox
//! at once; operations for different sandboxes may run in parallel (plugins lock what they
//! share).
//!
//! # Behaviour
//!
//! **Config discovery** ([`Cni::load`], [`Cni::status`]). The conf dir (default
//! `/etc/cni/net.d`) is listed for `*.conflist`, `*.conf` and `*.json`, sorted by file name; the
//! first file that is valid wins (containerd's convention: the first network in name order is the
//! default network). A `.conf`/`.json` holds a single plugin config and is wrapped into a one-plugin
//! list `{"cniVersion", "name", "plugins": [<it>]}` (libcni's `ConfListFromConf`); a `.conflist` is a
//! list. A file is valid when it is a JSON object with a `name` following the spec's rule
//! (`^[a-zA-Z0-9][a-zA-Z0-9_.-]*$`), a `cniVersion` among [`SUPPORTED_VERSIONS`] (a CNI 1.1
//! `cniVersions` list picks the highest supported one), a non-empty `plugins` list whose entries
//! each have a `type` naming a file, `capabilities` (if any) mapping names to booleans, and every
//! plugin binary present (a regular, executable file) in one of the bin dirs (default
//! `/opt/cni/bin`). Invalid files are skipped (listed in [`Loaded::skipped`] for the daemon to
//! report, and logged at debug level); when none is valid, the [`LoadError`] names the dir and every file with
//! its problem, and its `Display` is the one-line reason for the CRI's
//! `NetworkReady=false`. A missing or empty dir gives `no network config found in <dir>`.
//! Unlike upstream, delegated IPAM binaries are not checked at load, and plugins are not asked
//! for their supported versions (`VERSION`) at load: the error comes at ADD.
//!
//! **Plugin invocation.** A plugin runs with the daemon's environment plus `CNI_COMMAND`,
//! `CNI_CONTAINERID`, `CNI_NETNS`, `CNI_ARGS`, `CNI_IFNAME` and `CNI_PATH` (the bin dirs joined by
//! `:`), in its own process group; its stdin is the plugin's config from the list with the list's
//! `name` and `cniVersion` injected, `prevResult` (see below) and `runtimeConfig`. `runtimeConfig`
//! holds exactly the capability args (e.g. `portMappings`, `bandwidth`, `ipRanges`, `dns`) whose
//! name the plugin declares as `true` in its `capabilities`, and is added only when that set is
//! non-empty (libcni; `capabilities` itself is passed through, as libcni does). Stdout is the
//! result; stderr is captured (logged at debug level, and quoted in errors). Each invocation is
//! bounded by [`CniOptions::plugin_timeout`] (default 60 s): at the deadline the plugin's
//! process group is SIGKILLed and the call fails with a timeout. An exec that fails with
//! ETXTBSY is retried up to 5 times, one second apart (libcni). A non-zero exit is an error
//! carrying the CNI error object the plugin printed (`code`, `msg`, `details`), or its exit
//! status, stdout and stderr when it printed none.
//!
//! **ADD** ([`Network::add`]): the plugins run in list order; every plugin after the first gets
//! the previous plugin's result as `prevResult`. The final result is parsed (a result without
//! `cniVersion` is taken to be of the config's version, like libcni) and cached at
//! `<cacheDir>/results/<network>-<containerID>-<ifname>` (default cacheDir `/var/lib/cni`) in
//! libcni's `cniCacheV1` format (see [`cache`]). When a plugin fails, its result is not a valid CNI
//! result, or the cache cannot be written, DEL runs for every plugin of the list in reverse
//! (best effort, without `prevResult`), the cache entry is removed, and the error returned names
//! the network, the plugin and its CNI error code ([`CniError::code`]), plus the DEL's error if
//! that failed too. This roll-back is keelsond's (the CNI spec asks the runtime to DEL after a
//! failed ADD; libcni leaves it to its caller).
//!
//! **DEL** ([`Network::del`]): the plugins run in reverse order. When the attachment has a cache
//! entry, DEL uses what ADD used: the cached conflist (if it still parses and has this network's
//! name, as CRI-O does), the cached CNI_ARGS and capability args, and for cniVersion >= 0.4.0 the
//! cached result, converted to the list's version, as `prevResult`. Then the cache entry is
//! removed. Without a cache entry (never added, or deleted already) the plugins run without
//! `prevResult` and succeed for what is not there, so DEL is idempotent. `CNI_NETNS` is passed as
//! given: it may be empty or name a netns that no longer exists (the spec asks plugins to release
//! what they can then). A plugin error stops the DEL and keeps the cache entry for a retry.
//!
//! **CHECK** ([`Network::check`]): only for cniVersion >= 0.4.0 ([`CniError::CheckNotSupported`]
//! otherwise); a list with `disableCheck` succeeds at once; the plugins run in order with the
//! cached result as `prevResult` and the ADD's parameters; no cached result is
//! [`CniError::NotAdded`].
//!
//! **STATUS / GC** (CNI 1.1): [`Network::status`] runs every plugin's STATUS when the
//! cniVersion is 1.1.0 (older lists are always ready). [`Network::gc`] DELs every cached
//! attachment of the network that is not in the valid set, then for 1.1.0 runs every plugin's GC
//! with `cni.dev/valid-attachments`; `disableGC` turns it off.
//!
//! **Results** ([`CniResult`]): both the 0.3.x/0.4.0 shape (each IP has `version`) and the 1.x
//! shape are read; interfaces, IPs (with their interface index), routes and DNS are typed.
//! [`CniResult::pod_ips`] gives what the CRI reports as `PodSandboxStatus.network.ip` and
//! `additional_ips`: the addresses on the sandbox interface `ifname`, with the first IPv4
//! address as the primary by default (containerd's `ip_pref`, see [`IpPreference`]).
//!
//! **Loopback.** containerd sets up a `cni-loopback` network (plugin `loopback`, ifname `lo`)
//! before the pod network; [`Cni::loopback`] gives that network.
//!
//! Not done: CNI 1.2 config drop-ins (`<confdir>/<network>/*.conf`, `loadOnlyInlinedPlugins`),
//! plugin `VERSION` probing, results older than 0.3.0, watching the conf dir (keelsond calls
//! [`Cni::load`] when it needs the network).

pub mod attachment;
pub mod cache;
pub mod config;
pub mod error;
mod exec;
pub mod network;
pub mod result;

#[cfg(test)]
mod tests;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

pub use attachment::{Attachment, Bandwidth, DnsCapability, PodRef, PortMapping, capability};
pub use cache::CachedAttachment;
pub use config::{NetworkConfigList, PluginConfig, SUPPORTED_VERSIONS};
pub use error::{
    CniError, Command, ConfigProblem, ErrorReply, LoadError, PluginError, RejectedFile,
};
pub use network::{GcAttachment, Network};
pub use result::{CniResult, Dns, Interface, IpConfig, IpPreference, PodIps, Route};

/// Default conf dir.
pub const DEFAULT_CONF_DIR: &str = "/etc/cni/net.d";
/// Default plugin bin dir.
pub const DEFAULT_BIN_DIR: &str = "/opt/cni/bin";
/// Default cache dir (libcni's).
pub const DEFAULT_CACHE_DIR: &str = "/var/lib/cni";
/// Default bound of one plugin invocation.
pub const DEFAULT_PLUGIN_TIMEOUT: Duration = Duration::from_secs(60);
/// The name of the loopback network containerd sets up.
pub const LOOPBACK_NETWORK: &str = "cni-loopback";

/// Where the CNI caller finds configs and plugins, where it caches results, and how long a
/// plugin may run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CniOptions {
    pub conf_dir: PathBuf,
    /// Searched in order for plugin binaries; passed to plugins as `CNI_PATH`.
    pub bin_dirs: Vec<PathBuf>,
    pub cache_dir: PathBuf,
    pub plugin_timeout: Duration,
}

impl Default for CniOptions {
    fn default() -> Self {
        CniOptions {
            conf_dir: PathBuf::from(DEFAULT_CONF_DIR),
            bin_dirs: vec![PathBuf::from(DEFAULT_BIN_DIR)],
            cache_dir: PathBuf::from(DEFAULT_CACHE_DIR),
            plugin_timeout: DEFAULT_PLUGIN_TIMEOUT,
        }
    }
}

/// The network config discovery chose, and the files it skipped on the way.
#[derive(Debug, Clone)]
pub struct Loaded {
    pub network: Network,
    pub skipped: Vec<RejectedFile>,
}

/// The CNI caller: loads networks from the conf dir and builds them from bytes.
#[derive(Debug, Clone)]
pub struct Cni {
    opts: Arc<CniOptions>,
}

impl Cni {
    pub fn new(opts: CniOptions) -> Self {
        Cni {
            opts: Arc::new(opts),
        }
    }

    pub fn options(&self) -> &CniOptions {
        &self.opts
    }

    /// Discovers the default network of the conf dir (see the module docs).
    pub fn load(&self) -> Result<Loaded, LoadError> {
        let (list, path, skipped) = config::discover(&self.opts.conf_dir, &self.opts.bin_dirs)?;
        tracing::debug!(network = %list.name, file = %path.display(), "CNI network loaded");
        Ok(Loaded {
            network: Network::new(list, Some(path), self.opts.clone()),
            skipped,
        })
    }

    /// `Ok` when the conf dir holds a usable network; otherwise the reason, for the CRI's
    /// `NetworkReady` condition. (Plugins' own CNI 1.1 STATUS is [`Network::status`].)
    pub fn status(&self) -> Result<(), LoadError> {
        self.load().map(|_| ())
    }

    /// A network from conflist bytes, validated like a discovered file (binaries included).
    pub fn network_from_conflist(&self, bytes: &[u8]) -> Result<Network, ConfigProblem> {
        let list = NetworkConfigList::from_conflist_bytes(bytes)?;
        list.check_binaries(&self.opts.bin_dirs)?;
        Ok(Network::new(list, None, self.opts.clone()))
    }

    /// containerd's loopback network: `cni-loopback` with the single plugin `loopback`; attach
    /// it with ifname `lo`.
    pub fn loopback(&self) -> Result<Network, ConfigProblem> {
        let conf = format!(
            r#"{{"cniVersion":"1.0.0","name":"{LOOPBACK_NETWORK}","plugins":[{{"type":"loopback"}}]}}"#
        );
        self.network_from_conflist(conf.as_bytes())
    }

    /// Every cached attachment (optionally of one container), as libcni's
    /// `GetCachedAttachments`: what keelsond can DEL after a restart.
    pub fn cached_attachments(&self, container_id: Option<&str>) -> Vec<CachedAttachment> {
        cache::list(&self.opts.cache_dir, container_id)
    }
}
