//! The permessage-deflate engine (RFC 7692 §7): raw DEFLATE with the `00 00 ff ff` tail
//! removed on send and re-added on receive, context takeover or not, and a hard output limit
//! on inflate so a "zip bomb" fails with 1009 instead of eating memory.
//!
//! * Sending (RFC 7692 §7.2.1): the message is compressed as raw DEFLATE (no zlib header),
//!   ended with a *sync flush*, and the 4 trailing bytes `00 00 ff ff` of the empty stored
//!   block the flush produces are removed.
//! * Receiving (§7.2.2): the 4 bytes are appended back to the last frame's payload before
//!   inflating. Each frame is inflated as it arrives (frames of one message form a single
//!   DEFLATE stream, §6.1), so a message is never held twice (compressed and inflated).
//! * Context takeover (§7.1.1): when `*_no_context_takeover` applies to a compressor, it is
//!   reset after every message; the matching inflater is reset too, which is allowed because
//!   the peer promised not to refer to earlier messages.
//! * Window bits (§7.1.2): 8 is accepted in negotiation but zlib-compatible engines cannot
//!   produce an 8-bit raw window, so 8 is used as 9 for both directions (the same choice zlib
//!   itself makes for `windowBits = 8`). Inflating with a window at least as large as the
//!   peer's is always safe.
//! * Memory (see docs/architecture.md, "Compression memory"): a compressor with a 32 KiB window
//!   holds about 300 KiB and an inflater about 45 KiB, far more than the rest of a connection.
//!   A compressor that resets after every message (no context takeover) carries nothing from
//!   one message to the next, so such compressions borrow one from a small per-thread pool
//!   ([`with_pooled_deflater`]) instead of owning one per connection.
//! * Limits: inflation stops with [`Error::MessageTooBig`] (1009) as soon as the output would
//!   exceed the caller's limit. Output grows in bounded chunks, never beyond the limit; whether
//!   more output is pending once the limit is reached is probed with a 1-byte stack buffer.

use std::cell::RefCell;

use bytes::BytesMut;
use flate2::{Compress, Compression, Decompress, FlushCompress, FlushDecompress, Status};

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

/// The empty stored block a sync flush ends with (RFC 7692 §7.2.1, §7.2.2).
pub const DEFLATE_TAIL: [u8; 4] = [0x00, 0x00, 0xff, 0xff];

/// Compression level used for outgoing messages. Level 6 is zlib's default trade-off and
/// what browsers and Node `ws` use.
pub const COMPRESSION_LEVEL: u32 = 6;

/// How much output space inflation adds at a time: large messages inflate in chunks.
const INFLATE_CHUNK: usize = 32 * 1024;

/// Make room for `additional` more bytes in `out` without letting its capacity exceed
/// `max_total` (unless it already does). Unlike `BytesMut::reserve`, this never doubles past
/// the cap, so a hostile stream cannot make us allocate more than the limit.
fn reserve_capped(out: &mut BytesMut, additional: usize, max_total: usize) {
    let needed = out.len() + additional;
    if out.capacity() >= needed {
        return;
    }
    let target = needed
        .max(out.capacity().saturating_mul(2))
        .min(max_total.max(needed));
    if out.is_empty() {
        *out = BytesMut::with_capacity(target);
    } else {
        let mut grown = BytesMut::with_capacity(target);
        grown.extend_from_slice(out);
        *out = grown;
    }
}

/// Outgoing side of permessage-deflate: one LZ77 compressor per connection (or per broadcast).
pub struct Deflater {
    compress: Compress,
    no_context_takeover: bool,
}

impl std::fmt::Debug for Deflater {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Deflater")
            .field("no_context_takeover", &self.no_context_takeover)
            .finish_non_exhaustive()
    }
}

impl Deflater {
    /// A compressor with the given window bits (8..=15) that resets after each message when
    /// `no_context_takeover` is set.
    pub fn new(window_bits: u8, no_context_takeover: bool) -> Deflater {
        Deflater {
            compress: Compress::new_with_window_bits(
                Compression::new(COMPRESSION_LEVEL),
                false,
                zlib_window_bits(window_bits),
            ),
            no_context_takeover,
        }
    }

