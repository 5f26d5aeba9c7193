//! `switchboard connect` against real peers: the `switchboard serve` binary, the echo example,
//! and a small test server (headers, subprotocols, custom close codes, dropped connections).
mod examples_support;

use std::convert::Infallible;
use std::io::{BufRead, BufReader, Write};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;

use examples_support::{example, finish, run, serve, start, switchboard, Output, Running, LIMIT};
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use switchboard::websocket::upgrade::{upgrade, UpgradeOptions};
use switchboard::websocket::{CloseCode, Message};

fn connect(url: &str, args: &[&str]) -> Command {
    let mut cmd = switchboard();
    cmd.arg("connect").arg(url).args(args);
    cmd
}

fn echo_example() -> Running {
    let mut cmd = example("echo_server");
    cmd.args(["--port", "0"]);
    start(cmd)
}

fn received(out: &Output) -> Vec<&str> {
    out.stdout.lines().filter(|l| l.starts_with("< ")).collect()
}

fn sent(out: &Output) -> Vec<&str> {
    out.stdout.lines().filter(|l| l.starts_with("> ")).collect()
}

#[test]
fn execute_then_wait_prints_the_room_echo() {
    let server = serve(&["--welcome", "welcome!"]);
    let out = run(connect(
        &server.ws_url("/"),
        &["--execute", "hi", "--wait", "2"],
    ));
    assert!(out.status.success(), "{out:?}");
    assert_eq!(received(&out), ["< welcome!", "< hi"], "{out:?}");
    assert_eq!(sent(&out), ["> hi"], "{out:?}");
    assert!(
        out.stderr.contains("connected to ws://127.0.0.1:"),
        "{out:?}"
    );
    assert!(out.stderr.contains("closed: 1000"), "{out:?}");
}

#[test]
fn binary_hex_round_trip_through_serve() {
    let server = serve(&[]);
    let out = run(connect(
        &server.ws_url("/bin"),
        &["--binary", "-x", "de ad be ef", "-x", "00FF", "--wait", "2"],
    ));
    assert!(out.status.success(), "{out:?}");
    assert_eq!(
        received(&out),
        ["< [binary 4 bytes] deadbeef", "< [binary 2 bytes] 00ff"],
        "{out:?}"
    );
}

#[test]
fn execute_without_wait_against_echo_example() {
    // The echo example answers each message before it reads our close frame, so both
    // echoes arrive even though we close right after sending.
    let server = echo_example();
    let out = run(connect(&server.ws_url("/"), &["-x", "one", "-x", "two"]));
    assert!(out.status.success(), "{out:?}");
    assert_eq!(sent(&out), ["> one", "> two"], "{out:?}");
    assert_eq!(received(&out), ["< one", "< two"], "{out:?}");
}

#[test]
fn binary_file_is_sent_as_one_binary_message() {
    let server = echo_example();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("all-bytes.bin");
    let bytes: Vec<u8> = (0..=255u8).collect();
    std::fs::write(&path, &bytes).unwrap();
    let out = run(connect(
        &server.ws_url("/"),
        &["--binary-file", path.to_str().unwrap()],
    ));
    assert!(out.status.success(), "{out:?}");
    let hex: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
    assert_eq!(
        received(&out),
        [format!("< [binary 256 bytes] {hex}").as_str()],
        "{out:?}"
    );
}

/// Spawn `connect` with stdin and stdout as pipes; stderr is collected at the end.
fn spawn_interactive(cmd: &mut Command) -> (Child, mpsc::Receiver<String>) {
    let mut child = cmd
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn connect");
    let stdout = child.stdout.take().unwrap();
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    (child, rx)
}

fn wait_for_line(lines: &mpsc::Receiver<String>, want: &str) {
    loop {
        match lines.recv_timeout(LIMIT) {
            Ok(l) if l == want => return,
            Ok(_) => {}
            Err(_) => panic!("never printed {want:?}"),
        }
    }
}

#[test]
fn stdin_lines_are_sent_and_eof_closes_normally() {
    let server = serve(&[]);
    let (mut child, lines) = spawn_interactive(&mut connect(&server.ws_url("/chat"), &[]));
    let mut stdin = child.stdin.take().unwrap();
    writeln!(stdin, "first line").unwrap();
    wait_for_line(&lines, "< first line");
    // Windows line endings are not part of the message.
    write!(stdin, "second\r\n").unwrap();
    wait_for_line(&lines, "< second");
    drop(stdin);
    let out = finish(child);
    assert!(out.status.success(), "{out:?}");
    assert!(out.stderr.contains("closed: 1000"), "{out:?}");
}

