//! Switchboard network layer: tokio, hyper, WebSocket upgrade, TLS.
