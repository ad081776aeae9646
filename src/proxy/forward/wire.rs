//! Forward, on the wire: the HTTP/1.1 that keygate speaks to its upstreams.
//!
//! The request head is written from the rewritten `http::Request` into the connection's reused
//! buffer; the response head is parsed with `httparse` (strict: no obsolete line folding, no
//! whitespace before a colon), and the body framing is decided once, here, by RFC 9112 6.3. A
//! response that could be read two ways (`Transfer-Encoding` beside `Content-Length`, two
//! different lengths, a length that is not a number) is refused as a whole (the caller answers
//! 502) instead of guessing: guessing is how responses are split.
//!
//! Nothing here does I/O; `pool.rs` feeds it bytes. Pure, so the unit tests below try every
//! framing without a socket.

use std::mem::MaybeUninit;

use bytes::{Buf, Bytes, BytesMut};
use http::header::{CONNECTION, CONTENT_LENGTH, TRANSFER_ENCODING, UPGRADE};
use http::{HeaderMap, HeaderName, HeaderValue, Method, StatusCode, Uri};

/// The largest response head (status line, headers, blank line) or trailer section read.
/// nginx's `proxy_buffer_size` is 4–8 KiB; 64 KiB leaves room for large cookies.
pub const MAX_HEAD: usize = 64 * 1024;

/// The most header lines a response head or trailer section may have (hyper's limit too).
pub const MAX_HEADERS: usize = 100;

/// The longest chunk-size line, extensions included.
const MAX_CHUNK_LINE: usize = 4096;

/// Interim (1xx) responses skipped before the final one; more is an upstream gone wrong.
pub const MAX_INTERIM: usize = 16;

/// Why an upstream's bytes were refused.
#[derive(Debug)]
pub enum WireError {
    HeadTooLarge,
    Malformed(&'static str),
}

impl std::fmt::Display for WireError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            WireError::HeadTooLarge => write!(f, "upstream response head over {MAX_HEAD} bytes"),
            WireError::Malformed(what) => write!(f, "malformed upstream response: {what}"),
        }
    }
}

impl std::error::Error for WireError {}

/// How the request body is sent.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Sending {
    /// No body (and no framing header but a `content-length: 0` where a body is expected).
    Nothing,
    Length(u64),
    Chunked,
}

/// Header lines a request head carries ahead of the message's own fields, and which of the
/// message's own fields they replace (those are left out).
///
/// Why not in the message's map: the gateway sets the same six or seven fields on every
/// request, and inserting each into the map (hashing its name, growing, then walking it back
/// out here) cost more than the rest of the head's encoding (callgrind: ~1,100 instructions a
/// request for the inserts alone). Written here once, they are one copy into the head.
pub struct Added {
    lines: Vec<u8>,
    replaces: fn(&HeaderName) -> bool,
}

thread_local! {
    /// Emptied line buffers, kept per worker for the next request (a request holds one only
    /// between its rewrite and its head being written).
    static SPARE_LINES: std::cell::RefCell<Vec<Vec<u8>>> =
        const { std::cell::RefCell::new(Vec::new()) };
}

impl Added {
    /// No lines yet; the message's fields for which `replaces` is true will be left out.
    pub fn new(replaces: fn(&HeaderName) -> bool) -> Added {
        let lines = SPARE_LINES
            .try_with(|s| s.borrow_mut().pop())
            .ok()
            .flatten()
            .unwrap_or_else(|| Vec::with_capacity(256));
        Added { lines, replaces }
    }

    /// Nothing added, nothing replaced.
    #[cfg(test)]
    pub fn none() -> Added {
        Added {
            lines: Vec::new(),
            replaces: |_| false,
        }
    }

    /// Appends `name: value` and its CR LF. The caller vouches that both are valid in a head
    /// (a `HeaderName`'s text, a `HeaderValue`'s bytes, or text checked as one).
    pub fn line(&mut self, name: &HeaderName, value: &[u8]) {
        self.start(name);
        self.value(value);
        self.end();
    }

    /// `name: `, for a value written in pieces ([`Added::value`], then [`Added::end`]).
    pub fn start(&mut self, name: &HeaderName) {
        self.lines.extend_from_slice(name.as_str().as_bytes());
        self.lines.extend_from_slice(b": ");
    }

