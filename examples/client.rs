//! A client, Node-style: connect, send `Hello`, print the first message that comes back,
//! then close the connection normally (1000).
//!
//! The Rust counterpart of the Node.js tutorial client:
//!
//! ```js
//! const ws = new WebSocket('ws://localhost:8080');
//! ws.on('open', () => ws.send('Hello'));
//! ws.on('message', (data) => { console.log('received: %s', data); ws.close(); });
//! ws.on('close', (code) => console.log('closed', code));
//! ```
//!
//! Run `cargo run --example echo_server` in one terminal and
//! `cargo run --example client -- --port 8080` (or `-- ws://host:port/path`) in another.
use switchboard::websocket::client::{connect, ClientOptions};
use switchboard::websocket::{CloseCode, Message};

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let (mut ws, _response) = connect(&url_arg(), ClientOptions::default()).await?;
    // The handshake is complete: this is the 'open' event.
    ws.send(Message::text("Hello")).await?;

    // The 'message' event: wait for the first data message (pings are answered for us).
    while let Some(msg) = ws.next().await {
        match msg? {
            Message::Text(text) => println!("received: {}", String::from_utf8_lossy(&text)),
            Message::Binary(data) => println!("received: {} bytes", data.len()),
            Message::Close(frame) => {
                println!("closed by the server: {frame:?}");
                return Ok(());
            }
            _ => continue,
        }
        break;
    }

    // `close` sends our close frame and waits for the server's answer (the 'close' event).
    let answer = ws.close(CloseCode::NORMAL, "done").await?;
    let code = answer.map_or(CloseCode::NO_STATUS.0, |f| f.code.0);
    println!("closed {code}");
    Ok(())
}

/// A `ws://` URL as the first argument, or `--port N` for `ws://127.0.0.1:N/`
/// (default `ws://127.0.0.1:8080/`).
fn url_arg() -> String {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if let Some(url) = args
        .iter()
        .find(|a| a.starts_with("ws://") || a.starts_with("wss://"))
    {
        return url.clone();
    }
    let port = args
        .windows(2)
        .find(|w| w[0] == "--port")
        .map_or("8080", |w| w[1].as_str());
    format!("ws://127.0.0.1:{port}/")
}
