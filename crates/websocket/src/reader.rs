//! The receiving half of the protocol, for either role.

use bytes::{Buf, BytesMut};

use crate::frame::{
    CLOSE, CLOSE_INVALID_DATA, CLOSE_NORMAL, CLOSE_PROTOCOL, CLOSE_TOO_BIG, PING, PONG, head,
    put_frame, unmask, valid_close_code,
};

/// Which end of the connection reads: a server reads masked frames and answers
/// unmasked, a client the other way round (RFC 6455 5.1).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    Server,
    Client,
}

/// What a read brought.
#[derive(Debug, PartialEq, Eq)]
pub enum Got {
    /// Nothing complete yet (or only pings and pongs).
    Nothing,
    /// Message bytes for the stream buffer.
    Data,
    /// The peer's close frame: see [`Reader::closed`] for its code.
    Close,
}

/// A protocol violation: the close code to answer with, and why.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WsError {
    pub code: u16,
    pub reason: &'static str,
}

fn fail(code: u16, reason: &'static str) -> WsError {
    WsError { code, reason }
}

/// A checked frame header.
struct Header {
    fin: bool,
    opcode: u8,
    mask: Option<[u8; 4]>,
    head_len: usize,
    /// At most the message limit, or 125 for a control frame.
    len: usize,
}

/// Reads frames, sans I/O. Message payloads are unmasked onto the caller's stream
/// buffer whatever the message boundaries; pings are answered onto the caller's output;
/// only the bytes of an unfinished frame are kept (never more than a header plus the
/// size limit).
#[derive(Debug)]
pub struct Reader {
    /// Bytes of a frame not complete yet.
    partial: BytesMut,
    /// `Some(text)` between the first and the last frame of a fragmented message.
    message: Option<bool>,
    /// Payload bytes of the current message so far (for the size limit).
    message_len: usize,
    /// Trailing bytes of the stream buffer that begin a UTF-8 sequence a later fragment
    /// completes (at most 3).
    utf8_tail: usize,
    max_message: usize,
    /// The peer's close code, once its close frame came: nothing after it is read.
    closed: Option<u16>,
    /// Pings, pongs and messages of nothing but line breaks received: a server counts
    /// them against its frame rate (a flood of them is work all the same).
    controls: u32,
    /// A client's masking state (xorshift32, never 0); 0 for a server.
    mask: u32,
}

impl Reader {
    /// A server's reader, refusing messages over `max_message` bytes.
    pub fn server(max_message: usize) -> Reader {
        Reader {
            partial: BytesMut::new(),
            message: None,
            message_len: 0,
            utf8_tail: 0,
            max_message,
            closed: None,
            controls: 0,
            mask: 0,
        }
    }

    /// A client's reader; its replies are masked with keys drawn from `seed`. The keys
    /// need only vary (RFC 6455 10.3 asks them of browsers, whose scripts an attacker
    /// controls); a load generator's need not be secret.
    pub fn client(max_message: usize, seed: u32) -> Reader {
        Reader {
            mask: seed.max(1),
            ..Reader::server(max_message)
        }
    }

    /// Bytes that came before the reader did (a server: sent right after the handshake
    /// request, read with it); [`Reader::consume`] reads them first.
    pub fn with_pending(mut self, pending: &[u8]) -> Reader {
        self.partial.extend_from_slice(pending);
        self
    }

    pub fn role(&self) -> Role {
        if self.mask == 0 {
            Role::Server
        } else {
            Role::Client
        }
    }

    /// The peer's close code, once its close frame came.
    pub fn closed(&self) -> Option<u16> {
        self.closed
    }

    /// Bytes held of an unfinished frame.
    pub fn held(&self) -> usize {
        self.partial.len()
    }

    /// Control frames and heart-beat-only messages since the last call.
    pub fn take_controls(&mut self) -> u32 {
        std::mem::take(&mut self.controls)
    }

    /// How many are counted and not yet taken.
    pub fn controls(&self) -> u32 {
        self.controls
    }

    fn next_mask(&mut self) -> Option<[u8; 4]> {
        if self.mask == 0 {
            return None;
        }
        let mut x = self.mask;
        x ^= x << 13;
        x ^= x >> 17;
        x ^= x << 5;
        self.mask = x;
        Some(x.to_be_bytes())
    }

    /// Frames a whole frame (a message, a pong, a close) onto `out` the way this role
    /// sends it: a client masks, with a fresh key each time.
    pub fn put_frame(&mut self, out: &mut BytesMut, opcode: u8, payload: &[u8]) {
        let mask = self.next_mask();
        put_frame(out, opcode, payload, mask);
    }

