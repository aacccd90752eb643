//! keelsond's records of sandboxes and containers, so a restart rebuilds the daemon's view
//! from disk. The CRI configs are kept as their protobuf encoding: what the kubelet sent is
//! what a status call returns, field for field.
//!
//! The records live in one append-only log under the persistent root, one JSON entry per
//! line: a record put (the whole record, replacing any earlier one) or deleted.
//!
//! ```text
//! <root>/records.log
//! {"op":"put","kind":"sandbox","id":"<id>","record":{...}}
//! {"op":"delete","kind":"container","id":"<id>"}
//! ```
//!
//! One file, like containerd's bolt database, rather than a file per record: every pod puts
//! and deletes several records, and a file per write (temporary file + rename) costs an inode
//! allocation and a free each time. On an ext4 without a journal every allocation skips the
//! inodes freed in the last half minute one by one, so a burst of pod starts after a burst
//! of removals spent a third of keelsond's CPU there. An entry is appended and
//! `fdatasync`ed; a torn last line (a crash mid-append) is dropped when the log is read.
//! The log is rewritten with only the live records at every open and when it has grown to
//! twice their size plus [`COMPACT_SLACK`].
//!
//! Earlier versions kept a file per record under `<root>/sandboxes/` and
//! `<root>/containers/`; [`Store::open`] takes those records into the log and removes them.

use crate::sandbox::Infra;
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, HashMap};
use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Condvar, Mutex};

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("{context}: {source}")]
    Io {
        context: String,
        #[source]
        source: std::io::Error,
    },
    #[error("record {path}: {msg}")]
    Corrupt { path: PathBuf, msg: String },
}

type Result<T> = std::result::Result<T, StoreError>;

