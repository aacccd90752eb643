//! The interactive commands (`exec -i/-t`, `attach`, `port-forward`): the CRI call returns a
//! URL of keelsond's streaming server, which keelsonctl speaks WebSocket to (the remote
//! command protocol `v5.channel.k8s.io`, falling back to `v4.channel.k8s.io`; port forward
//! over `v4.channel.k8s.io`, one connection per forwarded TCP connection since each URL is
//! single-use).
//!
//! With `-t` the local terminal is put in raw mode (restored on every way out) and its size
//! goes to the resize channel, again on every SIGWINCH. The remote command's exit code is
//! keelsonctl's.

use super::Ctl;
use super::cli::{AttachArgs, ExecArgs, PortForwardArgs};
use anyhow::{Context, Result, anyhow, bail};
use futures_util::{SinkExt, StreamExt};
use keelson_proto::runtime::v1 as pb;
use std::io::{Read, Write};
use std::os::fd::AsFd;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::http::HeaderValue;

const STDIN: u8 = 0;
const STDOUT: u8 = 1;
const STDERR: u8 = 2;
const ERROR: u8 = 3;
const RESIZE: u8 = 4;
const CLOSE: u8 = 255;

/// Opens a WebSocket to a streaming URL (`http://host:port/...`) asking for `protocols`;
/// returns it and the protocol the server chose.
async fn connect(url: &str, protocols: &str) -> Result<(WebSocketStream<TcpStream>, String)> {
    let rest = url
        .strip_prefix("http://")
        .ok_or_else(|| anyhow!("streaming URL {url:?} is not http://"))?;
    let host = rest.split('/').next().unwrap_or_default();
    let mut req = format!("ws://{rest}")
        .into_client_request()
        .with_context(|| format!("streaming URL {url:?}"))?;
    req.headers_mut().insert(
        "Sec-WebSocket-Protocol",
        HeaderValue::from_str(protocols).context("protocol header")?,
    );
    let tcp = TcpStream::connect(host)
        .await
        .with_context(|| format!("connecting to the streaming server {host}"))?;
    let (ws, resp) = tokio_tungstenite::client_async(req, tcp)
        .await
        .with_context(|| format!("upgrading {url} to a WebSocket"))?;
    let proto = resp
        .headers()
        .get("Sec-WebSocket-Protocol")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_string();
    Ok((ws, proto))
}

fn frame(channel: u8, data: &[u8]) -> Message {
    let mut v = Vec::with_capacity(data.len() + 1);
    v.push(channel);
    v.extend_from_slice(data);
    Message::Binary(v.into())
}

/// Local stdin, read on a plain thread (it may block forever; the process exits past it).
fn stdin_reader() -> mpsc::Receiver<Vec<u8>> {
    let (tx, rx) = mpsc::channel(16);
    std::thread::spawn(move || {
        let mut buf = vec![0u8; 32 * 1024];
        let mut stdin = std::io::stdin().lock();
        loop {
            match stdin.read(&mut buf) {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    if tx.blocking_send(buf[..n].to_vec()).is_err() {
                        break;
                    }
                }
            }
        }
    });
    rx
}

/// The local terminal in raw mode until dropped.
struct RawTerminal {
    saved: nix::sys::termios::Termios,
}

impl RawTerminal {
    /// Raw mode on stdin if it is a terminal.
    fn enable() -> Result<Option<RawTerminal>> {
        use nix::sys::termios::{SetArg, cfmakeraw, tcgetattr, tcsetattr};
        let stdin = std::io::stdin();
        if !nix::unistd::isatty(stdin.as_fd()).unwrap_or(false) {
            return Ok(None);
        }
        let saved = tcgetattr(stdin.as_fd()).context("reading the terminal's mode")?;
        let mut raw = saved.clone();
        cfmakeraw(&mut raw);
        tcsetattr(stdin.as_fd(), SetArg::TCSANOW, &raw).context("setting raw mode")?;
        Ok(Some(RawTerminal { saved }))
    }
}

impl Drop for RawTerminal {
    fn drop(&mut self) {
        use nix::sys::termios::{SetArg, tcsetattr};
        let _ = tcsetattr(std::io::stdin().as_fd(), SetArg::TCSANOW, &self.saved);
    }
}

