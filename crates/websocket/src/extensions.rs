//! Parsing and negotiating the `Sec-WebSocket-Extensions` header for permessage-deflate.
//!
//! Grammar (RFC 6455 §9.1): the header is a comma-separated list of extensions, possibly spread
//! over several header lines (RFC 7230 §3.2.2); each extension is a token followed by
//! `;`-separated parameters, each a token with an optional `=` value that is a token or a
//! quoted-string whose unescaped content must itself be a token. Tokens are compared
//! case-insensitively. Empty list elements (`a, , b`) are ignored (RFC 7230 §7).
//!
//! Server side (RFC 7692 §5, §7.1):
//!
//! * The client may send several permessage-deflate offers in order of preference; we accept
//!   the first one we can honour and decline the rest (§5.1).
//! * An offer is **declined** (not the whole handshake) when it has an unknown parameter, a
//!   parameter twice, or a malformed value (§5: "MUST decline"), or when we cannot honour it
//!   (`server_max_window_bits=8`: zlib cannot compress with a 256-byte window, see below).
//! * A header that does not match the grammar at all is a malformed handshake request; we
//!   answer it with `400 Bad Request` (RFC 6455 §4.2.1 allows the server to reject a request it
//!   cannot parse, and guessing what a broken header meant is how interop bugs start).
//! * `server_no_context_takeover` may be set by the server even if not offered (§7.1.1.1); our
//!   policy sets it by default, because compress-once broadcast frames
//!   ([`crate::prepared`]) are only valid when every message starts from a fresh compressor.
//! * `client_no_context_takeover` may be set by the server even if not offered (§7.1.1.2: the
//!   server MAY include it in its response; a client receiving it MUST NOT use context
//!   takeover). Asking for it lets the server drop a client's inflate state between messages.
//! * `server_max_window_bits=N` (8..=15, no leading zeros) caps our compressor window; the
//!   response carries a value ≤ N (§7.1.2.1). The server may also include it unasked.
//! * `client_max_window_bits` may come with or without a value; the response may carry a value
//!   only if the client offered the parameter (§7.1.2.2).
//!
//! Client side: [`client_offer`] builds one offer; [`accept_client`] validates the server's
//! response and fails the connection (RFC 6455 §4.1, RFC 7692 §5) on a parameter we did not
//! offer, an invalid value, or a value outside what we offered.
//!
//! Window size 8: zlib cannot produce a raw DEFLATE stream with a 256-byte window (it silently
//! uses 512 bytes), so we never promise to *compress* with 8 bits. We accept peers that compress
//! with 8 bits (our decompressor's window is larger, which is always safe).
use std::fmt::Write as _;

use crate::deflate::DeflateParams;

/// The registered name of the extension (RFC 7692 §6).
pub const PERMESSAGE_DEFLATE: &str = "permessage-deflate";

/// Smallest window we are able to compress with (see the module docs about 8).
const MIN_COMPRESS_WINDOW_BITS: u8 = 9;

/// What this endpoint is willing to agree to for permessage-deflate.
///
/// Window bits are clamped to 9..=15 when used (zlib cannot compress with an 8-bit window).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeflatePolicy {
    /// Negotiate the extension at all.
    pub enabled: bool,
    /// Largest LZ77 window the server compresses with (server: what we use; client: what we ask
    /// the server to use, offered only when below 15).
    pub server_max_window_bits: u8,
    /// Largest LZ77 window the client compresses with (server: what we ask the client to use,
    /// only when the client offered the parameter; client: what we offer).
    pub client_max_window_bits: u8,
    /// The server resets its compressor after every message. Defaults to `true`: compress-once
    /// broadcast frames are only legal on such connections.
    pub server_no_context_takeover: bool,
    /// The client resets its compressor after every message (saves the server the inflate
    /// window memory between messages, at some cost in ratio).
    pub client_no_context_takeover: bool,
}