    /// A piece of the current line's value.
    pub fn value(&mut self, piece: &[u8]) {
        self.lines.extend_from_slice(piece);
    }

    /// The buffer the current line's value is being written to.
    pub fn value_buf(&mut self) -> &mut Vec<u8> {
        &mut self.lines
    }

    /// Ends the current line.
    pub fn end(&mut self) {
        self.lines.extend_from_slice(b"\r\n");
    }

    pub fn as_bytes(&self) -> &[u8] {
        &self.lines
    }

    pub fn replaces(&self, name: &HeaderName) -> bool {
        (self.replaces)(name)
    }
}

impl Drop for Added {
    fn drop(&mut self) {
        // A buffer that once held an unusually large line set is let go rather than kept.
        if self.lines.capacity() == 0 || self.lines.capacity() > 4096 {
            return;
        }
        let mut lines = std::mem::take(&mut self.lines);
        lines.clear();
        let _ = SPARE_LINES.try_with(|s| {
            let mut s = s.borrow_mut();
            if s.len() < 64 {
                s.push(lines);
            }
        });
    }
}

impl std::fmt::Debug for Added {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Lines only: what keygate adds carries no secret (ids, addresses, hosts).
        f.debug_tuple("Added")
            .field(&String::from_utf8_lossy(&self.lines))
            .finish()
    }
}

/// Writes the request line, `added`'s lines, then the message's own headers but those `added`
/// replaces. Framing headers are ours: a client's `Content-Length` is replaced by the length
/// being sent, and `Transfer-Encoding` (hop-by-hop) is gone already.
pub fn encode_head(
    out: &mut Vec<u8>,
    method: &Method,
    uri: &Uri,
    headers: &HeaderMap,
    added: &Added,
    sending: Sending,
) {
    out.extend_from_slice(method.as_str().as_bytes());
    out.push(b' ');
    out.extend_from_slice(
        uri.path_and_query()
            .map_or("/", |pq| pq.as_str())
            .as_bytes(),
    );
    out.extend_from_slice(b" HTTP/1.1\r\n");
    out.extend_from_slice(added.as_bytes());
    for (name, value) in headers {
        if name == CONTENT_LENGTH || name == TRANSFER_ENCODING || added.replaces(name) {
            continue;
        }
        header_line(out, name, value);
    }
    match sending {
        Sending::Nothing => {
            // A request method whose body has a meaning gets an explicit empty one: some
            // upstreams answer 411 to a POST without a length.
            if matches!(*method, Method::POST | Method::PUT | Method::PATCH) {
                out.extend_from_slice(b"content-length: 0\r\n");
            }
        }
        Sending::Length(n) => {
            out.extend_from_slice(b"content-length: ");
            out.extend_from_slice(itoa::Buffer::new().format(n).as_bytes());
            out.extend_from_slice(b"\r\n");
        }
        Sending::Chunked => out.extend_from_slice(b"transfer-encoding: chunked\r\n"),
    }
    out.extend_from_slice(b"\r\n");
}

/// `name: value` and its CR LF (both already valid: `http` checked them).
fn header_line(out: &mut Vec<u8>, name: &HeaderName, value: &HeaderValue) {
    out.extend_from_slice(name.as_str().as_bytes());
    out.extend_from_slice(b": ");
    out.extend_from_slice(value.as_bytes());
    out.extend_from_slice(b"\r\n");
}

/// The line that opens one chunk of `len` bytes (the front writes chunks the same way).
pub(crate) use crate::http::h1::chunk_line;

/// The end of a chunked body, with its trailer section (empty when `trailers` is).
pub fn last_chunk(out: &mut Vec<u8>, trailers: Option<&HeaderMap>) {
    out.extend_from_slice(b"0\r\n");
    for (name, value) in trailers.into_iter().flatten() {
        header_line(out, name, value);
    }
    out.extend_from_slice(b"\r\n");
}

/// How a response body is delimited (RFC 9112 6.3).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Framing {
    /// `HEAD`, 204, 304: no body whatever the headers say.
    Empty,
    Length(u64),
    Chunked,
    /// Until the upstream closes: no length, or a transfer coding other than chunked last.
    Close,
}