    /// Takes `data` just read (and whatever was held before it): message payloads go
    /// onto `buf`, replies to pings onto `out`. `&[]` reads what is held.
    pub fn consume(
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
        while let Some(Header {
            fin,
            opcode,
            mask,
            head_len,
            len,
        }) = self.header(&src[at..])?
        {
            let Some(frame) = src.get(at..at + head_len + len) else {
                break;
            };
            let payload = &frame[head_len..];
            at += frame.len();
            match opcode {
                0x0..=0x2 => {
                    let text = match (opcode, self.message) {
                        (0, Some(text)) => text,
                        (0, None) => return Err(fail(CLOSE_PROTOCOL, "unexpected continuation")),
                        (_, Some(_)) => {
                            return Err(fail(CLOSE_PROTOCOL, "expected a continuation frame"));
                        }
                        (op, None) => op == 0x1,
                    };
                    let start = buf.len();
                    buf.extend_from_slice(payload);
                    if let Some(m) = mask {
                        unmask(&mut buf[start..], m);
                    }
                    if fin
                        && self.message.is_none()
                        && buf[start..].iter().all(|&b| b == b'\n' || b == b'\r')
                    {
                        self.controls = self.controls.saturating_add(1);
                    }
                    if text {
                        self.check_utf8(buf, start, fin)?;
                    }
                    if fin {
                        self.message = None;
                        self.message_len = 0;
                    } else {
                        self.message = Some(text);
                        self.message_len += payload.len();
                    }
                    got = Got::Data;
                }
                CLOSE => {
                    let mut body = payload.to_vec();
                    if let Some(m) = mask {
                        unmask(&mut body, m);
                    }
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
                    // are answered); the close is reported after that.
                    self.closed = Some(code);
                    let got = if got == Got::Data {
                        Got::Data
                    } else {
                        Got::Close
                    };
                    return Ok((got, at));
                }
                PING => {
                    let mut body = payload.to_vec();
                    if let Some(m) = mask {
                        unmask(&mut body, m);
                    }
                    self.put_frame(out, PONG, &body);
                    self.controls = self.controls.saturating_add(1);
                }
                _ => self.controls = self.controls.saturating_add(1), // pong
            }
        }
        Ok((got, at))
    }

    /// Checks the frame header at the start of `src` as far as it has come, then
    /// parses it; `None` until it is all there. Each rule is checked as soon as its
    /// bytes are in, and the size limit before any of the payload is buffered.
    fn header(&self, src: &[u8]) -> Result<Option<Header>, WsError> {
        let [b0, b1, ..] = *src else {
            return Ok(None);
        };
        let fin = b0 & 0x80 != 0;
        let opcode = b0 & 0x0F;
        if b0 & 0x70 != 0 {
            return Err(fail(CLOSE_PROTOCOL, "reserved bits set"));
        }
        let masked = b1 & 0x80 != 0;
        match self.role() {
            Role::Server if !masked => {
                return Err(fail(CLOSE_PROTOCOL, "client frames must be masked"));
            }
            Role::Client if masked => {
                return Err(fail(CLOSE_PROTOCOL, "server frames must not be masked"));
            }
            _ => {}
        }
        let len = match b1 & 0x7F {
            126 => match src.get(2..4) {
                Some(b) => u64::from(u16::from_be_bytes([b[0], b[1]])),
                None => return Ok(None),
            },
            127 => match src.get(2..10) {
                Some(b) => u64::from_be_bytes(b.try_into().unwrap_or([0xFF; 8])),
                None => return Ok(None),
            },
            n => u64::from(n),
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
        let Some(h) = head(src) else {
            return Ok(None);
        };
        // At most `max_message` (or 125), which fits a usize.
        Ok(Some(Header {
            fin,
            opcode,
            mask: h.mask,
            head_len: h.header_len,
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

/// For the `websocket` fuzz target: a server's reader must never panic, must give the
/// same stream bytes, replies and verdict however the input is split, and must never
/// hold more than a frame header plus the size limit.
// A broken promise is a panic: that is how the fuzzer hears of it.
#[cfg(feature = "fuzzing")]
#[allow(clippy::panic)]
pub fn fuzz_reader(data: &[u8]) {
    let Some((&split, input)) = data.split_first() else {
        return;
    };
    let max = 256;
    let run = |chunk: usize| {
        let mut r = Reader::server(max);
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
            if r.held() > max + 14 {
                panic!("holds {} bytes of an unfinished frame", r.held());
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
