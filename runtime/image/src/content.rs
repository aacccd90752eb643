//! The content store: blobs on disk by digest.
//!
//! `blobs/<alg>/<hex>` holds verified content only. Downloads and imports write
//! `ingest/<alg>-<hex>.partial` under the blob's lock (`ingest/<alg>-<hex>.lock`), hash while
//! writing, and commit by fsync + rename + directory fsync once size and digest match. A crash
//! or a failed download leaves at most a `.partial` file: a download resumes it (its bytes are
//! hashed again and the rest is asked for with an HTTP range, as containerd's content store
//! keeps ingests), other writers truncate it; the digest is always checked over the whole.

use std::fs::{self, File, OpenOptions};
use std::io::{Read, Seek, Write};
use std::path::{Path, PathBuf};

use crate::digest::{Digest, Hasher};
use crate::error::{Error, Result, io_err};
use crate::fsutil::{self, FileLock};

/// Largest manifest, index or config read into memory.
pub const MAX_METADATA_BLOB: u64 = 8 << 20;

/// Blobs by digest under one directory.
#[derive(Debug, Clone)]
pub struct ContentStore {
    root: PathBuf,
}

impl ContentStore {
    /// Opens (creating) the store in `root`.
    pub fn open(root: &Path) -> Result<Self> {
        for d in ["blobs/sha256", "blobs/sha512", "ingest"] {
            fsutil::mkdir_p(&root.join(d))?;
        }
        Ok(Self {
            root: root.to_path_buf(),
        })
    }

    /// Where a committed blob lives.
    pub fn path(&self, d: &Digest) -> PathBuf {
        self.root.join("blobs").join(d.algorithm()).join(d.hex())
    }

    /// Whether the blob is committed.
    pub fn has(&self, d: &Digest) -> bool {
        self.path(d).is_file()
    }

    /// Size of a committed blob.
    pub fn size(&self, d: &Digest) -> Result<u64> {
        let p = self.path(d);
        match fs::metadata(&p) {
            Ok(m) => Ok(m.len()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                Err(Error::BlobNotFound(d.to_string()))
            }
            Err(e) => Err(io_err("stat", p)(e)),
        }
    }

    /// Opens a committed blob.
    pub fn open_blob(&self, d: &Digest) -> Result<File> {
        let p = self.path(d);
        File::open(&p).map_err(|e| {
            if e.kind() == std::io::ErrorKind::NotFound {
                Error::BlobNotFound(d.to_string())
            } else {
                io_err("open", p)(e)
            }
        })
    }

    /// Reads a small committed blob (manifest, index, config) into memory.
    pub fn read(&self, d: &Digest) -> Result<Vec<u8>> {
        let f = self.open_blob(d)?;
        let mut data = Vec::new();
        f.take(MAX_METADATA_BLOB + 1)
            .read_to_end(&mut data)
            .map_err(io_err("read", self.path(d)))?;
        if data.len() as u64 > MAX_METADATA_BLOB {
            return Err(crate::error::malformed(
                d.to_string(),
                format!("larger than {MAX_METADATA_BLOB} bytes"),
            ));
        }
        Ok(data)
    }

    /// Takes the ingest lock of a blob (blocks while another writer holds it).
    pub fn lock(&self, d: &Digest) -> Result<FileLock> {
        FileLock::exclusive(&self.root.join("ingest").join(format!(
            "{}-{}.lock",
            d.algorithm(),
            d.hex()
        )))
    }

    /// Starts writing a blob. Hold [`ContentStore::lock`] for the digest while writing.
    pub fn writer(&self, expected: &Digest, size: Option<u64>) -> Result<BlobWriter> {
        let partial = self.partial_path(expected);
        let file = OpenOptions::new()
            .create(true)
            .write(true)
            .truncate(true)
            .open(&partial)
            .map_err(io_err("create", &partial))?;
        Ok(BlobWriter {
            file,
            partial,
            target: self.path(expected),
            expected: expected.clone(),
            size,
            hasher: expected.hasher(),
            written: 0,
        })
    }