/// A final response head, split off the read buffer.
#[derive(Debug)]
pub struct Head {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub framing: Framing,
    /// The upstream lets the connection carry another request after this one.
    pub keep_alive: bool,
}

/// What [`parse_head`] found at the front of the buffer.
#[derive(Debug)]
pub enum Parsed {
    /// Not a whole head yet.
    Partial,
    /// A 1xx other than 101, now consumed: read on for the final response.
    Interim,
    Final(Head),
}

/// Parses the response head at the front of `buf` and, once it is whole, splits it off.
/// `head_request` says the request was `HEAD`; `upgrade` that it asked to switch protocols
/// (a 101 to anything else is malformed).
pub fn parse_head(
    buf: &mut BytesMut,
    head_request: bool,
    upgrade: bool,
) -> Result<Parsed, WireError> {
    // Left uninitialised (httparse writes what it parses): an initialised array of 100 was a
    // 3 KiB memset on every response.
    let mut slots = [const { MaybeUninit::<httparse::Header<'_>>::uninit() }; MAX_HEADERS];
    let mut resp = httparse::Response::new(&mut []);
    let parsed = httparse::ParserConfig::default()
        .parse_response_with_uninit_headers(&mut resp, buf, &mut slots);
    let len = match parsed {
        Ok(httparse::Status::Complete(len)) => len,
        Ok(httparse::Status::Partial) if buf.len() >= MAX_HEAD => {
            return Err(WireError::HeadTooLarge);
        }
        Ok(httparse::Status::Partial) => return Ok(Parsed::Partial),
        Err(httparse::Error::TooManyHeaders) => {
            return Err(WireError::Malformed("over 100 headers"));
        }
        Err(_) => return Err(WireError::Malformed("not an HTTP/1.x response head")),
    };
    if len > MAX_HEAD {
        return Err(WireError::HeadTooLarge);
    }
    let code = resp.code.unwrap_or(0);
    let http11 = resp.version == Some(1);
    let status = StatusCode::from_u16(code).map_err(|_| WireError::Malformed("status code"))?;
    if status.is_informational() && status != StatusCode::SWITCHING_PROTOCOLS {
        buf.advance(len);
        return Ok(Parsed::Interim);
    }
    if status == StatusCode::SWITCHING_PROTOCOLS && !upgrade {
        return Err(WireError::Malformed(
            "101 to a request that asked for no upgrade",
        ));
    }

    // Where each name and value lies in the head, so the values can share its bytes.
    SPANS.with_borrow_mut(|spans| {
        spans.clear();
        spans.extend(spans_of(buf, resp.headers));
    });
    let head = buf.split_to(len).freeze();
    // A 101 keeps its `Connection: upgrade` and `Upgrade` for the client's side of the tunnel.
    let strip = status != StatusCode::SWITCHING_PROTOCOLS;
    let (headers, fields) = SPANS.with_borrow(|spans| response_map(&head, spans, strip))?;
    let framing = framing(status, &fields, head_request)?;
    let keep_alive = framing != Framing::Close
        && status != StatusCode::SWITCHING_PROTOCOLS
        && !fields.close
        && (http11 || fields.keep_alive);
    Ok(Parsed::Final(Head {
        status,
        headers,
        framing,
        keep_alive,
    }))
}

/// A header line's name and value as ranges of the buffer it was parsed from.
type Span = (usize, usize, usize, usize);

thread_local! {
    /// The spans of the head being read: kept per worker, so no head allocates or zeroes a list.
    static SPANS: std::cell::RefCell<Vec<Span>> =
        std::cell::RefCell::new(Vec::with_capacity(MAX_HEADERS));
}

fn spans_of<'a>(
    buf: &'a [u8],
    headers: &'a [httparse::Header<'_>],
) -> impl Iterator<Item = Span> + 'a {
    let base = buf.as_ptr() as usize;
    headers.iter().map(move |h| {
        let name = h.name.as_ptr() as usize - base;
        let value = h.value.as_ptr() as usize - base;
        (name, name + h.name.len(), value, value + h.value.len())
    })
}

