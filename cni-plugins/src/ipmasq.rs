//! `ipMasq` of the bridge plugin with the iptables backend, in the reference plugin's layout:
//! a `nat` chain `CNI-<24 hex of sha512(name+id)>` that accepts traffic to the container's own
//! subnet and masquerades the rest (multicast excepted), jumped to from POSTROUTING for the
//! container's source address; rules carry the comment `name: "<name>" id: "<id>"`. The same
//! names make an ADD by one implementation and a DEL by the other work together.

use std::io::Write;
use std::process::{Command, Stdio};

use ipnet::IpNet;
use sha2::{Digest, Sha512};

use crate::error::{CniError, Code, Result};

/// The reference's per-container chain name.
pub fn chain_name(network: &str, container_id: &str) -> String {
    chain_name_with_prefix("", network, container_id)
}

/// `CNI-<prefix><hex of sha512(name+id)>`, cut to iptables' 28 characters (the reference's).
pub fn chain_name_with_prefix(prefix: &str, network: &str, container_id: &str) -> String {
    let sum = Sha512::digest(format!("{network}{container_id}").as_bytes());
    let hex: String = sum.iter().map(|b| format!("{b:02x}")).collect();
    let mut name = format!("CNI-{prefix}{hex}");
    name.truncate(28);
    name
}

/// The reference's rule comment (Go's %q of both strings).
pub fn comment(network: &str, container_id: &str) -> String {
    format!("name: {network:?} id: {container_id:?}")
}

fn tool(v6: bool) -> &'static str {
    if v6 { "ip6tables" } else { "iptables" }
}

fn iptables(v6: bool, args: &[&str]) -> std::io::Result<std::process::Output> {
    Command::new(tool(v6)).arg("-w").args(args).output()
}

fn restore(v6: bool, script: &str) -> Result<()> {
    let bin = if v6 {
        "ip6tables-restore"
    } else {
        "iptables-restore"
    };
    let mut child = Command::new(bin)
        .args(["-w", "--noflush"])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| CniError::io(format!("failed to run {bin}"), e))?;
    if let Some(mut s) = child.stdin.take() {
        s.write_all(script.as_bytes())
            .map_err(|e| CniError::io(format!("failed to write to {bin}"), e))?;
    }
    let out = child
        .wait_with_output()
        .map_err(|e| CniError::io(format!("failed to wait for {bin}"), e))?;
    if !out.status.success() {
        return Err(CniError::with_details(
            Code::Plugin,
            format!("{bin} failed"),
            String::from_utf8_lossy(&out.stderr).trim(),
        ));
    }
    Ok(())
}

fn quote(s: &str) -> String {
    format!("\"{}\"", s.replace('\\', "\\\\").replace('"', "\\\""))
}

/// Sets up masquerading for `addr` (a container address with its prefix).
pub fn setup(addr: &IpNet, network: &str, container_id: &str) -> Result<()> {
    let v6 = addr.addr().is_ipv6();
    let chain = chain_name(network, container_id);
    let c = quote(&comment(network, container_id));
    let multicast = if v6 { "ff00::/8" } else { "224.0.0.0/4" };
    let src = addr.addr().to_string();
    // Declaring the chain flushes it, so a repeated ADD leaves exactly one copy of its rules.
    let mut script = format!(
        "*nat\n:{chain} - [0:0]\n-A {chain} -d {} -j ACCEPT -m comment --comment {c}\n\
         -A {chain} ! -d {multicast} -j MASQUERADE -m comment --comment {c}\n",
        addr.trunc()
    );
    let check = iptables(
        v6,
        &[
            "-t",
            "nat",
            "-C",
            "POSTROUTING",
            "-s",
            &src,
            "-j",
            &chain,
            "-m",
            "comment",
            "--comment",
            &comment(network, container_id),
        ],
    );
    if !check.map(|o| o.status.success()).unwrap_or(false) {
        script.push_str(&format!(
            "-A POSTROUTING -s {src} -j {chain} -m comment --comment {c}\n"
        ));
    }
    script.push_str("COMMIT\n");
    restore(v6, &script)
}

/// Removes what [`setup`] made for `addr`; missing rules and chains are fine.
pub fn teardown(addr: &IpNet, network: &str, container_id: &str) -> Result<()> {
    let v6 = addr.addr().is_ipv6();
    let chain = chain_name(network, container_id);
    let cm = comment(network, container_id);
    for src in [addr.addr().to_string(), addr.to_string()] {
        // Repeat while a copy is left (a rule may have been added twice).
        for _ in 0..4 {
            let out = iptables(
                v6,
                &[
                    "-t",
                    "nat",
                    "-D",
                    "POSTROUTING",
                    "-s",
                    &src,
                    "-j",
                    &chain,
                    "-m",
                    "comment",
                    "--comment",
                    &cm,
                ],
            )
            .map_err(|e| CniError::io(format!("failed to run {}", tool(v6)), e))?;
            if !out.status.success() {
                break;
            }
        }
    }
    let _ = iptables(v6, &["-t", "nat", "-F", &chain]);
    let _ = iptables(v6, &["-t", "nat", "-X", &chain]);
    Ok(())
}
