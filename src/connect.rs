//! `switchboard connect URL`: a small command-line WebSocket client, handy for poking at a
//! server by hand or from a shell script.
//!
//! # Behaviour
//!
//! * **Interactive** (no `--execute`, no `--binary-file`): every line read from stdin is sent
//!   as a text message (with `--binary`, as a binary message whose bytes are the line's hex
//!   digits). End of input closes the connection with 1000, after `--wait` seconds if given.
//! * **Scripted** (`--execute MSG`, repeatable, and/or `--binary-file PATH`): the messages are
//!   sent in order (the file last), stdin is not read, then the client keeps printing what
//!   arrives for `--wait` seconds (default 0) and closes with 1000.
//! * Received messages go to stdout: text as `< TEXT`, binary as
//!   `< [binary N bytes] HEX`. Sent messages are shown as `> TEXT` (same format otherwise),
//!   except when stdin and stdout are both the terminal: there the line just typed is
//!   already on screen, so repeating it would only be noise.
//! * Status lines go to stderr: `connected to …` after the handshake, and
//!   `closed: CODE REASON` when the connection ends.
//! * Ctrl-C closes with 1000 (a second Ctrl-C quits without waiting for the close handshake).
//!
//! # Exit status
//!
//! * `0` — we closed (end of input, `--wait` elapsed, Ctrl-C), or the peer closed with 1000
//!   (normal), 1001 (going away) or an empty close frame (no status code, still a clean
//!   close handshake).
//! * `1` — any other close code, a protocol error, the connection dropping without a close
//!   frame (reported as 1006), or a failed connect / handshake (the message includes the
//!   HTTP status the server answered with).
//! * `2` — invalid arguments (bad header, bad hex, unreadable file).
use std::io::{BufRead, IsTerminal};
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use bytes::Bytes;
use clap::Args;
use http::{HeaderName, HeaderValue};
use switchboard_server::config::parse_secs;
use switchboard_websocket::client::{connect, ClientOptions, ClientResponse, MaybeTlsStream};
use switchboard_websocket::stream::WsReader;
use switchboard_websocket::{CloseCode, CloseFrame, Error, Message};
use tokio::sync::mpsc;

/// Shown after the flags in `switchboard connect --help`.
const AFTER_HELP: &str = "\
Output: received messages on stdout as `< TEXT` or `< [binary N bytes] HEX`; sent ones as
`> ...` (not when typing at a terminal, which already shows the line). Status lines, such as
`closed: CODE REASON`, go to stderr.

Without --execute or --binary-file, each stdin line is sent; end of input closes with 1000.
Ctrl-C closes with 1000.

Exit status: 0 after our own close or the server's 1000, 1001 or empty close; 1 for any other
close code, a lost connection (1006) or a failed handshake; 2 for invalid arguments.";

/// Flags of the `connect` command.
#[derive(Debug, Clone, Args)]
#[command(after_help = AFTER_HELP)]
pub struct ConnectArgs {
    /// `ws://` or `wss://` URL to connect to.
    pub url: String,

    /// Send MSG after connecting instead of reading stdin (repeatable; sent in order).
    #[arg(short = 'x', long = "execute", value_name = "MSG")]
    pub execute: Vec<String>,

    /// Seconds to keep printing received messages after the last message was sent
    /// (after `--execute`, or after end of stdin), before closing with 1000 [default: 0].
    #[arg(short = 'w', long, value_name = "SECS", value_parser = parse_secs)]
    pub wait: Option<Duration>,

    /// Send binary messages: stdin lines and `--execute` values are hex (`48 69` or `4869`).
    #[arg(short = 'b', long)]
    pub binary: bool,

    /// Send the bytes of this file as one binary message (after any `--execute` messages).
    #[arg(long, value_name = "PATH")]
    pub binary_file: Option<PathBuf>,

    /// Extra request header, `Name: value` (repeatable).
    #[arg(short = 'H', long = "header", value_name = "K:V", value_parser = parse_header)]
    pub headers: Vec<(HeaderName, HeaderValue)>,