/// The header map of a trailer section whose lines lie at `spans` of `head`: every field kept.
fn header_map(head: &Bytes, spans: &[Span]) -> Result<HeaderMap, WireError> {
    response_map(head, spans, false).map(|(headers, _)| headers)
}

/// Headers that describe one connection, not the message (RFC 9110 7.6.1), plus the
/// non-standard ones that clients and servers still send. `Upgrade` goes too, but for a 101.
pub const HOP_BY_HOP: [HeaderName; 8] = [
    CONNECTION,
    HeaderName::from_static("keep-alive"),
    HeaderName::from_static("proxy-connection"),
    http::header::PROXY_AUTHENTICATE,
    http::header::PROXY_AUTHORIZATION,
    http::header::TE,
    http::header::TRAILER,
    TRANSFER_ENCODING,
];

/// What the framing and reuse rules read from a response head's fields, gathered in the pass
/// that builds its map (instead of looking each up in the map afterwards, then removing the
/// hop-by-hop ones: five hashed lookups a response).
struct Fields {
    /// The one length all `Content-Length` values agree on (`5, 5` is 5), if any.
    length: Result<Option<u64>, &'static str>,
    /// `Transfer-Encoding` seen: whether its last coding so far is `chunked`, or what is wrong.
    coding: Option<Result<bool, &'static str>>,
    /// `Connection: close` / `keep-alive` seen.
    close: bool,
    keep_alive: bool,
    /// The other names `Connection` lists: hop-by-hop too, so dropped as well.
    named: Vec<HeaderName>,
}

impl Fields {
    fn content_length(&mut self, value: &[u8]) {
        let Ok(found) = &mut self.length else { return };
        for part in value.split(|&b| b == b',') {
            let digits = part.trim_ascii();
            if digits.is_empty() || digits.len() > 19 || !digits.iter().all(u8::is_ascii_digit) {
                self.length = Err("Content-Length");
                return;
            }
            let n = digits
                .iter()
                .fold(0u64, |n, d| n * 10 + u64::from(d - b'0'));
            if found.is_some_and(|f| f != n) {
                self.length = Err("two different Content-Length values");
                return;
            }
            *found = Some(n);
        }
    }

    fn transfer_coding(&mut self, value: &HeaderValue) {
        let mut chunked_last = match self.coding {
            Some(Err(_)) => return,
            Some(Ok(c)) => c,
            None => false,
        };
        let Ok(text) = value.to_str() else {
            self.coding = Some(Err("Transfer-Encoding"));
            return;
        };
        for coding in text.split(',').map(str::trim).filter(|c| !c.is_empty()) {
            if chunked_last {
                self.coding = Some(Err("a transfer coding after chunked"));
                return;
            }
            chunked_last = coding.eq_ignore_ascii_case("chunked");
        }
        self.coding = Some(Ok(chunked_last));
    }

    fn connection(&mut self, value: &HeaderValue) {
        // Names are taken only from a value of visible ASCII, as `to_str` has it.
        let names = value.to_str().is_ok();
        for token in value.as_bytes().split(|&b| b == b',') {
            let token = token.trim_ascii();
            if token.eq_ignore_ascii_case(b"close") {
                self.close = true;
            } else if token.eq_ignore_ascii_case(b"keep-alive") {
                self.keep_alive = true;
            } else if names && let Ok(name) = HeaderName::from_bytes(token) {
                self.named.push(name);
            }
        }
    }
}

/// The map of a final response head (or, without `strip`, a trailer section) whose lines lie at
/// `spans` of `head`, with its framing
/// fields read on the way; without its hop-by-hop fields (and those its `Connection` names)
/// when `strip`.
fn response_map(
    head: &Bytes,
    spans: &[Span],
    strip: bool,
) -> Result<(HeaderMap, Fields), WireError> {
    let mut headers = crate::http::h1::maps::take(spans.len());
    let mut fields = Fields {
        length: Ok(None),
        coding: None,
        close: false,
        keep_alive: false,
        named: Vec::new(),
    };
    for &(n0, n1, v0, v1) in spans {
        let name = HeaderName::from_bytes(&head[n0..n1])
            .map_err(|_| WireError::Malformed("header name"))?;
        let value = HeaderValue::from_maybe_shared(head.slice(v0..v1))
            .map_err(|_| WireError::Malformed("header value"))?;
        if name == CONTENT_LENGTH {
            fields.content_length(value.as_bytes());
        } else if name == TRANSFER_ENCODING {
            fields.transfer_coding(&value);
        } else if name == CONNECTION {
            fields.connection(&value);
        }
        if strip && (name == UPGRADE || HOP_BY_HOP.contains(&name)) {
            continue;
        }
        headers.append(name, value);
    }
    if strip {
        for name in &fields.named {
            headers.remove(name);
        }
    }
    Ok((headers, fields))
}

