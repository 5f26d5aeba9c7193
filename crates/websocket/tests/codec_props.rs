//! Property tests of the codec: whatever the messages, fragmentation, role and deflate
//! parameters, encode → decode is the identity; and no input, however chunked, makes the
//! decoder panic or hold more than its limits.
use bytes::{Bytes, BytesMut};
use proptest::prelude::*;
use switchboard_websocket::close::{CloseCode, CloseFrame};
use switchboard_websocket::codec::{Config, Decoder, Encoder, Role};
use switchboard_websocket::deflate::DeflateParams;
use switchboard_websocket::mask::apply_mask;
use switchboard_websocket::Message;

fn role() -> impl Strategy<Value = Role> {
    prop_oneof![Just(Role::Server), Just(Role::Client)]
}

fn params() -> impl Strategy<Value = Option<DeflateParams>> {
    prop::option::of((any::<bool>(), any::<bool>(), 8u8..=15, 8u8..=15).prop_map(
        |(snct, cnct, sbits, cbits)| DeflateParams {
            server_no_context_takeover: snct,
            client_no_context_takeover: cnct,
            server_max_window_bits: sbits,
            client_max_window_bits: cbits,
        },
    ))
}

/// Reason strings that fit in 123 bytes.
fn reason() -> impl Strategy<Value = String> {
    ".{0,30}".prop_filter("reason fits", |s: &String| s.len() <= 123)
}

fn message() -> impl Strategy<Value = Message> {
    prop_oneof![
        4 => ".{0,300}".prop_map(Message::text),
        // Repetitive text so deflate has something to find, across fragment boundaries.
        2 => ("[a-c€ü]{1,5}", 0usize..3000).prop_map(|(s, n)| Message::text(s.repeat(n))),
        3 => prop::collection::vec(any::<u8>(), 0..2000).prop_map(Message::binary),
        1 => prop::collection::vec(any::<u8>(), 0..=125).prop_map(|v| Message::Ping(Bytes::from(v))),
        1 => prop::collection::vec(any::<u8>(), 0..=125).prop_map(|v| Message::Pong(Bytes::from(v))),
        1 => prop::option::of((prop_oneof![1000u16..=1003, 1007u16..=1014, 3000u16..=4999], reason()))
            .prop_map(|c| Message::Close(c.map(|(code, r)| CloseFrame::new(CloseCode(code), r)))),
    ]
}

fn peer(role: Role) -> Role {
    match role {
        Role::Server => Role::Client,
        Role::Client => Role::Server,
    }
}

/// Feed `bytes` to `dec` in pieces whose sizes cycle through `chunks`.
fn feed(
    dec: &mut Decoder,
    bytes: &[u8],
    chunks: &[usize],
) -> Result<Vec<Message>, switchboard_websocket::Error> {
    let mut buf = BytesMut::new();
    let mut out = Vec::new();
    let mut pos = 0;
    let mut i = 0;
    while pos < bytes.len() {
        let n = chunks[i % chunks.len()].max(1).min(bytes.len() - pos);
        i += 1;
        buf.extend_from_slice(&bytes[pos..pos + n]);
        pos += n;
        while let Some(m) = dec.decode(&mut buf)? {
            out.push(m);
        }
        assert!(dec.buffered_len() <= dec.config().max_message_size);
    }
    Ok(out)
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    #[test]
    fn encode_decode_round_trip(
        msgs in prop::collection::vec(message(), 1..8),
        sender in role(),
        deflate in params(),
        threshold in 0usize..200,
        fragment in prop_oneof![Just(usize::MAX), 1usize..600],
        chunks in prop::collection::vec(1usize..700, 1..5),
    ) {
        let config = Config { deflate, compression_threshold: threshold, ..Config::default() };
        let mut enc = Encoder::new(sender, config.clone());
        let mut dec = Decoder::new(peer(sender), config);
        let mut wire = BytesMut::new();
        for m in &msgs {
            enc.encode_fragmented(m, fragment, &mut wire).unwrap();
        }
        let got = feed(&mut dec, &wire, &chunks).unwrap();
        prop_assert_eq!(got, msgs);
        prop_assert_eq!(dec.buffered_len(), 0);
        prop_assert!(!dec.in_message());
    }

    #[test]
    fn arbitrary_bytes_never_panic(
        bytes in prop::collection::vec(any::<u8>(), 0..4000),
        receiver in role(),
        deflate in params(),
        chunks in prop::collection::vec(1usize..300, 1..5),
    ) {
        let config = Config { deflate, max_message_size: 1500, max_frame_size: 1000, ..Config::default() };
        let mut dec = Decoder::new(receiver, config);
        let _ = feed(&mut dec, &bytes, &chunks);
    }

    /// Structurally plausible frames (right masking, random header bits, random payloads,
    /// possibly compressed garbage) reach deeper into the state machine than random bytes.
    #[test]
    fn arbitrary_frames_never_panic(
        frames in prop::collection::vec((any::<u8>(), prop::collection::vec(any::<u8>(), 0..700)), 0..12),
        receiver in role(),
        deflate in params(),
        chunks in prop::collection::vec(1usize..300, 1..5),
    ) {
        let config = Config { deflate, max_message_size: 1500, max_frame_size: 1000, ..Config::default() };
        let mut wire = Vec::new();
        for (b0, payload) in &frames {
            // Bias towards legal opcodes and no RSV2/3 so we get past the first checks.
            let b0 = (b0 & 0xC0) | [0u8, 1, 2, 8, 9, 10, 0, 1][(*b0 & 7) as usize];
            let masked = receiver == Role::Server;
            let payload = if b0 & 0x08 != 0 { &payload[..payload.len().min(125)] } else { &payload[..] };
            let b0 = if b0 & 0x08 != 0 { b0 | 0x80 } else { b0 };
            wire.push(b0);
            let m = if masked { 0x80 } else { 0 };
            if payload.len() < 126 { wire.push(m | payload.len() as u8); }
            else { wire.push(m | 126); wire.extend_from_slice(&(payload.len() as u16).to_be_bytes()); }
            let start = wire.len();
            if masked { wire.extend_from_slice(&[1, 2, 3, 4]); }
            let body = wire.len();
            wire.extend_from_slice(payload);
            if masked { apply_mask(&mut wire[body..], [1, 2, 3, 4]); }
            let _ = start;
        }
        let mut dec = Decoder::new(receiver, config);
        let _ = feed(&mut dec, &wire, &chunks);
    }
}
