//! What a connection needs of its transport, and the buffers every transport shares. An
//! idle connection holds no buffer: reads land in a per-thread scratch buffer and only
//! the bytes of an unfinished frame are kept; writes are framed straight into an output
//! buffer that is released once the socket took it.

use std::cell::RefCell;
use std::io;
use std::pin::Pin;
use std::task::Poll;

use bytes::{Buf, BytesMut};
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt, ReadBuf};

/// Bytes read from a socket at once; shared by every connection a worker thread runs.
const SCRATCH: usize = 32 * 1024;

thread_local! {
    static SCRATCH_BUF: RefCell<Box<[u8]>> = RefCell::new(vec![0; SCRATCH].into_boxed_slice());
}

/// A transport that carries STOMP bytes.
pub(crate) trait Link: Send {
    /// Appends what the peer sent to `buf`; `false` when the peer closed. An
    /// `InvalidData` error means a message over the size limit.
    async fn recv(&mut self, buf: &mut BytesMut) -> io::Result<bool>;
    /// Starts one outgoing frame of `len` bytes: the caller appends exactly `len` bytes
    /// to the returned buffer. `text`: the bytes are UTF-8.
    fn frame(&mut self, len: usize, text: bool) -> &mut BytesMut;
    /// Bytes framed and not yet written.
    fn buffered(&self) -> usize;
    /// Writes everything framed so far.
    async fn flush(&mut self) -> io::Result<()>;
    /// Closes; `restart` asks WebSocket clients to reconnect elsewhere.
    async fn close(&mut self, restart: bool);
    /// Control frames (pings, pongs) and heart-beat-only messages received since the
    /// last call: they count against the connection's frame rate like STOMP frames.
    fn take_controls(&mut self) -> u32 {
        0
    }

    /// Frames `bytes` whole.
    fn put(&mut self, bytes: &[u8]) {
        let text = std::str::from_utf8(bytes).is_ok();
        self.frame(bytes.len(), text).extend_from_slice(bytes);
    }
}

/// Reads once into the thread's scratch buffer and hands the bytes to `f`; `None` at
/// the end of the stream. The scratch buffer is never held across an await.
pub(crate) async fn read_with<S, T>(
    io: &mut S,
    mut f: impl FnMut(&[u8]) -> T,
) -> io::Result<Option<T>>
where
    S: AsyncRead + Unpin,
{
    std::future::poll_fn(|cx| {
        SCRATCH_BUF.with(|s| {
            let mut s = s.borrow_mut();
            let mut rb = ReadBuf::new(&mut s[..]);
            match Pin::new(&mut *io).poll_read(cx, &mut rb) {
                Poll::Pending => Poll::Pending,
                Poll::Ready(Err(e)) => Poll::Ready(Err(e)),
                Poll::Ready(Ok(())) if rb.filled().is_empty() => Poll::Ready(Ok(None)),
                Poll::Ready(Ok(())) => Poll::Ready(Ok(Some(f(rb.filled())))),
            }
        })
    })
    .await
}

/// Output buffers a worker thread has spare: a connection takes one when it has
/// something to write and gives it back once the socket took it, so busy connections
/// allocate nothing per message and idle ones hold no buffer. At most 256 of up to
/// 16 KiB each are kept per thread (4 MiB); larger ones are freed.
const SPARE_BUFFERS: usize = 256;
const SPARE_MAX_BYTES: usize = 16 * 1024;

thread_local! {
    static SPARE: RefCell<Vec<BytesMut>> = const { RefCell::new(Vec::new()) };
}

/// The output buffer, ready for `len` more bytes.
pub(crate) fn out_buf(out: &mut BytesMut, len: usize) -> &mut BytesMut {
    if out.capacity() == 0 {
        if let Some(b) = SPARE.with(|s| s.borrow_mut().pop()) {
            *out = b;
        }
    }
    out.reserve(len);
    out
}

/// Writes all of `out`, then hands its buffer back to the thread's spares. Cancel-safe
/// (a pong is written from inside `recv`, which a `select!` may drop): what was written
/// is taken off `out` at once, so nothing is sent twice.
pub(crate) async fn write_out<S: AsyncWrite + Unpin>(
    io: &mut S,
    out: &mut BytesMut,
) -> io::Result<()> {
    while !out.is_empty() {
        let n = io.write(out).await?;
        if n == 0 {
            return Err(io::ErrorKind::WriteZero.into());
        }
        out.advance(n);
    }
    let mut b = std::mem::take(out);
    // Written bytes were advanced over: reclaiming gives the whole allocation back
    // (false when there is none), and reclaiming more than the limit succeeds only
    // for a larger one.
    if b.try_reclaim(1) && !b.try_reclaim(SPARE_MAX_BYTES + 1) {
        SPARE.with(|s| {
            let mut s = s.borrow_mut();
            if s.len() < SPARE_BUFFERS {
                s.push(b);
            }
        });
    }
    io.flush().await
}

/// Where a rendered frame goes: a transport, or (benchmarks) a buffer.
pub(crate) trait Sink {
    fn frame(&mut self, len: usize, text: bool) -> &mut BytesMut;
}

impl<L: Link> Sink for L {
    fn frame(&mut self, len: usize, text: bool) -> &mut BytesMut {
        Link::frame(self, len, text)
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    /// A write cancelled half way (a `select!` dropped it) and started again sends each
    /// byte once.
    #[tokio::test]
    async fn a_cancelled_write_resumes_where_it_stopped() {
        use tokio::io::AsyncReadExt;

        let (mut near, mut far) = tokio::io::duplex(1000);
        let data: Vec<u8> = (0..5000u32).map(|i| (i % 251) as u8).collect();
        let mut out = BytesMut::from(&data[..]);
        // The peer reads nothing yet: the write stalls after 1,000 bytes.
        let stalled =
            tokio::time::timeout(Duration::from_millis(50), write_out(&mut near, &mut out)).await;
        assert!(stalled.is_err(), "the write should not finish");
        assert_eq!(out.len(), 4000);
        let reader = tokio::spawn(async move {
            let mut got = Vec::new();
            far.read_to_end(&mut got).await.map(|_| got)
        });
        let spares = SPARE.with(|s| s.borrow().len());
        write_out(&mut near, &mut out).await.expect("write");
        drop(near);
        assert_eq!(reader.await.expect("join").expect("read"), data);
        // The connection keeps no buffer; the thread keeps it, whole, for the next one.
        assert_eq!(out.capacity(), 0);
        assert_eq!(SPARE.with(|s| s.borrow().len()), spares + 1);
        let mut next = BytesMut::new();
        assert!(out_buf(&mut next, 5000).capacity() >= 5000);
        assert_eq!(SPARE.with(|s| s.borrow().len()), spares);
    }
}
