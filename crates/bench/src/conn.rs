//! One STOMP-over-WebSocket client connection on a plain `TcpStream`: the WebSocket
//! handshake and framing are done here (see `ws`) so that the fan-out read path costs
//! one read per batch of messages and no allocation per message. Frames are written and,
//! outside the fan-out path, read with the project's codec.

use std::net::SocketAddr;

use bytes::{Buf, BytesMut};
use pushcenter_stomp::{Command, Frame, Item, Limits, Version, decode, encode};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};

use crate::scan::{Scanned, scan};
use pushcenter_websocket::frame::{BINARY, CLOSE};
use pushcenter_websocket::{Reader, handshake};

use crate::{At, Error, Result, Target};

/// No server frame the bench expects is anywhere near this; a larger message is a
/// broken stream, not a reason to buffer.
const MAX_MESSAGE: usize = 16 << 20;

/// Read in chunks of this much; idle connections give their buffers back.
const READ_CHUNK: usize = 16 * 1024;

pub(crate) struct Conn {
    stream: TcpStream,
    /// Bytes from the socket not yet unwrapped from WebSocket frames.
    raw: BytesMut,
    /// The STOMP byte stream: data frame payloads, concatenated (STOMP framing does not
    /// follow WebSocket message boundaries, so fragments need no other handling).
    stomp: BytesMut,
    /// Control replies (pong, close) waiting to be written.
    out: BytesMut,
    /// The client side of the WebSocket protocol (masks, pongs, the close).
    rx: Reader,
    closed: bool,
    /// The CONNECTED frame's `session` (pushcenter: targets session pushes).
    pub(crate) session: Option<String>,
}

/// `ws://host[:port]/path` split into what the handshake and CONNECT need.
struct Url<'a> {
    authority: &'a str,
    host: &'a str,
    path: &'a str,
}

fn parse_url(url: &str) -> Result<Url<'_>> {
    let rest = url
        .strip_prefix("ws://")
        .ok_or(Error::Url("the STOMP url must start with ws://"))?;
    let (authority, path) = rest.find('/').map_or((rest, "/"), |i| rest.split_at(i));
    let host = if authority.starts_with('[') {
        authority.split(']').next().map_or(authority, |h| &h[1..])
    } else {
        authority.split(':').next().unwrap_or(authority)
    };
    if host.is_empty() {
        return Err(Error::Url("url without host"));
    }
    Ok(Url {
        authority,
        host,
        path,
    })
}

impl Conn {
    /// WebSocket handshake and STOMP CONNECT from the `i`-th source address; a failure
    /// names the url.
    pub(crate) async fn connect(t: &Target, i: usize) -> Result<Conn> {
        Conn::connect_to(t, i).await.at(&t.url)
    }

    async fn connect_to(t: &Target, i: usize) -> Result<Conn> {
        let url = parse_url(&t.url)?;
        let lookup = if url.authority.ends_with(']') || !url.authority.contains(':') {
            format!("{}:80", url.authority)
        } else {
            url.authority.to_string()
        };
        let server: SocketAddr = tokio::net::lookup_host(lookup.as_str())
            .await?
            .next()
            .ok_or(Error::Url("host did not resolve"))?;
        let socket = if server.is_ipv4() {
            TcpSocket::new_v4()?
        } else {
            TcpSocket::new_v6()?
        };
        if let Some(src) = t.sources.get(i % t.sources.len().max(1)) {
            socket.bind(SocketAddr::new(*src, 0))?;
        }
        let stream = socket.connect(server).await?;
        stream.set_nodelay(true)?;
        let mut c = Conn {
            stream,
            raw: BytesMut::new(),
            stomp: BytesMut::new(),
            out: BytesMut::new(),
            rx: Reader::client(
                MAX_MESSAGE,
                0x9E37_79B9 ^ (i as u32).wrapping_mul(0x85EB_CA6B),
            ),
            closed: false,
            session: None,
        };
        c.handshake(&url).await?;
        let mut connect = Frame::new(Command::Connect)
            .header("accept-version", "1.2")
            .header("host", t.vhost.as_deref().unwrap_or(url.host))
            .header("heart-beat", "0,0");
        if let Some(login) = &t.login {
            connect = connect.header("login", login);
        }
        if let Some(passcode) = &t.passcode {
            connect = connect.header("passcode", passcode);
        }
        c.send(&connect).await?;
        let connected = c.expect(Command::Connected).await?;
        c.session = connected.get("session").map(str::to_owned);
        Ok(c)
    }

