//! The Centrifugo protocol end to end against the real binary, for what the interop suites
//! cannot time: commands a client sends right before it closes.
mod server_support;

use server_support::*;
use switchboard_websocket::{CloseCode, Message};

const CONFIG: &str = r#"
allow_anonymous = true
[channel.default]
allow_subscribe_for_anonymous = true
allow_publish_for_client = true
"#;

/// Sends `commands` (one JSON command per frame) and reads until one reply per command.
async fn command(client: &mut Client, commands: &[&str]) {
    for c in commands {
        client.send_text(c).await;
    }
    let mut replies = 0;
    while replies < commands.len() {
        let text = client.next_text().await;
        for line in text.lines().filter(|l| !l.trim().is_empty()) {
            assert!(!line.contains(r#""error""#), "error reply: {line}");
            if line.starts_with(r#"{"id""#) {
                replies += 1;
            }
        }
    }
}

/// A client that publishes and closes at once (one write holding every command and the close
/// frame) still has every publication delivered: commands read before its close are carried
/// out even when their replies can no longer be written.
#[tokio::test]
async fn publications_sent_right_before_a_close_are_not_lost() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("switchboard.toml");
    std::fs::write(&config, CONFIG).unwrap();
    let server = ServerProc::start(&["--config", config.to_str().unwrap()]);
    let url = server.ws_url("/connection/websocket");

    let mut sub = ws(&url).await;
    command(
        &mut sub,
        &[
            r#"{"id":1,"connect":{}}"#,
            r#"{"id":2,"subscribe":{"channel":"news"}}"#,
        ],
    )
    .await;
    let mut publisher = ws(&url).await;
    command(&mut publisher, &[r#"{"id":1,"connect":{}}"#]).await;

    const N: usize = 300;
    for i in 0..N {
        let cmd = format!(
            r#"{{"id":{},"publish":{{"channel":"news","data":{i}}}}}"#,
            i + 2
        );
        publisher.writer.feed(Message::text(cmd)).expect("feed");
    }
    publisher
        .writer
        .close(CloseCode::NORMAL, "")
        .await
        .expect("publish and close in one write");

    let mut got = Vec::new();
    while got.len() < N {
        let text = sub.next_text().await;
        for line in text.lines().filter(|l| l.starts_with(r#"{"push""#)) {
            let v: serde_json::Value = serde_json::from_str(line).unwrap();
            got.push(v["push"]["pub"]["data"].as_u64().expect("a number"));
        }
    }
    assert_eq!(got, (0..N as u64).collect::<Vec<_>>());
}