nix::ioctl_read_bad!(tiocgwinsz, libc::TIOCGWINSZ, libc::winsize);

/// The local terminal's size as the resize channel's JSON, if stdout (else stdin) is one.
fn terminal_size() -> Option<String> {
    for fd in [libc::STDOUT_FILENO, libc::STDIN_FILENO] {
        let mut ws = libc::winsize {
            ws_row: 0,
            ws_col: 0,
            ws_xpixel: 0,
            ws_ypixel: 0,
        };
        // SAFETY: TIOCGWINSZ writes one winsize into the struct we own.
        if unsafe { tiocgwinsz(fd, &mut ws) }.is_ok() && ws.ws_col > 0 {
            return Some(format!(
                "{{\"Width\":{},\"Height\":{}}}",
                ws.ws_col, ws.ws_row
            ));
        }
    }
    None
}

/// How a remote command ended, from the error channel's `metav1.Status` (v4/v5).
fn exit_code_of(status: &[u8]) -> Result<u8> {
    if status.is_empty() {
        return Ok(0);
    }
    let v: serde_json::Value = serde_json::from_slice(status)
        .map_err(|_| anyhow!("{}", String::from_utf8_lossy(status)))?;
    if v["status"] == "Success" {
        return Ok(0);
    }
    if v["reason"] == "NonZeroExitCode"
        && let Some(causes) = v["details"]["causes"].as_array()
        && let Some(code) = causes
            .iter()
            .find(|c| c["reason"] == "ExitCode")
            .and_then(|c| c["message"].as_str())
            .and_then(|m| m.parse::<i64>().ok())
    {
        return Ok((code & 0xff) as u8);
    }
    bail!(
        "{}",
        v["message"]
            .as_str()
            .map(str::to_string)
            .unwrap_or_else(|| v.to_string())
    )
}

/// Runs one remote command session (exec or attach) on `url` with the local stdio.
async fn remote_command(url: &str, stdin: bool, tty: bool) -> Result<u8> {
    let (ws, proto) = connect(url, "v5.channel.k8s.io, v4.channel.k8s.io").await?;
    if proto != "v5.channel.k8s.io" && proto != "v4.channel.k8s.io" {
        bail!(
            "the streaming server chose protocol {proto:?}, keelsonctl speaks v5/v4.channel.k8s.io"
        );
    }
    let v5 = proto == "v5.channel.k8s.io";
    let (mut sink, mut stream) = ws.split();
    let raw_guard = if tty && stdin {
        RawTerminal::enable()?
    } else {
        None
    };
    if tty && let Some(size) = terminal_size() {
        sink.send(frame(RESIZE, size.as_bytes())).await?;
    }
    let mut input = if stdin { Some(stdin_reader()) } else { None };
    let mut winch = if tty {
        Some(
            tokio::signal::unix::signal(tokio::signal::unix::SignalKind::window_change())
                .context("watching SIGWINCH")?,
        )
    } else {
        None
    };
    let mut status: Option<Vec<u8>> = None;
    loop {
        tokio::select! {
            msg = stream.next() => {
                let Some(msg) = msg else { break };
                let data = match msg.context("reading from the streaming server")? {
                    Message::Binary(b) => b.to_vec(),
                    Message::Text(t) => t.as_bytes().to_vec(),
                    Message::Close(_) => break,
                    _ => continue,
                };
                let Some((&ch, rest)) = data.split_first() else { continue };
                match ch {
                    STDOUT => {
                        let mut o = std::io::stdout().lock();
                        o.write_all(rest)?;
                        o.flush()?;
                    }
                    STDERR => {
                        let mut e = std::io::stderr().lock();
                        e.write_all(rest)?;
                        e.flush()?;
                    }
                    ERROR => status.get_or_insert_with(Vec::new).extend_from_slice(rest),
                    _ => {}
                }
            }
            chunk = async { input.as_mut()?.recv().await }, if input.is_some() => {
                match chunk {
                    Some(d) => sink.send(frame(STDIN, &d)).await?,
                    None => {
                        input = None;
                        // v5 tells the end of stdin; v4 has no way to (the session goes on).
                        if v5 {
                            sink.send(frame(CLOSE, &[STDIN])).await?;
                        }
                    }
                }
            }
            _ = async { winch.as_mut()?.recv().await }, if winch.is_some() => {
                if let Some(size) = terminal_size() {
                    sink.send(frame(RESIZE, size.as_bytes())).await?;
                }
            }
        }
    }
    let _ = sink.close().await;
    drop(raw_guard);
    exit_code_of(status.as_deref().unwrap_or_default())
}