    /// Compress one whole message, appending the payload (without the `00 00 ff ff` tail)
    /// to `out`.
    pub fn compress(&mut self, input: &[u8], out: &mut BytesMut) -> Result<(), Error> {
        let start = out.len();
        let mut written = start;
        let mut consumed = 0usize;
        // A first guess that fits most messages in one call: incompressible data grows by a
        // few bytes per 16 KiB block plus the flush marker.
        let mut chunk = input.len() / 2 + 64;
        loop {
            out.resize(written + chunk, 0);
            let (in0, out0) = (self.compress.total_in(), self.compress.total_out());
            self.compress
                .compress(&input[consumed..], &mut out[written..], FlushCompress::Sync)
                .map_err(|e| Error::Compression(e.to_string()))?;
            consumed += (self.compress.total_in() - in0) as usize;
            written += (self.compress.total_out() - out0) as usize;
            // After a sync flush, unused output space means the flush completed.
            if consumed == input.len() && written < out.len() {
                break;
            }
            chunk = chunk.max(4096);
        }
        out.truncate(written);
        if out[start..].ends_with(&DEFLATE_TAIL) {
            out.truncate(written - DEFLATE_TAIL.len());
        } else {
            // Nothing was flushed (zlib emits no empty block for empty input right after a
            // previous flush). §7.2.1 step 2: append an empty stored block ourselves; with its
            // `00 00 ff ff` removed that is the single byte 0x00 (BFINAL=0, BTYPE=00, padding).
            // Without it the receiver's re-appended tail would not form a valid block.
            out.extend_from_slice(&[0x00]);
        }
        if self.no_context_takeover {
            self.compress.reset();
        }
        Ok(())
    }

    /// Forget all history (start a fresh DEFLATE stream).
    pub fn reset(&mut self) {
        self.compress.reset();
    }
}

/// Compressors kept per thread for [`with_pooled_deflater`]; more than one only matters for
/// a pool entry per window size or for a compression that runs inside another.
const POOL_PER_THREAD: usize = 4;

thread_local! {
    /// Idle compressors of this thread, each reset and ready for a new message.
    static DEFLATER_POOL: RefCell<Vec<(u8, Deflater)>> = const { RefCell::new(Vec::new()) };
}

/// Run `f` with a compressor that starts from an empty history and whose window is
/// `window_bits` (8..=15), borrowed from this thread's pool (or built when the pool has none
/// of that size), and give it back, reset, afterwards.
///
/// Meant for messages sent under no context takeover (RFC 7692 §7.1.1): such a message must
/// not refer to earlier ones anyway, so the compressor has nothing worth keeping per
/// connection and thousands of connections can share a handful of them. The pool is not
/// locked: each thread has its own, and the compressor is taken out of it while `f` runs.
pub fn with_pooled_deflater<R>(window_bits: u8, f: impl FnOnce(&mut Deflater) -> R) -> R {
    let bits = zlib_window_bits(window_bits);
    let pooled = DEFLATER_POOL.with(|p| {
        let mut p = p.borrow_mut();
        let i = p.iter().position(|(b, _)| *b == bits)?;
        Some(p.swap_remove(i).1)
    });
    let mut deflater = pooled.unwrap_or_else(|| Deflater::new(bits, true));
    let out = f(&mut deflater);
    // `compress` already reset it (no context takeover); an error may have left it
    // mid-stream, so reset again rather than trust that.
    deflater.reset();
    DEFLATER_POOL.with(|p| {
        let mut p = p.borrow_mut();
        if p.len() < POOL_PER_THREAD {
            p.push((bits, deflater));
        }
    });
    out
}

thread_local! {
    /// Idle inflaters of this thread, reset, for [`pooled_inflater`].
    // Kept boxed: a decoder holds its inflater boxed, and taking one from the pool or giving
    // it back moves the pointer instead of allocating.
    #[allow(clippy::vec_box)]
    static INFLATER_POOL: RefCell<Vec<Box<Inflater>>> = const { RefCell::new(Vec::new()) };
}

