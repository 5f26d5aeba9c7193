//! The bytes a shared broker stores and sends between nodes: publications (in history and
//! on pub/sub), client infos (presence entries, join/leave events) and the frames of the
//! control channels ([`ControlFrame`]).
//!
//! A small length-prefixed binary format, versioned by its first byte, so payloads of any
//! kind (text or binary) travel without escaping:
//!
//! ```text
//! publication = version(1) kind(0 text | 1 binary) str(origin node) u64(exclude, 0 = none)
//!               u64(publisher, 0 = none) opt(info) data(rest)
//! info        = str(client) str(user) opt-bytes(conn_info) opt-bytes(chan_info)
//! str, bytes  = u32 little-endian length, then the bytes; an absent optional is length u32::MAX
//! ```
//!
//! Control frames are line-based, the body last so it needs no escaping (node ids never
//! contain a newline):
//!
//! ```text
//! command  = "c" origin "\n" body              (to every node)
//! question = "q" origin "\n" id "\n" body        (to every node; answered to the origin)
//! answer   = "a" node "\n" id "\n" body          (to the asking node only)
//! ```
//!
//! A frame of an unknown kind decodes to `None` and is ignored, so a later version may add
//! kinds without breaking nodes that do not know them yet.
use bytes::Bytes;
use switchboard_core::{ClientInfo, ConnId, Payload, PayloadKind};

const VERSION: u8 = 1;
const NONE: u32 = u32::MAX;

/// A publication as decoded from the broker, before it gets its channel position.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Envelope {
    /// The node it was published on.
    pub origin: String,
    /// A connection of the origin node that must not receive it.
    pub exclude: Option<ConnId>,
    /// The publishing connection on the origin node.
    pub publisher: Option<ConnId>,
    /// The publishing client's info, when shown.
    pub info: Option<ClientInfo>,
    /// The message.
    pub payload: Payload,
}

fn put_bytes(out: &mut Vec<u8>, b: &[u8]) {
    out.extend_from_slice(&(b.len() as u32).to_le_bytes());
    out.extend_from_slice(b);
}

fn put_opt(out: &mut Vec<u8>, b: Option<&[u8]>) {
    match b {
        Some(b) => put_bytes(out, b),
        None => out.extend_from_slice(&NONE.to_le_bytes()),
    }
}

/// Appends the encoding of `info`.
pub fn put_info(out: &mut Vec<u8>, info: &ClientInfo) {
    put_bytes(out, info.client.as_bytes());
    put_bytes(out, info.user.as_bytes());
    put_opt(out, info.conn_info.as_deref());
    put_opt(out, info.chan_info.as_deref());
}

/// Encodes a client info on its own.
pub fn encode_info(info: &ClientInfo) -> Vec<u8> {
    let mut out = Vec::with_capacity(16 + info.client.len() + info.user.len());
    put_info(&mut out, info);
    out
}

/// Encodes a publication envelope.
pub fn encode(env: &Envelope) -> Vec<u8> {
    let mut out = Vec::with_capacity(32 + env.origin.len() + env.payload.len());
    out.push(VERSION);
    out.push(match env.payload.kind {
        PayloadKind::Text => 0,
        PayloadKind::Binary => 1,
    });
    put_bytes(&mut out, env.origin.as_bytes());
    out.extend_from_slice(&env.exclude.unwrap_or(0).to_le_bytes());
    out.extend_from_slice(&env.publisher.unwrap_or(0).to_le_bytes());
    match &env.info {
        Some(info) => {
            out.push(1);
            put_info(&mut out, info);
        }
        None => out.push(0),
    }
    out.extend_from_slice(&env.payload.data);
    out
}

/// Reads from a byte slice, failing on truncation.
struct Reader<'a> {
    buf: &'a Bytes,
    pos: usize,
}

