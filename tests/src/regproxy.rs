//! A small HTTP(S) proxy in front of a test registry: it records every request (method,
//! path, headers), can act as a bearer-token auth server (issuing tokens at `/token`, with or
//! without basic credentials, and demanding them on `/v2/`), can serve TLS with a given
//! certificate, and can cut a blob's response off after some bytes a given number of times.
//! One request per connection (`Connection: close`). Stopped on Drop.

use std::collections::HashSet;
use std::io::{self, Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

use base64::Engine as _;

/// The service name the token challenge names.
pub const TOKEN_SERVICE: &str = "kt-registry";

/// Bearer-token auth in front of the registry.
#[derive(Debug, Clone, Default)]
pub struct TokenAuth {
    /// Basic credentials the token endpoint wants (anonymous tokens when `None`).
    pub basic: Option<(String, String)>,
    /// A token accepted on `/v2/` without being issued (as a CRI `registry_token`).
    pub static_token: Option<String>,
    /// An OAuth2 refresh token the token endpoint exchanges on a form POST
    /// (`grant_type=refresh_token`); with it, only such POSTs get tokens.
    pub refresh_token: Option<String>,
}

/// What the proxy does.
#[derive(Debug, Clone, Default)]
pub struct ProxyConfig {
    /// `host:port` of the registry (plain HTTP).
    pub upstream: String,
    pub token_auth: Option<TokenAuth>,
    /// Cut GET responses whose path contains `.0` after `.1` body bytes, `.2` times.
    pub cut: Option<(String, u64, usize)>,
    /// Serve TLS with this PEM certificate (chain) and PKCS#8 PEM key.
    pub tls: Option<(Vec<u8>, Vec<u8>)>,
    /// With `tls`: demand a client certificate signed by this PEM CA.
    pub client_ca: Option<Vec<u8>>,
    /// Serve the registry API under this path prefix (`/prefix/v2/...`) and answer 404
    /// elsewhere, as a registry behind a path-routing proxy (hosts.toml `override_path`).
    pub path_prefix: Option<String>,
}

/// One request the proxy saw.
#[derive(Debug, Clone)]
pub struct Seen {
    pub method: String,
    /// Path with the query, percent-decoded.
    pub path: String,
    /// Header names lowercased.
    pub headers: Vec<(String, String)>,
    /// The body of a token POST (form fields), percent-decoded; empty otherwise.
    pub body: String,
}

impl Seen {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }
}

struct Shared {
    config: ProxyConfig,
    addr: String,
    seen: Mutex<Vec<Seen>>,
    tokens: Mutex<HashSet<String>>,
    issued: AtomicUsize,
    cuts_left: AtomicUsize,
    stop: AtomicBool,
    tls: Option<openssl::ssl::SslAcceptor>,
}

/// A running proxy.
pub struct RegistryProxy {
    shared: Arc<Shared>,
    thread: Option<JoinHandle<()>>,
}

trait Conn: Read + Write + Send {}
impl<T: Read + Write + Send> Conn for T {}

impl RegistryProxy {
    pub fn start(config: ProxyConfig) -> io::Result<Self> {
        let listener = TcpListener::bind("127.0.0.1:0")?;
        let addr = listener.local_addr()?.to_string();
        let tls = match &config.tls {
            Some((cert, key)) => Some(acceptor(cert, key, config.client_ca.as_deref())?),
            None => None,
        };
        let cuts = config.cut.as_ref().map_or(0, |c| c.2);
        let shared = Arc::new(Shared {
            config,
            addr,
            seen: Mutex::new(Vec::new()),
            tokens: Mutex::new(HashSet::new()),
            issued: AtomicUsize::new(0),
            cuts_left: AtomicUsize::new(cuts),
            stop: AtomicBool::new(false),
            tls,
        });
        let s = shared.clone();
        let thread = std::thread::spawn(move || {
            for conn in listener.incoming() {
                if s.stop.load(Ordering::SeqCst) {
                    break;
                }
                let Ok(conn) = conn else { continue };
                let s = s.clone();
                std::thread::spawn(move || {
                    let _ = serve(&s, conn);
                });
            }
        });
        Ok(Self {
            shared,
            thread: Some(thread),
        })
    }

    /// `127.0.0.1:<port>`.
    pub fn addr(&self) -> &str {
        &self.shared.addr
    }

    /// Every request so far.
    pub fn seen(&self) -> Vec<Seen> {
        self.shared
            .seen
            .lock()
            .map(|s| s.clone())
            .unwrap_or_default()
    }

    /// Requests so far with this method whose path contains `fragment`.
    pub fn count(&self, method: &str, fragment: &str) -> usize {
        self.seen()
            .iter()
            .filter(|s| s.method == method && s.path.contains(fragment))
            .count()
    }

    /// Tokens issued by `/token`.
    pub fn tokens_issued(&self) -> usize {
        self.shared.issued.load(Ordering::SeqCst)
    }
}