/// RFC 9112 6.3, strictly.
fn framing(status: StatusCode, fields: &Fields, head_request: bool) -> Result<Framing, WireError> {
    if head_request
        || status.is_informational()
        || status == StatusCode::NO_CONTENT
        || status == StatusCode::NOT_MODIFIED
    {
        return Ok(Framing::Empty);
    }
    let length = fields.length.map_err(WireError::Malformed)?;
    if let Some(coding) = fields.coding {
        if length.is_some() {
            return Err(WireError::Malformed(
                "Transfer-Encoding and Content-Length together",
            ));
        }
        return Ok(match coding.map_err(WireError::Malformed)? {
            true => Framing::Chunked,
            false => Framing::Close,
        });
    }
    Ok(length.map_or(Framing::Close, Framing::Length))
}

/// One step of a chunked body.
#[derive(Debug)]
pub enum Chunk {
    Data(Bytes),
    Trailers(HeaderMap),
    /// The body is over (its last chunk and any trailers are consumed).
    End,
    /// More bytes are needed.
    More,
}

/// A chunked body's decoder: where in the body the front of the buffer is.
#[derive(Debug, Default)]
pub struct Dechunk {
    state: State,
}

#[derive(Debug, Default)]
enum State {
    #[default]
    Size,
    Data(u64),
    /// The CR LF after a chunk's data.
    DataEnd,
    Trailers,
    Done,
}

impl Dechunk {
    /// Decodes what it can from the front of `buf`, consuming it. Data is split off (shared,
    /// not copied) up to the end of the current chunk.
    pub fn decode(&mut self, buf: &mut BytesMut) -> Result<Chunk, WireError> {
        loop {
            match self.state {
                State::Size => {
                    let Some(eol) = find_crlf(buf)? else {
                        if buf.len() > MAX_CHUNK_LINE {
                            return Err(WireError::Malformed("chunk size line too long"));
                        }
                        return Ok(Chunk::More);
                    };
                    let size = chunk_size(&buf[..eol])?;
                    buf.advance(eol + 2);
                    self.state = if size == 0 {
                        State::Trailers
                    } else {
                        State::Data(size)
                    };
                }
                State::Data(left) => {
                    if buf.is_empty() {
                        return Ok(Chunk::More);
                    }
                    let n = usize::try_from(left).unwrap_or(usize::MAX).min(buf.len());
                    let data = buf.split_to(n).freeze();
                    let left = left - n as u64;
                    self.state = if left == 0 {
                        State::DataEnd
                    } else {
                        State::Data(left)
                    };
                    return Ok(Chunk::Data(data));
                }
                State::DataEnd => {
                    if buf.len() < 2 {
                        return Ok(Chunk::More);
                    }
                    if &buf[..2] != b"\r\n" {
                        return Err(WireError::Malformed("chunk data longer than its size"));
                    }
                    buf.advance(2);
                    self.state = State::Size;
                }
                State::Trailers => {
                    if buf.len() < 2 {
                        return Ok(Chunk::More);
                    }
                    if &buf[..2] == b"\r\n" {
                        buf.advance(2);
                        self.state = State::Done;
                        return Ok(Chunk::End);
                    }
                    return self.trailers(buf);
                }
                State::Done => return Ok(Chunk::End),
            }
        }
    }