impl Default for DeflatePolicy {
    fn default() -> Self {
        DeflatePolicy {
            enabled: true,
            server_max_window_bits: 15,
            client_max_window_bits: 15,
            server_no_context_takeover: true,
            client_no_context_takeover: false,
        }
    }
}

impl DeflatePolicy {
    /// A policy that never negotiates compression.
    pub fn disabled() -> Self {
        DeflatePolicy {
            enabled: false,
            ..DeflatePolicy::default()
        }
    }

    fn server_bits(&self) -> u8 {
        self.server_max_window_bits
            .clamp(MIN_COMPRESS_WINDOW_BITS, 15)
    }

    fn client_bits(&self) -> u8 {
        self.client_max_window_bits
            .clamp(MIN_COMPRESS_WINDOW_BITS, 15)
    }
}

/// Why an extensions header or negotiation response was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ExtensionError {
    /// The header does not follow the RFC 6455 §9.1 grammar.
    #[error("malformed Sec-WebSocket-Extensions header: {0}")]
    Malformed(&'static str),
    /// (Client) the server answered with an extension we did not offer.
    #[error("server agreed to an extension that was not offered: {0}")]
    NotOffered(String),
    /// (Client) the server's permessage-deflate response has a parameter we did not offer or
    /// do not know, or a parameter twice.
    #[error("unexpected permessage-deflate parameter in response: {0}")]
    UnexpectedParameter(String),
    /// (Client) a parameter value is missing, malformed, or outside what we offered.
    #[error("invalid value for permessage-deflate parameter {0}")]
    InvalidValue(String),
}

/// One element of the extension list: a lower-cased name and its parameters in order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExtensionItem {
    /// Extension token, lower-cased.
    pub name: String,
    /// Parameters: lower-cased name and the unquoted value, if any.
    pub params: Vec<(String, Option<String>)>,
}

fn is_tchar(c: u8) -> bool {
    // RFC 7230 §3.2.6 token characters.
    c.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&c)
}

fn is_token(s: &str) -> bool {
    !s.is_empty() && s.bytes().all(is_tchar)
}

/// A byte cursor over one header value.
struct Cursor<'a> {
    s: &'a [u8],
    pos: usize,
}

impl<'a> Cursor<'a> {
    fn skip_ws(&mut self) {
        while self.pos < self.s.len() && matches!(self.s[self.pos], b' ' | b'\t') {
            self.pos += 1;
        }
    }

    fn peek(&self) -> Option<u8> {
        self.s.get(self.pos).copied()
    }

    fn token(&mut self) -> Result<&'a str, ExtensionError> {
        let start = self.pos;
        while self.pos < self.s.len() && is_tchar(self.s[self.pos]) {
            self.pos += 1;
        }
        if start == self.pos {
            return Err(ExtensionError::Malformed("expected a token"));
        }
        // Token characters are ASCII, so this slice is valid UTF-8.
        Ok(std::str::from_utf8(&self.s[start..self.pos]).expect("ASCII token"))
    }

    fn quoted(&mut self) -> Result<String, ExtensionError> {
        // Caller saw the opening quote.
        self.pos += 1;
        let mut out = String::new();
        loop {
            match self.peek() {
                None => return Err(ExtensionError::Malformed("unterminated quoted string")),
                Some(b'"') => {
                    self.pos += 1;
                    break;
                }
                Some(b'\\') => {
                    let c = self
                        .s
                        .get(self.pos + 1)
                        .copied()
                        .ok_or(ExtensionError::Malformed("unterminated quoted string"))?;
                    out.push(c as char);
                    self.pos += 2;
                }
                Some(c) => {
                    out.push(c as char);
                    self.pos += 1;
                }
            }
        }
        // RFC 6455 §9.1: the unescaped value must conform to the token ABNF.
        if !is_token(&out) {
            return Err(ExtensionError::Malformed("quoted value is not a token"));
        }
        Ok(out)
    }
}

