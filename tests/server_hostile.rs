//! Hostile input against the real binary: payloads, tokens, packets and requests built to
//! break the server. Each test checks that the attacker gets a clear refusal (a status, a
//! close code, an error reply), that the memory it could pin stays bounded (read from the
//! counters in `/health`), and that other clients are still served.
mod server_support;

use server_support::*;
use switchboard_server::auth::{sign_hs256, ConnectionClaims, SubscriptionClaims};
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

/// Starts the binary with `toml` as its configuration file plus `args`.
fn start(toml: &str, args: &[&str], env: &[(&str, &str)]) -> (tempfile::TempDir, ServerProc) {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("switchboard.toml");
    std::fs::write(&config, toml).unwrap();
    let mut all = vec!["--config", config.to_str().unwrap()];
    all.extend_from_slice(args);
    let server = ServerProc::start_with_env(&all, env);
    (dir, server)
}

/// One HTTP/1.1 request with `Connection: close` and an optional body; returns
/// (status, head, body). Status 0 means the server closed without answering.
async fn http(addr: &str, method: &str, path: &str, headers: &[&str], body: &str) -> Response {
    let mut tcp = TcpStream::connect(addr).await.expect("tcp connect");
    let mut req = format!(
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\nContent-Length: {}\r\n",
        body.len()
    );
    for h in headers {
        req.push_str(h);
        req.push_str("\r\n");
    }
    req.push_str("\r\n");
    req.push_str(body);
    tcp.write_all(req.as_bytes()).await.unwrap();
    read_response(&mut tcp).await
}

/// Reads until the server closes the socket and splits the answer.
async fn read_response(tcp: &mut TcpStream) -> Response {
    let raw = read_until_closed(tcp, WAIT).await;
    let text = String::from_utf8_lossy(&raw).to_string();
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let status = head
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    Response {
        status,
        body: body.to_string(),
    }
}

/// What [`http`] read.
struct Response {
    status: u16,
    body: String,
}

/// `POST /api/<method>` with the test key.
async fn api(server: &ServerProc, method: &str, body: &str) -> Response {
    http(
        &server.addr(),
        "POST",
        &format!("/api/{method}"),
        &["X-API-Key: hostile-key", "Content-Type: application/json"],
        body,
    )
    .await
}

/// The `server` counters of `/health`.
async fn server_stats(server: &ServerProc) -> serde_json::Value {
    let r = http(&server.addr(), "GET", "/health", &[], "").await;
    assert_eq!(r.status, 200, "health: {}", r.body);
    let v: serde_json::Value = serde_json::from_str(&r.body).expect("health is JSON");
    v["server"].clone()
}

// ---------------------------------------------------------------------------------------
// History holding JSON that serde_json cannot turn into a tree.
// ---------------------------------------------------------------------------------------

const HISTORY_CONFIG: &str = r#"
api_key = "hostile-key"
[channel.default]
history_size = 10
history_ttl = 300
"#;

