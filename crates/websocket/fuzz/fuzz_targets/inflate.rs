//! Fuzz the permessage-deflate inflater with arbitrary compressed input split into
//! arbitrary frames: no panic, output never beyond the limit, errors map to 1007/1009.
#![no_main]

use bytes::BytesMut;
use libfuzzer_sys::fuzz_target;
use switchboard_websocket::deflate::Inflater;

const LIMIT: usize = 256 * 1024;

fuzz_target!(|data: &[u8]| {
    if data.len() < 2 {
        return;
    }
    let bits = 8 + (data[0] & 7);
    let no_context_takeover = data[0] & 8 != 0;
    let frame_len = data[1] as usize + 1;
    let mut inflater = Inflater::new(bits, no_context_takeover);
    let mut out = BytesMut::new();
    let body = &data[2..];
    let frames: Vec<&[u8]> = body.chunks(frame_len).collect();
    for (i, frame) in frames.iter().enumerate() {
        // Every fourth frame (and the last) ends a message.
        let fin = i + 1 == frames.len() || i % 4 == 3;
        let mut seen = 0usize;
        let r = inflater.inflate(frame, fin, &mut out, LIMIT, &mut |chunk| {
            seen += chunk.len();
            Ok(())
        });
        assert!(out.len() <= LIMIT);
        assert!(out.capacity() <= LIMIT.max(64 * 1024));
        match r {
            Ok(()) => {}
            Err(e) => {
                let code = e.close_code().map(|c| c.0);
                assert!(code == Some(1007) || code == Some(1009), "{e}");
                return;
            }
        }
        if fin {
            out.clear();
        }
    }
});
