//! The transports that carry STOMP bytes: WebSocket (RFC 6455, server side) and plain
//! TCP or TLS. An idle connection holds no buffer: reads land in a per-thread scratch
//! buffer and only the bytes of an unfinished frame are kept; writes are framed
//! straight into an output buffer that is released once the socket took it.

use std::cell::RefCell;
use std::io;
use std::pin::Pin;
use std::task::Poll;
use std::time::Duration;

use bytes::{Buf, BufMut, BytesMut};
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt, ReadBuf};

/// WebSocket close code 1012: service restart (reconnect elsewhere).
const CLOSE_RESTART: u16 = 1012;
const CLOSE_NORMAL: u16 = 1000;
const CLOSE_PROTOCOL: u16 = 1002;
const CLOSE_INVALID_DATA: u16 = 1007;
const CLOSE_TOO_BIG: u16 = 1009;

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
async fn read_with<S, T>(io: &mut S, mut f: impl FnMut(&[u8]) -> T) -> io::Result<Option<T>>
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
fn out_buf(out: &mut BytesMut, len: usize) -> &mut BytesMut {
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
async fn write_out<S: AsyncWrite + Unpin>(io: &mut S, out: &mut BytesMut) -> io::Result<()> {
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

/// STOMP over WebSocket: each outgoing STOMP frame is one WebSocket message (text when
/// it is UTF-8, which every STOMP client reads; binary bodies stay binary). Incoming
/// messages are a byte stream to the STOMP decoder, whatever their boundaries.
pub(crate) struct WsLink<S> {
    io: S,
    out: BytesMut,
    rx: WsReader,
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
            rx: WsReader {
                partial: BytesMut::from(pending),
                max_message,
                ..WsReader::default()
            },
        }
    }
}

/// What a read brought.
#[derive(Debug, PartialEq)]
enum Got {
    /// Nothing complete yet (or only pings and pongs).
    Nothing,
    /// Message bytes for the STOMP decoder.
    Data,
    /// The peer's close frame.
    Close,
}

/// A WebSocket protocol violation: the close code and why.
#[derive(Debug, PartialEq)]
struct WsError {
    code: u16,
    reason: &'static str,
}

fn fail(code: u16, reason: &'static str) -> WsError {
    WsError { code, reason }
}

/// The receiving half of the WebSocket protocol, sans I/O.
#[derive(Default)]
struct WsReader {
    /// Bytes of a frame not complete yet.
    partial: BytesMut,
    /// `Some(text)` between the first and the last frame of a fragmented message.
    message: Option<bool>,
    /// Payload bytes of the current message so far (for the size limit).
    message_len: usize,
    /// Trailing bytes of the STOMP buffer that begin a UTF-8 sequence a later
    /// fragment completes.
    utf8_tail: usize,
    max_message: usize,
    /// The peer's close code, once its close frame came: nothing after it is read.
    closed: Option<u16>,
    /// Pings, pongs and messages of nothing but heart-beats received, for the frame
    /// rate.
    controls: u32,
}

/// Close codes a peer may send (RFC 6455 7.4.1, 7.4.2; 1012-1014 are registered since).
fn valid_close_code(code: u16) -> bool {
    matches!(code, 1000..=1003 | 1007..=1014 | 3000..=4999)
}

struct Header {
    fin: bool,
    opcode: u8,
    mask: [u8; 4],
    /// Header bytes, payload length.
    head: usize,
    len: usize,
}

impl WsReader {
    /// Takes `data` just read: message payloads are unmasked onto `buf`, replies to
    /// pings and closes are framed onto `out`.
    fn consume(
        &mut self,
        data: &[u8],
        buf: &mut BytesMut,
        out: &mut BytesMut,
    ) -> Result<Got, WsError> {
        if self.closed.is_some() {
            return Ok(Got::Close);
        }
        if self.partial.is_empty() {
            let (got, used) = self.frames(data, buf, out)?;
            if used < data.len() {
                self.partial.extend_from_slice(&data[used..]);
            }
            Ok(got)
        } else {
            let mut partial = std::mem::take(&mut self.partial);
            partial.extend_from_slice(data);
            let (got, used) = self.frames(&partial, buf, out)?;
            partial.advance(used);
            if !partial.is_empty() {
                self.partial = partial;
            }
            Ok(got)
        }
    }

