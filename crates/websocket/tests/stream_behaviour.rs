//! Behaviour of the tokio connection layer over real loopback sockets: echo with a
//! third-party peer (tokio-websockets), ping/pong tracking, both close directions, close
//! timeout, failing with the right close code, bounded write queue, prepared (broadcast)
//! frames, read-buffer shrinking, and bytes that arrive together with the handshake.
use std::future::poll_fn;
use std::pin::Pin;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use futures_core::Stream;
use futures_sink::Sink;
use switchboard_websocket::client::{connect, handshake, ClientOptions};
use switchboard_websocket::extensions::DeflatePolicy;
use switchboard_websocket::stream::WebSocket;
use switchboard_websocket::upgrade::{accept, UpgradeOptions};
use switchboard_websocket::{CloseCode, Error, Message, PreparedMessage};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio_websockets as tws;

const LIMIT: Duration = Duration::from_secs(20);

/// Accept one connection with our server handshake.
async fn our_server(
    options: UpgradeOptions,
) -> (String, tokio::task::JoinHandle<WebSocket<TcpStream>>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("ws://{}/", listener.local_addr().unwrap());
    let task = tokio::spawn(async move {
        let (tcp, _) = listener.accept().await.unwrap();
        tcp.set_nodelay(true).unwrap();
        accept(tcp, &options).await.unwrap().0
    });
    (url, task)
}

async fn tws_client(url: &str) -> tws::WebSocketStream<TcpStream> {
    let addr = url.trim_start_matches("ws://").trim_end_matches('/');
    let tcp = TcpStream::connect(addr).await.unwrap();
    let (ws, _) = tws::ClientBuilder::new()
        .uri(url)
        .unwrap()
        .limits(tws::Limits::unlimited())
        .connect_on(tcp)
        .await
        .unwrap();
    ws
}

async fn tws_next(ws: &mut tws::WebSocketStream<TcpStream>) -> Option<tws::Message> {
    poll_fn(|cx| Pin::new(&mut *ws).poll_next(cx))
        .await
        .map(|r| r.expect("tokio-websockets read"))
}

async fn tws_send(ws: &mut tws::WebSocketStream<TcpStream>, msg: tws::Message) {
    poll_fn(|cx| Pin::new(&mut *ws).poll_ready(cx))
        .await
        .unwrap();
    Pin::new(&mut *ws).start_send(msg).unwrap();
    poll_fn(|cx| Pin::new(&mut *ws).poll_flush(cx))
        .await
        .unwrap();
}

fn no_deflate() -> UpgradeOptions {
    UpgradeOptions {
        deflate: DeflatePolicy::disabled(),
        ..UpgradeOptions::default()
    }
}

#[tokio::test]
async fn echo_and_ping_with_tokio_websockets_client() {
    tokio::time::timeout(LIMIT, async {
        let (url, server) = our_server(no_deflate()).await;
        let mut peer = tws_client(&url).await;
        let (mut r, mut w) = server.await.unwrap().split();
        let echo = tokio::spawn(async move {
            let mut pings = 0;
            while let Some(m) = r.next().await {
                match m.unwrap() {
                    m @ (Message::Text(_) | Message::Binary(_)) => w.send(m).await.unwrap(),
                    Message::Ping(_) => pings += 1,
                    Message::Close(f) => return (pings, f),
                    Message::Pong(_) => {}
                }
            }
            panic!("stream ended without a close frame");
        });

        tws_send(&mut peer, tws::Message::text("hello")).await;
        assert_eq!(tws_next(&mut peer).await.unwrap().as_text(), Some("hello"));
        let big: Vec<u8> = (0..300_000u32).map(|i| (i % 251) as u8).collect();
        tws_send(&mut peer, tws::Message::binary(big.clone())).await;
        let got = tws_next(&mut peer).await.unwrap();
        assert!(got.is_binary());
        assert_eq!(&*got.into_payload(), &big[..]);

        tws_send(&mut peer, tws::Message::ping(Bytes::from_static(b"p1"))).await;
        let pong = tws_next(&mut peer).await.unwrap();
        assert!(pong.is_pong());
        assert_eq!(&*pong.into_payload(), b"p1");

        // Peer-initiated close: our side echoes the code and reports the frame.
        tws_send(
            &mut peer,
            tws::Message::close(Some(tws::CloseCode::try_from(4001).unwrap()), "done"),
        )
        .await;
        let reply = tws_next(&mut peer).await.unwrap();
        assert_eq!(reply.as_close().map(|(c, _)| u16::from(c)), Some(4001));
        let (pings, frame) = echo.await.unwrap();
        assert_eq!(pings, 1);
        let frame = frame.unwrap();
        assert_eq!(frame.code, CloseCode(4001));
        assert_eq!(frame.reason_str(), "done");
        // After the close handshake the transport is shut down.
        assert!(tws_next(&mut peer).await.is_none());
    })
    .await
    .unwrap();
}

