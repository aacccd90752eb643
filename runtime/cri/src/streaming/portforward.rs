//! Port forward: a TCP connection to `127.0.0.1:<port>` inside the pod's network namespace,
//! relayed to one client stream.
//!
//! The connection is made on a thread of its own that joins the sandbox's pinned netns
//! (`setns` changes only the calling thread's namespace, which must never be a tokio worker
//! shared with other tasks) and ends right after; the connected socket keeps its namespace
//! and is handed back to tokio. A pod on the host network is connected to from here.
//!
//! Like containerd: once one direction ended, the other gets one more second.

use std::fs::File;
use std::io;
use std::net::{Ipv4Addr, SocketAddr, TcpStream as StdTcpStream};
use std::path::PathBuf;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::{mpsc, oneshot};

/// How long a connection attempt may take.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// How long the second direction may go on after the first ended.
pub const LINGER: Duration = Duration::from_secs(1);

/// Connects to `127.0.0.1:port` in the network namespace at `netns` (`None`: this one).
pub async fn connect(netns: Option<PathBuf>, port: u16) -> io::Result<TcpStream> {
    let (tx, rx) = oneshot::channel();
    std::thread::Builder::new()
        .name("keelsond-netns-connect".into())
        .spawn(move || {
            let _ = tx.send(connect_in(netns, port));
        })?;
    let s = rx
        .await
        .map_err(|_| io::Error::other("the connecting thread died"))??;
    s.set_nonblocking(true)?;
    TcpStream::from_std(s)
}

/// Runs on a thread of its own: joins `netns`, connects, and the thread ends.
fn connect_in(netns: Option<PathBuf>, port: u16) -> io::Result<StdTcpStream> {
    if let Some(path) = &netns {
        let f = File::open(path)
            .map_err(|e| io::Error::new(e.kind(), format!("opening {}: {e}", path.display())))?;
        nix::sched::setns(&f, nix::sched::CloneFlags::CLONE_NEWNET).map_err(|e| {
            io::Error::other(format!(
                "joining the network namespace {}: {e}",
                path.display()
            ))
        })?;
    }
    let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
    StdTcpStream::connect_timeout(&addr, CONNECT_TIMEOUT)
}

/// Relays between `conn` and a client stream until one direction ended (and the other had
/// [`LINGER`] more). `from_client` closing ends the client's direction (the pod's side gets a
/// FIN); what the pod sends goes to `to_client` wrapped by `wrap`.
pub async fn relay<T: Send>(
    conn: TcpStream,
    mut from_client: mpsc::Receiver<Vec<u8>>,
    to_client: mpsc::Sender<T>,
    wrap: impl Fn(Vec<u8>) -> T,
) -> io::Result<()> {
    let (mut rd, mut wr) = conn.into_split();
    let up = async move {
        while let Some(d) = from_client.recv().await {
            wr.write_all(&d).await?;
        }
        wr.shutdown().await
    };
    let down = async move {
        let mut buf = vec![0u8; 32 * 1024];
        loop {
            let n = rd.read(&mut buf).await?;
            if n == 0 {
                return Ok(());
            }
            if to_client.send(wrap(buf[..n].to_vec())).await.is_err() {
                return Ok(());
            }
        }
    };
    tokio::pin!(up);
    tokio::pin!(down);
    let (first, up_done) = tokio::select! {
        r = &mut up => (r, true),
        r = &mut down => (r, false),
    };
    let second = if up_done {
        tokio::time::timeout(LINGER, &mut down).await
    } else {
        tokio::time::timeout(LINGER, &mut up).await
    };
    first?;
    match second {
        Ok(r) => r,
        Err(_) => Ok(()),
    }
}
