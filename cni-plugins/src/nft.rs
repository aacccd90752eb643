//! nftables through the `nft` binary: scripts as one transaction, and rules found and deleted
//! by their comment.

use std::io::Write;
use std::process::{Command, Stdio};

use serde_json::Value;

use crate::error::{CniError, Code, Result};

fn output(cmd: &mut Command) -> Result<String> {
    let out = cmd
        .output()
        .map_err(|e| CniError::io("failed to run nft", e))?;
    if !out.status.success() {
        return Err(CniError::with_details(
            Code::Plugin,
            "nft failed",
            String::from_utf8_lossy(&out.stderr).trim(),
        ));
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Runs an nft script as one transaction.
pub fn run(script: &str) -> Result<()> {
    let mut child = Command::new("nft")
        .args(["-f", "-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| CniError::io("failed to run nft", e))?;
    if let Some(mut s) = child.stdin.take() {
        s.write_all(script.as_bytes())
            .map_err(|e| CniError::io("failed to write to nft", e))?;
    }
    let out = child
        .wait_with_output()
        .map_err(|e| CniError::io("failed to wait for nft", e))?;
    if !out.status.success() {
        return Err(CniError::with_details(
            Code::Plugin,
            "nft failed",
            String::from_utf8_lossy(&out.stderr).trim(),
        ));
    }
    Ok(())
}

/// Whether the nftables table exists, asked over netfilter netlink (`NFT_MSG_GETTABLE`): no
/// `nft` process for the common case of a DEL with nothing of ours to remove.
pub fn table_exists(family: &str, table: &str) -> Result<bool> {
    const NFNL_SUBSYS_NFTABLES: u16 = 10;
    const NFT_MSG_NEWTABLE: u16 = 0;
    const NFT_MSG_GETTABLE: u16 = 1;
    const NFTA_TABLE_NAME: u16 = 1;
    const NLMSG_ERROR: u16 = 2;
    let fam: u8 = match family {
        "inet" => 1,
        "ip" => 2,
        "arp" => 3,
        "netdev" => 5,
        "bridge" => 7,
        "ip6" => 10,
        other => return Err(CniError::plugin(format!("unknown nftables family {other}"))),
    };
    let err = |e: std::io::Error| CniError::with_details(Code::Plugin, "nftables netlink", e);
    let mut sock =
        netlink_sys::Socket::new(netlink_sys::protocols::NETLINK_NETFILTER).map_err(err)?;
    sock.bind_auto().map_err(err)?;
    sock.connect(&netlink_sys::SocketAddr::new(0, 0))
        .map_err(err)?;
    let mut name = table.as_bytes().to_vec();
    name.push(0);
    let attr_len = 4 + name.len();
    let padded = (attr_len + 3) & !3;
    let total = 16 + 4 + padded;
    let mut msg = Vec::with_capacity(total);
    msg.extend_from_slice(&(total as u32).to_ne_bytes());
    msg.extend_from_slice(&((NFNL_SUBSYS_NFTABLES << 8) | NFT_MSG_GETTABLE).to_ne_bytes());
    let flags = netlink_packet_core::NLM_F_REQUEST | netlink_packet_core::NLM_F_ACK;
    msg.extend_from_slice(&flags.to_ne_bytes());
    msg.extend_from_slice(&1u32.to_ne_bytes());
    msg.extend_from_slice(&0u32.to_ne_bytes());
    msg.extend_from_slice(&[fam, 0, 0, 0]);
    msg.extend_from_slice(&(attr_len as u16).to_ne_bytes());
    msg.extend_from_slice(&NFTA_TABLE_NAME.to_ne_bytes());
    msg.extend_from_slice(&name);
    msg.resize(total, 0);
    sock.send(&msg, 0).map_err(err)?;
    let mut found = false;
    loop {
        let (data, _) = sock.recv_from_full().map_err(err)?;
        let mut off = 0;
        while off + 16 <= data.len() {
            let len = u32::from_ne_bytes([data[off], data[off + 1], data[off + 2], data[off + 3]])
                as usize;
            let ty = u16::from_ne_bytes([data[off + 4], data[off + 5]]);
            if len < 16 || off + len > data.len() {
                return Err(CniError::plugin("nftables netlink: malformed reply"));
            }
            if ty == NLMSG_ERROR {
                if len < 20 {
                    return Err(CniError::plugin("nftables netlink: short error"));
                }
                let code = i32::from_ne_bytes([
                    data[off + 16],
                    data[off + 17],
                    data[off + 18],
                    data[off + 19],
                ]);
                return match -code {
                    0 => Ok(found),
                    libc::ENOENT => Ok(false),
                    errno => Err(CniError::with_details(
                        Code::Plugin,
                        format!("nftables netlink: get table {family} {table}"),
                        std::io::Error::from_raw_os_error(errno),
                    )),
                };
            }
            if ty == (NFNL_SUBSYS_NFTABLES << 8) | NFT_MSG_NEWTABLE {
                found = true;
            }
            off += (len + 3) & !3;
        }
    }
}

/// (chain, handle) of every rule tagged `tag`.
pub fn tagged_rules(family: &str, table: &str, tag: &str) -> Result<Vec<(String, u64)>> {
    rules_matching(family, table, |c| c == tag)
}

/// (chain, handle) of every rule whose comment starts with `prefix`.
pub fn rules_with_comment_prefix(
    family: &str,
    table: &str,
    prefix: &str,
) -> Result<Vec<(String, u64)>> {
    rules_matching(family, table, |c| c.starts_with(prefix))
}

fn rules_matching(
    family: &str,
    table: &str,
    wanted: impl Fn(&str) -> bool,
) -> Result<Vec<(String, u64)>> {
    if !table_exists(family, table)? {
        return Ok(Vec::new());
    }
    let out = match output(Command::new("nft").args(["-j", "list", "table", family, table])) {
        Ok(o) => o,
        // No table: nothing of ours exists.
        Err(e)
            if e.details
                .as_deref()
                .is_some_and(|d| d.contains("No such file")) =>
        {
            return Ok(Vec::new());
        }
        Err(e) => return Err(e),
    };
    let v: Value = serde_json::from_str(&out)
        .map_err(|e| CniError::with_details(Code::Plugin, "cannot parse nft output", e))?;
    let mut found = Vec::new();
    for item in v
        .get("nftables")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
    {
        let Some(rule) = item.get("rule") else {
            continue;
        };
        if !rule
            .get("comment")
            .and_then(Value::as_str)
            .is_some_and(&wanted)
        {
            continue;
        }
        if let (Some(chain), Some(handle)) = (
            rule.get("chain").and_then(Value::as_str),
            rule.get("handle").and_then(Value::as_u64),
        ) {
            found.push((chain.to_string(), handle));
        }
    }
    Ok(found)
}

pub fn delete_tagged(family: &str, table: &str, tag: &str) -> Result<()> {
    let rules = tagged_rules(family, table, tag)?;
    if rules.is_empty() {
        return Ok(());
    }
    let script: String = rules
        .iter()
        .map(|(chain, h)| format!("delete rule {family} {table} {chain} handle {h}\n"))
        .collect();
    run(&script)
}

/// FNV-1a, stable across builds, for rule comments.
pub fn fnv(s: &str) -> u64 {
    s.bytes().fold(0xcbf29ce484222325u64, |h, b| {
        (h ^ b as u64).wrapping_mul(0x100000001b3)
    })
}
