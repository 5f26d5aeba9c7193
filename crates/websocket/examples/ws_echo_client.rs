//! Connects to a WebSocket URL, sends each line of stdin as a text message and prints what
//! comes back.
//!
//! ```text
//! cargo run -p switchboard-websocket --example ws_echo_client -- ws://127.0.0.1:9001/ [--no-deflate] [--insecure]
//! ```
use switchboard_websocket::client::{connect, ClientOptions};
use switchboard_websocket::{CloseCode, Message};
use tokio::io::{AsyncBufReadExt, BufReader};

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut url = None;
    let mut options = ClientOptions::default();
    for a in std::env::args().skip(1) {
        match a.as_str() {
            "--no-deflate" => options.deflate = None,
            "--insecure" => options.insecure = true,
            _ if url.is_none() => url = Some(a),
            other => return Err(format!("unexpected argument {other}").into()),
        }
    }
    let url = url.ok_or("usage: ws_echo_client URL [--no-deflate] [--insecure]")?;
    let (ws, resp) = connect(&url, options).await?;
    eprintln!("connected; permessage-deflate: {:?}", resp.deflate);
    let (mut reader, mut writer) = ws.split();
    let printer = tokio::spawn(async move {
        while let Some(msg) = reader.next().await {
            match msg {
                Ok(Message::Text(t)) => println!("{}", String::from_utf8_lossy(&t)),
                Ok(Message::Binary(b)) => println!("<{} bytes>", b.len()),
                Ok(Message::Close(f)) => {
                    eprintln!("closed: {f:?}");
                    break;
                }
                Ok(_) => {}
                Err(e) => {
                    eprintln!("error: {e}");
                    break;
                }
            }
        }
    });
    let mut lines = BufReader::new(tokio::io::stdin()).lines();
    while let Some(line) = lines.next_line().await? {
        writer.send(Message::text(line)).await?;
    }
    writer.close(CloseCode::NORMAL, "bye").await?;
    printer.await?;
    Ok(())
}
