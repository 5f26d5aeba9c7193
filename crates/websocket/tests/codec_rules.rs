//! One test per RFC 6455 / RFC 7692 rule enforced by the sans-I/O codec, for both roles,
//! each asserting the exact close code the violation maps to.
use bytes::{Bytes, BytesMut};
use flate2::{Compress, Compression, FlushCompress};
use switchboard_websocket::close::{CloseCode, CloseFrame};
use switchboard_websocket::codec::{Config, Decoder, Encoder, Role};
use switchboard_websocket::deflate::DeflateParams;
use switchboard_websocket::mask::apply_mask;
use switchboard_websocket::{Error, Message, PreparedMessage};

const KEY: [u8; 4] = [0x37, 0xfa, 0x21, 0x3d];

/// Build a raw frame: `b0` holds FIN/RSV/opcode exactly as given.
fn raw(b0: u8, masked: bool, payload: &[u8]) -> Vec<u8> {
    let mut out = vec![b0];
    let mbit = if masked { 0x80 } else { 0 };
    let len = payload.len();
    if len < 126 {
        out.push(mbit | len as u8);
    } else if len <= 0xFFFF {
        out.push(mbit | 126);
        out.extend_from_slice(&(len as u16).to_be_bytes());
    } else {
        out.push(mbit | 127);
        out.extend_from_slice(&(len as u64).to_be_bytes());
    }
    let start = out.len();
    if masked {
        out.extend_from_slice(&KEY);
    }
    let body = out.len();
    out.extend_from_slice(payload);
    if masked {
        apply_mask(&mut out[body..], KEY);
    }
    let _ = start;
    out
}

/// A frame as the peer of `role` would send it (masked iff we are the server).
fn peer(role: Role, b0: u8, payload: &[u8]) -> Vec<u8> {
    raw(b0, role == Role::Server, payload)
}

const FIN: u8 = 0x80;
const RSV1: u8 = 0x40;
const RSV2: u8 = 0x20;
const RSV3: u8 = 0x10;
const CONT: u8 = 0x0;
const TEXT: u8 = 0x1;
const BIN: u8 = 0x2;
const CLOSE: u8 = 0x8;
const PING: u8 = 0x9;
const PONG: u8 = 0xA;

const ROLES: [Role; 2] = [Role::Server, Role::Client];

fn deflate_config(p: DeflateParams) -> Config {
    Config {
        deflate: Some(p),
        compression_threshold: 0,
        ..Config::default()
    }
}

/// Feed `bytes` (all at once) and collect every event until the decoder needs more input.
fn decode_all(dec: &mut Decoder, bytes: &[u8]) -> Result<Vec<Message>, Error> {
    let mut buf = BytesMut::from(bytes);
    let mut out = Vec::new();
    while let Some(m) = dec.decode(&mut buf)? {
        out.push(m);
    }
    Ok(out)
}

fn code_of(r: Result<Vec<Message>, Error>) -> u16 {
    match r {
        Ok(m) => panic!("expected an error, got {m:?}"),
        Err(e) => e.close_code().expect("error without close code").0,
    }
}

fn expect_code(role: Role, config: Config, bytes: &[u8], code: u16) {
    let mut dec = Decoder::new(role, config);
    assert_eq!(
        code_of(decode_all(&mut dec, bytes)),
        code,
        "{role:?} {bytes:x?}"
    );
}

#[test]
fn reserved_opcodes_fail_with_1002() {
    for role in ROLES {
        for op in [3u8, 4, 5, 6, 7, 0xB, 0xC, 0xD, 0xE, 0xF] {
            expect_code(role, Config::default(), &peer(role, FIN | op, b""), 1002);
        }
    }
}

#[test]
fn all_valid_opcodes_decode() {
    for role in ROLES {
        let mut dec = Decoder::new(role, Config::default());
        let mut bytes = peer(role, FIN | TEXT, b"t");
        bytes.extend(peer(role, FIN | BIN, b"b"));
        bytes.extend(peer(role, TEXT, b"a"));
        bytes.extend(peer(role, FIN | CONT, b"b"));
        bytes.extend(peer(role, FIN | PING, b"p"));
        bytes.extend(peer(role, FIN | PONG, b"q"));
        bytes.extend(peer(role, FIN | CLOSE, b""));
        let got = decode_all(&mut dec, &bytes).unwrap();
        assert_eq!(
            got,
            vec![
                Message::Text(Bytes::from_static(b"t")),
                Message::Binary(Bytes::from_static(b"b")),
                Message::Text(Bytes::from_static(b"ab")),
                Message::Ping(Bytes::from_static(b"p")),
                Message::Pong(Bytes::from_static(b"q")),
                Message::Close(None),
            ]
        );
    }
}

#[test]
fn rsv1_without_deflate_fails_with_1002() {
    for role in ROLES {
        expect_code(
            role,
            Config::default(),
            &peer(role, FIN | RSV1 | TEXT, b"x"),
            1002,
        );
        expect_code(
            role,
            Config::default(),
            &peer(role, FIN | RSV1 | BIN, b"x"),
            1002,
        );
    }
}

