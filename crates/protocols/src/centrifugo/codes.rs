//! Error, unsubscribe and disconnect codes of the Centrifugo client protocol.
//!
//! Values and messages follow the published code list (Centrifugo documentation, "Client
//! protocol codes") and the reference server library (`centrifugal/centrifuge`, `errors.go`
//! and `disconnect.go`). Clients act on the numbers, so they must match exactly; the
//! messages are for humans but are kept identical so logs read the same as Centrifugo's.

use std::borrow::Cow;
use std::fmt;

use serde::{Deserialize, Serialize};

/// An error in a reply to a command: `{"code":103,"message":"permission denied"}`.
///
/// Zero values are omitted on the wire (`temporary` only appears when true), as the
/// reference encoder does.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Error {
    /// The error code: 100–399 are reserved by the protocol, 400–1999 are free for
    /// applications.
    #[serde(default, skip_serializing_if = "super::is_zero_u32")]
    pub code: u32,
    /// A short human-readable description.
    #[serde(default, skip_serializing_if = "str::is_empty")]
    pub message: Cow<'static, str>,
    /// Whether retrying the same command later may succeed (SDKs retry temporary errors).
    #[serde(default, skip_serializing_if = "super::is_false")]
    pub temporary: bool,
}

impl Error {
    /// 100: something went wrong on the server; the client is most probably not guilty.
    pub const INTERNAL: Error = Error::fixed(100, "internal server error", true);
    /// 101: the request is not authorized.
    pub const UNAUTHORIZED: Error = Error::fixed(101, "unauthorized", false);
    /// 102: the channel (usually its namespace) does not exist.
    pub const UNKNOWN_CHANNEL: Error = Error::fixed(102, "unknown channel", false);
    /// 103: access to the resource is not allowed.
    pub const PERMISSION_DENIED: Error = Error::fixed(103, "permission denied", false);
    /// 104: the method named in the command does not exist.
    pub const METHOD_NOT_FOUND: Error = Error::fixed(104, "method not found", false);
    /// 105: the client is already subscribed to this channel.
    pub const ALREADY_SUBSCRIBED: Error = Error::fixed(105, "already subscribed", false);
    /// 106: some limit was exceeded.
    pub const LIMIT_EXCEEDED: Error = Error::fixed(106, "limit exceeded", false);
    /// 107: the request is malformed; retrying makes no sense.
    pub const BAD_REQUEST: Error = Error::fixed(107, "bad request", false);
    /// 107 "bad request" for a channel name no channel can have (empty, too long, or with
    /// whitespace or control characters), saying so.
    pub const INVALID_CHANNEL: Error =
        Error::fixed(107, "bad request: invalid channel name", false);
    /// 108: the feature is not enabled (e.g. history in a namespace without history, or an
    /// `rpc` with no handler configured).
    pub const NOT_AVAILABLE: Error = Error::fixed(108, "not available", false);
    /// 109: the connection or subscription token expired; SDKs fetch a new token.
    pub const TOKEN_EXPIRED: Error = Error::fixed(109, "token expired", false);
    /// 110: the connection expired (no token involved).
    pub const EXPIRED: Error = Error::fixed(110, "expired", false);
    /// 111: rejected by rate limiting.
    pub const TOO_MANY_REQUESTS: Error = Error::fixed(111, "too many requests", true);
    /// 112: the stream no longer holds the requested range (history trimmed, or the epoch
    /// changed).
    pub const UNRECOVERABLE_POSITION: Error = Error::fixed(112, "unrecoverable position", false);
    /// 113: the token was revoked; SDKs fetch a new token.
    pub const TOKEN_REVOKED: Error = Error::fixed(113, "token revoked", false);

    const fn fixed(code: u32, message: &'static str, temporary: bool) -> Error {
        Error {
            code,
            message: Cow::Borrowed(message),
            temporary,
        }
    }

    /// A custom (application) error; use codes 400–1999.
    pub fn new(code: u32, message: impl Into<Cow<'static, str>>) -> Error {
        Error {
            code,
            message: message.into(),
            temporary: false,
        }
    }

    /// The same error, marked temporary.
    pub fn temporary(mut self) -> Error {
        self.temporary = true;
        self
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.code, self.message)
    }
}

impl std::error::Error for Error {}

/// Why the server closes a connection: the code and reason go into the WebSocket close
/// frame (protocol v2 carries no `disconnect` push over WebSocket).
///
/// The client decides from the code alone whether to reconnect: see [`Disconnect::reconnect`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Disconnect {
    /// Close code: 3000–3499 and 4000–4499 reconnect, 3500–3999 and 4500–4999 are terminal.
    pub code: u16,
    /// Human-readable reason. A WebSocket close reason must fit in 123 bytes.
    pub reason: Cow<'static, str>,
}