    /// Continues a blob from the bytes its `.partial` file already holds (hashing them again),
    /// or starts it empty when there is none or it holds more than `size`. Hold
    /// [`ContentStore::lock`] for the digest while writing; [`BlobWriter::offset`] says where
    /// the download must continue.
    pub fn resume_writer(&self, expected: &Digest, size: Option<u64>) -> Result<BlobWriter> {
        let partial = self.partial_path(expected);
        let mut file = OpenOptions::new()
            .create(true)
            .read(true)
            .write(true)
            .truncate(false)
            .open(&partial)
            .map_err(io_err("open", &partial))?;
        let mut hasher = expected.hasher();
        let mut written = 0u64;
        let len = file.metadata().map_err(io_err("stat", &partial))?.len();
        if size.is_none_or(|s| len <= s) {
            let mut buf = vec![0u8; 256 << 10];
            loop {
                let n = file.read(&mut buf).map_err(io_err("read", &partial))?;
                if n == 0 {
                    break;
                }
                hasher.update(&buf[..n]);
                written += n as u64;
            }
        }
        let mut w = BlobWriter {
            file,
            partial,
            target: self.path(expected),
            expected: expected.clone(),
            size,
            hasher,
            written,
        };
        if written != len {
            w.reset()?;
        }
        Ok(w)
    }

    fn partial_path(&self, d: &Digest) -> PathBuf {
        self.root
            .join("ingest")
            .join(format!("{}-{}.partial", d.algorithm(), d.hex()))
    }

    /// Writes a whole blob from memory (verified) unless it is already there.
    pub fn put(&self, expected: &Digest, data: &[u8]) -> Result<()> {
        if self.has(expected) {
            return Ok(());
        }
        let _lock = self.lock(expected)?;
        if self.has(expected) {
            return Ok(());
        }
        let mut w = self.writer(expected, Some(data.len() as u64))?;
        w.write_chunk(data)?;
        w.commit()
    }

    /// Copies a blob from a reader (verified) unless it is already there.
    pub fn put_reader(&self, expected: &Digest, size: Option<u64>, r: &mut dyn Read) -> Result<()> {
        if self.has(expected) {
            return Ok(());
        }
        let _lock = self.lock(expected)?;
        if self.has(expected) {
            return Ok(());
        }
        let mut w = self.writer(expected, size)?;
        let mut buf = vec![0u8; 256 << 10];
        loop {
            let n = r.read(&mut buf).map_err(io_err("read", "blob source"))?;
            if n == 0 {
                break;
            }
            w.write_chunk(&buf[..n])?;
        }
        w.commit()
    }

    /// Stores content whose digest is not known in advance (docker-archive layers): hashes
    /// it while writing and commits it under the sha256 it turns out to have.
    pub fn put_unknown(&self, r: &mut dyn Read) -> Result<(Digest, u64)> {
        static SEQ: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
        let tmp = self.root.join("ingest").join(format!(
            "unknown-{}-{}.partial",
            std::process::id(),
            SEQ.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
        ));
        let res = (|| {
            let mut f = File::create(&tmp).map_err(io_err("create", &tmp))?;
            let mut hr = crate::digest::HashingReader::new(r, Hasher::sha256());
            std::io::copy(&mut hr, &mut f).map_err(io_err("write", &tmp))?;
            let (d, n) = hr.finish();
            f.sync_all().map_err(io_err("fsync", &tmp))?;
            let target = self.path(&d);
            fs::rename(&tmp, &target).map_err(io_err("rename", &target))?;
            fsutil::sync_dir(&self.root.join("blobs").join(d.algorithm()))?;
            Ok((d, n))
        })();
        if res.is_err() {
            let _ = fs::remove_file(&tmp);
        }
        res
    }

    /// All committed blobs.
    pub fn list(&self) -> Result<Vec<Digest>> {
        let mut out = Vec::new();
        for alg in ["sha256", "sha512"] {
            let dir = self.root.join("blobs").join(alg);
            for e in fs::read_dir(&dir).map_err(io_err("read dir", &dir))? {
                let e = e.map_err(io_err("read dir", &dir))?;
                if let Some(name) = e.file_name().to_str()
                    && let Ok(d) = Digest::parse(&format!("{alg}:{name}"))
                {
                    out.push(d);
                }
            }
        }
        Ok(out)
    }