impl Drop for RegistryProxy {
    fn drop(&mut self) {
        self.shared.stop.store(true, Ordering::SeqCst);
        let _ = TcpStream::connect(&self.shared.addr);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn acceptor(
    cert: &[u8],
    key: &[u8],
    client_ca: Option<&[u8]>,
) -> io::Result<openssl::ssl::SslAcceptor> {
    use openssl::ssl::{SslAcceptor, SslMethod, SslVerifyMode};
    let e = io::Error::other;
    let mut b = SslAcceptor::mozilla_intermediate_v5(SslMethod::tls()).map_err(e)?;
    let mut chain = openssl::x509::X509::stack_from_pem(cert)
        .map_err(e)?
        .into_iter();
    let leaf = chain
        .next()
        .ok_or_else(|| io::Error::other("no certificate"))?;
    b.set_certificate(&leaf).map_err(e)?;
    for c in chain {
        b.add_extra_chain_cert(c).map_err(e)?;
    }
    let pkey = openssl::pkey::PKey::private_key_from_pem(key).map_err(e)?;
    b.set_private_key(&pkey).map_err(e)?;
    if let Some(ca) = client_ca {
        for c in openssl::x509::X509::stack_from_pem(ca).map_err(e)? {
            b.cert_store_mut().add_cert(c).map_err(e)?;
        }
        b.set_verify(SslVerifyMode::PEER | SslVerifyMode::FAIL_IF_NO_PEER_CERT);
    }
    Ok(b.build())
}

fn read_head(c: &mut dyn Conn) -> io::Result<Vec<u8>> {
    let mut head = Vec::new();
    let mut b = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        if c.read(&mut b)? == 0 {
            return Err(io::Error::new(io::ErrorKind::UnexpectedEof, "head"));
        }
        head.push(b[0]);
        if head.len() > 64 << 10 {
            return Err(io::Error::other("head too large"));
        }
    }
    Ok(head)
}

fn parse_headers(head: &str) -> (String, Vec<(String, String)>) {
    let mut lines = head.split("\r\n");
    let first = lines.next().unwrap_or_default().to_string();
    let headers = lines
        .filter(|l| !l.is_empty())
        .filter_map(|l| l.split_once(':'))
        .map(|(n, v)| (n.trim().to_ascii_lowercase(), v.trim().to_string()))
        .collect();
    (first, headers)
}

fn percent_decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%'
            && i + 2 < b.len()
            && let Ok(hex) = std::str::from_utf8(&b[i + 1..i + 3])
            && let Ok(v) = u8::from_str_radix(hex, 16)
        {
            out.push(v);
            i += 3;
            continue;
        }
        out.push(if b[i] == b'+' { b' ' } else { b[i] });
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn respond(c: &mut dyn Conn, status: &str, extra: &[(&str, String)], body: &str) -> io::Result<()> {
    let mut r = format!(
        "HTTP/1.1 {status}\r\nContent-Length: {}\r\nConnection: close\r\n",
        body.len()
    );
    for (n, v) in extra {
        r.push_str(&format!("{n}: {v}\r\n"));
    }
    r.push_str("\r\n");
    r.push_str(body);
    c.write_all(r.as_bytes())?;
    c.flush()
}

fn serve(s: &Shared, tcp: TcpStream) -> io::Result<()> {
    let mut conn: Box<dyn Conn> = match &s.tls {
        Some(acc) => Box::new(acc.accept(tcp.try_clone()?).map_err(io::Error::other)?),
        // (a refused client certificate ends the connection in the handshake, before any
        // request is read or recorded)
        None => Box::new(tcp.try_clone()?),
    };
    let head = read_head(conn.as_mut())?;
    let head = String::from_utf8_lossy(&head).into_owned();
    let (mut first, headers) = parse_headers(&head);
    let mut parts = first.split(' ');
    let method = parts.next().unwrap_or_default().to_string();
    let mut raw_path = parts.next().unwrap_or_default().to_string();
    let mut seen = Seen {
        method: method.clone(),
        path: percent_decode(&raw_path),
        headers: headers.clone(),
        body: String::new(),
    };
    let token_post = method == "POST" && raw_path.starts_with("/token");
    if token_post {
        let len = seen
            .header("content-length")
            .and_then(|l| l.parse::<u64>().ok())
            .unwrap_or(0)
            .min(64 << 10);
        let mut body = Vec::new();
        (&mut conn).take(len).read_to_end(&mut body)?;
        seen.body = percent_decode(&String::from_utf8_lossy(&body));
    }
    if let Ok(mut v) = s.seen.lock() {
        v.push(seen.clone());
    }
    let scheme = if s.tls.is_some() { "https" } else { "http" };
    if let Some(prefix) = &s.config.path_prefix {
        match raw_path.strip_prefix(prefix.as_str()) {
            Some(rest) if rest.starts_with("/v2/") => {
                raw_path = rest.to_string();
                first = format!("{method} {raw_path} HTTP/1.1");
            }
            _ => return respond(conn.as_mut(), "404 Not Found", &[], "not here\n"),
        }
    }

    if let Some(auth) = &s.config.token_auth {
        if raw_path.starts_with("/token") {
            if let Some(rt) = &auth.refresh_token {
                let fields: Vec<&str> = seen.body.split('&').collect();
                let ok = token_post
                    && fields.contains(&"grant_type=refresh_token")
                    && fields.contains(&format!("refresh_token={rt}").as_str());
                if !ok {
                    return respond(
                        conn.as_mut(),
                        "400 Bad Request",
                        &[("Content-Type", "application/json".to_string())],
                        "{\"error\":\"invalid_grant\"}",
                    );
                }
            } else if let Some((u, p)) = &auth.basic {
                let want = format!(
                    "Basic {}",
                    base64::engine::general_purpose::STANDARD.encode(format!("{u}:{p}"))
                );
                if seen.header("authorization") != Some(want.as_str()) {
                    return respond(
                        conn.as_mut(),
                        "401 Unauthorized",
                        &[(
                            "WWW-Authenticate",
                            format!("Basic realm=\"{TOKEN_SERVICE}\""),
                        )],
                        "{\"details\":\"bad credentials\"}",
                    );
                }
            }
            let n = s.issued.fetch_add(1, Ordering::SeqCst);
            let token = format!("kt-token-{n}");
            if let Ok(mut t) = s.tokens.lock() {
                t.insert(token.clone());
            }
            let body = format!(
                "{{\"token\":\"{token}\",\"access_token\":\"{token}\",\"expires_in\":300}}"
            );
            return respond(
                conn.as_mut(),
                "200 OK",
                &[("Content-Type", "application/json".to_string())],
                &body,
            );
        }
        let bearer = seen
            .header("authorization")
            .and_then(|a| a.strip_prefix("Bearer "))
            .map(str::to_string);
        let ok = bearer.is_some_and(|b| {
            auth.static_token.as_deref() == Some(b.as_str())
                || s.tokens.lock().map(|t| t.contains(&b)).unwrap_or(false)
        });
        if !ok {
            let mut challenge = format!(
                "Bearer realm=\"{scheme}://{}/token\",service=\"{TOKEN_SERVICE}\"",
                s.addr
            );
            let rest = raw_path.trim_start_matches("/v2/");
            if let Some(i) = rest.find("/manifests/").or_else(|| rest.find("/blobs/")) {
                challenge.push_str(&format!(",scope=\"repository:{}:pull\"", &rest[..i]));
            }
            return respond(
                conn.as_mut(),
                "401 Unauthorized",
                &[
                    ("WWW-Authenticate", challenge),
                    ("Content-Type", "application/json".to_string()),
                ],
                "{\"errors\":[{\"code\":\"UNAUTHORIZED\",\"message\":\"authentication required\"}]}",
            );
        }
    }

    // Forward to the registry.
    let mut up = TcpStream::connect(&s.config.upstream)?;
    let mut req = format!("{first}\r\n");
    for (n, v) in &headers {
        if n == "connection" || (n == "authorization" && s.config.token_auth.is_some()) {
            continue;
        }
        req.push_str(&format!("{n}: {v}\r\n"));
    }
    req.push_str("Connection: close\r\n\r\n");
    up.write_all(req.as_bytes())?;
    if let Some(len) = seen
        .header("content-length")
        .and_then(|l| l.parse::<u64>().ok())
    {
        io::copy(&mut (&mut conn).take(len), &mut up)?;
    }
    let rhead = read_head(&mut up)?;
    let rhead = String::from_utf8_lossy(&rhead).into_owned();
    let (status_line, rheaders) = parse_headers(&rhead);
    let mut out = format!("{status_line}\r\n");
    for (n, v) in &rheaders {
        if n != "connection" {
            out.push_str(&format!("{n}: {v}\r\n"));
        }
    }
    out.push_str("Connection: close\r\n\r\n");
    conn.write_all(out.as_bytes())?;
    let ok_status = status_line.contains(" 200 ") || status_line.contains(" 206 ");
    let cut = s.config.cut.as_ref().filter(|(frag, _, _)| {
        method == "GET"
            && ok_status
            && seen.path.contains(frag.as_str())
            && s.cuts_left
                .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
                .is_ok()
    });
    match cut {
        Some((_, after, _)) => {
            io::copy(&mut (&mut up).take(*after), &mut conn)?;
            conn.flush()?;
        }
        None => {
            io::copy(&mut up, &mut conn)?;
            conn.flush()?;
        }
    }
    drop(conn);
    let _ = tcp.shutdown(Shutdown::Both);
    Ok(())
}
