//! What an exec or attach session sees of its client, whatever the transport (WebSocket
//! channels or SPDY streams): stdin bytes, the end of stdin and terminal sizes coming in,
//! stdout and stderr bytes going out.

use serde::Deserialize;
use tokio::sync::mpsc;

/// From the client.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Input {
    Stdin(Vec<u8>),
    /// The client closed its stdin (v5 close signal, SPDY half-close).
    StdinEnd,
    Resize {
        width: u16,
        height: u16,
    },
}

/// To the client.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Output {
    Stdout(Vec<u8>),
    Stderr(Vec<u8>),
}

/// A session's ends of its transport. `input` closing means the client went away.
#[derive(Debug)]
pub struct Io {
    pub input: mpsc::Receiver<Input>,
    pub output: mpsc::Sender<Output>,
}

/// Depth of the channels between a transport and its session.
pub const QUEUE: usize = 32;

/// `remotecommand.TerminalSize` as the client encodes it (Go's field names; Go's decoder
/// also takes them in another case).
#[derive(Debug, Deserialize)]
struct TerminalSize {
    #[serde(rename = "Width", alias = "width")]
    width: u16,
    #[serde(rename = "Height", alias = "height")]
    height: u16,
}

/// Decodes the resize channel: a stream of JSON objects, cut anywhere by the framing.
/// Like upstream, the first malformed object ends resizing for the session.
#[derive(Debug, Default)]
pub struct ResizeDecoder {
    buf: Vec<u8>,
    broken: bool,
}

impl ResizeDecoder {
    /// The sizes completed by `data`, as (width, height).
    pub fn push(&mut self, data: &[u8]) -> Vec<(u16, u16)> {
        let mut out = Vec::new();
        if self.broken {
            return out;
        }
        self.buf.extend_from_slice(data);
        let mut used = 0;
        {
            let mut it =
                serde_json::Deserializer::from_slice(&self.buf).into_iter::<TerminalSize>();
            loop {
                match it.next() {
                    Some(Ok(s)) => {
                        out.push((s.width, s.height));
                        used = it.byte_offset();
                    }
                    Some(Err(e)) if e.is_eof() => break,
                    Some(Err(_)) => {
                        self.broken = true;
                        break;
                    }
                    None => {
                        used = self.buf.len();
                        break;
                    }
                }
            }
        }
        if self.broken {
            self.buf = Vec::new();
        } else {
            self.buf.drain(..used);
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resize_objects_cut_anywhere() {
        let mut d = ResizeDecoder::default();
        assert_eq!(d.push(br#"{"Width":80,"#), vec![]);
        assert_eq!(
            d.push(br#""Height":24}{"width":100,"height":40}  {"Wi"#),
            vec![(80, 24), (100, 40)]
        );
        assert_eq!(d.push(br#"dth":1,"Height":2}"#), vec![(1, 2)]);
        assert_eq!(d.push(b"not json"), vec![]);
        assert_eq!(d.push(br#"{"Width":5,"Height":5}"#), vec![]);
    }
}