impl Disconnect {
    /// 3000: the connection closed without advice from the server.
    pub const CONNECTION_CLOSED: Disconnect = Disconnect::fixed(3000, "connection closed");
    /// 3001: the node is shutting down.
    pub const SHUTDOWN: Disconnect = Disconnect::fixed(3001, "shutdown");
    /// 3004: internal server error.
    pub const SERVER_ERROR: Disconnect = Disconnect::fixed(3004, "internal server error");
    /// 3005: the connection expired.
    pub const EXPIRED: Disconnect = Disconnect::fixed(3005, "connection expired");
    /// 3006: a subscription expired.
    pub const SUB_EXPIRED: Disconnect = Disconnect::fixed(3006, "subscription expired");
    /// 3008: the client does not read fast enough.
    pub const SLOW: Disconnect = Disconnect::fixed(3008, "slow");
    /// 3009: writing to the connection failed.
    pub const WRITE_ERROR: Disconnect = Disconnect::fixed(3009, "write error");
    /// 3010: the client's stream position is wrong; reconnecting lets it recover.
    pub const INSUFFICIENT_STATE: Disconnect = Disconnect::fixed(3010, "insufficient state");
    /// 3011: the server asks the client to reconnect.
    pub const FORCE_RECONNECT: Disconnect = Disconnect::fixed(3011, "force reconnect");
    /// 3012: no pong to the server's ping in time.
    pub const NO_PONG: Disconnect = Disconnect::fixed(3012, "no pong");
    /// 3013: the client sends too many commands.
    pub const TOO_MANY_REQUESTS: Disconnect = Disconnect::fixed(3013, "too many requests");
    /// 3500 (terminal): the connection token is invalid.
    pub const INVALID_TOKEN: Disconnect = Disconnect::fixed(3500, "invalid token");
    /// 3501 (terminal): malformed frames or a wrong order of commands.
    pub const BAD_REQUEST: Disconnect = Disconnect::fixed(3501, "bad request");
    /// 3502 (terminal): the connection did not authenticate in time.
    pub const STALE: Disconnect = Disconnect::fixed(3502, "stale");
    /// 3503 (terminal): the server disconnects and asks not to reconnect.
    pub const FORCE_NO_RECONNECT: Disconnect = Disconnect::fixed(3503, "force disconnect");
    /// 3504 (terminal): a connection limit was reached.
    pub const CONNECTION_LIMIT: Disconnect = Disconnect::fixed(3504, "connection limit");
    /// 3505 (terminal): a channel limit was reached.
    pub const CHANNEL_LIMIT: Disconnect = Disconnect::fixed(3505, "channel limit");
    /// 3506 (terminal): the connection's format cannot carry the data (Centrifugo uses this
    /// when a JSON client would receive binary data; we embed binary as base64 instead).
    pub const INAPPROPRIATE_PROTOCOL: Disconnect =
        Disconnect::fixed(3506, "inappropriate protocol");
    /// 3507 (terminal): not enough permissions.
    pub const PERMISSION_DENIED: Disconnect = Disconnect::fixed(3507, "permission denied");
    /// 3508 (terminal): the feature is not available (e.g. `send` with no handler).
    pub const NOT_AVAILABLE: Disconnect = Disconnect::fixed(3508, "not available");
    /// 3509 (terminal): the client produced too many errors.
    pub const TOO_MANY_ERRORS: Disconnect = Disconnect::fixed(3509, "too many errors");
    /// 3511 (terminal): the connection was idle for too long.
    pub const IDLE_TIMEOUT: Disconnect = Disconnect::fixed(3511, "idle timeout");

    const fn fixed(code: u16, reason: &'static str) -> Disconnect {
        Disconnect {
            code,
            reason: Cow::Borrowed(reason),
        }
    }

    /// A custom disconnect; applications use 4000–4499 (reconnect) and 4500–4999 (terminal).
    pub fn new(code: u16, reason: impl Into<Cow<'static, str>>) -> Disconnect {
        Disconnect {
            code,
            reason: reason.into(),
        }
    }

    /// Whether a protocol v2 client reconnects after this code: below 3500, 4000–4499, and
    /// 5000 and above reconnect; 3500–3999 and 4500–4999 are terminal.
    pub fn reconnect(&self) -> bool {
        self.code < 3500 || self.code >= 5000 || (4000..4500).contains(&self.code)
    }

    /// The `disconnect` push carrying this advice (used where there is no close frame,
    /// e.g. unidirectional transports).
    pub fn to_push(&self) -> super::Push {
        super::Push {
            channel: String::new(),
            body: super::PushBody::Disconnect(super::DisconnectPush {
                code: u32::from(self.code),
                reason: self.reason.to_string(),
                reconnect: self.reconnect(),
            }),
        }
    }
}

impl fmt::Display for Disconnect {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.code, self.reason)
    }
}

/// Codes of the `unsubscribe` push: 2500 and above make the SDK resubscribe, below 2500 the
/// subscription ends.
pub mod unsubscribe_code {
    /// 2000: a server-side unsubscribe (API call); no resubscribe.
    pub const SERVER: u32 = 2000;
    /// 2500: insufficient state in the stream; the SDK resubscribes and recovers.
    pub const INSUFFICIENT_STATE: u32 = 2500;
    /// 2501: the subscription expired; the SDK resubscribes with a new token.
    pub const EXPIRED: u32 = 2501;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reconnect_ranges_follow_the_spec() {
        for (code, reconnect) in [
            (3000, true),
            (3499, true),
            (3500, false),
            (3999, false),
            (4000, true),
            (4499, true),
            (4500, false),
            (4999, false),
            (5000, true),
        ] {
            assert_eq!(Disconnect::new(code, "x").reconnect(), reconnect, "{code}");
        }
        assert!(!Disconnect::BAD_REQUEST.reconnect());
        assert!(Disconnect::SHUTDOWN.reconnect());
    }

    #[test]
    fn error_json_omits_zero_values() {
        let json = serde_json::to_string(&Error::PERMISSION_DENIED).unwrap();
        assert_eq!(json, r#"{"code":103,"message":"permission denied"}"#);
        let json = serde_json::to_string(&Error::INTERNAL).unwrap();
        assert_eq!(
            json,
            r#"{"code":100,"message":"internal server error","temporary":true}"#
        );
        let back: Error = serde_json::from_str(&json).unwrap();
        assert_eq!(back, Error::INTERNAL);
    }
}
