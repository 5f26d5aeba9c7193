//! `/admin`: a live admin page for operators, off unless `admin_password` is set.
//!
//! One self-contained page (`assets/admin.html`) and a few JSON endpoints under `/admin/`
//! that it calls. Nothing here has powers of its own: publishing, disconnecting, listing
//! channels and nodes go through the HTTP API's methods ([`crate::api::call`]), the charts
//! read the same counters as `/metrics`.
//!
//! Security, in order of the checks:
//! * **Login** (`POST /admin/login`) compares the password in constant time, and at most
//!   [`LOGIN_BURST`] failed attempts per client address are allowed, then one per
//!   [`LOGIN_REFILL`] (429 with `Retry-After`).
//! * **Session**: a random id in an `HttpOnly`, `SameSite=Strict` cookie scoped to
//!   `/admin` (`Secure` when the server speaks TLS), valid for [`SESSION_TTL`].
//! * **CSRF**: every state-changing request (`POST`) must carry the session's random token
//!   in `X-CSRF-Token` (the page gets it from the login answer or `GET /admin/session`; a
//!   cross-site page cannot read it), and an `Origin` header, when sent, must be the
//!   server's own origin. `SameSite=Strict` keeps the cookie off cross-site requests too.
mod page;

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{header, HeaderMap, HeaderValue, Method, Request, Response, StatusCode};
use hyper::body::Incoming;
use serde_json::{json, Value};

use crate::state::Shared;
use crate::transport::http::{read_body, text, Body, BodyError};
use crate::transport::{Endpoint, RequestCtx, ResponseFuture, Route};

/// The page.
pub const ADMIN_HTML: &str = include_str!("../../assets/admin.html");
/// The session cookie's name.
const COOKIE: &str = "switchboard_admin";
/// How long a login lasts.
pub(crate) const SESSION_TTL: Duration = Duration::from_secs(8 * 3600);
/// Most sessions kept at once; logging in beyond it ends the oldest.
const MAX_SESSIONS: usize = 64;
/// Failed logins one address may make at once.
pub(crate) const LOGIN_BURST: u32 = 5;
/// One more failed login is allowed after each of these.
pub(crate) const LOGIN_REFILL: Duration = Duration::from_secs(12);
/// Addresses whose failed logins are remembered; beyond it the oldest are forgotten.
const MAX_LOGIN_ADDRESSES: usize = 4096;
/// Largest request body the admin endpoints read.
const MAX_BODY: usize = 64 * 1024;
/// Most connections a lookup returns.
const LOOKUP_LIMIT: usize = 100;

/// The `/admin` endpoint (registered only when `admin_password` is set).
pub(crate) struct Admin {
    state: Arc<AdminState>,
}

impl Admin {
    /// The admin page, checking logins against `password`.
    pub(crate) fn new(password: String) -> Admin {
        Admin {
            state: Arc::new(AdminState {
                password,
                sessions: Mutex::new(HashMap::new()),
                failures: Mutex::new(HashMap::new()),
            }),
        }
    }
}

/// Logins and sessions.
struct AdminState {
    password: String,
    /// Session id → its CSRF token and expiry.
    sessions: Mutex<HashMap<String, Session>>,
    /// Failed logins per client address: a token bucket.
    failures: Mutex<HashMap<IpAddr, LoginBucket>>,
}

#[derive(Debug, Clone)]
struct Session {
    csrf: String,
    expires: Instant,
}

/// Failed logins left to an address, refilled over time.
#[derive(Debug, Clone, Copy)]
struct LoginBucket {
    left: u32,
    since: Instant,
}

impl LoginBucket {
    /// The bucket as of `now` (refilled for the time passed).
    fn refilled(mut self, now: Instant) -> LoginBucket {
        let refill = LOGIN_REFILL.as_secs_f64();
        let whole = (now.saturating_duration_since(self.since).as_secs_f64() / refill) as u32;
        if whole > 0 {
            self.left = (self.left + whole).min(LOGIN_BURST);
            self.since = if self.left == LOGIN_BURST {
                now
            } else {
                self.since + LOGIN_REFILL * whole
            };
        }
        self
    }
}

impl Endpoint for Admin {
    fn route(&self) -> Route {
        Route::Prefix("/admin")
    }

    fn handle(&self, req: Request<Incoming>, ctx: RequestCtx) -> ResponseFuture {
        let state = Arc::clone(&self.state);
        Box::pin(async move { state.handle(req, ctx).await })
    }
}

