//! The Protobuf encoding of the Centrifugo protocol: round trips through the client's and
//! the server's sides, bytes written by hand from the schema (so the field numbers are
//! checked against the published protocol, not against our own encoder), the shared
//! publication cache, and bad input.

use std::collections::BTreeMap;
use std::sync::Arc;

use bytes::Bytes;
use switchboard_core::{Payload, PayloadKind, Publication as CorePublication, WireFormat};
use switchboard_protocols::centrifugo::protobuf::{
    self, decode_commands, decode_server_frame, encode_commands, encode_publication_push,
};
use switchboard_protocols::centrifugo::{
    Command, ConnectRequest, Data, DecodeError, Encoding, Error, HistoryRequest, HistoryResult,
    Method, PingRequest, PresenceRequest, PresenceStatsRequest, Publication, PublishRequest, Push,
    PushBody, RefreshRequest, Reply, ReplyResult, RpcRequest, SendRequest, StreamPosition,
    SubRefreshRequest, SubscribeRequest, UnsubscribePush, UnsubscribeRequest,
};

fn bytes(b: &[u8]) -> Option<Data> {
    Some(Data::from_bytes(Bytes::copy_from_slice(b)))
}

fn decode_ok(frame: Bytes) -> Vec<Command> {
    decode_commands(frame)
        .into_iter()
        .map(|c| c.expect("command decodes"))
        .collect()
}

#[test]
fn every_command_survives_a_round_trip() {
    let mut subs = BTreeMap::new();
    subs.insert(
        "news".to_string(),
        SubscribeRequest {
            recover: true,
            epoch: "e".into(),
            offset: 9,
            ..Default::default()
        },
    );
    let commands = vec![
        Command {
            id: 1,
            method: Method::Connect(ConnectRequest {
                token: "t".into(),
                data: bytes(b"\x00\x01"),
                subs,
                name: "js".into(),
                version: "5".into(),
            }),
        },
        Command {
            id: 2,
            method: Method::Subscribe(SubscribeRequest {
                channel: "chat".into(),
                token: "st".into(),
                recover: true,
                epoch: "ep".into(),
                offset: u64::MAX,
                data: bytes(b"hi"),
                positioned: true,
                recoverable: true,
                join_leave: true,
            }),
        },
        Command {
            id: 3,
            method: Method::Unsubscribe(UnsubscribeRequest {
                channel: "chat".into(),
            }),
        },
        Command {
            id: 4,
            method: Method::Publish(PublishRequest {
                channel: "chat".into(),
                data: bytes(&[0xff, 0x00, 0xfe]),
            }),
        },
        Command {
            id: 5,
            method: Method::Presence(PresenceRequest {
                channel: "chat".into(),
            }),
        },
        Command {
            id: 6,
            method: Method::PresenceStats(PresenceStatsRequest {
                channel: "chat".into(),
            }),
        },
        Command {
            id: 7,
            method: Method::History(HistoryRequest {
                channel: "chat".into(),
                limit: -1,
                since: Some(StreamPosition {
                    offset: 3,
                    epoch: "x".into(),
                }),
                reverse: true,
            }),
        },
        Command {
            id: 8,
            method: Method::Ping(PingRequest {}),
        },
        Command {
            id: 0,
            method: Method::Send(SendRequest {
                data: bytes(b"async"),
            }),
        },
        Command {
            id: 10,
            method: Method::Rpc(RpcRequest {
                data: bytes(b"{}"),
                method: "m".into(),
            }),
        },
        Command {
            id: 11,
            method: Method::Refresh(RefreshRequest { token: "n".into() }),
        },
        Command {
            id: 12,
            method: Method::SubRefresh(SubRefreshRequest {
                channel: "chat".into(),
                token: "s".into(),
            }),
        },
        Command::PONG,
    ];
    let frame = encode_commands(&commands);
    assert_eq!(decode_ok(frame), commands);
}

