//! Network configuration: parsing and validating conflists and single-plugin `.conf` files, and
//! discovering the network of a conf dir (first valid file in name order wins).

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};

use serde_json::{Map, Value};

use super::error::{ConfigProblem, LoadError, RejectedFile};
use super::exec::find_in_path;

/// The CNI spec versions this caller speaks. A config naming another version is rejected.
pub const SUPPORTED_VERSIONS: &[&str] = &["0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0"];

/// File extensions config discovery reads, as libcni/containerd do.
pub const CONF_EXTENSIONS: &[&str] = &["conflist", "conf", "json"];

/// A parsed and validated network configuration list.
#[derive(Debug, Clone)]
pub struct NetworkConfigList {
    pub name: String,
    pub cni_version: String,
    pub disable_check: bool,
    pub disable_gc: bool,
    pub plugins: Vec<PluginConfig>,
    /// The conflist bytes: the file as read, or the list a `.conf` was wrapped into. These are
    /// the bytes the result cache stores (base64) under `config`.
    pub bytes: Vec<u8>,
}

/// One plugin of a list: its type, the capabilities it declares, and its raw JSON object (passed
/// through to the plugin unchanged apart from the injected keys).
#[derive(Debug, Clone)]
pub struct PluginConfig {
    pub plugin_type: String,
    pub capabilities: BTreeMap<String, bool>,
    pub raw: Map<String, Value>,
}

/// `^[a-zA-Z0-9][a-zA-Z0-9_.\-]*$`: the spec's rule for network names and container ids.
pub(crate) fn valid_name(s: &str) -> bool {
    let mut chars = s.chars();
    match chars.next() {
        Some(c) if c.is_ascii_alphanumeric() => {}
        _ => return false,
    }
    chars.all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-'))
}

/// A `x.y.z` version as numbers, for ordering.
pub(crate) fn parse_version(v: &str) -> Option<(u32, u32, u32)> {
    let mut it = v.split('.');
    let major = it.next()?.parse().ok()?;
    let minor = it.next()?.parse().ok()?;
    let patch = it.next()?.parse().ok()?;
    if it.next().is_some() {
        return None;
    }
    Some((major, minor, patch))
}

/// `v >= min`, for supported versions (unparsable versions compare as lower).
pub(crate) fn version_at_least(v: &str, min: &str) -> bool {
    match (parse_version(v), parse_version(min)) {
        (Some(a), Some(b)) => a >= b,
        _ => false,
    }
}

fn supported(v: &str) -> bool {
    SUPPORTED_VERSIONS.contains(&v)
}

fn parse_object(bytes: &[u8]) -> Result<Map<String, Value>, ConfigProblem> {
    let value: Value =
        serde_json::from_slice(bytes).map_err(|e| ConfigProblem::Json(e.to_string()))?;
    match value {
        Value::Object(m) => Ok(m),
        _ => Err(ConfigProblem::NotObject),
    }
}

fn invalid(field: &str, reason: impl Into<String>) -> ConfigProblem {
    ConfigProblem::InvalidField {
        field: field.to_string(),
        reason: reason.into(),
    }
}

fn read_name(obj: &Map<String, Value>) -> Result<String, ConfigProblem> {
    match obj.get("name") {
        None => Err(ConfigProblem::MissingName),
        Some(Value::String(s)) if s.is_empty() => Err(ConfigProblem::MissingName),
        Some(Value::String(s)) if !valid_name(s) => Err(ConfigProblem::InvalidName(s.clone())),
        Some(Value::String(s)) => Ok(s.clone()),
        Some(_) => Err(invalid("name", "must be a string")),
    }
}

/// `cniVersion`, or with CNI 1.1's `cniVersions` the highest listed version this caller speaks.
fn read_version(obj: &Map<String, Value>) -> Result<String, ConfigProblem> {
    let single = match obj.get("cniVersion") {
        None => None,
        Some(Value::String(s)) if s.is_empty() => None,
        Some(Value::String(s)) => Some(s.clone()),
        Some(_) => return Err(invalid("cniVersion", "must be a string")),
    };
    let Some(list) = obj.get("cniVersions") else {
        let v = single.ok_or(ConfigProblem::MissingVersion)?;
        return if supported(&v) {
            Ok(v)
        } else {
            Err(ConfigProblem::UnsupportedVersion(v))
        };
    };
    let Value::Array(items) = list else {
        return Err(invalid("cniVersions", "must be a list of strings"));
    };
    let mut candidates = Vec::new();
    for item in items {
        let Value::String(v) = item else {
            return Err(invalid("cniVersions", "must be a list of strings"));
        };
        candidates.push(v.clone());
    }
    candidates.extend(single);
    let listed = candidates.join(", ");
    candidates
        .into_iter()
        .filter(|v| supported(v))
        .max_by_key(|v| parse_version(v))
        .ok_or(ConfigProblem::UnsupportedVersion(listed))
}

