//! The opening handshake (RFC 6455 §4) for both roles, as pure functions over `http` types.
//!
//! Server side ([`validate_server_request`], RFC 6455 §4.2.1 and §4.2.2):
//!
//! * the method must be `GET` (§4.1 item 2) — otherwise `405 Method Not Allowed` with `Allow: GET`;
//! * the HTTP version must be at least 1.1 (§4.1 item 2);
//! * a `Host` header must be present (§4.2.1 item 2);
//! * `Upgrade` must contain the token `websocket` and `Connection` the token `upgrade`, both
//!   compared case-insensitively inside comma-separated lists (§4.2.1 items 3 and 4);
//! * `Sec-WebSocket-Version` must be `13`; otherwise `426 Upgrade Required` with
//!   `Sec-WebSocket-Version: 13` so the client can retry (§4.2.2 item 4, §4.4);
//! * `Sec-WebSocket-Key` must be the base64 encoding of exactly 16 bytes (§4.2.1 item 5);
//! * `Sec-WebSocket-Accept` is base64(SHA-1(key + GUID)) (§4.2.2 item 5.4);
//! * the subprotocol is chosen by a caller hook among the client's offers (§4.2.2 item 5.3);
//! * permessage-deflate is negotiated by [`crate::extensions`] (RFC 7692 §5).
//!
//! Any other failure answers `400 Bad Request` with a short reason.
//!
//! Client side ([`ClientRequest`], [`verify_client_response`], RFC 6455 §4.1): a random 16-byte
//! key; the response must be `101`, carry `Upgrade: websocket`, `Connection: upgrade` and the
//! right accept value; an extension or subprotocol we did not offer fails the connection.
use base64::engine::general_purpose::STANDARD as BASE64;
use base64::Engine as _;
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Method, StatusCode, Version};
use sha1::{Digest, Sha1};

use crate::deflate::DeflateParams;
use crate::error::Error;
use crate::extensions::{self, DeflatePolicy};

/// The GUID appended to the key before hashing (RFC 6455 §1.3).
pub const WEBSOCKET_GUID: &str = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11";

/// `Sec-WebSocket-Accept` for a given `Sec-WebSocket-Key` (RFC 6455 §4.2.2 item 5.4).
pub fn accept_key(sec_websocket_key: &str) -> String {
    let mut sha = Sha1::new();
    sha.update(sec_websocket_key.trim().as_bytes());
    sha.update(WEBSOCKET_GUID.as_bytes());
    BASE64.encode(sha.finalize())
}

/// Why the server refuses an upgrade request: the status, a short reason for the body and
/// headers to add (e.g. `Sec-WebSocket-Version: 13` on a 426).
#[derive(Debug, Clone)]
pub struct HandshakeRejection {
    /// HTTP status to answer with.
    pub status: StatusCode,
    /// Short human-readable reason (sent as the response body).
    pub reason: &'static str,
    /// Extra response headers.
    pub extra_headers: Vec<(HeaderName, HeaderValue)>,
}

impl HandshakeRejection {
    fn bad_request(reason: &'static str) -> Self {
        HandshakeRejection {
            status: StatusCode::BAD_REQUEST,
            reason,
            extra_headers: Vec::new(),
        }
    }
}

/// The result of a successful server-side validation: what to put in the 101 response and
/// how to configure the connection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServerHandshake {
    /// Value of `Sec-WebSocket-Accept`.
    pub accept: String,
    /// Chosen subprotocol, echoed in `Sec-WebSocket-Protocol`.
    pub protocol: Option<String>,
    /// Agreed permessage-deflate parameters and the `Sec-WebSocket-Extensions` response value.
    pub deflate: Option<(DeflateParams, String)>,
}

impl ServerHandshake {
    /// The headers of the `101 Switching Protocols` response.
    pub fn response_headers(&self) -> HeaderMap {
        let mut h = HeaderMap::with_capacity(5);
        h.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
        h.insert(header::CONNECTION, HeaderValue::from_static("Upgrade"));
        h.insert(
            header::SEC_WEBSOCKET_ACCEPT,
            HeaderValue::from_str(&self.accept).expect("base64 is a valid header value"),
        );
        if let Some(p) = &self.protocol {
            if let Ok(v) = HeaderValue::from_str(p) {
                h.insert(header::SEC_WEBSOCKET_PROTOCOL, v);
            }
        }
        if let Some((_, ext)) = &self.deflate {
            h.insert(
                header::SEC_WEBSOCKET_EXTENSIONS,
                HeaderValue::from_str(ext).expect("extension response is ASCII"),
            );
        }
        h
    }
}

