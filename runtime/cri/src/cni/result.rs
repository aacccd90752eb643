//! The CNI result: parsed from a plugin's stdout (0.3.x/0.4.0 and 1.x shapes), converted between
//! those versions (for `prevResult` from the cache), and reduced to the pod IPs the CRI reports.

use std::net::IpAddr;

use ipnet::IpNet;
use serde::Deserialize;
use serde_json::Value;

use super::config::parse_version;

/// A plugin result: the typed fields keelsond uses, and the raw JSON (what goes to the next
/// plugin as `prevResult` and into the cache).
#[derive(Debug, Clone, PartialEq)]
pub struct CniResult {
    pub cni_version: String,
    pub interfaces: Vec<Interface>,
    pub ips: Vec<IpConfig>,
    pub routes: Vec<Route>,
    pub dns: Dns,
    pub raw: Value,
}

#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct Interface {
    pub name: String,
    #[serde(default)]
    pub mac: String,
    /// The netns path for interfaces inside the sandbox; empty for host interfaces.
    #[serde(default)]
    pub sandbox: String,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IpConfig {
    /// Address with its prefix length, e.g. 10.22.0.5/16.
    pub address: IpNet,
    pub gateway: Option<IpAddr>,
    /// Index into [`CniResult::interfaces`].
    pub interface: Option<usize>,
}

#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct Route {
    pub dst: IpNet,
    #[serde(default)]
    pub gw: Option<IpAddr>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
pub struct Dns {
    #[serde(default)]
    pub nameservers: Vec<String>,
    #[serde(default)]
    pub domain: String,
    #[serde(default)]
    pub search: Vec<String>,
    #[serde(default)]
    pub options: Vec<String>,
}

#[derive(Deserialize)]
struct RawIp {
    address: IpNet,
    #[serde(default)]
    gateway: Option<IpAddr>,
    #[serde(default)]
    interface: Option<i64>,
    /// 0.3.x/0.4.0 only: "4" or "6".
    #[serde(default)]
    version: Option<String>,
}

#[derive(Deserialize)]
struct RawResult {
    #[serde(default, rename = "cniVersion")]
    cni_version: String,
    #[serde(default)]
    interfaces: Option<Vec<Interface>>,
    #[serde(default)]
    ips: Option<Vec<RawIp>>,
    #[serde(default)]
    routes: Option<Vec<Route>>,
    #[serde(default)]
    dns: Option<Dns>,
}

/// Whether a result version has the 0.3.x/0.4.0 shape (`version` in each IP).
fn is_v0(version: &str) -> bool {
    parse_version(version).is_some_and(|(major, ..)| major == 0)
}

impl CniResult {
    /// Parses a plugin's ADD output. A result without `cniVersion` is taken to be of
    /// `config_version` (libcni does the same, for old plugins).
    pub fn parse(stdout: &[u8], config_version: &str) -> Result<Self, String> {
        let value: Value = serde_json::from_slice(stdout).map_err(|e| {
            format!(
                "not JSON ({e}): {:?}",
                String::from_utf8_lossy(&stdout[..stdout.len().min(512)])
            )
        })?;
        let Value::Object(mut obj) = value else {
            return Err("not a JSON object".into());
        };
        match obj.get("cniVersion") {
            Some(Value::String(s)) if !s.is_empty() => {}
            _ => {
                obj.insert("cniVersion".into(), Value::String(config_version.into()));
            }
        }
        Self::from_value(Value::Object(obj))
    }

    /// Types a result JSON object (which must carry `cniVersion`).
    pub fn from_value(raw: Value) -> Result<Self, String> {
        let parsed: RawResult =
            serde_json::from_value(raw.clone()).map_err(|e| format!("invalid result: {e}"))?;
        let version = parsed.cni_version.clone();
        match parse_version(&version) {
            Some((0, 3 | 4, _)) | Some((1, _, _)) => {}
            _ => return Err(format!("unsupported result cniVersion {version:?}")),
        }
        let interfaces = parsed.interfaces.unwrap_or_default();
        let mut ips = Vec::new();
        for ip in parsed.ips.unwrap_or_default() {
            let interface = match ip.interface {
                None => None,
                Some(i) if i >= 0 && (i as usize) < interfaces.len() => Some(i as usize),
                // libcni's 0.x results used -1 for "no interface"; other values are invalid.
                Some(-1) => None,
                Some(i) => {
                    return Err(format!(
                        "ip {} names interface index {i} of {} interfaces",
                        ip.address,
                        interfaces.len()
                    ));
                }
            };
            if let Some(v) = &ip.version {
                let want = if ip.address.addr().is_ipv4() {
                    "4"
                } else {
                    "6"
                };
                if is_v0(&version) && v != want {
                    return Err(format!("ip {} has version {v:?}", ip.address));
                }
            }
            ips.push(IpConfig {
                address: ip.address,
                gateway: ip.gateway,
                interface,
            });
        }
        Ok(CniResult {
            cni_version: version,
            interfaces,
            ips,
            routes: parsed.routes.unwrap_or_default(),
            dns: parsed.dns.unwrap_or_default(),
            raw,
        })
    }