/// A boolean that libcni also accepts as the strings "true"/"false".
fn read_bool(obj: &Map<String, Value>, key: &str) -> Result<bool, ConfigProblem> {
    match obj.get(key) {
        None | Some(Value::Null) => Ok(false),
        Some(Value::Bool(b)) => Ok(*b),
        Some(Value::String(s)) => match s.to_ascii_lowercase().as_str() {
            "true" => Ok(true),
            "false" => Ok(false),
            _ => Err(invalid(key, format!("invalid value {s:?}"))),
        },
        Some(_) => Err(invalid(key, "must be a boolean")),
    }
}

fn parse_plugin(index: usize, value: &Value) -> Result<PluginConfig, ConfigProblem> {
    let Value::Object(raw) = value else {
        return Err(ConfigProblem::InvalidPlugin {
            index,
            reason: "not a JSON object".into(),
        });
    };
    let plugin_type = match raw.get("type") {
        None => return Err(ConfigProblem::MissingType { index }),
        Some(Value::String(s)) if s.is_empty() => {
            return Err(ConfigProblem::MissingType { index });
        }
        Some(Value::String(s)) => s.clone(),
        Some(_) => {
            return Err(ConfigProblem::InvalidPlugin {
                index,
                reason: "\"type\" must be a string".into(),
            });
        }
    };
    if plugin_type.contains('/') || plugin_type == "." || plugin_type == ".." {
        return Err(ConfigProblem::InvalidType { index, plugin_type });
    }
    let mut capabilities = BTreeMap::new();
    match raw.get("capabilities") {
        None | Some(Value::Null) => {}
        Some(Value::Object(caps)) => {
            for (k, v) in caps {
                let Value::Bool(b) = v else {
                    return Err(ConfigProblem::InvalidPlugin {
                        index,
                        reason: format!("capability {k:?} must be true or false"),
                    });
                };
                capabilities.insert(k.clone(), *b);
            }
        }
        Some(_) => {
            return Err(ConfigProblem::InvalidPlugin {
                index,
                reason: "\"capabilities\" must be an object".into(),
            });
        }
    }
    Ok(PluginConfig {
        plugin_type,
        capabilities,
        raw: raw.clone(),
    })
}

impl NetworkConfigList {
    /// Parses and validates a conflist (`{"name", "cniVersion", "plugins": [...]}`).
    pub fn from_conflist_bytes(bytes: &[u8]) -> Result<Self, ConfigProblem> {
        let obj = parse_object(bytes)?;
        let name = read_name(&obj)?;
        let cni_version = read_version(&obj)?;
        let disable_check = read_bool(&obj, "disableCheck")?;
        let disable_gc = read_bool(&obj, "disableGC")?;
        let plugins = match obj.get("plugins") {
            None | Some(Value::Null) => return Err(ConfigProblem::NoPlugins),
            Some(Value::Array(items)) if items.is_empty() => {
                return Err(ConfigProblem::NoPlugins);
            }
            Some(Value::Array(items)) => items
                .iter()
                .enumerate()
                .map(|(i, v)| parse_plugin(i, v))
                .collect::<Result<Vec<_>, _>>()?,
            Some(_) => return Err(invalid("plugins", "must be a list")),
        };
        Ok(NetworkConfigList {
            name,
            cni_version,
            disable_check,
            disable_gc,
            plugins,
            bytes: bytes.to_vec(),
        })
    }

