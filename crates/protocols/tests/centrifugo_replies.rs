//! Encoding of replies, pushes and the server ping, against golden JSON.
//!
//! Goldens follow the field order of `client.proto` and the omission rules of the reference
//! JSON encoder (`centrifugal/protocol`, `client.pb_cfjson.go`: zero values omitted, except
//! `ClientInfo.user`/`client`, `presence`, `num_clients`/`num_users` and the history
//! result's three fields). Where the Centrifugo documents show a literal message (the
//! "Client protocol" page: `{"id": 1, "subscribe": {}}`, the error object; the
//! protocol notes' `{"push":{"channel":"chat","pub":{"data":{…},"offset":N}}}`), the golden
//! is that message. Each golden is also decoded back the way the JS SDK reads it.

use std::collections::BTreeMap;

use switchboard_protocols::centrifugo::{
    decode_server_frame, encode_batch, ping_frame, unsubscribe_code, ClientInfo, ConnectResult,
    Data, Disconnect, Error, HistoryResult, Join, Leave, MessagePush, PingResult, PresenceResult,
    PresenceStatsResult, Publication, PublishResult, Push, PushBody, RefreshPush, RefreshResult,
    Reply, ReplyResult, RpcResult, ServerMessage, StreamPosition, SubRefreshResult, SubscribePush,
    SubscribeResult, UnsubscribePush, UnsubscribeResult, PING,
};

fn json(s: &str) -> Option<Data> {
    Some(Data::from_json(s).unwrap())
}

fn info(user: &str, client: &str) -> ClientInfo {
    ClientInfo {
        user: user.into(),
        client: client.into(),
        ..Default::default()
    }
}

/// `reply` encodes to exactly `golden`, and `golden` decodes back to `reply`.
fn reply_is(reply: Reply, golden: &str) {
    let encoded = reply.encode();
    assert_eq!(std::str::from_utf8(&encoded).unwrap(), golden);
    let decoded = decode_server_frame(golden.as_bytes()).unwrap();
    assert_eq!(decoded, vec![ServerMessage::Reply(reply)], "{golden}");
}

fn push_is(push: Push, golden: &str) {
    let encoded = push.encode();
    assert_eq!(std::str::from_utf8(&encoded).unwrap(), golden);
    let decoded = decode_server_frame(golden.as_bytes()).unwrap();
    assert_eq!(decoded, vec![ServerMessage::Push(push)], "{golden}");
}