#[test]
fn hand_written_bytes_decode_by_the_schema_numbers() {
    // Command { id = 1: 7, publish = 7: PublishRequest { channel = 1: "c", data = 2: 00 ff } }
    let publish = [
        0x08, 0x07, 0x3a, 0x07, 0x0a, 0x01, b'c', 0x12, 0x02, 0x00, 0xff,
    ];
    // Command { id = 1: 2, history = 10: { channel = 1: "h", limit = 7: 5,
    //           since = 8: { offset = 1: 4, epoch = 2: "e" }, reverse = 9: true } }
    let history = [
        0x08, 0x02, 0x52, 0x0e, 0x0a, 0x01, b'h', 0x38, 0x05, 0x42, 0x05, 0x08, 0x04, 0x12, 0x01,
        b'e', 0x48, 0x01,
    ];
    let mut frame = vec![publish.len() as u8];
    frame.extend_from_slice(&publish);
    frame.push(history.len() as u8);
    frame.extend_from_slice(&history);
    frame.push(0); // the pong: an empty Command
    let got = decode_ok(Bytes::from(frame));
    assert_eq!(
        got,
        vec![
            Command {
                id: 7,
                method: Method::Publish(PublishRequest {
                    channel: "c".into(),
                    data: bytes(&[0x00, 0xff]),
                }),
            },
            Command {
                id: 2,
                method: Method::History(HistoryRequest {
                    channel: "h".into(),
                    limit: 5,
                    since: Some(StreamPosition {
                        offset: 4,
                        epoch: "e".into()
                    }),
                    reverse: true,
                }),
            },
            Command::PONG,
        ]
    );
    // The client's data becomes a binary payload, byte for byte.
    let Method::Publish(p) = &got[0].method else {
        unreachable!()
    };
    let payload = p.data.clone().unwrap().into_payload();
    assert_eq!(payload.kind, PayloadKind::Binary);
    assert_eq!(&payload.data[..], &[0x00, 0xff]);
}

#[test]
fn unknown_fields_are_skipped() {
    // subscribe { channel: "c", 99: varint 1, 13 (a newer SDK's filter): length 0 },
    // and field 200 (varint) on the command itself.
    let command = [
        0x08, 0x01, 0x2a, 0x08, 0x0a, 0x01, b'c', 0x98, 0x06, 0x01, 0x6a, 0x00, 0xc0, 0x0c, 0x05,
    ];
    let mut frame = vec![command.len() as u8];
    frame.extend_from_slice(&command);
    assert_eq!(
        decode_ok(Bytes::from(frame)),
        vec![Command {
            id: 1,
            method: Method::Subscribe(SubscribeRequest {
                channel: "c".into(),
                ..Default::default()
            }),
        }]
    );
}

fn first_error(frame: &[u8]) -> DecodeError {
    decode_commands(Bytes::copy_from_slice(frame))
        .into_iter()
        .find_map(Result::err)
        .expect("an error")
}

#[test]
fn bad_frames_are_errors_after_the_good_commands() {
    let ping = encode_commands(&[Command {
        id: 1,
        method: Method::Ping(PingRequest {}),
    }]);
    // A good command, then a truncated varint: the good one is handled first.
    let mut frame = ping.to_vec();
    frame.push(0x80);
    let results = decode_commands(Bytes::from(frame));
    assert_eq!(results.len(), 2);
    assert!(results[0].is_ok());
    assert!(
        matches!(&results[1], Err(DecodeError::Protobuf { index: 2, message }) if message.contains("truncated")),
        "{results:?}"
    );

    assert_eq!(first_error(&[]), DecodeError::Empty);
    // A length past the end of the frame.
    assert!(matches!(
        first_error(&[0x05, 0x08, 0x01]),
        DecodeError::Protobuf { index: 1, .. }
    ));
    // A length prefix of eleven bytes.
    assert!(
        matches!(first_error(&[0xff; 11]), DecodeError::Protobuf { message, .. } if message.contains("longer"))
    );
    // A huge length (far past the frame).
    assert!(matches!(
        first_error(&[0xff, 0xff, 0xff, 0xff, 0x0f, 0x00]),
        DecodeError::Protobuf { .. }
    ));
    // Bytes that are not a Command: wire type 7 does not exist.
    assert!(matches!(
        first_error(&[0x01, 0x0f]),
        DecodeError::Protobuf { .. }
    ));
    // `id` as a length-delimited field: the wrong wire type for a uint32.
    assert!(matches!(
        first_error(&[0x03, 0x0a, 0x01, b'x']),
        DecodeError::Protobuf { .. }
    ));
    // The shared rules: a subscribe without channel, a command without id.
    assert!(matches!(
        first_error(&[0x04, 0x08, 0x01, 0x2a, 0x00]),
        DecodeError::MissingField {
            method: "subscribe",
            ..
        }
    ));
    assert!(matches!(
        first_error(&[0x02, 0x5a, 0x00]),
        DecodeError::MissingId { .. }
    ));
    // Two requests in one command (ping and send).
    assert!(matches!(
        first_error(&[0x06, 0x08, 0x01, 0x5a, 0x00, 0x62, 0x00]),
        DecodeError::SeveralMethods { line: 1 }
    ));
    // The same request twice is one request: Protobuf merges a repeated singular field.
    assert!(decode_commands(Bytes::from_static(&[
        0x06, 0x08, 0x01, 0x5a, 0x00, 0x5a, 0x00
    ]))
    .iter()
    .all(Result::is_ok));
    // Every one of them closes with 3501.
    assert_eq!(first_error(&[0x80]).disconnect().code, 3501);
}