    /// Parses a single-plugin config (`.conf`/`.json`) and wraps it into a one-plugin list
    /// `{"cniVersion", "name", "plugins": [<the config>]}`, as libcni's `ConfListFromConf` does.
    pub fn from_conf_bytes(bytes: &[u8]) -> Result<Self, ConfigProblem> {
        let obj = parse_object(bytes)?;
        match obj.get("type") {
            Some(Value::String(s)) if !s.is_empty() => {}
            _ => return Err(ConfigProblem::ConfMissingType),
        }
        let name = read_name(&obj)?;
        let version = match obj.get("cniVersion") {
            Some(Value::String(s)) => s.clone(),
            None => return Err(ConfigProblem::MissingVersion),
            Some(_) => return Err(invalid("cniVersion", "must be a string")),
        };
        let mut list = Map::new();
        list.insert("cniVersion".into(), Value::String(version));
        list.insert("name".into(), Value::String(name));
        list.insert("plugins".into(), Value::Array(vec![Value::Object(obj)]));
        let wrapped = serde_json::to_vec(&Value::Object(list))
            .map_err(|e| ConfigProblem::Json(e.to_string()))?;
        Self::from_conflist_bytes(&wrapped)
    }

    /// Parses a file by its extension: `.conflist` as a list, `.conf`/`.json` as one plugin.
    pub fn from_file(path: &Path) -> Result<Self, ConfigProblem> {
        let bytes = fs::read(path).map_err(|e| ConfigProblem::Read(e.to_string()))?;
        if path.extension().is_some_and(|e| e == "conflist") {
            Self::from_conflist_bytes(&bytes)
        } else {
            Self::from_conf_bytes(&bytes)
        }
    }

    /// Checks that every plugin's binary exists in one of `bin_dirs`.
    pub fn check_binaries(&self, bin_dirs: &[PathBuf]) -> Result<(), ConfigProblem> {
        for (index, plugin) in self.plugins.iter().enumerate() {
            if find_in_path(&plugin.plugin_type, bin_dirs).is_none() {
                return Err(ConfigProblem::MissingBinary {
                    index,
                    plugin_type: plugin.plugin_type.clone(),
                    path: super::exec::join_path(bin_dirs),
                });
            }
        }
        Ok(())
    }

    /// Every capability some plugin of the list declares as supported.
    pub fn capabilities(&self) -> Vec<String> {
        let mut caps: Vec<String> = self
            .plugins
            .iter()
            .flat_map(|p| p.capabilities.iter().filter(|(_, on)| **on))
            .map(|(k, _)| k.clone())
            .collect();
        caps.sort();
        caps.dedup();
        caps
    }
}

/// The config files of `dir` with a discovery extension, sorted by name. A missing dir has none.
pub fn conf_files(dir: &Path) -> Result<Vec<PathBuf>, LoadError> {
    let entries = match fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(source) => {
            return Err(LoadError::ReadDir {
                dir: dir.to_path_buf(),
                source,
            });
        }
    };
    let mut files = Vec::new();
    for entry in entries {
        let entry = entry.map_err(|source| LoadError::ReadDir {
            dir: dir.to_path_buf(),
            source,
        })?;
        let path = entry.path();
        // Directories are skipped (libcni lists plain entries; a symlink to a file counts).
        if path.is_dir() {
            continue;
        }
        let ext_ok = path
            .extension()
            .and_then(|e| e.to_str())
            .is_some_and(|e| CONF_EXTENSIONS.contains(&e));
        if ext_ok {
            files.push(path);
        }
    }
    files.sort();
    Ok(files)
}

/// The network of `dir`: the first file (in name order) that parses, validates and whose plugin
/// binaries exist in `bin_dirs`. Also returns the files skipped before it.
pub fn discover(
    dir: &Path,
    bin_dirs: &[PathBuf],
) -> Result<(NetworkConfigList, PathBuf, Vec<RejectedFile>), LoadError> {
    let files = conf_files(dir)?;
    if files.is_empty() {
        return Err(LoadError::NoConfig {
            dir: dir.to_path_buf(),
        });
    }
    let mut rejected = Vec::new();
    for path in files {
        let loaded = NetworkConfigList::from_file(&path)
            .and_then(|list| list.check_binaries(bin_dirs).map(|()| list));
        match loaded {
            Ok(list) => {
                for r in &rejected {
                    tracing::debug!(skipped = %r, "CNI config file skipped");
                }
                return Ok((list, path, rejected));
            }
            Err(problem) => rejected.push(RejectedFile { path, problem }),
        }
    }
    Err(LoadError::NoneValid {
        dir: dir.to_path_buf(),
        rejected,
    })
}

#[cfg(test)]
mod unit {
    use super::*;