    fn trailers(&mut self, buf: &mut BytesMut) -> Result<Chunk, WireError> {
        let mut slots = [httparse::EMPTY_HEADER; MAX_HEADERS];
        let (len, spans) = match httparse::parse_headers(buf, &mut slots) {
            Ok(httparse::Status::Complete((len, parsed))) => {
                (len, spans_of(buf, parsed).collect::<Vec<_>>())
            }
            Ok(httparse::Status::Partial) if buf.len() >= MAX_HEAD => {
                return Err(WireError::HeadTooLarge);
            }
            Ok(httparse::Status::Partial) => return Ok(Chunk::More),
            Err(_) => return Err(WireError::Malformed("trailer section")),
        };
        let section = buf.split_to(len).freeze();
        let trailers = header_map(&section, &spans)?;
        self.state = State::Done;
        Ok(Chunk::Trailers(trailers))
    }
}

/// Where the CR LF ending the line at the front of `buf` is; a bare LF is malformed.
fn find_crlf(buf: &[u8]) -> Result<Option<usize>, WireError> {
    match memchr::memchr(b'\n', buf) {
        None => Ok(None),
        Some(i) if i > 0 && buf[i - 1] == b'\r' => Ok(Some(i - 1)),
        Some(_) => Err(WireError::Malformed("a line ended by LF alone")),
    }
}

