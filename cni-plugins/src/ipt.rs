//! iptables (`nat` table) through `iptables-save` and `iptables-restore --noflush`: one read and
//! at most one atomic write per address family, instead of one `iptables` process per rule.
//!
//! Rules we only ever compare against what `iptables-save` prints are kept in its canonical form
//! (the line it prints); rules we hand to `iptables -C` are argument vectors.

use std::io::Write;
use std::process::{Child, Command, Stdio};

use crate::error::{CniError, Code, Result};

/// The `nat` table of one family as `iptables-save -t nat` printed it.
#[derive(Debug, Clone, Default)]
pub struct Saved {
    lines: Vec<String>,
}

impl Saved {
    pub fn parse(text: &str) -> Saved {
        Saved {
            lines: text
                .lines()
                .filter(|l| l.starts_with(':') || l.starts_with("-A "))
                .map(str::to_string)
                .collect(),
        }
    }

    /// Whether the chain exists.
    pub fn has_chain(&self, chain: &str) -> bool {
        self.lines.iter().any(|l| {
            l.strip_prefix(':')
                .and_then(|r| r.strip_prefix(chain))
                .is_some_and(|r| r.starts_with(' '))
        })
    }

    /// The rule lines (`-A <chain> …`) of `chain`.
    pub fn rules<'a>(&'a self, chain: &'a str) -> impl Iterator<Item = &'a str> + 'a {
        self.lines.iter().filter_map(move |l| {
            l.strip_prefix("-A ")
                .and_then(|r| r.strip_prefix(chain))
                .filter(|r| r.starts_with(' '))
                .map(|_| l.as_str())
        })
    }

    /// Whether the exact rule line (as `iptables-save` prints it) is present.
    pub fn has_rule(&self, line: &str) -> bool {
        self.lines.iter().any(|l| l == line)
    }

    /// The rules of `chain` that jump to `target`.
    pub fn jumps_to<'a>(&'a self, chain: &'a str, target: &'a str) -> Vec<&'a str> {
        let suffix = format!(" -j {target}");
        self.rules(chain).filter(|l| l.ends_with(&suffix)).collect()
    }
}

/// The binary of the family's tool: `iptables`, `iptables-save`, `iptables-restore` or the ip6
/// ones.
pub fn tool(v6: bool, suffix: &str) -> String {
    format!("{}{suffix}", if v6 { "ip6tables" } else { "iptables" })
}

/// Whether `iptables` is on PATH (no process is started).
pub fn available() -> bool {
    on_path("iptables")
}

/// Whether the executable `name` is on PATH.
pub fn on_path(name: &str) -> bool {
    let path = std::env::var_os("PATH").unwrap_or_else(|| "/usr/sbin:/usr/bin:/sbin:/bin".into());
    std::env::split_paths(&path).any(|d| d.join(name).is_file())
}

/// A running `iptables-save -t nat`; several can run at once.
pub struct PendingSave {
    v6: bool,
    child: std::io::Result<Child>,
}

pub fn spawn_save(v6: bool) -> PendingSave {
    let child = Command::new(tool(v6, "-save"))
        .args(["-t", "nat"])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn();
    PendingSave { v6, child }
}

impl PendingSave {
    /// The table, or None when the tool is missing or failed (the family is unusable).
    pub fn wait(self) -> Option<Saved> {
        let out = self.child.ok()?.wait_with_output().ok()?;
        if !out.status.success() {
            tracing::debug!(
                v6 = self.v6,
                "iptables-save failed: {}",
                String::from_utf8_lossy(&out.stderr).trim()
            );
            return None;
        }
        Some(Saved::parse(&String::from_utf8_lossy(&out.stdout)))
    }
}

/// Runs `iptables-restore -w --noflush` with `body` (rule lines) as one `nat` transaction.
pub fn restore(v6: bool, body: &str) -> Result<()> {
    let bin = tool(v6, "-restore");
    let script = format!("*nat\n{body}COMMIT\n");
    tracing::debug!(%bin, "{script}");
    let mut child = Command::new(&bin)
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

/// Whether `iptables -t nat -C <chain> <rule>` finds the rule.
pub fn exists(v6: bool, chain: &str, rule: &[String]) -> Result<bool> {
    let bin = tool(v6, "");
    let out = Command::new(&bin)
        .args(["-w", "-t", "nat", "-C", chain])
        .args(rule)
        .stdin(Stdio::null())
        .output()
        .map_err(|e| CniError::io(format!("failed to run {bin}"), e))?;
    Ok(out.status.success())
}

/// One argument as `iptables-restore` reads it (double quotes when needed).
pub fn quote(arg: &str) -> String {
    if !arg.is_empty() && !arg.contains([' ', '"', '\'', '\\', '\t']) {
        return arg.to_string();
    }
    format!("\"{}\"", arg.replace('\\', "\\\\").replace('"', "\\\""))
}

/// A rule line for `iptables-restore`: `<op> <chain> <args…>`.
pub fn line(op: &str, chain: &str, args: &[String]) -> String {
    let mut s = format!("{op} {chain}");
    for a in args {
        s.push(' ');
        s.push_str(&quote(a));
    }
    s.push('\n');
    s
}

/// Refuses arguments that could break out of a restore script line.
pub fn check_arg(arg: &str) -> Result<()> {
    if arg.contains(['\n', '\r', '\0']) {
        return Err(CniError::config(format!(
            "invalid iptables argument {arg:?}"
        )));
    }
    Ok(())
}

/// Turns a saved `-A chain …` line into the `-D chain …` line that deletes it.
pub fn delete_line(saved: &str) -> String {
    format!("-D {}\n", saved.strip_prefix("-A ").unwrap_or(saved))
}

/// Go's `%q` of a string as the reference plugins put it in comments (ASCII names).
pub fn go_quote(s: &str) -> String {
    format!("{s:?}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn saved_lookups() {
        let s = Saved::parse(
            "*nat\n:PREROUTING ACCEPT [0:0]\n:CNI-DN-1 - [0:0]\n:CNI-DN-10 - [0:0]\n\
             -A CNI-HOSTPORT-DNAT -p tcp -m multiport --dports 80 -j CNI-DN-1\n\
             -A CNI-HOSTPORT-DNAT -p tcp -m multiport --dports 81 -j CNI-DN-10\nCOMMIT\n",
        );
        assert!(s.has_chain("CNI-DN-1"));
        assert!(!s.has_chain("CNI-DN"));
        assert_eq!(s.jumps_to("CNI-HOSTPORT-DNAT", "CNI-DN-1").len(), 1);
        assert_eq!(
            delete_line(s.jumps_to("CNI-HOSTPORT-DNAT", "CNI-DN-10")[0]),
            "-D CNI-HOSTPORT-DNAT -p tcp -m multiport --dports 81 -j CNI-DN-10\n"
        );
        assert_eq!(quote(r#"name: "a" id: "b""#), r#""name: \"a\" id: \"b\"""#);
    }
}