#[test]
fn ctrl_c_closes_with_1000() {
    let server = echo_example();
    let mut cmd = connect(&server.ws_url("/"), &[]);
    let mut child = cmd
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let stderr = child.stderr.take().unwrap();
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines() {
            let Ok(line) = line else { break };
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    wait_for_line_prefix(&rx, "connected to ");
    // SAFETY: plain FFI call with a pid we own and a valid signal number.
    assert_eq!(unsafe { libc::kill(child.id() as i32, libc::SIGINT) }, 0);
    let out = finish(child);
    let rest: Vec<String> = rx.iter().collect();
    assert!(out.status.success(), "{out:?} {rest:?}");
    assert!(
        rest.iter().any(|l| l.starts_with("closed: 1000")),
        "{rest:?}"
    );
}

fn wait_for_line_prefix(lines: &mpsc::Receiver<String>, prefix: &str) {
    loop {
        match lines.recv_timeout(LIMIT) {
            Ok(l) if l.starts_with(prefix) => return,
            Ok(_) => {}
            Err(_) => panic!("never printed a line starting with {prefix:?}"),
        }
    }
}

#[test]
fn server_shutdown_1001_exits_zero() {
    let server = serve(&[]);
    let mut cmd = connect(&server.ws_url("/"), &[]);
    let (mut child, lines) = spawn_interactive(&mut cmd);
    let mut stdin = child.stdin.take().unwrap();
    // Once our own message has come back the server knows us.
    writeln!(stdin, "ping me").unwrap();
    wait_for_line(&lines, "< ping me");
    // SIGTERM: the server closes every connection with 1001 and exits.
    // SAFETY: plain FFI call with a valid signal number.
    assert_eq!(unsafe { libc::kill(server.pid() as i32, libc::SIGTERM) }, 0);
    // stdin stays open: the server's close alone ends the session.
    let out = finish(child);
    drop(stdin);
    assert!(out.status.success(), "{out:?}");
    assert!(out.stderr.contains("closed: 1001"), "{out:?}");
}

#[test]
fn message_too_big_close_is_reported_and_fails() {
    let server = serve(&["--max-message-size", "16"]);
    let big = "x".repeat(64);
    let out = run(connect(&server.ws_url("/"), &["-x", &big, "--wait", "60"]));
    assert!(!out.status.success(), "{out:?}");
    assert!(out.stderr.contains("closed: 1009"), "{out:?}");
}

#[test]
fn nothing_listening_fails_with_a_clear_message() {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let out = run(connect(&format!("ws://127.0.0.1:{port}/"), &["-x", "hi"]));
    assert!(!out.status.success(), "{out:?}");
    assert!(
        out.stderr
            .contains(&format!("cannot connect to ws://127.0.0.1:{port}/")),
        "{out:?}"
    );
    assert!(out.stdout.is_empty(), "{out:?}");
}

#[test]
fn bad_arguments_exit_with_2() {
    let out = run(connect("ws://127.0.0.1:9/", &["--binary", "-x", "abc"]));
    assert_eq!(out.status.code(), Some(2), "{out:?}");
    assert!(out.stderr.contains("hex"), "{out:?}");
    let out = run(connect("ws://127.0.0.1:9/", &["--header", "no colon here"]));
    assert_eq!(out.status.code(), Some(2), "{out:?}");
    let out = run(connect(
        "ws://127.0.0.1:9/",
        &["--binary-file", "/nonexistent/file"],
    ));
    assert_eq!(out.status.code(), Some(2), "{out:?}");
}

#[test]
fn deflate_is_offered_unless_disabled() {
    let server = echo_example();
    let out = run(connect(&server.ws_url("/"), &["-x", "z"]));
    assert!(out.status.success(), "{out:?}");
    assert!(out.stderr.contains("(permessage-deflate)"), "{out:?}");
    let out = run(connect(&server.ws_url("/"), &["-x", "z", "--no-deflate"]));
    assert!(out.status.success(), "{out:?}");
    assert!(!out.stderr.contains("permessage-deflate"), "{out:?}");
    assert_eq!(received(&out), ["< z"], "{out:?}");
}

/// A server for the cases `serve` does not produce: it reports the request's `X-Token` header
/// and the agreed subprotocol (`/report`), closes with 4001 (`/close4001`), drops the TCP
/// connection without a close frame (`/drop`) or refuses with 403 (anything else).
struct TestServer {
    port: u16,
    _runtime: tokio::runtime::Runtime,
}

impl TestServer {
    fn start() -> TestServer {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .unwrap();
        let listener = runtime
            .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
            .unwrap();
        let port = listener.local_addr().unwrap().port();
        runtime.spawn(async move {
            while let Ok((tcp, _)) = listener.accept().await {
                tokio::spawn(async move {
                    let _ = http1::Builder::new()
                        .serve_connection(TokioIo::new(tcp), service_fn(Self::handle))
                        .with_upgrades()
                        .await;
                });
            }
        });
        TestServer {
            port,
            _runtime: runtime,
        }
    }

    fn url(&self, path: &str) -> String {
        format!("ws://127.0.0.1:{}{path}", self.port)
    }

    async fn handle(mut req: Request<Incoming>) -> Result<Response<String>, Infallible> {
        let path = req.uri().path().to_string();
        if !matches!(path.as_str(), "/report" | "/close4001" | "/drop") {
            return Ok(Response::builder()
                .status(403)
                .body("forbidden\n".into())
                .unwrap());
        }
        let token = req
            .headers()
            .get("x-token")
            .and_then(|v| v.to_str().ok())
            .unwrap_or("(none)")
            .to_string();
        let options = UpgradeOptions {
            protocols: vec!["chat".to_string()],
            ..UpgradeOptions::default()
        };
        let accepted = match upgrade(&mut req, &options) {
            Ok(a) => a,
            Err(rejection) => return Ok(*rejection),
        };
        let protocol = accepted.protocol.clone().unwrap_or_else(|| "(none)".into());
        tokio::spawn(async move {
            let Ok(mut ws) = accepted.upgrade.await else {
                return;
            };
            match path.as_str() {
                "/report" => {
                    let _ = ws.send(Message::text(format!("x-token={token}"))).await;
                    let _ = ws.send(Message::text(format!("protocol={protocol}"))).await;
                    let _ = ws.close(CloseCode::NORMAL, "done").await;
                }
                "/close4001" => {
                    let _ = ws.close(CloseCode(4001), "custom").await;
                }
                _ => drop(ws),
            }
        });
        Ok(accepted.response)
    }
}

#[test]
fn headers_and_subprotocols_reach_the_server() {
    let server = TestServer::start();
    let out = run(connect(
        &server.url("/report"),
        &[
            "--header",
            "X-Token: s3cret",
            "--subprotocol",
            "other",
            "-s",
            "chat",
            "--wait",
            "60",
        ],
    ));
    // The server closes first, with 1000.
    assert!(out.status.success(), "{out:?}");
    assert_eq!(
        received(&out),
        ["< x-token=s3cret", "< protocol=chat"],
        "{out:?}"
    );
    assert!(out.stderr.contains("(subprotocol: chat)"), "{out:?}");
    assert!(out.stderr.contains("closed: 1000 done"), "{out:?}");
}

#[test]
fn other_close_codes_fail_and_are_printed() {
    let server = TestServer::start();
    let out = run(connect(&server.url("/close4001"), &["--wait", "60"]));
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    assert!(out.stderr.contains("closed: 4001 custom"), "{out:?}");
}

#[test]
fn dropped_connection_is_reported_as_1006() {
    let server = TestServer::start();
    let out = run(connect(&server.url("/drop"), &["--wait", "60"]));
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    assert!(out.stderr.contains("closed: 1006"), "{out:?}");
}

#[test]
fn handshake_refusal_reports_the_http_status() {
    let server = TestServer::start();
    let out = run(connect(&server.url("/private"), &["-x", "hi"]));
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    assert!(out.stderr.contains("403"), "{out:?}");
    assert!(out.stdout.is_empty(), "{out:?}");
}

fn self_signed(dir: &std::path::Path) -> (String, String) {
    let ck = rcgen::generate_simple_self_signed(vec!["localhost".into(), "127.0.0.1".into()])
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

#[test]
fn wss_with_a_self_signed_certificate_needs_insecure() {
    let dir = tempfile::tempdir().unwrap();
    let (cert, key) = self_signed(dir.path());
    let server = serve(&["--tls-cert", &cert, "--tls-key", &key]);
    let url = format!("wss://127.0.0.1:{}/tls", server.port);

    let out = run(connect(
        &url,
        &["--insecure", "-x", "secret", "--wait", "2"],
    ));
    assert!(out.status.success(), "{out:?}");
    assert_eq!(received(&out), ["< secret"], "{out:?}");

    // Without --insecure the certificate is checked against the public roots and refused.
    let out = run(connect(&url, &["-x", "secret"]));
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    assert!(out.stderr.contains("cannot connect"), "{out:?}");
    assert!(out.stderr.to_lowercase().contains("certificate"), "{out:?}");
    assert!(out.stdout.is_empty(), "{out:?}");
}