#[test]
fn rsv2_and_rsv3_always_fail_with_1002() {
    for role in ROLES {
        for config in [Config::default(), deflate_config(DeflateParams::default())] {
            for bit in [RSV2, RSV3, RSV2 | RSV3] {
                expect_code(
                    role,
                    config.clone(),
                    &peer(role, FIN | bit | BIN, b"x"),
                    1002,
                );
                expect_code(
                    role,
                    config.clone(),
                    &peer(role, FIN | bit | PING, b"x"),
                    1002,
                );
            }
        }
    }
}

#[test]
fn rsv1_on_control_frames_fails_with_1002_even_with_deflate() {
    for role in ROLES {
        for op in [PING, PONG, CLOSE] {
            let cfg = deflate_config(DeflateParams::default());
            expect_code(role, cfg, &peer(role, FIN | RSV1 | op, b""), 1002);
        }
    }
}

#[test]
fn rsv1_on_continuation_fails_with_1002() {
    for role in ROLES {
        let cfg = deflate_config(DeflateParams::default());
        let mut enc = Encoder::new(peer_role(role), cfg.clone());
        // A legal compressed first fragment, then a continuation with RSV1 set.
        let mut out = BytesMut::new();
        enc.encode(&Message::text("hello hello hello"), &mut out)
            .unwrap();
        let mut first = out.to_vec();
        first[0] &= !FIN; // not final
        let mut bytes = first;
        bytes.extend(peer(role, FIN | RSV1 | CONT, b""));
        let mut dec = Decoder::new(role, cfg);
        assert_eq!(code_of(decode_all(&mut dec, &bytes)), 1002);
        // Uncompressed start, RSV1 on the continuation: also 1002.
        let cfg = deflate_config(DeflateParams::default());
        let mut bytes = peer(role, TEXT, b"a");
        bytes.extend(peer(role, FIN | RSV1 | CONT, b"b"));
        expect_code(role, cfg, &bytes, 1002);
    }
}

fn peer_role(role: Role) -> Role {
    match role {
        Role::Server => Role::Client,
        Role::Client => Role::Server,
    }
}

#[test]
fn control_frames_longer_than_125_fail_with_1002() {
    for role in ROLES {
        for op in [PING, PONG, CLOSE] {
            let mut payload = vec![b'a'; 126];
            if op == CLOSE {
                payload[..2].copy_from_slice(&1000u16.to_be_bytes());
            }
            expect_code(
                role,
                Config::default(),
                &peer(role, FIN | op, &payload),
                1002,
            );
            // Exactly 125 is fine.
            let mut dec = Decoder::new(role, Config::default());
            assert_eq!(
                decode_all(&mut dec, &peer(role, FIN | op, &payload[..125]))
                    .unwrap()
                    .len(),
                1
            );
        }
    }
}

#[test]
fn control_frame_length_error_is_reported_from_the_first_two_bytes() {
    for role in ROLES {
        let bytes = peer(role, FIN | PING, &[0u8; 200]);
        let mut dec = Decoder::new(role, Config::default());
        let mut buf = BytesMut::from(&bytes[..2]);
        assert_eq!(
            dec.decode(&mut buf).unwrap_err().close_code(),
            Some(CloseCode(1002))
        );
    }
}

#[test]
fn fragmented_control_frames_fail_with_1002() {
    for role in ROLES {
        for op in [PING, PONG, CLOSE] {
            expect_code(role, Config::default(), &peer(role, op, b""), 1002);
        }
    }
}

#[test]
fn server_rejects_unmasked_frames_with_1002() {
    for op in [TEXT, BIN, PING, PONG, CLOSE] {
        expect_code(
            Role::Server,
            Config::default(),
            &raw(FIN | op, false, b""),
            1002,
        );
    }
}

#[test]
fn client_rejects_masked_frames_with_1002() {
    for op in [TEXT, BIN, PING, PONG, CLOSE] {
        expect_code(
            Role::Client,
            Config::default(),
            &raw(FIN | op, true, b""),
            1002,
        );
    }
}

/// Header with an explicit extended-length encoding.
fn header_with_len(role: Role, b0: u8, len7: u8, ext: &[u8]) -> Vec<u8> {
    let masked = role == Role::Server;
    let mut h = vec![b0, len7 | if masked { 0x80 } else { 0 }];
    h.extend_from_slice(ext);
    if masked {
        h.extend_from_slice(&KEY);
    }
    h
}

#[test]
fn length_with_top_bit_set_fails_with_1002() {
    for role in ROLES {
        let h = header_with_len(role, FIN | BIN, 127, &(1u64 << 63 | 70_000).to_be_bytes());
        expect_code(role, Config::default(), &h, 1002);
    }
}

