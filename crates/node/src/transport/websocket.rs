//! STOMP over WebSocket (RFC 6455, server side) on the shared sans-IO codec: each
//! outgoing STOMP frame is one WebSocket message (text when it is UTF-8, which every
//! STOMP client reads; binary bodies stay binary). Incoming messages are a byte stream
//! to the STOMP decoder, whatever their boundaries.

use std::io;
use std::time::Duration;

use bytes::BytesMut;
use pushcenter_websocket::frame::{
    BINARY, CLOSE, CLOSE_NORMAL, CLOSE_RESTART, CLOSE_TOO_BIG, TEXT,
};
use pushcenter_websocket::{Got, Reader, put_header};
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};

use crate::transport::link::{Link, out_buf, read_with, write_out};

pub(crate) struct WsLink<S> {
    io: S,
    out: BytesMut,
    rx: Reader,
    /// The code `close` sends.
    close_code: u16,
}

impl<S> WsLink<S> {
    /// `pending`: bytes the client sent after its handshake request, read with it.
    pub(crate) fn new(io: S, max_message: usize, pending: &[u8]) -> WsLink<S> {
        WsLink {
            io,
            out: BytesMut::new(),
            close_code: CLOSE_NORMAL,
            rx: Reader::server(max_message).with_pending(pending),
        }
    }
}

/// Frames a server-to-client header for `len` payload bytes onto a spare buffer.
pub(crate) fn header(out: &mut BytesMut, text: bool, len: usize) -> &mut BytesMut {
    let out = out_buf(out, len + 10);
    put_header(out, true, if text { TEXT } else { BINARY }, len, None);
    out
}

impl<S: AsyncRead + AsyncWrite + Unpin + Send> WsLink<S> {
    /// Sends a close frame (`code`, `reason`) and flushes, within two seconds.
    async fn send_close(&mut self, code: u16, reason: &str) {
        let mut payload = code.to_be_bytes().to_vec();
        payload.extend_from_slice(reason.as_bytes());
        self.rx
            .put_frame(out_buf(&mut self.out, payload.len() + 2), CLOSE, &payload);
        self.send_framed_close().await;
    }

    /// Writes what is framed (a close frame last), then shuts the socket, within two
    /// seconds.
    async fn send_framed_close(&mut self) {
        let _ = tokio::time::timeout(Duration::from_secs(2), async {
            let _ = write_out(&mut self.io, &mut self.out).await;
            let _ = self.io.shutdown().await;
        })
        .await;
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin + Send> Link for WsLink<S> {
    async fn recv(&mut self, buf: &mut BytesMut) -> io::Result<bool> {
        // Frames that came with the handshake request (or the close after data).
        let mut got = if self.rx.closed().is_some() {
            Ok(Got::Close)
        } else if self.rx.held() == 0 {
            Ok(Got::Nothing)
        } else {
            self.rx.consume(&[], buf, &mut self.out)
        };
        loop {
            match got {
                Ok(Got::Data) => return Ok(true),
                Ok(Got::Nothing) => {
                    if !self.out.is_empty() {
                        // Pongs go out at once. Rare paths are boxed: this future
                        // lives in every idle connection's task.
                        Box::pin(write_out(&mut self.io, &mut self.out)).await?;
                    }
                    // Let the connection count pings against the frame rate.
                    if self.rx.controls() > 0 {
                        return Ok(true);
                    }
                }
                Ok(Got::Close) => {
                    let code = self.rx.closed().unwrap_or(CLOSE_NORMAL);
                    self.rx.put_frame(&mut self.out, CLOSE, &code.to_be_bytes());
                    Box::pin(self.send_framed_close()).await;
                    return Ok(false);
                }
                Err(e) if e.code == CLOSE_TOO_BIG => {
                    // The connection answers with a STOMP ERROR, then closes.
                    self.close_code = CLOSE_TOO_BIG;
                    return Err(io::Error::new(io::ErrorKind::InvalidData, e.reason));
                }
                Err(e) => {
                    Box::pin(self.send_close(e.code, e.reason)).await;
                    return Err(io::Error::other(e.reason));
                }
            }
            let (rx, out) = (&mut self.rx, &mut self.out);
            got = match read_with(&mut self.io, |data| rx.consume(data, buf, out)).await? {
                Some(g) => g,
                None => return Ok(false),
            };
        }
    }

    fn frame(&mut self, len: usize, text: bool) -> &mut BytesMut {
        header(&mut self.out, text, len)
    }

    fn buffered(&self) -> usize {
        self.out.len()
    }

    async fn flush(&mut self) -> io::Result<()> {
        write_out(&mut self.io, &mut self.out).await
    }

    async fn close(&mut self, restart: bool) {
        if let Some(code) = self.rx.closed() {
            // The peer closed first: echo its code.
            self.send_close(code, "").await;
        } else if restart {
            self.send_close(CLOSE_RESTART, "service restart").await;
        } else {
            self.send_close(self.close_code, "").await;
        }
    }

    fn take_controls(&mut self) -> u32 {
        self.rx.take_controls()
    }
}