/// Iterate over the comma-separated, trimmed, non-empty elements of every value of `name`.
/// Values that are not visible ASCII are skipped (they cannot contain the tokens we look for).
fn list_elements<'a>(headers: &'a HeaderMap, name: &HeaderName) -> impl Iterator<Item = &'a str> {
    headers
        .get_all(name)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(str::trim)
        .filter(|s| !s.is_empty())
}

fn has_token(headers: &HeaderMap, name: &HeaderName, token: &str) -> bool {
    list_elements(headers, name).any(|t| t.eq_ignore_ascii_case(token))
}

/// Whether the request asks for a WebSocket upgrade at all (`Upgrade` contains `websocket`).
/// Use it to route between plain HTTP and the WebSocket handshake on one port.
pub fn is_upgrade_request(headers: &HeaderMap) -> bool {
    has_token(headers, &header::UPGRADE, "websocket")
}

/// The subprotocols the client offered in `Sec-WebSocket-Protocol`, in its order.
pub fn offered_protocols(headers: &HeaderMap) -> Vec<&str> {
    list_elements(headers, &header::SEC_WEBSOCKET_PROTOCOL).collect()
}

/// A `choose_protocol` hook that picks the first of the client's offers that appears in
/// `supported` (so the client's preference order wins).
pub fn first_supported(supported: &[&str], offered: &[&str]) -> Option<String> {
    offered
        .iter()
        .find(|o| supported.contains(o))
        .map(|s| s.to_string())
}

/// Validate a client's upgrade request (RFC 6455 §4.2.1) and prepare the response (§4.2.2).
///
/// `choose_protocol` receives the offered subprotocols and returns the one to use, if any; a
/// value the client did not offer is ignored (answering with it would make the client fail).
pub fn validate_server_request(
    method: &Method,
    version: Version,
    headers: &HeaderMap,
    policy: &DeflatePolicy,
    choose_protocol: &dyn Fn(&[&str]) -> Option<String>,
) -> Result<ServerHandshake, HandshakeRejection> {
    if method != Method::GET {
        return Err(HandshakeRejection {
            status: StatusCode::METHOD_NOT_ALLOWED,
            reason: "WebSocket upgrade requires GET",
            extra_headers: vec![(header::ALLOW, HeaderValue::from_static("GET"))],
        });
    }
    if version < Version::HTTP_11 {
        return Err(HandshakeRejection::bad_request(
            "WebSocket upgrade requires HTTP/1.1",
        ));
    }
    if !headers.contains_key(header::HOST) {
        return Err(HandshakeRejection::bad_request("missing Host header"));
    }
    if !is_upgrade_request(headers) {
        return Err(HandshakeRejection::bad_request(
            "missing or invalid Upgrade: websocket header",
        ));
    }
    if !has_token(headers, &header::CONNECTION, "upgrade") {
        return Err(HandshakeRejection::bad_request(
            "missing or invalid Connection: upgrade header",
        ));
    }
    let mut versions = headers.get_all(header::SEC_WEBSOCKET_VERSION).iter();
    let version_ok = matches!(
        (versions.next(), versions.next()),
        (Some(v), None) if v.as_bytes().trim_ascii() == b"13"
    );
    if !version_ok {
        return Err(HandshakeRejection {
            status: StatusCode::UPGRADE_REQUIRED,
            reason: "unsupported Sec-WebSocket-Version (only 13 is supported)",
            extra_headers: vec![(
                header::SEC_WEBSOCKET_VERSION,
                HeaderValue::from_static("13"),
            )],
        });
    }
    let mut keys = headers.get_all(header::SEC_WEBSOCKET_KEY).iter();
    let key = match (keys.next(), keys.next()) {
        (Some(k), None) => k
            .to_str()
            .map_err(|_| HandshakeRejection::bad_request("invalid Sec-WebSocket-Key"))?
            .trim(),
        (None, _) => return Err(HandshakeRejection::bad_request("missing Sec-WebSocket-Key")),
        _ => {
            return Err(HandshakeRejection::bad_request(
                "more than one Sec-WebSocket-Key",
            ))
        }
    };
    // A 16-byte value encodes to exactly 24 characters with padding.
    match BASE64.decode(key) {
        Ok(raw) if raw.len() == 16 && key.len() == 24 => {}
        _ => {
            return Err(HandshakeRejection::bad_request(
                "Sec-WebSocket-Key must be base64 of 16 bytes",
            ))
        }
    }

    let ext_values: Vec<&str> = headers
        .get_all(header::SEC_WEBSOCKET_EXTENSIONS)
        .iter()
        .map(|v| v.to_str())
        .collect::<Result<_, _>>()
        .map_err(|_| HandshakeRejection::bad_request("invalid Sec-WebSocket-Extensions"))?;
    let deflate = extensions::negotiate_server(&ext_values, policy)
        .map_err(|_| HandshakeRejection::bad_request("malformed Sec-WebSocket-Extensions"))?;

    let offered = offered_protocols(headers);
    let protocol = if offered.is_empty() {
        None
    } else {
        choose_protocol(&offered).filter(|p| offered.contains(&p.as_str()))
    };

    Ok(ServerHandshake {
        accept: accept_key(key),
        protocol,
        deflate,
    })
}

