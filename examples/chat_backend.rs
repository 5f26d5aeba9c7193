//! The tutorials' chat login, with the backend taking part through Switchboard's proxy: the
//! browser logs in with a form and gets a session cookie; Switchboard forwards that cookie
//! to this backend on every WebSocket connect, and the backend names the user, answers an
//! RPC and checks every chat message before it is shown.
//!
//! ```text
//! browser ── POST /login (form) ─────────────▶ this backend ── Set-Cookie: session=…, 303 → chat page
//! browser ── WebSocket + Cookie ─▶ switchboard ── POST /proxy/connect (Cookie) ─▶ {"result":{"user":…}}
//! browser ── publish {nick,text} ─▶ switchboard ── POST /proxy/publish ─▶ accepted (nick = user) or
//!                                                                         {"error": "banned word"}
//! ```
//!
//! The proxy calls use Centrifugo's proxy format (docs/protocols.md, "The backend's proxy").
//! Cookies are per host, not per port, so a cookie set by `127.0.0.1:9000` reaches the chat
//! page's WebSocket on `127.0.0.1:8000`; in production both sit behind one domain.
//!
//! Run (see README, "Login through your backend"):
//!
//! ```text
//! cargo run --release --example chat_backend -- --port 9000 --chat http://127.0.0.1:8000/
//! switchboard --config examples/chat_backend.toml
//! ```
//!
//! **Demo only.** Anyone may log in under any free-form name (no passwords), and sessions
//! live in memory; a real backend checks credentials and keeps sessions in its database.
use std::collections::HashMap;
use std::convert::Infallible;
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper::header::{HeaderValue, CONTENT_TYPE, COOKIE, LOCATION, SET_COOKIE};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use serde_json::{json, Value};
use tokio::net::TcpListener;

/// Largest request body accepted; forms and proxy requests are small.
const MAX_BODY: usize = 64 * 1024;

/// Chat messages containing this word are refused by the publish check.
const BANNED_WORD: &str = "spam";

/// The session cookie's name.
const SESSION_COOKIE: &str = "session";

/// What the backend keeps: where the chat page is, and session id → user name.
struct Backend {
    chat_url: String,
    sessions: Mutex<HashMap<String, String>>,
}

type Body = Full<Bytes>;

fn respond(
    status: StatusCode,
    content_type: &'static str,
    body: impl Into<Bytes>,
) -> Response<Body> {
    let mut r = Response::new(Full::new(body.into()));
    *r.status_mut() = status;
    r.headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static(content_type));
    r
}

fn json_answer(v: Value) -> Response<Body> {
    respond(StatusCode::OK, "application/json", v.to_string())
}

/// The value of `name` in a `Cookie` header.
fn cookie<'a>(header: &'a str, name: &str) -> Option<&'a str> {
    header.split(';').find_map(|pair| {
        let (k, v) = pair.trim().split_once('=')?;
        (k == name).then_some(v)
    })
}

/// A fresh session id: 128 random bits from the OS, hex.
fn session_id() -> std::io::Result<String> {
    use std::io::Read;
    let mut bytes = [0u8; 16];
    std::fs::File::open("/dev/urandom")?.read_exact(&mut bytes)?;
    Ok(bytes.iter().map(|b| format!("{b:02x}")).collect())
}

/// A `application/x-www-form-urlencoded` field (`+` and `%XX` decoded).
fn form_field(body: &str, name: &str) -> Option<String> {
    body.split('&').find_map(|pair| {
        let (k, v) = pair.split_once('=')?;
        if k != name {
            return None;
        }
        let v = v.replace('+', " ");
        let mut out = Vec::with_capacity(v.len());
        let bytes = v.as_bytes();
        let mut i = 0;
        while i < bytes.len() {
            if bytes[i] == b'%' && i + 2 < bytes.len() {
                if let Ok(b) = u8::from_str_radix(&v[i + 1..i + 3], 16) {
                    out.push(b);
                    i += 3;
                    continue;
                }
            }
            out.push(bytes[i]);
            i += 1;
        }
        String::from_utf8(out).ok()
    })
}

/// A user name as shown in the chat: trimmed, 1–32 characters, letters, digits, `_`, `-`.
fn valid_name(name: &str) -> Option<String> {
    let name = name.trim();
    let ok = (1..=32).contains(&name.chars().count())
        && name
            .chars()
            .all(|c| c.is_alphanumeric() || c == '_' || c == '-');
    ok.then(|| name.to_string())
}

const LOGIN_PAGE: &str = r#"<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>Log in to the chat</title>
<meta name="viewport" content="width=device-width, initial-scale=1">
<style>body{font:16px system-ui,sans-serif;max-width:22rem;margin:4rem auto;padding:0 1rem}
input,button{font:inherit;padding:.4rem;width:100%;box-sizing:border-box;margin:.3rem 0}</style></head>
<body><h1>Chat login</h1>
<form method="post" action="/login">
<label>Your name <input name="name" id="name" maxlength="32" required autofocus></label>
<button type="submit" id="login">Log in</button>
</form></body></html>
"#;

impl Backend {
    fn user_of(&self, cookie_header: Option<&str>) -> Option<String> {
        let id = cookie(cookie_header?, SESSION_COOKIE)?;
        let sessions = self.sessions.lock().unwrap_or_else(|e| e.into_inner());
        sessions.get(id).cloned()
    }

