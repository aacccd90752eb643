//! One SPDY/3.1 server connection: a reader task that parses frames and a writer task that
//! sends them, so sessions only see streams and commands.
//!
//! - Each SYN_STREAM the client sends is answered with a SYN_REPLY at once (as the kubelet's
//!   server does) and handed out as a [`Stream`]: its headers and a channel of its DATA,
//!   which closes when the client half-closes it (FIN), resets it, or the connection ends.
//! - PINGs are echoed; SETTINGS, WINDOW_UPDATE and HEADERS are read and ignored (upstream's
//!   SPDY library does no flow control); GOAWAY ends reading.
//! - [`Cmd`]s go out in order; `GoAway` sends GOAWAY and closes the connection.

use super::frame::{self, HEADER_LEN, Head, HeaderDeflater, HeaderInflater};
use std::collections::HashMap;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadHalf, WriteHalf};
use tokio::sync::{mpsc, watch};

/// A stream the client opened.
#[derive(Debug)]
pub struct Stream {
    pub id: u32,
    /// Header names are lowercase.
    pub headers: Vec<(String, String)>,
    /// The client's DATA; closes at FIN, RST or the end of the connection.
    pub data: mpsc::Receiver<Vec<u8>>,
}

impl Stream {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

/// What the server sends.
#[derive(Debug)]
pub enum Cmd {
    Data { id: u32, data: Vec<u8>, fin: bool },
    Rst { id: u32, status: u32 },
    GoAway,
}

enum Out {
    Cmd(Cmd),
    Reply(u32),
    Ping(u32),
}

/// The session's view of a connection.
pub struct Conn {
    /// New streams, in the order the client opened them; closes when reading ended.
    pub streams: mpsc::Receiver<Stream>,
    /// Becomes true when the client's side ended (EOF, error, GOAWAY).
    pub closed: watch::Receiver<bool>,
    tx: mpsc::Sender<Out>,
    reader: tokio::task::JoinHandle<()>,
    writer: tokio::task::JoinHandle<()>,
}

/// A handle to send commands.
#[derive(Clone)]
pub struct Sender(mpsc::Sender<Out>);

impl Sender {
    /// Queues a command; false once the connection is gone.
    pub async fn send(&self, c: Cmd) -> bool {
        self.0.send(Out::Cmd(c)).await.is_ok()
    }
}

impl Conn {
    pub fn start<S: AsyncRead + AsyncWrite + Send + 'static>(io: S) -> Result<Conn, String> {
        let (rd, wr) = tokio::io::split(io);
        let (tx, rx) = mpsc::channel(64);
        let (streams_tx, streams) = mpsc::channel(16);
        let (closed_tx, closed) = watch::channel(false);
        let deflater = HeaderDeflater::new()?;
        let writer = tokio::spawn(write_loop(wr, rx, deflater));
        let reader = tokio::spawn(read_loop(rd, tx.clone(), streams_tx, closed_tx));
        Ok(Conn {
            streams,
            closed,
            tx,
            reader,
            writer,
        })
    }

    pub fn sender(&self) -> Sender {
        Sender(self.tx.clone())
    }

    /// Sends GOAWAY after what is queued, closes the connection and stops reading.
    pub async fn close(self) {
        let _ = self.tx.send(Out::Cmd(Cmd::GoAway)).await;
        drop(self.tx);
        let _ = tokio::time::timeout(std::time::Duration::from_secs(10), self.writer).await;
        self.reader.abort();
    }
}

async fn write_loop<W: AsyncWrite>(
    wr: WriteHalf<W>,
    mut rx: mpsc::Receiver<Out>,
    mut z: HeaderDeflater,
) {
    let mut wr = wr;
    let mut last_stream = 0u32;
    while let Some(o) = rx.recv().await {
        let mut buf = Vec::new();
        let mut end = false;
        match o {
            Out::Reply(id) => {
                last_stream = last_stream.max(id);
                if let Err(e) = frame::syn_reply(&mut buf, &mut z, id, &[], false) {
                    tracing::warn!(error = %e, "SPDY: compressing a reply");
                    return;
                }
            }
            Out::Ping(id) => frame::ping(&mut buf, id),
            Out::Cmd(Cmd::Data { id, data, fin }) => frame::data(&mut buf, id, &data, fin),
            Out::Cmd(Cmd::Rst { id, status }) => frame::rst_stream(&mut buf, id, status),
            Out::Cmd(Cmd::GoAway) => {
                frame::goaway(&mut buf, last_stream, 0);
                end = true;
            }
        }
        if wr.write_all(&buf).await.is_err() {
            return;
        }
        if end {
            let _ = wr.flush().await;
            let _ = wr.shutdown().await;
            return;
        }
    }
}