    /// `connect`, then SUBSCRIBE with a receipt.
    pub(crate) async fn open(t: &Target, i: usize, destination: &str) -> Result<Conn> {
        let mut c = Conn::connect(t, i).await?;
        let subscribe = Frame::new(Command::Subscribe)
            .header("id", "0")
            .header("destination", destination)
            .header("receipt", "0");
        c.send(&subscribe).await.at(&t.url)?;
        c.expect(Command::Receipt).await.at(&t.url)?;
        c.idle();
        Ok(c)
    }

    async fn handshake(&mut self, url: &Url<'_>) -> Result<()> {
        // Any 16 bytes in base64 will do as the key; the answer must carry its hash.
        const KEY: &str = "dGhlIHNhbXBsZSBub25jZQ==";
        let req = format!(
            "GET {} HTTP/1.1\r\nhost: {}\r\nupgrade: websocket\r\nconnection: Upgrade\r\n\
             sec-websocket-key: {KEY}\r\nsec-websocket-version: 13\r\n\
             sec-websocket-protocol: v12.stomp\r\n\r\n",
            url.path, url.authority
        );
        self.stream.write_all(req.as_bytes()).await?;
        loop {
            if let Some(end) = self.raw.windows(4).position(|w| w == b"\r\n\r\n") {
                let status = self.raw[..end].split(|&b| b == b' ').nth(1);
                if status != Some(b"101") {
                    let line = self.raw[..end].split(|&b| b == b'\r').next().unwrap_or(&[]);
                    return Err(format!(
                        "WebSocket handshake refused: {}",
                        String::from_utf8_lossy(line)
                    )
                    .into());
                }
                let head = String::from_utf8_lossy(&self.raw[..end]).into_owned();
                let want = handshake::accept_key(KEY.as_bytes());
                if header_value(&head, "sec-websocket-accept") != Some(want.as_str()) {
                    return Err(Error::WebSocket(
                        "handshake answer without the right Sec-WebSocket-Accept",
                    ));
                }
                self.raw.advance(end + 4);
                return Ok(());
            }
            if self.raw.len() > 16 * 1024 {
                return Err("WebSocket handshake answer too long".into());
            }
            if self.read_raw().await? == 0 {
                return Err("closed during the WebSocket handshake".into());
            }
        }
    }

    /// Frees the buffers of a connection that has nothing buffered.
    pub(crate) fn idle(&mut self) {
        for b in [&mut self.raw, &mut self.stomp, &mut self.out] {
            if b.is_empty() {
                *b = BytesMut::new();
            }
        }
    }

    /// Encodes `f` into one binary WebSocket message and writes it.
    pub(crate) async fn send(&mut self, f: &Frame) -> Result<()> {
        let mut stomp = BytesMut::new();
        encode(f, Version::V1_2, &mut stomp)?;
        let mut msg = BytesMut::new();
        self.rx.put_frame(&mut msg, BINARY, &stomp);
        self.stream.write_all(&msg).await?;
        Ok(())
    }

    async fn read_raw(&mut self) -> Result<usize> {
        if self.raw.capacity() - self.raw.len() < READ_CHUNK / 4 {
            self.raw.reserve(READ_CHUNK);
        }
        Ok(self.stream.read_buf(&mut self.raw).await?)
    }