/// An inflater for a peer that compresses with `window_bits` (8..=15) and does not keep
/// context between messages, taken from this thread's pool when it has one of that size.
/// Hand it back with [`recycle_inflater`] at the end of the message.
///
/// Reusing them matters for memory, not only for speed: thousands of connections each
/// allocating ≈ 45 KiB for one message and freeing it again leave the heap fragmented, and the
/// holes stay resident. Boxed, so that a decoder without one (every idle connection) keeps
/// only a pointer's room for it.
pub fn pooled_inflater(window_bits: u8) -> Box<Inflater> {
    let bits = zlib_window_bits(window_bits);
    INFLATER_POOL
        .with(|p| {
            let mut p = p.borrow_mut();
            let i = p.iter().position(|inf| inf.window_bits == bits)?;
            Some(p.swap_remove(i))
        })
        .unwrap_or_else(|| Box::new(Inflater::new(bits, true)))
}

/// Give an inflater back to this thread's pool (after the last frame of a message). It is
/// reset first, so whatever it inflated before cannot be referred to by the next message it
/// serves (a stream referring to an empty window fails to inflate).
pub fn recycle_inflater(mut inflater: Box<Inflater>) {
    inflater.reset();
    inflater.no_context_takeover = true;
    INFLATER_POOL.with(|p| {
        let mut p = p.borrow_mut();
        if p.len() < POOL_PER_THREAD {
            p.push(inflater);
        }
    });
}

/// Incoming side of permessage-deflate with a hard output limit.
pub struct Inflater {
    decompress: Decompress,
    /// The window size it was built for (as given to zlib), to pool it by size.
    window_bits: u8,
    no_context_takeover: bool,
    /// Whether the current message has supplied any compressed bytes yet.
    message_started: bool,
}

impl std::fmt::Debug for Inflater {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Inflater")
            .field("no_context_takeover", &self.no_context_takeover)
            .finish_non_exhaustive()
    }
}

impl Inflater {
    /// A decompressor for a peer compressing with `window_bits` (8..=15).
    pub fn new(window_bits: u8, no_context_takeover: bool) -> Inflater {
        Inflater {
            decompress: Decompress::new_with_window_bits(false, zlib_window_bits(window_bits)),
            window_bits: zlib_window_bits(window_bits),
            no_context_takeover,
            message_started: false,
        }
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
        self.run(input, out, limit, on_output)?;
        self.message_started |= !input.is_empty();
        if fin {
            // A message with no compressed bytes at all is an empty message. The tail alone
            // is not a valid block (its header bits belong in the last payload byte), so it
            // is only appended after real data.
            if std::mem::take(&mut self.message_started) {
                self.run(&DEFLATE_TAIL, out, limit, on_output)?;
            }
            if self.no_context_takeover {
                self.decompress.reset(false);
            }
        }
        Ok(())
    }

    /// Forget all history (the next message starts a fresh DEFLATE stream).
    pub fn reset(&mut self) {
        self.decompress.reset(false);
        self.message_started = false;
    }

