//! One raw WebSocket client connection, built for load generation.
//!
//! The handshake is written by hand with [`ClientRequest`] and checked with
//! [`verify_client_response`]; after that the connection is a read buffer and a write buffer
//! over a non-blocking `TcpStream`. Outgoing frames are pre-encoded (masked once with a fixed
//! key, since masking the same payload with the same key gives the same bytes) and copied into
//! the write buffer; incoming frames are parsed in place with [`parse_header`]. A single task
//! drives both directions with [`RawConn::pump`], which makes one write and one read attempt
//! whenever the socket is ready — no reader/writer task pair and no channel between them, and
//! no deadlock when both sides have a lot in flight.
use std::future::Future;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};

use anyhow::{anyhow, bail, Context as _};
use bytes::{Buf, BufMut, Bytes, BytesMut};
use http::header::{HeaderName, HeaderValue};
use http::{HeaderMap, StatusCode};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};

use crate::websocket::deflate::{DeflateParams, Deflater, Inflater};
use crate::websocket::extensions::{client_offer, DeflatePolicy};
use crate::websocket::frame::{parse_header, write_header, OpCode};
use crate::websocket::handshake::{verify_client_response, ClientRequest};
use crate::websocket::mask::{apply_mask, apply_mask_offset};

use super::target::Target;

/// Bytes asked of the kernel per read when no larger frame is pending.
const READ_CHUNK: usize = 16 * 1024;
/// Largest HTTP response head accepted.
const MAX_HEAD: usize = 16 * 1024;
/// Largest message the generator accepts (anything bigger is a bug in the test setup).
const MAX_MESSAGE: usize = 64 << 20;

/// Messages that arrived compressed (permessage-deflate), over all connections of the process.
pub(crate) static COMPRESSED_MESSAGES: AtomicU64 = AtomicU64::new(0);

/// How to open the TCP connection.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct ConnectOpts {
    /// Local address to bind before connecting (port chosen by the kernel).
    pub bind: Option<IpAddr>,
    /// `SO_RCVBUF` to request before connecting (small values make a slow reader).
    pub recv_buffer: Option<u32>,
    /// Offer permessage-deflate and inflate what the server compresses (our own frames are
    /// sent uncompressed, which the extension allows).
    pub deflate: bool,
}

/// A complete message or control frame from the server.
#[derive(Debug)]
pub(crate) enum Incoming {
    /// A text or binary message (reassembled if it was fragmented).
    Data {
        /// Binary (true) or text.
        binary: bool,
        /// The payload.
        payload: Bytes,
    },
    /// A close frame with its status code, if any. A pong for pings is queued automatically.
    Close(Option<u16>),
}

/// A client connection after a successful opening handshake.
pub(crate) struct RawConn {
    stream: TcpStream,
    rbuf: BytesMut,
    out: BytesMut,
    mask: [u8; 4],
    /// Bytes the frame at the head of `rbuf` needs in total (0 when unknown).
    need: usize,
    /// A fragmented message being reassembled, and whether it is compressed.
    frag: Option<(bool, bool, BytesMut)>,
    /// The decompressor, when permessage-deflate was agreed.
    inflater: Option<Inflater>,
    /// The agreed permessage-deflate parameters, if any.
    deflate: Option<DeflateParams>,
}

/// Encode one complete masked client frame.
pub(crate) fn encode_frame(opcode: OpCode, payload: &[u8], mask: [u8; 4]) -> Vec<u8> {
    let (h, n) = write_header(true, false, opcode, Some(mask), payload.len());
    let mut v = Vec::with_capacity(n + payload.len());
    v.extend_from_slice(&h[..n]);
    v.extend_from_slice(payload);
    apply_mask(&mut v[n..], mask);
    v
}

/// Byte offset of the payload inside a frame produced by [`encode_frame`].
pub(crate) fn payload_offset(frame: &[u8]) -> usize {
    match frame[1] & 0x7F {
        126 => 8,
        127 => 14,
        _ => 6,
    }
}

