//! Helpers shared by the `server_*` integration tests: start the real binary, talk to it
//! with our WebSocket client or raw TCP, and bound every wait so a broken server fails a test
//! instead of hanging it.
#![allow(dead_code)]

use std::io::{BufRead, BufReader, Read};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{mpsc, Arc, Mutex};
use std::time::{Duration, Instant};

use switchboard_websocket::client::{connect, ClientOptions, MaybeTlsStream};
use switchboard_websocket::handshake::ClientRequest;
use switchboard_websocket::stream::{WsReader, WsWriter};
use switchboard_websocket::{CloseFrame, Message};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Upper bound for any single wait.
pub const WAIT: Duration = Duration::from_secs(15);

/// A running `switchboard serve` child process, killed on drop.
pub struct ServerProc {
    child: Child,
    /// The port it listens on.
    pub port: u16,
    /// `http` or `https`.
    pub scheme: String,
    stderr: Arc<Mutex<String>>,
}

impl ServerProc {
    /// Start `switchboard serve --listen 127.0.0.1:0 ARGS` with no `SWITCHBOARD_*` variables
    /// from our environment, and wait for its listening line.
    pub fn start(args: &[&str]) -> ServerProc {
        Self::start_with_env(args, &[])
    }

    /// Like [`ServerProc::start`], with extra environment variables.
    pub fn start_with_env(args: &[&str], env: &[(&str, &str)]) -> ServerProc {
        Self::spawn(args, env, None)
    }

    /// Like [`ServerProc::start`], with the open-files limit (`RLIMIT_NOFILE`) of the server
    /// process set to `nofile`.
    pub fn start_with_nofile(args: &[&str], nofile: u64) -> ServerProc {
        Self::spawn(args, &[], Some(nofile))
    }

    fn spawn(args: &[&str], env: &[(&str, &str)], nofile: Option<u64>) -> ServerProc {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_switchboard"));
        if let Some(limit) = nofile {
            use std::os::unix::process::CommandExt;
            let rlim = libc::rlimit {
                rlim_cur: limit as libc::rlim_t,
                rlim_max: limit as libc::rlim_t,
            };
            // SAFETY: setrlimit(2) is async-signal-safe and only touches the child.
            unsafe {
                cmd.pre_exec(move || {
                    if libc::setrlimit(libc::RLIMIT_NOFILE, &rlim) != 0 {
                        return Err(std::io::Error::last_os_error());
                    }
                    Ok(())
                });
            }
        }
        cmd.arg("serve")
            .arg("--listen")
            .arg("127.0.0.1:0")
            .args(args);
        for (k, _) in std::env::vars() {
            if k.starts_with("SWITCHBOARD_") || k == "RUST_LOG" {
                cmd.env_remove(k);
            }
        }
        cmd.env("SWITCHBOARD_LOG_LEVEL", "debug");
        for (k, v) in env {
            cmd.env(k, v);
        }
        cmd.stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = cmd.spawn().expect("spawn switchboard");

        let stderr = Arc::new(Mutex::new(String::new()));
        let mut err_pipe = child.stderr.take().unwrap();
        let sink = Arc::clone(&stderr);
        std::thread::spawn(move || {
            let mut buf = [0u8; 4096];
            while let Ok(n) = err_pipe.read(&mut buf) {
                if n == 0 {
                    break;
                }
                let mut s = sink.lock().unwrap();
                s.push_str(&String::from_utf8_lossy(&buf[..n]));
                if s.len() > 200_000 {
                    let cut = s.len() - 100_000;
                    let cut = (cut..s.len()).find(|&i| s.is_char_boundary(i)).unwrap_or(0);
                    s.drain(..cut);
                }
            }
        });

        let (tx, rx) = mpsc::channel();
        let out = child.stdout.take().unwrap();
        std::thread::spawn(move || {
            let mut lines = BufReader::new(out).lines();
            if let Some(Ok(line)) = lines.next() {
                let _ = tx.send(line);
            }
            // Keep draining so the child never blocks on a full pipe.
            for _ in lines {}
        });
        let line = match rx.recv_timeout(WAIT) {
            Ok(line) => line,
            Err(_) => {
                let _ = child.kill();
                panic!("no listening line; stderr:\n{}", stderr.lock().unwrap());
            }
        };
        let rest = line
            .strip_prefix("Switchboard listening on ")
            .unwrap_or_else(|| panic!("unexpected first line {line:?}"));
        let (scheme, addr) = rest.split_once("://").expect("url");
        let port = addr.rsplit(':').next().unwrap().parse().expect("port");
        assert!(
            addr.starts_with("127.0.0.1:"),
            "listening line names the bound address: {line}"
        );
        ServerProc {
            child,
            port,
            scheme: scheme.to_string(),
            stderr,
        }
    }

