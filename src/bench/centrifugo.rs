//! `bench fanout --protocol centrifugo`: the Centrifugo client protocol (JSON) on the same
//! load generator.
//!
//! Every connection goes to `/connection/websocket` and sends a `connect` command (with
//! `--token`, if given); subscribers then subscribe to the channel named by the URL's path.
//! Publishers send `publish` commands whose `data` is a JSON string starting with the 20 bench
//! header bytes in hex (publisher id, sequence number, send time — see `fanout`), padded to
//! `--size`; subscribers find that hex in the `push` publications. A frame from the server may
//! hold several JSON messages, one per line.
use anyhow::bail;

use super::conn::{encode_frame, Incoming, RawConn};
use crate::websocket::frame::OpCode;

/// Where Centrifugo clients connect.
pub(crate) const ENDPOINT: &str = "/connection/websocket";
/// Length of the bench header written as hex.
pub(crate) const HEX_HEADER: usize = 40;

/// The commands a connection sends before the run: `connect`, then `subscribe` for a
/// subscriber (one reply each is awaited, see [`greet`]).
pub(crate) fn greeting(token: Option<&str>, subscribe_to: Option<&str>) -> Vec<String> {
    let connect = match token {
        Some(t) => format!(r#"{{"id":1,"connect":{{"token":{}}}}}"#, json_string(t)),
        None => r#"{"id":1,"connect":{}}"#.to_string(),
    };
    let mut out = vec![connect];
    if let Some(ch) = subscribe_to {
        out.push(format!(
            r#"{{"id":2,"subscribe":{{"channel":{}}}}}"#,
            json_string(ch)
        ));
    }
    out
}

/// A `publish` command for `channel` whose data string holds `size` bytes (at least the hex
/// header), and the offset of the hex header in it.
pub(crate) fn publish_command(channel: &str, size: usize) -> (Vec<u8>, usize) {
    let prefix = format!(
        r#"{{"id":3,"publish":{{"channel":{},"data":""#,
        json_string(channel)
    );
    let mut text = prefix.clone().into_bytes();
    text.extend(std::iter::repeat_n(b'0', HEX_HEADER));
    text.extend(std::iter::repeat_n(b'x', size.saturating_sub(HEX_HEADER)));
    text.extend_from_slice(br#""}}"#);
    (text, prefix.len())
}

/// The bench header as lowercase hex.
pub(crate) fn hex_header(fields: &[u8; 20]) -> [u8; HEX_HEADER] {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut out = [0u8; HEX_HEADER];
    for (i, b) in fields.iter().enumerate() {
        out[2 * i] = DIGITS[(b >> 4) as usize];
        out[2 * i + 1] = DIGITS[(b & 0xf) as usize];
    }
    out
}

/// What one line of a server frame is, for the bench.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Line {
    /// A publication: the bench header it carries.
    Publication([u8; 20]),
    /// A reply without an error (to connect, subscribe or publish), or another push.
    Other,
}

/// Reads one JSON message of a server frame. Errors for an error reply or a publication
/// without a bench header.
pub(crate) fn parse_line(line: &[u8]) -> anyhow::Result<Line> {
    if line.starts_with(br#"{"push""#) {
        if !contains(line, br#""pub":"#) {
            return Ok(Line::Other);
        }
        let Some(at) = find(line, br#""data":""#) else {
            bail!(
                "a publication without data: {}",
                String::from_utf8_lossy(line)
            );
        };
        let start = at + br#""data":""#.len();
        let Some(hex) = line.get(start..start + HEX_HEADER) else {
            bail!("a publication without the bench header");
        };
        let mut fields = [0u8; 20];
        for (i, pair) in hex.chunks(2).enumerate() {
            let digit = |c: u8| (c as char).to_digit(16);
            match (digit(pair[0]), digit(pair[1])) {
                (Some(h), Some(l)) => fields[i] = (h * 16 + l) as u8,
                _ => bail!("a publication without the bench header"),
            }
        }
        return Ok(Line::Publication(fields));
    }
    if contains(line, br#""error":"#) {
        bail!(
            "the server answered with an error: {}",
            String::from_utf8_lossy(line)
        );
    }
    Ok(Line::Other)
}

/// Send `commands` and wait for one reply to each; an error reply fails.
pub(crate) async fn greet(
    conn: &mut RawConn,
    commands: &[String],
    mask: [u8; 4],
) -> anyhow::Result<()> {
    for c in commands {
        conn.queue(&encode_frame(OpCode::Text, c.as_bytes(), mask));
    }
    let mut replies = 0;
    while replies < commands.len() {
        conn.pump(64 * 1024).await?;
        while let Some(m) = conn.next()? {
            match m {
                Incoming::Close(code) => bail!("closed by the server (code {code:?})"),
                Incoming::Data { payload, .. } => {
                    for line in lines(&payload) {
                        parse_line(line)?;
                        if line.starts_with(br#"{"id""#) {
                            replies += 1;
                        }
                    }
                }
            }
        }
    }
    Ok(())
}

/// The lines of a server frame (one JSON message each).
pub(crate) fn lines(payload: &[u8]) -> impl Iterator<Item = &[u8]> {
    payload
        .split(|&b| b == b'\n')
        .filter(|l| !l.iter().all(u8::is_ascii_whitespace))
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    find(haystack, needle).is_some()
}

fn json_string(s: &str) -> String {
    serde_json::Value::String(s.to_string()).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn publications_round_trip_through_the_command_text() {
        let fields: [u8; 20] = std::array::from_fn(|i| (i * 13 + 7) as u8);
        let (mut cmd, at) = publish_command("bench", 64);
        cmd[at..at + HEX_HEADER].copy_from_slice(&hex_header(&fields));
        let cmd: serde_json::Value = serde_json::from_slice(&cmd).unwrap();
        let data = cmd["publish"]["data"].as_str().unwrap();
        assert_eq!(data.len(), 64);
        // What the server pushes: the data string as sent.
        let push = format!(
            r#"{{"push":{{"channel":"bench","pub":{{"data":{},"offset":5}}}}}}"#,
            serde_json::Value::String(data.into())
        );
        assert_eq!(
            parse_line(push.as_bytes()).unwrap(),
            Line::Publication(fields)
        );
    }

    #[test]
    fn replies_errors_and_batched_frames() {
        assert_eq!(
            parse_line(br#"{"id":3,"publish":{}}"#).unwrap(),
            Line::Other
        );
        assert_eq!(
            parse_line(br#"{"push":{"channel":"a","join":{"info":{}}}}"#).unwrap(),
            Line::Other
        );
        let err = parse_line(br#"{"id":2,"error":{"code":103,"message":"permission denied"}}"#)
            .unwrap_err();
        assert!(err.to_string().contains("permission denied"), "{err}");
        assert!(parse_line(br#"{"push":{"channel":"a","pub":{"data":"zz"}}}"#).is_err());
        let frame = b"{\"id\":1,\"connect\":{}}\n{\"id\":2,\"subscribe\":{}}\n";
        assert_eq!(lines(frame).count(), 2);
    }

    #[test]
    fn greeting_connects_then_subscribes() {
        let g = greeting(Some("t\"k"), Some("news"));
        assert_eq!(g.len(), 2);
        let c: serde_json::Value = serde_json::from_str(&g[0]).unwrap();
        assert_eq!(c["connect"]["token"], "t\"k");
        let s: serde_json::Value = serde_json::from_str(&g[1]).unwrap();
        assert_eq!(s["subscribe"]["channel"], "news");
        assert_eq!(greeting(None, None).len(), 1);
    }
}
