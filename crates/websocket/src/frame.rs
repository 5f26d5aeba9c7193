//! The frame layer of RFC 6455 §5.2: opcodes, header encoding and header parsing.
//!
//! Rules enforced here, independent of role and negotiated extensions:
//!
//! * reserved opcodes 0x3–0x7 and 0xB–0xF → 1002 (§5.2, "If an unknown opcode is received,
//!   the receiving endpoint MUST _Fail the WebSocket Connection_");
//! * control frames (opcode ≥ 0x8) carry at most 125 bytes and must not be fragmented, i.e.
//!   FIN must be set (§5.5) → 1002;
//! * a 64-bit payload length must have its most significant bit clear (§5.2) → 1002;
//! * **lengths must be minimally encoded** (§5.2: "the minimal number of bytes MUST be used to
//!   encode the length"): a 16-bit length below 126 or a 64-bit length below 65536 → 1002.
//!   Some implementations (and the Autobahn suite) accept non-minimal lengths; we choose the
//!   strict reading because a conforming sender never produces them.
//!
//! Masking (§5.1, §5.3) and RSV bits (§5.2, RFC 7692 §6) depend on the role and on the
//! negotiated extensions, so they are checked by the decoder in [`crate::codec`].
use bytes::{BufMut, BytesMut};

use crate::error::Error;

/// Largest possible frame header: 2 fixed bytes, 8 length bytes, 4 mask bytes.
pub const MAX_HEADER_LEN: usize = 14;

/// Largest payload of a control frame (§5.5).
pub const MAX_CONTROL_PAYLOAD: usize = 125;

/// A frame opcode (RFC 6455 §5.2, §11.8).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum OpCode {
    /// 0x0: continuation of a fragmented message.
    Continuation,
    /// 0x1: first frame of a text message.
    Text,
    /// 0x2: first frame of a binary message.
    Binary,
    /// 0x8: connection close.
    Close,
    /// 0x9: ping.
    Ping,
    /// 0xA: pong.
    Pong,
}

impl OpCode {
    /// Parse a 4-bit opcode, rejecting the reserved values with a protocol error (1002).
    pub fn from_u8(v: u8) -> Result<OpCode, Error> {
        match v {
            0x0 => Ok(OpCode::Continuation),
            0x1 => Ok(OpCode::Text),
            0x2 => Ok(OpCode::Binary),
            0x8 => Ok(OpCode::Close),
            0x9 => Ok(OpCode::Ping),
            0xA => Ok(OpCode::Pong),
            _ => Err(Error::Protocol("reserved opcode")),
        }
    }

    /// The 4-bit wire value.
    pub fn as_u8(self) -> u8 {
        match self {
            OpCode::Continuation => 0x0,
            OpCode::Text => 0x1,
            OpCode::Binary => 0x2,
            OpCode::Close => 0x8,
            OpCode::Ping => 0x9,
            OpCode::Pong => 0xA,
        }
    }

    /// Whether this is a control opcode (Close, Ping, Pong).
    pub fn is_control(self) -> bool {
        matches!(self, OpCode::Close | OpCode::Ping | OpCode::Pong)
    }
}

/// A parsed frame header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FrameHeader {
    /// Final fragment of the message.
    pub fin: bool,
    /// RSV1 ("per-message compressed" under permessage-deflate).
    pub rsv1: bool,
    /// RSV2 (no extension we support uses it).
    pub rsv2: bool,
    /// RSV3 (no extension we support uses it).
    pub rsv3: bool,
    /// The opcode.
    pub opcode: OpCode,
    /// Masking key, if the MASK bit was set.
    pub mask: Option<[u8; 4]>,
    /// Payload length in bytes.
    pub payload_len: u64,
}

/// Length of the header whose first two bytes are `b0`, `b1` (2, 4, 6, 8, 10 or 14).
#[inline]
pub fn header_len(b1: u8) -> usize {
    let len_bytes = match b1 & 0x7F {
        126 => 2,
        127 => 8,
        _ => 0,
    };
    2 + len_bytes + if b1 & 0x80 != 0 { 4 } else { 0 }
}

