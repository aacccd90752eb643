//! Capability names, bit masks, and the `Cap*` lines of `/proc/<pid>/status`.

/// Linux capabilities in bit order (`CAP_CHOWN` is bit 0).
pub const CAPABILITIES: [&str; 41] = [
    "CAP_CHOWN",
    "CAP_DAC_OVERRIDE",
    "CAP_DAC_READ_SEARCH",
    "CAP_FOWNER",
    "CAP_FSETID",
    "CAP_KILL",
    "CAP_SETGID",
    "CAP_SETUID",
    "CAP_SETPCAP",
    "CAP_LINUX_IMMUTABLE",
    "CAP_NET_BIND_SERVICE",
    "CAP_NET_BROADCAST",
    "CAP_NET_ADMIN",
    "CAP_NET_RAW",
    "CAP_IPC_LOCK",
    "CAP_IPC_OWNER",
    "CAP_SYS_MODULE",
    "CAP_SYS_RAWIO",
    "CAP_SYS_CHROOT",
    "CAP_SYS_PTRACE",
    "CAP_SYS_PACCT",
    "CAP_SYS_ADMIN",
    "CAP_SYS_BOOT",
    "CAP_SYS_NICE",
    "CAP_SYS_RESOURCE",
    "CAP_SYS_TIME",
    "CAP_SYS_TTY_CONFIG",
    "CAP_MKNOD",
    "CAP_LEASE",
    "CAP_AUDIT_WRITE",
    "CAP_AUDIT_CONTROL",
    "CAP_SETFCAP",
    "CAP_MAC_OVERRIDE",
    "CAP_MAC_ADMIN",
    "CAP_SYSLOG",
    "CAP_WAKE_ALARM",
    "CAP_BLOCK_SUSPEND",
    "CAP_AUDIT_READ",
    "CAP_PERFMON",
    "CAP_BPF",
    "CAP_CHECKPOINT_RESTORE",
];

/// The bit number of a capability name (`CAP_KILL` -> 5).
pub fn bit(name: &str) -> Option<u32> {
    CAPABILITIES
        .iter()
        .position(|c| *c == name)
        .and_then(|p| u32::try_from(p).ok())
}

/// The mask of a set of names; `None` if a name is unknown.
pub fn mask<S: AsRef<str>>(names: &[S]) -> Option<u64> {
    names
        .iter()
        .try_fold(0u64, |acc, n| bit(n.as_ref()).map(|b| acc | (1u64 << b)))
}

/// The five capability sets of a process.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CapSets {
    pub inheritable: u64,
    pub permitted: u64,
    pub effective: u64,
    pub bounding: u64,
    pub ambient: u64,
}

/// The value of a `Key:\tvalue` line of `/proc/<pid>/status` text (or of any text printing
/// such lines).
pub fn status_field<'a>(status: &'a str, key: &str) -> Option<&'a str> {
    status.lines().find_map(|line| {
        line.strip_prefix(key)
            .and_then(|rest| rest.strip_prefix(':'))
            .map(str::trim)
    })
}

/// The `Cap*` lines of status text; `None` if one is missing or not hex.
pub fn parse_status(status: &str) -> Option<CapSets> {
    let hex = |key: &str| status_field(status, key).and_then(|v| u64::from_str_radix(v, 16).ok());
    Some(CapSets {
        inheritable: hex("CapInh")?,
        permitted: hex("CapPrm")?,
        effective: hex("CapEff")?,
        bounding: hex("CapBnd")?,
        ambient: hex("CapAmb")?,
    })
}

/// Names of the bits set in `mask`, for readable assertion messages.
pub fn names(mask: u64) -> Vec<&'static str> {
    CAPABILITIES
        .iter()
        .enumerate()
        .filter(|(i, _)| mask & (1u64 << i) != 0)
        .map(|(_, n)| *n)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn runc_default_caps_mask() {
        assert_eq!(mask(&crate::spec::DEFAULT_CAPS), Some(0x2000_0420));
        assert_eq!(mask(&["CAP_NOPE"]), None);
        assert_eq!(names(0x20), vec!["CAP_KILL"]);
    }

    #[test]
    fn parses_status() {
        let text = "Name:\tsh\nCapInh:\t0000000000000000\nCapPrm:\t0000000020000420\nCapEff:\t0000000020000420\nCapBnd:\t0000000020000420\nCapAmb:\t0000000000000000\n";
        let sets = parse_status(text).expect("parses");
        assert_eq!(sets.bounding, 0x2000_0420);
        assert_eq!(sets.ambient, 0);
        assert_eq!(status_field(text, "Name"), Some("sh"));
    }
}
