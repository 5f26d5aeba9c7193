//! Criterion benchmarks of the sans-I/O codec: frame parsing and encoding, masking, UTF-8
//! validation, permessage-deflate, and broadcast frame preparation.
use std::hint::black_box;

use bytes::{Bytes, BytesMut};
use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use switchboard_websocket::codec::{Config, Decoder, Encoder, Role};
use switchboard_websocket::deflate::{DeflateParams, Deflater, Inflater};
use switchboard_websocket::mask::apply_mask;
use switchboard_websocket::utf8::Utf8Validator;
use switchboard_websocket::{Message, PreparedMessage};

/// A 16 KiB JSON-like text, typical of real-time payloads.
fn json_16k() -> String {
    let mut s = String::from("[");
    let mut i = 0;
    while s.len() < 16 * 1024 - 100 {
        s.push_str(&format!(
            "{{\"id\":{i},\"user\":\"user{}\",\"channel\":\"room:{}\",\"text\":\"héllo wörld {i}\",\"ts\":{}}},",
            i % 97,
            i % 13,
            1_700_000_000_000u64 + i * 17
        ));
        i += 1;
    }
    s.push_str("{}]");
    s
}

fn frame_parse(c: &mut Criterion) {
    let mut g = c.benchmark_group("frame_parse");
    for size in [64usize, 16 * 1024] {
        let text = "x".repeat(size);
        let mut wire = BytesMut::new();
        Encoder::new(Role::Client, Config::default())
            .encode(&Message::text(text), &mut wire)
            .unwrap();
        let wire = wire.freeze();
        g.throughput(Throughput::Bytes(wire.len() as u64));
        g.bench_with_input(
            BenchmarkId::new("server_masked_text", size),
            &wire,
            |b, wire| {
                let mut dec = Decoder::new(Role::Server, Config::default());
                b.iter(|| {
                    let mut buf = BytesMut::from(&wire[..]);
                    black_box(dec.decode(&mut buf).unwrap().unwrap());
                })
            },
        );
    }
    g.finish();
}

fn frame_encode(c: &mut Criterion) {
    let mut g = c.benchmark_group("frame_encode");
    for size in [64usize, 16 * 1024] {
        let msg = Message::Binary(Bytes::from(vec![7u8; size]));
        g.throughput(Throughput::Bytes(size as u64));
        for role in [Role::Server, Role::Client] {
            let mut enc = Encoder::new(role, Config::default());
            let mut out = BytesMut::with_capacity(size + 16);
            g.bench_function(BenchmarkId::new(format!("{role:?}"), size), |b| {
                b.iter(|| {
                    out.clear();
                    enc.encode(black_box(&msg), &mut out).unwrap();
                })
            });
        }
        let mut enc = Encoder::new(Role::Server, Config::default());
        g.bench_function(BenchmarkId::new("header_only", size), |b| {
            b.iter(|| black_box(enc.encode_header_only(black_box(&msg))))
        });
    }
    g.finish();
}

fn masking(c: &mut Criterion) {
    let mut g = c.benchmark_group("mask");
    for size in [1024usize, 64 * 1024] {
        let mut buf = vec![0xA5u8; size];
        g.throughput(Throughput::Bytes(size as u64));
        g.bench_function(BenchmarkId::from_parameter(size), |b| {
            b.iter(|| apply_mask(black_box(&mut buf), [1, 2, 3, 4]))
        });
    }
    g.finish();
}

fn utf8(c: &mut Criterion) {
    let mut g = c.benchmark_group("utf8");
    let text = json_16k();
    g.throughput(Throughput::Bytes(text.len() as u64));
    g.bench_function("whole_16k", |b| {
        b.iter(|| {
            let mut v = Utf8Validator::new();
            v.feed(black_box(text.as_bytes())).unwrap();
            v.finish().unwrap();
        })
    });
    g.bench_function("fragments_of_1000_16k", |b| {
        b.iter(|| {
            let mut v = Utf8Validator::new();
            for piece in text.as_bytes().chunks(1000) {
                v.feed(black_box(piece)).unwrap();
            }
            v.finish().unwrap();
        })
    });
    g.finish();
}

fn deflate(c: &mut Criterion) {
    let mut g = c.benchmark_group("deflate");
    let text = json_16k();
    g.throughput(Throughput::Bytes(text.len() as u64));
    let mut compressed = BytesMut::new();
    Deflater::new(15, true)
        .compress(text.as_bytes(), &mut compressed)
        .unwrap();
    println!("16 KiB JSON deflates to {} bytes", compressed.len());
    let mut d = Deflater::new(15, true);
    let mut out = BytesMut::new();
    g.bench_function("compress_16k_json", |b| {
        b.iter(|| {
            out.clear();
            d.compress(black_box(text.as_bytes()), &mut out).unwrap();
        })
    });
    let mut inf = Inflater::new(15, true);
    g.bench_function("inflate_16k_json", |b| {
        b.iter(|| {
            let mut out = BytesMut::new();
            inf.inflate(black_box(&compressed), true, &mut out, 1 << 20, &mut |_| {
                Ok(())
            })
            .unwrap();
            black_box(out);
        })
    });
    // The whole receive path: masked compressed frame → validated text message.
    let cfg = Config {
        deflate: Some(DeflateParams {
            client_no_context_takeover: true,
            ..DeflateParams::default()
        }),
        ..Config::default()
    };
    let mut wire = BytesMut::new();
    Encoder::new(Role::Client, cfg.clone())
        .encode(&Message::text(text.clone()), &mut wire)
        .unwrap();
    let mut dec = Decoder::new(Role::Server, cfg);
    g.bench_function("decode_compressed_16k_json", |b| {
        b.iter(|| {
            let mut buf = BytesMut::from(&wire[..]);
            black_box(dec.decode(&mut buf).unwrap().unwrap());
        })
    });
    g.finish();
}

fn prepared(c: &mut Criterion) {
    let mut g = c.benchmark_group("prepared");
    let text = Bytes::from(json_16k());
    let params = DeflateParams {
        server_no_context_takeover: true,
        ..DeflateParams::default()
    };
    g.bench_function("new_16k", |b| {
        b.iter(|| black_box(PreparedMessage::new(Message::Text(text.clone()))))
    });
    g.bench_function("new_and_compress_16k", |b| {
        b.iter(|| {
            let p = PreparedMessage::new(Message::Text(text.clone()));
            black_box(p.frame_for(Some(&params), 64))
        })
    });
    let p = PreparedMessage::new(Message::Text(text.clone()));
    p.frame_for(Some(&params), 64);
    g.bench_function("cached_frame_for", |b| {
        b.iter(|| black_box(p.frame_for(Some(black_box(&params)), 64)))
    });
    g.finish();
}

criterion_group!(
    benches,
    frame_parse,
    frame_encode,
    masking,
    utf8,
    deflate,
    prepared
);
criterion_main!(benches);
