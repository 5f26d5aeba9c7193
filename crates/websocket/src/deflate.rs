//! The permessage-deflate engine (RFC 7692 §7): raw DEFLATE with the `00 00 ff ff` tail
//! removed on send and re-added on receive, context takeover or not, and a hard output limit
//! on inflate so a "zip bomb" fails with 1009 instead of eating memory.

/// Parameters agreed for one connection (RFC 7692 §7.1).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DeflateParams {
    /// The server resets its compressor after each message.
    pub server_no_context_takeover: bool,
    /// The client resets its compressor after each message.
    pub client_no_context_takeover: bool,
    /// LZ77 window of the server's compressor, 8..=15 (8 is used as 9, as zlib requires).
    pub server_max_window_bits: u8,
    /// LZ77 window of the client's compressor, 8..=15.
    pub client_max_window_bits: u8,
}

impl Default for DeflateParams {
    fn default() -> Self {
        DeflateParams {
            server_no_context_takeover: false,
            client_no_context_takeover: false,
            server_max_window_bits: 15,
            client_max_window_bits: 15,
        }
    }
}