    /// Subprotocol to offer in `Sec-WebSocket-Protocol` (repeatable, in order of preference).
    #[arg(short = 's', long = "subprotocol", value_name = "P")]
    pub subprotocols: Vec<String>,

    /// Do not offer permessage-deflate compression.
    #[arg(long)]
    pub no_deflate: bool,

    /// Accept any TLS certificate for wss:// (self-signed development certificates only).
    #[arg(short = 'k', long)]
    pub insecure: bool,

    /// Seconds allowed for connecting: TCP, TLS and the HTTP upgrade together.
    #[arg(long, value_name = "SECS", default_value = "10", value_parser = parse_secs)]
    pub timeout: Duration,
}

/// Parse `Name: value` (spaces around either part are ignored).
fn parse_header(s: &str) -> Result<(HeaderName, HeaderValue), String> {
    let (name, value) = s
        .split_once(':')
        .ok_or_else(|| format!("header {s:?} must look like Name:value"))?;
    let name = HeaderName::from_bytes(name.trim().as_bytes())
        .map_err(|_| format!("invalid header name in {s:?}"))?;
    let value = HeaderValue::from_str(value.trim())
        .map_err(|_| format!("invalid header value in {s:?}"))?;
    Ok((name, value))
}

/// Decode hex digits, ignoring whitespace between them.
fn parse_hex(s: &str) -> Result<Vec<u8>, String> {
    let digits: Vec<u8> = s.bytes().filter(|b| !b.is_ascii_whitespace()).collect();
    if digits.len() % 2 != 0 {
        return Err(format!("odd number of hex digits in {s:?}"));
    }
    let nibble = |d: u8| match d {
        b'0'..=b'9' => Ok(d - b'0'),
        b'a'..=b'f' => Ok(d - b'a' + 10),
        b'A'..=b'F' => Ok(d - b'A' + 10),
        _ => Err(format!("not a hex digit: {:?} in {s:?}", d as char)),
    };
    digits
        .chunks(2)
        .map(|p| Ok(nibble(p[0])? << 4 | nibble(p[1])?))
        .collect()
}

/// Lowercase hex without separators.
fn to_hex(data: &[u8]) -> String {
    use std::fmt::Write;
    let mut s = String::with_capacity(data.len() * 2);
    for b in data {
        let _ = write!(s, "{b:02x}");
    }
    s
}

/// The line printed for a data message, after the `< ` or `> ` marker.
fn describe(msg: &Message) -> Option<String> {
    match msg {
        Message::Text(t) => Some(String::from_utf8_lossy(t).into_owned()),
        Message::Binary(b) => Some(format!("[binary {} bytes] {}", b.len(), to_hex(b))),
        _ => None,
    }
}

/// Turn one user-supplied value (a stdin line or `--execute` value) into a message.
fn user_message(s: &str, binary: bool) -> Result<Message, String> {
    if binary {
        Ok(Message::Binary(Bytes::from(parse_hex(s)?)))
    } else {
        Ok(Message::text(s))
    }
}

