//! HTTP and WebSocket on one port: `GET /` returns a small HTML page, a WebSocket upgrade on
//! `/ws` is an echo connection, anything else is 404.
//!
//! The Rust counterpart of the Node.js tutorial snippet that attaches `ws` to an existing
//! HTTP server:
//!
//! ```js
//! const server = http.createServer((req, res) => {
//!   res.writeHead(200, { 'Content-Type': 'text/html' });
//!   res.end('<h1>Hello from the HTTP server</h1>');
//! });
//! const wss = new WebSocketServer({ server, path: '/ws' });
//! wss.on('connection', (ws) => ws.on('message', (data, isBinary) => ws.send(data, { binary: isBinary })));
//! server.listen(8080);
//! ```
//!
//! With hyper there is no separate "upgrade" event: the upgrade is an ordinary request that
//! the service answers with `101 Switching Protocols`, so routing is one `match`.
//!
//! Run it with `cargo run --example http_and_ws -- --port 8080` (`--port 0` picks a free
//! port), open <http://127.0.0.1:8080/> in a browser, and the page's script talks to `/ws`.
use std::convert::Infallible;

use hyper::body::Incoming;
use hyper::header::CONTENT_TYPE;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use switchboard::websocket::handshake::is_upgrade_request;
use switchboard::websocket::upgrade::{upgrade, UpgradeOptions, UpgradedWebSocket};
use switchboard::websocket::Message;
use tokio::net::TcpListener;

/// The page served on `/`; its script opens a WebSocket to `/ws` and shows the echo.
const PAGE: &str = r#"<!doctype html>
<html>
<head><meta charset="utf-8"><title>Hello</title></head>
<body>
<h1>Hello from the HTTP server</h1>
<p id="echo">connecting…</p>
<script>
  const ws = new WebSocket(`ws://${location.host}/ws`);
  ws.onopen = () => ws.send('Hello over WebSocket');
  ws.onmessage = (e) => { document.getElementById('echo').textContent = 'echo: ' + e.data; };
</script>
</body>
</html>
"#;

#[tokio::main]
async fn main() -> std::io::Result<()> {
    let listener = TcpListener::bind(("127.0.0.1", port_arg())).await?;
    println!("listening on {}", listener.local_addr()?);
    loop {
        let (tcp, _) = listener.accept().await?;
        tokio::spawn(async move {
            let _ = http1::Builder::new()
                .serve_connection(TokioIo::new(tcp), service_fn(route))
                .with_upgrades()
                .await;
        });
    }
}

async fn route(mut req: Request<Incoming>) -> Result<Response<String>, Infallible> {
    let upgrading = is_upgrade_request(req.headers());
    Ok(match (req.method(), req.uri().path(), upgrading) {
        (&Method::GET, "/", false) => Response::builder()
            .header(CONTENT_TYPE, "text/html; charset=utf-8")
            .body(PAGE.to_string())
            .unwrap(),
        (_, "/ws", true) => match upgrade(&mut req, &UpgradeOptions::default()) {
            Ok(accepted) => {
                tokio::spawn(async move {
                    if let Ok(ws) = accepted.upgrade.await {
                        echo(ws).await;
                    }
                });
                accepted.response
            }
            Err(rejection) => *rejection,
        },
        _ => Response::builder()
            .status(StatusCode::NOT_FOUND)
            .body("not found\n".to_string())
            .unwrap(),
    })
}

async fn echo(mut ws: UpgradedWebSocket) {
    while let Some(Ok(msg)) = ws.next().await {
        if let Message::Text(_) | Message::Binary(_) = msg {
            if ws.send(msg).await.is_err() {
                break;
            }
        }
    }
}

/// `--port N` (default 8080; 0 picks a free port).
fn port_arg() -> u16 {
    let args: Vec<String> = std::env::args().collect();
    args.windows(2)
        .find(|w| w[0] == "--port")
        .map(|w| w[1].parse().expect("--port takes a number"))
        .unwrap_or(8080)
}
