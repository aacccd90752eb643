//! `host-local` IPAM: allocations as files under `<dataDir>/<network>/`, in the reference
//! plugin's format (`<ip>` holding `<containerid>\r\n<ifname>`, `last_reserved_ip.<n>`, and an
//! flock on `lock`), so both implementations can share one network's allocations.

use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::net::IpAddr;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use ipnet::IpNet;
use nix::fcntl::{Flock, FlockArg};
use serde::Deserialize;
use serde_json::Value;

use crate::error::{CniError, Code, Result};
use crate::skel::{Args, Plugin};
use crate::types::{self, CniResult, Dns, IpConfig, Route};

const DEFAULT_DATA_DIR: &str = "/var/lib/cni/networks";
const LINE_BREAK: &str = "\r\n";
const LAST_IP_PREFIX: &str = "last_reserved_ip.";

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct RangeConf {
    subnet: String,
    #[serde(rename = "rangeStart")]
    range_start: Option<IpAddr>,
    #[serde(rename = "rangeEnd")]
    range_end: Option<IpAddr>,
    gateway: Option<IpAddr>,
}

#[derive(Debug, Clone, Deserialize)]
struct RouteConf {
    dst: IpNet,
    gw: Option<IpAddr>,
}

const IPAM_KEYS: [&str; 10] = [
    "type",
    "ranges",
    "subnet",
    "rangeStart",
    "rangeEnd",
    "gateway",
    "routes",
    "dataDir",
    "resolvConf",
    "name",
];

#[derive(Debug, Clone, Deserialize)]
struct IpamConf {
    #[serde(default)]
    ranges: Vec<Vec<RangeConf>>,
    subnet: Option<String>,
    #[serde(rename = "rangeStart")]
    range_start: Option<IpAddr>,
    #[serde(rename = "rangeEnd")]
    range_end: Option<IpAddr>,
    gateway: Option<IpAddr>,
    #[serde(default)]
    routes: Vec<RouteConf>,
    #[serde(rename = "dataDir")]
    data_dir: Option<PathBuf>,
    #[serde(rename = "resolvConf")]
    resolv_conf: Option<PathBuf>,
}

/// One canonical range: subnet, first and last allocatable address, gateway.
#[derive(Debug, Clone)]
pub struct Range {
    pub subnet: IpNet,
    pub start: IpAddr,
    pub end: IpAddr,
    pub gateway: IpAddr,
}

fn to_u128(ip: IpAddr) -> u128 {
    match ip {
        IpAddr::V4(v) => u32::from(v) as u128,
        IpAddr::V6(v) => u128::from(v),
    }
}

fn from_u128(v: u128, like: IpAddr) -> IpAddr {
    match like {
        IpAddr::V4(_) => IpAddr::V4((v as u32).into()),
        IpAddr::V6(_) => IpAddr::V6(v.into()),
    }
}

fn next_ip(ip: IpAddr) -> IpAddr {
    from_u128(to_u128(ip).wrapping_add(1), ip)
}

impl Range {
    fn canonical(rc: &RangeConf) -> Result<Range> {
        let subnet: IpNet = rc
            .subnet
            .parse()
            .map_err(|_| CniError::config(format!("invalid CIDR {:?}", rc.subnet)))?;
        let subnet = subnet.trunc();
        let bits = if subnet.addr().is_ipv4() { 32 } else { 128 };
        if subnet.prefix_len() > bits - 2 {
            return Err(CniError::config(format!(
                "Network {subnet} too small to allocate from"
            )));
        }
        let gateway = match rc.gateway {
            Some(g) if !subnet.contains(&g) => {
                return Err(CniError::config(format!(
                    "gateway {g} not in network {subnet}"
                )));
            }
            Some(g) => g,
            None => next_ip(subnet.network()),
        };
        let last = match subnet.broadcast() {
            b @ IpAddr::V4(_) => from_u128(to_u128(b) - 1, b),
            b => b,
        };
        let mut r = Range {
            subnet,
            start: next_ip(subnet.network()),
            end: last,
            gateway,
        };
        if let Some(s) = rc.range_start {
            r.check_in(s)?;
            r.start = s;
        }
        if let Some(e) = rc.range_end {
            r.check_in(e)?;
            r.end = e;
        }
        Ok(r)
    }