/// Parse one or more `Sec-WebSocket-Extensions` header values into the ordered list of
/// extensions they name (RFC 6455 §9.1).
pub fn parse_extensions(header_values: &[&str]) -> Result<Vec<ExtensionItem>, ExtensionError> {
    let mut items = Vec::new();
    for value in header_values {
        let mut c = Cursor {
            s: value.as_bytes(),
            pos: 0,
        };
        loop {
            c.skip_ws();
            match c.peek() {
                None => break,
                // Empty list element.
                Some(b',') => {
                    c.pos += 1;
                    continue;
                }
                Some(_) => {}
            }
            let name = c.token()?.to_ascii_lowercase();
            let mut params = Vec::new();
            loop {
                c.skip_ws();
                match c.peek() {
                    None => break,
                    Some(b',') => {
                        c.pos += 1;
                        break;
                    }
                    Some(b';') => {
                        c.pos += 1;
                        c.skip_ws();
                        let pname = c.token()?.to_ascii_lowercase();
                        c.skip_ws();
                        let mut pvalue = None;
                        if c.peek() == Some(b'=') {
                            c.pos += 1;
                            c.skip_ws();
                            pvalue = Some(if c.peek() == Some(b'"') {
                                c.quoted()?
                            } else {
                                c.token()?.to_string()
                            });
                        }
                        params.push((pname, pvalue));
                    }
                    Some(_) => return Err(ExtensionError::Malformed("unexpected character")),
                }
            }
            items.push(ExtensionItem { name, params });
        }
    }
    Ok(items)
}

/// Parse a window-bits value: decimal 8..=15 without leading zeros (RFC 7692 §7.1.2).
fn parse_bits(v: &str) -> Option<u8> {
    if v.len() > 2 || v.starts_with('0') || !v.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let n: u8 = v.parse().ok()?;
    (8..=15).contains(&n).then_some(n)
}

/// A permessage-deflate offer after the §5 checks.
#[derive(Default)]
struct Offer {
    server_no_context_takeover: bool,
    client_no_context_takeover: bool,
    server_max_window_bits: Option<u8>,
    /// `Some(None)`: offered without a value.
    client_max_window_bits: Option<Option<u8>>,
}

/// Validate one offer; `None` means "decline it" (RFC 7692 §5).
fn parse_offer(params: &[(String, Option<String>)]) -> Option<Offer> {
    let mut offer = Offer::default();
    let mut seen = [false; 4];
    for (name, value) in params {
        let idx = match name.as_str() {
            "server_no_context_takeover" => 0,
            "client_no_context_takeover" => 1,
            "server_max_window_bits" => 2,
            "client_max_window_bits" => 3,
            _ => return None,
        };
        if std::mem::replace(&mut seen[idx], true) {
            return None;
        }
        match idx {
            0 | 1 => {
                // These two take no value (§7.1.1.1, §7.1.1.2).
                if value.is_some() {
                    return None;
                }
                if idx == 0 {
                    offer.server_no_context_takeover = true;
                } else {
                    offer.client_no_context_takeover = true;
                }
            }
            2 => offer.server_max_window_bits = Some(parse_bits(value.as_deref()?)?),
            _ => {
                offer.client_max_window_bits = Some(match value {
                    None => None,
                    Some(v) => Some(parse_bits(v)?),
                })
            }
        }
    }
    Some(offer)
}