impl Reader<'_> {
    fn take(&mut self, n: usize) -> Option<Bytes> {
        let end = self.pos.checked_add(n)?;
        if end > self.buf.len() {
            return None;
        }
        let b = self.buf.slice(self.pos..end);
        self.pos = end;
        Some(b)
    }

    fn u8(&mut self) -> Option<u8> {
        self.take(1).map(|b| b[0])
    }

    fn u32(&mut self) -> Option<u32> {
        self.take(4)
            .map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
    }

    fn u64(&mut self) -> Option<u64> {
        let b = self.take(8)?;
        let mut a = [0u8; 8];
        a.copy_from_slice(&b);
        Some(u64::from_le_bytes(a))
    }

    fn opt_bytes(&mut self) -> Option<Option<Bytes>> {
        match self.u32()? {
            NONE => Some(None),
            n => self.take(n as usize).map(Some),
        }
    }

    fn bytes(&mut self) -> Option<Bytes> {
        self.opt_bytes()?
    }

    fn string(&mut self) -> Option<String> {
        String::from_utf8(self.bytes()?.to_vec()).ok()
    }

    fn info(&mut self) -> Option<ClientInfo> {
        Some(ClientInfo {
            client: self.string()?,
            user: self.string()?,
            conn_info: self.opt_bytes()?,
            chan_info: self.opt_bytes()?,
        })
    }

    fn rest(&mut self) -> Bytes {
        let b = self.buf.slice(self.pos..);
        self.pos = self.buf.len();
        b
    }
}

/// Decodes a client info encoded by [`encode_info`].
pub fn decode_info(buf: &Bytes) -> Option<ClientInfo> {
    Reader { buf, pos: 0 }.info()
}

/// Decodes a publication envelope; `None` for bytes this version does not understand
/// (including text payloads that are not UTF-8).
pub fn decode(buf: &Bytes) -> Option<Envelope> {
    let mut r = Reader { buf, pos: 0 };
    if r.u8()? != VERSION {
        return None;
    }
    let kind = match r.u8()? {
        0 => PayloadKind::Text,
        1 => PayloadKind::Binary,
        _ => return None,
    };
    let origin = r.string()?;
    let exclude = Some(r.u64()?).filter(|&id| id != 0);
    let publisher = Some(r.u64()?).filter(|&id| id != 0);
    let info = match r.u8()? {
        0 => None,
        1 => Some(r.info()?),
        _ => return None,
    };
    let data = r.rest();
    if kind == PayloadKind::Text && simdutf8_check(&data).is_none() {
        return None;
    }
    Some(Envelope {
        origin,
        exclude,
        publisher,
        info,
        payload: Payload { kind, data },
    })
}

/// A message on the control channels: a command or a question from one node to the others,
/// or an answer to a question. The bodies are opaque here (the node's control handler gives
/// and takes them).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ControlFrame {
    /// A command from `origin`, for every other node to apply.
    Command {
        /// The sending node.
        origin: String,
        /// The command.
        body: Bytes,
    },
    /// Question `id` from `origin`; every other node answers it.
    Question {
        /// The asking node (answers go to its own channel).
        origin: String,
        /// Numbers the asking node's questions, to match the answers.
        id: u64,
        /// The question.
        body: Bytes,
    },
    /// `node`'s answer to question `id`.
    Answer {
        /// The answering node.
        node: String,
        /// The question answered.
        id: u64,
        /// The answer.
        body: Bytes,
    },
}

/// Encodes a control frame.
pub fn encode_control(frame: &ControlFrame) -> Vec<u8> {
    let (kind, node, id, body) = match frame {
        ControlFrame::Command { origin, body } => (b'c', origin, None, body),
        ControlFrame::Question { origin, id, body } => (b'q', origin, Some(*id), body),
        ControlFrame::Answer { node, id, body } => (b'a', node, Some(*id), body),
    };
    debug_assert!(!node.contains('\n'), "node ids have no newline");
    let mut out = Vec::with_capacity(32 + node.len() + body.len());
    out.push(kind);
    out.extend_from_slice(node.as_bytes());
    out.push(b'\n');
    if let Some(id) = id {
        out.extend_from_slice(id.to_string().as_bytes());
        out.push(b'\n');
    }
    out.extend_from_slice(body);
    out
}