/// A client's upgrade request: the header block to send and the key to check the answer with.
#[derive(Debug, Clone)]
pub struct ClientRequest {
    /// The random `Sec-WebSocket-Key` (base64 of 16 bytes).
    pub key: String,
    /// The full HTTP/1.1 request head, ending with the empty line.
    pub bytes: Vec<u8>,
}

/// A fresh random `Sec-WebSocket-Key` (RFC 6455 §4.1 item 7: a nonce of 16 random bytes).
pub fn generate_key() -> String {
    BASE64.encode(rand::random::<[u8; 16]>())
}

impl ClientRequest {
    /// Build the request head for `GET path_and_query` on `host` (include a non-default port in
    /// `host`), offering `protocols` and `extensions` (a `Sec-WebSocket-Extensions` value).
    /// `extra` headers are appended as given; they must not repeat the handshake headers.
    pub fn new(
        host: &str,
        path_and_query: &str,
        protocols: &[String],
        extensions: Option<&str>,
        extra: &HeaderMap,
    ) -> ClientRequest {
        let key = generate_key();
        let mut s = String::with_capacity(256);
        s.push_str("GET ");
        s.push_str(if path_and_query.is_empty() {
            "/"
        } else {
            path_and_query
        });
        s.push_str(" HTTP/1.1\r\nHost: ");
        s.push_str(host);
        s.push_str(
            "\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Version: 13\r\n",
        );
        s.push_str("Sec-WebSocket-Key: ");
        s.push_str(&key);
        s.push_str("\r\n");
        if !protocols.is_empty() {
            s.push_str("Sec-WebSocket-Protocol: ");
            s.push_str(&protocols.join(", "));
            s.push_str("\r\n");
        }
        if let Some(ext) = extensions {
            s.push_str("Sec-WebSocket-Extensions: ");
            s.push_str(ext);
            s.push_str("\r\n");
        }
        let mut bytes = s.into_bytes();
        for (name, value) in extra {
            bytes.extend_from_slice(name.as_str().as_bytes());
            bytes.extend_from_slice(b": ");
            bytes.extend_from_slice(value.as_bytes());
            bytes.extend_from_slice(b"\r\n");
        }
        bytes.extend_from_slice(b"\r\n");
        ClientRequest { key, bytes }
    }
}

/// What the client learned from a valid handshake response.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientHandshake {
    /// The subprotocol the server picked (always one we offered).
    pub protocol: Option<String>,
    /// The agreed permessage-deflate parameters.
    pub deflate: Option<DeflateParams>,
}

