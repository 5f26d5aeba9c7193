//! permessage-deflate interoperability with the reference C zlib (through Python's `zlib`
//! module, the same library browsers' and Node's implementations build on): messages
//! compressed by zlib decode with our decoder, and our compressed frames inflate with zlib,
//! for every window size and with context takeover across messages.
use std::io::Write;
use std::process::{Command, Stdio};

use bytes::BytesMut;
use switchboard_websocket::codec::{Config, Decoder, Encoder, Role};
use switchboard_websocket::deflate::DeflateParams;
use switchboard_websocket::frame::{encode_header, parse_header, OpCode};
use switchboard_websocket::Message;

/// Run a Python script with `input` on stdin; returns stdout lines.
fn python(script: &str, input: &str) -> Vec<String> {
    let mut child = Command::new("python3")
        .arg("-c")
        .arg(script)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("python3 is needed for the zlib interop test");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(input.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success(), "python failed");
    String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .map(str::to_owned)
        .collect()
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

fn unhex(s: &str) -> Vec<u8> {
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
        .collect()
}

fn messages() -> Vec<Vec<u8>> {
    let json: String = (0..800)
        .map(|i| {
            format!(
                "{{\"seq\":{i},\"topic\":\"prices.{}\",\"v\":{}}},",
                i % 7,
                i * 31
            )
        })
        .collect();
    vec![
        json.clone().into_bytes(),
        json.into_bytes(), // refers back to the first under context takeover
        b"x".to_vec(),
        "naïve café ☕ ".repeat(200).into_bytes(),
        (0..5000u32).map(|i| (i * 7919 % 251) as u8).collect(),
    ]
}

/// zlib as the sender: one raw-deflate compressor per connection, sync flush, tail removed.
const ZLIB_COMPRESS: &str = r#"
import sys, zlib
lines = sys.stdin.read().split()
bits, nct = int(lines[0]), int(lines[1])
c = zlib.compressobj(6, zlib.DEFLATED, -bits)
for h in lines[2:]:
    if nct:
        c = zlib.compressobj(6, zlib.DEFLATED, -bits)
    data = c.compress(bytes.fromhex(h)) + c.flush(zlib.Z_SYNC_FLUSH)
    assert data.endswith(b"\x00\x00\xff\xff")
    print(data[:-4].hex())
"#;

/// zlib as the receiver: one raw-deflate decompressor per connection, tail re-appended.
const ZLIB_INFLATE: &str = r#"
import sys, zlib
lines = sys.stdin.read().split()
bits = int(lines[0])
d = zlib.decompressobj(-bits)
for h in lines[1:]:
    print(d.decompress(bytes.fromhex(h) + b"\x00\x00\xff\xff").hex())
"#;

#[test]
fn zlib_compressed_messages_decode() {
    let msgs = messages();
    // zlib rejects raw windows of 8 bits for deflate; 9..=15 are what peers produce.
    for bits in 9..=15u8 {
        for nct in [false, true] {
            let mut input = format!("{bits} {}\n", nct as u8);
            for m in &msgs {
                input.push_str(&hex(m));
                input.push('\n');
            }
            let payloads = python(ZLIB_COMPRESS, &input);
            assert_eq!(payloads.len(), msgs.len());
            let params = DeflateParams {
                server_no_context_takeover: nct,
                server_max_window_bits: bits,
                ..DeflateParams::default()
            };
            let config = Config {
                deflate: Some(params),
                ..Config::default()
            };
            let mut dec = Decoder::new(Role::Client, config);
            for (m, p) in msgs.iter().zip(&payloads) {
                let p = unhex(p);
                let mut wire = BytesMut::new();
                encode_header(&mut wire, true, true, OpCode::Binary, None, p.len());
                wire.extend_from_slice(&p);
                let got = dec.decode(&mut wire).unwrap().unwrap();
                assert_eq!(got, Message::binary(m.clone()), "bits {bits} nct {nct}");
            }
        }
    }
}

#[test]
fn our_compressed_frames_inflate_with_zlib() {
    let msgs = messages();
    for bits in 8..=15u8 {
        for nct in [false, true] {
            let params = DeflateParams {
                server_no_context_takeover: nct,
                server_max_window_bits: bits,
                ..DeflateParams::default()
            };
            let config = Config {
                deflate: Some(params),
                compression_threshold: 0,
                ..Config::default()
            };
            let mut enc = Encoder::new(Role::Server, config);
            // zlib inflates a 9-bit stream only with a window of at least 9 bits.
            let mut input = format!("{}\n", bits.max(9));
            for m in &msgs {
                let mut wire = BytesMut::new();
                enc.encode(&Message::binary(m.clone()), &mut wire).unwrap();
                let (h, n) = parse_header(&wire).unwrap().unwrap();
                assert!(h.rsv1);
                input.push_str(&hex(&wire[n..]));
                input.push('\n');
            }
            let out = python(ZLIB_INFLATE, &input);
            assert_eq!(out.len(), msgs.len());
            for (m, o) in msgs.iter().zip(&out) {
                assert_eq!(&unhex(o), m, "bits {bits} nct {nct}");
            }
        }
    }
}
