//! Helpers shared by the interop tests: an in-process echo server on hyper, locating the
//! third-party peers (Node `ws`, Python `websockets`) and running their scripts.
#![allow(dead_code)]

use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::Arc;
use std::time::Duration;

use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use switchboard_websocket::handshake::is_upgrade_request;
use switchboard_websocket::upgrade::{upgrade, UpgradeOptions};
use switchboard_websocket::Message;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::net::TcpListener;
use tokio::process::{Child, Command};

/// Directory holding the interop scripts.
pub fn interop_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("interop")
}

/// Start an echo server (every text/binary message is sent back with its type) on
/// 127.0.0.1 with an ephemeral port.
pub async fn start_echo_server(options: UpgradeOptions) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let options = Arc::new(options);
    tokio::spawn(async move {
        loop {
            let Ok((tcp, _)) = listener.accept().await else {
                return;
            };
            tcp.set_nodelay(true).unwrap();
            let options = options.clone();
            tokio::spawn(async move {
                let service = service_fn(move |mut req: Request<Incoming>| {
                    let options = options.clone();
                    async move {
                        if !is_upgrade_request(req.headers()) {
                            return Ok::<_, Infallible>(Response::new("plain http\n".to_string()));
                        }
                        Ok(match upgrade(&mut req, &options) {
                            Ok(acc) => {
                                tokio::spawn(async move {
                                    let ws = acc.upgrade.await.expect("upgrade");
                                    let (mut r, mut w) = ws.split();
                                    while let Some(Ok(m)) = r.next().await {
                                        if matches!(m, Message::Text(_) | Message::Binary(_))
                                            && w.send(m).await.is_err()
                                        {
                                            break;
                                        }
                                    }
                                });
                                acc.response
                            }
                            Err(rej) => *rej,
                        })
                    }
                });
                let _ = http1::Builder::new()
                    .serve_connection(TokioIo::new(tcp), service)
                    .with_upgrades()
                    .await;
            });
        }
    });
    addr
}

/// The next text, binary or close message, skipping pings and pongs (peers send keepalive
/// pings on their own schedule).
pub async fn next_data<S>(ws: &mut switchboard_websocket::stream::WebSocket<S>) -> Message
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    loop {
        match ws.next().await {
            Some(Ok(Message::Ping(_) | Message::Pong(_))) => continue,
            Some(Ok(m)) => return m,
            other => panic!("expected a message, got {other:?}"),
        }
    }
}

/// Whether `program --version` runs.
pub fn has_program(program: &str) -> bool {
    std::process::Command::new(program)
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .map(|s| s.success())
        .unwrap_or(false)
}

/// The Node `ws` package is installed next to the scripts and `node` runs.
pub fn node_ready() -> Result<(), String> {
    if !has_program("node") {
        return Err("`node` is not installed".into());
    }
    if !interop_dir().join("node_modules/ws/package.json").exists() {
        return Err(
            "Node `ws` is missing; run `npm install --prefix crates/websocket/interop`".into(),
        );
    }
    Ok(())
}

/// The Python interpreter of the interop venv, if it has `websockets`.
pub fn python_ready() -> Result<PathBuf, String> {
    let py = interop_dir().join(".venv/bin/python");
    let ok = std::process::Command::new(&py)
        .args(["-c", "import websockets"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .map(|s| s.success())
        .unwrap_or(false);
    if ok {
        Ok(py)
    } else {
        Err(
            "the Python venv with `websockets` is missing; run `python3 -m venv \
             crates/websocket/interop/.venv && crates/websocket/interop/.venv/bin/pip install \
             -r crates/websocket/interop/requirements.txt`"
                .into(),
        )
    }
}

/// Run a script to completion (bounded by `limit`) and return its success and stdout.
pub async fn run_script(program: &Path, args: &[&str], limit: Duration) -> (bool, String) {
    let child = Command::new(program)
        .args(args)
        .current_dir(interop_dir())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .kill_on_drop(true)
        .spawn()
        .expect("spawn interop script");
    let out = tokio::time::timeout(limit, child.wait_with_output())
        .await
        .expect("interop script timed out")
        .expect("wait for interop script");
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    println!("{stdout}");
    (out.status.success(), stdout)
}

/// Parse `SUMMARY passed=N failed=M` from a script's output.
pub fn summary(stdout: &str) -> (usize, usize) {
    let line = stdout
        .lines()
        .find(|l| l.starts_with("SUMMARY "))
        .expect("script printed no SUMMARY line");
    let num = |key: &str| -> usize {
        line.split_whitespace()
            .find_map(|w| w.strip_prefix(key))
            .and_then(|v| v.parse().ok())
            .expect("malformed SUMMARY line")
    };
    (num("passed="), num("failed="))
}

/// A peer server started as a child process that prints `LISTENING <port>` first; the rest
/// of its stdout is collected for later assertions.
pub struct PeerServer {
    pub port: u16,
    child: Child,
    lines: tokio::sync::mpsc::UnboundedReceiver<String>,
}

impl PeerServer {
    pub async fn start(program: &Path, args: &[&str]) -> PeerServer {
        let mut child = Command::new(program)
            .args(args)
            .current_dir(interop_dir())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .kill_on_drop(true)
            .spawn()
            .expect("spawn peer server");
        let mut out = BufReader::new(child.stdout.take().unwrap()).lines();
        let first = tokio::time::timeout(Duration::from_secs(20), out.next_line())
            .await
            .expect("peer server did not start in time")
            .unwrap()
            .expect("peer server exited before listening");
        let port = first
            .strip_prefix("LISTENING ")
            .and_then(|p| p.trim().parse().ok())
            .unwrap_or_else(|| panic!("unexpected first line {first:?}"));
        let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
        tokio::spawn(async move {
            while let Ok(Some(l)) = out.next_line().await {
                println!("peer: {l}");
                let _ = tx.send(l);
            }
        });
        PeerServer {
            port,
            child,
            lines: rx,
        }
    }

    /// Wait (bounded) until the server printed a line satisfying `pred`.
    pub async fn expect_line(&mut self, pred: impl Fn(&str) -> bool) -> String {
        tokio::time::timeout(Duration::from_secs(20), async {
            loop {
                let l = self.lines.recv().await.expect("peer server output ended");
                if pred(&l) {
                    return l;
                }
            }
        })
        .await
        .expect("expected line not printed by the peer server")
    }

    pub async fn stop(mut self) {
        let _ = self.child.kill().await;
    }
}
