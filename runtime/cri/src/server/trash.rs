//! Deleting retired snapshot trees off the RPCs. RemoveContainer retires its snapshot (a
//! rename within the snapshotter's `active/`) and hands the tree here; one thread deletes the
//! trees in order. A tree can take long to delete: on a filesystem mounted with `discard`
//! every freed extent is discarded synchronously (up to hundreds of ms per directory here).
//! containerd leaves snapshot deletion to its garbage collector for the same reason. Trees a
//! stopped keelsond did not get to are queued again at start.

use std::path::PathBuf;
use std::sync::mpsc;

pub struct Trash {
    tx: mpsc::Sender<PathBuf>,
}

impl Trash {
    /// Starts the deleting thread.
    pub fn start() -> std::io::Result<Trash> {
        let (tx, rx) = mpsc::channel::<PathBuf>();
        std::thread::Builder::new()
            .name("trash".into())
            .spawn(move || {
                for dir in rx {
                    remove(&dir);
                }
            })?;
        Ok(Trash { tx })
    }

    /// Queues `dir` for deletion (deleted here and now if the thread is gone).
    pub fn put(&self, dir: PathBuf) {
        if let Err(mpsc::SendError(dir)) = self.tx.send(dir) {
            remove(&dir);
        }
    }
}

fn remove(dir: &std::path::Path) {
    match keelson_image::snapshot::remove_tree(dir) {
        Ok(()) => tracing::debug!(dir = %dir.display(), "retired snapshot deleted"),
        Err(e) => tracing::warn!(dir = %dir.display(), error = %e, "deleting a retired snapshot"),
    }
}
