//! `loopback`: sets `lo` up in the container's netns (down on DEL).

use serde_json::Value;

use crate::error::{CniError, Code, Result};
use crate::netlink::Handle;
use crate::ns;
use crate::skel::{Args, Plugin};
use crate::types::{self, CniResult, Interface, IpConfig};

pub struct Loopback;

fn lo_flags(args: &Args, up: bool) -> Result<()> {
    let Some(path) = &args.netns else {
        return Ok(());
    };
    let file = match ns::open(path) {
        Ok(f) => f,
        // DEL on a vanished namespace has nothing left to do.
        Err(_) if !up => return Ok(()),
        Err(e) => return Err(e),
    };
    ns::run_in(&file, || {
        let mut h = Handle::new().map_err(|e| CniError::plugin(e.to_string()))?;
        let lo = h
            .link_by_name("lo")
            .map_err(|e| CniError::plugin(e.to_string()))?
            .ok_or_else(|| CniError::plugin("no lo interface in the namespace"))?;
        h.set_flags(lo.index, up, None)
            .map_err(|e| CniError::plugin(e.to_string()))
    })
}

impl Plugin for Loopback {
    fn validate(&self, conf: &Value) -> Result<()> {
        types::check_keys(conf, &["dns", "ipam"], "loopback config")
    }

    fn add(&self, args: &Args, conf: &Value) -> Result<CniResult> {
        lo_flags(args, true)?;
        // A chained loopback passes its prevResult on; otherwise it reports lo and its addresses.
        if let Some(prev) = types::prev_result(conf)? {
            return Ok(prev);
        }
        Ok(CniResult {
            interfaces: vec![Interface {
                name: "lo".into(),
                mac: "00:00:00:00:00:00".into(),
                sandbox: args
                    .netns
                    .as_ref()
                    .map(|p| p.display().to_string())
                    .unwrap_or_default(),
                ..Default::default()
            }],
            ips: vec![
                IpConfig {
                    interface: Some(0),
                    address: "127.0.0.1/8".parse().map_err(|_| CniError::plugin("lo"))?,
                    gateway: None,
                },
                IpConfig {
                    interface: Some(0),
                    address: "::1/128".parse().map_err(|_| CniError::plugin("lo"))?,
                    gateway: None,
                },
            ],
            ..Default::default()
        })
    }

    fn del(&self, args: &Args, _conf: &Value) -> Result<()> {
        lo_flags(args, false)
    }

    fn check(&self, args: &Args, _conf: &Value) -> Result<()> {
        let Some(path) = &args.netns else {
            return Err(CniError::plugin("CNI_NETNS missing"));
        };
        let file = match std::fs::File::open(path) {
            Ok(f) => f,
            // A container whose namespace is gone is unknown (code 3).
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Err(CniError::with_details(
                    Code::UnknownContainer,
                    format!("netns {:?} does not exist", path.display()),
                    e,
                ));
            }
            Err(_) => ns::open(path)?,
        };
        ns::run_in(&file, || {
            let mut h = Handle::new().map_err(|e| CniError::plugin(e.to_string()))?;
            match h.link_by_name("lo") {
                Ok(Some(l)) if l.is_up() => Ok(()),
                Ok(_) => Err(CniError::plugin("loopback interface is down")),
                Err(e) => Err(CniError::plugin(e.to_string())),
            }
        })
    }
}