#[test]
fn non_minimal_lengths_fail_with_1002() {
    for role in ROLES {
        // 16-bit encoding of 5.
        let mut bytes = header_with_len(role, FIN | BIN, 126, &5u16.to_be_bytes());
        bytes.extend_from_slice(&[0u8; 5]);
        expect_code(role, Config::default(), &bytes, 1002);
        // 64-bit encoding of 300.
        let mut bytes = header_with_len(role, FIN | BIN, 127, &300u64.to_be_bytes());
        bytes.extend_from_slice(&[0u8; 300]);
        expect_code(role, Config::default(), &bytes, 1002);
        // Minimal encodings at the boundaries are accepted.
        for len in [125usize, 126, 65535, 65536] {
            let mut dec = Decoder::new(role, Config::default());
            let got = decode_all(&mut dec, &peer(role, FIN | BIN, &vec![7u8; len])).unwrap();
            assert_eq!(got, vec![Message::Binary(Bytes::from(vec![7u8; len]))]);
        }
    }
}

#[test]
fn continuation_without_start_fails_with_1002() {
    for role in ROLES {
        expect_code(role, Config::default(), &peer(role, FIN | CONT, b"x"), 1002);
        expect_code(role, Config::default(), &peer(role, CONT, b"x"), 1002);
        // Also right after a complete message.
        let mut bytes = peer(role, FIN | TEXT, b"done");
        bytes.extend(peer(role, FIN | CONT, b"x"));
        expect_code(role, Config::default(), &bytes, 1002);
    }
}

#[test]
fn new_message_inside_fragmented_message_fails_with_1002() {
    for role in ROLES {
        for op in [TEXT, BIN] {
            let mut bytes = peer(role, TEXT, b"a");
            bytes.extend(peer(role, FIN | op, b"b"));
            expect_code(role, Config::default(), &bytes, 1002);
        }
    }
}

#[test]
fn control_frames_interleave_with_fragments() {
    for role in ROLES {
        let mut bytes = peer(role, TEXT, b"frag1 ");
        bytes.extend(peer(role, FIN | PING, b"ping!"));
        bytes.extend(peer(role, CONT, b"frag2 "));
        bytes.extend(peer(role, FIN | PONG, b""));
        bytes.extend(peer(role, CONT, b""));
        bytes.extend(peer(role, FIN | PING, b""));
        bytes.extend(peer(role, FIN | CONT, b"frag3"));
        let mut dec = Decoder::new(role, Config::default());
        let got = decode_all(&mut dec, &bytes).unwrap();
        assert_eq!(
            got,
            vec![
                Message::Ping(Bytes::from_static(b"ping!")),
                Message::Pong(Bytes::new()),
                Message::Ping(Bytes::new()),
                Message::text("frag1 frag2 frag3"),
            ]
        );
        // A close frame in the middle is returned too (the stream layer decides what next).
        let mut bytes = peer(role, BIN, b"x");
        bytes.extend(peer(role, FIN | CLOSE, &1000u16.to_be_bytes()));
        let mut dec = Decoder::new(role, Config::default());
        let got = decode_all(&mut dec, &bytes).unwrap();
        assert_eq!(
            got,
            vec![Message::Close(Some(CloseFrame::new(CloseCode::NORMAL, "")))]
        );
        assert!(dec.in_message());
    }
}

#[test]
fn utf8_split_across_fragments_is_valid() {
    let text = "añ€𝄞z".as_bytes(); // 1, 2, 3, 4-byte sequences
    for role in ROLES {
        for i in 0..=text.len() {
            for j in i..=text.len() {
                let mut bytes = peer(role, TEXT, &text[..i]);
                bytes.extend(peer(role, CONT, &text[i..j]));
                bytes.extend(peer(role, FIN | CONT, &text[j..]));
                let mut dec = Decoder::new(role, Config::default());
                let got = decode_all(&mut dec, &bytes).unwrap();
                assert_eq!(got, vec![Message::Text(Bytes::copy_from_slice(text))]);
            }
        }
    }
}

#[test]
fn invalid_utf8_fails_with_1007() {
    let cases: [&[u8]; 6] = [
        b"\xff",
        b"abc\xc0\xafdef",   // overlong
        b"\xed\xa0\x80",     // surrogate
        b"\xf4\x90\x80\x80", // above U+10FFFF
        b"\xe2\x82",         // truncated at end of message
        b"ok\xce\xbaok\x80", // stray continuation
    ];
    for role in ROLES {
        for case in cases {
            expect_code(role, Config::default(), &peer(role, FIN | TEXT, case), 1007);
            for i in 0..=case.len() {
                let mut bytes = peer(role, TEXT, &case[..i]);
                bytes.extend(peer(role, FIN | CONT, &case[i..]));
                expect_code(role, Config::default(), &bytes, 1007);
            }
        }
        // Binary messages are not checked.
        let mut dec = Decoder::new(role, Config::default());
        assert!(decode_all(&mut dec, &peer(role, FIN | BIN, b"\xff")).is_ok());
    }
}

