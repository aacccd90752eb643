//! SPDY/3.1 frames: the 8-byte headers, the control frames a stream server needs, and header
//! blocks compressed with zlib and the SPDY/3 dictionary (one compression context per
//! direction for the whole connection, each block ending in a sync flush).
//!
//! ```text
//! control: |1| version (15) | type (16) |  flags (8) | length (24) | payload
//! data:    |0| stream id (31)           |  flags (8) | length (24) | payload
//! ```

use flate2::{Compress, Compression, Decompress, FlushCompress, FlushDecompress};

pub const VERSION: u16 = 3;
pub const HEADER_LEN: usize = 8;
/// The largest frame payload (24-bit length).
pub const MAX_LENGTH: usize = (1 << 24) - 1;
/// The largest decompressed header block accepted.
pub const MAX_HEADER_BLOCK: usize = 256 * 1024;

pub const SYN_STREAM: u16 = 1;
pub const SYN_REPLY: u16 = 2;
pub const RST_STREAM: u16 = 3;
pub const SETTINGS: u16 = 4;
pub const PING: u16 = 6;
pub const GOAWAY: u16 = 7;
pub const HEADERS: u16 = 8;
pub const WINDOW_UPDATE: u16 = 9;

/// FLAG_FIN of data frames and SYN_STREAM/SYN_REPLY/HEADERS.
pub const FLAG_FIN: u8 = 0x01;

/// RST_STREAM status codes used here.
pub const RST_PROTOCOL_ERROR: u32 = 1;
pub const RST_REFUSED_STREAM: u32 = 3;

/// The zlib dictionary of SPDY/3 header blocks: length-prefixed common header names and
/// values, then a run of common value fragments.
pub fn dictionary() -> &'static [u8] {
    static DICT: std::sync::OnceLock<Vec<u8>> = std::sync::OnceLock::new();
    DICT.get_or_init(|| {
        const WORDS: &[&str] = &[
            "options",
            "head",
            "post",
            "put",
            "delete",
            "trace",
            "accept",
            "accept-charset",
            "accept-encoding",
            "accept-language",
            "accept-ranges",
            "age",
            "allow",
            "authorization",
            "cache-control",
            "connection",
            "content-base",
            "content-encoding",
            "content-language",
            "content-length",
            "content-location",
            "content-md5",
            "content-range",
            "content-type",
            "date",
            "etag",
            "expect",
            "expires",
            "from",
            "host",
            "if-match",
            "if-modified-since",
            "if-none-match",
            "if-range",
            "if-unmodified-since",
            "last-modified",
            "location",
            "max-forwards",
            "pragma",
            "proxy-authenticate",
            "proxy-authorization",
            "range",
            "referer",
            "retry-after",
            "server",
            "te",
            "trailer",
            "transfer-encoding",
            "upgrade",
            "user-agent",
            "vary",
            "via",
            "warning",
            "www-authenticate",
            "method",
            "get",
            "status",
            "200 OK",
            "version",
            "HTTP/1.1",
            "url",
            "public",
            "set-cookie",
            "keep-alive",
            "origin",
        ];
        const TAIL: &str = concat!(
            "100101201202205206300302303304305306307402405406407408409410411412413414415416417",
            "502504505203 Non-Authoritative Information204 No Content301 Moved Permanently",
            "400 Bad Request401 Unauthorized403 Forbidden404 Not Found500 Internal Server Error",
            "501 Not Implemented503 Service UnavailableJan Feb Mar Apr May Jun Jul Aug Sept Oct ",
            "Nov Dec 00:00:00 Mon, Tue, Wed, Thu, Fri, Sat, Sun, GMTchunked,text/html,image/png,",
            "image/jpg,image/gif,application/xml,application/xhtml+xml,text/plain,",
            "text/javascript,publicprivatemax-age=gzip,deflate,sdchcharset=utf-8",
            "charset=iso-8859-1,utf-,*,enq=0.",
        );
        let mut d = Vec::new();
        for w in WORDS {
            d.extend_from_slice(&(w.len() as u32).to_be_bytes());
            d.extend_from_slice(w.as_bytes());
        }
        d.extend_from_slice(TAIL.as_bytes());
        d
    })
}

/// A frame's 8-byte header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Head {
    Control {
        version: u16,
        kind: u16,
        flags: u8,
        len: usize,
    },
    Data {
        stream: u32,
        flags: u8,
        len: usize,
    },
}

impl Head {
    pub fn parse(b: &[u8; HEADER_LEN]) -> Head {
        let w0 = u32::from_be_bytes([b[0], b[1], b[2], b[3]]);
        let flags = b[4];
        let len = usize::from(b[5]) << 16 | usize::from(b[6]) << 8 | usize::from(b[7]);
        if w0 & 0x8000_0000 != 0 {
            Head::Control {
                version: ((w0 >> 16) & 0x7fff) as u16,
                kind: (w0 & 0xffff) as u16,
                flags,
                len,
            }
        } else {
            Head::Data {
                stream: w0 & 0x7fff_ffff,
                flags,
                len,
            }
        }
    }