/// Parse a frame header at the start of `buf`.
///
/// Returns `Ok(None)` when more bytes are needed, otherwise the header and its length in
/// bytes. The role-independent rules listed in the module docs are checked as soon as the
/// bytes that carry them are present (the first two bytes are checked before waiting for the
/// extended length), so a bad frame fails before the rest of its header arrives.
pub fn parse_header(buf: &[u8]) -> Result<Option<(FrameHeader, usize)>, Error> {
    if buf.len() < 2 {
        return Ok(None);
    }
    let (b0, b1) = (buf[0], buf[1]);
    let opcode = OpCode::from_u8(b0 & 0x0F)?;
    let fin = b0 & 0x80 != 0;
    let len7 = b1 & 0x7F;
    if opcode.is_control() {
        if !fin {
            return Err(Error::Protocol("fragmented control frame"));
        }
        if len7 as usize > MAX_CONTROL_PAYLOAD {
            return Err(Error::Protocol(
                "control frame payload longer than 125 bytes",
            ));
        }
    }
    let hlen = header_len(b1);
    if buf.len() < hlen {
        return Ok(None);
    }
    let (payload_len, mask_at) = match len7 {
        126 => {
            let l = u16::from_be_bytes([buf[2], buf[3]]) as u64;
            if l < 126 {
                return Err(Error::Protocol("non-minimal 16-bit payload length"));
            }
            (l, 4)
        }
        127 => {
            let mut a = [0u8; 8];
            a.copy_from_slice(&buf[2..10]);
            let l = u64::from_be_bytes(a);
            if l >> 63 != 0 {
                return Err(Error::Protocol(
                    "64-bit payload length with the top bit set",
                ));
            }
            if l <= 0xFFFF {
                return Err(Error::Protocol("non-minimal 64-bit payload length"));
            }
            (l, 10)
        }
        l => (l as u64, 2),
    };
    let mask = if b1 & 0x80 != 0 {
        Some([
            buf[mask_at],
            buf[mask_at + 1],
            buf[mask_at + 2],
            buf[mask_at + 3],
        ])
    } else {
        None
    };
    Ok(Some((
        FrameHeader {
            fin,
            rsv1: b0 & 0x40 != 0,
            rsv2: b0 & 0x20 != 0,
            rsv3: b0 & 0x10 != 0,
            opcode,
            mask,
            payload_len,
        },
        hlen,
    )))
}

/// Write a frame header into a fixed array; returns the array and the number of bytes used.
#[inline]
pub fn write_header(
    fin: bool,
    rsv1: bool,
    opcode: OpCode,
    mask: Option<[u8; 4]>,
    payload_len: usize,
) -> ([u8; MAX_HEADER_LEN], usize) {
    let mut h = [0u8; MAX_HEADER_LEN];
    h[0] = (if fin { 0x80 } else { 0 }) | (if rsv1 { 0x40 } else { 0 }) | opcode.as_u8();
    let mask_bit = if mask.is_some() { 0x80 } else { 0 };
    let mut n = if payload_len < 126 {
        h[1] = mask_bit | payload_len as u8;
        2
    } else if payload_len <= 0xFFFF {
        h[1] = mask_bit | 126;
        h[2..4].copy_from_slice(&(payload_len as u16).to_be_bytes());
        4
    } else {
        h[1] = mask_bit | 127;
        h[2..10].copy_from_slice(&(payload_len as u64).to_be_bytes());
        10
    };
    if let Some(key) = mask {
        h[n..n + 4].copy_from_slice(&key);
        n += 4;
    }
    (h, n)
}

/// Append a frame header to `out` (minimal length encoding, §5.2).
#[inline]
pub fn encode_header(
    out: &mut BytesMut,
    fin: bool,
    rsv1: bool,
    opcode: OpCode,
    mask: Option<[u8; 4]>,
    payload_len: usize,
) {
    let (h, n) = write_header(fin, rsv1, opcode, mask, payload_len);
    out.put_slice(&h[..n]);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_round_trip() {
        for &len in &[0usize, 1, 125, 126, 127, 65535, 65536, 1 << 33] {
            for mask in [None, Some([9, 8, 7, 6])] {
                let mut out = BytesMut::new();
                encode_header(&mut out, true, true, OpCode::Binary, mask, len);
                for cut in 0..out.len() {
                    assert_eq!(parse_header(&out[..cut]).unwrap(), None);
                }
                let (h, n) = parse_header(&out).unwrap().unwrap();
                assert_eq!(n, out.len());
                assert_eq!(h.payload_len, len as u64);
                assert_eq!(h.mask, mask);
                assert!(h.fin && h.rsv1 && !h.rsv2 && !h.rsv3);
                assert_eq!(h.opcode, OpCode::Binary);
            }
        }
    }
}