/// `exec -i`/`-t`: CRI Exec, then the session over the returned URL.
pub async fn exec_streaming(ctl: &Ctl, a: &ExecArgs) -> Result<u8> {
    let t = Some(ctl.timeout);
    let mut c = ctl.runtime().await?;
    let msg = pb::ExecRequest {
        container_id: a.id.clone(),
        cmd: a.cmd.clone(),
        tty: a.tty,
        stdin: a.interactive,
        stdout: true,
        stderr: !a.tty,
        ..Default::default()
    };
    let url = ctl
        .call("Exec", t, c.exec(ctl.req("Exec", msg, t)))
        .await
        .with_context(|| format!("execing command in container {}", a.id))?
        .url;
    remote_command(&url, a.interactive, a.tty)
        .await
        .with_context(|| format!("execing command in container {}", a.id))
}

/// `attach`: CRI Attach, then the session over the returned URL.
pub async fn attach(ctl: &Ctl, a: &AttachArgs) -> Result<u8> {
    let t = Some(ctl.timeout);
    let mut c = ctl.runtime().await?;
    let msg = pb::AttachRequest {
        container_id: a.id.clone(),
        stdin: a.stdin,
        tty: a.tty,
        stdout: true,
        stderr: !a.tty,
        ..Default::default()
    };
    let url = ctl
        .call("Attach", t, c.attach(ctl.req("Attach", msg, t)))
        .await
        .with_context(|| format!("attaching to container {}", a.id))?
        .url;
    remote_command(&url, a.stdin, a.tty)
        .await
        .with_context(|| format!("attaching to container {}", a.id))
}

/// `[LOCAL:]REMOTE` (kubectl's and crictl's syntax; an empty or 0 local port: any free one).
fn parse_port_pair(s: &str) -> Result<(u16, u16)> {
    let (local, remote) = match s.split_once(':') {
        Some((l, r)) => (l, r),
        None => (s, s),
    };
    let remote: u16 = remote
        .parse()
        .ok()
        .filter(|&p| p > 0)
        .ok_or_else(|| anyhow!("invalid port {remote:?} in {s:?}"))?;
    let local: u16 = if local.is_empty() {
        0
    } else {
        local
            .parse()
            .map_err(|_| anyhow!("invalid port {local:?} in {s:?}"))?
    };
    Ok((local, remote))
}

/// `port-forward POD [LOCAL:]REMOTE...`: listens on 127.0.0.1 and forwards every connection
/// through its own CRI PortForward URL until interrupted.
pub async fn port_forward(ctl: &Ctl, a: &PortForwardArgs) -> Result<u8> {
    if a.ports.is_empty() {
        bail!("at least one port must be given: [LOCAL:]REMOTE");
    }
    let pairs = a
        .ports
        .iter()
        .map(|p| parse_port_pair(p))
        .collect::<Result<Vec<_>>>()?;
    // The pod must exist before anything listens.
    let t = Some(ctl.timeout);
    let mut c = ctl.runtime().await?;
    let msg = pb::PodSandboxStatusRequest {
        pod_sandbox_id: a.pod.clone(),
        verbose: false,
    };
    let sandbox = ctl
        .call(
            "PodSandboxStatus",
            t,
            c.pod_sandbox_status(ctl.req("PodSandboxStatus", msg, t)),
        )
        .await
        .with_context(|| format!("getting the status of pod {}", a.pod))?
        .status
        .map(|s| s.id)
        .unwrap_or_else(|| a.pod.clone());
    let mut tasks = tokio::task::JoinSet::new();
    for (local, remote) in pairs {
        let l = TcpListener::bind(("127.0.0.1", local))
            .await
            .with_context(|| format!("listening on 127.0.0.1:{local}"))?;
        let port = l.local_addr()?.port();
        say(&format!("Forwarding from 127.0.0.1:{port} -> {remote}"));
        let ctl = ctl.clone();
        let sandbox = sandbox.clone();
        tasks.spawn(async move {
            loop {
                let Ok((conn, _)) = l.accept().await else {
                    continue;
                };
                say(&format!("Handling connection for {port}"));
                let ctl = ctl.clone();
                let sandbox = sandbox.clone();
                tokio::spawn(async move {
                    if let Err(e) = forward_one(&ctl, &sandbox, remote, conn).await {
                        eprintln!("keelsonctl: port-forward to {remote}: {e:#}");
                    }
                });
            }
        });
    }
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
    tasks.abort_all();
    Ok(0)
}