/// Server side: pick the first acceptable permessage-deflate offer among the request's
/// `Sec-WebSocket-Extensions` header values.
///
/// Returns `Ok(None)` when compression is disabled or no offer is acceptable (the handshake
/// goes on without it), `Ok(Some((params, response_value)))` with the parameters to configure
/// the codec with and the exact value for the response header, and `Err` only when the header
/// is syntactically malformed (answer 400).
pub fn negotiate_server(
    header_values: &[&str],
    policy: &DeflatePolicy,
) -> Result<Option<(DeflateParams, String)>, ExtensionError> {
    let items = parse_extensions(header_values)?;
    if !policy.enabled {
        return Ok(None);
    }
    for item in items.iter().filter(|i| i.name == PERMESSAGE_DEFLATE) {
        let Some(offer) = parse_offer(&item.params) else {
            continue;
        };
        let mut params = DeflateParams::default();
        let mut response = String::from(PERMESSAGE_DEFLATE);

        // Our compressor's window: at most what the client allows (§7.1.2.1).
        let mut server_bits = policy.server_bits();
        if let Some(limit) = offer.server_max_window_bits {
            if limit < MIN_COMPRESS_WINDOW_BITS {
                continue; // cannot honour an 8-bit window; decline this offer
            }
            server_bits = server_bits.min(limit);
        }
        params.server_max_window_bits = server_bits;

        if offer.server_no_context_takeover || policy.server_no_context_takeover {
            params.server_no_context_takeover = true;
            response.push_str("; server_no_context_takeover");
        }
        // Echo the client's own promise too: it tells us the inflater need not keep its
        // window between messages.
        if offer.client_no_context_takeover || policy.client_no_context_takeover {
            params.client_no_context_takeover = true;
            response.push_str("; client_no_context_takeover");
        }
        if offer.server_max_window_bits.is_some() || server_bits < 15 {
            let _ = write!(response, "; server_max_window_bits={server_bits}");
        }
        // The client's window may only be limited if it offered the parameter (§7.1.2.2).
        params.client_max_window_bits = 15;
        if let Some(offered) = offer.client_max_window_bits {
            let want = policy.client_bits();
            let bits = offered.map_or(want, |o| o.min(want));
            if bits < 15 {
                let _ = write!(response, "; client_max_window_bits={bits}");
            }
            params.client_max_window_bits = bits;
        }
        return Ok(Some((params, response)));
    }
    Ok(None)
}

/// Client side: the `Sec-WebSocket-Extensions` value offering permessage-deflate per `policy`.
///
/// `client_max_window_bits` is always offered (bare when 15) so the server may ask for a
/// smaller window; `server_max_window_bits` only when below 15.
pub fn client_offer(policy: &DeflatePolicy) -> String {
    let mut s = String::from(PERMESSAGE_DEFLATE);
    if policy.server_no_context_takeover {
        s.push_str("; server_no_context_takeover");
    }
    if policy.client_no_context_takeover {
        s.push_str("; client_no_context_takeover");
    }
    let sb = policy.server_bits();
    if sb < 15 {
        let _ = write!(s, "; server_max_window_bits={sb}");
    }
    let cb = policy.client_bits();
    if cb < 15 {
        let _ = write!(s, "; client_max_window_bits={cb}");
    } else {
        s.push_str("; client_max_window_bits");
    }
    s
}

