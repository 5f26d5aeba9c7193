//! Fuzz the Engine.IO and Socket.IO decoders: the input is a polling body, then split into
//! WebSocket messages (text or binary, chosen by the input) fed to one Socket.IO decoder with
//! small attachment limits. Checks: no panic; the decoder never buffers more attachment
//! bytes than its limit; a packet that decodes, encoded again, decodes to the same packet.
#![no_main]

use bytes::Bytes;
use libfuzzer_sys::fuzz_target;
use switchboard_protocols::socketio::engine::{self, Packet as EnginePacket};
use switchboard_protocols::socketio::{Decoder, Packet};

const MAX_ATTACHMENTS: usize = 4;
const MAX_ATTACHMENT_BYTES: usize = 256;

fuzz_target!(|data: &[u8]| {
    // The whole input as a polling POST body and as one WebSocket text frame.
    let body = Bytes::copy_from_slice(data);
    if let Ok(packets) = engine::decode_payload(&body) {
        let encoded = engine::encode_payload(&packets);
        let again = engine::decode_payload(&encoded).expect("re-encoded payload decodes");
        assert_eq!(again, packets, "payload round trip");
    }
    let _ = EnginePacket::decode_text(data);

    // The input as messages separated by 0xff: a leading 0x00 marks a binary message.
    let mut decoder = Decoder::with_limits(MAX_ATTACHMENTS, MAX_ATTACHMENT_BYTES);
    for message in data.split(|b| *b == 0xff) {
        let result = match message.split_first() {
            Some((0, bin)) => decoder.binary(Bytes::copy_from_slice(bin)),
            _ => match std::str::from_utf8(message) {
                Ok(text) => decoder.text(text),
                Err(_) => continue,
            },
        };
        assert!(
            decoder.pending_bytes() <= MAX_ATTACHMENT_BYTES,
            "attachment bound"
        );
        match result {
            Ok(Some(packet)) if packet.attachments.is_empty() => {
                let text = packet.encode();
                let again = Packet::decode(&text).expect("re-encoded packet decodes");
                assert_eq!(again, packet, "packet round trip");
            }
            Ok(_) => {}
            Err(_) => decoder.reset(),
        }
    }
});