#[tokio::test]
async fn server_initiated_close_and_pong_tracking() {
    tokio::time::timeout(LIMIT, async {
        let (url, server) = our_server(no_deflate()).await;
        let mut peer = tws_client(&url).await;
        let mut ws = server.await.unwrap();
        let tracker = ws.tracker();
        assert!(!tracker.awaiting_pong());
        assert!(tracker.last_pong().is_none());
        ws.ping("alive?").await.unwrap();
        assert!(tracker.awaiting_pong());
        assert!(tracker.last_ping_sent().is_some());
        // tokio-websockets answers pings while we poll it for messages.
        let peer_task = tokio::spawn(async move {
            let mut seen = Vec::new();
            while let Some(m) = tws_next(&mut peer).await {
                seen.push(m.clone());
                if m.is_close() {
                    // tokio-websockets replies to the close on its own while being polled.
                    continue;
                }
            }
            seen
        });
        match ws.next().await.unwrap().unwrap() {
            Message::Pong(p) => assert_eq!(&p[..], b"alive?"),
            other => panic!("expected pong, got {other:?}"),
        }
        assert!(!tracker.awaiting_pong());
        assert!(tracker.last_pong().is_some());
        assert!(tracker.last_received().is_some());

        let reply = ws.close(CloseCode::GOING_AWAY, "restart").await.unwrap();
        assert_eq!(reply.map(|f| f.code), Some(CloseCode::GOING_AWAY));
        // No data after our close frame.
        assert!(matches!(
            ws.send(Message::text("late")).await,
            Err(Error::ConnectionClosed)
        ));
        let seen = peer_task.await.unwrap();
        let close = seen.last().unwrap().as_close().unwrap();
        assert_eq!((u16::from(close.0), close.1), (1001, "restart"));
    })
    .await
    .unwrap();
}

/// Accept a TCP connection and do a minimal client-side handshake by hand, so the test can
/// send arbitrary frames.
async fn raw_client(url: &str) -> TcpStream {
    let addr = url.trim_start_matches("ws://").trim_end_matches('/');
    let mut tcp = TcpStream::connect(addr).await.unwrap();
    tcp.write_all(
        b"GET / HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
          Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n",
    )
    .await
    .unwrap();
    let mut head = Vec::new();
    while !head.ends_with(b"\r\n\r\n") {
        let mut b = [0u8; 1];
        tcp.read_exact(&mut b).await.unwrap();
        head.push(b[0]);
    }
    assert!(head.starts_with(b"HTTP/1.1 101"));
    tcp
}

#[tokio::test]
async fn protocol_error_sends_1002_and_ends() {
    tokio::time::timeout(LIMIT, async {
        let (url, server) = our_server(no_deflate()).await;
        let mut raw = raw_client(&url).await;
        let mut ws = server.await.unwrap();
        // An unmasked frame from a client is a protocol error (RFC 6455 §5.1).
        raw.write_all(&[0x81, 0x02, b'h', b'i']).await.unwrap();
        match ws.next().await {
            Some(Err(e)) => assert_eq!(e.close_code(), Some(CloseCode::PROTOCOL_ERROR)),
            other => panic!("expected an error, got {other:?}"),
        }
        assert!(ws.next().await.is_none());
        let mut rest = Vec::new();
        raw.read_to_end(&mut rest).await.unwrap();
        assert_eq!(rest[0], 0x88, "a close frame");
        assert_eq!(u16::from_be_bytes([rest[2], rest[3]]), 1002);
    })
    .await
    .unwrap();
}