    /// Removes a blob and its ingest leftovers.
    pub fn delete(&self, d: &Digest) -> Result<()> {
        let p = self.path(d);
        match fs::remove_file(&p) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(io_err("remove", p)(e)),
        }
        let ingest = self.root.join("ingest");
        for suffix in ["partial", "lock"] {
            let _ = fs::remove_file(ingest.join(format!("{}-{}.{suffix}", d.algorithm(), d.hex())));
        }
        Ok(())
    }

    /// Removes every ingest file (call with the store's exclusive lock held: no writer runs).
    pub fn clean_ingest(&self) -> Result<usize> {
        let dir = self.root.join("ingest");
        let mut n = 0;
        for e in fs::read_dir(&dir).map_err(io_err("read dir", &dir))? {
            let e = e.map_err(io_err("read dir", &dir))?;
            if fs::remove_file(e.path()).is_ok() {
                n += 1;
            }
        }
        Ok(n)
    }

    /// Bytes held in `.partial` files (for tests and `ls`).
    pub fn partials(&self) -> Result<Vec<PathBuf>> {
        let dir = self.root.join("ingest");
        let mut out = Vec::new();
        for e in fs::read_dir(&dir).map_err(io_err("read dir", &dir))? {
            let e = e.map_err(io_err("read dir", &dir))?;
            if e.path().extension().is_some_and(|x| x == "partial") {
                out.push(e.path());
            }
        }
        Ok(out)
    }
}

/// A blob being written; verified and renamed into place by [`BlobWriter::commit`].
pub struct BlobWriter {
    file: File,
    partial: PathBuf,
    target: PathBuf,
    expected: Digest,
    size: Option<u64>,
    hasher: Hasher,
    written: u64,
}

impl BlobWriter {
    /// Bytes written so far (where a resumed download continues).
    pub fn offset(&self) -> u64 {
        self.written
    }

    /// Drops what was written and starts over (a server that ignored a range request).
    pub fn reset(&mut self) -> Result<()> {
        self.file
            .set_len(0)
            .map_err(io_err("truncate", &self.partial))?;
        self.file
            .seek(std::io::SeekFrom::Start(0))
            .map_err(io_err("seek", &self.partial))?;
        self.hasher = self.expected.hasher();
        self.written = 0;
        Ok(())
    }

    /// Appends a chunk; refuses content that grows past the expected size.
    pub fn write_chunk(&mut self, data: &[u8]) -> Result<()> {
        self.written += data.len() as u64;
        if let Some(size) = self.size
            && self.written > size
        {
            return Err(Error::SizeMismatch {
                digest: self.expected.to_string(),
                expected: size,
                actual: self.written,
            });
        }
        self.hasher.update(data);
        self.file
            .write_all(data)
            .map_err(io_err("write", &self.partial))
    }

    /// Verifies size and digest, then makes the blob durable and visible.
    pub fn commit(self) -> Result<()> {
        let BlobWriter {
            file,
            partial,
            target,
            expected,
            size,
            hasher,
            written,
        } = self;
        let fail = |e: Error| {
            let _ = fs::remove_file(&partial);
            e
        };
        if let Some(size) = size
            && size != written
        {
            return Err(fail(Error::SizeMismatch {
                digest: expected.to_string(),
                expected: size,
                actual: written,
            }));
        }
        let actual = hasher.finish();
        expected.verify(&actual).map_err(fail)?;
        file.sync_all().map_err(io_err("fsync", &partial))?;
        drop(file);
        fs::rename(&partial, &target).map_err(io_err("rename", &target))?;
        if let Some(dir) = target.parent() {
            fsutil::sync_dir(dir)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn put_verifies() {
        let dir = tempfile::tempdir().unwrap();
        let cs = ContentStore::open(dir.path()).unwrap();
        let d = Digest::sha256_of(b"hello");
        cs.put(&d, b"hello").unwrap();
        assert_eq!(cs.read(&d).unwrap(), b"hello");
        let other = Digest::sha256_of(b"other");
        let err = cs.put(&other, b"hello").unwrap_err();
        assert!(matches!(err, Error::DigestMismatch { .. }), "{err}");
        assert!(!cs.has(&other));
        assert!(cs.partials().unwrap().is_empty());
    }
}