    /// `ws://127.0.0.1:PORT{path}` (or `wss://`).
    pub fn ws_url(&self, path: &str) -> String {
        let scheme = if self.scheme == "https" { "wss" } else { "ws" };
        format!("{scheme}://127.0.0.1:{}{path}", self.port)
    }

    /// `127.0.0.1:PORT`.
    pub fn addr(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// The process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Resident memory of the process in bytes (`VmRSS` of `/proc/<pid>/status`).
    pub fn rss_bytes(&self) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id()))
            .expect("read /proc/<pid>/status");
        let kib: u64 = status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.split_whitespace().next())
            .and_then(|v| v.parse().ok())
            .expect("VmRSS line");
        kib * 1024
    }

    /// What the server logged so far.
    pub fn stderr(&self) -> String {
        self.stderr.lock().unwrap().clone()
    }

    /// Send SIGTERM.
    pub fn terminate(&self) {
        // SAFETY: kill(2) with a pid we own and a valid signal number.
        let rc = unsafe { libc::kill(self.child.id() as libc::pid_t, libc::SIGTERM) };
        assert_eq!(rc, 0, "kill failed");
    }

    /// Wait for the process to exit, at most `limit`.
    pub fn wait_exit(&mut self, limit: Duration) -> Option<ExitStatus> {
        let end = Instant::now() + limit;
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return Some(status);
            }
            if Instant::now() > end {
                return None;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for ServerProc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A connected client, split into halves.
pub struct Client {
    /// Read half.
    pub reader: WsReader<MaybeTlsStream>,
    /// Write half.
    pub writer: WsWriter<MaybeTlsStream>,
}

/// Connect with default options (deflate offered).
pub async fn ws(url: &str) -> Client {
    ws_with(url, ClientOptions::default()).await
}

/// Connect with the given options.
pub async fn ws_with(url: &str, options: ClientOptions) -> Client {
    let (socket, _response) = tokio::time::timeout(WAIT, connect(url, options))
        .await
        .expect("connect timed out")
        .unwrap_or_else(|e| panic!("connect {url}: {e}"));
    let (reader, writer) = socket.split();
    Client { reader, writer }
}

impl Client {
    /// Send a text message.
    pub async fn send_text(&mut self, s: &str) {
        self.writer.send(Message::text(s)).await.expect("send");
    }

    /// The next text or binary message (pings and pongs skipped).
    pub async fn next_data(&mut self) -> Message {
        tokio::time::timeout(WAIT, async {
            loop {
                match self.reader.next().await {
                    Some(Ok(m @ (Message::Text(_) | Message::Binary(_)))) => return m,
                    Some(Ok(Message::Ping(_) | Message::Pong(_))) => {}
                    other => panic!("expected a data message, got {other:?}"),
                }
            }
        })
        .await
        .expect("no message in time")
    }

    /// The next text message as a string.
    pub async fn next_text(&mut self) -> String {
        match self.next_data().await {
            Message::Text(b) => String::from_utf8(b.to_vec()).unwrap(),
            other => panic!("expected text, got {other:?}"),
        }
    }

    /// Read until the server's close frame (data messages are skipped) and return it.
    pub async fn expect_close(&mut self) -> Option<CloseFrame> {
        tokio::time::timeout(WAIT, async {
            loop {
                match self.reader.next().await {
                    Some(Ok(Message::Close(frame))) => return frame,
                    Some(Ok(_)) => {}
                    other => panic!("expected a close frame, got {other:?}"),
                }
            }
        })
        .await
        .expect("no close frame in time")
    }
}

/// Send a raw HTTP/1.1 request and return (status, head, body). `extra` are header lines.
pub async fn http_raw(
    addr: &str,
    method: &str,
    path: &str,
    extra: &[&str],
) -> (u16, String, String) {
    let mut tcp = TcpStream::connect(addr).await.expect("tcp connect");
    let mut req = format!("{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n");
    for h in extra {
        req.push_str(h);
        req.push_str("\r\n");
    }
    req.push_str("\r\n");
    tcp.write_all(req.as_bytes()).await.unwrap();
    let mut buf = Vec::new();
    // A 101 keeps the connection open: stop at the end of the head in that case.
    let read = async {
        let mut chunk = [0u8; 8192];
        loop {
            let n = tcp.read(&mut chunk).await.unwrap_or(0);
            if n == 0 {
                break;
            }
            buf.extend_from_slice(&chunk[..n]);
            if buf.starts_with(b"HTTP/1.1 101") && buf.windows(4).any(|w| w == b"\r\n\r\n") {
                break;
            }
        }
    };
    tokio::time::timeout(WAIT, read)
        .await
        .expect("HTTP response in time");
    split_response(&buf)
}

/// An HTTP response's status (0 when there is none), head and body.
pub fn split_response(raw: &[u8]) -> (u16, String, String) {
    let text = String::from_utf8_lossy(raw).to_string();
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let status = head
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    (status, head.to_string(), body.to_string())
}

/// Header lines of a valid WebSocket upgrade request.
pub fn upgrade_headers() -> Vec<&'static str> {
    vec![
        "Upgrade: websocket",
        "Connection: Upgrade",
        "Sec-WebSocket-Version: 13",
        "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==",
    ]
}