#[tokio::test]
async fn close_without_reply_ends_after_timeout() {
    tokio::time::timeout(LIMIT, async {
        let mut options = no_deflate();
        options.write_config.close_timeout = Duration::from_millis(200);
        let (url, server) = our_server(options).await;
        let mut raw = raw_client(&url).await;
        let (mut r, mut w) = server.await.unwrap().split();
        w.close(CloseCode::NORMAL, "bye").await.unwrap();
        // The peer never answers; the reader gives up on its own.
        assert!(r.next().await.is_none());
        let mut rest = Vec::new();
        raw.read_to_end(&mut rest).await.unwrap();
        assert_eq!(&rest[..2], &[0x88, 5]);
        assert_eq!(&rest[4..], b"bye");
    })
    .await
    .unwrap();
}

#[tokio::test]
async fn bounded_queue_reports_overflow() {
    tokio::time::timeout(LIMIT, async {
        let mut options = no_deflate();
        options.write_config.max_buffered_bytes = 16 * 1024;
        let (url, server) = our_server(options).await;
        let mut peer = tws_client(&url).await;
        let mut ws = server.await.unwrap();
        let msg = Message::Binary(Bytes::from(vec![7u8; 1000]));
        let mut queued = 0;
        let err = loop {
            match ws.feed(msg.clone()) {
                Ok(()) => queued += 1,
                Err(e) => break e,
            }
            assert!(queued < 100, "queue never filled up");
        };
        assert!(matches!(err, Error::WouldOverflow));
        assert_eq!(queued, 16);
        ws.flush().await.unwrap();
        for _ in 0..queued {
            assert_eq!(
                tws_next(&mut peer).await.unwrap().into_payload().len(),
                1000
            );
        }
        // With an empty queue a single message larger than the limit still goes out.
        ws.send(Message::Binary(Bytes::from(vec![1u8; 100_000])))
            .await
            .unwrap();
        assert_eq!(
            tws_next(&mut peer).await.unwrap().into_payload().len(),
            100_000
        );
    })
    .await
    .unwrap();
}

#[tokio::test]
async fn prepared_frames_with_and_without_deflate() {
    tokio::time::timeout(LIMIT, async {
        for deflate in [false, true] {
            let options = if deflate {
                UpgradeOptions::default()
            } else {
                no_deflate()
            };
            let (url, server) = our_server(options).await;
            let mut client_opts = ClientOptions::default();
            if !deflate {
                client_opts.deflate = None;
            }
            let (mut client, resp) = connect(&url, client_opts).await.unwrap();
            assert_eq!(resp.deflate.is_some(), deflate);
            let mut ws = server.await.unwrap();
            let small = PreparedMessage::new(Message::text("tick"));
            let large = PreparedMessage::new(Message::text("broadcast ".repeat(10_000)));
            for _ in 0..3 {
                ws.feed_prepared(&small).unwrap();
                ws.feed_prepared(&large).unwrap();
            }
            ws.flush().await.unwrap();
            for _ in 0..3 {
                assert_eq!(
                    client.next().await.unwrap().unwrap().as_text(),
                    Some("tick")
                );
                let got = client.next().await.unwrap().unwrap();
                assert_eq!(got.as_text().map(str::len), Some(100_000));
            }
        }
    })
    .await
    .unwrap();
}

#[tokio::test]
async fn read_buffer_shrinks_after_large_message() {
    tokio::time::timeout(LIMIT, async {
        let (url, server) = our_server(no_deflate()).await;
        let mut peer = tws_client(&url).await;
        let (mut r, _w) = server.await.unwrap().split();
        let start = r.read_buffer_capacity();
        assert!(start <= 8 * 1024, "starts small: {start}");
        tws_send(&mut peer, tws::Message::binary(vec![3u8; 2 << 20])).await;
        tws_send(&mut peer, tws::Message::text("small")).await;
        assert_eq!(
            r.next().await.unwrap().unwrap(),
            Message::Binary(Bytes::from(vec![3u8; 2 << 20]))
        );
        assert_eq!(r.next().await.unwrap().unwrap().as_text(), Some("small"));
        let after = r.read_buffer_capacity();
        assert!(after <= 64 * 1024, "shrunk back: {after}");
    })
    .await
    .unwrap();
}