    /// This result as JSON of `version`: the 0.3.x/0.4.0 shape has a `version` ("4"/"6") in each
    /// IP, the 1.x shape has none; otherwise only `cniVersion` changes (as libcni's
    /// `GetAsVersion`).
    pub fn to_version(&self, version: &str) -> Value {
        let mut raw = self.raw.clone();
        if let Value::Object(obj) = &mut raw {
            obj.insert("cniVersion".into(), Value::String(version.into()));
            if let Some(Value::Array(ips)) = obj.get_mut("ips") {
                for ip in ips.iter_mut().filter_map(Value::as_object_mut) {
                    if is_v0(version) {
                        let v4 = ip
                            .get("address")
                            .and_then(Value::as_str)
                            .and_then(|a| a.parse::<IpNet>().ok())
                            .is_some_and(|n| n.addr().is_ipv4());
                        ip.insert(
                            "version".into(),
                            Value::String(if v4 { "4" } else { "6" }.into()),
                        );
                    } else {
                        ip.remove("version");
                    }
                }
            }
        }
        raw
    }

    /// The addresses of the sandbox interface `ifname`, in result order: IPs whose `interface`
    /// index names an interface called `ifname` inside a sandbox, or, when no IP names an
    /// interface at all, every IP of the result.
    pub fn sandbox_ips(&self, ifname: &str) -> Vec<IpAddr> {
        let any_indexed = self.ips.iter().any(|ip| ip.interface.is_some());
        self.ips
            .iter()
            .filter(|ip| match ip.interface {
                Some(i) => self
                    .interfaces
                    .get(i)
                    .is_some_and(|intf| intf.name == ifname && !intf.sandbox.is_empty()),
                None => !any_indexed,
            })
            .map(|ip| ip.address.addr())
            .collect()
    }

    /// The pod IPs the CRI reports for `ifname` (`PodSandboxStatus.network.ip` and
    /// `additional_ips`), chosen as containerd does.
    pub fn pod_ips(&self, ifname: &str, preference: IpPreference) -> Option<PodIps> {
        select_pod_ips(&self.sandbox_ips(ifname), preference)
    }
}

/// Which address family is the primary pod IP (containerd's `ip_pref`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum IpPreference {
    /// The first IPv4 address (default); the others follow in result order.
    #[default]
    Ipv4,
    /// The first IPv6 address.
    Ipv6,
    /// The first address the plugin returned.
    Cni,
}

/// The primary pod IP and the additional ones, primary first.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PodIps {
    pub primary: IpAddr,
    pub additional: Vec<IpAddr>,
}

/// Primary = first address of the preferred family (or the first address if none is), the rest
/// in their order.
pub fn select_pod_ips(ips: &[IpAddr], preference: IpPreference) -> Option<PodIps> {
    let first = ips.first()?;
    let wanted = |ip: &IpAddr| match preference {
        IpPreference::Ipv4 => ip.is_ipv4(),
        IpPreference::Ipv6 => ip.is_ipv6(),
        IpPreference::Cni => true,
    };
    let index = ips.iter().position(wanted).unwrap_or(0);
    let primary = ips.get(index).copied().unwrap_or(*first);
    let additional = ips
        .iter()
        .enumerate()
        .filter(|(i, _)| *i != index)
        .map(|(_, ip)| *ip)
        .collect();
    Some(PodIps {
        primary,
        additional,
    })
}

#[cfg(test)]
mod unit {
    use super::*;

