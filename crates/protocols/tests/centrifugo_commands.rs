//! Decoding of client command frames: every command the SDKs send, batches, pongs, and the
//! malformed input the server answers with a `3501 bad request` disconnect.
//!
//! Golden frames are written the way the `centrifuge` JS SDK (5.x) builds them:
//! `JSON.stringify` of `{id, <method>: {...}}` with only the fields it has, joined by `\n`
//! (`src/json.ts` `encodeCommands`, `src/centrifuge.ts` `_getConnectRequest`,
//! `src/subscription.ts` `_buildSubscribeCommand`), and the examples of the Centrifugo
//! "Client protocol" document.

use switchboard_protocols::centrifugo::{
    commands, decode_commands, encode_commands, Command, ConnectRequest, Data, DecodeError,
    Disconnect, HistoryRequest, Method, PingRequest, PresenceRequest, PresenceStatsRequest,
    PublishRequest, RefreshRequest, RpcRequest, SendRequest, StreamPosition, SubRefreshRequest,
    SubscribeRequest, UnsubscribeRequest,
};

fn json(s: &str) -> Option<Data> {
    Some(Data::from_json(s).unwrap())
}

fn one(frame: &str) -> Command {
    let mut decoded = decode_commands(frame.as_bytes());
    assert_eq!(decoded.len(), 1, "{frame}: {decoded:?}");
    decoded.pop().unwrap().unwrap()
}

fn error(frame: &str) -> DecodeError {
    let decoded = decode_commands(frame.as_bytes());
    match decoded.last() {
        Some(Err(e)) => e.clone(),
        other => panic!("{frame}: expected an error, got {other:?}"),
    }
}

/// Every golden command decodes to the expected value, and encoding that value and decoding
/// it again gives the same command.
fn check(frame: &str, expected: Command) {
    let decoded = one(frame);
    assert_eq!(decoded, expected, "{frame}");
    let again = one(&expected.to_json());
    assert_eq!(again, expected, "round trip of {frame}");
}