    fn run(
        &mut self,
        input: &[u8],
        out: &mut BytesMut,
        limit: usize,
        on_output: &mut dyn FnMut(&[u8]) -> Result<(), Error>,
    ) -> Result<(), Error> {
        let mut pos = 0usize;
        loop {
            let room = limit.saturating_sub(out.len());
            let (in0, out0) = (self.decompress.total_in(), self.decompress.total_out());
            let (status, filled) = if room == 0 {
                // At the limit: any further output byte means the message is too big.
                let mut probe = [0u8; 1];
                let status = self
                    .decompress
                    .decompress(&input[pos..], &mut probe, FlushDecompress::Sync)
                    .map_err(|e| Error::Compression(e.to_string()))?;
                if self.decompress.total_out() != out0 {
                    return Err(Error::MessageTooBig { limit });
                }
                (status, false)
            } else {
                let want = (input.len() - pos)
                    .saturating_mul(4)
                    .clamp(1024, INFLATE_CHUNK)
                    .min(room);
                reserve_capped(out, want, limit);
                let old = out.len();
                out.resize(old + want, 0);
                let status = self
                    .decompress
                    .decompress(&input[pos..], &mut out[old..], FlushDecompress::Sync)
                    .map_err(|e| Error::Compression(e.to_string()));
                let produced = (self.decompress.total_out() - out0) as usize;
                out.truncate(old + produced);
                let status = status?;
                if produced > 0 {
                    on_output(&out[old..])?;
                }
                (status, produced == want)
            };
            let consumed = (self.decompress.total_in() - in0) as usize;
            let produced = self.decompress.total_out() - out0;
            pos += consumed;
            if status == Status::StreamEnd {
                // The peer ended the DEFLATE stream (BFINAL). Whatever follows starts a new
                // stream, as a fresh compressor on the peer would produce.
                self.decompress.reset(false);
                if pos == input.len() {
                    return Ok(());
                }
                continue;
            }
            if pos == input.len() && !filled {
                return Ok(());
            }
            if consumed == 0 && produced == 0 {
                if pos == input.len() {
                    return Ok(());
                }
                return Err(Error::Compression("inflate made no progress".into()));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn inflate(bits: u8, payload: &[u8]) -> Vec<u8> {
        let mut out = BytesMut::new();
        Inflater::new(bits, true)
            .inflate(payload, true, &mut out, 1 << 20, &mut |_| Ok(()))
            .unwrap();
        out.to_vec()
    }

    #[test]
    fn pooled_compressor_starts_fresh_every_time() {
        let msg = b"the same message, compressed again and again by a shared compressor".repeat(4);
        let mut fresh = BytesMut::new();
        Deflater::new(15, true).compress(&msg, &mut fresh).unwrap();
        for _ in 0..3 {
            // A compressor that remembered the previous message would emit back-references
            // (and fewer bytes) instead of the output of a fresh one.
            let mut pooled = BytesMut::new();
            with_pooled_deflater(15, |d| d.compress(&msg, &mut pooled)).unwrap();
            assert_eq!(pooled, fresh);
            assert_eq!(inflate(15, &pooled), msg);
        }
    }

    #[test]
    fn pool_keeps_window_sizes_apart_and_allows_nesting() {
        let msg = b"abcabcabcabcabcabcabcabcabcabcabcabc".repeat(30);
        let (mut a, mut b) = (BytesMut::new(), BytesMut::new());
        with_pooled_deflater(9, |outer| {
            // A compression inside another (e.g. a hook that sends) takes a second compressor.
            with_pooled_deflater(9, |inner| inner.compress(&msg, &mut b)).unwrap();
            outer.compress(&msg, &mut a)
        })
        .unwrap();
        assert_eq!(a, b);
        assert_eq!(inflate(9, &a), msg);
        let mut c = BytesMut::new();
        with_pooled_deflater(15, |d| d.compress(&msg, &mut c)).unwrap();
        assert_eq!(inflate(15, &c), msg);
        DEFLATER_POOL.with(|p| assert!(p.borrow().len() <= POOL_PER_THREAD));
    }

    #[test]
    fn recycled_inflater_forgets_the_previous_message() {
        let first = b"a message whose bytes the next one must not be able to copy".repeat(3);
        let mut c1 = BytesMut::new();
        Deflater::new(15, true).compress(&first, &mut c1).unwrap();
        // The second message is compressed by a compressor that *kept* context, so it
        // refers back into the first message.
        let mut keep = Deflater::new(15, false);
        let mut c2 = BytesMut::new();
        keep.compress(&first, &mut c2).unwrap();
        c2.clear();
        keep.compress(&first, &mut c2).unwrap();

        let mut inf = pooled_inflater(15);
        let mut out = BytesMut::new();
        inf.inflate(&c1, true, &mut out, 1 << 20, &mut |_| Ok(()))
            .unwrap();
        assert_eq!(out, first);
        recycle_inflater(inf);
        let mut inf = pooled_inflater(15);
        let mut out = BytesMut::new();
        let res = inf.inflate(&c2, true, &mut out, 1 << 20, &mut |_| Ok(()));
        assert!(
            res.is_err(),
            "a reference into the previous message must fail"
        );
        recycle_inflater(inf);
        // And a fresh message still inflates with it.
        let mut inf = pooled_inflater(15);
        let mut out = BytesMut::new();
        inf.inflate(&c1, true, &mut out, 1 << 20, &mut |_| Ok(()))
            .unwrap();
        assert_eq!(out, first);
    }
}