    /// Handles the complete frames at the start of `src`; returns how many bytes they
    /// took.
    fn frames(
        &mut self,
        src: &[u8],
        buf: &mut BytesMut,
        out: &mut BytesMut,
    ) -> Result<(Got, usize), WsError> {
        let mut got = Got::Nothing;
        let mut at = 0;
        while let Some(h) = self.header(&src[at..])? {
            let Some(frame) = src.get(at..at + h.head + h.len) else {
                break;
            };
            let payload = &frame[h.head..];
            at += frame.len();
            match h.opcode {
                0x0..=0x2 => {
                    let text = match (h.opcode, self.message) {
                        (0, Some(text)) => text,
                        (0, None) => return Err(fail(CLOSE_PROTOCOL, "unexpected continuation")),
                        (_, Some(_)) => {
                            return Err(fail(CLOSE_PROTOCOL, "expected a continuation frame"));
                        }
                        (op, None) => op == 0x1,
                    };
                    let start = buf.len();
                    buf.extend_from_slice(payload);
                    unmask(&mut buf[start..], h.mask);
                    // A whole message of heart-beat EOLs costs a frame of the rate
                    // like a ping: a flood of them is work all the same.
                    if h.fin
                        && self.message.is_none()
                        && buf[start..].iter().all(|&b| b == b'\n' || b == b'\r')
                    {
                        self.controls = self.controls.saturating_add(1);
                    }
                    if text {
                        self.check_utf8(buf, start, h.fin)?;
                    }
                    if h.fin {
                        self.message = None;
                        self.message_len = 0;
                    } else {
                        self.message = Some(text);
                        self.message_len += payload.len();
                    }
                    got = Got::Data;
                }
                0x8 => {
                    let mut body = payload.to_vec();
                    unmask(&mut body, h.mask);
                    let code = match body.len() {
                        0 => CLOSE_NORMAL,
                        1 => return Err(fail(CLOSE_PROTOCOL, "bad close frame")),
                        _ => u16::from_be_bytes([body[0], body[1]]),
                    };
                    if body.len() >= 2 && !valid_close_code(code) {
                        return Err(fail(CLOSE_PROTOCOL, "invalid close code"));
                    }
                    if std::str::from_utf8(body.get(2..).unwrap_or_default()).is_err() {
                        return Err(fail(CLOSE_INVALID_DATA, "close reason is not UTF-8"));
                    }
                    // Data that came before the close is handed on first (its frames
                    // are answered); the close is echoed after that.
                    self.closed = Some(code);
                    let got = if got == Got::Data {
                        Got::Data
                    } else {
                        Got::Close
                    };
                    return Ok((got, at));
                }
                0x9 => {
                    let mut body = payload.to_vec();
                    unmask(&mut body, h.mask);
                    control(out, 0xA, &body);
                    self.controls = self.controls.saturating_add(1);
                }
                _ => self.controls = self.controls.saturating_add(1), // pong
            }
        }
        Ok((got, at))
    }