    /// Reads from the socket once and moves every whole WebSocket frame's payload into
    /// the STOMP buffer, answering pings and closes. `false` once the stream ended.
    async fn fill(&mut self) -> Result<bool> {
        if self.closed {
            return Ok(false);
        }
        if self.read_raw().await? == 0 {
            self.closed = true;
            return Ok(false);
        }
        match self.rx.consume(&self.raw, &mut self.stomp, &mut self.out) {
            Ok(_) => {}
            Err(e) => return Err(Error::WebSocket(e.reason)),
        }
        self.raw.clear();
        if let Some(code) = self.rx.closed() {
            if !self.closed {
                self.rx.put_frame(&mut self.out, CLOSE, &code.to_be_bytes());
                self.closed = true;
            }
        }
        if !self.out.is_empty() {
            self.stream.write_all(&self.out).await?;
            self.out.clear();
        }
        Ok(!self.closed || !self.stomp.is_empty())
    }

    /// The next STOMP frame (heart-beats skipped), decoded by the codec; `None` at the
    /// end of the stream.
    pub(crate) async fn frame(&mut self) -> Result<Option<Frame>> {
        loop {
            match decode(&mut self.stomp, &Limits::default())? {
                Some(Item::Frame(f)) => return Ok(Some(f)),
                Some(Item::HeartBeat) => continue,
                None => {}
            }
            if !self.fill().await? {
                return Ok(None);
            }
        }
    }

    pub(crate) async fn expect(&mut self, want: Command) -> Result<Frame> {
        match self.frame().await? {
            Some(f) if f.command == want => Ok(f),
            Some(f) => {
                Err(format!("expected {want}, got {} {:?}", f.command, f.get("message")).into())
            }
            None => Err(format!("closed while waiting for {want}").into()),
        }
    }

    /// The fan-out path: one socket read, then `on_body` for every whole MESSAGE now
    /// buffered, in order. `Ok(false)` once the stream ended; an ERROR frame is an error.
    pub(crate) async fn messages(&mut self, mut on_body: impl FnMut(&[u8])) -> Result<bool> {
        let open = self.fill().await?;
        let mut at = 0;
        loop {
            match scan(&self.stomp[at..]).map_err(Error::Stomp)? {
                Scanned::Incomplete => break,
                Scanned::Frame {
                    len,
                    message_body,
                    other,
                } => {
                    if let Some(r) = message_body {
                        on_body(&self.stomp[at + r.start..at + r.end]);
                    } else if other && self.stomp[at..].starts_with(b"ERROR") {
                        let end = (at + len).min(self.stomp.len());
                        return Err(format!(
                            "server sent {}",
                            String::from_utf8_lossy(&self.stomp[at..end]).trim_end_matches('\0')
                        )
                        .into());
                    }
                    at += len;
                }
            }
        }
        self.stomp.advance(at);
        Ok(open)
    }
}

/// The value of header `name` in an HTTP response head (any case, any spacing).
fn header_value<'a>(head: &'a str, name: &str) -> Option<&'a str> {
    head.lines().skip(1).find_map(|l| {
        let (n, value) = l.split_once(':')?;
        n.trim().eq_ignore_ascii_case(name).then(|| value.trim())
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_values_are_found_whatever_the_case_and_spacing() {
        let head = "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n\
                    Sec-WebSocket-Accept:\ts3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\nx: y";
        assert_eq!(
            header_value(head, "sec-websocket-accept"),
            Some("s3pPLMBiTxaQ9kYGzzhZRbK+xOo=")
        );
        assert_eq!(header_value(head, "upgrade"), Some("websocket"));
        assert_eq!(header_value(head, "sec-websocket-protocol"), None);
    }

    #[test]
    fn urls_split_into_authority_host_and_path() {
        let u = parse_url("ws://127.0.0.1:15674/ws").unwrap();
        assert_eq!(
            (u.authority, u.host, u.path),
            ("127.0.0.1:15674", "127.0.0.1", "/ws")
        );
        let u = parse_url("ws://[::1]:8080/ws?x=1").unwrap();
        assert_eq!((u.host, u.path), ("::1", "/ws?x=1"));
        let u = parse_url("ws://localhost").unwrap();
        assert_eq!((u.authority, u.path), ("localhost", "/"));
        assert!(matches!(parse_url("wss://h/ws"), Err(Error::Url(_))));
        assert!(matches!(parse_url("ws:///ws"), Err(Error::Url(_))));
    }
}
