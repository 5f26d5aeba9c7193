//! Pusher signatures: channel authorization (`key:signature` over `socket_id:channel`, with
//! `:channel_data` for presence), user sign-in, the signed HTTP API and webhooks. All are
//! HMAC-SHA256 with the app secret, as lowercase hex; comparisons take constant time.
use hmac::{Hmac, Mac};
use md5::{Digest, Md5};
use sha2::Sha256;

type HmacSha256 = Hmac<Sha256>;

/// Lowercase hex of `bytes`.
pub fn hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut s = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        s.push(DIGITS[(b >> 4) as usize] as char);
        s.push(DIGITS[(b & 15) as usize] as char);
    }
    s
}

/// Hex HMAC-SHA256 of `message` with `secret`.
pub fn sign(secret: &str, message: &str) -> String {
    sign_bytes(secret, message.as_bytes())
}

/// Hex HMAC-SHA256 of raw bytes (webhook bodies).
pub fn sign_bytes(secret: &str, message: &[u8]) -> String {
    // HMAC takes keys of any length: `new_from_slice` cannot fail.
    let Ok(mut mac) = HmacSha256::new_from_slice(secret.as_bytes()) else {
        return String::new();
    };
    mac.update(message);
    hex(&mac.finalize().into_bytes())
}

/// Hex MD5 of `body` (the HTTP API's `body_md5`).
pub fn md5_hex(body: &[u8]) -> String {
    hex(&Md5::digest(body))
}

/// Whether `a` and `b` are equal, in time that depends only on their lengths.
pub fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// The string signed to authorize `socket_id` on `channel` (`channel_data` for presence).
pub fn channel_string_to_sign(
    socket_id: &str,
    channel: &str,
    channel_data: Option<&str>,
) -> String {
    match channel_data {
        Some(data) => format!("{socket_id}:{channel}:{data}"),
        None => format!("{socket_id}:{channel}"),
    }
}

/// The `auth` value a backend returns for a channel subscription: `key:signature`.
pub fn channel_auth(
    key: &str,
    secret: &str,
    socket_id: &str,
    channel: &str,
    channel_data: Option<&str>,
) -> String {
    let sig = sign(
        secret,
        &channel_string_to_sign(socket_id, channel, channel_data),
    );
    format!("{key}:{sig}")
}

/// Whether `auth` (`key:signature`) authorizes `socket_id` on `channel`.
pub fn verify_channel_auth(
    key: &str,
    secret: &str,
    auth: &str,
    socket_id: &str,
    channel: &str,
    channel_data: Option<&str>,
) -> bool {
    verify_auth(
        key,
        secret,
        auth,
        &channel_string_to_sign(socket_id, channel, channel_data),
    )
}

/// Whether `auth` (`key:signature`) authorizes `socket_id` to sign in with `user_data`.
pub fn verify_user_auth(
    key: &str,
    secret: &str,
    auth: &str,
    socket_id: &str,
    user_data: &str,
) -> bool {
    verify_auth(
        key,
        secret,
        auth,
        &format!("{socket_id}::user::{user_data}"),
    )
}

fn verify_auth(key: &str, secret: &str, auth: &str, signed: &str) -> bool {
    let Some((given_key, sig)) = auth.split_once(':') else {
        return false;
    };
    let expected = sign(secret, signed);
    // Both comparisons always run, so the time does not tell which one failed.
    let key_ok = constant_time_eq(given_key.as_bytes(), key.as_bytes());
    let sig_ok = constant_time_eq(sig.as_bytes(), expected.as_bytes());
    key_ok & sig_ok
}

/// Why a signed HTTP API request is refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ApiAuthError {
    /// A required parameter is missing or malformed.
    Missing(&'static str),
    /// `auth_key` names no app key.
    UnknownKey,
    /// `auth_timestamp` is too far from now.
    Expired,
    /// `body_md5` does not match the body.
    BodyMd5,
    /// `auth_signature` does not match.
    Signature,
}

impl std::fmt::Display for ApiAuthError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ApiAuthError::Missing(p) => write!(f, "missing or invalid {p}"),
            ApiAuthError::UnknownKey => f.write_str("unknown auth_key"),
            ApiAuthError::Expired => f.write_str("auth_timestamp out of range"),
            ApiAuthError::BodyMd5 => f.write_str("body_md5 does not match the body"),
            ApiAuthError::Signature => f.write_str("invalid auth_signature"),
        }
    }
}

