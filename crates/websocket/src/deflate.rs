//! The permessage-deflate engine (RFC 7692 §7): raw DEFLATE with the `00 00 ff ff` tail
//! removed on send and re-added on receive, context takeover or not, and a hard output limit
//! on inflate so a "zip bomb" fails with 1009 instead of eating memory.

use bytes::BytesMut;

use crate::error::Error;

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

impl DeflateParams {
    /// Window bits to give zlib for a negotiated value: 8 is raised to 9 (see [`zlib_window_bits`]).
    pub fn zlib_bits(bits: u8) -> u8 {
        zlib_window_bits(bits)
    }
}

/// Map a negotiated `*_max_window_bits` value (8..=15) onto what zlib accepts (9..=15).
pub fn zlib_window_bits(bits: u8) -> u8 {
    bits.clamp(9, 15)
}

/// Outgoing side of permessage-deflate: one LZ77 compressor per connection (or per broadcast).
pub struct Deflater {
    _p: (),
}

impl Deflater {
    /// A compressor with the given window bits (8..=15) that resets after each message when
    /// `no_context_takeover` is set.
    pub fn new(window_bits: u8, no_context_takeover: bool) -> Deflater {
        let _ = (window_bits, no_context_takeover);
        todo!()
    }

    /// Compress one whole message, appending the payload (without the `00 00 ff ff` tail)
    /// to `out`.
    pub fn compress(&mut self, input: &[u8], out: &mut BytesMut) -> Result<(), Error> {
        let _ = (input, out);
        todo!()
    }
}

/// Incoming side of permessage-deflate with a hard output limit.
pub struct Inflater {
    _p: (),
}

impl Inflater {
    /// A decompressor for a peer compressing with `window_bits` (8..=15).
    pub fn new(window_bits: u8, no_context_takeover: bool) -> Inflater {
        let _ = (window_bits, no_context_takeover);
        todo!()
    }

    /// Inflate one frame's compressed payload, appending to `out` and never letting `out`
    /// grow past `limit` bytes in total (→ [`Error::MessageTooBig`]). `fin` marks the last
    /// frame of the message: the `00 00 ff ff` tail is appended to the input then.
    /// `on_output` sees each newly produced chunk (for incremental UTF-8 checks).
    pub fn inflate(
        &mut self,
        input: &[u8],
        fin: bool,
        out: &mut BytesMut,
        limit: usize,
        on_output: &mut dyn FnMut(&[u8]) -> Result<(), Error>,
    ) -> Result<(), Error> {
        let _ = (input, fin, out, limit, on_output);
        todo!()
    }
}
