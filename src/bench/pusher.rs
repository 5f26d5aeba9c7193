//! `bench fanout --protocol pusher` and `bench conns --protocol pusher`: Pusher Channels
//! protocol 7 subscribers on the same load generator.
//!
//! A subscriber connects to `/app/{--app-key}?protocol=7`, waits for
//! `pusher:connection_established`, sends `pusher:subscribe` for the public channel named by
//! the URL's path and waits for `pusher_internal:subscription_succeeded`. Pusher clients
//! cannot publish to a public channel (client events are private/presence only and capped at
//! 10 a second), so fan-out publishers are raw-room clients of the same channel (one channel
//! core): their binary payloads reach Pusher subscribers as the event `message` whose `data`
//! is the payload in standard base64, the 20 bench header bytes first.
use anyhow::bail;
use base64::Engine as _;

use super::conn::{Incoming, RawConn};

/// The path Pusher clients of app `key` connect to.
pub(crate) fn endpoint(key: &str) -> String {
    format!("/app/{key}?protocol=7&client=switchboard-bench&version=1")
}

/// Waits for `connection_established`, subscribes to `channel` and waits for the answer.
pub(crate) async fn greet(conn: &mut RawConn, channel: &str) -> anyhow::Result<()> {
    let first = next_text(conn).await?;
    if !first.contains("pusher:connection_established") {
        bail!("expected pusher:connection_established, got {first:?}");
    }
    let subscribe = serde_json::json!({"event": "pusher:subscribe", "data": {"channel": channel}});
    conn.queue_text(subscribe.to_string().as_bytes())?;
    loop {
        let reply = next_text(conn).await?;
        if reply.contains("pusher_internal:subscription_succeeded") {
            return Ok(());
        }
        if reply.contains("pusher:subscription_error") || reply.contains("pusher:error") {
            bail!("subscribe refused: {reply}");
        }
    }
}

/// The answer a held connection owes to the server's `pusher:ping`, if `payload` is one.
pub(crate) fn pong_for(payload: &[u8]) -> Option<&'static [u8]> {
    contains(payload, b"\"pusher:ping\"").then_some(br#"{"event":"pusher:pong","data":{}}"#)
}

/// Base64 characters that hold the 20 header bytes (and one more).
const B64_HEADER: usize = 28;

/// The bench header of one server frame, if it is a `message` event: `None` for the
/// protocol's own frames (pings); an error for a message without a header.
pub(crate) fn header(payload: &[u8]) -> anyhow::Result<Option<[u8; 20]>> {
    if !contains(payload, b"\"event\":\"message\"") {
        return Ok(None);
    }
    let Some(at) = find(payload, b"\"data\":\"") else {
        bail!("a message without data");
    };
    let start = at + b"\"data\":\"".len();
    let Some(b64) = payload.get(start..start + B64_HEADER) else {
        bail!("a message shorter than the bench header");
    };
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(b64)
        .map_err(|e| anyhow::anyhow!("bench header not base64: {e}"))?;
    let mut out = [0u8; 20];
    out.copy_from_slice(&bytes[..20]);
    Ok(Some(out))
}

async fn next_text(conn: &mut RawConn) -> anyhow::Result<String> {
    loop {
        match conn.next()? {
            Some(Incoming::Data { payload, .. }) => {
                return Ok(String::from_utf8_lossy(&payload).into_owned())
            }
            Some(Incoming::Close(code)) => bail!("closed by the server (code {code:?})"),
            None => conn.pump(64 * 1024).await?,
        }
    }
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    find(haystack, needle).is_some()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn headers_come_out_of_base64_message_events() {
        let fields: [u8; 20] = std::array::from_fn(|i| (i * 13) as u8);
        let mut payload = fields.to_vec();
        payload.extend_from_slice(&[0xaa; 44]);
        let data = base64::engine::general_purpose::STANDARD.encode(&payload);
        let frame = format!(r#"{{"channel":"bench","data":"{data}","event":"message"}}"#);
        assert_eq!(header(frame.as_bytes()).unwrap(), Some(fields));
        assert_eq!(
            header(br#"{"data":"{}","event":"pusher:ping"}"#).unwrap(),
            None
        );
        assert!(header(br#"{"data":"AAAA","event":"message"}"#).is_err());
        assert!(pong_for(br#"{"data":"{}","event":"pusher:ping"}"#).is_some());
        assert!(pong_for(b"{}").is_none());
    }
}
