//! How core payloads cross into Centrifugo JSON and back, and the once-per-publication
//! encoding of `pub` pushes.

use std::sync::Arc;

use bytes::Bytes;
use switchboard_core::{Payload, PayloadKind, Publication as CorePublication, WireFormat};
use switchboard_protocols::centrifugo::{
    commands, data_to_payload, decode_server_frame, encode_publication_push, payload_to_data,
    publish_payload, wire_epoch, Data, Method, Publication, PushBody, ServerMessage,
    StreamPosition,
};

fn publication(payload: Payload, offset: u64) -> CorePublication {
    CorePublication::new(Arc::from("room"), payload, offset, 7u32, None)
}

fn push_text(payload: Payload) -> String {
    let bytes = encode_publication_push(&publication(payload, 1));
    String::from_utf8(bytes.to_vec()).unwrap()
}

#[test]
fn json_text_is_embedded_as_is() {
    assert_eq!(
        push_text(Payload::text(r#"{"a":[1,2],"b":"x"}"#)),
        r#"{"push":{"channel":"room","pub":{"data":{"a":[1,2],"b":"x"},"offset":1}}}"#
    );
    // Scalars are JSON too: a raw client's `42` reaches SDK clients as the number 42.
    assert_eq!(payload_to_data(&Payload::text("42")).get(), "42");
    assert_eq!(payload_to_data(&Payload::text("true")).get(), "true");
    assert_eq!(
        payload_to_data(&Payload::text(r#""quoted""#)).get(),
        r#""quoted""#
    );
    // Spacing without line breaks is kept byte for byte; surrounding whitespace is dropped.
    assert_eq!(
        payload_to_data(&Payload::text(" {\"a\" : 1} \t")).get(),
        "{\"a\" : 1}"
    );
}

#[test]
fn json_text_with_line_breaks_is_compacted_to_one_line() {
    let pretty = "{\n  \"text\": \"hello world\",\n  \"n\": [1,\r\n 2]\n}\n";
    let data = payload_to_data(&Payload::text(pretty));
    assert_eq!(data.get(), r#"{"text":"hello world","n":[1,2]}"#);
    let frame = push_text(Payload::text(pretty));
    assert!(!frame.contains('\n'));
    // Still the same JSON value.
    let a: serde_json::Value = serde_json::from_str(pretty).unwrap();
    let b: serde_json::Value = serde_json::from_str(data.get()).unwrap();
    assert_eq!(a, b);
}

#[test]
fn other_text_becomes_a_json_string() {
    assert_eq!(
        push_text(Payload::text("hello world")),
        r#"{"push":{"channel":"room","pub":{"data":"hello world","offset":1}}}"#
    );
    // Quotes, backslashes, line breaks and non-ASCII are escaped or kept as valid JSON.
    let text = "say \"hi\"\\\nbye — ok\t{";
    let data = payload_to_data(&Payload::text(text));
    let back: String = serde_json::from_str(data.get()).unwrap();
    assert_eq!(back, text);
    assert!(!data.get().contains('\n'));
    // Almost-JSON stays text.
    assert_eq!(payload_to_data(&Payload::text("{a:1}")).get(), r#""{a:1}""#);
    assert_eq!(payload_to_data(&Payload::text("1 2")).get(), r#""1 2""#);
    // The empty text is the empty string.
    assert_eq!(payload_to_data(&Payload::text("")).get(), r#""""#);
}

#[test]
fn binary_becomes_a_base64_string() {
    let payload = Payload::binary(vec![0u8, 1, 2, 0xfe, 0xff]);
    assert_eq!(payload_to_data(&payload).get(), r#""AAEC/v8=""#);
    assert_eq!(
        push_text(payload),
        r#"{"push":{"channel":"room","pub":{"data":"AAEC/v8=","offset":1}}}"#
    );
    // Binary that happens to be JSON text is still base64: the kind decides.
    assert_eq!(
        payload_to_data(&Payload::binary(Bytes::from_static(b"{}"))).get(),
        r#""e30=""#
    );
    assert_eq!(payload_to_data(&Payload::binary(Vec::new())).get(), r#""""#);
}

#[test]
fn publish_data_becomes_a_text_payload_holding_the_raw_json() {
    let frame = br#"{"id":4,"publish":{"channel":"room","data":{"text" : "hi"}}}
{"id":5,"publish":{"channel":"room","data":"plain"}}"#;
    let mut payloads = Vec::new();
    for cmd in commands(frame) {
        let Method::Publish(req) = cmd.unwrap().method else {
            panic!("not a publish")
        };
        payloads.push(publish_payload(req).unwrap());
    }
    // Verbatim, including the client's spacing: a raw-room client receives this text.
    assert_eq!(payloads[0].kind, PayloadKind::Text);
    assert_eq!(&payloads[0].data[..], br#"{"text" : "hi"}"#);
    // A JSON string keeps its quotes.
    assert_eq!(&payloads[1].data[..], br#""plain""#);

    // And back to SDK clients it is the same JSON value.
    assert_eq!(payload_to_data(&payloads[0]).get(), r#"{"text" : "hi"}"#);
    assert_eq!(payload_to_data(&payloads[1]).get(), r#""plain""#);

    let data = Data::from_json("[1, 2]").unwrap();
    assert_eq!(&data_to_payload(data.clone()).data[..], b"[1, 2]");
    assert_eq!(data.into_payload().kind, PayloadKind::Text);
}

#[test]
fn data_from_json_rejects_invalid_json() {
    assert!(Data::from_json("{").is_err());
    assert!(Data::from_json("").is_err());
    assert!(Data::from_json("1 2").is_err());
    assert_eq!(Data::from_json(" [1] ").unwrap().get(), "[1]");
}

#[test]
fn publication_push_is_encoded_once_and_shared() {
    let p = Arc::new(publication(Payload::text(r#"{"n":1}"#), 5));
    assert!(!p.is_encoded(WireFormat::CENTRIFUGO_JSON));
    let first = encode_publication_push(&p);
    assert!(p.is_encoded(WireFormat::CENTRIFUGO_JSON));

    // 1000 calls from 4 threads all get the very same bytes (same allocation): fan-out
    // encodes once per publication, not once per subscriber.
    let handles: Vec<_> = (0..4)
        .map(|_| {
            let p = Arc::clone(&p);
            std::thread::spawn(move || {
                (0..250)
                    .map(|_| encode_publication_push(&p).as_ptr() as usize)
                    .collect::<Vec<_>>()
            })
        })
        .collect();
    let mut count = 0;
    for h in handles {
        for ptr in h.join().unwrap() {
            assert_eq!(ptr, first.as_ptr() as usize);
            count += 1;
        }
    }
    assert_eq!(count, 1000);

    let decoded = decode_server_frame(&first).unwrap();
    let ServerMessage::Push(push) = &decoded[0] else {
        panic!("not a push: {decoded:?}")
    };
    assert_eq!(push.channel, "room");
    assert_eq!(
        push.body,
        PushBody::Pub(Publication {
            data: Some(Data::from_json(r#"{"n":1}"#).unwrap()),
            offset: 5,
            ..Default::default()
        })
    );
}

#[test]
fn the_cached_slot_is_what_gets_sent() {
    // A slot filled beforehand is returned as is: the encoder does not run again.
    let p = publication(Payload::text("x"), 1);
    let calls = std::sync::atomic::AtomicUsize::new(0);
    let sentinel: &Bytes = p.encoded(WireFormat::CENTRIFUGO_JSON, |_| {
        calls.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        Bytes::from_static(b"cached")
    });
    assert_eq!(&sentinel[..], b"cached");
    for _ in 0..1000 {
        assert_eq!(&encode_publication_push(&p)[..], b"cached");
    }
    assert_eq!(calls.load(std::sync::atomic::Ordering::SeqCst), 1);
}

#[test]
fn epochs_and_positions() {
    let p = publication(Payload::text("x"), 9);
    let pos = StreamPosition::of(&p);
    assert_eq!(pos.offset, 9);
    assert_eq!(pos.epoch, p.epoch.to_string());
    assert!(!pos.epoch.is_empty());
    assert_eq!(wire_epoch(7u32), "7");
    assert_eq!(wire_epoch("abc"), "abc");
}