/// Overwrite payload bytes `at..at + data.len()` of a frame made by [`encode_frame`] with
/// `data`, masked as it would have been.
pub(crate) fn patch_payload(frame: &mut [u8], mask: [u8; 4], at: usize, data: &[u8]) {
    let start = payload_offset(frame) + at;
    let dst = &mut frame[start..start + data.len()];
    dst.copy_from_slice(data);
    apply_mask_offset(dst, mask, at);
}

/// A masking key derived from a connection index: fixed per connection, different between
/// connections (RFC 6455 wants unpredictable keys against proxy cache poisoning; on loopback
/// against a server we run ourselves there is no proxy, and fixed keys let frames be pre-encoded).
pub(crate) fn mask_for(index: usize) -> [u8; 4] {
    let x = (index as u32).wrapping_mul(0x9E37_79B9) ^ 0x5bd1_e995;
    let k = x.to_le_bytes();
    // Avoid the all-zero key, which would leave payloads unmasked.
    if k == [0; 4] {
        [1, 2, 3, 4]
    } else {
        k
    }
}

impl RawConn {
    /// [`RawConn::connect`] bounded by `limit` (connect and handshake together).
    pub async fn connect_within(
        limit: std::time::Duration,
        target: &Target,
        path_and_query: &str,
        opts: ConnectOpts,
        mask: [u8; 4],
    ) -> anyhow::Result<RawConn> {
        match tokio::time::timeout(limit, Self::connect(target, path_and_query, opts, mask)).await {
            Ok(r) => r,
            Err(_) => bail!(
                "no handshake with {} within {:.1} s",
                target.addr,
                limit.as_secs_f64()
            ),
        }
    }

    /// Open a TCP connection to `target.addr` and perform the opening handshake for
    /// `path_and_query`.
    pub async fn connect(
        target: &Target,
        path_and_query: &str,
        opts: ConnectOpts,
        mask: [u8; 4],
    ) -> anyhow::Result<RawConn> {
        let socket = match target.addr {
            SocketAddr::V4(_) => TcpSocket::new_v4(),
            SocketAddr::V6(_) => TcpSocket::new_v6(),
        }
        .context("socket")?;
        if let Some(size) = opts.recv_buffer {
            socket.set_recv_buffer_size(size).context("SO_RCVBUF")?;
        }
        if let Some(ip) = opts.bind {
            socket
                .bind(SocketAddr::new(ip, 0))
                .with_context(|| format!("bind {ip}"))?;
        }
        let mut stream = socket
            .connect(target.addr)
            .await
            .with_context(|| format!("connect {}", target.addr))?;
        stream.set_nodelay(true).context("TCP_NODELAY")?;

        let policy = DeflatePolicy::default();
        let offer = opts.deflate.then(|| client_offer(&policy));
        let req = ClientRequest::new(
            &target.host,
            path_and_query,
            &[],
            offer.as_deref(),
            &HeaderMap::new(),
        );
        stream
            .write_all(&req.bytes)
            .await
            .context("send upgrade request")?;
        let mut rbuf = BytesMut::with_capacity(1024);
        let head_len = loop {
            if let Some(i) = rbuf.windows(4).position(|w| w == b"\r\n\r\n") {
                break i + 4;
            }
            if rbuf.len() > MAX_HEAD {
                bail!("handshake response head too large");
            }
            if stream.read_buf(&mut rbuf).await.context("read response")? == 0 {
                bail!("connection closed during the handshake");
            }
        };
        let mut raw = [httparse::EMPTY_HEADER; 32];
        let mut resp = httparse::Response::new(&mut raw);
        resp.parse(&rbuf[..head_len])
            .context("malformed handshake response")?;
        let status =
            StatusCode::from_u16(resp.code.unwrap_or(0)).map_err(|_| anyhow!("bad status code"))?;
        let mut headers = HeaderMap::new();
        for h in resp.headers.iter() {
            headers.append(
                HeaderName::from_bytes(h.name.as_bytes()).context("bad header name")?,
                HeaderValue::from_bytes(h.value).context("bad header value")?,
            );
        }
        let agreed = verify_client_response(
            status,
            &headers,
            &req.key,
            &[],
            opts.deflate.then_some(&policy),
        )
        .map_err(|e| anyhow!("handshake to {path_and_query} failed: {e}"))?;
        let inflater = agreed.deflate.map(|params| {
            Inflater::new(
                params.server_max_window_bits,
                params.server_no_context_takeover,
            )
        });
        rbuf.advance(head_len);
        Ok(RawConn {
            stream,
            rbuf,
            out: BytesMut::new(),
            mask,
            need: 0,
            frag: None,
            inflater,
            deflate: agreed.deflate,
        })
    }