    /// Parses and checks the frame header at the start of `src`; `None` until it is
    /// all there. The size limit is checked before the payload is buffered.
    fn header(&self, src: &[u8]) -> Result<Option<Header>, WsError> {
        let [b0, b1, ..] = *src else {
            return Ok(None);
        };
        let fin = b0 & 0x80 != 0;
        let opcode = b0 & 0x0F;
        if b0 & 0x70 != 0 {
            return Err(fail(CLOSE_PROTOCOL, "reserved bits set"));
        }
        if b1 & 0x80 == 0 {
            return Err(fail(CLOSE_PROTOCOL, "client frames must be masked"));
        }
        let (ext, len) = match b1 & 0x7F {
            126 => match src.get(2..4) {
                Some(b) => (2, u64::from(u16::from_be_bytes([b[0], b[1]]))),
                None => return Ok(None),
            },
            127 => match src.get(2..10) {
                Some(b) => (8, u64::from_be_bytes(b.try_into().unwrap_or([0xFF; 8]))),
                None => return Ok(None),
            },
            n => (0, u64::from(n)),
        };
        match opcode {
            0x0..=0x2 => {
                let total = (self.message_len as u64).saturating_add(len);
                if total > self.max_message as u64 {
                    return Err(fail(CLOSE_TOO_BIG, "message too big"));
                }
            }
            0x8..=0xA => {
                if !fin || len > 125 {
                    return Err(fail(CLOSE_PROTOCOL, "bad control frame"));
                }
            }
            _ => return Err(fail(CLOSE_PROTOCOL, "unknown opcode")),
        }
        let head = 2 + ext + 4;
        let Some(mask) = src.get(head - 4..head) else {
            return Ok(None);
        };
        Ok(Some(Header {
            fin,
            opcode,
            mask: [mask[0], mask[1], mask[2], mask[3]],
            head,
            // At most `max_message`, which is a usize.
            len: len as usize,
        }))
    }

    /// Text messages must be UTF-8; a sequence may span fragments.
    fn check_utf8(&mut self, buf: &BytesMut, start: usize, fin: bool) -> Result<(), WsError> {
        let from = start.saturating_sub(self.utf8_tail);
        match std::str::from_utf8(&buf[from..]) {
            Ok(_) => self.utf8_tail = 0,
            Err(e) if e.error_len().is_none() && !fin => {
                self.utf8_tail = buf.len() - from - e.valid_up_to();
            }
            Err(_) => return Err(fail(CLOSE_INVALID_DATA, "text message is not UTF-8")),
        }
        Ok(())
    }
}

/// XORs `data` with the client's masking key.
fn unmask(data: &mut [u8], mask: [u8; 4]) {
    let m = u32::from_ne_bytes(mask);
    let mut chunks = data.chunks_exact_mut(4);
    for c in &mut chunks {
        let v = u32::from_ne_bytes([c[0], c[1], c[2], c[3]]) ^ m;
        c.copy_from_slice(&v.to_ne_bytes());
    }
    for (b, k) in chunks.into_remainder().iter_mut().zip(mask) {
        *b ^= k;
    }
}

/// Frames a server-to-client (unmasked) header for `len` payload bytes.
fn header(out: &mut BytesMut, opcode: u8, len: usize) {
    let out = out_buf(out, len + 10);
    out.put_u8(0x80 | opcode);
    if len < 126 {
        out.put_u8(len as u8);
    } else if let Ok(n) = u16::try_from(len) {
        out.put_u8(126);
        out.put_u16(n);
    } else {
        out.put_u8(127);
        out.put_u64(len as u64);
    }
}

fn control(out: &mut BytesMut, opcode: u8, payload: &[u8]) {
    header(out, opcode, payload.len());
    out.put_slice(payload);
}