#[test]
fn invalid_utf8_fails_fast_on_the_first_fragment() {
    for role in ROLES {
        let mut dec = Decoder::new(role, Config::default());
        // Non-final first fragment with an invalid byte: error now, before any other fragment.
        let mut buf = BytesMut::from(&peer(role, TEXT, b"hello \xff world")[..]);
        let err = dec.decode(&mut buf).unwrap_err();
        assert_eq!(err.close_code(), Some(CloseCode(1007)));
        // A sequence that can never complete (F4 90 > U+10FFFF) fails on its fragment too.
        let mut dec = Decoder::new(role, Config::default());
        let mut buf = BytesMut::from(&peer(role, TEXT, b"ok")[..]);
        assert_eq!(dec.decode(&mut buf).unwrap(), None);
        buf.extend_from_slice(&peer(role, CONT, b"\xf4"));
        assert_eq!(dec.decode(&mut buf).unwrap(), None);
        buf.extend_from_slice(&peer(role, CONT, b"\x90"));
        assert_eq!(
            dec.decode(&mut buf).unwrap_err().close_code(),
            Some(CloseCode(1007))
        );
    }
}

#[test]
fn close_frames() {
    for role in ROLES {
        // Empty close.
        let mut dec = Decoder::new(role, Config::default());
        assert_eq!(
            decode_all(&mut dec, &peer(role, FIN | CLOSE, b"")).unwrap(),
            vec![Message::Close(None)]
        );
        // One-byte payload.
        expect_code(
            role,
            Config::default(),
            &peer(role, FIN | CLOSE, b"\x03"),
            1002,
        );
        // Code validity table.
        for code in 0u16..=5000 {
            let valid = matches!(code, 1000..=1003 | 1007..=1014 | 3000..=4999);
            let bytes = peer(role, FIN | CLOSE, &code.to_be_bytes());
            let mut dec = Decoder::new(role, Config::default());
            let r = decode_all(&mut dec, &bytes);
            if valid {
                assert_eq!(
                    r.unwrap(),
                    vec![Message::Close(Some(CloseFrame {
                        code: CloseCode(code),
                        reason: Bytes::new()
                    }))]
                );
            } else {
                assert_eq!(code_of(r), 1002, "code {code}");
            }
        }
        for code in [u16::MAX, 5000, 65535, 2999, 1015, 1016, 1004, 1005, 1006] {
            expect_code(
                role,
                Config::default(),
                &peer(role, FIN | CLOSE, &code.to_be_bytes()),
                1002,
            );
        }
        // Reason must be UTF-8.
        let mut p = 1000u16.to_be_bytes().to_vec();
        p.extend_from_slice("bye ☺".as_bytes());
        let mut dec = Decoder::new(role, Config::default());
        let got = decode_all(&mut dec, &peer(role, FIN | CLOSE, &p)).unwrap();
        assert_eq!(
            got,
            vec![Message::Close(Some(CloseFrame::new(
                CloseCode(1000),
                "bye ☺"
            )))]
        );
        let mut p = 1001u16.to_be_bytes().to_vec();
        p.extend_from_slice(b"bad \xe2\x28\xa1");
        expect_code(role, Config::default(), &peer(role, FIN | CLOSE, &p), 1007);
    }
}

#[test]
fn encoder_refuses_unsendable_control_frames() {
    let mut enc = Encoder::new(Role::Server, Config::default());
    let mut out = BytesMut::new();
    let err = enc
        .encode(&Message::Ping(Bytes::from(vec![0u8; 126])), &mut out)
        .unwrap_err();
    assert_eq!(err.close_code(), Some(CloseCode(1002)));
    let bad = Message::Close(Some(CloseFrame::new(CloseCode(1005), "")));
    assert!(enc.encode(&bad, &mut out).is_err());
    let long = Message::Close(Some(CloseFrame::new(CloseCode(1000), "x".repeat(124))));
    assert!(enc.encode(&long, &mut out).is_err());
    assert!(out.is_empty());
}

#[test]
fn huge_length_header_fails_at_once_with_1009() {
    for role in ROLES {
        let config = Config {
            max_message_size: 1 << 20,
            max_frame_size: 1 << 20,
            ..Config::default()
        };
        // Only the header: 1 TiB announced. No payload bytes are ever fed.
        let h = header_with_len(role, FIN | BIN, 127, &(1u64 << 40).to_be_bytes());
        let mut dec = Decoder::new(role, config.clone());
        let mut buf = BytesMut::from(&h[..]);
        let err = dec.decode(&mut buf).unwrap_err();
        assert_eq!(err.close_code(), Some(CloseCode::TOO_BIG));
        assert!(buf.capacity() < 1 << 20, "payload space was reserved");
        // Just over the frame limit.
        let h = header_with_len(role, FIN | TEXT, 127, &((1u64 << 20) + 1).to_be_bytes());
        let mut dec = Decoder::new(role, config.clone());
        assert_eq!(code_of(decode_all(&mut dec, &h)), 1009);
    }
}