#[test]
fn connect_with_token_name_version_and_recovering_server_subs() {
    // JS: `_getConnectRequest` adds token, data, name, version, headers (ignored by us) and,
    // for recoverable server-side subscriptions, `subs` with recover/offset/epoch.
    let frame = r#"{"connect":{"token":"T","data":{"hello":1},"name":"js","version":"5.8.0","headers":{"X-A":"b"},"subs":{"news":{"recover":true,"offset":5,"epoch":"abc"}}},"id":1}"#;
    let mut req = ConnectRequest {
        token: "T".into(),
        data: json(r#"{"hello":1}"#),
        name: "js".into(),
        version: "5.8.0".into(),
        ..Default::default()
    };
    req.subs.insert(
        "news".into(),
        SubscribeRequest {
            recover: true,
            offset: 5,
            epoch: "abc".into(),
            ..Default::default()
        },
    );
    check(
        frame,
        Command {
            id: 1,
            method: Method::Connect(req),
        },
    );
    // Anonymous connect: an empty request object.
    check(
        r#"{"id":1,"connect":{}}"#,
        Command {
            id: 1,
            method: Method::Connect(ConnectRequest::default()),
        },
    );
}

#[test]
fn subscribe_with_every_field_and_unknown_newer_fields() {
    // JS `_buildSubscribeCommand`: channel, token, data, positioned, recoverable,
    // join_leave, flag (newer SDKs), recover + offset + epoch, delta, tf.
    let frame = r#"{"subscribe":{"channel":"chat","token":"S","data":{"d":true},"positioned":true,"recoverable":true,"join_leave":true,"flag":1,"recover":true,"offset":3,"epoch":"xyz","delta":"fossil","tf":{"op":"eq"}},"id":2}"#;
    check(
        frame,
        Command {
            id: 2,
            method: Method::Subscribe(SubscribeRequest {
                channel: "chat".into(),
                token: "S".into(),
                recover: true,
                epoch: "xyz".into(),
                offset: 3,
                data: json(r#"{"d":true}"#),
                positioned: true,
                recoverable: true,
                join_leave: true,
            }),
        },
    );
    // The protocol document's own example.
    check(
        r#"{"id": 1, "subscribe": {"channel": "example"}}"#,
        Command {
            id: 1,
            method: Method::Subscribe(SubscribeRequest {
                channel: "example".into(),
                ..Default::default()
            }),
        },
    );
}

#[test]
fn the_other_commands() {
    let cases: Vec<(&str, Command)> = vec![
        (
            r#"{"id":3,"unsubscribe":{"channel":"chat"}}"#,
            Command {
                id: 3,
                method: Method::Unsubscribe(UnsubscribeRequest {
                    channel: "chat".into(),
                }),
            },
        ),
        (
            r#"{"id":4,"publish":{"channel":"chat","data":{"text":"hi"}}}"#,
            Command {
                id: 4,
                method: Method::Publish(PublishRequest {
                    channel: "chat".into(),
                    data: json(r#"{"text":"hi"}"#),
                }),
            },
        ),
        (
            r#"{"id":5,"presence":{"channel":"chat"}}"#,
            Command {
                id: 5,
                method: Method::Presence(PresenceRequest {
                    channel: "chat".into(),
                }),
            },
        ),
        (
            r#"{"id":6,"presence_stats":{"channel":"chat"}}"#,
            Command {
                id: 6,
                method: Method::PresenceStats(PresenceStatsRequest {
                    channel: "chat".into(),
                }),
            },
        ),
        (
            r#"{"id":7,"history":{"channel":"chat","limit":10,"since":{"offset":2,"epoch":"e"},"reverse":true}}"#,
            Command {
                id: 7,
                method: Method::History(HistoryRequest {
                    channel: "chat".into(),
                    limit: 10,
                    since: Some(StreamPosition {
                        offset: 2,
                        epoch: "e".into(),
                    }),
                    reverse: true,
                }),
            },
        ),
        (
            // History with limit -1 (everything) and no since.
            r#"{"id":7,"history":{"channel":"chat","limit":-1}}"#,
            Command {
                id: 7,
                method: Method::History(HistoryRequest {
                    channel: "chat".into(),
                    limit: -1,
                    ..Default::default()
                }),
            },
        ),
        (
            r#"{"id":8,"ping":{}}"#,
            Command {
                id: 8,
                method: Method::Ping(PingRequest {}),
            },
        ),
        (
            // `send` carries no id: it is never answered.
            r#"{"send":{"data":{"x":1}}}"#,
            Command {
                id: 0,
                method: Method::Send(SendRequest {
                    data: json(r#"{"x":1}"#),
                }),
            },
        ),
        (
            r#"{"id":9,"rpc":{"method":"sum","data":[1,2]}}"#,
            Command {
                id: 9,
                method: Method::Rpc(RpcRequest {
                    method: "sum".into(),
                    data: json("[1,2]"),
                }),
            },
        ),
        (
            r#"{"id":10,"refresh":{"token":"T2"}}"#,
            Command {
                id: 10,
                method: Method::Refresh(RefreshRequest { token: "T2".into() }),
            },
        ),
        (
            r#"{"id":11,"sub_refresh":{"channel":"priv","token":"S2"}}"#,
            Command {
                id: 11,
                method: Method::SubRefresh(SubRefreshRequest {
                    channel: "priv".into(),
                    token: "S2".into(),
                }),
            },
        ),
    ];
    for (frame, expected) in cases {
        check(frame, expected);
    }
}

#[test]
fn empty_object_is_the_clients_pong() {
    // JS `_handleServerPing` sends `{}` when the connect result said `pong: true`.
    assert_eq!(one("{}"), Command::PONG);
    assert!(!Command::PONG.method.expects_reply());
    assert_eq!(Command::PONG.to_json(), "{}");
    // Unknown fields do not turn it into a command.
    assert_eq!(one(r#"{"future":1}"#), Command::PONG);
}

#[test]
fn golden_encoding_of_commands() {
    // Field order follows the schema; zero values are omitted like the SDKs do.
    let cmd = Command {
        id: 2,
        method: Method::Subscribe(SubscribeRequest {
            channel: "chat".into(),
            recover: true,
            offset: 3,
            epoch: "e".into(),
            ..Default::default()
        }),
    };
    assert_eq!(
        cmd.to_json(),
        r#"{"id":2,"subscribe":{"channel":"chat","recover":true,"epoch":"e","offset":3}}"#
    );
    let send = Command {
        id: 0,
        method: Method::Send(SendRequest { data: json("1") }),
    };
    assert_eq!(send.to_json(), r#"{"send":{"data":1}}"#);
}

#[test]
fn a_batch_decodes_in_order() {
    // The protocol document's batch example, plus a pong, with a trailing newline.
    let frame = "{\"id\": 1, \"subscribe\": {\"channel\": \"ch1\"}}\n{\"id\": 2, \"subscribe\": {\"channel\": \"ch2\"}}\n{}\n";
    let decoded: Vec<Command> = decode_commands(frame.as_bytes())
        .into_iter()
        .map(Result::unwrap)
        .collect();
    assert_eq!(decoded.len(), 3);
    assert_eq!(decoded[0].id, 1);
    assert_eq!(decoded[1].id, 2);
    match (&decoded[0].method, &decoded[1].method) {
        (Method::Subscribe(a), Method::Subscribe(b)) => {
            assert_eq!((a.channel.as_str(), b.channel.as_str()), ("ch1", "ch2"));
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(decoded[2], Command::PONG);

    // CRLF line ends and blank lines are tolerated.
    let crlf = "{\"id\":1,\"ping\":{}}\r\n\r\n{\"id\":2,\"ping\":{}}\r\n";
    let ids: Vec<u32> = decode_commands(crlf.as_bytes())
        .into_iter()
        .map(|c| c.unwrap().id)
        .collect();
    assert_eq!(ids, [1, 2]);

    // What encode_commands writes, decode_commands reads back.
    let sent = vec![
        Command {
            id: 1,
            method: Method::Connect(ConnectRequest::default()),
        },
        Command {
            id: 2,
            method: Method::Publish(PublishRequest {
                channel: "a".into(),
                data: json(r#""x""#),
            }),
        },
    ];
    let frame = encode_commands(&sent);
    assert_eq!(frame.lines().count(), 2);
    let back: Vec<Command> = decode_commands(frame.as_bytes())
        .into_iter()
        .map(Result::unwrap)
        .collect();
    assert_eq!(back, sent);
}

#[test]
fn decoding_stops_at_the_first_bad_line() {
    // Centrifugo handles the commands before a bad line, then disconnects: the iterator
    // yields them, then the error, then nothing more (the third line is never decoded).
    let frame = "{\"id\":1,\"ping\":{}}\n{\"id\":2,\"ping\":\n{\"id\":3,\"ping\":{}}";
    let decoded = decode_commands(frame.as_bytes());
    assert_eq!(decoded.len(), 2);
    assert_eq!(decoded[0].as_ref().unwrap().id, 1);
    let err = decoded[1].as_ref().unwrap_err();
    assert!(matches!(err, DecodeError::Json { line: 2, .. }), "{err:?}");
    assert_eq!(err.line(), Some(2));
    assert_eq!(err.disconnect(), Disconnect::BAD_REQUEST);
    assert_eq!(err.disconnect().code, 3501);

    let mut iter = commands(frame.as_bytes());
    assert!(iter.next().unwrap().is_ok());
    assert!(iter.next().unwrap().is_err());
    assert!(iter.next().is_none());
    assert!(iter.next().is_none());
}

/// A check of the error a malformed frame gives.
type Expect = fn(&DecodeError) -> bool;

#[test]
fn malformed_input_is_a_bad_request() {
    let cases: Vec<(&str, Expect)> =
        vec![
        ("", |e| *e == DecodeError::Empty),
        ("\n \n", |e| *e == DecodeError::Empty),
        ("not json", |e| matches!(e, DecodeError::Json { line: 1, .. })),
        ("[1,2]", |e| matches!(e, DecodeError::Json { .. })),
        ("42", |e| matches!(e, DecodeError::Json { .. })),
        (r#"{"id":-1,"ping":{}}"#, |e| {
            matches!(e, DecodeError::Json { .. })
        }),
        (r#"{"id":1.5,"ping":{}}"#, |e| {
            matches!(e, DecodeError::Json { .. })
        }),
        (r#"{"id":1,"subscribe":{"channel":5}}"#, |e| {
            matches!(e, DecodeError::Json { .. })
        }),
        (r#"{"id":1,"ping":{},"id":2}"#, |e| {
            matches!(e, DecodeError::Json { .. })
        }),
        (r#"{"id":1}"#, |e| *e == DecodeError::NoMethod { line: 1 }),
        (r#"{"subscribe":{"channel":"a"}}"#, |e| {
            *e == DecodeError::MissingId { line: 1 }
        }),
        (r#"{"id":0,"ping":{}}"#, |e| {
            *e == DecodeError::MissingId { line: 1 }
        }),
        (r#"{"id":1,"ping":{},"presence":{"channel":"a"}}"#, |e| {
            *e == DecodeError::SeveralMethods { line: 1 }
        }),
        (r#"{"id":1,"subscribe":{}}"#, |e| {
            matches!(
                e,
                DecodeError::MissingField {
                    method: "subscribe",
                    field: "channel",
                    ..
                }
            )
        }),
        (r#"{"id":1,"publish":{"channel":"a"}}"#, |e| {
            matches!(e, DecodeError::MissingField { field: "data", .. })
        }),
        (r#"{"id":1,"publish":{"data":1}}"#, |e| {
            matches!(e, DecodeError::MissingField { field: "channel", .. })
        }),
        (r#"{"id":1,"refresh":{}}"#, |e| {
            matches!(e, DecodeError::MissingField { field: "token", .. })
        }),
        (r#"{"id":1,"history":{"limit":1}}"#, |e| {
            matches!(e, DecodeError::MissingField { method: "history", .. })
        }),
        (r#"{"id":1,"publish":{"channel":"a","data":{"x":}}}"#, |e| {
            matches!(e, DecodeError::Json { .. })
        }),
        // Invalid UTF-8 inside a string.
        ("{\"id\":1,\"unsubscribe\":{\"channel\":\"\u{FFFD}\"}}\n{\"id\":2,\"x\":\"\\ud800\"", |e| {
            matches!(e, DecodeError::Json { line: 2, .. })
        }),
    ];
    for (frame, expected) in cases {
        let e = error(frame);
        assert!(expected(&e), "{frame:?} gave {e:?}");
        assert_eq!(e.disconnect().code, 3501, "{frame:?}");
        assert!(!e.to_string().is_empty());
    }
    // Raw invalid UTF-8 bytes.
    let decoded = decode_commands(b"{\"id\":1,\"unsubscribe\":{\"channel\":\"\xff\"}}");
    assert!(matches!(decoded[0], Err(DecodeError::Json { .. })));
}

#[test]
fn publish_data_is_kept_verbatim() {
    // Odd spacing inside the data survives: the raw JSON is never re-serialised.
    let cmd = one(r#"{"id":4,"publish":{"channel":"c","data":{"b" : [1, 2],"a":"x"}}}"#);
    let Method::Publish(req) = cmd.method else {
        panic!("not a publish")
    };
    assert_eq!(req.data.unwrap().get(), r#"{"b" : [1, 2],"a":"x"}"#);
}
