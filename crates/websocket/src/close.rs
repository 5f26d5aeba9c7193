//! Close codes and close frames (RFC 6455 §5.5.1, §7.4).
//!
//! Rules enforced when a close frame is received (RFC 6455 §5.5.1, §7.4.1, §7.4.2):
//!
//! * a payload of exactly one byte is malformed (the code needs two bytes) → 1002;
//! * the status code must be one a peer may send: 1000–1003, 1007–1014 or 3000–4999
//!   (1004–1006 and 1015 are reserved and never sent; 1016–2999 are reserved for future
//!   RFCs; 0–999 are unused) → otherwise 1002;
//! * the reason that follows the code must be valid UTF-8 (§5.5.1) → otherwise 1007.
use bytes::{BufMut, Bytes, BytesMut};

use crate::error::Error;

/// A WebSocket close status code (RFC 6455 §7.4).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct CloseCode(pub u16);

impl CloseCode {
    /// 1000: normal closure.
    pub const NORMAL: CloseCode = CloseCode(1000);
    /// 1001: endpoint going away (server shutdown, page navigation).
    pub const GOING_AWAY: CloseCode = CloseCode(1001);
    /// 1002: protocol error.
    pub const PROTOCOL_ERROR: CloseCode = CloseCode(1002);
    /// 1003: unsupported data type.
    pub const UNSUPPORTED: CloseCode = CloseCode(1003);
    /// 1005: no status received (never sent on the wire).
    pub const NO_STATUS: CloseCode = CloseCode(1005);
    /// 1006: abnormal closure (never sent on the wire).
    pub const ABNORMAL: CloseCode = CloseCode(1006);
    /// 1007: invalid frame payload data (e.g. bad UTF-8).
    pub const INVALID_PAYLOAD: CloseCode = CloseCode(1007);
    /// 1008: policy violation (used for slow consumers, auth).
    pub const POLICY: CloseCode = CloseCode(1008);
    /// 1009: message too big.
    pub const TOO_BIG: CloseCode = CloseCode(1009);
    /// 1010: client expected an extension the server did not negotiate.
    pub const MANDATORY_EXTENSION: CloseCode = CloseCode(1010);
    /// 1011: internal server error.
    pub const INTERNAL_ERROR: CloseCode = CloseCode(1011);

    /// Whether this code may appear in a close frame received from a peer
    /// (1000–1003, 1007–1014, 3000–4999).
    pub fn is_valid_on_wire(self) -> bool {
        matches!(self.0, 1000..=1003 | 1007..=1014 | 3000..=4999)
    }
}

impl From<u16> for CloseCode {
    fn from(code: u16) -> Self {
        CloseCode(code)
    }
}

/// A decoded close frame payload: status code and UTF-8 reason.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CloseFrame {
    /// Status code.
    pub code: CloseCode,
    /// Reason, valid UTF-8 (may be empty). At most 123 bytes.
    pub reason: Bytes,
}

/// Largest reason that fits in a control frame: 125 bytes minus the 2-byte code (§5.5).
pub const MAX_REASON_LEN: usize = 123;

impl CloseFrame {
    /// A close frame with the given code and reason.
    pub fn new(code: CloseCode, reason: impl Into<String>) -> CloseFrame {
        CloseFrame {
            code,
            reason: Bytes::from(reason.into()),
        }
    }

    /// The reason as text (always succeeds for frames produced by the decoder).
    pub fn reason_str(&self) -> &str {
        std::str::from_utf8(&self.reason).unwrap_or("")
    }

    /// Parse a received close payload (already unmasked).
    ///
    /// Empty payload → `Ok(None)`. One byte → 1002. Invalid code → 1002. Reason not UTF-8 → 1007.
    pub fn parse(payload: Bytes) -> Result<Option<CloseFrame>, Error> {
        match payload.len() {
            0 => Ok(None),
            1 => Err(Error::Protocol("close frame payload of one byte")),
            _ => {
                let code = CloseCode(u16::from_be_bytes([payload[0], payload[1]]));
                if !code.is_valid_on_wire() {
                    return Err(Error::Protocol("invalid close code"));
                }
                let reason = payload.slice(2..);
                if simdutf8::basic::from_utf8(&reason).is_err() {
                    return Err(Error::InvalidUtf8);
                }
                Ok(Some(CloseFrame { code, reason }))
            }
        }
    }

    /// Length of the encoded payload (code + reason).
    pub fn encoded_len(&self) -> usize {
        2 + self.reason.len()
    }

    /// Append the wire payload (big-endian code, then the reason) to `out`.
    ///
    /// Fails with [`Error::Protocol`] when the code may not be sent or the reason is longer
    /// than [`MAX_REASON_LEN`] or not UTF-8, so we never put a frame on the wire that a
    /// strict peer would reject.
    pub fn encode(&self, out: &mut BytesMut) -> Result<(), Error> {
        self.check()?;
        out.put_u16(self.code.0);
        out.extend_from_slice(&self.reason);
        Ok(())
    }

    /// Validate this frame for sending (see [`CloseFrame::encode`]).
    pub fn check(&self) -> Result<(), Error> {
        if !self.code.is_valid_on_wire() {
            return Err(Error::Protocol("close code may not be sent"));
        }
        if self.reason.len() > MAX_REASON_LEN {
            return Err(Error::Protocol("close reason longer than 123 bytes"));
        }
        if simdutf8::basic::from_utf8(&self.reason).is_err() {
            return Err(Error::Protocol("close reason is not UTF-8"));
        }
        Ok(())
    }
}