async fn read_exact_or_eof<R: AsyncRead>(rd: &mut ReadHalf<R>, buf: &mut [u8]) -> Option<()> {
    rd.read_exact(buf).await.ok().map(|_| ())
}

async fn read_loop<R: AsyncRead>(
    mut rd: ReadHalf<R>,
    tx: mpsc::Sender<Out>,
    streams: mpsc::Sender<Stream>,
    closed: watch::Sender<bool>,
) {
    let mut inflater = HeaderInflater::default();
    let mut open: HashMap<u32, mpsc::Sender<Vec<u8>>> = HashMap::new();
    let mut last_id = 0u32;
    if let Err(e) = read_frames(
        &mut rd,
        &tx,
        &streams,
        &mut inflater,
        &mut open,
        &mut last_id,
    )
    .await
    {
        tracing::debug!(error = %e, "SPDY connection read");
    }
    open.clear();
    let _ = closed.send(true);
}

async fn read_frames<R: AsyncRead>(
    rd: &mut ReadHalf<R>,
    tx: &mpsc::Sender<Out>,
    streams: &mpsc::Sender<Stream>,
    inflater: &mut HeaderInflater,
    open: &mut HashMap<u32, mpsc::Sender<Vec<u8>>>,
    last_id: &mut u32,
) -> Result<(), String> {
    loop {
        let mut h = [0u8; HEADER_LEN];
        if read_exact_or_eof(rd, &mut h).await.is_none() {
            return Ok(());
        }
        let head = Head::parse(&h);
        let mut payload = vec![0u8; head.len()];
        read_exact_or_eof(rd, &mut payload)
            .await
            .ok_or("connection ended inside a frame")?;
        match head {
            Head::Data { stream, flags, .. } => {
                if let Some(s) = open.get(&stream) {
                    if !payload.is_empty() && s.send(payload).await.is_err() {
                        open.remove(&stream);
                    }
                    if flags & frame::FLAG_FIN != 0 {
                        open.remove(&stream);
                    }
                }
            }
            Head::Control { version, .. } if version != frame::VERSION => {
                return Err(format!("SPDY version {version} (want 3)"));
            }
            Head::Control { kind, flags, .. } => match kind {
                frame::SYN_STREAM => {
                    let w = |i: usize| -> Result<u32, String> {
                        payload
                            .get(i..i + 4)
                            .map(|b| u32::from_be_bytes([b[0], b[1], b[2], b[3]]))
                            .ok_or_else(|| "short SYN_STREAM".to_string())
                    };
                    let id = w(0)? & 0x7fff_ffff;
                    let block = payload.get(10..).ok_or("short SYN_STREAM")?;
                    let headers = frame::decode_headers(&inflater.inflate(block)?)?;
                    if id == 0 || id % 2 == 0 || id <= *last_id {
                        let _ = tx
                            .send(Out::Cmd(Cmd::Rst {
                                id,
                                status: frame::RST_PROTOCOL_ERROR,
                            }))
                            .await;
                        continue;
                    }
                    *last_id = id;
                    if tx.send(Out::Reply(id)).await.is_err() {
                        return Ok(());
                    }
                    let (dtx, drx) = mpsc::channel(16);
                    if flags & frame::FLAG_FIN == 0 {
                        open.insert(id, dtx);
                    }
                    let s = Stream {
                        id,
                        headers,
                        data: drx,
                    };
                    if streams.send(s).await.is_err() {
                        // Nobody takes streams any more: refuse it.
                        open.remove(&id);
                        let _ = tx
                            .send(Out::Cmd(Cmd::Rst {
                                id,
                                status: frame::RST_REFUSED_STREAM,
                            }))
                            .await;
                    }
                }
                frame::RST_STREAM => {
                    if let Some(b) = payload.get(0..4) {
                        open.remove(&(u32::from_be_bytes([b[0], b[1], b[2], b[3]]) & 0x7fff_ffff));
                    }
                }
                frame::PING => {
                    if let Some(b) = payload.get(0..4) {
                        let id = u32::from_be_bytes([b[0], b[1], b[2], b[3]]);
                        if tx.send(Out::Ping(id)).await.is_err() {
                            return Ok(());
                        }
                    }
                }
                frame::GOAWAY => return Ok(()),
                frame::HEADERS | frame::SYN_REPLY => {
                    // Decompressed to keep the shared context in step, then ignored.
                    if let Some(block) = payload.get(4..) {
                        inflater.inflate(block)?;
                    }
                }
                _ => {}
            },
        }
    }
}