/// A progress line on stdout; a reader that went away does not stop the forwarding.
fn say(line: &str) {
    let mut o = std::io::stdout().lock();
    let _ = writeln!(o, "{line}");
    let _ = o.flush();
}

/// One forwarded TCP connection: a fresh PortForward URL, then bytes both ways.
async fn forward_one(ctl: &Ctl, sandbox: &str, remote: u16, conn: TcpStream) -> Result<()> {
    let t = Some(ctl.timeout);
    let mut c = ctl.runtime().await?;
    let msg = pb::PortForwardRequest {
        pod_sandbox_id: sandbox.to_string(),
        port: vec![i32::from(remote)],
    };
    let url = ctl
        .call(
            "PortForward",
            t,
            c.port_forward(ctl.req("PortForward", msg, t)),
        )
        .await?
        .url;
    let (ws, _) = connect(&url, "v4.channel.k8s.io").await?;
    let (mut sink, mut stream) = ws.split();
    let (mut rd, mut wr) = conn.into_split();
    // The server opens both channels with the port number first.
    let mut seen = [false, false];
    let mut buf = vec![0u8; 32 * 1024];
    let mut local_open = true;
    let mut remote_error = String::new();
    loop {
        tokio::select! {
            msg = stream.next() => {
                let Some(msg) = msg else { break };
                let data = match msg? {
                    Message::Binary(b) => b.to_vec(),
                    Message::Close(_) => break,
                    _ => continue,
                };
                let Some((&ch, rest)) = data.split_first() else { continue };
                let i = usize::from(ch % 2);
                if ch > 1 {
                    continue;
                }
                if !seen[i] {
                    seen[i] = true;
                    continue;
                }
                if ch == 0 {
                    tokio::io::AsyncWriteExt::write_all(&mut wr, rest).await?;
                } else {
                    remote_error.push_str(&String::from_utf8_lossy(rest));
                }
            }
            n = tokio::io::AsyncReadExt::read(&mut rd, &mut buf), if local_open => {
                match n {
                    Ok(0) | Err(_) => {
                        // The protocol has no half-close: the reply still comes back.
                        local_open = false;
                    }
                    Ok(n) => sink.send(frame(0, &buf[..n])).await?,
                }
            }
        }
    }
    let _ = tokio::io::AsyncWriteExt::shutdown(&mut wr).await;
    let _ = sink.close().await;
    if !remote_error.is_empty() {
        bail!("{remote_error}");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn port_pairs() {
        assert_eq!(parse_port_pair("8080:80").expect("pair"), (8080, 80));
        assert_eq!(parse_port_pair(":80").expect("pair"), (0, 80));
        assert_eq!(parse_port_pair("80").expect("pair"), (80, 80));
        assert!(parse_port_pair("8080:x").is_err());
        assert!(parse_port_pair("0").is_err());
    }

    #[test]
    fn exit_codes_from_the_status() {
        assert_eq!(
            exit_code_of(br#"{"metadata":{},"status":"Success"}"#).expect("ok"),
            0
        );
        let s = br#"{"metadata":{},"status":"Failure","message":"command terminated with non-zero exit code: exit status 3","reason":"NonZeroExitCode","details":{"causes":[{"reason":"ExitCode","message":"3"}]}}"#;
        assert_eq!(exit_code_of(s).expect("code"), 3);
        let e = exit_code_of(br#"{"metadata":{},"status":"Failure","message":"boom","reason":"InternalError","code":500}"#)
            .expect_err("failure");
        assert_eq!(e.to_string(), "boom");
    }
}