    fn check_in(&self, ip: IpAddr) -> Result<()> {
        if ip.is_ipv4() != self.subnet.addr().is_ipv4() {
            return Err(CniError::config(format!(
                "IP {ip} is not the same protocol as subnet {}",
                self.subnet
            )));
        }
        if !self.subnet.contains(&ip) {
            return Err(CniError::config(format!(
                "{ip} not in network {}",
                self.subnet
            )));
        }
        Ok(())
    }

    fn contains(&self, ip: IpAddr) -> bool {
        ip.is_ipv4() == self.start.is_ipv4()
            && to_u128(ip) >= to_u128(self.start)
            && to_u128(ip) <= to_u128(self.end)
    }
}

/// The parsed `ipam` section: range sets, routes, data dir, resolv.conf.
pub struct Config {
    pub name: String,
    pub range_sets: Vec<Vec<Range>>,
    routes: Vec<Route>,
    data_dir: PathBuf,
    resolv_conf: Option<PathBuf>,
}

impl Config {
    pub fn parse(conf: &Value) -> Result<Config> {
        let name = conf
            .get("name")
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_string();
        if name.is_empty() || name.contains('/') || name == "." || name == ".." {
            return Err(CniError::config(format!("invalid network name {name:?}")));
        }
        let ipam = conf
            .get("ipam")
            .ok_or_else(|| CniError::config("IPAM config missing 'ipam' key"))?;
        types::check_keys(ipam, &IPAM_KEYS, "ipam config")?;
        let ic: IpamConf = types::typed(ipam, "ipam config")?;
        let mut sets_conf = ic.ranges.clone();
        if let Some(subnet) = &ic.subnet {
            sets_conf.insert(
                0,
                vec![RangeConf {
                    subnet: subnet.clone(),
                    range_start: ic.range_start,
                    range_end: ic.range_end,
                    gateway: ic.gateway,
                }],
            );
        }
        if sets_conf.is_empty() {
            return Err(CniError::config("no IP ranges specified"));
        }
        let mut range_sets = Vec::new();
        for set in &sets_conf {
            if set.is_empty() {
                return Err(CniError::config("empty range set"));
            }
            let ranges = set
                .iter()
                .map(Range::canonical)
                .collect::<Result<Vec<_>>>()?;
            let v4 = ranges[0].subnet.addr().is_ipv4();
            if ranges.iter().any(|r| r.subnet.addr().is_ipv4() != v4) {
                return Err(CniError::config("mixed address families in one range set"));
            }
            range_sets.push(ranges);
        }
        // No range may overlap another, in the same set or across sets.
        let all: Vec<&Range> = range_sets.iter().flatten().collect();
        for (i, a) in all.iter().enumerate() {
            for b in &all[i + 1..] {
                if a.contains(b.start) || a.contains(b.end) || b.contains(a.start) {
                    return Err(CniError::config(format!(
                        "range {}-{} overlaps with range {}-{}",
                        a.start, a.end, b.start, b.end
                    )));
                }
            }
        }
        let routes = ic.routes.iter().map(|r| Route::new(r.dst, r.gw)).collect();
        Ok(Config {
            name,
            range_sets,
            routes,
            data_dir: ic
                .data_dir
                .filter(|d| !d.as_os_str().is_empty())
                .unwrap_or_else(|| PathBuf::from(DEFAULT_DATA_DIR)),
            resolv_conf: ic.resolv_conf.filter(|p| !p.as_os_str().is_empty()),
        })
    }
}

/// How long an operation waits for another one holding the store's lock before it answers
/// "try again later" (code 11): `KEELSON_CNI_LOCK_TIMEOUT_MS`, default 10 s.
fn lock_timeout() -> Duration {
    std::env::var("KEELSON_CNI_LOCK_TIMEOUT_MS")
        .ok()
        .and_then(|v| v.parse().ok())
        .map(Duration::from_millis)
        .unwrap_or(Duration::from_secs(10))
}