/// Most seconds between `auth_timestamp` and the server's clock.
pub const API_MAX_SKEW_SECS: u64 = 600;

/// Decoded query parameters (`application/x-www-form-urlencoded`), in order.
pub fn parse_query(query: &str) -> Vec<(String, String)> {
    query
        .split('&')
        .filter(|p| !p.is_empty())
        .map(|pair| {
            let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
            (percent_decode(k), percent_decode(v))
        })
        .collect()
}

fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'+' => out.push(b' '),
            b'%' if i + 2 < bytes.len() => {
                let hi = (bytes[i + 1] as char).to_digit(16);
                let lo = (bytes[i + 2] as char).to_digit(16);
                match (hi, lo) {
                    (Some(h), Some(l)) => {
                        out.push((h * 16 + l) as u8);
                        i += 2;
                    }
                    _ => out.push(b'%'),
                }
            }
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// The string an HTTP API request signs: `METHOD\npath\nquery`, the query being every
/// parameter but `auth_signature`, keys lowercased, sorted by key, `key=value` joined by
/// `&` (values as decoded).
pub fn api_string_to_sign(method: &str, path: &str, params: &[(String, String)]) -> String {
    let mut sorted: Vec<(String, &str)> = params
        .iter()
        .filter(|(k, _)| k != "auth_signature")
        .map(|(k, v)| (k.to_ascii_lowercase(), v.as_str()))
        .collect();
    sorted.sort();
    let query: Vec<String> = sorted.iter().map(|(k, v)| format!("{k}={v}")).collect();
    format!(
        "{}\n{}\n{}",
        method.to_ascii_uppercase(),
        path,
        query.join("&")
    )
}