    const V1: &str = r#"{
      "cniVersion": "1.0.0",
      "interfaces": [
        {"name": "cni0", "mac": "00:11:22:33:44:55"},
        {"name": "veth1", "mac": "55:44:33:22:11:11"},
        {"name": "eth0", "mac": "99:88:77:66:55:44", "sandbox": "/run/netns/blue"}
      ],
      "ips": [
        {"address": "fd00::5/64", "gateway": "fd00::1", "interface": 2},
        {"address": "10.1.0.5/16", "gateway": "10.1.0.1", "interface": 2},
        {"address": "192.168.9.9/24", "interface": 0}
      ],
      "routes": [{"dst": "0.0.0.0/0"}, {"dst": "10.9.0.0/16", "gw": "10.1.0.254", "mtu": 1400}],
      "dns": {"nameservers": ["10.1.0.1"], "search": ["svc"]}
    }"#;

    #[test]
    fn parses_the_1_0_shape_and_picks_ipv4_first() {
        let r = CniResult::parse(V1.as_bytes(), "1.0.0").unwrap();
        assert_eq!(r.interfaces.len(), 3);
        assert_eq!(r.ips[1].address.to_string(), "10.1.0.5/16");
        assert_eq!(r.ips[1].gateway, Some("10.1.0.1".parse().unwrap()));
        assert_eq!(r.routes[1].gw, Some("10.1.0.254".parse().unwrap()));
        assert_eq!(r.dns.nameservers, vec!["10.1.0.1"]);
        // The host-side (cni0) address is not a pod IP.
        assert_eq!(
            r.sandbox_ips("eth0"),
            vec![
                "fd00::5".parse::<IpAddr>().unwrap(),
                "10.1.0.5".parse().unwrap()
            ]
        );
        let ips = r.pod_ips("eth0", IpPreference::Ipv4).unwrap();
        assert_eq!(ips.primary, "10.1.0.5".parse::<IpAddr>().unwrap());
        assert_eq!(ips.additional, vec!["fd00::5".parse::<IpAddr>().unwrap()]);
        let ips = r.pod_ips("eth0", IpPreference::Cni).unwrap();
        assert_eq!(ips.primary, "fd00::5".parse::<IpAddr>().unwrap());
        assert!(r.pod_ips("eth1", IpPreference::Ipv4).is_none());
    }

    #[test]
    fn parses_the_0_4_shape_and_converts_both_ways() {
        let v04 = r#"{"cniVersion":"0.4.0","interfaces":[{"name":"eth0","sandbox":"/n"}],
            "ips":[{"version":"4","address":"10.2.0.7/24","gateway":"10.2.0.1","interface":0}]}"#;
        let r = CniResult::parse(v04.as_bytes(), "0.4.0").unwrap();
        assert_eq!(
            r.pod_ips("eth0", IpPreference::Ipv4).unwrap().primary,
            "10.2.0.7".parse::<IpAddr>().unwrap()
        );
        let up = r.to_version("1.0.0");
        assert_eq!(up["cniVersion"], "1.0.0");
        assert!(up["ips"][0].get("version").is_none());
        let back = CniResult::from_value(up).unwrap().to_version("0.3.1");
        assert_eq!(back["ips"][0]["version"], "4");
        assert_eq!(back["cniVersion"], "0.3.1");

        let bad = r#"{"cniVersion":"0.4.0","ips":[{"version":"6","address":"10.2.0.7/24"}]}"#;
        assert!(CniResult::parse(bad.as_bytes(), "0.4.0").is_err());
    }

    #[test]
    fn missing_version_is_the_config_version_and_bad_input_is_refused() {
        let r = CniResult::parse(br#"{"ips":[{"address":"10.3.0.2/24"}]}"#, "1.0.0").unwrap();
        assert_eq!(r.cni_version, "1.0.0");
        assert_eq!(r.raw["cniVersion"], "1.0.0");
        assert_eq!(
            r.sandbox_ips("eth0"),
            vec!["10.3.0.2".parse::<IpAddr>().unwrap()]
        );

        assert!(CniResult::parse(b"", "1.0.0").is_err());
        assert!(CniResult::parse(b"[1]", "1.0.0").is_err());
        assert!(CniResult::parse(br#"{"ips":[{"address":"nope"}]}"#, "1.0.0").is_err());
        assert!(
            CniResult::parse(
                br#"{"ips":[{"address":"10.0.0.1/8","interface":3}]}"#,
                "1.0.0"
            )
            .is_err()
        );
        assert!(CniResult::parse(br#"{"cniVersion":"0.2.0","ip4":{}}"#, "1.0.0").is_err());
    }

    #[test]
    fn selection_falls_back_to_the_first_address() {
        let v6: IpAddr = "fd00::1".parse().unwrap();
        let v6b: IpAddr = "fd00::2".parse().unwrap();
        let sel = select_pod_ips(&[v6, v6b], IpPreference::Ipv4).unwrap();
        assert_eq!((sel.primary, sel.additional), (v6, vec![v6b]));
        assert!(select_pod_ips(&[], IpPreference::Ipv4).is_none());
    }
}
