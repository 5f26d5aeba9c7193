//! TLS against the real binary: https and wss on the same port with a self-signed
//! certificate generated here.
mod server_support;

use server_support::*;
use switchboard_websocket::client::{connect, ClientOptions};
use switchboard_websocket::Message;

fn self_signed(dir: &std::path::Path) -> (String, String) {
    let ck =
        rcgen::generate_simple_self_signed(vec!["localhost".to_string(), "127.0.0.1".to_string()])
            .expect("generate certificate");
    let cert = dir.join("cert.pem");
    let key = dir.join("key.pem");
    std::fs::write(&cert, ck.cert.pem()).unwrap();
    std::fs::write(&key, ck.signing_key.serialize_pem()).unwrap();
    (
        cert.to_str().unwrap().to_string(),
        key.to_str().unwrap().to_string(),
    )
}

#[tokio::test]
async fn wss_round_trip_with_a_self_signed_certificate() {
    let dir = tempfile::tempdir().unwrap();
    let (cert, key) = self_signed(dir.path());
    let server = ServerProc::start(&[
        "--tls-cert",
        &cert,
        "--tls-key",
        &key,
        "--welcome",
        "secure hello",
    ]);
    assert_eq!(server.scheme, "https");

    let options = ClientOptions {
        insecure: true,
        ..ClientOptions::default()
    };
    let mut a = ws_with(&server.ws_url("/secure"), options.clone()).await;
    let mut b = ws_with(&server.ws_url("/secure"), options).await;
    assert_eq!(a.next_text().await, "secure hello");
    assert_eq!(b.next_text().await, "secure hello");
    a.writer
        .send(Message::binary(vec![1u8, 2, 3]))
        .await
        .unwrap();
    let big = "t".repeat(50_000);
    a.send_text(&big).await;
    for c in [&mut a, &mut b] {
        assert_eq!(c.next_data().await, Message::binary(vec![1u8, 2, 3]));
        let got = c.next_text().await;
        assert!(
            got == big,
            "large message over TLS corrupted ({} bytes)",
            got.len()
        );
    }
    // TLS with the default `*` origins logs a warning at startup.
    assert!(
        server.stderr().contains("Origin"),
        "missing origin warning:\n{}",
        server.stderr()
    );
}

#[tokio::test]
async fn certificate_verification_still_applies_without_insecure() {
    let dir = tempfile::tempdir().unwrap();
    let (cert, key) = self_signed(dir.path());
    let server = ServerProc::start(&["--tls-cert", &cert, "--tls-key", &key]);
    // A client that checks certificates refuses ours; the server survives the failed handshake.
    let refused = connect(&server.ws_url("/"), ClientOptions::default()).await;
    assert!(
        refused.is_err(),
        "a self-signed certificate must not verify"
    );
    let options = ClientOptions {
        insecure: true,
        ..ClientOptions::default()
    };
    let mut c = ws_with(&server.ws_url("/"), options).await;
    c.send_text("after a failed handshake").await;
    assert_eq!(c.next_text().await, "after a failed handshake");
}

#[tokio::test]
async fn plain_http_to_a_tls_port_is_dropped() {
    let dir = tempfile::tempdir().unwrap();
    let (cert, key) = self_signed(dir.path());
    let server = ServerProc::start(&["--tls-cert", &cert, "--tls-key", &key]);
    let (status, _, _) = http_raw(&server.addr(), "GET", "/health", &[]).await;
    assert_ne!(status, 200, "plaintext must not be served on the TLS port");
}

#[test]
fn bad_tls_files_fail_at_startup() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("missing.pem");
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_switchboard"))
        .args(["serve", "--listen", "127.0.0.1:0", "--tls-cert"])
        .arg(&missing)
        .arg("--tls-key")
        .arg(&missing)
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(out.stdout.is_empty(), "no listening line on failure");
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("certificate"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}