/// Open a TCP connection and complete a WebSocket handshake by hand, returning the socket
/// and any bytes that followed the response head. Used for peers that misbehave on purpose.
pub async fn raw_ws(
    addr: &str,
    path: &str,
    socket: Option<tokio::net::TcpSocket>,
) -> (TcpStream, Vec<u8>) {
    let mut tcp = match socket {
        Some(s) => s.connect(addr.parse().unwrap()).await.expect("tcp connect"),
        None => TcpStream::connect(addr).await.expect("tcp connect"),
    };
    let req = ClientRequest::new(addr, path, &[], None, &http::HeaderMap::new());
    tcp.write_all(&req.bytes).await.unwrap();
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    let head_end = tokio::time::timeout(WAIT, async {
        loop {
            let n = tcp.read(&mut chunk).await.expect("read handshake");
            assert!(n > 0, "server closed during the handshake");
            buf.extend_from_slice(&chunk[..n]);
            if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                return i + 4;
            }
        }
    })
    .await
    .expect("handshake response in time");
    assert!(
        buf.starts_with(b"HTTP/1.1 101"),
        "expected 101, got {}",
        String::from_utf8_lossy(&buf)
    );
    let rest = buf.split_off(head_end);
    (tcp, rest)
}

/// One masked client text frame (FIN set) carrying `payload`, for peers driven by hand.
pub fn masked_text_frame(payload: &[u8]) -> Vec<u8> {
    let mask = [0x37u8, 0xfa, 0x21, 0x3d];
    let mut frame = vec![0x81u8];
    match payload.len() {
        n if n < 126 => frame.push(0x80 | n as u8),
        n if n <= 0xffff => {
            frame.push(0x80 | 126);
            frame.extend_from_slice(&(n as u16).to_be_bytes());
        }
        n => {
            frame.push(0x80 | 127);
            frame.extend_from_slice(&(n as u64).to_be_bytes());
        }
    }
    frame.extend_from_slice(&mask);
    frame.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
    frame
}

/// Read until the server closes the socket (EOF or reset); returns everything read.
/// Panics if that does not happen within `limit`.
pub async fn read_until_closed(tcp: &mut TcpStream, limit: Duration) -> Vec<u8> {
    let mut all = Vec::new();
    let mut chunk = vec![0u8; 64 * 1024];
    tokio::time::timeout(limit, async {
        loop {
            match tcp.read(&mut chunk).await {
                Ok(0) | Err(_) => return,
                Ok(n) => all.extend_from_slice(&chunk[..n]),
            }
        }
    })
    .await
    .expect("server did not close the socket in time");
    all
}