/// An exclusive flock on `file`; the uncontended case takes one non-blocking call, contention is
/// polled (1 ms, doubling to 50 ms) until `timeout`, then code 11.
fn lock_with_timeout(file: File, timeout: Duration) -> Result<Flock<File>> {
    let deadline = Instant::now() + timeout;
    let mut file = file;
    let mut pause = Duration::from_millis(1);
    loop {
        match Flock::lock(file, FlockArg::LockExclusiveNonblock) {
            Ok(l) => return Ok(l),
            Err((f, nix::errno::Errno::EWOULDBLOCK)) => {
                if Instant::now() >= deadline {
                    return Err(CniError::new(
                        Code::TryAgainLater,
                        format!(
                            "the allocation store is locked by another operation (waited {} ms)",
                            timeout.as_millis()
                        ),
                    ));
                }
                file = f;
                std::thread::sleep(pause);
                pause = (pause * 2).min(Duration::from_millis(50));
            }
            Err((_, e)) => return Err(CniError::io("failed to lock the allocation store", e)),
        }
    }
}

/// The network's allocation directory, locked for as long as the store lives.
struct Store {
    dir: PathBuf,
    _lock: Flock<File>,
}

impl Store {
    fn open(data_dir: &Path, network: &str) -> Result<Store> {
        let dir = data_dir.join(network);
        fs::create_dir_all(&dir)
            .map_err(|e| CniError::io(format!("failed to create {}", dir.display()), e))?;
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .mode(0o600)
            .open(dir.join("lock"))
            .map_err(|e| CniError::io("failed to open lock file", e))?;
        let lock = lock_with_timeout(file, lock_timeout())?;
        Ok(Store { dir, _lock: lock })
    }

    fn reserve(&self, id: &str, ifname: &str, ip: IpAddr, set: usize) -> Result<bool> {
        let path = self.dir.join(ip.to_string());
        let mut f = match OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o644)
            .open(&path)
        {
            Ok(f) => f,
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => return Ok(false),
            Err(e) => return Err(CniError::io("failed to reserve address", e)),
        };
        if let Err(e) = f.write_all(format!("{}{LINE_BREAK}{ifname}", id.trim()).as_bytes()) {
            let _ = fs::remove_file(&path);
            return Err(CniError::io("failed to write reservation", e));
        }
        fs::write(
            self.dir.join(format!("{LAST_IP_PREFIX}{set}")),
            ip.to_string(),
        )
        .map_err(|e| CniError::io("failed to write last reserved ip", e))?;
        Ok(true)
    }

    fn last_reserved(&self, set: usize) -> Option<IpAddr> {
        fs::read_to_string(self.dir.join(format!("{LAST_IP_PREFIX}{set}")))
            .ok()
            .and_then(|s| s.trim().parse().ok())
    }

    /// (ip, owner file content) of every allocation.
    fn allocations(&self) -> Vec<(IpAddr, PathBuf, String)> {
        let Ok(rd) = fs::read_dir(&self.dir) else {
            return Vec::new();
        };
        rd.flatten()
            .filter_map(|e| {
                let ip: IpAddr = e.file_name().to_str()?.parse().ok()?;
                let data = fs::read_to_string(e.path()).ok()?;
                Some((ip, e.path(), data.trim().to_string()))
            })
            .collect()
    }

    fn owned_by(data: &str, id: &str, ifname: &str) -> bool {
        let id = id.trim();
        data == format!("{id}{LINE_BREAK}{ifname}") || data == id
    }

    fn release(&self, id: &str, ifname: &str) {
        for (_, path, data) in self.allocations() {
            if Self::owned_by(&data, id, ifname) {
                let _ = fs::remove_file(path);
            }
        }
    }
}