/// The messages of scripted mode, or `None` for interactive mode.
fn scripted_messages(args: &ConnectArgs) -> Result<Option<Vec<Message>>, String> {
    if args.execute.is_empty() && args.binary_file.is_none() {
        return Ok(None);
    }
    let mut out = args
        .execute
        .iter()
        .map(|s| user_message(s, args.binary))
        .collect::<Result<Vec<_>, _>>()?;
    if let Some(path) = &args.binary_file {
        let data =
            std::fs::read(path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
        out.push(Message::Binary(Bytes::from(data)));
    }
    Ok(Some(out))
}

/// Read stdin on a plain thread: a blocking read cannot be cancelled, and a detached thread
/// does not keep the process alive once we are done (a runtime's blocking pool would).
fn spawn_stdin_reader(binary: bool, tx: mpsc::Sender<Message>) {
    std::thread::spawn(move || {
        for line in std::io::stdin().lock().lines() {
            let Ok(line) = line else { break };
            let line = line.strip_suffix('\r').unwrap_or(&line);
            match user_message(line, binary) {
                Ok(m) => {
                    if tx.blocking_send(m).is_err() {
                        break;
                    }
                }
                Err(e) => eprintln!("error: {e} (not sent)"),
            }
        }
        // Dropping `tx` tells the session that input has ended.
    });
}

/// How the read side ended.
enum ReadEnd {
    /// The close handshake happened (the peer's close frame, if it had a payload).
    Closed(Option<CloseFrame>),
    /// The transport ended without a close frame from the peer.
    Ended,
    /// A protocol or I/O error.
    Failed(Error),
}

/// Print every data message until the connection ends.
async fn read_loop(mut reader: WsReader<MaybeTlsStream>) -> ReadEnd {
    loop {
        match reader.next().await {
            Some(Ok(Message::Close(frame))) => return ReadEnd::Closed(frame),
            Some(Ok(msg)) => {
                if let Some(line) = describe(&msg) {
                    println!("< {line}");
                }
            }
            Some(Err(e)) => return ReadEnd::Failed(e),
            None => return ReadEnd::Ended,
        }
    }
}

/// Report how the connection ended and choose the exit status.
fn finish(end: ReadEnd, we_closed: bool) -> ExitCode {
    match end {
        ReadEnd::Closed(Some(frame)) => {
            let code = frame.code.0;
            eprintln!("closed: {code} {}", frame.reason_str());
            if we_closed || code == CloseCode::NORMAL.0 || code == CloseCode::GOING_AWAY.0 {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            }
        }
        ReadEnd::Closed(None) => {
            eprintln!("closed: {} (no status code)", CloseCode::NO_STATUS.0);
            ExitCode::SUCCESS
        }
        ReadEnd::Ended if we_closed => {
            eprintln!("closed: the server did not answer our close frame");
            ExitCode::SUCCESS
        }
        ReadEnd::Ended => {
            eprintln!("closed: {} connection lost", CloseCode::ABNORMAL.0);
            ExitCode::FAILURE
        }
        ReadEnd::Failed(e) => {
            match e.close_code() {
                Some(c) => eprintln!("closed: {} {e}", c.0),
                None => eprintln!("closed: {} {e}", CloseCode::ABNORMAL.0),
            }
            ExitCode::FAILURE
        }
    }
}

/// Every Ctrl-C (SIGINT) as one `()`. On Unix the handler is installed before this returns.
fn interrupts() -> mpsc::UnboundedReceiver<()> {
    let (tx, rx) = mpsc::unbounded_channel();
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        match signal(SignalKind::interrupt()) {
            Ok(mut sig) => {
                tokio::spawn(
                    async move { while sig.recv().await.is_some() && tx.send(()).is_ok() {} },
                );
            }
            Err(e) => eprintln!("warning: cannot handle Ctrl-C: {e}"),
        }
    }
    #[cfg(not(unix))]
    tokio::spawn(
        async move { while tokio::signal::ctrl_c().await.is_ok() && tx.send(()).is_ok() {} },
    );
    rx
}

fn connected_line(url: &str, resp: &ClientResponse) -> String {
    let mut line = format!("connected to {url}");
    if let Some(p) = &resp.protocol {
        line.push_str(&format!(" (subprotocol: {p})"));
    }
    if resp.deflate.is_some() {
        line.push_str(" (permessage-deflate)");
    }
    line
}

/// Run the client until the connection ends; the return value is the process exit status.
pub fn run(args: ConnectArgs) -> ExitCode {
    let scripted = match scripted_messages(&args) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::from(2);
        }
    };
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let code = runtime.block_on(session(args, scripted));
    // Do not wait for anything still parked in the runtime.
    runtime.shutdown_background();
    code
}