    pub fn len(&self) -> usize {
        match self {
            Head::Control { len, .. } | Head::Data { len, .. } => *len,
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

fn put_head(out: &mut Vec<u8>, w0: u32, flags: u8, len: usize) {
    out.extend_from_slice(&w0.to_be_bytes());
    out.push(flags);
    let l = (len as u32).to_be_bytes();
    out.extend_from_slice(&l[1..]);
}

fn put_control(out: &mut Vec<u8>, kind: u16, flags: u8, payload: &[u8]) {
    put_head(
        out,
        0x8000_0000 | u32::from(VERSION) << 16 | u32::from(kind),
        flags,
        payload.len(),
    );
    out.extend_from_slice(payload);
}

/// Appends DATA frames carrying `data` (cut at [`MAX_LENGTH`]); `fin` goes on the last one.
pub fn data(out: &mut Vec<u8>, stream: u32, data: &[u8], fin: bool) {
    let mut chunks = data.chunks(MAX_LENGTH).peekable();
    if chunks.peek().is_none() {
        put_head(out, stream & 0x7fff_ffff, if fin { FLAG_FIN } else { 0 }, 0);
        return;
    }
    while let Some(c) = chunks.next() {
        let last = chunks.peek().is_none();
        let flags = if fin && last { FLAG_FIN } else { 0 };
        put_head(out, stream & 0x7fff_ffff, flags, c.len());
        out.extend_from_slice(c);
    }
}

/// Appends a SYN_REPLY with `headers` (compressed with `z`).
pub fn syn_reply(
    out: &mut Vec<u8>,
    z: &mut HeaderDeflater,
    stream: u32,
    headers: &[(&str, &str)],
    fin: bool,
) -> Result<(), String> {
    let mut p = (stream & 0x7fff_ffff).to_be_bytes().to_vec();
    p.extend(z.deflate(&encode_headers(headers))?);
    put_control(out, SYN_REPLY, if fin { FLAG_FIN } else { 0 }, &p);
    Ok(())
}

/// Appends a SYN_STREAM (what a client sends; the tests' client uses it).
pub fn syn_stream(
    out: &mut Vec<u8>,
    z: &mut HeaderDeflater,
    stream: u32,
    headers: &[(&str, &str)],
    fin: bool,
) -> Result<(), String> {
    let mut p = (stream & 0x7fff_ffff).to_be_bytes().to_vec();
    p.extend_from_slice(&0u32.to_be_bytes());
    p.extend_from_slice(&[0, 0]);
    p.extend(z.deflate(&encode_headers(headers))?);
    put_control(out, SYN_STREAM, if fin { FLAG_FIN } else { 0 }, &p);
    Ok(())
}

pub fn rst_stream(out: &mut Vec<u8>, stream: u32, status: u32) {
    let mut p = (stream & 0x7fff_ffff).to_be_bytes().to_vec();
    p.extend_from_slice(&status.to_be_bytes());
    put_control(out, RST_STREAM, 0, &p);
}

pub fn ping(out: &mut Vec<u8>, id: u32) {
    put_control(out, PING, 0, &id.to_be_bytes());
}

pub fn goaway(out: &mut Vec<u8>, last_good: u32, status: u32) {
    let mut p = (last_good & 0x7fff_ffff).to_be_bytes().to_vec();
    p.extend_from_slice(&status.to_be_bytes());
    put_control(out, GOAWAY, 0, &p);
}

/// The uncompressed name/value block: count, then length-prefixed names and values.
pub fn encode_headers(headers: &[(&str, &str)]) -> Vec<u8> {
    let mut b = (headers.len() as u32).to_be_bytes().to_vec();
    for (k, v) in headers {
        b.extend_from_slice(&(k.len() as u32).to_be_bytes());
        b.extend_from_slice(k.to_ascii_lowercase().as_bytes());
        b.extend_from_slice(&(v.len() as u32).to_be_bytes());
        b.extend_from_slice(v.as_bytes());
    }
    b
}

/// Parses an uncompressed name/value block; names come out lowercased, multiple values
/// (NUL-separated) as separate pairs.
pub fn decode_headers(b: &[u8]) -> Result<Vec<(String, String)>, String> {
    let mut pos = 0usize;
    let mut take = |n: usize| -> Result<&[u8], String> {
        let s = b
            .get(pos..pos + n)
            .ok_or_else(|| "header block ends early".to_string())?;
        pos += n;
        Ok(s)
    };
    let word = |s: &[u8]| u32::from_be_bytes([s[0], s[1], s[2], s[3]]) as usize;
    let count = word(take(4)?);
    let mut out = Vec::new();
    for _ in 0..count {
        let n = word(take(4)?);
        let name = String::from_utf8_lossy(take(n)?).to_ascii_lowercase();
        let n = word(take(4)?);
        let value = String::from_utf8_lossy(take(n)?).into_owned();
        for v in value.split('\0') {
            out.push((name.clone(), v.to_string()));
        }
    }
    Ok(out)
}

/// The sending side's header compression context.
pub struct HeaderDeflater {
    z: Compress,
}

impl HeaderDeflater {
    pub fn new() -> Result<HeaderDeflater, String> {
        let mut z = Compress::new(Compression::default(), true);
        z.set_dictionary(dictionary()).map_err(|e| e.to_string())?;
        Ok(HeaderDeflater { z })
    }

    /// Compresses one header block, sync-flushed so the peer can read all of it.
    pub fn deflate(&mut self, block: &[u8]) -> Result<Vec<u8>, String> {
        let mut out = Vec::with_capacity(block.len() + 64);
        let mut input = block;
        loop {
            if out.capacity() - out.len() < 256 {
                out.reserve(1024);
            }
            let before = self.z.total_in();
            self.z
                .compress_vec(input, &mut out, FlushCompress::Sync)
                .map_err(|e| e.to_string())?;
            let used = (self.z.total_in() - before) as usize;
            input = &input[used..];
            if input.is_empty() && out.len() < out.capacity() {
                return Ok(out);
            }
        }
    }
}

/// The receiving side's header decompression context.
pub struct HeaderInflater {
    z: Decompress,
}

impl Default for HeaderInflater {
    fn default() -> Self {
        HeaderInflater {
            z: Decompress::new(true),
        }
    }
}

impl HeaderInflater {
    /// Decompresses one header block (the whole compressed payload of one frame).
    pub fn inflate(&mut self, block: &[u8]) -> Result<Vec<u8>, String> {
        let mut out = Vec::with_capacity(block.len() * 4 + 64);
        let mut input = block;
        loop {
            if out.capacity() - out.len() < 1024 {
                out.reserve(4096);
            }
            if out.len() > MAX_HEADER_BLOCK {
                return Err(format!("header block larger than {MAX_HEADER_BLOCK} bytes"));
            }
            let (in0, out0) = (self.z.total_in(), self.z.total_out());
            let r = self
                .z
                .decompress_vec(input, &mut out, FlushDecompress::Sync);
            let used = (self.z.total_in() - in0) as usize;
            let made = self.z.total_out() - out0;
            input = &input[used..];
            match r {
                Ok(_) => {}
                Err(e) if e.needs_dictionary().is_some() => {
                    self.z
                        .set_dictionary(dictionary())
                        .map_err(|e| format!("header dictionary: {e}"))?;
                    continue;
                }
                Err(e) => return Err(format!("header block: {e}")),
            }
            if input.is_empty() && out.len() < out.capacity() {
                return Ok(out);
            }
            if used == 0 && made == 0 {
                return Err("header block does not decompress".into());
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dictionary_is_spdy3s() {
        let d = dictionary();
        assert_eq!(&d[..11], b"\0\0\0\x07options");
        assert!(d.ends_with(b"utf-,*,enq=0."));
        assert_eq!(d.len(), 1423);
    }

    #[test]
    fn headers_round_trip_through_one_context_per_direction() {
        let mut tx = HeaderDeflater::new().expect("deflater");
        let mut rx = HeaderInflater::default();
        for i in 0..5 {
            let port = format!("80{i}");
            let block =
                encode_headers(&[("streamType", "data"), ("port", &port), ("requestID", "1")]);
            let z = tx.deflate(&block).expect("deflate");
            let plain = rx.inflate(&z).expect("inflate");
            assert_eq!(
                decode_headers(&plain).expect("decode"),
                vec![
                    ("streamtype".to_string(), "data".to_string()),
                    ("port".to_string(), port.clone()),
                    ("requestid".to_string(), "1".to_string()),
                ]
            );
        }
        assert_eq!(
            decode_headers(&encode_headers(&[("a", "x\0y")])).expect("decode"),
            vec![("a".into(), "x".into()), ("a".into(), "y".into())]
        );
        assert!(decode_headers(&[0, 0, 0, 1, 0, 0, 0, 9]).is_err());
    }

    #[test]
    fn frame_heads() {
        let mut out = Vec::new();
        data(&mut out, 5, b"abc", true);
        let h: [u8; 8] = out[..8].try_into().expect("head");
        assert_eq!(
            Head::parse(&h),
            Head::Data {
                stream: 5,
                flags: FLAG_FIN,
                len: 3
            }
        );
        let mut out = Vec::new();
        ping(&mut out, 7);
        let h: [u8; 8] = out[..8].try_into().expect("head");
        assert_eq!(
            Head::parse(&h),
            Head::Control {
                version: 3,
                kind: PING,
                flags: 0,
                len: 4
            }
        );
        assert_eq!(out[..4], [0x80, 0x03, 0x00, 0x06]);
    }
}