/// A chunk-size line without its CR LF: hex digits, then optional extensions (`;name=value`),
/// which are ignored but must hold no control bytes.
fn chunk_size(line: &[u8]) -> Result<u64, WireError> {
    let digits_end = line
        .iter()
        .position(|b| !b.is_ascii_hexdigit())
        .unwrap_or(line.len());
    let digits = &line[..digits_end];
    if digits.is_empty() || digits.len() > 15 {
        return Err(WireError::Malformed("chunk size"));
    }
    // Whitespace (SP, HTAB) only before a `;`.
    let rest = &line[digits_end..];
    let ext_start = rest
        .iter()
        .position(|&b| b != b' ' && b != b'\t')
        .unwrap_or(rest.len());
    let ext = &rest[ext_start..];
    if !(rest.is_empty() || ext.first() == Some(&b';'))
        || ext.iter().any(|&b| b < 0x20 && b != b'\t' || b == 0x7f)
    {
        return Err(WireError::Malformed("chunk size"));
    }
    Ok(digits.iter().fold(0u64, |n, &d| {
        let v = match d {
            b'0'..=b'9' => d - b'0',
            b'a'..=b'f' => d - b'a' + 10,
            _ => d - b'A' + 10,
        };
        n << 4 | u64::from(v)
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn head(text: &str) -> Result<Parsed, WireError> {
        parse_head(&mut BytesMut::from(text), false, false)
    }

    fn framing_of(text: &str) -> Result<Framing, WireError> {
        match head(text)? {
            Parsed::Final(h) => Ok(h.framing),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn framing_follows_rfc_9112_and_refuses_what_could_be_read_two_ways() {
        let ok = |t: &str| framing_of(t).unwrap();
        assert_eq!(
            ok("HTTP/1.1 200 OK\r\ncontent-length: 5\r\n\r\n"),
            Framing::Length(5)
        );
        assert_eq!(
            ok("HTTP/1.1 200 OK\r\nContent-Length: 5, 5\r\n\r\n"),
            Framing::Length(5)
        );
        assert_eq!(
            ok("HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"),
            Framing::Chunked
        );
        assert_eq!(
            ok("HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip, Chunked\r\n\r\n"),
            Framing::Chunked
        );
        assert_eq!(
            ok("HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip\r\n\r\n"),
            Framing::Close
        );
        assert_eq!(ok("HTTP/1.1 200 OK\r\n\r\n"), Framing::Close);
        assert_eq!(
            ok("HTTP/1.1 204 No Content\r\ncontent-length: 9\r\n\r\n"),
            Framing::Empty
        );
        assert_eq!(ok("HTTP/1.1 304 Not Modified\r\n\r\n"), Framing::Empty);
        for bad in [
            "HTTP/1.1 200 OK\r\ncontent-length: 5\r\ntransfer-encoding: chunked\r\n\r\n",
            "HTTP/1.1 200 OK\r\ncontent-length: 5\r\ncontent-length: 6\r\n\r\n",
            "HTTP/1.1 200 OK\r\ncontent-length: abc\r\n\r\n",
            "HTTP/1.1 200 OK\r\ncontent-length: -1\r\n\r\n",
            "HTTP/1.1 200 OK\r\ncontent-length: +5\r\n\r\n",
            "HTTP/1.1 200 OK\r\ncontent-length: 99999999999999999999\r\n\r\n",
            "HTTP/1.1 200 OK\r\ntransfer-encoding: chunked, gzip\r\n\r\n",
            "HTTP/1.1 101 Switching Protocols\r\n\r\n",
            "HTTP/1.1 200 OK\r\nbad header\r\n\r\n",
            "HTTP/1.1 200 OK\r\nx: a\r\n continued\r\n\r\n",
            "SSH-2.0-OpenSSH\r\n\r\n",
        ] {
            assert!(framing_of(bad).is_err(), "{bad:?}");
        }
        let mut head_req = BytesMut::from("HTTP/1.1 200 OK\r\ncontent-length: 9\r\n\r\n");
        let Parsed::Final(h) = parse_head(&mut head_req, true, false).unwrap() else {
            panic!()
        };
        assert_eq!(h.framing, Framing::Empty);
    }

    #[test]
    fn a_head_is_split_off_whole_and_interim_answers_are_skipped() {
        let mut buf = BytesMut::from(
            "HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\nx-a: 1\r\nContent-Length: 2\r\n\r\nhi",
        );
        assert!(matches!(
            parse_head(&mut buf, false, false).unwrap(),
            Parsed::Interim
        ));
        let Parsed::Final(h) = parse_head(&mut buf, false, false).unwrap() else {
            panic!()
        };
        assert_eq!(h.status, 200);
        assert_eq!(h.headers["x-a"], "1");
        assert!(h.keep_alive);
        assert_eq!(&buf[..], b"hi");

        let mut partial = BytesMut::from("HTTP/1.1 200 OK\r\nx-a: 1\r\n");
        assert!(matches!(
            parse_head(&mut partial, false, false).unwrap(),
            Parsed::Partial
        ));
        assert_eq!(partial.len(), 25);
    }

    #[test]
    fn a_response_s_hop_by_hop_fields_and_those_connection_names_are_left_out_but_a_101_s() {
        let Parsed::Final(h) = head(
            "HTTP/1.1 200 OK\r\nServer: up\r\nConnection: keep-alive, X-Hop\r\n\
             Keep-Alive: timeout=5\r\nX-Hop: 1\r\nTransfer-Encoding: chunked\r\n\
             Trailer: x-sum\r\nUpgrade: h2c\r\nProxy-Connection: x\r\nTE: trailers\r\n\
             X-Kept: 2\r\n\r\n",
        )
        .unwrap() else {
            panic!()
        };
        let left: Vec<&str> = h.headers.keys().map(HeaderName::as_str).collect();
        assert_eq!(left, ["server", "x-kept"]);
        assert_eq!(h.framing, Framing::Chunked);
        assert!(h.keep_alive);

        let mut switching = BytesMut::from(
            "HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n",
        );
        let Parsed::Final(h) = parse_head(&mut switching, false, true).unwrap() else {
            panic!()
        };
        assert_eq!(h.headers["upgrade"], "websocket");
        assert_eq!(h.headers["connection"], "Upgrade");
        assert!(!h.keep_alive);
    }

    #[test]
    fn reuse_needs_http_1_1_without_close_or_1_0_with_keep_alive() {
        let alive = |t: &str| match head(t).unwrap() {
            Parsed::Final(h) => h.keep_alive,
            other => panic!("{other:?}"),
        };
        assert!(alive("HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n"));
        assert!(!alive(
            "HTTP/1.1 200 OK\r\nconnection: Close\r\ncontent-length: 0\r\n\r\n"
        ));
        assert!(!alive("HTTP/1.0 200 OK\r\ncontent-length: 0\r\n\r\n"));
        assert!(alive(
            "HTTP/1.0 200 OK\r\nconnection: keep-alive\r\ncontent-length: 0\r\n\r\n"
        ));
        assert!(!alive("HTTP/1.1 200 OK\r\n\r\n"), "read to close");
    }

    #[test]
    fn an_oversized_head_is_refused_before_it_ends() {
        let mut buf = BytesMut::from("HTTP/1.1 200 OK\r\n");
        buf.extend_from_slice(format!("x: {}\r\n", "a".repeat(MAX_HEAD)).as_bytes());
        assert!(matches!(
            parse_head(&mut buf, false, false),
            Err(WireError::HeadTooLarge)
        ));
    }

    fn dechunk_all(wire: &[u8], step: usize) -> Result<(Vec<u8>, Option<HeaderMap>), WireError> {
        let mut d = Dechunk::default();
        let mut buf = BytesMut::new();
        let mut body = Vec::new();
        let mut trailers = None;
        let mut fed = 0;
        loop {
            match d.decode(&mut buf)? {
                Chunk::Data(b) => body.extend_from_slice(&b),
                Chunk::Trailers(t) => trailers = Some(t),
                Chunk::End => return Ok((body, trailers)),
                Chunk::More => {
                    if fed == wire.len() {
                        return Err(WireError::Malformed("ended early"));
                    }
                    let n = step.min(wire.len() - fed);
                    buf.extend_from_slice(&wire[fed..fed + n]);
                    fed += n;
                }
            }
        }
    }

    #[test]
    fn chunked_bodies_decode_whatever_the_read_sizes() {
        let wire = b"5;name=value\r\nhello\r\nA\r\n0123456789\r\n0\r\nx-sum: 1\r\n\r\n";
        for step in [1, 2, 3, 7, 100] {
            let (body, trailers) = dechunk_all(wire, step).unwrap();
            assert_eq!(body, b"hello0123456789", "step {step}");
            assert_eq!(trailers.unwrap()["x-sum"], "1");
        }
        let (body, _) = dechunk_all(b"3 ;x\r\nabc\r\n0\r\n\r\n", 1).unwrap();
        assert_eq!(body, b"abc", "whitespace before an extension");
        let (body, trailers) = dechunk_all(b"3\r\nabc\r\n0\r\n\r\n", 1).unwrap();
        assert_eq!(body, b"abc");
        assert!(trailers.is_none());
    }

    #[test]
    fn malformed_chunks_are_errors() {
        for bad in [
            &b"zz\r\nhello\r\n0\r\n\r\n"[..],
            b"5\r\nhelloX\r\n0\r\n\r\n",
            b"5\nhello\r\n0\r\n\r\n",
            b"-5\r\nhello\r\n0\r\n\r\n",
            b"5 x\r\nhello\r\n0\r\n\r\n",
            b"1234567890123456\r\n",
            b"5;a\x01b\r\nhello\r\n0\r\n\r\n",
            b"\r\nhello\r\n0\r\n\r\n",
            b"5\r;x\r\nhello\r\n0\r\n\r\n",
            b"5 \r\nhello\r\n0\r\n\r\n",
        ] {
            assert!(
                dechunk_all(bad, 4).is_err(),
                "{:?}",
                String::from_utf8_lossy(bad)
            );
        }
    }

    #[test]
    fn the_request_head_carries_our_framing_only() {
        let mut headers = HeaderMap::new();
        headers.insert("host", HeaderValue::from_static("up"));
        headers.insert("content-length", HeaderValue::from_static("999"));
        let uri: Uri = "/a?b=1".parse().unwrap();
        let mut out = Vec::new();
        encode_head(
            &mut out,
            &Method::PUT,
            &uri,
            &headers,
            &Added::none(),
            Sending::Length(3),
        );
        assert_eq!(
            out,
            b"PUT /a?b=1 HTTP/1.1\r\nhost: up\r\ncontent-length: 3\r\n\r\n"
        );
        out.clear();
        encode_head(
            &mut out,
            &Method::POST,
            &uri,
            &HeaderMap::new(),
            &Added::none(),
            Sending::Nothing,
        );
        assert_eq!(out, b"POST /a?b=1 HTTP/1.1\r\ncontent-length: 0\r\n\r\n");
        out.clear();
        encode_head(
            &mut out,
            &Method::GET,
            &uri,
            &HeaderMap::new(),
            &Added::none(),
            Sending::Nothing,
        );
        assert_eq!(out, b"GET /a?b=1 HTTP/1.1\r\n\r\n");
        out.clear();
        chunk_line(&mut out, 0x1a2b);
        last_chunk(&mut out, None);
        assert_eq!(out, b"1a2b\r\n0\r\n\r\n");
    }
}