/// Checks a signed HTTP API request: `auth_key` must be `key`, `auth_timestamp` within
/// [`API_MAX_SKEW_SECS`] of `now` (Unix seconds), `body_md5` (when there is a body) the
/// body's MD5, and `auth_signature` the signature of [`api_string_to_sign`].
pub fn verify_api_request(
    key: &str,
    secret: &str,
    method: &str,
    path: &str,
    params: &[(String, String)],
    body: &[u8],
    now: u64,
) -> Result<(), ApiAuthError> {
    let get = |name: &str| {
        params
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    };
    let given_key = get("auth_key").ok_or(ApiAuthError::Missing("auth_key"))?;
    if !constant_time_eq(given_key.as_bytes(), key.as_bytes()) {
        return Err(ApiAuthError::UnknownKey);
    }
    let ts: u64 = get("auth_timestamp")
        .and_then(|t| t.parse().ok())
        .ok_or(ApiAuthError::Missing("auth_timestamp"))?;
    if ts.abs_diff(now) > API_MAX_SKEW_SECS {
        return Err(ApiAuthError::Expired);
    }
    if get("auth_version").is_some_and(|v| v != "1.0") {
        return Err(ApiAuthError::Missing("auth_version"));
    }
    if !body.is_empty() {
        let md5 = get("body_md5").ok_or(ApiAuthError::Missing("body_md5"))?;
        if !constant_time_eq(md5.as_bytes(), md5_hex(body).as_bytes()) {
            return Err(ApiAuthError::BodyMd5);
        }
    }
    let sig = get("auth_signature").ok_or(ApiAuthError::Missing("auth_signature"))?;
    let expected = sign(secret, &api_string_to_sign(method, path, params));
    if constant_time_eq(sig.as_bytes(), expected.as_bytes()) {
        Ok(())
    } else {
        Err(ApiAuthError::Signature)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hmac_sha256_matches_rfc_4231_case_2() {
        assert_eq!(
            sign("Jefe", "what do ya want for nothing?"),
            "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
        );
    }

    #[test]
    fn md5_matches_rfc_1321() {
        assert_eq!(md5_hex(b""), "d41d8cd98f00b204e9800998ecf8427e");
        assert_eq!(md5_hex(b"abc"), "900150983cd24fb0d6963f7d28e17f72");
    }

    #[test]
    fn private_channel_signature_of_the_documented_example() {
        // The auth-signatures page's worked example: key 278d425bdf160c739803, secret
        // 7ad3773142a6692b25b8, socket 1234.1234, channel private-foobar.
        let auth = channel_auth(
            "278d425bdf160c739803",
            "7ad3773142a6692b25b8",
            "1234.1234",
            "private-foobar",
            None,
        );
        assert_eq!(
            auth,
            "278d425bdf160c739803:58df8b0c36d6982b82c3ecf6b4662e34fe8c25bba48f5369f135bf843651c3a4"
        );
        assert!(verify_channel_auth(
            "278d425bdf160c739803",
            "7ad3773142a6692b25b8",
            &auth,
            "1234.1234",
            "private-foobar",
            None
        ));
        assert!(!verify_channel_auth(
            "278d425bdf160c739803",
            "7ad3773142a6692b25b8",
            &auth,
            "1234.1235",
            "private-foobar",
            None
        ));
    }

    #[test]
    fn presence_signature_covers_the_channel_data() {
        let data = r#"{"user_id":10,"user_info":{"name":"Mr. Channels"}}"#;
        let auth = channel_auth("key", "secret", "1.2", "presence-foobar", Some(data));
        let expected = sign("secret", &format!("1.2:presence-foobar:{data}"));
        assert_eq!(auth, format!("key:{expected}"));
        assert!(verify_channel_auth(
            "key",
            "secret",
            &auth,
            "1.2",
            "presence-foobar",
            Some(data)
        ));
        assert!(!verify_channel_auth(
            "key",
            "secret",
            &auth,
            "1.2",
            "presence-foobar",
            Some("{}")
        ));
        assert!(!verify_channel_auth(
            "other",
            "secret",
            &auth,
            "1.2",
            "presence-foobar",
            Some(data)
        ));
        assert!(!verify_channel_auth(
            "key",
            "secret",
            "nocolon",
            "1.2",
            "presence-foobar",
            Some(data)
        ));
    }

    #[test]
    fn user_signin_signature() {
        let auth = format!("k:{}", sign("s", "1.2::user::{\"id\":\"u\"}"));
        assert!(verify_user_auth("k", "s", &auth, "1.2", "{\"id\":\"u\"}"));
        assert!(!verify_user_auth("k", "s", &auth, "1.3", "{\"id\":\"u\"}"));
    }

    #[test]
    fn api_requests_are_signed_over_the_sorted_query() {
        let body = br#"{"name":"foo","channels":["project-3"],"data":"{\"some\":\"data\"}"}"#;
        let md5 = md5_hex(body);
        let mut params = vec![
            ("auth_version".to_string(), "1.0".to_string()),
            ("body_md5".to_string(), md5.clone()),
            ("auth_timestamp".to_string(), "1353088179".to_string()),
            ("auth_key".to_string(), "278d425bdf160c739803".to_string()),
        ];
        let signed = api_string_to_sign("POST", "/apps/3/events", &params);
        assert_eq!(
            signed,
            format!(
                "POST\n/apps/3/events\nauth_key=278d425bdf160c739803&auth_timestamp=1353088179&auth_version=1.0&body_md5={md5}"
            )
        );
        let secret = "7ad3773142a6692b25b8";
        params.push(("auth_signature".to_string(), sign(secret, &signed)));
        let check = |params: &[(String, String)], body: &[u8], now| {
            verify_api_request(
                "278d425bdf160c739803",
                secret,
                "POST",
                "/apps/3/events",
                params,
                body,
                now,
            )
        };
        assert_eq!(check(&params, body, 1353088179 + 600), Ok(()));
        assert_eq!(
            check(&params, body, 1353088179 + 601),
            Err(ApiAuthError::Expired)
        );
        assert_eq!(
            check(&params, b"{}", 1353088179),
            Err(ApiAuthError::BodyMd5)
        );
        let mut forged = params.clone();
        forged.last_mut().unwrap().1 = "0".repeat(64);
        assert_eq!(
            check(&forged, body, 1353088179),
            Err(ApiAuthError::Signature)
        );
        let keyless: Vec<_> = params
            .iter()
            .filter(|(k, _)| k != "auth_key")
            .cloned()
            .collect();
        assert_eq!(
            check(&keyless, body, 1353088179),
            Err(ApiAuthError::Missing("auth_key"))
        );
    }

    #[test]
    fn queries_are_percent_decoded() {
        let q = parse_query(
            "a=1&filter_by_prefix=presence-&info=user_count%2Csubscription_count&x=a+b&bad=%zz",
        );
        assert_eq!(
            q[2],
            ("info".into(), "user_count,subscription_count".into())
        );
        assert_eq!(q[3].1, "a b");
        assert_eq!(q[4].1, "%zz");
    }

    #[test]
    fn constant_time_comparison() {
        assert!(constant_time_eq(b"abc", b"abc"));
        assert!(!constant_time_eq(b"abc", b"abd"));
        assert!(!constant_time_eq(b"abc", b"ab"));
    }
}