#[test]
fn message_limit_applies_across_fragments() {
    for role in ROLES {
        let config = Config {
            max_message_size: 1000,
            max_frame_size: 600,
            ..Config::default()
        };
        let mut dec = Decoder::new(role, config.clone());
        let mut buf = BytesMut::from(&peer(role, BIN, &[1u8; 600])[..]);
        assert_eq!(dec.decode(&mut buf).unwrap(), None);
        assert_eq!(dec.buffered_len(), 600);
        // The second header announces 401 bytes: 1001 > 1000, fails before its payload.
        let second = peer(role, FIN | CONT, &[2u8; 401]);
        let hlen = second.len() - 401;
        buf.extend_from_slice(&second[..hlen]);
        assert_eq!(
            dec.decode(&mut buf).unwrap_err().close_code(),
            Some(CloseCode::TOO_BIG)
        );
        // 400 is fine.
        let mut dec = Decoder::new(role, config);
        let mut bytes = peer(role, BIN, &[1u8; 600]);
        bytes.extend(peer(role, FIN | CONT, &[2u8; 400]));
        let got = decode_all(&mut dec, &bytes).unwrap();
        assert!(matches!(&got[..], [Message::Binary(b)] if b.len() == 1000));
    }
}

/// Raw DEFLATE (sync flushed, tail stripped), as a peer would put in a frame.
fn deflate_raw(data: &[u8], level: Compression) -> Vec<u8> {
    let mut c = Compress::new(level, false);
    let mut out = Vec::with_capacity(data.len() / 500 + 1024);
    let mut pos = 0;
    loop {
        if out.capacity() - out.len() < 64 {
            out.reserve(out.capacity());
        }
        let before = c.total_in();
        c.compress_vec(&data[pos..], &mut out, FlushCompress::Sync)
            .unwrap();
        pos += (c.total_in() - before) as usize;
        if pos == data.len() && out.capacity() > out.len() {
            break;
        }
    }
    assert!(out.ends_with(&[0, 0, 0xff, 0xff]));
    out.truncate(out.len() - 4);
    out
}

#[test]
fn zip_bomb_fails_with_1009_without_allocating_past_the_limit() {
    let zeros = vec![0u8; 100 << 20];
    let bomb = deflate_raw(&zeros, Compression::best());
    drop(zeros);
    assert!(bomb.len() < 200_000, "bomb is {} bytes", bomb.len());
    for role in ROLES {
        for op in [TEXT, BIN] {
            let config = Config {
                max_message_size: 1 << 20,
                max_frame_size: 1 << 20,
                ..deflate_config(DeflateParams::default())
            };
            let mut dec = Decoder::new(role, config);
            let mut buf = BytesMut::from(&peer(role, FIN | RSV1 | op, &bomb)[..]);
            let err = dec.decode(&mut buf).unwrap_err();
            assert_eq!(err.close_code(), Some(CloseCode::TOO_BIG));
        }
    }
    // The limit is exact: exactly 1 MiB of zeros passes, one more byte fails.
    for (n, ok) in [(1usize << 20, true), ((1 << 20) + 1, false)] {
        let payload = deflate_raw(&vec![0u8; n], Compression::default());
        let config = Config {
            max_message_size: 1 << 20,
            ..deflate_config(DeflateParams::default())
        };
        let mut dec = Decoder::new(Role::Client, config);
        let r = decode_all(&mut dec, &peer(Role::Client, FIN | RSV1 | BIN, &payload));
        if ok {
            assert!(matches!(&r.unwrap()[..], [Message::Binary(b)] if b.len() == n));
        } else {
            assert_eq!(code_of(r), 1009);
        }
    }
}

#[test]
fn corrupt_deflate_data_fails_with_1007() {
    for role in ROLES {
        let cfg = deflate_config(DeflateParams::default());
        // 0xff: BFINAL=1, BTYPE=11 (reserved block type).
        expect_code(
            role,
            cfg,
            &peer(role, FIN | RSV1 | BIN, b"\xff\xff\xff"),
            1007,
        );
    }
}

fn all_params() -> Vec<DeflateParams> {
    let mut v = Vec::new();
    for bits in 8..=15u8 {
        for flags in 0..4 {
            v.push(DeflateParams {
                server_no_context_takeover: flags & 1 != 0,
                client_no_context_takeover: flags & 2 != 0,
                server_max_window_bits: bits,
                client_max_window_bits: 23 - bits,
            });
        }
    }
    v
}

fn sample_messages() -> Vec<Message> {
    let json: String = (0..2000)
        .map(|i| format!("{{\"id\":{i},\"name\":\"user{}\",\"ok\":true}},", i % 37))
        .collect();
    let noise: Vec<u8> = (0..20_000u32)
        .map(|i| (i.wrapping_mul(2654435761) >> 13) as u8)
        .collect();
    vec![
        Message::text(json.clone()),
        Message::text(json),
        Message::text("short"),
        Message::text(""),
        Message::Binary(Bytes::from(noise)),
        Message::text("ü€𝄞 ".repeat(500)),
        Message::Ping(Bytes::from_static(b"never compressed")),
    ]
}

