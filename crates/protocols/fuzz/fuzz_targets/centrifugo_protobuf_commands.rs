//! Fuzz the Centrifugo Protobuf command decoder with arbitrary binary client messages.
//! Checks: no panic (truncated or over-long varints, lengths past the end, wrong wire types,
//! deep or unknown fields); at most one error, and only as the last item; every error maps to
//! the 3501 disconnect; a `publish` that decodes turns into a binary payload with the bytes
//! sent; the commands that decoded, encoded again as a client sends them, decode to the same
//! commands; and a client's data always has a JSON form.
#![no_main]

use bytes::Bytes;
use libfuzzer_sys::fuzz_target;
use switchboard_core::PayloadKind;
use switchboard_protocols::centrifugo::protobuf::{decode_commands, encode_commands};
use switchboard_protocols::centrifugo::{publish_payload, Method};

fuzz_target!(|frame: &[u8]| {
    let items = decode_commands(Bytes::copy_from_slice(frame));
    let errors = items.iter().filter(|r| r.is_err()).count();
    assert!(errors <= 1, "more than one error");
    if let Some(Err(e)) = items.last() {
        assert_eq!(e.disconnect().code, 3501);
    } else {
        assert_eq!(errors, 0, "error not last");
    }
    let commands: Vec<_> = items.into_iter().filter_map(Result::ok).collect();
    for c in &commands {
        if let Method::Publish(req) = &c.method {
            let sent = req.data.as_ref().map(|d| d.wire_bytes());
            if let Some(payload) = publish_payload(req.clone()) {
                assert_eq!(payload.kind, PayloadKind::Binary);
                assert_eq!(Some(payload.data), sent);
            }
        }
    }
    if !commands.is_empty() {
        let again: Vec<_> = decode_commands(encode_commands(&commands))
            .into_iter()
            .collect::<Result<_, _>>()
            .expect("re-encoded commands decode");
        assert_eq!(again, commands, "round trip");
        // The JSON form of a Protobuf client's data (what a proxy or a JSON reader sees).
        for c in &commands {
            if let Method::Send(req) = &c.method {
                let _ = req.data.as_ref().map(|d| d.get().len());
            }
        }
    }
});