/// Bytes kept as base64 in the JSON records.
mod b64 {
    use base64::Engine;
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(v: &[u8], s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&base64::engine::general_purpose::STANDARD.encode(v))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<u8>, D::Error> {
        let s = String::deserialize(d)?;
        base64::engine::general_purpose::STANDARD
            .decode(s)
            .map_err(serde::de::Error::custom)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum SandboxState {
    Ready,
    NotReady,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SandboxRecord {
    pub id: String,
    /// The `PodSandboxConfig` as the kubelet sent it (protobuf).
    #[serde(with = "b64")]
    pub config: Vec<u8>,
    /// The labels of `config`, decoded when the record is put or loaded, so that List*
    /// filters every record on them without decoding its config; not stored.
    #[serde(skip)]
    pub labels: Arc<HashMap<String, String>>,
    /// The metadata of `config` (name, namespace, uid, attempt), decoded with the labels, so
    /// that RunPodSandbox finds a reserved name without decoding every record; not stored.
    #[serde(skip)]
    pub metadata: Option<Arc<keelson_proto::runtime::v1::PodSandboxMetadata>>,
    pub runtime_handler: String,
    pub created_at: i64,
    pub state: SandboxState,
    pub infra: Infra,
    /// Pod IPs from the CNI result, primary first.
    #[serde(default)]
    pub ips: Vec<String>,
    /// The CNI network attached (so DEL goes to the same one), if any.
    #[serde(default)]
    pub network: Option<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ContainerRecord {
    pub id: String,
    pub sandbox_id: String,
    /// The `ContainerConfig` as the kubelet sent it (protobuf).
    #[serde(with = "b64")]
    pub config: Vec<u8>,
    /// The labels of `config`, decoded when the record is put or loaded, so that List*
    /// filters every record on them without decoding its config; not stored.
    #[serde(skip)]
    pub labels: Arc<HashMap<String, String>>,
    /// The image as asked for, and the resolved image ID (config digest).
    pub image: String,
    pub image_id: String,
    /// The digested reference (`repo@sha256:...`) or, failing that, the image ID.
    pub image_ref: String,
    pub created_at: i64,
    #[serde(default)]
    pub started_at: i64,
    pub log_path: String,
    pub bundle: PathBuf,
    pub exit_file: PathBuf,
    /// The signal StopContainer sends first (from the image's StopSignal), as a number.
    pub stop_signal: i32,
    /// The identity the process runs with (uid, gid, supplementary groups), as created;
    /// absent in records written before it was kept.
    #[serde(default)]
    pub user: Option<ProcessUser>,
}

/// The user of a container's process (ContainerStatus.user).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct ProcessUser {
    pub uid: u32,
    pub gid: u32,
    pub additional_gids: Vec<u32>,
}

/// Bytes of dead entries the log may carry beyond the live records before it is rewritten.
pub const COMPACT_SLACK: u64 = 1 << 20;

const LOG: &str = "records.log";

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
enum Kind {
    Sandbox,
    Container,
}

impl Kind {
    /// The directory of this kind's records in the layout of earlier versions.
    fn legacy_dir(self) -> &'static str {
        match self {
            Kind::Sandbox => "sandboxes",
            Kind::Container => "containers",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
enum Op {
    Put,
    Delete,
}

/// One line of the log as read back.
#[derive(Deserialize)]
struct Entry {
    op: Op,
    kind: Kind,
    id: String,
    #[serde(default)]
    record: Option<serde_json::Value>,
}

/// The log's open handle and the JSON of every live record (what a rewrite writes).
struct Log {
    file: Arc<fs::File>,
    len: u64,
    /// Entries appended since the open (their numbers, for the group commit).
    appended: u64,
    live: BTreeMap<(Kind, String), Vec<u8>>,
    live_bytes: u64,
}

/// Group commit: one `fdatasync` at a time, covering every entry appended before it began;
/// an append waits until a flush that began after it has ended.
#[derive(Default)]
struct Flusher {
    state: Mutex<FlushState>,
    ended: Condvar,
}

#[derive(Default)]
struct FlushState {
    /// Entries up to this number are on disk.
    synced: u64,
    /// A flush is running.
    busy: bool,
    /// Flushes run since the open.
    flushes: u64,
    /// The highest entry number a failed flush covered, and its error: those entries may be
    /// lost whatever a later flush reports (a failed `fdatasync` may drop the dirty pages).
    failed: Option<(u64, String)>,
}

/// The record log (cheap to clone: the clones share it).
#[derive(Clone)]
pub struct Store {
    root: PathBuf,
    log: Arc<Mutex<Log>>,
    flusher: Arc<Flusher>,
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Store").field("root", &self.root).finish()
    }
}

fn io_err(context: String) -> impl FnOnce(std::io::Error) -> StoreError {
    move |source| StoreError::Io { context, source }
}

/// The text of one log line (with its newline).
fn line(op: Op, kind: Kind, id: &str, record: Option<&[u8]>) -> Vec<u8> {
    let op = match op {
        Op::Put => "put",
        Op::Delete => "delete",
    };
    let kind = match kind {
        Kind::Sandbox => "sandbox",
        Kind::Container => "container",
    };
    // An id is a JSON string of its own; serializing a &str cannot fail.
    let id = serde_json::to_string(id).unwrap_or_default();
    let mut out = format!(r#"{{"op":"{op}","kind":"{kind}","id":{id}"#).into_bytes();
    if let Some(r) = record {
        out.extend_from_slice(br#","record":"#);
        out.extend_from_slice(r);
    }
    out.extend_from_slice(b"}\n");
    out
}

fn open_append(path: &Path) -> Result<fs::File> {
    fs::OpenOptions::new()
        .append(true)
        .create(true)
        .open(path)
        .map_err(io_err(format!("opening {}", path.display())))
}

impl Store {
    /// Opens (or creates) the log under `root`, takes in the records of the earlier
    /// file-per-record layout, and rewrites the log with the live records only.
    pub fn open(root: &Path) -> Result<Store> {
        fs::create_dir_all(root).map_err(io_err(format!("creating {}", root.display())))?;
        let path = root.join(LOG);
        let mut live = BTreeMap::new();
        let legacy = load_legacy(root, &mut live)?;
        match fs::read(&path) {
            Ok(data) => replay(&path, &data, &mut live),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(io_err(format!("reading {}", path.display()))(e)),
        }
        let (file, len) = rewrite(root, &live)?;
        // Only now that the log holds them durably do the old files go.
        for dir in legacy {
            if let Err(e) = fs::remove_dir_all(&dir) {
                tracing::warn!(dir = %dir.display(), error = %e, "cannot remove the old record files");
            }
        }
        let live_bytes = live.values().map(|v| v.len() as u64).sum();
        Ok(Store {
            root: root.to_path_buf(),
            log: Arc::new(Mutex::new(Log {
                file: Arc::new(file),
                len,
                appended: 0,
                live,
                live_bytes,
            })),
            flusher: Arc::default(),
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Log> {
        self.log.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Appends one entry and makes it durable. The table is updated under the lock, so a
    /// rewrite racing with this append writes the new state; the `fdatasync` runs outside
    /// it, and concurrent appends share one (see [`Store::flush_through`]).
    fn append(&self, kind: Kind, id: &str, record: Option<Vec<u8>>) -> Result<()> {
        let path = self.root.join(LOG);
        let number = {
            let mut log = self.lock();
            let key = (kind, id.to_string());
            if record.is_none() && !log.live.contains_key(&key) {
                return Ok(());
            }
            let text = match &record {
                Some(r) => line(Op::Put, kind, id, Some(r)),
                None => line(Op::Delete, kind, id, None),
            };
            let prev = match record {
                Some(r) => {
                    log.live_bytes += r.len() as u64;
                    log.live.insert(key.clone(), r)
                }
                None => log.live.remove(&key),
            };
            if let Some(p) = &prev {
                log.live_bytes -= p.len() as u64;
            }
            if let Err(e) = (&*log.file).write_all(&text) {
                // Cut a partly written line off, so the next entry starts on a line of its
                // own, and put the table back as it was.
                let _ = log.file.set_len(log.len);
                match prev {
                    Some(p) => {
                        log.live_bytes += p.len() as u64;
                        if let Some(n) = log.live.insert(key, p) {
                            log.live_bytes -= n.len() as u64;
                        }
                    }
                    None => {
                        if let Some(n) = log.live.remove(&key) {
                            log.live_bytes -= n.len() as u64;
                        }
                    }
                }
                return Err(io_err(format!("appending to {}", path.display()))(e));
            }
            log.len += text.len() as u64;
            log.appended += 1;
            if log.len > 2 * log.live_bytes + COMPACT_SLACK {
                // The rewrite is durable by itself (written, fsynced, renamed in). If it
                // fails, the log goes on growing and the entry is synced below.
                match rewrite(&self.root, &log.live) {
                    Ok((file, len)) => {
                        log.file = Arc::new(file);
                        log.len = len;
                        return Ok(());
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, "cannot rewrite the record log; appending on");
                    }
                }
            }
            log.appended
        };
        self.flush_through(number)
            .map_err(io_err(format!("syncing {}", path.display())))
    }

    /// Returns once entry `number` is on disk: a flush that began after it was appended has
    /// ended. If none is running, this caller runs one, for every entry appended so far; else
    /// it waits for the running one to end and looks again. A burst of puts costs a few disk
    /// flushes instead of one each (each is a cache flush of the whole device).
    fn flush_through(&self, number: u64) -> std::io::Result<()> {
        let f = &self.flusher;
        let lock = || f.state.lock().unwrap_or_else(|p| p.into_inner());
        let mut st = lock();
        loop {
            if let Some((upto, msg)) = &st.failed
                && number <= *upto
            {
                return Err(std::io::Error::other(msg.clone()));
            }
            if st.synced >= number {
                return Ok(());
            }
            if !st.busy {
                break;
            }
            st = f.ended.wait(st).unwrap_or_else(|p| p.into_inner());
        }
        st.busy = true;
        drop(st);
        // Every entry up to `upto` is in this file, or in an older one whose rewrite into
        // this one was synced before it was renamed in.
        let (upto, file) = {
            let log = self.lock();
            (log.appended, log.file.clone())
        };
        let res = file.sync_data();
        let mut st = lock();
        st.busy = false;
        st.flushes += 1;
        match &res {
            Ok(()) => st.synced = st.synced.max(upto),
            Err(e) => {
                let upto = st.failed.as_ref().map_or(upto, |(u, _)| upto.max(*u));
                st.failed = Some((upto, e.to_string()));
            }
        }
        f.ended.notify_all();
        res
    }

    fn put<T: Serialize>(&self, kind: Kind, id: &str, v: &T) -> Result<()> {
        let data = serde_json::to_vec(v).map_err(|e| StoreError::Corrupt {
            path: self.root.join(LOG),
            msg: format!("{kind:?} {id}: {e}"),
        })?;
        self.append(kind, id, Some(data))
    }

    fn load_all<T: for<'de> Deserialize<'de>>(&self, kind: Kind) -> Vec<T> {
        let log = self.lock();
        let mut out = Vec::new();
        for ((k, id), data) in log.live.range((kind, String::new())..) {
            if *k != kind {
                break;
            }
            match serde_json::from_slice(data) {
                Ok(v) => out.push(v),
                Err(e) => {
                    tracing::error!(kind = ?kind, id = %id, error = %e, "skipping an unreadable record");
                }
            }
        }
        out
    }

    /// The size of the log file as written so far (for tests of the rewrite).
    #[cfg(test)]
    fn log_len(&self) -> u64 {
        self.lock().len
    }

    pub fn save_sandbox(&self, r: &SandboxRecord) -> Result<()> {
        self.put(Kind::Sandbox, &r.id, r)
    }

    pub fn remove_sandbox(&self, id: &str) -> Result<()> {
        self.append(Kind::Sandbox, id, None)
    }

    pub fn sandboxes(&self) -> Result<Vec<SandboxRecord>> {
        Ok(self.load_all(Kind::Sandbox))
    }

    pub fn save_container(&self, r: &ContainerRecord) -> Result<()> {
        self.put(Kind::Container, &r.id, r)
    }

    pub fn remove_container(&self, id: &str) -> Result<()> {
        self.append(Kind::Container, id, None)
    }

    pub fn containers(&self) -> Result<Vec<ContainerRecord>> {
        Ok(self.load_all(Kind::Container))
    }
}

/// Applies the log's lines to `live`. A line that does not parse is skipped with an error
/// (the records it would have changed keep their earlier state), except a last line without
/// its newline: that is an append a crash cut short, dropped with a warning.
fn replay(path: &Path, data: &[u8], live: &mut BTreeMap<(Kind, String), Vec<u8>>) {
    let mut rest = data;
    let mut n = 0usize;
    while !rest.is_empty() {
        n += 1;
        let (text, complete) = match rest.iter().position(|&b| b == b'\n') {
            Some(i) => {
                let t = &rest[..i];
                rest = &rest[i + 1..];
                (t, true)
            }
            None => {
                let t = rest;
                rest = &[];
                (t, false)
            }
        };
        if text.is_empty() {
            continue;
        }
        if !complete {
            tracing::warn!(path = %path.display(), line = n, "dropping a torn last entry");
            break;
        }
        let e: Entry = match serde_json::from_slice(text) {
            Ok(e) => e,
            Err(err) => {
                tracing::error!(path = %path.display(), line = n, error = %err, "skipping an unreadable entry");
                continue;
            }
        };
        match (e.op, e.record) {
            (Op::Put, Some(r)) => match serde_json::to_vec(&r) {
                Ok(bytes) => {
                    live.insert((e.kind, e.id), bytes);
                }
                Err(err) => {
                    tracing::error!(path = %path.display(), line = n, error = %err, "skipping an unreadable entry");
                }
            },
            (Op::Put, None) => {
                tracing::error!(path = %path.display(), line = n, "skipping a put without a record");
            }
            (Op::Delete, _) => {
                live.remove(&(e.kind, e.id));
            }
        }
    }
}

/// Reads the records of the file-per-record layout into `live`; returns the directories
/// that held them. Temporary files of interrupted writes are dropped (the record before
/// them stands), unreadable records skipped with an error.
fn load_legacy(root: &Path, live: &mut BTreeMap<(Kind, String), Vec<u8>>) -> Result<Vec<PathBuf>> {
    let mut dirs = Vec::new();
    for kind in [Kind::Sandbox, Kind::Container] {
        let dir = root.join(kind.legacy_dir());
        let entries = match fs::read_dir(&dir) {
            Ok(e) => e,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
            Err(e) => return Err(io_err(format!("reading {}", dir.display()))(e)),
        };
        for e in entries.flatten() {
            let p = e.path();
            let (Some(id), Some("json")) = (
                p.file_stem().and_then(|x| x.to_str()),
                p.extension().and_then(|x| x.to_str()),
            ) else {
                continue;
            };
            let data = fs::read(&p).map_err(io_err(format!("reading {}", p.display())))?;
            match serde_json::from_slice::<serde_json::Value>(&data) {
                Ok(v) if v.is_object() => {
                    // Compact JSON: a record is one line of the log.
                    let bytes = serde_json::to_vec(&v).map_err(|e| StoreError::Corrupt {
                        path: p.clone(),
                        msg: e.to_string(),
                    })?;
                    live.insert((kind, id.to_string()), bytes);
                }
                Ok(_) => {
                    tracing::error!(path = %p.display(), "skipping a record that is not an object");
                }
                Err(err) => {
                    tracing::error!(path = %p.display(), error = %err, "skipping an unreadable record");
                }
            }
        }
        dirs.push(dir);
    }
    Ok(dirs)
}

/// Writes a new log holding only `live`, durably (temporary file, fsync, rename, fsync of
/// the directory), and opens it for appending.
fn rewrite(root: &Path, live: &BTreeMap<(Kind, String), Vec<u8>>) -> Result<(fs::File, u64)> {
    let path = root.join(LOG);
    let tmp = root.join(format!("{LOG}.tmp"));
    let mut buf = Vec::with_capacity(live.values().map(|v| v.len() + 64).sum());
    for ((kind, id), data) in live {
        buf.extend_from_slice(&line(Op::Put, *kind, id, Some(data)));
    }
    let mut f = fs::File::create(&tmp).map_err(io_err(format!("creating {}", tmp.display())))?;
    f.write_all(&buf)
        .and_then(|()| f.sync_all())
        .map_err(io_err(format!("writing {}", tmp.display())))?;
    drop(f);
    fs::rename(&tmp, &path).map_err(io_err(format!("renaming {}", path.display())))?;
    fs::File::open(root)
        .and_then(|d| d.sync_all())
        .map_err(io_err(format!("syncing {}", root.display())))?;
    Ok((open_append(&path)?, buf.len() as u64))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sandbox(id: &str, config: Vec<u8>) -> SandboxRecord {
        SandboxRecord {
            id: id.into(),
            config,
            labels: Default::default(),
            metadata: None,
            runtime_handler: String::new(),
            created_at: 7,
            state: SandboxState::Ready,
            infra: Infra::default(),
            ips: vec!["10.0.0.2".into()],
            network: Some("kt".into()),
        }
    }

    fn ids(s: &Store) -> Vec<String> {
        s.sandboxes()
            .expect("load")
            .into_iter()
            .map(|r| r.id)
            .collect()
    }

    /// Puts made while a flush runs wait for it and are then flushed together, by one.
    #[test]
    fn puts_waiting_on_a_running_flush_share_the_next_one() {
        let dir = tempfile::tempdir().expect("tmp");
        let s = Store::open(dir.path()).expect("open");
        // As if a flush were running.
        s.flusher.state.lock().expect("flusher").busy = true;
        let puts: Vec<_> = (0..3)
            .map(|i| {
                let s = s.clone();
                std::thread::spawn(move || s.save_sandbox(&sandbox(&format!("p{i}"), vec![i])))
            })
            .collect();
        // All three are appended (and waiting) before the flush ends.
        while s.lock().appended < 3 {
            std::thread::sleep(std::time::Duration::from_millis(1));
        }
        {
            let mut st = s.flusher.state.lock().expect("flusher");
            st.busy = false;
            s.flusher.ended.notify_all();
        }
        for p in puts {
            p.join().expect("thread").expect("put");
        }
        let st = s.flusher.state.lock().expect("flusher");
        assert_eq!(st.flushes, 1, "one flush for the three puts");
        assert_eq!(st.synced, 3);
        drop(st);
        drop(s);
        let s = Store::open(dir.path()).expect("reopen");
        assert_eq!(ids(&s), vec!["p0", "p1", "p2"]);
    }

    /// The entries a failed flush covered are reported failed, also to a put that looks after
    /// a later flush succeeded; later entries are flushed anew.
    #[test]
    fn a_failed_flush_fails_the_entries_it_covered() {
        let dir = tempfile::tempdir().expect("tmp");
        let s = Store::open(dir.path()).expect("open");
        s.save_sandbox(&sandbox("a", vec![1])).expect("put");
        s.save_sandbox(&sandbox("b", vec![2])).expect("put");
        s.flusher.state.lock().expect("flusher").failed = Some((2, "disk gone".into()));
        let e = s
            .flush_through(2)
            .expect_err("entry 2 was in the failed flush");
        assert!(e.to_string().contains("disk gone"), "{e}");
        s.save_sandbox(&sandbox("c", vec![3]))
            .expect("entry 3 comes after");
        let e = s.flush_through(1).expect_err("still failed");
        assert!(e.to_string().contains("disk gone"), "{e}");
    }

    #[test]
    fn records_survive_a_reopen_and_the_last_put_wins() {
        let dir = tempfile::tempdir().expect("tmp");
        let s = Store::open(dir.path()).expect("open");
        s.save_sandbox(&sandbox("abc", vec![0, 1, 2, 255]))
            .expect("save");
        let mut r = sandbox("abc", vec![9]);
        r.state = SandboxState::NotReady;
        s.save_sandbox(&r).expect("save again");
        s.save_sandbox(&sandbox("gone", vec![1])).expect("save");
        s.remove_sandbox("gone").expect("rm");
        drop(s);
        let s = Store::open(dir.path()).expect("reopen");
        let all = s.sandboxes().expect("load");
        assert_eq!(all.len(), 1);
        assert_eq!(all[0].id, "abc");
        assert_eq!(all[0].config, vec![9]);
        assert_eq!(all[0].state, SandboxState::NotReady);
        assert_eq!(all[0].ips, vec!["10.0.0.2".to_string()]);
        assert!(s.containers().expect("load").is_empty());
        // The reopen rewrote the log with the one live record.
        let text = fs::read_to_string(dir.path().join(LOG)).expect("log");
        assert_eq!(text.lines().count(), 1, "{text}");
        // Deleting an unknown id is fine and writes nothing.
        let before = s.log_len();
        s.remove_sandbox("nope").expect("rm unknown");
        assert_eq!(s.log_len(), before);
        s.remove_sandbox("abc").expect("rm");
        assert!(s.sandboxes().expect("load").is_empty());
    }

    #[test]
    fn a_torn_last_entry_and_an_unreadable_line_are_skipped() {
        let dir = tempfile::tempdir().expect("tmp");
        let s = Store::open(dir.path()).expect("open");
        s.save_sandbox(&sandbox("a", vec![1])).expect("save");
        drop(s);
        let log = dir.path().join(LOG);
        let mut text = fs::read(&log).expect("log");
        text.extend_from_slice(b"{\"op\":\"put\",\"kind\":\"sandbox\"\n");
        text.extend_from_slice(b"{\"op\":\"explode\",\"kind\":\"sandbox\",\"id\":\"a\"}\n");
        text.extend_from_slice(&line(
            Op::Put,
            Kind::Sandbox,
            "b",
            Some(&serde_json::to_vec(&sandbox("b", vec![2])).expect("json")),
        ));
        // A crash in the middle of an append: the delete of "a" never completed.
        text.extend_from_slice(b"{\"op\":\"delete\",\"kind\":\"sandbox\",\"id\":\"a");
        fs::write(&log, &text).expect("write");
        let s = Store::open(dir.path()).expect("reopen");
        assert_eq!(ids(&s), vec!["a".to_string(), "b".to_string()]);
        // What the reopen wrote back parses line by line.
        let text = fs::read_to_string(&log).expect("log");
        assert_eq!(text.lines().count(), 2, "{text}");
        assert!(text.ends_with('\n'));
    }

    #[test]
    fn records_of_the_file_per_record_layout_move_into_the_log() {
        let dir = tempfile::tempdir().expect("tmp");
        let sd = dir.path().join("sandboxes");
        let cd = dir.path().join("containers");
        fs::create_dir_all(&sd).expect("mkdir");
        fs::create_dir_all(&cd).expect("mkdir");
        // Pretty-printed (the old writer wrote compact JSON): the log still gets one line.
        let json = serde_json::to_vec_pretty(&sandbox("old", vec![3, 4])).expect("json");
        fs::write(sd.join("old.json"), &json).expect("record");
        fs::write(sd.join("zzz.json.tmp"), b"{half").expect("tmp");
        fs::write(sd.join("bad.json"), b"{half").expect("bad");
        let s = Store::open(dir.path()).expect("open");
        assert_eq!(ids(&s), vec!["old".to_string()]);
        assert_eq!(s.sandboxes().expect("load")[0].config, vec![3, 4]);
        assert!(
            !sd.exists() && !cd.exists(),
            "the old record dirs are removed"
        );
        drop(s);
        let s = Store::open(dir.path()).expect("reopen");
        assert_eq!(ids(&s), vec!["old".to_string()]);
    }

    #[test]
    fn the_log_is_rewritten_when_dead_entries_pile_up() {
        let dir = tempfile::tempdir().expect("tmp");
        let s = Store::open(dir.path()).expect("open");
        s.save_sandbox(&sandbox("keep", vec![5])).expect("save");
        let big = vec![7u8; 200 * 1024];
        // Every append grows the log; a rewrite shrinks it.
        let (mut appended, mut shrank) = (0, 0);
        for i in 0..12 {
            let id = format!("churn{i}");
            for step in 0..2 {
                let before = s.log_len();
                if step == 0 {
                    s.save_sandbox(&sandbox(&id, big.clone())).expect("save");
                } else {
                    s.remove_sandbox(&id).expect("rm");
                }
                let after = s.log_len();
                if after > before {
                    appended += after - before;
                } else {
                    shrank += 1;
                }
            }
        }
        let on_disk = fs::metadata(dir.path().join(LOG)).expect("stat").len();
        assert_eq!(on_disk, s.log_len());
        assert!(
            appended > 2 * COMPACT_SLACK,
            "the churn passed the slack: {appended}"
        );
        assert!(shrank >= 1, "the log was rewritten");
        assert!(
            on_disk <= COMPACT_SLACK,
            "{on_disk} bytes on disk after {appended} appended"
        );
        // Appends after a rewrite go to the new file.
        s.save_sandbox(&sandbox("late", vec![6])).expect("save");
        drop(s);
        let s = Store::open(dir.path()).expect("reopen");
        assert_eq!(ids(&s), vec!["keep".to_string(), "late".to_string()]);
    }
}