/// Client side: validate the server's `Sec-WebSocket-Extensions` response (all header lines
/// joined with `,`) against the offer [`client_offer`] built from `policy`.
///
/// Any error means the client must fail the WebSocket connection (RFC 6455 §4.1 step 5,
/// RFC 7692 §5).
pub fn accept_client(
    response_value: &str,
    policy: &DeflatePolicy,
) -> Result<DeflateParams, ExtensionError> {
    let items = parse_extensions(&[response_value])?;
    let mut iter = items.into_iter();
    let item = iter
        .next()
        .ok_or(ExtensionError::Malformed("empty extension list"))?;
    if let Some(extra) = iter.next() {
        // We offer only one extension, so the server may agree to at most one.
        return Err(ExtensionError::NotOffered(extra.name));
    }
    if item.name != PERMESSAGE_DEFLATE || !policy.enabled {
        return Err(ExtensionError::NotOffered(item.name));
    }
    let mut params = DeflateParams::default();
    let mut seen = [false; 4];
    for (name, value) in item.params {
        let idx = match name.as_str() {
            "server_no_context_takeover" => 0,
            "client_no_context_takeover" => 1,
            "server_max_window_bits" => 2,
            "client_max_window_bits" => 3,
            _ => return Err(ExtensionError::UnexpectedParameter(name)),
        };
        if std::mem::replace(&mut seen[idx], true) {
            return Err(ExtensionError::UnexpectedParameter(name));
        }
        match idx {
            0 | 1 => {
                if value.is_some() {
                    return Err(ExtensionError::InvalidValue(name));
                }
                if idx == 0 {
                    params.server_no_context_takeover = true;
                } else {
                    params.client_no_context_takeover = true;
                }
            }
            2 => {
                let bits = value
                    .as_deref()
                    .and_then(parse_bits)
                    .ok_or_else(|| ExtensionError::InvalidValue(name.clone()))?;
                // A value above what we asked for breaks our request (§7.1.2.1).
                if bits > policy.server_bits() {
                    return Err(ExtensionError::InvalidValue(name));
                }
                params.server_max_window_bits = bits;
            }
            _ => {
                // We always offer client_max_window_bits; in a response it needs a value.
                let bits = value
                    .as_deref()
                    .and_then(parse_bits)
                    .ok_or_else(|| ExtensionError::InvalidValue(name.clone()))?;
                if bits > policy.client_bits() || bits < MIN_COMPRESS_WINDOW_BITS {
                    return Err(ExtensionError::InvalidValue(name));
                }
                params.client_max_window_bits = bits;
            }
        }
    }
    if !seen[3] {
        params.client_max_window_bits = policy.client_bits();
    }
    Ok(params)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn neg(values: &[&str]) -> Option<(DeflateParams, String)> {
        negotiate_server(values, &DeflatePolicy::default()).unwrap()
    }

    #[test]
    fn parses_lists_params_and_quotes() {
        let items = parse_extensions(&[
            "foo, Permessage-Deflate; Client_Max_Window_Bits; server_max_window_bits=\"10\"",
            " , bar;x=\"a\\b\"",
        ])
        .unwrap();
        assert_eq!(items.len(), 3);
        assert_eq!(items[0].name, "foo");
        assert_eq!(items[1].name, "permessage-deflate");
        assert_eq!(
            items[1].params,
            vec![
                ("client_max_window_bits".into(), None),
                ("server_max_window_bits".into(), Some("10".into()))
            ]
        );
        assert_eq!(items[2].params, vec![("x".into(), Some("ab".into()))]);
    }

    #[test]
    fn malformed_headers_are_errors() {
        for bad in [
            "permessage-deflate; =10",
            "permessage-deflate x",
            "permessage-deflate; a=\"10",
            "permessage-deflate; a=\"1 0\"",
            "permessage-deflate; a=",
            ";a",
        ] {
            assert!(parse_extensions(&[bad]).is_err(), "{bad}");
            assert!(negotiate_server(&[bad], &DeflatePolicy::default()).is_err());
        }
    }

    #[test]
    fn default_offer_gets_server_no_context_takeover() {
        let (p, resp) = neg(&["permessage-deflate; client_max_window_bits"]).unwrap();
        assert_eq!(resp, "permessage-deflate; server_no_context_takeover");
        assert!(p.server_no_context_takeover);
        assert!(!p.client_no_context_takeover);
        assert_eq!(p.server_max_window_bits, 15);
        assert_eq!(p.client_max_window_bits, 15);
    }

    #[test]
    fn all_four_parameters() {
        let (p, resp) = neg(&["permessage-deflate; server_no_context_takeover; \
             client_no_context_takeover; server_max_window_bits=10; client_max_window_bits=11"])
        .unwrap();
        assert_eq!(
            resp,
            "permessage-deflate; server_no_context_takeover; client_no_context_takeover; \
             server_max_window_bits=10; client_max_window_bits=11"
        );
        assert_eq!(
            p,
            DeflateParams {
                server_no_context_takeover: true,
                client_no_context_takeover: true,
                server_max_window_bits: 10,
                client_max_window_bits: 11,
            }
        );
    }

    #[test]
    fn bad_offer_is_declined_and_next_one_taken() {
        for bad in [
            "permessage-deflate; server_max_window_bits",
            "permessage-deflate; server_max_window_bits=16",
            "permessage-deflate; server_max_window_bits=7",
            "permessage-deflate; server_max_window_bits=010",
            "permessage-deflate; client_max_window_bits=abc",
            "permessage-deflate; server_no_context_takeover; server_no_context_takeover",
            "permessage-deflate; server_no_context_takeover=1",
            "permessage-deflate; foo",
            // We cannot compress with an 8-bit window.
            "permessage-deflate; server_max_window_bits=8",
        ] {
            assert_eq!(neg(&[bad]), None, "{bad}");
            let (p, _) = neg(&[bad, "permessage-deflate; client_max_window_bits=12"]).unwrap();
            assert_eq!(p.client_max_window_bits, 12, "{bad}");
        }
    }

    #[test]
    fn policy_limits_and_disabled() {
        let policy = DeflatePolicy {
            server_max_window_bits: 11,
            client_max_window_bits: 10,
            server_no_context_takeover: false,
            ..DeflatePolicy::default()
        };
        let (p, resp) = negotiate_server(&["permessage-deflate"], &policy)
            .unwrap()
            .unwrap();
        // Client did not offer client_max_window_bits: we must not limit it.
        assert_eq!(resp, "permessage-deflate; server_max_window_bits=11");
        assert_eq!(p.client_max_window_bits, 15);
        assert!(!p.server_no_context_takeover);
        let (p, resp) = negotiate_server(
            &["permessage-deflate; client_max_window_bits; server_max_window_bits=12"],
            &policy,
        )
        .unwrap()
        .unwrap();
        assert_eq!(
            resp,
            "permessage-deflate; server_max_window_bits=11; client_max_window_bits=10"
        );
        assert_eq!(
            (p.server_max_window_bits, p.client_max_window_bits),
            (11, 10)
        );
        assert_eq!(
            negotiate_server(&["permessage-deflate"], &DeflatePolicy::disabled()).unwrap(),
            None
        );
        assert_eq!(neg(&["x-webkit-deflate-frame"]), None);
    }

    #[test]
    fn client_offer_and_accept() {
        let policy = DeflatePolicy::default();
        assert_eq!(
            client_offer(&policy),
            "permessage-deflate; server_no_context_takeover; client_max_window_bits"
        );
        let p = accept_client("permessage-deflate; server_no_context_takeover", &policy).unwrap();
        assert!(p.server_no_context_takeover);
        assert_eq!(p.client_max_window_bits, 15);
        let p = accept_client(
            "permessage-deflate; client_max_window_bits=10; server_max_window_bits=9",
            &policy,
        )
        .unwrap();
        assert_eq!(
            (p.server_max_window_bits, p.client_max_window_bits),
            (9, 10)
        );

        let small = DeflatePolicy {
            server_max_window_bits: 10,
            client_max_window_bits: 12,
            client_no_context_takeover: true,
            ..policy.clone()
        };
        assert_eq!(
            client_offer(&small),
            "permessage-deflate; server_no_context_takeover; client_no_context_takeover; \
             server_max_window_bits=10; client_max_window_bits=12"
        );
        for bad in [
            "permessage-deflate; server_max_window_bits=11",
            "permessage-deflate; client_max_window_bits=13",
            "permessage-deflate; client_max_window_bits",
            "permessage-deflate; client_max_window_bits=8",
            "permessage-deflate; foo",
            "permessage-deflate; client_no_context_takeover; client_no_context_takeover",
            "permessage-deflate, permessage-deflate",
            "x-other",
        ] {
            assert!(accept_client(bad, &small).is_err(), "{bad}");
        }
        assert!(accept_client("permessage-deflate", &DeflatePolicy::disabled()).is_err());
    }
}