/// Decodes a control frame; `None` for a kind this version does not know, or bytes that
/// are not a frame.
pub fn decode_control(buf: &Bytes) -> Option<ControlFrame> {
    let kind = *buf.first()?;
    let line = |b: &Bytes| -> Option<(String, Bytes)> {
        let i = b.iter().position(|&c| c == b'\n')?;
        let head = String::from_utf8(b[..i].to_vec()).ok()?;
        Some((head, b.slice(i + 1..)))
    };
    let (node, rest) = line(&buf.slice(1..))?;
    match kind {
        b'c' => Some(ControlFrame::Command {
            origin: node,
            body: rest,
        }),
        b'q' | b'a' => {
            let (id, body) = line(&rest)?;
            let id: u64 = id.parse().ok()?;
            Some(if kind == b'q' {
                ControlFrame::Question {
                    origin: node,
                    id,
                    body,
                }
            } else {
                ControlFrame::Answer { node, id, body }
            })
        }
        _ => None,
    }
}

fn simdutf8_check(b: &[u8]) -> Option<()> {
    std::str::from_utf8(b).ok().map(|_| ())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn info() -> ClientInfo {
        ClientInfo {
            client: "42".into(),
            user: "alice".into(),
            conn_info: Some(Bytes::from_static(b"{\"a\":1}")),
            chan_info: None,
        }
    }

    #[test]
    fn publication_round_trip() {
        for payload in [
            Payload::text("héllo\nworld"),
            Payload::binary(vec![0u8, 255, 10, 13]),
            Payload::text(""),
        ] {
            for info in [None, Some(info())] {
                let env = Envelope {
                    origin: "node-a".into(),
                    exclude: Some(7),
                    publisher: None,
                    info,
                    payload: payload.clone(),
                };
                let bytes = Bytes::from(encode(&env));
                assert_eq!(decode(&bytes), Some(env));
            }
        }
    }

    #[test]
    fn truncated_or_foreign_bytes_are_refused() {
        let env = Envelope {
            origin: "n".into(),
            exclude: None,
            publisher: Some(3),
            info: Some(info()),
            payload: Payload::text("x"),
        };
        let full = encode(&env);
        // Every strict prefix that cuts into the header is refused, never misread.
        let header = full.len() - 1;
        for n in 0..header {
            assert_eq!(
                decode(&Bytes::copy_from_slice(&full[..n])),
                None,
                "prefix {n}"
            );
        }
        let mut other = full.clone();
        other[0] = 9;
        assert_eq!(decode(&Bytes::from(other)), None);
        let mut bad_text = full;
        let last = bad_text.len() - 1;
        bad_text[last] = 0xff;
        assert_eq!(decode(&Bytes::from(bad_text)), None);
    }

    #[test]
    fn control_frames_round_trip() {
        let frames = [
            ControlFrame::Command {
                origin: "0123456789abcdef".into(),
                body: Bytes::from_static(b"{\"op\":\"x\"}\nwith a newline"),
            },
            ControlFrame::Command {
                origin: "n".into(),
                body: Bytes::new(),
            },
            ControlFrame::Question {
                origin: "n1".into(),
                id: u64::MAX,
                body: Bytes::from_static(b"q\n\n"),
            },
            ControlFrame::Answer {
                node: "n2".into(),
                id: 0,
                body: Bytes::from_static(&[0, 255, 10]),
            },
        ];
        for f in frames {
            assert_eq!(decode_control(&Bytes::from(encode_control(&f))), Some(f));
        }
    }

    #[test]
    fn unknown_or_broken_control_frames_are_refused() {
        for bad in [
            &b""[..],
            b"c",           // no node line
            b"cnode",       // no newline after the node
            b"qnode\n12",   // no newline after the id
            b"qnode\nx\nb", // id not a number
            b"anode\n-1\nb",
            b"znode\nbody", // a kind from a later version
        ] {
            assert_eq!(decode_control(&Bytes::from_static(bad)), None, "{bad:?}");
        }
    }

    #[test]
    fn info_round_trip() {
        let i = info();
        assert_eq!(decode_info(&Bytes::from(encode_info(&i))), Some(i));
        assert_eq!(decode_info(&Bytes::from_static(b"\x05\0\0")), None);
    }
}
