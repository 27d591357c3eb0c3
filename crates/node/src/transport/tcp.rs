//! STOMP over a plain TCP or TLS byte stream.

use std::io;
use std::time::Duration;

use bytes::BytesMut;
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};

use crate::transport::link::{Link, out_buf, read_with, write_out};

/// STOMP over a byte stream: plain TCP or TLS.
pub(crate) struct TcpLink<S> {
    stream: S,
    out: BytesMut,
}

impl<S> TcpLink<S> {
    pub(crate) fn new(stream: S) -> TcpLink<S> {
        TcpLink {
            stream,
            out: BytesMut::new(),
        }
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin + Send> Link for TcpLink<S> {
    async fn recv(&mut self, buf: &mut BytesMut) -> io::Result<bool> {
        let got = read_with(&mut self.stream, |data| buf.extend_from_slice(data)).await?;
        Ok(got.is_some())
    }

    fn frame(&mut self, len: usize, _text: bool) -> &mut BytesMut {
        out_buf(&mut self.out, len)
    }

    fn buffered(&self) -> usize {
        self.out.len()
    }

    async fn flush(&mut self) -> io::Result<()> {
        write_out(&mut self.stream, &mut self.out).await
    }

    async fn close(&mut self, _restart: bool) {
        let _ = tokio::time::timeout(Duration::from_secs(2), async {
            let _ = self.flush().await;
            let _ = self.stream.shutdown().await;
        })
        .await;
    }
}