#[test]
fn deflate_round_trips_with_every_parameter_combination() {
    for params in all_params() {
        for sender in ROLES {
            let cfg = deflate_config(params);
            let mut enc = Encoder::new(sender, cfg.clone());
            let mut dec = Decoder::new(peer_role(sender), cfg);
            for fragment in [usize::MAX, 1000] {
                for msg in sample_messages() {
                    let mut out = BytesMut::new();
                    enc.encode_fragmented(&msg, fragment, &mut out).unwrap();
                    let data = matches!(msg, Message::Text(_) | Message::Binary(_));
                    // Every data message is compressed (threshold 0); control frames never.
                    assert_eq!(out[0] & RSV1 != 0, data, "{params:?}");
                    let got = decode_all(&mut dec, &out).unwrap();
                    assert_eq!(got, vec![msg], "{params:?} {sender:?}");
                    assert_eq!(dec.buffered_len(), 0);
                }
            }
        }
    }
}

#[test]
fn below_threshold_messages_are_not_compressed() {
    let cfg = Config {
        compression_threshold: 100,
        ..deflate_config(DeflateParams::default())
    };
    let mut enc = Encoder::new(Role::Server, cfg.clone());
    let mut out = BytesMut::new();
    enc.encode(&Message::text("x".repeat(99)), &mut out)
        .unwrap();
    assert_eq!(out[0] & RSV1, 0);
    assert_eq!(out.len(), 2 + 99);
    out.clear();
    enc.encode(&Message::text("x".repeat(100)), &mut out)
        .unwrap();
    assert_ne!(out[0] & RSV1, 0);
    assert!(out.len() < 20);
}

#[test]
fn context_takeover_carries_across_messages() {
    let msg = Message::text("the quick brown fox jumps over the lazy dog; ".repeat(40));
    for (nct, sender) in [
        (false, Role::Server),
        (true, Role::Server),
        (false, Role::Client),
        (true, Role::Client),
    ] {
        let params = DeflateParams {
            server_no_context_takeover: nct,
            client_no_context_takeover: nct,
            ..DeflateParams::default()
        };
        let cfg = deflate_config(params);
        let mut enc = Encoder::new(sender, cfg.clone());
        let mut dec = Decoder::new(peer_role(sender), cfg);
        let mut sizes = Vec::new();
        for _ in 0..3 {
            let mut out = BytesMut::new();
            enc.encode(&msg, &mut out).unwrap();
            sizes.push(out.len());
            assert_eq!(decode_all(&mut dec, &out).unwrap(), vec![msg.clone()]);
        }
        if nct {
            // A fresh compressor every time: identical output sizes.
            assert_eq!(sizes[0], sizes[1], "{sizes:?}");
            assert_eq!(sizes[1], sizes[2], "{sizes:?}");
        } else {
            // The second message refers back to the first: much smaller.
            assert!(sizes[1] * 2 < sizes[0], "{sizes:?}");
        }
    }
    // A decoder that reset its window (peer promised no takeover) cannot decode a message
    // that refers to the previous one: proves the flag changes decoder behaviour.
    let sender_params = DeflateParams::default();
    let mut enc = Encoder::new(Role::Server, deflate_config(sender_params));
    let lying = DeflateParams {
        server_no_context_takeover: true,
        ..sender_params
    };
    let mut dec = Decoder::new(Role::Client, deflate_config(lying));
    let mut out = BytesMut::new();
    enc.encode(&msg, &mut out).unwrap();
    enc.encode(&msg, &mut out).unwrap();
    let r = decode_all(&mut dec, &out);
    assert!(r.is_err() || r.unwrap() != vec![msg.clone(), msg.clone()]);
}

#[test]
fn compressed_fragments_with_interleaved_control_frames() {
    for sender in ROLES {
        let role = peer_role(sender);
        let cfg = deflate_config(DeflateParams::default());
        let mut enc = Encoder::new(sender, cfg.clone());
        let text = "fragmented and compressed ".repeat(300);
        let mut out = BytesMut::new();
        enc.encode_fragmented(&Message::text(text.clone()), 20, &mut out)
            .unwrap();
        let frames = split_frames(&out);
        assert!(frames.len() > 2);
        let mut bytes = Vec::new();
        for f in frames {
            bytes.extend_from_slice(&f);
            bytes.extend(peer(role, FIN | PING, b"hb"));
        }
        let mut dec = Decoder::new(role, cfg);
        let got = decode_all(&mut dec, &bytes).unwrap();
        let texts: Vec<_> = got
            .iter()
            .filter(|m| matches!(m, Message::Text(_)))
            .collect();
        assert_eq!(texts, vec![&Message::text(text)]);
        assert_eq!(
            got.iter().filter(|m| matches!(m, Message::Ping(_))).count(),
            got.len() - 1
        );
    }
}

/// Split a byte stream of valid frames into frames (test helper, trusts its input).
fn split_frames(mut b: &[u8]) -> Vec<Vec<u8>> {
    let mut v = Vec::new();
    while !b.is_empty() {
        let (h, n) = switchboard_websocket::frame::parse_header(b)
            .unwrap()
            .unwrap();
        let total = n + h.payload_len as usize;
        v.push(b[..total].to_vec());
        b = &b[total..];
    }
    v
}