fn allocate(
    store: &Store,
    set_idx: usize,
    set: &[Range],
    id: &str,
    ifname: &str,
) -> Result<IpAddr> {
    // Start after the last reserved address if it lies in this set, else at the first range.
    let (mut ri, mut cur) = (0usize, set[0].start);
    if let Some(last) = store.last_reserved(set_idx)
        && let Some(i) = set.iter().position(|r| r.contains(last))
    {
        ri = i;
        cur = last;
        (ri, cur) = step(set, ri, cur);
    }
    let first = (ri, cur);
    loop {
        let r = &set[ri];
        if cur != r.gateway && store.reserve(id, ifname, cur, set_idx)? {
            return Ok(cur);
        }
        (ri, cur) = step(set, ri, cur);
        if (ri, cur) == first {
            let (start, end) = (set[0].start, set[set.len() - 1].end);
            return Err(CniError::plugin(format!(
                "failed to allocate for range {set_idx}: no IP addresses available in range set: {start}-{end}"
            )));
        }
    }
}

/// Addresses the caller asks for: `IP=a,b` in CNI_ARGS, `args.cni.ips`, or the `ips`
/// capability in `runtimeConfig` (with or without a prefix length).
fn requested_ips(args: &Args, conf: &Value) -> Result<Vec<IpAddr>> {
    let mut raw: Vec<String> = Vec::new();
    if let Some(v) = args.arg("IP") {
        raw.extend(v.split(',').filter(|s| !s.is_empty()).map(String::from));
    }
    for list in [
        conf.pointer("/args/cni/ips"),
        conf.pointer("/runtimeConfig/ips"),
    ]
    .into_iter()
    .flatten()
    {
        let items = list
            .as_array()
            .ok_or_else(|| CniError::config("requested ips must be a list of strings"))?;
        for item in items {
            let s = item
                .as_str()
                .ok_or_else(|| CniError::config("requested ips must be a list of strings"))?;
            raw.push(s.to_string());
        }
    }
    let mut out = Vec::new();
    for s in raw {
        let addr = s.split('/').next().unwrap_or_default();
        let ip: IpAddr = addr
            .parse()
            .map_err(|_| CniError::config(format!("invalid requested IP {s:?}")))?;
        if !out.contains(&ip) {
            out.push(ip);
        }
    }
    Ok(out)
}

/// Reserves exactly `ip` (a requested address) in range set `set_idx`.
fn reserve_requested(
    store: &Store,
    set_idx: usize,
    set: &[Range],
    ip: IpAddr,
    id: &str,
    ifname: &str,
) -> Result<IpAddr> {
    if set.iter().any(|r| r.gateway == ip) {
        return Err(CniError::plugin(format!(
            "requested ip {ip} is the subnet's gateway"
        )));
    }
    if store.reserve(id, ifname, ip, set_idx)? {
        return Ok(ip);
    }
    let (start, end) = (set[0].start, set[set.len() - 1].end);
    Err(CniError::plugin(format!(
        "requested IP address {ip} is not available in range set {start}-{end}"
    )))
}

fn step(set: &[Range], ri: usize, cur: IpAddr) -> (usize, IpAddr) {
    if to_u128(cur) >= to_u128(set[ri].end) {
        let n = (ri + 1) % set.len();
        (n, set[n].start)
    } else {
        (ri, next_ip(cur))
    }
}

fn parse_resolv_conf(path: &Path) -> Result<Dns> {
    let text = fs::read_to_string(path)
        .map_err(|e| CniError::io(format!("failed to read {}", path.display()), e))?;
    let mut dns = Dns::default();
    for line in text.lines() {
        let mut f = line.split_whitespace();
        match f.next() {
            Some("nameserver") => dns.nameservers.extend(f.next().map(String::from)),
            Some("domain") => dns.domain = f.next().unwrap_or_default().to_string(),
            Some("search") => dns.search.extend(f.map(String::from)),
            Some("options") => dns.options.extend(f.map(String::from)),
            _ => {}
        }
    }
    Ok(dns)
}

pub struct HostLocal;

impl Plugin for HostLocal {
    fn validate(&self, conf: &Value) -> Result<()> {
        Config::parse(conf).map(|_| ())
    }