async fn session(args: ConnectArgs, scripted: Option<Vec<Message>>) -> ExitCode {
    let mut options = ClientOptions::default();
    options.headers.extend(args.headers.iter().cloned());
    options.subprotocols = args.subprotocols.clone();
    if args.no_deflate {
        options.deflate = None;
    }
    options.insecure = args.insecure;
    options.connect_timeout = args.timeout;

    // Listen for Ctrl-C before anything is printed, so a script that waits for the
    // "connected" line and then interrupts us always reaches our handler.
    let mut interrupts = interrupts();
    let connecting = connect(&args.url, options);
    let (ws, resp) = tokio::select! {
        c = connecting => match c {
            Ok(c) => c,
            Err(e) => {
                eprintln!("error: cannot connect to {}: {e}", args.url);
                return ExitCode::FAILURE;
            }
        },
        Some(()) = interrupts.recv() => {
            eprintln!("interrupted");
            return ExitCode::from(130);
        }
    };
    eprintln!("{}", connected_line(&args.url, &resp));

    // Scripted messages go through the same channel as stdin lines, so both modes share
    // one loop; the channel closing means "no more input".
    let echo_sent =
        scripted.is_some() || !(std::io::stdin().is_terminal() && std::io::stdout().is_terminal());
    let (tx, mut input) = mpsc::channel::<Message>(64);
    match scripted {
        Some(msgs) => {
            tokio::spawn(async move {
                for m in msgs {
                    if tx.send(m).await.is_err() {
                        break;
                    }
                }
            });
        }
        None => spawn_stdin_reader(args.binary, tx),
    }

    let (reader, mut writer) = ws.split();
    let mut reader_task = tokio::spawn(read_loop(reader));
    let mut input_open = true;
    let mut close_at: Option<tokio::time::Instant> = None;
    let mut we_closed = false;
    loop {
        tokio::select! {
            end = &mut reader_task => {
                let end = end.unwrap_or_else(|e| {
                    ReadEnd::Failed(Error::Io(std::io::Error::other(e.to_string())))
                });
                return finish(end, we_closed);
            }
            msg = input.recv(), if input_open => match msg {
                Some(msg) => {
                    let line = describe(&msg);
                    if let Err(e) = writer.send(msg).await {
                        // The reader will tell why (close frame or lost connection).
                        eprintln!("error: send failed: {e}");
                        input_open = false;
                    } else if echo_sent {
                        if let Some(line) = line {
                            println!("> {line}");
                        }
                    }
                }
                None => {
                    input_open = false;
                    close_at = Some(tokio::time::Instant::now() + args.wait.unwrap_or_default());
                }
            },
            _ = tokio::time::sleep_until(close_at.unwrap_or_else(tokio::time::Instant::now)),
                if close_at.is_some() && !we_closed =>
            {
                we_closed = true;
                // An error here means the connection is already going away; the reader
                // reports how.
                let _ = writer.close(CloseCode::NORMAL, "").await;
            }
            Some(()) = interrupts.recv() => {
                if we_closed {
                    eprintln!("interrupted");
                    return ExitCode::from(130);
                }
                we_closed = true;
                input_open = false;
                let _ = writer.close(CloseCode::NORMAL, "").await;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hex_round_trip() {
        assert_eq!(parse_hex("00 ff 10").unwrap(), vec![0, 255, 16]);
        assert_eq!(parse_hex("DEADbeef").unwrap(), vec![0xde, 0xad, 0xbe, 0xef]);
        assert_eq!(parse_hex("").unwrap(), Vec::<u8>::new());
        assert!(parse_hex("abc").is_err());
        assert!(parse_hex("zz").is_err());
        assert_eq!(to_hex(&[0, 1, 0xab]), "0001ab");
    }

    #[test]
    fn headers() {
        let (n, v) = parse_header("X-Token:  abc def ").unwrap();
        assert_eq!((n.as_str(), v.to_str().unwrap()), ("x-token", "abc def"));
        assert!(parse_header("no-colon").is_err());
        assert!(parse_header("bad name: x").is_err());
    }

    #[test]
    fn describes_messages() {
        assert_eq!(describe(&Message::text("hi")).unwrap(), "hi");
        assert_eq!(
            describe(&Message::binary(vec![1u8, 2])).unwrap(),
            "[binary 2 bytes] 0102"
        );
        assert!(describe(&Message::Ping(Bytes::new())).is_none());
    }
}
