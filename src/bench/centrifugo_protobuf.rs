//! `bench fanout --protocol centrifugo-protobuf`: the Centrifugo client protocol in its
//! Protobuf encoding on the same load generator.
//!
//! Like `--protocol centrifugo` (see `super::centrifugo`), with binary messages of
//! length-delimited Protobuf `Command`s and `Reply`s: every connection goes to
//! `/connection/websocket?cf_protocol=protobuf` and sends `connect`; subscribers then
//! `subscribe` to the channel named by the URL's path. Publishers' `publish` data is
//! `--size` bytes starting with the 20 bench header bytes themselves (no hex: Protobuf data
//! is bytes), which subscribers read from each `pub` push. The commands are built by hand
//! from the schema's field numbers, and server frames are walked without decoding more
//! than the bench needs, so the load generator stays cheap.
use anyhow::bail;

use super::conn::{encode_frame, Incoming, RawConn};
use super::echo::payload;
use super::fanout::HEADER;
use crate::websocket::frame::OpCode;

/// Where Protobuf Centrifugo clients connect (the query selects the encoding).
pub(crate) const ENDPOINT: &str = "/connection/websocket?cf_protocol=protobuf";

// Field numbers of the schema (`client.proto`) the bench uses.
const COMMAND_ID: u8 = 1;
const COMMAND_CONNECT: u8 = 4;
const COMMAND_SUBSCRIBE: u8 = 5;
const COMMAND_PUBLISH: u8 = 7;
const REPLY_ID: u64 = 1;
const REPLY_ERROR: u64 = 2;
const REPLY_PUSH: u64 = 4;
const PUSH_PUB: u64 = 4;
const PUBLICATION_DATA: u64 = 4;

fn put_varint(out: &mut Vec<u8>, mut n: u64) {
    while n >= 0x80 {
        out.push((n as u8) | 0x80);
        n >>= 7;
    }
    out.push(n as u8);
}

/// Field `field` of wire type 2 (length-delimited) holding `bytes`.
fn put_bytes(out: &mut Vec<u8>, field: u8, bytes: &[u8]) {
    out.push((field << 3) | 2);
    put_varint(out, bytes.len() as u64);
    out.extend_from_slice(bytes);
}

/// A command `{id, <field>: request}`, length-delimited.
fn command(id: u8, field: u8, request: &[u8]) -> Vec<u8> {
    let mut body = vec![COMMAND_ID << 3, id];
    put_bytes(&mut body, field, request);
    let mut out = Vec::with_capacity(body.len() + 2);
    put_varint(&mut out, body.len() as u64);
    out.extend_from_slice(&body);
    out
}

/// The commands a connection sends before the run, one binary message each: `connect`
/// (with the token, if any), then `subscribe` for a subscriber.
pub(crate) fn greeting(token: Option<&str>, subscribe_to: Option<&str>) -> Vec<Vec<u8>> {
    let mut connect = Vec::new();
    if let Some(t) = token {
        put_bytes(&mut connect, 1, t.as_bytes());
    }
    let mut out = vec![command(1, COMMAND_CONNECT, &connect)];
    if let Some(ch) = subscribe_to {
        let mut subscribe = Vec::new();
        put_bytes(&mut subscribe, 1, ch.as_bytes());
        out.push(command(2, COMMAND_SUBSCRIBE, &subscribe));
    }
    out
}

/// A `publish` command for `channel` with `size` bytes of data (at least the header), and
/// the offset of the data (where the header goes) in it.
pub(crate) fn publish_command(channel: &str, size: usize) -> (Vec<u8>, usize) {
    let data = payload(size.max(HEADER));
    let mut publish = Vec::new();
    put_bytes(&mut publish, 1, channel.as_bytes());
    put_bytes(&mut publish, 2, &data);
    let cmd = command(3, COMMAND_PUBLISH, &publish);
    let at = cmd.len() - data.len();
    (cmd, at)
}

/// Reads a varint at `*pos`.
fn varint(buf: &[u8], pos: &mut usize) -> anyhow::Result<u64> {
    let mut n = 0u64;
    for shift in (0..64).step_by(7) {
        let Some(&b) = buf.get(*pos) else {
            bail!("a truncated Protobuf reply");
        };
        *pos += 1;
        n |= u64::from(b & 0x7f) << shift;
        if b & 0x80 == 0 {
            return Ok(n);
        }
    }
    bail!("an over-long varint in a reply")
}

/// Calls `f(field, value)` for each length-delimited field of `msg` (others are skipped).
fn fields<'a>(
    msg: &'a [u8],
    mut f: impl FnMut(u64, &'a [u8]) -> anyhow::Result<()>,
    mut on_varint: impl FnMut(u64, u64),
) -> anyhow::Result<()> {
    let mut pos = 0;
    while pos < msg.len() {
        let key = varint(msg, &mut pos)?;
        match key & 7 {
            0 => {
                let v = varint(msg, &mut pos)?;
                on_varint(key >> 3, v);
            }
            2 => {
                let len = varint(msg, &mut pos)? as usize;
                let Some(value) = msg.get(pos..pos + len) else {
                    bail!("a truncated Protobuf field");
                };
                pos += len;
                f(key >> 3, value)?;
            }
            t => bail!("unexpected wire type {t} in a reply"),
        }
    }
    Ok(())
}

