//! The login backend example: logging in returns a connection token that the server's
//! verifier accepts, and that token buys subscription tokens for private channels.
mod examples_support;

use std::io::{Read, Write};
use std::net::TcpStream;

use examples_support::{example, start, Running, LIMIT};
use serde_json::{json, Value};
use switchboard::server::auth::{TokenError, TokenVerifier};

const SECRET: &str = "login-example-secret";

fn backend() -> Running {
    let mut cmd = example("login_backend");
    cmd.args(["--port", "0", "--secret", SECRET])
        .env_remove("SWITCHBOARD_TOKEN_HMAC_SECRET");
    start(cmd)
}

/// One HTTP/1.1 request; returns the status code and the body parsed as JSON (null if empty).
fn request(
    server: &Running,
    method: &str,
    path: &str,
    bearer: Option<&str>,
    body: &str,
) -> (u16, Value) {
    let mut tcp = TcpStream::connect(("127.0.0.1", server.port)).unwrap();
    tcp.set_read_timeout(Some(LIMIT)).unwrap();
    let auth = bearer.map_or(String::new(), |t| format!("Authorization: Bearer {t}\r\n"));
    write!(
        tcp,
        "{method} {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n{auth}\
         Content-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    )
    .unwrap();
    let mut raw = String::new();
    tcp.read_to_string(&mut raw).unwrap();
    let (head, body) = raw.split_once("\r\n\r\n").expect("a full response");
    let status = head.split(' ').nth(1).unwrap().parse().unwrap();
    let body = if body.is_empty() {
        Value::Null
    } else {
        serde_json::from_str(body).unwrap_or_else(|e| panic!("body {body:?}: {e}"))
    };
    (status, body)
}

fn login(server: &Running, user: &str, password: &str) -> (u16, Value) {
    let body = json!({ "user": user, "password": password }).to_string();
    request(server, "POST", "/login", None, &body)
}

#[test]
fn login_returns_a_token_the_server_accepts() {
    let server = backend();
    let (status, body) = login(&server, "alice", "wonderland");
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["user"], "alice");
    let token = body["token"].as_str().unwrap();

    let claims = TokenVerifier::new()
        .with_hmac_secret(SECRET)
        .verify_connection_token(token)
        .unwrap();
    assert_eq!(claims.sub, "alice");
    let info: Value = serde_json::from_str(claims.info.unwrap().get()).unwrap();
    assert_eq!(info, json!({ "name": "alice" }));
    assert_eq!(
        claims.exp.unwrap() - claims.iat.unwrap(),
        body["expires_in"].as_u64().unwrap()
    );
    // Signed with the configured secret, not some other one.
    assert_eq!(
        TokenVerifier::new()
            .with_hmac_secret("another")
            .verify_connection_token(token)
            .unwrap_err(),
        TokenError::BadSignature
    );
}

#[test]
fn wrong_password_unknown_user_and_bad_requests_are_refused() {
    let server = backend();
    for (user, password) in [
        ("alice", "builder"),
        ("alice", ""),
        ("mallory", "wonderland"),
    ] {
        let (status, body) = login(&server, user, password);
        assert_eq!(status, 401, "{user}/{password}: {body}");
        assert!(body.get("token").is_none());
        assert_eq!(body["error"], "invalid user or password");
    }
    let (status, body) = request(&server, "POST", "/login", None, "{not json");
    assert_eq!(status, 400);
    assert!(body["error"].as_str().unwrap().contains("invalid JSON"));
    let (status, _) = request(&server, "POST", "/login", None, r#"{"user":"alice"}"#);
    assert_eq!(status, 400);
    let (status, _) = request(&server, "GET", "/login", None, "");
    assert_eq!(status, 405);
    let (status, _) = request(&server, "POST", "/elsewhere", None, "{}");
    assert_eq!(status, 404);
}

#[test]
fn a_logged_in_user_gets_subscription_tokens_for_private_channels() {
    let server = backend();
    let (_, body) = login(&server, "bob", "builder");
    let connection = body["token"].as_str().unwrap().to_owned();
    let wanted = json!({ "channel": "private:builders" }).to_string();

    let (status, body) = request(
        &server,
        "POST",
        "/subscription-token",
        Some(&connection),
        &wanted,
    );
    assert_eq!(status, 200, "{body}");
    let verifier = TokenVerifier::new().with_hmac_secret(SECRET);
    let claims = verifier
        .verify_subscription_token(body["token"].as_str().unwrap(), "bob", "private:builders")
        .unwrap();
    assert_eq!(claims.channel, "private:builders");

    // No token, a forged token, or a subscription token in place of the connection token.
    let (status, _) = request(&server, "POST", "/subscription-token", None, &wanted);
    assert_eq!(status, 401);
    let (status, _) = request(
        &server,
        "POST",
        "/subscription-token",
        Some("x.y.z"),
        &wanted,
    );
    assert_eq!(status, 401);
    let (status, _) = request(
        &server,
        "POST",
        "/subscription-token",
        Some(body["token"].as_str().unwrap()),
        &wanted,
    );
    assert_eq!(status, 401);
    // Public channels need no token.
    let (status, _) = request(
        &server,
        "POST",
        "/subscription-token",
        Some(&connection),
        &json!({ "channel": "news" }).to_string(),
    );
    assert_eq!(status, 403);
}
