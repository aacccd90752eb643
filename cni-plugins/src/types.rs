//! CNI result types, version handling and the common fields of a network configuration.

use std::net::IpAddr;

use ipnet::IpNet;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value, json};

use crate::error::{CniError, Code, Result};

/// The version this implementation speaks natively.
pub const CURRENT_VERSION: &str = "1.1.0";

/// Versions accepted in configs and results.
pub const SUPPORTED_VERSIONS: [&str; 5] = ["0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0"];

/// Checks that `v` is one of [`SUPPORTED_VERSIONS`] (error code 1 otherwise).
pub fn check_version(v: &str) -> Result<()> {
    if SUPPORTED_VERSIONS.contains(&v) {
        Ok(())
    } else {
        Err(CniError::with_details(
            Code::IncompatibleVersion,
            "incompatible CNI versions",
            format!(
                "config is {v:?}, plugin supports {:?}",
                SUPPORTED_VERSIONS.as_slice()
            ),
        ))
    }
}

/// Whether `v` is at least `major.minor`.
pub fn version_at_least(v: &str, major: u32, minor: u32) -> bool {
    let mut it = v.split('.').map(|p| p.parse::<u32>().unwrap_or(0));
    let (a, b) = (it.next().unwrap_or(0), it.next().unwrap_or(0));
    (a, b) >= (major, minor)
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Interface {
    pub name: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub mac: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mtu: Option<u32>,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub sandbox: String,
    #[serde(
        default,
        rename = "socketPath",
        skip_serializing_if = "String::is_empty"
    )]
    pub socket_path: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct IpConfig {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub interface: Option<usize>,
    pub address: IpNet,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gateway: Option<IpAddr>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Route {
    pub dst: IpNet,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gw: Option<IpAddr>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mtu: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub advmss: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub priority: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub table: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scope: Option<u8>,
}

impl Route {
    pub fn new(dst: IpNet, gw: Option<IpAddr>) -> Route {
        Route {
            dst,
            gw,
            mtu: None,
            advmss: None,
            priority: None,
            table: None,
            scope: None,
        }
    }
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Dns {
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub nameservers: Vec<String>,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub domain: String,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub search: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub options: Vec<String>,
}

/// A result of any supported version, held in the current version's shape.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct CniResult {
    #[serde(default)]
    pub interfaces: Vec<Interface>,
    #[serde(default)]
    pub ips: Vec<IpConfig>,
    #[serde(default)]
    pub routes: Vec<Route>,
    #[serde(default)]
    pub dns: Dns,
}

impl CniResult {
    /// Parses a result (prevResult or an IPAM plugin's output) of any supported version.
    pub fn from_value(v: &Value) -> Result<CniResult> {
        if let Some(ver) = v.get("cniVersion").and_then(Value::as_str) {
            if !version_at_least(ver, 0, 3) {
                return Err(CniError::with_details(
                    Code::IncompatibleVersion,
                    "unsupported result version",
                    ver,
                ));
            }
        }
        serde_json::from_value(v.clone())
            .map_err(|e| CniError::with_details(Code::Decode, "failed to decode result", e))
    }

    /// The result in the JSON shape of `version` (`ips[].version` below 1.0.0).
    pub fn to_value(&self, version: &str) -> Value {
        let mut out = Map::new();
        out.insert("cniVersion".into(), json!(version));
        if !self.interfaces.is_empty() {
            out.insert("interfaces".into(), json!(self.interfaces));
        }
        if !self.ips.is_empty() {
            let old = !version_at_least(version, 1, 0);
            let ips: Vec<Value> = self
                .ips
                .iter()
                .map(|ip| {
                    let mut m = Map::new();
                    if old {
                        let fam = if ip.address.addr().is_ipv4() {
                            "4"
                        } else {
                            "6"
                        };
                        m.insert("version".into(), json!(fam));
                    }
                    if let Some(i) = ip.interface {
                        m.insert("interface".into(), json!(i));
                    }
                    m.insert("address".into(), json!(ip.address.to_string()));
                    if let Some(gw) = ip.gateway {
                        m.insert("gateway".into(), json!(gw.to_string()));
                    }
                    Value::Object(m)
                })
                .collect();
            out.insert("ips".into(), Value::Array(ips));
        }
        if !self.routes.is_empty() {
            let new = version_at_least(version, 1, 1);
            let routes: Vec<Value> = self
                .routes
                .iter()
                .map(|r| {
                    let mut r = r.clone();
                    if !new {
                        r.mtu = None;
                        r.advmss = None;
                        r.priority = None;
                        r.table = None;
                        r.scope = None;
                    }
                    json!(r)
                })
                .collect();
            out.insert("routes".into(), Value::Array(routes));
        }
        out.insert("dns".into(), json!(self.dns));
        Value::Object(out)
    }
}

/// Keys of a plugin configuration that every plugin accepts (the spec's well-known keys).
pub const COMMON_KEYS: [&str; 11] = [
    "cni.dev/valid-attachments",
    "cniVersion",
    "cniVersions",
    "name",
    "type",
    "args",
    "prevResult",
    "runtimeConfig",
    "capabilities",
    "disableCheck",
    "disableGC",
];

/// Refuses keys of `obj` that are neither common nor in `own` (error code 2).
pub fn check_keys(obj: &Value, own: &[&str], what: &str) -> Result<()> {
    let Some(map) = obj.as_object() else {
        return Err(CniError::config(format!("{what} must be a JSON object")));
    };
    for (k, v) in map {
        if !COMMON_KEYS.contains(&k.as_str()) && !own.contains(&k.as_str()) {
            return Err(CniError::with_details(
                Code::UnsupportedField,
                format!("unsupported field {k:?} in {what}"),
                format!("{k}: {v}"),
            ));
        }
    }
    Ok(())
}

/// Deserializes a typed config, mapping serde errors to code 7 (invalid config).
pub fn typed<T: serde::de::DeserializeOwned>(v: &Value, what: &str) -> Result<T> {
    serde_json::from_value(v.clone())
        .map_err(|e| CniError::with_details(Code::InvalidConfig, format!("invalid {what}"), e))
}

/// The prevResult of a config, parsed, if present.
pub fn prev_result(conf: &Value) -> Result<Option<CniResult>> {
    match conf.get("prevResult") {
        None | Some(Value::Null) => Ok(None),
        Some(v) => CniResult::from_value(v).map(Some),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn old_versions_get_ip_version() {
        let r = CniResult {
            ips: vec![IpConfig {
                interface: Some(1),
                address: "10.0.0.2/24".parse().unwrap(),
                gateway: None,
            }],
            ..Default::default()
        };
        assert_eq!(r.to_value("0.4.0")["ips"][0]["version"], "4");
        assert!(r.to_value("1.0.0")["ips"][0].get("version").is_none());
    }

    #[test]
    fn versions_compare() {
        assert!(version_at_least("1.1.0", 1, 1));
        assert!(!version_at_least("0.4.0", 1, 0));
        assert!(check_version("0.2.0").is_err());
    }
}