#[test]
fn compressed_text_is_validated_as_it_inflates() {
    for role in ROLES {
        // Invalid UTF-8 at the start of a big compressed text message, sent in two frames:
        // the first (non-final) frame already yields the bad output, so it must fail there.
        let mut data = b"\xffbad start ".to_vec();
        for i in 0..20_000 {
            data.extend_from_slice(format!("{i} ").as_bytes());
        }
        let comp = deflate_raw(&data, Compression::default());
        let cfg = deflate_config(DeflateParams::default());
        let mut dec = Decoder::new(role, cfg.clone());
        let half = comp.len() / 2;
        let mut buf = BytesMut::from(&peer(role, RSV1 | TEXT, &comp[..half])[..]);
        assert_eq!(
            dec.decode(&mut buf).unwrap_err().close_code(),
            Some(CloseCode(1007))
        );
        // Valid text split mid code point by compression boundaries decodes fine.
        let text = "€".repeat(10_000);
        let comp = deflate_raw(text.as_bytes(), Compression::default());
        let mut bytes = peer(role, RSV1 | TEXT, &comp[..comp.len() / 3]);
        bytes.extend(peer(role, CONT, &comp[comp.len() / 3..comp.len() / 2]));
        bytes.extend(peer(role, FIN | CONT, &comp[comp.len() / 2..]));
        let mut dec = Decoder::new(role, cfg);
        assert_eq!(
            decode_all(&mut dec, &bytes).unwrap(),
            vec![Message::text(text)]
        );
    }
}

#[test]
fn single_frame_messages_are_zero_copy() {
    for role in ROLES {
        let mut bytes = peer(role, FIN | BIN, &[5u8; 1000]);
        bytes.extend(peer(role, FIN | TEXT, b"hello"));
        let mut buf = BytesMut::from(&bytes[..]);
        let range = buf.as_ptr() as usize..buf.as_ptr() as usize + buf.len();
        let mut dec = Decoder::new(role, Config::default());
        for _ in 0..2 {
            let m = dec.decode(&mut buf).unwrap().unwrap();
            let (Message::Binary(p) | Message::Text(p)) = m else {
                panic!()
            };
            assert!(range.contains(&(p.as_ptr() as usize)), "payload was copied");
        }
        assert!(buf.is_empty());
    }
}

#[test]
fn byte_by_byte_feeding_gives_the_same_events() {
    for role in ROLES {
        let mut bytes = peer(role, TEXT, "héllo ".as_bytes());
        bytes.extend(peer(role, FIN | PING, b"p"));
        bytes.extend(peer(role, FIN | CONT, "wörld".as_bytes()));
        bytes.extend(peer(role, FIN | BIN, &[9u8; 300]));
        bytes.extend(peer(role, FIN | CLOSE, &[0x03, 0xe8, b'o', b'k']));
        let mut dec = Decoder::new(role, Config::default());
        let mut buf = BytesMut::new();
        let mut got = Vec::new();
        for b in &bytes {
            buf.extend_from_slice(&[*b]);
            while let Some(m) = dec.decode(&mut buf).unwrap() {
                got.push(m);
            }
        }
        assert_eq!(
            got,
            decode_all(&mut Decoder::new(role, Config::default()), &bytes).unwrap()
        );
        assert_eq!(got.len(), 4);
    }
}

#[test]
fn decoder_stays_failed_after_an_error() {
    let mut dec = Decoder::new(Role::Server, Config::default());
    let mut buf = BytesMut::from(&raw(FIN | TEXT, false, b"x")[..]);
    assert!(dec.decode(&mut buf).is_err());
    let mut buf = BytesMut::from(&raw(FIN | TEXT, true, b"x")[..]);
    assert!(matches!(dec.decode(&mut buf), Err(Error::ConnectionClosed)));
}

#[test]
fn encoder_masks_only_as_client() {
    let msg = Message::binary(vec![0u8; 64]);
    let mut out = BytesMut::new();
    Encoder::new(Role::Server, Config::default())
        .encode(&msg, &mut out)
        .unwrap();
    assert_eq!(&out[..2], &[FIN | BIN, 64]);
    assert_eq!(&out[2..], &[0u8; 64][..]);
    let mut out = BytesMut::new();
    let mut enc = Encoder::new(Role::Client, Config::default());
    enc.encode(&msg, &mut out).unwrap();
    assert_eq!(&out[..2], &[FIN | BIN, 0x80 | 64]);
    let key = [out[2], out[3], out[4], out[5]];
    assert_eq!(&out[6..], &key.repeat(16)[..], "zeros XOR key = key");
    // Fresh keys per frame.
    let mut keys = std::collections::HashSet::new();
    for _ in 0..20 {
        let mut o = BytesMut::new();
        enc.encode(&msg, &mut o).unwrap();
        keys.insert([o[2], o[3], o[4], o[5]]);
    }
    assert!(keys.len() > 15);
    let mut dec = Decoder::new(Role::Server, Config::default());
    assert_eq!(decode_all(&mut dec, &out).unwrap(), vec![msg]);
}

