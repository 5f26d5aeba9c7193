//! Crash safety through the library API: an embedder's hook that panics on one message closes
//! only that connection (1011) while the room and the server carry on.
use std::time::Duration;

use switchboard::server::{Server, ServerConfig};
use switchboard_core::{Payload, PublishOptions};
use switchboard_websocket::client::{connect, ClientOptions};
use switchboard_websocket::{CloseCode, Message};

const WAIT: Duration = Duration::from_secs(15);

async fn next_message(
    reader: &mut switchboard_websocket::stream::WsReader<
        switchboard_websocket::client::MaybeTlsStream,
    >,
) -> Message {
    tokio::time::timeout(WAIT, async {
        loop {
            match reader.next().await {
                Some(Ok(Message::Ping(_) | Message::Pong(_))) => {}
                Some(Ok(m)) => return m,
                other => panic!("unexpected {other:?}"),
            }
        }
    })
    .await
    .expect("message in time")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn panicking_hook_closes_one_connection_with_1011() {
    let config = ServerConfig {
        listen: "127.0.0.1:0".parse().unwrap(),
        ..Default::default()
    };
    let server = Server::builder()
        .config(config)
        .on_message(|room, msg| {
            if room == "crash" && msg.as_text() == Some("boom") {
                panic!("hook exploded on purpose");
            }
        })
        .build()
        .unwrap()
        .bind()
        .await
        .unwrap();
    let url = format!("ws://{}/crash", server.local_addr());
    let hub = server.hub().clone();
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let running = tokio::spawn(server.run_until(async {
        let _ = stop_rx.await;
    }));

    let (victim, _) = connect(&url, ClientOptions::default()).await.unwrap();
    let (bystander, _) = connect(&url, ClientOptions::default()).await.unwrap();
    let (mut victim_r, mut victim_w) = victim.split();
    let (mut by_r, mut by_w) = bystander.split();

    victim_w.send(Message::text("boom")).await.unwrap();
    match next_message(&mut victim_r).await {
        Message::Close(Some(frame)) => assert_eq!(frame.code, CloseCode::INTERNAL_ERROR),
        other => panic!("expected close 1011, got {other:?}"),
    }

    // The bystander in the same room is unaffected: it can publish and receive.
    by_w.send(Message::text("still working")).await.unwrap();
    assert_eq!(
        next_message(&mut by_r).await,
        Message::text("still working")
    );
    // The application can still publish through the hub.
    hub.publish(
        "crash",
        Payload::text("from the app"),
        PublishOptions::default(),
    );
    assert_eq!(next_message(&mut by_r).await, Message::text("from the app"));
    // And new connections are accepted.
    let (late, _) = connect(&url, ClientOptions::default()).await.unwrap();
    let (mut late_r, mut late_w) = late.split();
    late_w.send(Message::text("late")).await.unwrap();
    assert_eq!(next_message(&mut late_r).await, Message::text("late"));
    assert_eq!(next_message(&mut by_r).await, Message::text("late"));

    stop_tx.send(()).unwrap();
    // Both remaining clients get 1001 (read concurrently so their close replies go out).
    for reader in [&mut by_r, &mut late_r] {
        match next_message(reader).await {
            Message::Close(Some(frame)) => assert_eq!(frame.code, CloseCode::GOING_AWAY),
            other => panic!("expected close 1001, got {other:?}"),
        }
    }
    tokio::time::timeout(WAIT, running)
        .await
        .expect("shutdown in time")
        .unwrap()
        .unwrap();
}