#[tokio::test]
async fn no_buffer_or_compression_state_kept_after_a_burst() {
    tokio::time::timeout(LIMIT, async {
        // Deflate on (the default policy), so the burst is compressed both ways.
        let (url, server) = our_server(UpgradeOptions::default()).await;
        let (mut client, _) = connect(&url, ClientOptions::default()).await.unwrap();
        let (mut r, mut w) = server.await.unwrap().split();
        let text = |i: usize| {
            Message::text(format!(
                "{i:05} {}",
                "burst of compressible text ".repeat(40)
            ))
        };
        for i in 0..500 {
            w.feed(text(i)).unwrap();
        }
        w.flush().await.unwrap();
        for i in 0..500 {
            assert_eq!(client.next().await.unwrap().unwrap(), text(i));
            client.send(text(i)).await.unwrap();
        }
        for i in 0..500 {
            assert_eq!(r.next().await.unwrap().unwrap(), text(i));
        }
        assert_eq!(w.write_buffer_capacity(), 0, "write buffers given back");
        // Waiting for a next message that does not come is what an idle connection does.
        assert!(tokio::time::timeout(Duration::from_millis(50), r.next())
            .await
            .is_err());
        assert_eq!(r.read_buffer_capacity(), 0, "read buffer given back");
    })
    .await
    .unwrap();
}

#[tokio::test]
async fn frames_sent_with_the_101_are_not_lost() {
    tokio::time::timeout(LIMIT, async {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let server = tokio::spawn(async move {
            let (mut tcp, _) = listener.accept().await.unwrap();
            let mut buf = BytesMut::new();
            while !buf.ends_with(b"\r\n\r\n") {
                tcp.read_buf(&mut buf).await.unwrap();
            }
            let text = String::from_utf8(buf.to_vec()).unwrap();
            let key = text
                .lines()
                .find_map(|l| l.strip_prefix("Sec-WebSocket-Key: "))
                .unwrap();
            let accept = switchboard_websocket::handshake::accept_key(key);
            // The 101 and the first frame in one write.
            let mut out = format!(
                "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n\
                 Connection: Upgrade\r\nSec-WebSocket-Accept: {accept}\r\n\r\n"
            )
            .into_bytes();
            out.extend_from_slice(&[0x81, 0x05]);
            out.extend_from_slice(b"early");
            tcp.write_all(&out).await.unwrap();
            tcp
        });
        let tcp = TcpStream::connect(addr).await.unwrap();
        let opts = ClientOptions {
            deflate: None,
            ..ClientOptions::default()
        };
        let (mut ws, resp) = handshake(tcp, &addr.to_string(), "/", opts).await.unwrap();
        assert_eq!(resp.status, 101);
        assert_eq!(ws.next().await.unwrap().unwrap().as_text(), Some("early"));
        drop(server.await.unwrap());
    })
    .await
    .unwrap();
}

#[tokio::test]
async fn reader_answers_pings_while_writer_streams() {
    tokio::time::timeout(LIMIT, async {
        let (url, server) = our_server(no_deflate()).await;
        let mut peer = tws_client(&url).await;
        let (mut r, mut w) = server.await.unwrap().split();
        let reader = tokio::spawn(async move {
            let mut pings = 0;
            while let Some(Ok(m)) = r.next().await {
                if let Message::Ping(_) = m {
                    pings += 1;
                }
            }
            pings
        });
        let writer = tokio::spawn(async move {
            for i in 0..2000 {
                w.feed(Message::text(format!("data {i}"))).unwrap();
                if i % 50 == 0 {
                    w.flush().await.unwrap();
                }
            }
            w.flush().await.unwrap();
            w
        });
        for i in 0..20u8 {
            tws_send(&mut peer, tws::Message::ping(Bytes::from(vec![i]))).await;
        }
        let mut data = 0;
        let mut pongs = Vec::new();
        while data < 2000 || pongs.is_empty() {
            let m = tws_next(&mut peer).await.unwrap();
            if m.is_pong() {
                pongs.push(m.into_payload()[0]);
            } else {
                assert_eq!(m.as_text(), Some(format!("data {data}").as_str()));
                data += 1;
            }
        }
        // Pongs may be coalesced (only the latest ping must be answered), but the last ping
        // is always answered.
        while pongs.last() != Some(&19) {
            let m = tws_next(&mut peer).await.unwrap();
            assert!(m.is_pong());
            pongs.push(m.into_payload()[0]);
        }
        assert!(pongs.windows(2).all(|p| p[0] < p[1]), "in order: {pongs:?}");
        let mut w = writer.await.unwrap();
        w.close(CloseCode::NORMAL, "").await.unwrap();
        // tokio-websockets answers the close; the reader then ends.
        while tws_next(&mut peer).await.is_some() {}
        assert_eq!(reader.await.unwrap(), 20);
    })
    .await
    .unwrap();
}