/// Check the server's response to our upgrade request (RFC 6455 §4.1, "the client MUST
/// validate the server's response"). `deflate` is the policy the offer was built from, `None`
/// if we offered no extension.
pub fn verify_client_response(
    status: StatusCode,
    headers: &HeaderMap,
    key: &str,
    protocols: &[String],
    deflate: Option<&DeflatePolicy>,
) -> Result<ClientHandshake, Error> {
    let fail = |m: &str| Err(Error::Handshake(m.to_string()));
    if status != StatusCode::SWITCHING_PROTOCOLS {
        return Err(Error::Handshake(format!(
            "expected status 101, got {}",
            status.as_u16()
        )));
    }
    if !has_token(headers, &header::UPGRADE, "websocket") {
        return fail("response lacks Upgrade: websocket");
    }
    if !has_token(headers, &header::CONNECTION, "upgrade") {
        return fail("response lacks Connection: upgrade");
    }
    let accept = headers
        .get(header::SEC_WEBSOCKET_ACCEPT)
        .map(|v| v.as_bytes().trim_ascii());
    if accept != Some(accept_key(key).as_bytes()) {
        return fail("wrong or missing Sec-WebSocket-Accept");
    }

    let ext: Vec<&str> = headers
        .get_all(header::SEC_WEBSOCKET_EXTENSIONS)
        .iter()
        .map(|v| v.to_str())
        .collect::<Result<_, _>>()
        .map_err(|_| Error::Handshake("invalid Sec-WebSocket-Extensions".into()))?;
    let ext = ext.join(",");
    let deflate = if ext.trim().is_empty() {
        None
    } else {
        let policy = deflate.ok_or_else(|| {
            Error::Handshake("server agreed to an extension we did not offer".into())
        })?;
        Some(extensions::accept_client(&ext, policy).map_err(|e| Error::Handshake(e.to_string()))?)
    };

    let mut chosen = headers.get_all(header::SEC_WEBSOCKET_PROTOCOL).iter();
    let protocol = match (chosen.next(), chosen.next()) {
        (None, _) => None,
        (Some(p), None) => {
            let p = p
                .to_str()
                .map_err(|_| Error::Handshake("invalid Sec-WebSocket-Protocol".into()))?
                .trim();
            if !protocols.iter().any(|o| o == p) {
                return fail("server chose a subprotocol we did not offer");
            }
            Some(p.to_string())
        }
        _ => return fail("more than one Sec-WebSocket-Protocol in response"),
    };
    Ok(ClientHandshake { protocol, deflate })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(pairs: &[(&'static str, &'static str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(*k, HeaderValue::from_static(v));
        }
        h
    }

    fn good() -> Vec<(&'static str, &'static str)> {
        vec![
            ("host", "example.com"),
            ("upgrade", "websocket"),
            ("connection", "Upgrade"),
            ("sec-websocket-version", "13"),
            ("sec-websocket-key", "dGhlIHNhbXBsZSBub25jZQ=="),
        ]
    }

    fn validate(h: &HeaderMap) -> Result<ServerHandshake, HandshakeRejection> {
        validate_server_request(
            &Method::GET,
            Version::HTTP_11,
            h,
            &DeflatePolicy::default(),
            &|offered| first_supported(&["chat"], offered),
        )
    }

    fn without(name: &str) -> HeaderMap {
        request(
            &good()
                .into_iter()
                .filter(|(k, _)| *k != name)
                .collect::<Vec<_>>(),
        )
    }

    #[test]
    fn rfc_sample_accept_key() {
        // RFC 6455 §1.3 example.
        assert_eq!(
            accept_key("dGhlIHNhbXBsZSBub25jZQ=="),
            "s3pPLMBiTxaQ9kYGzzhZRbK+xOo="
        );
    }

    #[test]
    fn valid_request_with_token_lists() {
        let mut pairs = good();
        pairs[1] = ("upgrade", "foo/2, WebSocket");
        pairs[2] = ("connection", "keep-alive, UPGRADE");
        pairs.push(("sec-websocket-protocol", "v2, chat"));
        pairs.push(("sec-websocket-extensions", "permessage-deflate"));
        let hs = validate(&request(&pairs)).unwrap();
        assert_eq!(hs.accept, "s3pPLMBiTxaQ9kYGzzhZRbK+xOo=");
        assert_eq!(hs.protocol.as_deref(), Some("chat"));
        let (p, v) = hs.deflate.clone().unwrap();
        assert!(p.server_no_context_takeover);
        assert_eq!(v, "permessage-deflate; server_no_context_takeover");
        let rh = hs.response_headers();
        assert_eq!(rh["sec-websocket-accept"], "s3pPLMBiTxaQ9kYGzzhZRbK+xOo=");
        assert_eq!(rh["sec-websocket-protocol"], "chat");
        assert_eq!(rh["upgrade"], "websocket");
    }

    #[test]
    fn rejections() {
        let h = request(&good());
        let r = validate_server_request(
            &Method::POST,
            Version::HTTP_11,
            &h,
            &DeflatePolicy::default(),
            &|_| None,
        )
        .unwrap_err();
        assert_eq!(r.status, StatusCode::METHOD_NOT_ALLOWED);
        let r = validate_server_request(
            &Method::GET,
            Version::HTTP_10,
            &h,
            &DeflatePolicy::default(),
            &|_| None,
        )
        .unwrap_err();
        assert_eq!(r.status, StatusCode::BAD_REQUEST);

        for name in ["host", "upgrade", "connection", "sec-websocket-key"] {
            let r = validate(&without(name)).unwrap_err();
            assert_eq!(r.status, StatusCode::BAD_REQUEST, "{name}");
        }
        let r = validate(&without("sec-websocket-version")).unwrap_err();
        assert_eq!(r.status, StatusCode::UPGRADE_REQUIRED);
        assert_eq!(r.extra_headers[0].1, "13");

        let mut pairs = good();
        pairs[3] = ("sec-websocket-version", "8");
        assert_eq!(
            validate(&request(&pairs)).unwrap_err().status,
            StatusCode::UPGRADE_REQUIRED
        );
        for bad_key in [
            "dGhlIHNhbXBsZSBub25jZQ", // no padding
            "dGhlIHNhbXBsZSBub25jZXg=",
            "AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA",
            "not base64 at all!!!!!!!",
            "",
        ] {
            let mut pairs = good();
            pairs[4] = ("sec-websocket-key", bad_key);
            assert_eq!(
                validate(&request(&pairs)).unwrap_err().status,
                StatusCode::BAD_REQUEST,
                "{bad_key}"
            );
        }
        let mut pairs = good();
        pairs[1] = ("upgrade", "websocketx");
        assert_eq!(
            validate(&request(&pairs)).unwrap_err().status,
            StatusCode::BAD_REQUEST
        );
        let mut pairs = good();
        pairs.push(("sec-websocket-extensions", "permessage-deflate; =x"));
        assert_eq!(
            validate(&request(&pairs)).unwrap_err().status,
            StatusCode::BAD_REQUEST
        );
    }

    #[test]
    fn hook_cannot_pick_unoffered_protocol() {
        let mut pairs = good();
        pairs.push(("sec-websocket-protocol", "a"));
        let hs = validate_server_request(
            &Method::GET,
            Version::HTTP_11,
            &request(&pairs),
            &DeflatePolicy::default(),
            &|_| Some("b".into()),
        )
        .unwrap();
        assert_eq!(hs.protocol, None);
    }

    fn response(key: &str, extra: &[(&'static str, &'static str)]) -> HeaderMap {
        let mut h = request(&[("upgrade", "websocket"), ("connection", "upgrade")]);
        h.insert(
            "sec-websocket-accept",
            HeaderValue::from_str(&accept_key(key)).unwrap(),
        );
        for (k, v) in extra {
            h.append(*k, HeaderValue::from_static(v));
        }
        h
    }

    #[test]
    fn client_request_and_response() {
        let req = ClientRequest::new(
            "example.com:8080",
            "/chat?x=1",
            &["chat".to_string()],
            Some("permessage-deflate"),
            &HeaderMap::new(),
        );
        let text = String::from_utf8(req.bytes.clone()).unwrap();
        assert!(text.starts_with("GET /chat?x=1 HTTP/1.1\r\nHost: example.com:8080\r\n"));
        assert!(text.contains(&format!("Sec-WebSocket-Key: {}\r\n", req.key)));
        assert!(text.ends_with("\r\n\r\n"));
        assert_eq!(BASE64.decode(&req.key).unwrap().len(), 16);

        let protos = vec!["chat".to_string()];
        let policy = DeflatePolicy::default();
        let ok = verify_client_response(
            StatusCode::SWITCHING_PROTOCOLS,
            &response(
                &req.key,
                &[
                    ("sec-websocket-protocol", "chat"),
                    ("sec-websocket-extensions", "permessage-deflate"),
                ],
            ),
            &req.key,
            &protos,
            Some(&policy),
        )
        .unwrap();
        assert_eq!(ok.protocol.as_deref(), Some("chat"));
        assert!(ok.deflate.is_some());

        let check = |status, h: HeaderMap, deflate: Option<&DeflatePolicy>| {
            verify_client_response(status, &h, &req.key, &protos, deflate)
        };
        assert!(check(StatusCode::OK, response(&req.key, &[]), None).is_err());
        assert!(check(
            StatusCode::SWITCHING_PROTOCOLS,
            response("AAAAAAAAAAAAAAAAAAAAAA==", &[]),
            None
        )
        .is_err());
        assert!(check(
            StatusCode::SWITCHING_PROTOCOLS,
            response(&req.key, &[("sec-websocket-protocol", "other")]),
            None
        )
        .is_err());
        assert!(check(
            StatusCode::SWITCHING_PROTOCOLS,
            response(
                &req.key,
                &[("sec-websocket-extensions", "permessage-deflate")]
            ),
            None
        )
        .is_err());
        let mut h = response(&req.key, &[]);
        h.remove("connection");
        assert!(check(StatusCode::SWITCHING_PROTOCOLS, h, None).is_err());
    }
}
