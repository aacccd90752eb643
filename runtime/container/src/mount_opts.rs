//! Mount options of config.json (fstab words) to mount(2) flags and data.

use crate::error::{Error, Result};
use nix::mount::MsFlags;

/// The parsed options of one mount.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MountOptions {
    /// Flags for the mount itself (ro, nosuid, ...).
    pub flags: MsFlags,
    /// Flags that `flags` clears explicitly ("rw", "suid", ...), kept to know a remount is wanted.
    pub cleared: MsFlags,
    /// Propagation changes, applied with separate mount(2) calls.
    pub propagation: Vec<MsFlags>,
    /// Filesystem-specific options, comma-joined.
    pub data: String,
    pub bind: bool,
    pub recursive: bool,
    /// Copy what the destination held into a new tmpfs (podman's --read-only mounts).
    pub tmpcopyup: bool,
    /// An idmapped bind mount (`idmap`, `ridmap` for the whole tree).
    pub idmap: bool,
    pub idmap_recursive: bool,
    /// `rro`: read-only on the whole tree, submounts included (mount_setattr, Linux 5.12).
    pub recursive_readonly: bool,
}

impl Default for MountOptions {
    fn default() -> Self {
        MountOptions {
            flags: MsFlags::empty(),
            cleared: MsFlags::empty(),
            propagation: Vec::new(),
            data: String::new(),
            bind: false,
            recursive: false,
            tmpcopyup: false,
            idmap: false,
            idmap_recursive: false,
            recursive_readonly: false,
        }
    }
}

/// Parses a propagation word ("rprivate", "shared", ...).
pub fn propagation(word: &str) -> Option<MsFlags> {
    Some(match word {
        "private" => MsFlags::MS_PRIVATE,
        "rprivate" => MsFlags::MS_PRIVATE | MsFlags::MS_REC,
        "shared" => MsFlags::MS_SHARED,
        "rshared" => MsFlags::MS_SHARED | MsFlags::MS_REC,
        "slave" => MsFlags::MS_SLAVE,
        "rslave" => MsFlags::MS_SLAVE | MsFlags::MS_REC,
        "unbindable" => MsFlags::MS_UNBINDABLE,
        "runbindable" => MsFlags::MS_UNBINDABLE | MsFlags::MS_REC,
        _ => return None,
    })
}

/// Parses the option list of one mount.
pub fn parse(options: &[String]) -> Result<MountOptions> {
    let mut o = MountOptions::default();
    let mut data = Vec::new();
    for opt in options {
        let (set, clear) = match opt.as_str() {
            "ro" => (MsFlags::MS_RDONLY, MsFlags::empty()),
            "rw" => (MsFlags::empty(), MsFlags::MS_RDONLY),
            "nosuid" => (MsFlags::MS_NOSUID, MsFlags::empty()),
            "suid" => (MsFlags::empty(), MsFlags::MS_NOSUID),
            "nodev" => (MsFlags::MS_NODEV, MsFlags::empty()),
            "dev" => (MsFlags::empty(), MsFlags::MS_NODEV),
            "noexec" => (MsFlags::MS_NOEXEC, MsFlags::empty()),
            "exec" => (MsFlags::empty(), MsFlags::MS_NOEXEC),
            "sync" => (MsFlags::MS_SYNCHRONOUS, MsFlags::empty()),
            "async" => (MsFlags::empty(), MsFlags::MS_SYNCHRONOUS),
            "dirsync" => (MsFlags::MS_DIRSYNC, MsFlags::empty()),
            "remount" => (MsFlags::MS_REMOUNT, MsFlags::empty()),
            "mand" => (MsFlags::MS_MANDLOCK, MsFlags::empty()),
            "nomand" => (MsFlags::empty(), MsFlags::MS_MANDLOCK),
            "atime" => (MsFlags::empty(), MsFlags::MS_NOATIME),
            "noatime" => (MsFlags::MS_NOATIME, MsFlags::empty()),
            "diratime" => (MsFlags::empty(), MsFlags::MS_NODIRATIME),
            "nodiratime" => (MsFlags::MS_NODIRATIME, MsFlags::empty()),
            "relatime" => (MsFlags::MS_RELATIME, MsFlags::empty()),
            "norelatime" => (MsFlags::empty(), MsFlags::MS_RELATIME),
            "strictatime" => (MsFlags::MS_STRICTATIME, MsFlags::empty()),
            "nostrictatime" => (MsFlags::empty(), MsFlags::MS_STRICTATIME),
            "silent" => (MsFlags::MS_SILENT, MsFlags::empty()),
            "loud" => (MsFlags::empty(), MsFlags::MS_SILENT),
            "bind" => {
                o.bind = true;
                continue;
            }
            "rbind" => {
                o.bind = true;
                o.recursive = true;
                continue;
            }
            "rro" => {
                o.recursive_readonly = true;
                continue;
            }
            // The other recursive attribute variants (mount_setattr) are not supported yet.
            w if w.starts_with('r')
                && matches!(
                    &w[1..],
                    "rw" | "nosuid"
                        | "suid"
                        | "nodev"
                        | "dev"
                        | "noexec"
                        | "exec"
                        | "atime"
                        | "noatime"
                        | "relatime"
                        | "norelatime"
                        | "strictatime"
                        | "nostrictatime"
                        | "diratime"
                        | "nodiratime"
                ) =>
            {
                return Err(Error::Unimplemented(format!(
                    "recursive mount option {w:?} (mount_setattr)"
                )));
            }
            "idmap" | "ridmap" => {
                o.idmap = true;
                o.idmap_recursive |= opt == "ridmap";
                continue;
            }
            "tmpcopyup" => {
                o.tmpcopyup = true;
                continue;
            }
            w => {
                if let Some(p) = propagation(w) {
                    o.propagation.push(p);
                } else if w.is_empty() {
                    return Err(Error::Config("empty mount option".into()));
                } else {
                    data.push(w.to_string());
                }
                continue;
            }
        };
        o.flags.insert(set);
        o.flags.remove(clear);
        o.cleared.insert(clear);
    }
    o.data = data.join(",");
    Ok(o)
}

#[cfg(test)]
mod tests {
    use super::*;
    fn s(v: &[&str]) -> Vec<String> {
        v.iter().map(|x| x.to_string()).collect()
    }
    #[test]
    fn parses_flags_data_and_propagation() {
        let o = parse(&s(&[
            "nosuid",
            "ro",
            "mode=755",
            "size=65536k",
            "rslave",
            "rbind",
        ]))
        .expect("parse");
        assert!(o.flags.contains(MsFlags::MS_NOSUID | MsFlags::MS_RDONLY));
        assert_eq!(o.data, "mode=755,size=65536k");
        assert_eq!(o.propagation, vec![MsFlags::MS_SLAVE | MsFlags::MS_REC]);
        assert!(o.bind && o.recursive);
        let o = parse(&s(&["ro", "rw"])).expect("parse");
        assert!(!o.flags.contains(MsFlags::MS_RDONLY));
        assert!(parse(&s(&["rnosuid"])).is_err());
        let o = parse(&s(&["rbind", "ro", "rro"])).expect("parse");
        assert!(o.recursive_readonly && o.flags.contains(MsFlags::MS_RDONLY));
    }
}
