//! The opening handshake over real connections: hyper upgrade responses (101 and the
//! rejections), plain HTTP sharing the port, subprotocol selection, and `wss://` with a
//! self-signed certificate.
mod interop_support;

use std::sync::Arc;
use std::time::Duration;

use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use switchboard_websocket::client::{connect, ClientOptions};
use switchboard_websocket::upgrade::{accept, UpgradeOptions};
use switchboard_websocket::{Error, Message};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

const LIMIT: Duration = Duration::from_secs(20);

/// Send a raw request and return the whole response (the server closes rejected connections
/// or we stop at the end of the head for 101).
async fn raw_request(addr: std::net::SocketAddr, request: &str) -> String {
    let mut tcp = TcpStream::connect(addr).await.unwrap();
    tcp.write_all(request.as_bytes()).await.unwrap();
    let mut out = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        let n = tcp.read(&mut buf).await.unwrap();
        if n == 0 {
            break;
        }
        out.extend_from_slice(&buf[..n]);
        let text = String::from_utf8_lossy(&out);
        if let Some(end) = text.find("\r\n\r\n") {
            // Stop once the head and (for rejections) the announced body are complete.
            let head = &text[..end];
            let len = head
                .lines()
                .find_map(|l| {
                    l.to_ascii_lowercase()
                        .strip_prefix("content-length: ")
                        .map(|v| v.trim().parse::<usize>().unwrap())
                })
                .unwrap_or(0);
            if text.len() >= end + 4 + len {
                break;
            }
        }
    }
    String::from_utf8(out).unwrap()
}

fn upgrade_request(version: &str, key: &str) -> String {
    format!(
        "GET /ws HTTP/1.1\r\nHost: localhost\r\nUpgrade: websocket\r\nConnection: keep-alive, Upgrade\r\n\
         Sec-WebSocket-Version: {version}\r\nSec-WebSocket-Key: {key}\r\n\
         Sec-WebSocket-Protocol: v9, chat\r\n\
         Sec-WebSocket-Extensions: permessage-deflate; client_max_window_bits\r\n\r\n"
    )
}

#[tokio::test]
async fn hyper_upgrade_responses() {
    tokio::time::timeout(LIMIT, async {
        let options = UpgradeOptions {
            protocols: vec!["chat".into()],
            ..UpgradeOptions::default()
        };
        let addr = interop_support::start_echo_server(options).await;

        let ok = raw_request(addr, &upgrade_request("13", "dGhlIHNhbXBsZSBub25jZQ==")).await;
        let lower = ok.to_ascii_lowercase();
        assert!(ok.starts_with("HTTP/1.1 101"), "{ok}");
        assert!(
            lower.contains("sec-websocket-accept: s3pplmbitxaq9kygzzhzrbk+xoo="),
            "{ok}"
        );
        assert!(lower.contains("sec-websocket-protocol: chat\r\n"), "{ok}");
        assert!(
            lower.contains(
                "sec-websocket-extensions: permessage-deflate; server_no_context_takeover\r\n"
            ),
            "{ok}"
        );

        let old = raw_request(addr, &upgrade_request("8", "dGhlIHNhbXBsZSBub25jZQ==")).await;
        assert!(old.starts_with("HTTP/1.1 426"), "{old}");
        assert!(
            old.to_ascii_lowercase()
                .contains("sec-websocket-version: 13\r\n"),
            "{old}"
        );

        let bad_key = raw_request(addr, &upgrade_request("13", "c2hvcnQ=")).await;
        assert!(bad_key.starts_with("HTTP/1.1 400"), "{bad_key}");
        assert!(bad_key.contains("Sec-WebSocket-Key"), "{bad_key}");

        let post = raw_request(
            addr,
            "POST /ws HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
             Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\
             Content-Length: 0\r\n\r\n",
        )
        .await;
        assert!(post.starts_with("HTTP/1.1 405"), "{post}");

        // Plain HTTP on the same port.
        let plain = raw_request(addr, "GET / HTTP/1.1\r\nHost: x\r\n\r\n").await;
        assert!(
            plain.starts_with("HTTP/1.1 200") && plain.ends_with("plain http\n"),
            "{plain}"
        );

        // Our client picks up the subprotocol and the deflate agreement.
        let opts = ClientOptions {
            subprotocols: vec!["v9".into(), "chat".into()],
            ..ClientOptions::default()
        };
        let (mut ws, resp) = connect(&format!("ws://{addr}/ws"), opts).await.unwrap();
        assert_eq!(resp.protocol.as_deref(), Some("chat"));
        assert!(resp.deflate.unwrap().server_no_context_takeover);
        ws.send(Message::text("x".repeat(5000))).await.unwrap();
        assert_eq!(
            ws.next().await.unwrap().unwrap().as_text().map(str::len),
            Some(5000)
        );
    })
    .await
    .unwrap();
}

#[tokio::test]
async fn raw_accept_rejects_with_status() {
    tokio::time::timeout(LIMIT, async {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let server = tokio::spawn(async move {
            let (tcp, _) = listener.accept().await.unwrap();
            accept(tcp, &UpgradeOptions::default()).await.map(|_| ())
        });
        let resp = raw_request(addr, &upgrade_request("12", "dGhlIHNhbXBsZSBub25jZQ==")).await;
        assert!(resp.starts_with("HTTP/1.1 426"), "{resp}");
        assert!(matches!(server.await.unwrap(), Err(Error::Handshake(_))));
    })
    .await
    .unwrap();
}

#[tokio::test]
async fn wss_with_self_signed_certificate() {
    tokio::time::timeout(LIMIT, async {
        let cert = rcgen::generate_simple_self_signed(vec!["localhost".to_string()]).unwrap();
        let chain = vec![CertificateDer::from(cert.cert.der().to_vec())];
        let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(cert.signing_key.serialize_der()));
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut config = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_no_client_auth()
            .with_single_cert(chain, key)
            .unwrap();
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        tokio::spawn(async move {
            loop {
                let (tcp, _) = listener.accept().await.unwrap();
                let acceptor = acceptor.clone();
                tokio::spawn(async move {
                    let Ok(tls) = acceptor.accept(tcp).await else {
                        return;
                    };
                    let Ok((mut ws, _)) = accept(tls, &UpgradeOptions::default()).await else {
                        return;
                    };
                    while let Some(Ok(m)) = ws.next().await {
                        if matches!(m, Message::Text(_) | Message::Binary(_)) {
                            ws.send(m).await.unwrap();
                        }
                    }
                });
            }
        });
        let url = format!("wss://localhost:{port}/");

        // The certificate is not signed by a public root: refused by default.
        let err = connect(&url, ClientOptions::default()).await.unwrap_err();
        assert!(
            err.to_string().to_lowercase().contains("certificate"),
            "{err}"
        );

        let opts = ClientOptions {
            insecure: true,
            ..ClientOptions::default()
        };
        let (mut ws, resp) = connect(&url, opts).await.unwrap();
        assert!(resp.deflate.is_some());
        for m in [
            Message::text("over tls"),
            Message::binary(vec![9u8; 200_000]),
        ] {
            ws.send(m.clone()).await.unwrap();
            assert_eq!(ws.next().await.unwrap().unwrap(), m);
        }
        let reply = ws
            .close(switchboard_websocket::CloseCode::NORMAL, "")
            .await
            .unwrap();
        assert_eq!(
            reply.map(|f| f.code),
            Some(switchboard_websocket::CloseCode::NORMAL)
        );
    })
    .await
    .unwrap();
}