    fn add(&self, args: &Args, conf: &Value) -> Result<CniResult> {
        args.refuse_unknown(&["IP"])?;
        let c = Config::parse(conf)?;
        let mut result = CniResult::default();
        if let Some(rc) = &c.resolv_conf {
            result.dns = parse_resolv_conf(rc)?;
        }
        let requested = requested_ips(args, conf)?;
        let store = Store::open(&c.data_dir, &c.name)?;
        let mut assigned = Vec::new();
        for (i, set) in c.range_sets.iter().enumerate() {
            let wanted = requested
                .iter()
                .copied()
                .find(|ip| set.iter().any(|r| r.contains(*ip)));
            let got = match wanted {
                Some(ip) => {
                    assigned.push(ip);
                    reserve_requested(&store, i, set, ip, &args.container_id, &args.ifname)
                }
                None => allocate(&store, i, set, &args.container_id, &args.ifname),
            };
            match got {
                Ok(ip) => {
                    let r = set
                        .iter()
                        .find(|r| r.contains(ip))
                        .ok_or_else(|| CniError::plugin("allocated address outside ranges"))?;
                    let address = IpNet::new(ip, r.subnet.prefix_len())
                        .map_err(|e| CniError::plugin(e.to_string()))?;
                    result.ips.push(IpConfig {
                        interface: None,
                        address,
                        gateway: Some(r.gateway),
                    });
                }
                Err(e) => {
                    // Nothing of this ADD stays allocated.
                    store.release(&args.container_id, &args.ifname);
                    return Err(e);
                }
            }
        }
        let unassigned: Vec<IpAddr> = requested
            .iter()
            .copied()
            .filter(|ip| !assigned.contains(ip))
            .collect();
        if !unassigned.is_empty() {
            store.release(&args.container_id, &args.ifname);
            return Err(CniError::plugin(format!(
                "requested IPs {unassigned:?} were not assigned: no range set holds them"
            )));
        }
        result.routes = c.routes.clone();
        Ok(result)
    }

    fn del(&self, args: &Args, conf: &Value) -> Result<()> {
        args.refuse_unknown(&["IP"])?;
        let c = Config::parse(conf)?;
        let store = Store::open(&c.data_dir, &c.name)?;
        store.release(&args.container_id, &args.ifname);
        Ok(())
    }

    fn check(&self, args: &Args, conf: &Value) -> Result<()> {
        args.refuse_unknown(&["IP"])?;
        let c = Config::parse(conf)?;
        let store = Store::open(&c.data_dir, &c.name)?;
        let found = store
            .allocations()
            .iter()
            .any(|(_, _, d)| Store::owned_by(d, &args.container_id, &args.ifname));
        if found {
            Ok(())
        } else {
            // Nothing allocated for it: the container is unknown here (code 3).
            Err(CniError::new(
                Code::UnknownContainer,
                format!(
                    "host-local: Failed to find address added by container {}",
                    args.container_id
                ),
            ))
        }
    }

    fn status(&self, _args: &Args, conf: &Value) -> Result<()> {
        let c = Config::parse(conf)?;
        Store::open(&c.data_dir, &c.name).map(|_| ()).map_err(|e| {
            CniError::with_details(Code::PluginNotAvailable, "allocation store unavailable", e)
        })
    }

    fn gc(&self, _args: &Args, conf: &Value) -> Result<()> {
        let c = Config::parse(conf)?;
        let valid: Vec<(String, String)> = conf
            .get("cni.dev/valid-attachments")
            .and_then(Value::as_array)
            .map(|a| {
                a.iter()
                    .filter_map(|x| {
                        Some((
                            x.get("containerID")?.as_str()?.to_string(),
                            x.get("ifname")?.as_str()?.to_string(),
                        ))
                    })
                    .collect()
            })
            .unwrap_or_default();
        let store = Store::open(&c.data_dir, &c.name)?;
        for (_, path, data) in store.allocations() {
            if !valid
                .iter()
                .any(|(id, ifn)| Store::owned_by(&data, id, ifn))
            {
                let _ = fs::remove_file(path);
            }
        }
        Ok(())
    }
}