    #[test]
    fn names_follow_the_spec_rule() {
        assert!(valid_name("k8s-pod.net_1"));
        assert!(valid_name("0abc"));
        assert!(!valid_name(""));
        assert!(!valid_name("-abc"));
        assert!(!valid_name("a/b"));
        assert!(!valid_name("a b"));
    }

    #[test]
    fn conflist_is_validated() {
        let ok = br#"{"cniVersion":"1.0.0","name":"n","disableCheck":"true","plugins":[{"type":"bridge","capabilities":{"portMappings":true,"mac":false}}]}"#;
        let list = NetworkConfigList::from_conflist_bytes(ok).unwrap();
        assert_eq!(list.name, "n");
        assert!(list.disable_check);
        assert_eq!(list.capabilities(), vec!["portMappings".to_string()]);
        assert_eq!(list.bytes, ok.to_vec());

        let cases: &[(&[u8], ConfigProblem)] = &[
            (b"{", ConfigProblem::Json(String::new())),
            (b"[]", ConfigProblem::NotObject),
            (
                br#"{"cniVersion":"1.0.0","plugins":[{"type":"x"}]}"#,
                ConfigProblem::MissingName,
            ),
            (
                br#"{"name":"n","plugins":[{"type":"x"}]}"#,
                ConfigProblem::MissingVersion,
            ),
            (
                br#"{"name":"n","cniVersion":"0.2.0","plugins":[{"type":"x"}]}"#,
                ConfigProblem::UnsupportedVersion("0.2.0".into()),
            ),
            (
                br#"{"name":"n","cniVersion":"1.0.0","plugins":[]}"#,
                ConfigProblem::NoPlugins,
            ),
            (
                br#"{"name":"n","cniVersion":"1.0.0"}"#,
                ConfigProblem::NoPlugins,
            ),
            (
                br#"{"name":"n","cniVersion":"1.0.0","plugins":[{"type":"x"},{"ipam":{}}]}"#,
                ConfigProblem::MissingType { index: 1 },
            ),
            (
                br#"{"name":"n","cniVersion":"1.0.0","plugins":[{"type":"../x"}]}"#,
                ConfigProblem::InvalidType {
                    index: 0,
                    plugin_type: "../x".into(),
                },
            ),
            (
                br#"{"name":"bad name","cniVersion":"1.0.0","plugins":[{"type":"x"}]}"#,
                ConfigProblem::InvalidName("bad name".into()),
            ),
        ];
        for (bytes, want) in cases {
            let got = NetworkConfigList::from_conflist_bytes(bytes).unwrap_err();
            match (want, &got) {
                (ConfigProblem::Json(_), ConfigProblem::Json(_)) => {}
                _ => assert_eq!(&got, want, "{}", String::from_utf8_lossy(bytes)),
            }
        }
    }

    #[test]
    fn cni_versions_picks_the_highest_supported() {
        let b = br#"{"name":"n","cniVersion":"0.4.0","cniVersions":["1.0.0","9.9.9"],"plugins":[{"type":"x"}]}"#;
        let list = NetworkConfigList::from_conflist_bytes(b).unwrap();
        assert_eq!(list.cni_version, "1.0.0");
    }

    #[test]
    fn conf_is_wrapped_into_a_list() {
        let b = br#"{"cniVersion":"0.4.0","name":"single","type":"bridge","bridge":"br9"}"#;
        let list = NetworkConfigList::from_conf_bytes(b).unwrap();
        assert_eq!(list.name, "single");
        assert_eq!(list.cni_version, "0.4.0");
        assert_eq!(list.plugins.len(), 1);
        assert_eq!(list.plugins[0].raw["bridge"], "br9");
        let wrapped: Value = serde_json::from_slice(&list.bytes).unwrap();
        assert_eq!(wrapped["plugins"][0]["type"], "bridge");
        assert_eq!(wrapped["name"], "single");

        let conflist_as_conf = br#"{"cniVersion":"1.0.0","name":"n","plugins":[{"type":"x"}]}"#;
        assert_eq!(
            NetworkConfigList::from_conf_bytes(conflist_as_conf).unwrap_err(),
            ConfigProblem::ConfMissingType
        );
    }

    #[test]
    fn versions_compare_numerically() {
        assert!(version_at_least("0.4.0", "0.4.0"));
        assert!(version_at_least("1.0.0", "0.4.0"));
        assert!(!version_at_least("0.3.1", "0.4.0"));
        assert!(version_at_least("0.10.0", "0.4.0"));
    }
}
