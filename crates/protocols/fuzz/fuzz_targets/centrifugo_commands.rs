//! Fuzz the Centrifugo command decoder with arbitrary client frames. Checks: no panic; at
//! most one error, and only as the last item; a `publish` that decodes turns into a payload
//! or is refused, never panics; the commands that decoded, encoded again as a client would
//! send them, decode to the same commands.
#![no_main]

use libfuzzer_sys::fuzz_target;
use switchboard_protocols::centrifugo::{
    decode_commands, encode_commands, publish_payload, Method,
};

fuzz_target!(|frame: &[u8]| {
    let items = decode_commands(frame);
    let errors = items.iter().filter(|r| r.is_err()).count();
    assert!(errors <= 1, "more than one error");
    if errors == 1 {
        assert!(items.last().is_some_and(Result::is_err), "error not last");
    }
    let commands: Vec<_> = items.into_iter().filter_map(Result::ok).collect();
    for c in &commands {
        if let Method::Publish(req) = &c.method {
            let _ = publish_payload(req.clone());
        }
    }
    if !commands.is_empty() {
        let again: Vec<_> = decode_commands(encode_commands(&commands).as_bytes())
            .into_iter()
            .collect::<Result<_, _>>()
            .expect("re-encoded commands decode");
        assert_eq!(again, commands, "round trip");
    }
});