    /// Queue bytes for sending (written by the next [`RawConn::pump`]).
    #[inline]
    pub fn queue(&mut self, bytes: &[u8]) {
        self.out.extend_from_slice(bytes);
    }

    /// Bytes queued but not yet written.
    #[inline]
    pub fn pending_out(&self) -> usize {
        self.out.len()
    }

    /// Queue one text message, compressed (RSV1 set, as a browser would send it) when
    /// permessage-deflate was agreed. Each message is compressed by a fresh compressor, which
    /// is valid whatever context takeover was agreed.
    pub fn queue_text(&mut self, payload: &[u8]) -> anyhow::Result<()> {
        let Some(params) = self.deflate else {
            let frame = encode_frame(OpCode::Text, payload, self.mask);
            self.queue(&frame);
            return Ok(());
        };
        let mut body = BytesMut::new();
        Deflater::new(params.client_max_window_bits, true)
            .compress(payload, &mut body)
            .map_err(|e| anyhow!("cannot compress a message: {e}"))?;
        let (h, n) = write_header(true, true, OpCode::Text, Some(self.mask), body.len());
        apply_mask(&mut body, self.mask);
        self.queue(&h[..n]);
        self.queue(&body);
        Ok(())
    }

    /// Queue a close frame with `code` (best effort, for a tidy end of the run).
    pub fn queue_close(&mut self, code: u16) {
        let frame = encode_frame(OpCode::Close, &code.to_be_bytes(), self.mask);
        self.queue(&frame);
    }

    /// Write what is queued without waiting; ignore errors (used when finishing).
    pub fn try_flush(&mut self) {
        while !self.out.is_empty() {
            match self.stream.try_write(&self.out) {
                Ok(n) if n > 0 => self.out.advance(n),
                _ => break,
            }
        }
    }

    /// Wait until the socket can make progress, then write once (if anything is queued) and
    /// read once (at most `max_read` bytes). Returns after some progress; cancel-safe.
    pub async fn pump(&mut self, max_read: usize) -> io::Result<()> {
        std::future::poll_fn(|cx| self.poll_pump(cx, max_read)).await
    }