/// A raw-room message nested deeper than serde_json's recursion limit (128) is kept in
/// history; `POST /api/history` must still answer, with the message embedded verbatim, and
/// the API keeps serving.
#[tokio::test]
async fn deeply_nested_json_in_history_does_not_break_the_api() {
    let (_dir, server) = start(HISTORY_CONFIG, &[], &[]);
    let mut client = ws(&server.ws_url("/deep")).await;
    let nested = format!("{}{}", "[".repeat(130), "]".repeat(130));
    assert_eq!(nested.len(), 260);
    client.send_text(&nested).await;
    // The echo means it was published (and so stored).
    assert_eq!(client.next_text().await, nested);

    for _ in 0..2 {
        let r = api(&server, "history", r#"{"channel":"deep","limit":-1}"#).await;
        assert_eq!(r.status, 200, "history answered: {:?}", r.body);
        assert!(
            r.body.starts_with(r#"{"result":{"#) && r.body.contains(&nested),
            "the publication is embedded as sent: {}",
            r.body
        );
    }
    // The API and the room still work.
    let r = api(&server, "publish", r#"{"channel":"deep","data":{"n":1}}"#).await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert!(r.body.contains(r#""result""#), "{}", r.body);
    assert_eq!(client.next_text().await, r#"{"n":1}"#);
    let stats = server_stats(&server).await;
    assert_eq!(stats["http_panics"], 0, "{stats}");
}

// ---------------------------------------------------------------------------------------
// Request bodies that never arrive.
// ---------------------------------------------------------------------------------------

/// Sends a request head announcing `length` body bytes followed by only `sent`.
async fn truncated_post(addr: &str, path: &str, length: usize, sent: &str) -> TcpStream {
    let mut tcp = TcpStream::connect(addr).await.expect("tcp connect");
    let req = format!(
        "POST {path} HTTP/1.1\r\nHost: {addr}\r\nContent-Length: {length}\r\nX-API-Key: hostile-key\r\n\r\n{sent}"
    );
    tcp.write_all(req.as_bytes()).await.unwrap();
    tcp
}

/// The HTTP API does not wait for ever for a body either.
#[tokio::test]
async fn truncated_api_body_times_out() {
    let (_dir, server) = start(HISTORY_CONFIG, &[], &[("SWITCHBOARD_BODY_TIMEOUT", "2")]);
    let mut stuck = truncated_post(&server.addr(), "/api/publish", 500, "{\"ch").await;
    let answer = read_response(&mut stuck).await;
    assert_eq!(answer.status, 408, "{}", answer.body);
    let r = api(&server, "publish", r#"{"channel":"x","data":1}"#).await;
    assert_eq!(r.status, 200, "{}", r.body);
}

// ---------------------------------------------------------------------------------------
// Token time claims far in the future.
// ---------------------------------------------------------------------------------------

const SECRET: &str = "hostile-secret";

/// Time claims beyond what `SystemTime` can hold (1e19 s, `u64::MAX`, a huge float) mean
/// "far future": the connection and the subscription work and stay open, and nothing
/// panics.
#[tokio::test]
async fn huge_token_expiry_means_far_future() {
    let (_dir, server) = start(&format!("token_hmac_secret = \"{SECRET}\"\n"), &[], &[]);
    let url = server.ws_url("/connection/websocket");
    let mut client = ws(&url).await;

    let claims = ConnectionClaims {
        exp: Some(10_000_000_000_000_000_000),
        ..ConnectionClaims::new("42")
    };
    let token = sign_hs256(SECRET.as_bytes(), &claims).unwrap();
    client
        .send_text(&format!(r#"{{"id":1,"connect":{{"token":"{token}"}}}}"#))
        .await;
    let reply = client.next_text().await;
    assert!(
        reply.contains(r#""id":1"#) && reply.contains(r#""expires":true"#),
        "{reply}"
    );
    assert!(!reply.contains("error"), "{reply}");

    let sub = SubscriptionClaims {
        expire_at: Some(u64::MAX),
        ..SubscriptionClaims::new("42", "news")
    };
    let sub_token = sign_hs256(SECRET.as_bytes(), &sub).unwrap();
    client
        .send_text(&format!(
            r#"{{"id":2,"subscribe":{{"channel":"news","token":"{sub_token}"}}}}"#
        ))
        .await;
    let reply = client.next_text().await;
    assert!(
        reply.contains(r#""id":2"#) && !reply.contains("error"),
        "{reply}"
    );

    // A fractional exp far beyond u64 (1e300) on refresh.
    let refresh = r#"{"sub":"42","exp":1e300}"#;
    let refresh = sign_json(refresh);
    client
        .send_text(&format!(r#"{{"id":3,"refresh":{{"token":"{refresh}"}}}}"#))
        .await;
    let reply = client.next_text().await;
    assert!(
        reply.contains(r#""id":3"#) && !reply.contains("error"),
        "{reply}"
    );

    // Still open and answering after the timers were armed.
    client
        .send_text(r#"{"id":4,"presence_stats":{"channel":"news"}}"#)
        .await;
    let reply = client.next_text().await;
    assert!(reply.contains(r#""id":4"#), "{reply}");
    let stats = server_stats(&server).await;
    assert_eq!(stats["closed_panic"], 0, "{stats}");
}

/// An HS256 token over raw JSON claims (to write numbers serde would not produce).
fn sign_json(claims: &str) -> String {
    let value: serde_json::Value = serde_json::from_str(claims).unwrap();
    sign_hs256(SECRET.as_bytes(), &value).unwrap()
}

// ---------------------------------------------------------------------------------------
// Malformed input gets a precise answer.
// ---------------------------------------------------------------------------------------

/// Channel names the server never accepts get Centrifugo's 107 "bad request" with a clear
/// message, not 102 "unknown channel"; the connection stays usable.
#[tokio::test]
async fn invalid_channel_names_are_bad_requests() {
    let (_dir, server) = start(
        "allow_anonymous = true\n[channel.default]\nallow_subscribe_for_anonymous = true\n",
        &[],
        &[],
    );
    let mut client = ws(&server.ws_url("/connection/websocket")).await;
    client.send_text(r#"{"id":1,"connect":{}}"#).await;
    let reply = client.next_text().await;
    assert!(!reply.contains("error"), "{reply}");
    let long = "x".repeat(256);
    for (i, name) in ["with space", "nul\\u0000byte", long.as_str()]
        .iter()
        .enumerate()
    {
        let id = i + 2;
        client
            .send_text(&format!(
                r#"{{"id":{id},"subscribe":{{"channel":"{name}"}}}}"#
            ))
            .await;
        let reply = client.next_text().await;
        let v: serde_json::Value = serde_json::from_str(&reply).unwrap();
        assert_eq!(v["id"], id, "{reply}");
        assert_eq!(v["error"]["code"], 107, "{reply}");
        assert!(
            v["error"]["message"]
                .as_str()
                .unwrap()
                .contains("invalid channel"),
            "{reply}"
        );
    }
    // A valid name on the same connection still works.
    client
        .send_text(r#"{"id":9,"subscribe":{"channel":"fine"}}"#)
        .await;
    let reply = client.next_text().await;
    assert!(
        reply.contains(r#""id":9"#) && !reply.contains("error"),
        "{reply}"
    );
}