#[test]
fn connect_result() {
    // What a bidirectional server answers: client id, version, ping interval with pong
    // required (JS `_connectResponse` reads `ping` and `pong === true`).
    reply_is(
        Reply::ok(
            1,
            ReplyResult::Connect(ConnectResult {
                client: "c1".into(),
                version: "0.1.0".into(),
                ping: 25,
                pong: true,
                ..Default::default()
            }),
        ),
        r#"{"id":1,"connect":{"client":"c1","version":"0.1.0","ping":25,"pong":true}}"#,
    );
    // Every field, with a server-side subscription that recovered one publication.
    let mut subs = BTreeMap::new();
    subs.insert(
        "news".to_string(),
        SubscribeResult {
            recoverable: true,
            epoch: "e1".into(),
            publications: vec![Publication {
                data: json(r#"{"n":2}"#),
                offset: 2,
                ..Default::default()
            }],
            recovered: true,
            offset: 2,
            positioned: true,
            was_recovering: true,
            ..Default::default()
        },
    );
    reply_is(
        Reply::ok(
            1,
            ReplyResult::Connect(ConnectResult {
                client: "c1".into(),
                version: "0.1.0".into(),
                expires: true,
                ttl: 3600,
                data: json(r#"{"welcome":true}"#),
                subs,
                ping: 25,
                pong: true,
                session: "s".into(),
                node: "n".into(),
            }),
        ),
        concat!(
            r#"{"id":1,"connect":{"client":"c1","version":"0.1.0","expires":true,"ttl":3600,"#,
            r#""data":{"welcome":true},"subs":{"news":{"recoverable":true,"epoch":"e1","#,
            r#""publications":[{"data":{"n":2},"offset":2}],"recovered":true,"offset":2,"#,
            r#""positioned":true,"was_recovering":true}},"ping":25,"pong":true,"#,
            r#""session":"s","node":"n"}}"#
        ),
    );
}

#[test]
fn subscribe_result() {
    // The protocol document's example reply.
    reply_is(
        Reply::ok(2, ReplyResult::Subscribe(SubscribeResult::default())),
        r#"{"id":2,"subscribe":{}}"#,
    );
    // A recovering subscription in a recoverable channel.
    reply_is(
        Reply::ok(
            2,
            ReplyResult::Subscribe(SubscribeResult {
                expires: true,
                ttl: 60,
                recoverable: true,
                epoch: "7".into(),
                publications: vec![
                    Publication {
                        data: json(r#"{"t":"a"}"#),
                        offset: 4,
                        ..Default::default()
                    },
                    Publication {
                        data: json(r#""b""#),
                        offset: 5,
                        ..Default::default()
                    },
                ],
                recovered: true,
                offset: 5,
                positioned: true,
                data: json("1"),
                was_recovering: true,
            }),
        ),
        concat!(
            r#"{"id":2,"subscribe":{"expires":true,"ttl":60,"recoverable":true,"epoch":"7","#,
            r#""publications":[{"data":{"t":"a"},"offset":4},{"data":"b","offset":5}],"#,
            r#""recovered":true,"offset":5,"positioned":true,"data":1,"was_recovering":true}}"#
        ),
    );
    // Could not recover: `recovered` is omitted (false) while `was_recovering` says it tried.
    reply_is(
        Reply::ok(
            2,
            ReplyResult::Subscribe(SubscribeResult {
                recoverable: true,
                epoch: "8".into(),
                offset: 9,
                was_recovering: true,
                ..Default::default()
            }),
        ),
        r#"{"id":2,"subscribe":{"recoverable":true,"epoch":"8","offset":9,"was_recovering":true}}"#,
    );
}

#[test]
fn error_reply() {
    // The protocol document's error object (internal errors are temporary).
    reply_is(
        Reply::error(1, Error::INTERNAL),
        r#"{"id":1,"error":{"code":100,"message":"internal server error","temporary":true}}"#,
    );
    reply_is(
        Reply::error(9, Error::NOT_AVAILABLE),
        r#"{"id":9,"error":{"code":108,"message":"not available"}}"#,
    );
    reply_is(
        Reply::error(3, Error::new(4001, "custom").temporary()),
        r#"{"id":3,"error":{"code":4001,"message":"custom","temporary":true}}"#,
    );
}

#[test]
fn the_other_results() {
    reply_is(
        Reply::ok(3, ReplyResult::Unsubscribe(UnsubscribeResult {})),
        r#"{"id":3,"unsubscribe":{}}"#,
    );
    reply_is(
        Reply::ok(4, ReplyResult::Publish(PublishResult {})),
        r#"{"id":4,"publish":{}}"#,
    );
    let mut presence = BTreeMap::new();
    presence.insert(
        "c1".to_string(),
        ClientInfo {
            user: "u1".into(),
            client: "c1".into(),
            conn_info: json(r#"{"name":"Ann"}"#),
            chan_info: None,
        },
    );
    presence.insert("c2".to_string(), info("", "c2"));
    reply_is(
        Reply::ok(5, ReplyResult::Presence(PresenceResult { presence })),
        concat!(
            r#"{"id":5,"presence":{"presence":{"c1":{"user":"u1","client":"c1","conn_info":{"name":"Ann"}},"#,
            r#""c2":{"user":"","client":"c2"}}}}"#
        ),
    );
    // Always written, even when empty or zero.
    reply_is(
        Reply::ok(5, ReplyResult::Presence(PresenceResult::default())),
        r#"{"id":5,"presence":{"presence":{}}}"#,
    );
    reply_is(
        Reply::ok(
            6,
            ReplyResult::PresenceStats(PresenceStatsResult::default()),
        ),
        r#"{"id":6,"presence_stats":{"num_clients":0,"num_users":0}}"#,
    );
    reply_is(
        Reply::ok(
            6,
            ReplyResult::PresenceStats(PresenceStatsResult {
                num_clients: 3,
                num_users: 2,
            }),
        ),
        r#"{"id":6,"presence_stats":{"num_clients":3,"num_users":2}}"#,
    );
    reply_is(
        Reply::ok(
            7,
            ReplyResult::History(HistoryResult::new(
                Vec::new(),
                StreamPosition {
                    offset: 0,
                    epoch: "e".into(),
                },
            )),
        ),
        r#"{"id":7,"history":{"publications":[],"epoch":"e","offset":0}}"#,
    );
    reply_is(
        Reply::ok(
            7,
            ReplyResult::History(HistoryResult {
                publications: vec![Publication {
                    data: json("[1]"),
                    info: Some(info("u", "c")),
                    offset: 12,
                    tags: BTreeMap::from([("k".to_string(), "v".to_string())]),
                }],
                epoch: "e".into(),
                offset: 12,
            }),
        ),
        concat!(
            r#"{"id":7,"history":{"publications":[{"data":[1],"info":{"user":"u","client":"c"},"#,
            r#""offset":12,"tags":{"k":"v"}}],"epoch":"e","offset":12}}"#
        ),
    );
    reply_is(
        Reply::ok(8, ReplyResult::Ping(PingResult {})),
        r#"{"id":8,"ping":{}}"#,
    );
    reply_is(
        Reply::ok(
            9,
            ReplyResult::Rpc(RpcResult {
                data: json(r#"{"r":1}"#),
            }),
        ),
        r#"{"id":9,"rpc":{"data":{"r":1}}}"#,
    );
    reply_is(
        Reply::ok(
            10,
            ReplyResult::Refresh(RefreshResult {
                client: "c".into(),
                version: "v".into(),
                expires: true,
                ttl: 3600,
            }),
        ),
        r#"{"id":10,"refresh":{"client":"c","version":"v","expires":true,"ttl":3600}}"#,
    );
    reply_is(
        Reply::ok(
            11,
            ReplyResult::SubRefresh(SubRefreshResult {
                expires: true,
                ttl: 60,
            }),
        ),
        r#"{"id":11,"sub_refresh":{"expires":true,"ttl":60}}"#,
    );
}

#[test]
fn pushes() {
    push_is(
        Push::new(
            "chat",
            PushBody::Pub(Publication {
                data: json(r#"{"text":"hi"}"#),
                offset: 3,
                ..Default::default()
            }),
        ),
        r#"{"push":{"channel":"chat","pub":{"data":{"text":"hi"},"offset":3}}}"#,
    );
    push_is(
        Push::new(
            "chat",
            PushBody::Join(Join {
                info: info("u1", "c1"),
            }),
        ),
        r#"{"push":{"channel":"chat","join":{"info":{"user":"u1","client":"c1"}}}}"#,
    );
    push_is(
        Push::new(
            "chat",
            PushBody::Leave(Leave {
                info: info("u1", "c1"),
            }),
        ),
        r#"{"push":{"channel":"chat","leave":{"info":{"user":"u1","client":"c1"}}}}"#,
    );
    push_is(
        Push::new(
            "chat",
            PushBody::Unsubscribe(UnsubscribePush {
                code: unsubscribe_code::SERVER,
                reason: "server unsubscribe".into(),
            }),
        ),
        r#"{"push":{"channel":"chat","unsubscribe":{"code":2000,"reason":"server unsubscribe"}}}"#,
    );
    push_is(
        Push::new(
            "",
            PushBody::Message(MessagePush {
                data: json(r#""hello""#),
            }),
        ),
        r#"{"push":{"message":{"data":"hello"}}}"#,
    );
    push_is(
        Push::new(
            "news",
            PushBody::Subscribe(SubscribePush {
                recoverable: true,
                epoch: "e".into(),
                offset: 1,
                positioned: true,
                data: None,
            }),
        ),
        r#"{"push":{"channel":"news","subscribe":{"recoverable":true,"epoch":"e","offset":1,"positioned":true}}}"#,
    );
    push_is(
        Push::new(
            "",
            PushBody::Connect(ConnectResult {
                client: "c".into(),
                version: "v".into(),
                ..Default::default()
            }),
        ),
        r#"{"push":{"connect":{"client":"c","version":"v"}}}"#,
    );
    push_is(
        Disconnect::BAD_REQUEST.to_push(),
        r#"{"push":{"disconnect":{"code":3501,"reason":"bad request"}}}"#,
    );
    push_is(
        Disconnect::SHUTDOWN.to_push(),
        r#"{"push":{"disconnect":{"code":3001,"reason":"shutdown","reconnect":true}}}"#,
    );
    push_is(
        Push::new(
            "",
            PushBody::Refresh(RefreshPush {
                expires: true,
                ttl: 120,
            }),
        ),
        r#"{"push":{"refresh":{"expires":true,"ttl":120}}}"#,
    );
}

#[test]
fn server_ping_and_batches() {
    // The server ping is an empty object; the JS SDK treats a message with neither id nor
    // push as a ping.
    assert_eq!(PING, b"{}");
    assert_eq!(&ping_frame()[..], b"{}");
    assert_eq!(
        decode_server_frame(PING).unwrap(),
        vec![ServerMessage::Ping]
    );

    // A reply, a push and a ping in one frame, one per line (replies and pushes may share a
    // frame, per the protocol document).
    let reply = Reply::ok(4, ReplyResult::Publish(PublishResult {}));
    let push = Push::new(
        "chat",
        PushBody::Pub(Publication {
            data: json("1"),
            offset: 1,
            ..Default::default()
        }),
    );
    let frame = encode_batch([reply.encode(), push.encode(), ping_frame()]);
    assert_eq!(
        std::str::from_utf8(&frame).unwrap(),
        "{\"id\":4,\"publish\":{}}\n{\"push\":{\"channel\":\"chat\",\"pub\":{\"data\":1,\"offset\":1}}}\n{}"
    );
    assert_eq!(
        decode_server_frame(&frame).unwrap(),
        vec![
            ServerMessage::Reply(reply),
            ServerMessage::Push(push),
            ServerMessage::Ping
        ]
    );
    assert!(encode_batch(Vec::<Vec<u8>>::new()).is_empty());
}

#[test]
fn every_encoded_message_is_one_line() {
    // Line breaks inside a message would split it in the newline-delimited batch; data
    // from JSON text with line breaks is compacted when embedded (see the data tests), and
    // strings escape their line breaks.
    let push = Push::new(
        "a\nb",
        PushBody::Message(MessagePush {
            data: json("\"x\\ny\""),
        }),
    );
    let encoded = push.encode();
    assert!(!encoded.contains(&b'\n'));
    let reply = Reply::error(1, Error::new(400, "two\nlines"));
    assert!(!reply.encode().contains(&b'\n'));
}