/// Constant-time equality of two byte strings (the length is not secret).
fn same(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// 32 random bytes as hex, from the thread's cryptographically secure generator.
fn random_token() -> String {
    use rand::RngCore;
    let mut bytes = [0u8; 32];
    rand::rng().fill_bytes(&mut bytes);
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// The value of cookie `name` in the request's `Cookie` headers.
fn cookie<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .find_map(|pair| {
            let (k, v) = pair.trim().split_once('=')?;
            (k == name).then_some(v)
        })
}

/// Whether the request's `Origin`, when it has one, is this server's own: the host and
/// port of the `Host` it was sent to (any scheme, so that it works behind a proxy that
/// terminates TLS).
fn same_origin(headers: &HeaderMap) -> bool {
    let Some(origin) = headers.get(header::ORIGIN) else {
        return true;
    };
    let host = headers.get(header::HOST).and_then(|h| h.to_str().ok());
    origin
        .to_str()
        .is_ok_and(|o| crate::transport::origin::is_own_origin(o, host))
}

/// A JSON answer.
fn json_answer(status: StatusCode, body: String) -> Response<Body> {
    let mut r = Response::new(Body::new(Bytes::from(body)));
    *r.status_mut() = status;
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    r.headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    r
}

/// A short JSON error.
fn error(status: StatusCode, message: &str) -> Response<Body> {
    json_answer(status, json!({ "error": message }).to_string())
}

/// The value of query parameter `name`, decoded.
fn query_param(req: &Request<Incoming>, name: &str) -> Option<String> {
    req.uri().query()?.split('&').find_map(|pair| {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        (k == name).then(|| crate::transport::http::decode_query_value(v))
    })
}

impl AdminState {
    async fn handle(&self, req: Request<Incoming>, ctx: RequestCtx) -> Response<Body> {
        let path = req.uri().path();
        let Some(action) = path
            .strip_prefix("/admin")
            .filter(|rest| rest.is_empty() || rest.starts_with('/'))
            .map(|rest| rest.trim_start_matches('/').to_owned())
        else {
            return text(StatusCode::NOT_FOUND, "not found");
        };
        let shared = &ctx.shared;
        let method = req.method().clone();
        match (method, action.as_str()) {
            (Method::GET | Method::HEAD, "") => page::response(),
            (Method::POST, "login") => self.login(req, &ctx).await,
            (_, "login") => crate::transport::http::method_not_allowed(),
            _ => {
                let Some((id, session)) = self.session(req.headers()) else {
                    return error(StatusCode::UNAUTHORIZED, "not logged in");
                };
                if req.method() == Method::POST {
                    let token = req
                        .headers()
                        .get("x-csrf-token")
                        .map(|v| v.as_bytes())
                        .unwrap_or_default();
                    if !same(token, session.csrf.as_bytes()) || !same_origin(req.headers()) {
                        tracing::warn!(peer = %ctx.peer, "admin: request refused (CSRF token or Origin)");
                        return error(StatusCode::FORBIDDEN, "bad CSRF token or origin");
                    }
                }
                self.authorized(req, &action, &id, &session, shared).await
            }
        }
    }

    /// The live session the request's cookie names, if any.
    fn session(&self, headers: &HeaderMap) -> Option<(String, Session)> {
        let id = cookie(headers, COOKIE)?;
        let mut sessions = self.sessions.lock().unwrap_or_else(|e| e.into_inner());
        let now = Instant::now();
        sessions.retain(|_, s| s.expires > now);
        // Looked up by a constant-time scan, so the time taken tells nothing of the ids.
        sessions
            .iter()
            .find(|(k, _)| same(k.as_bytes(), id.as_bytes()))
            .map(|(k, s)| (k.clone(), s.clone()))
    }

    /// Takes one failed-login token from `ip`; `Err(wait)` when it has none left.
    fn take_attempt(&self, ip: IpAddr) -> Result<(), Duration> {
        let now = Instant::now();
        let mut failures = self.failures.lock().unwrap_or_else(|e| e.into_inner());
        if failures.len() >= MAX_LOGIN_ADDRESSES && !failures.contains_key(&ip) {
            if let Some(oldest) = failures
                .iter()
                .min_by_key(|(_, b)| b.since)
                .map(|(k, _)| *k)
            {
                failures.remove(&oldest);
            }
        }
        let bucket = failures.entry(ip).or_insert(LoginBucket {
            left: LOGIN_BURST,
            since: now,
        });
        *bucket = bucket.refilled(now);
        if bucket.left == 0 {
            return Err((bucket.since + LOGIN_REFILL).saturating_duration_since(now));
        }
        Ok(())
    }

    /// Counts one failed login of `ip`.
    fn failed(&self, ip: IpAddr) {
        let mut failures = self.failures.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(b) = failures.get_mut(&ip) {
            if b.left == LOGIN_BURST {
                b.since = Instant::now();
            }
            b.left = b.left.saturating_sub(1);
        }
    }

    /// `POST /admin/login` with `{"password": "…"}`.
    async fn login(&self, req: Request<Incoming>, ctx: &RequestCtx) -> Response<Body> {
        let shared = &ctx.shared;
        let tls = shared.tls.is_some();
        if !same_origin(req.headers()) {
            return error(StatusCode::FORBIDDEN, "bad origin");
        }
        let ip = crate::transport::upgrade::client_ip(&req, shared, ctx.peer);
        if let Err(wait) = self.take_attempt(ip) {
            let mut r = error(StatusCode::TOO_MANY_REQUESTS, "too many failed logins");
            let secs = wait.as_secs().max(1).to_string();
            if let Ok(v) = HeaderValue::from_str(&secs) {
                r.headers_mut().insert(header::RETRY_AFTER, v);
            }
            return r;
        }
        let body = match read_body(req.into_body(), MAX_BODY, shared.config.body_timeout).await {
            Ok(b) => b,
            Err(BodyError::TooLarge) => return error(StatusCode::PAYLOAD_TOO_LARGE, "too large"),
            Err(_) => return error(StatusCode::BAD_REQUEST, "body not received"),
        };
        let password = serde_json::from_slice::<Value>(&body)
            .ok()
            .and_then(|v| v.get("password")?.as_str().map(str::to_owned))
            .unwrap_or_default();
        if !same(password.as_bytes(), self.password.as_bytes()) {
            self.failed(ip);
            tracing::warn!(peer = %ctx.peer, %ip, "admin: failed login");
            return error(StatusCode::UNAUTHORIZED, "wrong password");
        }
        let id = random_token();
        let session = Session {
            csrf: random_token(),
            expires: Instant::now() + SESSION_TTL,
        };
        {
            let mut sessions = self.sessions.lock().unwrap_or_else(|e| e.into_inner());
            if sessions.len() >= MAX_SESSIONS {
                if let Some(oldest) = sessions
                    .iter()
                    .min_by_key(|(_, s)| s.expires)
                    .map(|(k, _)| k.clone())
                {
                    sessions.remove(&oldest);
                }
            }
            sessions.insert(id.clone(), session.clone());
        }
        tracing::info!(peer = %ctx.peer, %ip, "admin: logged in");
        let mut r = json_answer(StatusCode::OK, json!({ "csrf": session.csrf }).to_string());
        let cookie = format!(
            "{COOKIE}={id}; Path=/admin; HttpOnly; SameSite=Strict; Max-Age={}{}",
            SESSION_TTL.as_secs(),
            if tls { "; Secure" } else { "" }
        );
        if let Ok(v) = HeaderValue::from_str(&cookie) {
            r.headers_mut().insert(header::SET_COOKIE, v);
        }
        r
    }

    /// The requests of a logged-in operator.
    async fn authorized(
        &self,
        req: Request<Incoming>,
        action: &str,
        id: &str,
        session: &Session,
        shared: &Arc<Shared>,
    ) -> Response<Body> {
        let get = matches!(*req.method(), Method::GET | Method::HEAD);
        match (get, action) {
            (true, "session") => {
                json_answer(StatusCode::OK, json!({ "csrf": session.csrf }).to_string())
            }
            (true, "stats") => json_answer(StatusCode::OK, page::stats(shared).to_string()),
            (true, "config") => json_answer(
                StatusCode::OK,
                json!({ "config": page::masked_config(&shared.config) }).to_string(),
            ),
            (true, "nodes") => api(shared, "info", b"{}").await,
            (true, "channels") => {
                let q = query_param(&req, "q").unwrap_or_default();
                // A search is a substring of the name: the API's pattern is a glob.
                let pattern = if q.is_empty() {
                    String::new()
                } else {
                    format!("*{q}*")
                };
                let body = json!({ "pattern": pattern }).to_string();
                api(shared, "channels", body.as_bytes()).await
            }
            (true, "connections") => {
                let q = query_param(&req, "q").unwrap_or_default();
                json_answer(
                    StatusCode::OK,
                    page::lookup(&shared.hub, &q, LOOKUP_LIMIT).to_string(),
                )
            }
            (false, "logout") => {
                self.sessions
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .remove(id);
                let mut r = json_answer(StatusCode::OK, "{}".into());
                r.headers_mut().insert(
                    header::SET_COOKIE,
                    HeaderValue::from_static(
                        "switchboard_admin=; Path=/admin; HttpOnly; SameSite=Strict; Max-Age=0",
                    ),
                );
                r
            }
            (false, "publish" | "disconnect") => {
                let body =
                    match read_body(req.into_body(), MAX_BODY, shared.config.body_timeout).await {
                        Ok(b) => b,
                        Err(BodyError::TooLarge) => {
                            return error(StatusCode::PAYLOAD_TOO_LARGE, "too large")
                        }
                        Err(_) => return error(StatusCode::BAD_REQUEST, "body not received"),
                    };
                tracing::info!(action, "admin: {action}");
                api(shared, action, &body).await
            }
            _ => text(StatusCode::NOT_FOUND, "not found"),
        }
    }
}

/// Runs HTTP API method `method` and answers with its JSON (`{"result": …}` or
/// `{"error": …}`), or 400 for a body the method cannot parse.
async fn api(shared: &Shared, method: &str, body: &[u8]) -> Response<Body> {
    match crate::api::call(method, body, shared).await {
        Ok(answer) => json_answer(StatusCode::OK, answer),
        Err(crate::api::Fail::BadJson(e)) => error(StatusCode::BAD_REQUEST, &e.to_string()),
        Err(crate::api::Fail::Unavailable(e)) => json_answer(
            StatusCode::SERVICE_UNAVAILABLE,
            json!({ "error": e }).to_string(),
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&'static str, &'static str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(*k, HeaderValue::from_static(v));
        }
        h
    }

    #[test]
    fn constant_time_equality() {
        assert!(same(b"secret", b"secret"));
        assert!(!same(b"secret", b"secreT"));
        assert!(!same(b"secret", b"secret!"));
        assert!(same(b"", b""));
    }

    #[test]
    fn cookies_are_found_among_others() {
        let h = headers(&[("cookie", "a=1; switchboard_admin=abc; b=2")]);
        assert_eq!(cookie(&h, COOKIE), Some("abc"));
        assert_eq!(cookie(&headers(&[("cookie", "x=1")]), COOKIE), None);
    }

    #[test]
    fn origins_must_be_our_own_when_sent() {
        let with = |origin: Option<&'static str>| {
            let mut h = headers(&[("host", "h:8080")]);
            if let Some(o) = origin {
                h.insert(header::ORIGIN, HeaderValue::from_static(o));
            }
            same_origin(&h)
        };
        assert!(with(None), "non-browser clients send no Origin");
        assert!(with(Some("http://h:8080")));
        assert!(
            with(Some("https://h:8080")),
            "behind a proxy terminating TLS"
        );
        assert!(!with(Some("http://evil:8080")));
        assert!(!with(Some("http://h:8081")));
        assert!(!same_origin(&headers(&[("origin", "http://h:8080")])));
    }

    #[test]
    fn failed_logins_are_limited_per_address_then_refilled() {
        let state = AdminState {
            password: "pw".into(),
            sessions: Mutex::new(HashMap::new()),
            failures: Mutex::new(HashMap::new()),
        };
        let ip: IpAddr = [127, 0, 0, 1].into();
        let other: IpAddr = [127, 0, 0, 2].into();
        for _ in 0..LOGIN_BURST {
            assert!(state.take_attempt(ip).is_ok());
            state.failed(ip);
        }
        let wait = state.take_attempt(ip).unwrap_err();
        assert!(wait <= LOGIN_REFILL && wait > Duration::ZERO, "{wait:?}");
        assert!(
            state.take_attempt(other).is_ok(),
            "other addresses are not limited"
        );
        let b = LoginBucket {
            left: 0,
            since: Instant::now() - LOGIN_REFILL * 2,
        }
        .refilled(Instant::now());
        assert_eq!(b.left, 2);
    }

    #[test]
    fn tokens_are_random_and_long() {
        let (a, b) = (random_token(), random_token());
        assert_eq!(a.len(), 64);
        assert_ne!(a, b);
    }
}