#[test]
fn publication_pushes_carry_the_payload_bytes_and_are_encoded_once() {
    let text = Arc::new(CorePublication::new(
        Arc::from("chat"),
        Payload::text("héllo"),
        4,
        1u32,
        None,
    ));
    let binary = Arc::new(CorePublication::new(
        Arc::from("chat"),
        Payload::binary(vec![0u8, 159, 146, 150]),
        5,
        1u32,
        None,
    ));
    let a = encode_publication_push(&text);
    let b = encode_publication_push(&text);
    // The second call is the cached bytes, not a new encoding.
    assert_eq!(a.as_ptr(), b.as_ptr());
    assert!(text.is_encoded(WireFormat::CENTRIFUGO_PROTOBUF));
    assert!(!text.is_encoded(WireFormat::CENTRIFUGO_JSON));

    let frame = protobuf::encode_batch([a, encode_publication_push(&binary)]);
    let replies = decode_server_frame(&frame).unwrap();
    assert_eq!(replies.len(), 2);
    let (channel, data, offset) = replies[0].publication().unwrap();
    assert_eq!(
        (channel, &data[..], offset),
        ("chat", "héllo".as_bytes(), 4)
    );
    let (_, data, offset) = replies[1].publication().unwrap();
    assert_eq!((&data[..], offset), (&[0u8, 159, 146, 150][..], 5));
}

#[test]
fn replies_and_pushes_decode_as_a_client_reads_them() {
    let p = CorePublication::new(
        Arc::from("c"),
        Payload::binary(vec![1u8, 2, 3]),
        7,
        1u32,
        None,
    );
    let history = Reply::ok(
        9,
        ReplyResult::History(HistoryResult::new(
            vec![Publication::from_core(&p)],
            StreamPosition {
                offset: 7,
                epoch: "1".into(),
            },
        )),
    );
    let error = Reply::error(10, Error::PERMISSION_DENIED);
    let push = Push::new(
        "c",
        PushBody::Unsubscribe(UnsubscribePush {
            code: 2500,
            reason: "insufficient state".into(),
        }),
    );
    let frame = Encoding::Protobuf.batch([
        Encoding::Protobuf.reply(&history),
        Encoding::Protobuf.reply(&error),
        Encoding::Protobuf.push(&push),
        Encoding::Protobuf.ping(),
    ]);
    let replies = decode_server_frame(&frame).unwrap();
    assert_eq!(replies.len(), 4);
    assert_eq!(replies[0].id(), 9);
    assert_eq!(
        replies[0].history().unwrap(),
        vec![(Bytes::from_static(&[1, 2, 3]), 7)]
    );
    assert_eq!(replies[1].error_code(), Some(103));
    assert_eq!(replies[2].id(), 0);
    assert!(!replies[2].is_ping());
    assert!(replies[3].is_ping());
    // Text data a JSON client published goes to Protobuf clients as its bytes.
    let json = Data::from_json(r#"{"a": 1}"#).unwrap();
    assert_eq!(&json.wire_bytes()[..], br#"{"a": 1}"#);
}

#[test]
fn the_encoding_is_negotiated_like_centrifugo() {
    use Encoding::*;
    assert_eq!(Encoding::negotiate(None, None), Json);
    assert_eq!(
        Encoding::negotiate(Some("cf_protocol=protobuf"), None),
        Protobuf
    );
    assert_eq!(
        Encoding::negotiate(Some("a=1&cf_protocol=protobuf"), None),
        Protobuf
    );
    assert_eq!(Encoding::negotiate(Some("format=protobuf"), None), Protobuf);
    assert_eq!(Encoding::negotiate(Some("cf_protocol=json"), None), Json);
    assert_eq!(
        Encoding::negotiate(None, Some("centrifuge-protobuf")),
        Protobuf
    );
    assert_eq!(Encoding::negotiate(None, Some("centrifuge-json")), Json);
    assert_eq!(Protobuf.protocol(), "centrifugo-protobuf");
    assert!(Protobuf.is_binary() && !Json.is_binary());
    assert_eq!(&Protobuf.ping()[..], &[0]);
}
