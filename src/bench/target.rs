//! The benchmark target: a `ws://` URL that must point at this machine, and source addresses.
use std::net::{IpAddr, Ipv4Addr, SocketAddr, ToSocketAddrs};

use super::report::BenchError;

/// Where to connect and what to ask for.
#[derive(Debug, Clone)]
pub(crate) struct Target {
    /// The resolved loopback address.
    pub addr: SocketAddr,
    /// `Host` header value (with the port).
    pub host: String,
    /// Path without a trailing slash (`""` for the root).
    pub path: String,
    /// Query string without `?`, if any.
    pub query: Option<String>,
}

impl Target {
    /// Parse and resolve `url`; refuse anything but `ws://` on a loopback address.
    pub fn parse(url: &str) -> Result<Target, BenchError> {
        let rest = match url.split_once("://") {
            Some((scheme, rest)) if scheme.eq_ignore_ascii_case("ws") => rest,
            Some((scheme, _)) if scheme.eq_ignore_ascii_case("wss") => {
                return Err(BenchError::Usage(
                    "wss:// is not supported by the load generator: benchmark the plain listener"
                        .into(),
                ))
            }
            _ => {
                return Err(BenchError::Usage(format!(
                    "expected a ws:// URL, got {url:?}"
                )))
            }
        };
        let (authority, path_query) = match rest.find('/') {
            Some(i) => (&rest[..i], &rest[i..]),
            None => match rest.find('?') {
                Some(i) => (&rest[..i], &rest[i..]),
                None => (rest, ""),
            },
        };
        if authority.is_empty() || authority.contains('@') {
            return Err(BenchError::Usage(format!("invalid host in {url:?}")));
        }
        let (path, query) = match path_query.split_once('?') {
            Some((p, q)) => (p, Some(q.to_string())),
            None => (path_query, None),
        };
        let with_port = if authority.starts_with('[') {
            if authority.contains("]:") {
                authority.to_string()
            } else {
                format!("{authority}:80")
            }
        } else if authority.contains(':') {
            authority.to_string()
        } else {
            format!("{authority}:80")
        };
        let addrs: Vec<SocketAddr> = with_port
            .to_socket_addrs()
            .map_err(|e| BenchError::Usage(format!("cannot resolve {authority:?}: {e}")))?
            .collect();
        if addrs.is_empty() || addrs.iter().any(|a| !a.ip().is_loopback()) {
            return Err(BenchError::Usage(format!(
                "refusing to load {authority:?}: only loopback targets (127.0.0.0/8, ::1, localhost) \
                 may be benchmarked"
            )));
        }
        // Prefer IPv4: the source-address spreading of `conns` is IPv4.
        let addr = addrs
            .iter()
            .copied()
            .find(|a| a.is_ipv4())
            .unwrap_or(addrs[0]);
        Ok(Target {
            addr,
            host: authority.to_string(),
            path: path.trim_end_matches('/').to_string(),
            query,
        })
    }

    /// The request target for the room itself, with `extra` query parameters appended.
    pub fn path_and_query(&self, extra: &str) -> String {
        self.sub_path_and_query("", extra)
    }

    /// The request target for `PATH/suffix` (suffix may be empty), with `extra` appended to the
    /// query string.
    pub fn sub_path_and_query(&self, suffix: &str, extra: &str) -> String {
        let mut s = self.path.clone();
        if !suffix.is_empty() {
            s.push('/');
            s.push_str(suffix);
        }
        if s.is_empty() {
            s.push('/');
        }
        let mut q: Vec<&str> = Vec::new();
        if let Some(query) = &self.query {
            if !query.is_empty() {
                q.push(query);
            }
        }
        if !extra.is_empty() {
            q.push(extra);
        }
        if !q.is_empty() {
            s.push('?');
            s.push_str(&q.join("&"));
        }
        s
    }
}

/// Parse `--src-ips`: `A`, `A-B` (a range of the last octet, same /24) or `A,B,C`; loopback only.
pub(crate) fn parse_src_ips(spec: &str) -> Result<Vec<IpAddr>, BenchError> {
    let bad = |m: String| BenchError::Usage(m);
    let mut out = Vec::new();
    for part in spec.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        if let Some((a, b)) = part.split_once('-') {
            let a: Ipv4Addr = a
                .trim()
                .parse()
                .map_err(|_| bad(format!("bad address {a:?}")))?;
            let b: Ipv4Addr = b
                .trim()
                .parse()
                .map_err(|_| bad(format!("bad address {b:?}")))?;
            let (ao, bo) = (a.octets(), b.octets());
            if ao[..3] != bo[..3] || ao[3] > bo[3] {
                return Err(bad(format!(
                    "range {part:?} must vary only the last octet, ascending"
                )));
            }
            for last in ao[3]..=bo[3] {
                out.push(IpAddr::V4(Ipv4Addr::new(ao[0], ao[1], ao[2], last)));
            }
        } else {
            let ip: IpAddr = part
                .parse()
                .map_err(|_| bad(format!("bad address {part:?}")))?;
            out.push(ip);
        }
    }
    if out.is_empty() {
        return Err(bad("--src-ips is empty".into()));
    }
    if let Some(ip) = out.iter().find(|ip| !ip.is_loopback()) {
        return Err(bad(format!(
            "source address {ip} is not a loopback address"
        )));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_loopback_urls() {
        let t = Target::parse("ws://127.0.0.1:9001/room?x=1").unwrap();
        assert_eq!(t.addr, "127.0.0.1:9001".parse().unwrap());
        assert_eq!(t.host, "127.0.0.1:9001");
        assert_eq!(t.path_and_query("echo=false"), "/room?x=1&echo=false");
        assert_eq!(t.sub_path_and_query("echo-3", ""), "/room/echo-3?x=1");
        let t = Target::parse("ws://localhost:80").unwrap();
        assert_eq!(t.path_and_query(""), "/");
        assert_eq!(t.sub_path_and_query("echo-0", ""), "/echo-0");
        let t = Target::parse("ws://[::1]:9/").unwrap();
        assert!(t.addr.ip().is_loopback());
    }

    #[test]
    fn refuses_remote_and_tls_targets() {
        for url in [
            "ws://10.0.0.1:80/",
            "ws://192.0.2.7/",
            "wss://127.0.0.1:443/",
            "http://127.0.0.1/",
            "ws://user@127.0.0.1/",
        ] {
            assert!(
                matches!(Target::parse(url), Err(BenchError::Usage(_))),
                "{url}"
            );
        }
    }

    #[test]
    fn source_ranges() {
        let ips = parse_src_ips("127.0.0.1-127.0.0.3").unwrap();
        assert_eq!(ips.len(), 3);
        assert_eq!(ips[2], "127.0.0.3".parse::<IpAddr>().unwrap());
        assert_eq!(parse_src_ips("127.0.0.5,::1").unwrap().len(), 2);
        assert!(parse_src_ips("10.0.0.1").is_err());
        assert!(parse_src_ips("127.0.0.3-127.0.0.1").is_err());
    }
}
