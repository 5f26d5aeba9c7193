//! Close codes and close frames (RFC 6455 §5.5.1, §7.4).
use bytes::Bytes;

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
        todo!()
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
