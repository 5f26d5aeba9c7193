//! The application backend of the tutorials' login flow: the browser posts a user name and
//! password, gets back a JWT signed with the secret Switchboard verifies, and opens its
//! WebSocket with that token.
//!
//! ```text
//! browser ── POST /login {"user","password"} ──▶ this backend ── {"token": "<JWT>"}
//! browser ── WebSocket connect { token } ─────────────────────▶ switchboard (same secret)
//! browser ── POST /subscription-token {"channel"} + Bearer <JWT> ─▶ this backend
//!                                              ── {"token": "<subscription JWT>"}
//! ```
//!
//! Endpoints (JSON in, JSON out, CORS open so a page served elsewhere can call them):
//!
//! * `POST /login` — body `{"user": "alice", "password": "wonderland"}`; answers
//!   `200 {"user", "token", "expires_in"}` or `401 {"error"}`.
//! * `POST /subscription-token` — header `Authorization: Bearer <connection token>`, body
//!   `{"channel": "private:room"}`; answers a subscription token for that user and channel.
//!
//! **Demo only.** The users live in memory and their passwords are stored as salted SHA-256
//! digests, which is better than plain text but far too fast to resist guessing: a real
//! backend uses a password hash built for it (Argon2, scrypt or bcrypt) and a database.
//!
//! Run it with `cargo run --example login_backend -- --port 8000 --secret dev-secret` and the
//! server with `SWITCHBOARD_TOKEN_HMAC_SECRET=dev-secret switchboard`. Without `--secret` the
//! secret comes from `SWITCHBOARD_TOKEN_HMAC_SECRET`.
use std::collections::HashMap;
use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper::header::{HeaderValue, AUTHORIZATION, CONTENT_TYPE};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use serde::Deserialize;
use serde_json::json;
use sha2::{Digest, Sha256};
use switchboard::server::auth::{sign_hs256, ConnectionClaims, SubscriptionClaims, TokenVerifier};
use tokio::net::TcpListener;

/// How long a connection token is valid; the client SDK asks for a new one when it expires.
const TOKEN_TTL: Duration = Duration::from_secs(15 * 60);

/// Largest request body accepted; login bodies are tiny.
const MAX_BODY: usize = 16 * 1024;

/// A stored credential: a per-user salt and SHA-256(salt ‖ password).
struct Credential {
    salt: &'static str,
    digest: [u8; 32],
}

struct Backend {
    secret: Vec<u8>,
    users: HashMap<&'static str, Credential>,
    verifier: TokenVerifier,
}

fn digest(salt: &str, password: &str) -> [u8; 32] {
    Sha256::new()
        .chain_update(salt.as_bytes())
        .chain_update(password.as_bytes())
        .finalize()
        .into()
}

/// Compares without stopping at the first difference, so timing does not reveal how much
/// of a guess was right.
fn same(a: &[u8; 32], b: &[u8; 32]) -> bool {
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

impl Backend {
    fn new(secret: Vec<u8>) -> Self {
        // In a real application the salt is random per user and stored with the digest.
        let users = [
            ("alice", "salt-a1", "wonderland"),
            ("bob", "salt-b2", "builder"),
        ]
        .into_iter()
        .map(|(user, salt, password)| {
            let digest = digest(salt, password);
            (user, Credential { salt, digest })
        })
        .collect();
        let verifier = TokenVerifier::new().with_hmac_secret(&secret);
        Backend {
            secret,
            users,
            verifier,
        }
    }

    fn check_password(&self, user: &str, password: &str) -> bool {
        self.users
            .get(user)
            .is_some_and(|c| same(&c.digest, &digest(c.salt, password)))
    }
}

#[tokio::main]
async fn main() -> std::io::Result<()> {
    let secret = arg("--secret")
        .or_else(|| std::env::var("SWITCHBOARD_TOKEN_HMAC_SECRET").ok())
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| {
            eprintln!("error: pass --secret or set SWITCHBOARD_TOKEN_HMAC_SECRET");
            std::process::exit(2);
        });
    let port = arg("--port").map_or(8000, |p| p.parse().expect("--port takes a number"));
    let backend = Arc::new(Backend::new(secret.into_bytes()));

    let listener = TcpListener::bind(("127.0.0.1", port)).await?;
    println!("listening on {}", listener.local_addr()?);
    loop {
        let (tcp, _) = listener.accept().await?;
        let backend = backend.clone();
        tokio::spawn(async move {
            let service = service_fn(move |req| route(backend.clone(), req));
            let _ = http1::Builder::new()
                .serve_connection(TokioIo::new(tcp), service)
                .await;
        });
    }
}

