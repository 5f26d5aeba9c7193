//! Fuzz the decoder: arbitrary bytes, either role, with or without permessage-deflate,
//! fed in arbitrary chunks. Checks: no panic, the decoder never holds more than its limit,
//! every text message it returns is UTF-8, and control payloads are at most 125 bytes.
#![no_main]

use bytes::BytesMut;
use libfuzzer_sys::fuzz_target;
use switchboard_websocket::codec::{Config, Decoder, Role};
use switchboard_websocket::deflate::DeflateParams;
use switchboard_websocket::Message;

fuzz_target!(|data: &[u8]| {
    if data.len() < 3 {
        return;
    }
    // First bytes choose the setup; the rest is the wire.
    let (setup, wire) = data.split_at(3);
    let role = if setup[0] & 1 == 0 {
        Role::Server
    } else {
        Role::Client
    };
    let deflate = (setup[0] & 2 != 0).then(|| DeflateParams {
        server_no_context_takeover: setup[0] & 4 != 0,
        client_no_context_takeover: setup[0] & 8 != 0,
        server_max_window_bits: 8 + (setup[1] & 7),
        client_max_window_bits: 8 + ((setup[1] >> 3) & 7),
    });
    let config = Config {
        max_message_size: 64 * 1024,
        max_frame_size: 16 * 1024,
        deflate,
        compression_threshold: 0,
    };
    let mut dec = Decoder::new(role, config);
    let mut buf = BytesMut::new();
    let mut chunk = (setup[2] as usize % 64) + 1;
    let mut pos = 0;
    while pos < wire.len() {
        let n = chunk.min(wire.len() - pos);
        buf.extend_from_slice(&wire[pos..pos + n]);
        pos += n;
        // Vary the chunk size deterministically from the data itself.
        chunk = (wire[pos - 1] as usize % 97) + 1;
        loop {
            match dec.decode(&mut buf) {
                Ok(Some(msg)) => match msg {
                    Message::Text(t) => assert!(std::str::from_utf8(&t).is_ok()),
                    Message::Ping(p) | Message::Pong(p) => assert!(p.len() <= 125),
                    Message::Close(Some(c)) => {
                        assert!(c.code.is_valid_on_wire());
                        assert!(std::str::from_utf8(&c.reason).is_ok());
                    }
                    _ => {}
                },
                Ok(None) => break,
                Err(e) => {
                    assert!(e.close_code().is_some());
                    return;
                }
            }
            assert!(dec.buffered_len() <= 64 * 1024);
        }
        assert!(dec.buffered_len() <= 64 * 1024);
    }
});
