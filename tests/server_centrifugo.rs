//! The Centrifugo protocol end to end against the real binary, for what the interop suites
//! cannot time: commands a client sends right before it closes.
mod server_support;

use server_support::*;
use std::time::Duration;

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

/// One sample of `GET /metrics`, by its name as written (labels included).
async fn metric(addr: &str, name: &str) -> f64 {
    let (status, _, body) = http_raw(addr, "GET", "/metrics", &[]).await;
    assert_eq!(status, 200);
    body.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
        .unwrap_or_else(|| panic!("no sample {name}"))
}

/// Idle subscribers park; publications reach them where they wait, framed as Centrifugo
/// pushes, without each one taking a task back.
#[tokio::test]
async fn publications_reach_parked_subscribers_without_resuming_them() {
    const SUBS: usize = 12;
    const N: u64 = 10;
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("switchboard.toml");
    std::fs::write(&config, CONFIG).unwrap();
    let server = ServerProc::start(&["--config", config.to_str().unwrap()]);
    let url = server.ws_url("/connection/websocket");
    let addr = server.addr();
    let mut subs = Vec::new();
    for _ in 0..SUBS {
        let mut sub = ws(&url).await;
        command(
            &mut sub,
            &[
                r#"{"id":1,"connect":{}}"#,
                r#"{"id":2,"subscribe":{"channel":"parked"}}"#,
            ],
        )
        .await;
        subs.push(sub);
    }
    let mut publisher = ws(&url).await;
    command(&mut publisher, &[r#"{"id":1,"connect":{}}"#]).await;
    let mut parked = 0.0;
    for _ in 0..250 {
        parked = metric(&addr, "switchboard_connections_parked").await;
        if parked == (SUBS + 1) as f64 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(parked, (SUBS + 1) as f64, "idle connections parked");
    let resumed_before = metric(&addr, "switchboard_connections_resumed_total").await;
    let publishes: Vec<String> = (0..N)
        .map(|i| {
            format!(
                r#"{{"id":{},"publish":{{"channel":"parked","data":{i}}}}}"#,
                i + 2
            )
        })
        .collect();
    let publishes: Vec<&str> = publishes.iter().map(String::as_str).collect();
    command(&mut publisher, &publishes).await;
    for sub in &mut subs {
        let mut got = Vec::new();
        while (got.len() as u64) < N {
            let text = sub.next_text().await;
            for line in text.lines().filter(|l| l.starts_with(r#"{"push""#)) {
                let v: serde_json::Value = serde_json::from_str(line).unwrap();
                got.push(v["push"]["pub"]["data"].as_u64().expect("a number"));
            }
        }
        assert_eq!(got, (0..N).collect::<Vec<_>>());
    }
    // The publisher resumed to read its commands; a subscriber woken again and again during
    // its turn may resume too, hence not exactly one.
    let resumed = metric(&addr, "switchboard_connections_resumed_total").await - resumed_before;
    assert!(
        (1.0..(SUBS / 2) as f64).contains(&resumed),
        "{resumed} resumes for {SUBS} subscribers"
    );
}
