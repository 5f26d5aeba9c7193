//! Origin checks for WebSocket upgrades (RFC 6455 §10.2).
//!
//! Browsers always send `Origin` on a WebSocket handshake, so checking it stops other web
//! sites from opening sockets with a visitor's cookies (cross-site WebSocket hijacking).
//! Non-browser clients usually send no `Origin`; they are allowed, since the header proves
//! nothing for them anyway.
//!
//! Patterns: `*` (anything), an exact origin (`https://chat.example.com`, compared
//! case-insensitively, default ports normalised), or an origin containing `*` wildcards where
//! each `*` stands for one or more host characters (`https://*.example.com` matches
//! `https://a.example.com` and `https://a.b.example.com` but not `https://example.com`;
//! `http://localhost:*` matches any port).

/// A compiled list of allowed origin patterns.
#[derive(Debug, Clone)]
pub struct OriginPolicy {
    any: bool,
    patterns: Vec<String>,
}

impl OriginPolicy {
    /// Compile a list of patterns. An empty list allows nothing but origin-less requests.
    pub fn new<S: AsRef<str>>(patterns: &[S]) -> OriginPolicy {
        let mut any = false;
        let mut compiled = Vec::new();
        for p in patterns {
            let p = p.as_ref().trim();
            if p == "*" {
                any = true;
            } else if !p.is_empty() {
                compiled.push(normalize(p));
            }
        }
        OriginPolicy {
            any,
            patterns: compiled,
        }
    }

    /// Whether every origin is allowed.
    pub fn allows_any(&self) -> bool {
        self.any
    }

    /// Whether a request carrying this `Origin` header value may upgrade.
    /// `None` (no header) is always allowed.
    pub fn allows(&self, origin: Option<&str>) -> bool {
        let Some(origin) = origin else { return true };
        if self.any {
            return true;
        }
        let origin = normalize(origin.trim());
        self.patterns
            .iter()
            .any(|p| glob_match(p.as_bytes(), origin.as_bytes()))
    }
}

impl OriginPolicy {
    /// Whether a request with this `Origin`, sent to this `Host`, may upgrade: what
    /// [`allows`](Self::allows) says, and always the server's own origin (a page the server
    /// itself served, such as the chat page), whatever the configured patterns.
    pub fn allows_request(&self, origin: Option<&str>, host: Option<&str>) -> bool {
        self.allows(origin) || origin.is_some_and(|o| is_own_origin(o, host))
    }
}

/// Whether `origin` names the host and port the request was sent to (its `Host` header).
/// The scheme is not compared: behind a proxy that terminates TLS the page is `https://`
/// while the server sees plain HTTP, and either way the page came from this host.
pub fn is_own_origin(origin: &str, host: Option<&str>) -> bool {
    let Some(host) = host else { return false };
    let origin = normalize(origin.trim());
    let (scheme, authority) = match origin.split_once("://") {
        Some(("http", a)) => ("http", a),
        Some(("https", a)) => ("https", a),
        _ => return false,
    };
    let host = host.trim().to_ascii_lowercase();
    let default_port = if scheme == "https" { ":443" } else { ":80" };
    let host = host.strip_suffix(default_port).unwrap_or(&host);
    !authority.is_empty() && authority == host
}

/// Lower-case and drop a default port so `https://A.com:443` equals `https://a.com`.
fn normalize(origin: &str) -> String {
    let lower = origin.to_ascii_lowercase();
    let lower = lower.trim_end_matches('/');
    for (scheme, port) in [("https://", ":443"), ("http://", ":80")] {
        if lower.starts_with(scheme) {
            if let Some(stripped) = lower.strip_suffix(port) {
                return stripped.to_string();
            }
        }
    }
    lower.to_string()
}

/// Characters a `*` may stand for: those of a host name or a port. Excluding `/`, `@`, `?`,
/// `#` keeps `https://*.example.com` from matching something like `https://evil.com/.example.com`.
fn is_host_char(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b == b'-' || b == b'.' || b == b'_'
}

/// Match `text` against `pattern`, where each `*` matches one or more host characters.
fn glob_match(pattern: &[u8], text: &[u8]) -> bool {
    match pattern.split_first() {
        None => text.is_empty(),
        Some((b'*', rest)) => {
            // Try every non-empty run of host characters, shortest first.
            let mut i = 0;
            while i < text.len() && is_host_char(text[i]) {
                i += 1;
                if glob_match(rest, &text[i..]) {
                    return true;
                }
            }
            false
        }
        Some((&c, rest)) => text.first() == Some(&c) && glob_match(rest, &text[1..]),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_servers_own_origin_is_always_allowed() {
        let p = OriginPolicy::new(&["https://*.example.com"]);
        let host = Some("localhost:8080");
        assert!(p.allows_request(Some("http://localhost:8080"), host));
        assert!(p.allows_request(Some("https://LOCALHOST:8080"), host));
        assert!(!p.allows_request(Some("http://localhost:8081"), host));
        assert!(!p.allows_request(Some("http://evil.test"), host));
        assert!(!p.allows_request(Some("http://localhost:8080"), None));
        assert!(p.allows_request(Some("https://a.example.com"), host));
        assert!(p.allows_request(None, host));
        assert!(is_own_origin("https://chat.test", Some("chat.test:443")));
        assert!(is_own_origin("http://chat.test:80", Some("chat.test")));
        assert!(!is_own_origin("null", Some("chat.test")));
        assert!(!is_own_origin("http://chat.test.evil", Some("chat.test")));
    }

    #[test]
    fn star_allows_everything() {
        let p = OriginPolicy::new(&["*"]);
        assert!(p.allows_any());
        assert!(p.allows(Some("https://evil.example")));
        assert!(p.allows(None));
    }

    #[test]
    fn exact_match_is_case_insensitive_and_port_normalised() {
        let p = OriginPolicy::new(&["https://Chat.example.com"]);
        assert!(p.allows(Some("https://chat.example.com")));
        assert!(p.allows(Some("https://chat.example.com:443")));
        assert!(!p.allows(Some("http://chat.example.com")));
        assert!(!p.allows(Some("https://chat.example.com.evil.com")));
        assert!(!p.allows(Some("null")));
        assert!(p.allows(None), "non-browser clients send no Origin");
    }

    #[test]
    fn wildcard_subdomains() {
        let p = OriginPolicy::new(&["https://*.example.com"]);
        assert!(p.allows(Some("https://a.example.com")));
        assert!(p.allows(Some("https://a.b.example.com")));
        assert!(!p.allows(Some("https://example.com")));
        assert!(!p.allows(Some("https://evil.com/.example.com")));
        assert!(!p.allows(Some("https://evil.com@a.example.com.evil.org")));
        assert!(!p.allows(Some("http://a.example.com")));
        assert!(!p.allows(Some("https://a.example.com.evil.org")));
    }

    #[test]
    fn wildcard_port_and_several_patterns() {
        let p = OriginPolicy::new(&["http://localhost:*", "https://app.test"]);
        assert!(p.allows(Some("http://localhost:3000")));
        assert!(!p.allows(Some("http://localhost")));
        assert!(p.allows(Some("https://app.test")));
        assert!(!p.allows(Some("https://other.test")));
    }
}
