//! Incremental UTF-8 validation for text messages that arrive in pieces (fragments, or
//! chunks of inflated output).
//!
//! RFC 6455 §8.1 requires closing with 1007 when a text message is not valid UTF-8, and
//! §5.6 says the whole *message* must be UTF-8 — a code point may be split across
//! fragments. We validate each piece as soon as it arrives (fail fast: an invalid byte in
//! the first fragment of a long message is reported on that fragment, not at the end) and
//! carry at most 3 bytes of an incomplete trailing sequence into the next piece.
//!
//! The fast path is `simdutf8::basic`; only when that reports a problem do we ask
//! `simdutf8::compat` where the error is and whether it is merely an incomplete sequence at
//! the end of the piece (`error_len() == None`).
use crate::error::Error;

/// Streaming UTF-8 validator. Feed pieces in order, then call [`Utf8Validator::finish`].
#[derive(Debug, Clone, Default)]
pub struct Utf8Validator {
    /// Bytes of an incomplete code point carried over from the previous piece.
    partial: [u8; 4],
    /// How many bytes of `partial` are in use (0..=3).
    partial_len: u8,
}

/// Total length of the sequence introduced by `lead`, or 0 if `lead` cannot start one.
fn sequence_len(lead: u8) -> usize {
    match lead {
        0x00..=0x7F => 1,
        0xC2..=0xDF => 2,
        0xE0..=0xEF => 3,
        0xF0..=0xF4 => 4,
        _ => 0,
    }
}

impl Utf8Validator {
    /// A validator at the start of a message.
    pub fn new() -> Utf8Validator {
        Utf8Validator::default()
    }

    /// Forget any carried state (start of a new message).
    pub fn reset(&mut self) {
        self.partial_len = 0;
    }

    /// Whether an incomplete code point is pending.
    pub fn is_incomplete(&self) -> bool {
        self.partial_len != 0
    }

    /// Validate the next piece. Fails with [`Error::InvalidUtf8`] as soon as the bytes seen so
    /// far cannot be the prefix of valid UTF-8.
    pub fn feed(&mut self, mut data: &[u8]) -> Result<(), Error> {
        if self.partial_len != 0 {
            let have = self.partial_len as usize;
            // The lead byte was accepted as a valid prefix before, so its length is known.
            let need = sequence_len(self.partial[0]) - have;
            let take = need.min(data.len());
            let mut seq = self.partial;
            seq[have..have + take].copy_from_slice(&data[..take]);
            let seq = &seq[..have + take];
            if take < need {
                // Still incomplete: check it is a valid prefix so far (fail fast).
                match simdutf8::compat::from_utf8(seq) {
                    Err(e) if e.error_len().is_some() => return Err(Error::InvalidUtf8),
                    _ => {}
                }
                self.partial[have..have + take].copy_from_slice(&data[..take]);
                self.partial_len = (have + take) as u8;
                return Ok(());
            }
            if simdutf8::basic::from_utf8(seq).is_err() {
                return Err(Error::InvalidUtf8);
            }
            self.partial_len = 0;
            data = &data[take..];
        }
        if simdutf8::basic::from_utf8(data).is_ok() {
            return Ok(());
        }
        match simdutf8::compat::from_utf8(data) {
            Ok(_) => Ok(()),
            Err(e) if e.error_len().is_some() => Err(Error::InvalidUtf8),
            Err(e) => {
                // An incomplete (but so far valid) sequence ends the piece: keep it.
                let tail = &data[e.valid_up_to()..];
                debug_assert!(!tail.is_empty() && tail.len() <= 3);
                self.partial[..tail.len()].copy_from_slice(tail);
                self.partial_len = tail.len() as u8;
                Ok(())
            }
        }
    }

    /// End of the message: fails if a code point was left incomplete. Resets the validator.
    pub fn finish(&mut self) -> Result<(), Error> {
        let incomplete = self.partial_len != 0;
        self.partial_len = 0;
        if incomplete {
            Err(Error::InvalidUtf8)
        } else {
            Ok(())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check_all_splits(bytes: &[u8]) {
        let expect = std::str::from_utf8(bytes).is_ok();
        for i in 0..=bytes.len() {
            for j in i..=bytes.len() {
                let mut v = Utf8Validator::new();
                let ok = v.feed(&bytes[..i]).is_ok()
                    && v.feed(&bytes[i..j]).is_ok()
                    && v.feed(&bytes[j..]).is_ok()
                    && v.finish().is_ok();
                assert_eq!(ok, expect, "{bytes:x?} split at {i},{j}");
            }
        }
    }

    #[test]
    fn splits_agree_with_std() {
        check_all_splits("héllo €uro 𝄞 ok".as_bytes());
        check_all_splits(b"\xe2\x82");
        check_all_splits(b"a\xf0\x9d\x84");
        check_all_splits(b"\xed\xa0\x80x"); // surrogate
        check_all_splits(b"\xf4\x90\x80\x80"); // > U+10FFFF
        check_all_splits(b"\xc0\xaf"); // overlong
        check_all_splits(b"ok\xffok");
        check_all_splits(b"\xe0\x80\x80");
    }

    #[test]
    fn fails_fast_on_impossible_prefix() {
        let mut v = Utf8Validator::new();
        // 0xF4 0x90 can never start a valid sequence; must fail before the rest arrives.
        assert!(v.feed(b"abc\xf4").is_ok());
        assert!(v.feed(b"\x90").is_err());
    }
}