async fn route(
    backend: Arc<Backend>,
    req: Request<Incoming>,
) -> Result<Response<Full<Bytes>>, Infallible> {
    let mut response = match (req.method(), req.uri().path()) {
        // CORS preflight: the login page is usually served from Switchboard's origin.
        (&Method::OPTIONS, _) => reply(StatusCode::NO_CONTENT, json!(null)),
        (&Method::POST, "/login") => login(&backend, req).await,
        (&Method::POST, "/subscription-token") => subscription_token(&backend, req).await,
        (_, "/login" | "/subscription-token") => error(StatusCode::METHOD_NOT_ALLOWED, "use POST"),
        _ => error(StatusCode::NOT_FOUND, "not found"),
    };
    let h = response.headers_mut();
    h.insert("access-control-allow-origin", HeaderValue::from_static("*"));
    h.insert(
        "access-control-allow-headers",
        HeaderValue::from_static("content-type, authorization"),
    );
    Ok(response)
}

async fn login(backend: &Backend, req: Request<Incoming>) -> Response<Full<Bytes>> {
    #[derive(Deserialize)]
    struct Login {
        user: String,
        password: String,
    }
    let body: Login = match read_json(req).await {
        Ok(b) => b,
        Err(resp) => return resp,
    };
    if !backend.check_password(&body.user, &body.password) {
        // Same answer for an unknown user and a wrong password.
        return error(StatusCode::UNAUTHORIZED, "invalid user or password");
    }
    // `info` travels with the connection: other clients see it in presence and join events.
    let claims = ConnectionClaims::new(&body.user)
        .with_info(&json!({ "name": body.user }).to_string())
        .expect("serialized JSON is valid JSON")
        .expires_in(TOKEN_TTL);
    match sign_hs256(&backend.secret, &claims) {
        Ok(token) => reply(
            StatusCode::OK,
            json!({ "user": body.user, "token": token, "expires_in": TOKEN_TTL.as_secs() }),
        ),
        Err(e) => error(StatusCode::INTERNAL_SERVER_ERROR, &e.to_string()),
    }
}

async fn subscription_token(backend: &Backend, req: Request<Incoming>) -> Response<Full<Bytes>> {
    #[derive(Deserialize)]
    struct Wanted {
        channel: String,
    }
    let bearer = req
        .headers()
        .get(AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::to_owned);
    let Some(bearer) = bearer else {
        return error(StatusCode::UNAUTHORIZED, "missing bearer token");
    };
    let user = match backend.verifier.verify_connection_token(&bearer) {
        Ok(claims) if !claims.sub.is_empty() => claims.sub,
        Ok(_) => {
            return error(
                StatusCode::FORBIDDEN,
                "anonymous users get no private channels",
            )
        }
        Err(e) => return error(StatusCode::UNAUTHORIZED, &e.to_string()),
    };
    let body: Wanted = match read_json(req).await {
        Ok(b) => b,
        Err(resp) => return resp,
    };
    // The place for the application's own rule; this demo lets every user into `private:*`.
    if !body.channel.starts_with("private:") {
        return error(
            StatusCode::FORBIDDEN,
            "only private:* channels need a token",
        );
    }
    let claims = SubscriptionClaims::new(user, &body.channel).expires_in(TOKEN_TTL);
    match sign_hs256(&backend.secret, &claims) {
        Ok(token) => reply(
            StatusCode::OK,
            json!({ "channel": body.channel, "token": token }),
        ),
        Err(e) => error(StatusCode::INTERNAL_SERVER_ERROR, &e.to_string()),
    }
}

/// Reads a bounded body and parses it, or produces the 400/413 answer.
async fn read_json<T: for<'de> Deserialize<'de>>(
    req: Request<Incoming>,
) -> Result<T, Response<Full<Bytes>>> {
    let bytes = match Limited::new(req.into_body(), MAX_BODY).collect().await {
        Ok(collected) => collected.to_bytes(),
        Err(_) => return Err(error(StatusCode::PAYLOAD_TOO_LARGE, "body too large")),
    };
    serde_json::from_slice(&bytes)
        .map_err(|e| error(StatusCode::BAD_REQUEST, &format!("invalid JSON body: {e}")))
}

fn reply(status: StatusCode, body: serde_json::Value) -> Response<Full<Bytes>> {
    let body = if body.is_null() {
        Bytes::new()
    } else {
        Bytes::from(body.to_string())
    };
    Response::builder()
        .status(status)
        .header(CONTENT_TYPE, "application/json")
        .body(Full::new(body))
        .expect("static response parts are valid")
}

fn error(status: StatusCode, message: &str) -> Response<Full<Bytes>> {
    reply(status, json!({ "error": message }))
}

/// The value after `name` on the command line.
fn arg(name: &str) -> Option<String> {
    let args: Vec<String> = std::env::args().collect();
    args.windows(2).find(|w| w[0] == name).map(|w| w[1].clone())
}