    async fn handle(&self, req: Request<Incoming>) -> Response<Body> {
        let method = req.method().clone();
        let path = req.uri().path().to_string();
        let cookie_header = req
            .headers()
            .get(COOKIE)
            .and_then(|v| v.to_str().ok())
            .map(str::to_string);
        let body = match Limited::new(req.into_body(), MAX_BODY).collect().await {
            Ok(b) => b.to_bytes(),
            Err(_) => return respond(StatusCode::PAYLOAD_TOO_LARGE, "text/plain", "too large"),
        };
        match (method, path.as_str()) {
            (Method::GET, "/") => respond(StatusCode::OK, "text/html; charset=utf-8", LOGIN_PAGE),
            (Method::POST, "/login") => self.login(&body),
            (Method::POST, "/proxy/connect") => self.connect(cookie_header.as_deref()),
            (Method::POST, "/proxy/rpc") => rpc(&body),
            (Method::POST, "/proxy/publish") => publish(&body),
            _ => respond(StatusCode::NOT_FOUND, "text/plain", "not found"),
        }
    }

    /// The login form: a session for the name, its cookie, and off to the chat page.
    fn login(&self, body: &[u8]) -> Response<Body> {
        let form = String::from_utf8_lossy(body);
        let Some(name) = form_field(&form, "name").and_then(|n| valid_name(&n)) else {
            return respond(
                StatusCode::BAD_REQUEST,
                "text/plain; charset=utf-8",
                "a name is 1-32 letters, digits, '_' or '-'",
            );
        };
        let Ok(id) = session_id() else {
            return respond(
                StatusCode::INTERNAL_SERVER_ERROR,
                "text/plain",
                "no randomness",
            );
        };
        self.sessions
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(id.clone(), name);
        let mut r = respond(StatusCode::SEE_OTHER, "text/plain", "");
        // HttpOnly: scripts on the page cannot read it; the browser still sends it with the
        // WebSocket upgrade, which is all Switchboard needs.
        let set = format!("{SESSION_COOKIE}={id}; Path=/; HttpOnly; SameSite=Lax");
        if let Ok(v) = HeaderValue::from_str(&set) {
            r.headers_mut().insert(SET_COOKIE, v);
        }
        if let Ok(v) = HeaderValue::from_str(&self.chat_url) {
            r.headers_mut().insert(LOCATION, v);
        }
        r
    }

    /// The connect proxy: the user is whoever the session cookie belongs to; no session, no
    /// connection.
    fn connect(&self, cookie_header: Option<&str>) -> Response<Body> {
        match self.user_of(cookie_header) {
            Some(user) => json_answer(json!({"result": {"user": user, "info": {"name": user}}})),
            None => json_answer(json!({"error": {"code": 1401, "message": "login required"}})),
        }
    }
}

/// The rpc proxy: `whoami` answers the caller's user name.
fn rpc(body: &[u8]) -> Response<Body> {
    let req: Value = serde_json::from_slice(body).unwrap_or(Value::Null);
    match req["method"].as_str() {
        Some("whoami") => json_answer(json!({"result": {"data": {"user": req["user"]}}})),
        _ => json_answer(json!({"error": {"code": 1404, "message": "unknown method"}})),
    }
}

/// The publish proxy: a message with the banned word is refused; any other goes out under
/// the sender's user name, whatever nickname the page put in it.
fn publish(body: &[u8]) -> Response<Body> {
    let req: Value = serde_json::from_slice(body).unwrap_or(Value::Null);
    let mut data = req["data"].clone();
    let text = data["text"].as_str().unwrap_or_default();
    if text.to_lowercase().contains(BANNED_WORD) {
        return json_answer(json!({"error": {"code": 1400, "message": "banned word"}}));
    }
    if let Value::Object(fields) = &mut data {
        fields.insert("nick".into(), req["user"].clone());
    }
    json_answer(json!({"result": {"data": data}}))
}

#[tokio::main]
async fn main() -> std::io::Result<()> {
    let mut port = 9000u16;
    let mut chat_url = "http://127.0.0.1:8000/".to_string();
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--port" => port = args.next().and_then(|p| p.parse().ok()).unwrap_or(port),
            "--chat" => chat_url = args.next().unwrap_or(chat_url),
            other => {
                eprintln!("usage: chat_backend [--port 9000] [--chat http://127.0.0.1:8000/] (got {other:?})");
                std::process::exit(2);
            }
        }
    }
    let backend = Arc::new(Backend {
        chat_url,
        sessions: Mutex::new(HashMap::new()),
    });
    let listener = TcpListener::bind(("127.0.0.1", port)).await?;
    println!("chat backend on http://{}", listener.local_addr()?);
    loop {
        let (tcp, _) = listener.accept().await?;
        let backend = Arc::clone(&backend);
        tokio::spawn(async move {
            let service = service_fn(move |req| {
                let backend = Arc::clone(&backend);
                async move { Ok::<_, Infallible>(backend.handle(req).await) }
            });
            // Keep-alive: Switchboard reuses its connections to the backend.
            let _ = http1::Builder::new()
                .serve_connection(TokioIo::new(tcp), service)
                .await;
        });
    }
}