/// What one server message held, for the bench.
#[derive(Debug, Default)]
pub(crate) struct Frame {
    /// Replies to commands (with an id).
    pub(crate) replies: usize,
}

/// Walks one server message: the bench headers of its publications go to `headers`
/// (cleared first); an error reply or a publication without a header fails.
pub(crate) fn read_frame(payload: &[u8], headers: &mut Vec<[u8; HEADER]>) -> anyhow::Result<Frame> {
    headers.clear();
    let mut frame = Frame::default();
    let mut pos = 0;
    while pos < payload.len() {
        let len = varint(payload, &mut pos)? as usize;
        let Some(reply) = payload.get(pos..pos + len) else {
            bail!("a truncated Protobuf reply");
        };
        pos += len;
        let mut id = 0;
        fields(
            reply,
            |field, value| {
                match field {
                    REPLY_ERROR => bail!("the server answered with an error ({value:?})"),
                    REPLY_PUSH => fields(
                        value,
                        |field, publication| {
                            if field == PUSH_PUB {
                                let mut found = false;
                                fields(
                                    publication,
                                    |field, data| {
                                        if field == PUBLICATION_DATA {
                                            let Some(h) = data.get(..HEADER) else {
                                                bail!("a publication without the bench header");
                                            };
                                            headers.push(h.try_into()?);
                                            found = true;
                                        }
                                        Ok(())
                                    },
                                    |_, _| {},
                                )?;
                                if !found {
                                    bail!("a publication without data");
                                }
                            }
                            Ok(())
                        },
                        |_, _| {},
                    )?,
                    _ => {}
                }
                Ok(())
            },
            |field, v| {
                if field == REPLY_ID {
                    id = v;
                }
            },
        )?;
        if id != 0 {
            frame.replies += 1;
        }
    }
    Ok(frame)
}

/// Send `commands` and wait for one reply to each; an error reply fails.
pub(crate) async fn greet(
    conn: &mut RawConn,
    commands: &[Vec<u8>],
    mask: [u8; 4],
) -> anyhow::Result<()> {
    for c in commands {
        conn.queue(&encode_frame(OpCode::Binary, c, mask));
    }
    let mut replies = 0;
    let mut headers = Vec::new();
    while replies < commands.len() {
        conn.pump(64 * 1024).await?;
        while let Some(m) = conn.next()? {
            match m {
                Incoming::Close(code) => bail!("closed by the server (code {code:?})"),
                Incoming::Data { payload, .. } => {
                    replies += read_frame(&payload, &mut headers)?.replies;
                }
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;
    use switchboard_core::{Payload, Publication};
    use switchboard_protocols::centrifugo::protobuf::{self, decode_commands};
    use switchboard_protocols::centrifugo::{Error, Method, Reply};

    #[test]
    fn our_commands_are_what_the_server_decodes() {
        let mut frame = Vec::new();
        for c in greeting(Some("tok"), Some("news")) {
            frame.extend(c);
        }
        let (publish, at) = publish_command("news", 64);
        frame.extend(&publish);
        let cmds: Vec<_> = decode_commands(Bytes::from(frame))
            .into_iter()
            .map(Result::unwrap)
            .collect();
        assert!(matches!(&cmds[0].method, Method::Connect(r) if r.token == "tok"));
        assert!(matches!(&cmds[1].method, Method::Subscribe(r) if r.channel == "news"));
        let Method::Publish(p) = &cmds[2].method else {
            panic!("{:?}", cmds[2]);
        };
        let data = p.data.as_ref().unwrap().wire_bytes();
        assert_eq!(data.len(), 64);
        assert_eq!(&publish[at..], &data[..]);
    }

    #[test]
    fn headers_come_from_the_servers_pushes_and_errors_fail() {
        let fields: [u8; HEADER] = std::array::from_fn(|i| (i * 7 + 1) as u8);
        let mut data = fields.to_vec();
        data.extend_from_slice(&[9; 30]);
        let p = Publication::new("c".into(), Payload::binary(data), 3, 1u32, None);
        let frame = protobuf::encode_batch([
            protobuf::encode_publication_push(&p),
            protobuf::encode_reply(&Reply::ok(
                3,
                switchboard_protocols::centrifugo::ReplyResult::Publish(Default::default()),
            )),
            protobuf::encode_publication_push(&p),
        ]);
        let mut headers = Vec::new();
        let got = read_frame(&frame, &mut headers).unwrap();
        assert_eq!(got.replies, 1);
        assert_eq!(headers, vec![fields, fields]);
        let error = protobuf::encode_reply(&Reply::error(2, Error::PERMISSION_DENIED));
        assert!(read_frame(&error, &mut headers).is_err());
        assert!(read_frame(&[0x05, 0x08], &mut headers).is_err());
    }
}