impl<S: AsyncRead + AsyncWrite + Unpin + Send> WsLink<S> {
    /// Sends a close frame (`code`, `reason`) and flushes, within two seconds.
    async fn send_close(&mut self, code: u16, reason: &str) {
        let mut payload = code.to_be_bytes().to_vec();
        payload.extend_from_slice(reason.as_bytes());
        control(&mut self.out, 0x8, &payload);
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
        let mut got = if self.rx.closed.is_some() {
            Ok(Got::Close)
        } else if self.rx.partial.is_empty() {
            Ok(Got::Nothing)
        } else {
            let pending = std::mem::take(&mut self.rx.partial);
            self.rx.consume(&pending, buf, &mut self.out)
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
                    if self.rx.controls > 0 {
                        return Ok(true);
                    }
                }
                Ok(Got::Close) => {
                    let code = self.rx.closed.unwrap_or(CLOSE_NORMAL);
                    control(&mut self.out, 0x8, &code.to_be_bytes());
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
        header(&mut self.out, if text { 0x1 } else { 0x2 }, len);
        &mut self.out
    }

    fn buffered(&self) -> usize {
        self.out.len()
    }

    async fn flush(&mut self) -> io::Result<()> {
        write_out(&mut self.io, &mut self.out).await
    }

    async fn close(&mut self, restart: bool) {
        if let Some(code) = self.rx.closed {
            // The peer closed first: echo its code.
            self.send_close(code, "").await;
        } else if restart {
            self.send_close(CLOSE_RESTART, "service restart").await;
        } else {
            self.send_close(self.close_code, "").await;
        }
    }

    fn take_controls(&mut self) -> u32 {
        std::mem::take(&mut self.rx.controls)
    }
}

/// Frames for the fan-out benchmark: no socket, the bytes are counted.
#[derive(Default)]
pub(crate) struct NullLink {
    pub(crate) out: BytesMut,
}

/// Where a rendered frame goes.
pub(crate) trait Sink {
    fn frame(&mut self, len: usize, text: bool) -> &mut BytesMut;
}

impl<L: Link> Sink for L {
    fn frame(&mut self, len: usize, text: bool) -> &mut BytesMut {
        Link::frame(self, len, text)
    }
}

impl Sink for NullLink {
    fn frame(&mut self, len: usize, text: bool) -> &mut BytesMut {
        header(&mut self.out, if text { 0x1 } else { 0x2 }, len);
        &mut self.out
    }
}

/// For the `websocket` fuzz target: the reader must never panic, must give the same
/// stream bytes, replies and verdict however the input is split, and must never hold
/// more than a frame header plus the size limit.
// A broken promise is a panic: that is how the fuzzer hears of it.
#[allow(clippy::panic)]
pub(crate) fn fuzz_reader(data: &[u8]) {
    let Some((&split, input)) = data.split_first() else {
        return;
    };
    let max = 256;
    let run = |chunk: usize| {
        let mut r = WsReader {
            max_message: max,
            ..WsReader::default()
        };
        let (mut buf, mut out) = (BytesMut::new(), BytesMut::new());
        let mut verdict = Ok(());
        for piece in input.chunks(chunk.max(1)) {
            match r.consume(piece, &mut buf, &mut out) {
                Ok(Got::Close) => {
                    verdict = Err(0);
                    break;
                }
                Ok(_) => {}
                Err(e) => {
                    verdict = Err(e.code);
                    break;
                }
            }
            if r.partial.len() > max + 14 {
                panic!("holds {} bytes of an unfinished frame", r.partial.len());
            }
        }
        if verdict.is_ok() && r.closed.is_some() {
            verdict = Err(0);
        }
        (buf, out, verdict)
    };
    let whole = run(input.len());
    let split = run(usize::from(split));
    if whole != split {
        panic!("split changes the result: {whole:?} vs {split:?}");
    }
}

/// The bytes of a client frame (masked with `mask`), for tests.
#[cfg(test)]
fn client_frame(fin: bool, opcode: u8, payload: &[u8], mask: [u8; 4]) -> Vec<u8> {
    let mut b = BytesMut::new();
    header(&mut b, opcode, payload.len());
    b[0] = if fin { b[0] } else { b[0] & 0x7F };
    b[1] |= 0x80;
    b.extend_from_slice(&mask);
    let start = b.len();
    b.extend_from_slice(payload);
    unmask(&mut b[start..], mask);
    b.to_vec()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reader(max: usize) -> WsReader {
        WsReader {
            max_message: max,
            ..WsReader::default()
        }
    }

    const MASK: [u8; 4] = [0x11, 0x22, 0x33, 0x44];

    #[test]
    fn a_masked_text_frame_becomes_stream_bytes() {
        let mut r = reader(1024);
        let (mut buf, mut out) = (BytesMut::new(), BytesMut::new());
        let f = client_frame(true, 0x1, b"CONNECT\n\n\0", MASK);
        assert_eq!(r.consume(&f, &mut buf, &mut out), Ok(Got::Data));
        assert_eq!(&buf[..], b"CONNECT\n\n\0");
        assert!(out.is_empty());
    }

    #[test]
    fn any_split_of_the_input_gives_the_same_bytes() {
        let mut input = client_frame(false, 0x1, "SEND\nä".as_bytes(), MASK);
        input.extend(client_frame(true, 0x9, b"ping", MASK));
        input.extend(client_frame(true, 0x0, "ö\n\n\0".as_bytes(), [9, 8, 7, 6]));
        input.extend(client_frame(true, 0x2, &[0u8; 300], MASK));
        input.extend(client_frame(true, 0x2, &[7u8; 70_000], MASK));
        let mut want = "SEND\näö\n\n\0".as_bytes().to_vec();
        want.extend([0u8; 300]);
        want.extend([7u8; 70_000]);
        for split in [1, 2, 3, 7, 100, 4096] {
            let mut r = reader(100_000);
            let (mut buf, mut out) = (BytesMut::new(), BytesMut::new());
            for chunk in input.chunks(split) {
                r.consume(chunk, &mut buf, &mut out).expect("valid input");
            }
            assert_eq!(&buf[..], &want[..], "split {split}");
            assert_eq!(&out[..], b"\x8a\x04ping", "split {split}");
            assert!(r.partial.is_empty());
        }
    }

    #[test]
    fn a_close_frame_ends_the_input_after_the_data_before_it() {
        let mut r = reader(1024);
        let (mut buf, mut out) = (BytesMut::new(), BytesMut::new());
        let f = client_frame(true, 0x8, &[0x03, 0xE8, b'b', b'y', b'e'], MASK);
        assert_eq!(r.consume(&f, &mut buf, &mut out), Ok(Got::Close));
        assert_eq!(r.closed, Some(1000));
        // Data then the close in one read: the data first, the close on the next call.
        let mut r = reader(1024);
        let mut input = client_frame(true, 0x1, b"SEND\n\n\0", MASK);
        input.extend(client_frame(true, 0x8, &[0x03, 0xE9], MASK));
        input.extend(client_frame(true, 0x1, b"after", MASK));
        assert_eq!(r.consume(&input, &mut buf, &mut out), Ok(Got::Data));
        assert_eq!(&buf[..], b"SEND\n\n\0");
        assert_eq!(r.closed, Some(1001));
        assert_eq!(r.consume(b"more", &mut buf, &mut out), Ok(Got::Close));
        assert_eq!(&buf[..], b"SEND\n\n\0", "nothing after the close is read");
        assert!(
            out.is_empty(),
            "the echo is the link's to send, after the replies"
        );
    }

    #[test]
    fn close_codes_are_checked() {
        for (code, ok) in [
            (1000, true),
            (1001, true),
            (1003, true),
            (1007, true),
            (1011, true),
            (1012, true),
            (3000, true),
            (4999, true),
            (0, false),
            (999, false),
            (1004, false),
            (1005, false),
            (1006, false),
            (1015, false),
            (1016, false),
            (2999, false),
            (5000, false),
            (65535, false),
        ] {
            let mut r = reader(1024);
            let f = client_frame(true, 0x8, &u16::to_be_bytes(code), MASK);
            let got = r.consume(&f, &mut BytesMut::new(), &mut BytesMut::new());
            if ok {
                assert_eq!(got, Ok(Got::Close), "{code}");
            } else {
                assert_eq!(got.map_err(|e| e.code), Err(CLOSE_PROTOCOL), "{code}");
            }
        }
        let mut r = reader(1024);
        let f = client_frame(true, 0x8, &[0x03, 0xE8, 0xFF], MASK);
        let got = r.consume(&f, &mut BytesMut::new(), &mut BytesMut::new());
        assert_eq!(got.map_err(|e| e.code), Err(CLOSE_INVALID_DATA));
    }

    #[test]
    fn pings_and_pongs_are_counted() {
        let mut r = reader(1024);
        let mut input = client_frame(true, 0x9, b"a", MASK);
        input.extend(client_frame(true, 0xA, b"b", MASK));
        input.extend(client_frame(true, 0x9, b"c", MASK));
        let mut out = BytesMut::new();
        assert_eq!(
            r.consume(&input, &mut BytesMut::new(), &mut out),
            Ok(Got::Nothing)
        );
        assert_eq!(r.controls, 3);
        assert_eq!(&out[..], b"\x8a\x01a\x8a\x01c");
    }

    #[test]
    fn protocol_violations_are_refused_with_their_close_code() {
        let cases: Vec<(Vec<u8>, u16)> = vec![
            // Not masked.
            (b"\x81\x02hi".to_vec(), CLOSE_PROTOCOL),
            // Reserved bit.
            (
                {
                    let mut f = client_frame(true, 0x1, b"x", MASK);
                    f[0] |= 0x40;
                    f
                },
                CLOSE_PROTOCOL,
            ),
            (client_frame(true, 0x3, b"x", MASK), CLOSE_PROTOCOL),
            (client_frame(true, 0x0, b"x", MASK), CLOSE_PROTOCOL),
            (client_frame(false, 0x9, b"x", MASK), CLOSE_PROTOCOL),
            (client_frame(true, 0x9, &[0; 126], MASK), CLOSE_PROTOCOL),
            (
                client_frame(true, 0x1, &[0xFF, 0xFE], MASK),
                CLOSE_INVALID_DATA,
            ),
            (client_frame(true, 0x2, &[0; 65], MASK), CLOSE_TOO_BIG),
            (
                {
                    let mut f = client_frame(false, 0x1, b"abc", MASK);
                    f.extend(client_frame(true, 0x1, b"abc", MASK));
                    f
                },
                CLOSE_PROTOCOL,
            ),
            (
                {
                    let mut f = client_frame(false, 0x2, &[0; 40], MASK);
                    f.extend(client_frame(true, 0x0, &[0; 40], MASK));
                    f
                },
                CLOSE_TOO_BIG,
            ),
        ];
        for (input, code) in cases {
            let mut r = reader(64);
            let (mut buf, mut out) = (BytesMut::new(), BytesMut::new());
            let e = r.consume(&input, &mut buf, &mut out).expect_err("refused");
            assert_eq!(e.code, code, "{input:?}");
        }
    }

    #[test]
    fn the_size_limit_is_checked_before_the_payload_arrives() {
        let mut r = reader(1000);
        let (mut buf, mut out) = (BytesMut::new(), BytesMut::new());
        let f = client_frame(true, 0x2, &[0; 5000], MASK);
        // The header alone (2 + 2 length bytes) is enough to refuse it.
        let e = r.consume(&f[..4], &mut buf, &mut out).expect_err("too big");
        assert_eq!(e.code, CLOSE_TOO_BIG);
    }

    #[test]
    fn a_utf8_sequence_split_across_fragments_is_accepted() {
        let mut r = reader(1024);
        let (mut buf, mut out) = (BytesMut::new(), BytesMut::new());
        let s = "€".as_bytes();
        let mut f = client_frame(false, 0x1, &s[..1], MASK);
        f.extend(client_frame(false, 0x0, &s[1..2], MASK));
        f.extend(client_frame(true, 0x0, &s[2..], MASK));
        assert_eq!(r.consume(&f, &mut buf, &mut out), Ok(Got::Data));
        assert_eq!(&buf[..], s);
        // But a text message may not end inside one.
        let mut r = reader(1024);
        let f = client_frame(true, 0x1, &s[..2], MASK);
        assert!(r.consume(&f, &mut BytesMut::new(), &mut out).is_err());
    }

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

    #[test]
    fn server_frames_use_the_shortest_length_encoding() {
        for (len, head) in [(0, 2), (125, 2), (126, 4), (65_535, 4), (65_536, 10)] {
            let mut out = BytesMut::new();
            header(&mut out, 0x1, len);
            assert_eq!(out.len(), head, "{len}");
            assert_eq!(out[0], 0x81);
        }
    }
}