#[test]
fn header_only_plus_payload_equals_full_encoding() {
    let mut enc = Encoder::new(Role::Server, Config::default());
    for msg in [
        Message::text("hi"),
        Message::binary(vec![1u8; 300]),
        Message::binary(vec![2u8; 70_000]),
        Message::Ping(Bytes::from_static(b"p")),
        Message::Pong(Bytes::new()),
        Message::Close(None),
    ] {
        let h = enc.encode_header_only(&msg).unwrap();
        let payload = match &msg {
            Message::Text(p) | Message::Binary(p) | Message::Ping(p) | Message::Pong(p) => {
                p.clone()
            }
            _ => Bytes::new(),
        };
        let mut full = BytesMut::new();
        enc.encode(&msg, &mut full).unwrap();
        assert_eq!([h.as_ref(), &payload[..]].concat(), full.to_vec());
    }
    let close = Message::Close(Some(CloseFrame::new(CloseCode::NORMAL, "")));
    assert!(enc.encode_header_only(&close).is_none());
    assert!(Encoder::new(Role::Client, Config::default())
        .encode_header_only(&Message::text("x"))
        .is_none());
    let mut denc = Encoder::new(Role::Server, deflate_config(DeflateParams::default()));
    assert!(denc.encode_header_only(&Message::text("x")).is_none());
    assert!(denc
        .encode_header_only(&Message::Ping(Bytes::new()))
        .is_some());
}

#[test]
fn prepared_message_frames_decode_back() {
    let text = "{\"event\":\"tick\",\"price\":123.45,\"symbol\":\"ABC\"} ".repeat(100);
    for msg in [
        Message::text(text.clone()),
        Message::binary(text.clone().into_bytes()),
        Message::text("tiny"),
    ] {
        let prepared = PreparedMessage::new(msg.clone());
        let clone = prepared.clone();
        // Uncompressed frame.
        let mut dec = Decoder::new(Role::Client, Config::default());
        assert_eq!(
            decode_all(&mut dec, prepared.frame()).unwrap(),
            vec![msg.clone()]
        );
        assert_eq!(prepared.frame_for(None, 0), *prepared.frame());
        assert_eq!(prepared.is_text(), matches!(msg, Message::Text(_)));
        for bits in 8..=15u8 {
            let params = DeflateParams {
                server_no_context_takeover: true,
                server_max_window_bits: bits,
                ..DeflateParams::default()
            };
            let f = prepared.frame_for(Some(&params), 64);
            let again = clone.frame_for(Some(&params), 64);
            assert_eq!(f.as_ptr(), again.as_ptr(), "compressed once and cached");
            let compressed = f[0] & RSV1 != 0;
            assert_eq!(compressed, prepared.payload().len() >= 64, "bits {bits}");
            if compressed {
                assert!(f.len() < prepared.frame().len() / 4);
            }
            // Decodes on several client connections, even after other messages.
            let mut dec = Decoder::new(Role::Client, deflate_config(params));
            for _ in 0..3 {
                assert_eq!(decode_all(&mut dec, &f).unwrap(), vec![msg.clone()]);
            }
        }
        // Without server_no_context_takeover the plain frame is used.
        let takeover = DeflateParams::default();
        assert_eq!(prepared.frame_for(Some(&takeover), 0), *prepared.frame());
    }
}

#[test]
fn prepared_message_interleaves_with_connection_encoder() {
    // A connection encoder and shared prepared frames on the same connection.
    let params = DeflateParams {
        server_no_context_takeover: true,
        ..DeflateParams::default()
    };
    let cfg = deflate_config(params);
    let mut enc = Encoder::new(Role::Server, cfg.clone());
    let mut dec = Decoder::new(Role::Client, cfg);
    let prepared = PreparedMessage::new(Message::text("broadcast ".repeat(50)));
    let own = Message::text("private ".repeat(50));
    let mut out = BytesMut::new();
    for _ in 0..3 {
        enc.encode(&own, &mut out).unwrap();
        out.extend_from_slice(&prepared.frame_for(Some(&params), 0));
    }
    let got = decode_all(&mut dec, &out).unwrap();
    assert_eq!(got.len(), 6);
    for pair in got.chunks(2) {
        assert_eq!(pair[0], own);
        assert_eq!(&pair[1], prepared.message());
    }
}

#[test]
fn empty_compressed_messages() {
    for role in ROLES {
        let cfg = deflate_config(DeflateParams::default());
        // A peer that sends an empty RSV1 payload means an empty message.
        let mut dec = Decoder::new(role, cfg.clone());
        assert_eq!(
            decode_all(&mut dec, &peer(role, FIN | RSV1 | TEXT, b"")).unwrap(),
            vec![Message::text("")]
        );
        // Our encoder, mid-stream with context takeover: the empty message carries an empty
        // stored block so the following messages still decode.
        let mut enc = Encoder::new(peer_role(role), cfg.clone());
        let mut dec = Decoder::new(role, cfg);
        for msg in [
            Message::text("abc abc abc"),
            Message::text(""),
            Message::binary(vec![]),
            Message::text("abc abc abc"),
        ] {
            let mut out = BytesMut::new();
            enc.encode(&msg, &mut out).unwrap();
            assert_ne!(out[0] & RSV1, 0);
            assert_eq!(decode_all(&mut dec, &out).unwrap(), vec![msg]);
        }
    }
}