    /// One step of [`RawConn::pump`]. It goes through tokio's `poll_read`/`poll_write`, which
    /// forget the socket's readiness after a short read or write: the next poll then waits
    /// for epoll instead of spending a system call on `EAGAIN`. In request/response traffic
    /// that saves one `recv` per message.
    fn poll_pump(&mut self, cx: &mut Context<'_>, max_read: usize) -> Poll<io::Result<()>> {
        let mut progressed = false;
        if !self.out.is_empty() {
            let write = self.stream.write(&self.out);
            match std::pin::pin!(write).poll(cx) {
                Poll::Ready(Ok(n)) => {
                    self.out.advance(n);
                    progressed = true;
                }
                Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                Poll::Pending => {}
            }
        }
        let want = READ_CHUNK.max(self.need.saturating_sub(self.rbuf.len()));
        self.rbuf.reserve(want.min(max_read));
        let mut limited = (&mut self.rbuf).limit(max_read.max(1));
        let read = self.stream.read_buf(&mut limited);
        match std::pin::pin!(read).poll(cx) {
            Poll::Ready(Ok(0)) => {
                return Poll::Ready(Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "server closed the TCP connection",
                )))
            }
            Poll::Ready(Ok(_)) => progressed = true,
            Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
            Poll::Pending => {}
        }
        if progressed {
            Poll::Ready(Ok(()))
        } else {
            Poll::Pending
        }
    }

    /// The next complete message from the read buffer, or `None` if more bytes are needed.
    /// Pings are answered (a pong is queued) and skipped; pongs are skipped.
    pub fn next(&mut self) -> anyhow::Result<Option<Incoming>> {
        loop {
            let (h, hlen) = match parse_header(&self.rbuf) {
                Ok(Some(x)) => x,
                Ok(None) => return Ok(None),
                Err(e) => bail!("invalid frame from the server: {e}"),
            };
            if h.mask.is_some() {
                bail!("the server sent a masked frame");
            }
            if h.payload_len > MAX_MESSAGE as u64 {
                bail!("frame of {} bytes is too large", h.payload_len);
            }
            let total = hlen + h.payload_len as usize;
            if self.rbuf.len() < total {
                self.need = total;
                return Ok(None);
            }
            self.need = 0;
            let mut frame = self.rbuf.split_to(total);
            frame.advance(hlen);
            match h.opcode {
                OpCode::Ping => {
                    let pong = encode_frame(OpCode::Pong, &frame, self.mask);
                    self.queue(&pong);
                }
                OpCode::Pong => {}
                OpCode::Close => {
                    let code = (frame.len() >= 2).then(|| u16::from_be_bytes([frame[0], frame[1]]));
                    return Ok(Some(Incoming::Close(code)));
                }
                OpCode::Text | OpCode::Binary => {
                    let binary = h.opcode == OpCode::Binary;
                    if self.frag.is_some() {
                        bail!("new data frame inside a fragmented message");
                    }
                    if h.rsv1 && self.inflater.is_none() {
                        bail!("compressed frame without permessage-deflate");
                    }
                    if h.fin {
                        let payload = self.finish(h.rsv1, frame)?;
                        return Ok(Some(Incoming::Data { binary, payload }));
                    }
                    self.frag = Some((binary, h.rsv1, frame));
                }
                OpCode::Continuation => {
                    let Some((binary, compressed, mut acc)) = self.frag.take() else {
                        bail!("continuation frame without a message");
                    };
                    if acc.len() + frame.len() > MAX_MESSAGE {
                        bail!("fragmented message is too large");
                    }
                    acc.extend_from_slice(&frame);
                    if h.fin {
                        let payload = self.finish(compressed, acc)?;
                        return Ok(Some(Incoming::Data { binary, payload }));
                    }
                    self.frag = Some((binary, compressed, acc));
                }
            }
        }
    }

    /// The payload of a complete message: inflated when it was sent compressed.
    fn finish(&mut self, compressed: bool, payload: BytesMut) -> anyhow::Result<Bytes> {
        if !compressed {
            return Ok(payload.freeze());
        }
        let inflater = self
            .inflater
            .as_mut()
            .ok_or_else(|| anyhow!("compressed message without permessage-deflate"))?;
        COMPRESSED_MESSAGES.fetch_add(1, Ordering::Relaxed);
        let mut out = BytesMut::with_capacity(payload.len() * 4);
        inflater
            .inflate(&payload, true, &mut out, MAX_MESSAGE, &mut |_| Ok(()))
            .map_err(|e| anyhow!("cannot inflate a message: {e}"))?;
        Ok(out.freeze())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn patching_matches_fresh_encoding() {
        for size in [20usize, 125, 126, 300, 70_000] {
            let key = mask_for(7);
            let mut payload = vec![b'x'; size];
            let mut frame = encode_frame(OpCode::Binary, &payload, key);
            let fields = [1u8, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11];
            patch_payload(&mut frame, key, 3, &fields);
            payload[3..14].copy_from_slice(&fields);
            assert_eq!(frame, encode_frame(OpCode::Binary, &payload, key), "{size}");
        }
    }

    #[test]
    fn keys_differ_and_are_never_zero() {
        assert_ne!(mask_for(0), mask_for(1));
        assert!((0..10_000).all(|i| mask_for(i) != [0; 4]));
    }
}
