//! Just enough HTTP/1.1 to time a request precisely: write a request's
//! bytes, note when the first byte of the answer arrives, and read the
//! answer to its end so the connection can be reused.
//!
//! A general client (hyper) hides when bytes hit the socket; here the
//! write and the first read are ours to time.

use std::io;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use crate::clock::now_ns;

/// Largest response head accepted.
const MAX_HEAD: usize = 64 * 1024;

/// Why an exchange failed.
#[derive(Debug, thiserror::Error)]
pub enum ExchangeError {
    /// The socket failed.
    #[error("connection failed")]
    Io(#[from] io::Error),
    /// The peer closed before a whole answer arrived.
    #[error("connection closed before the response ended")]
    Closed,
    /// The answer is not HTTP/1.1 as this reader knows it.
    #[error("malformed response: {0}")]
    Malformed(&'static str),
}

/// What came back.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Answer {
    /// The status code.
    pub status: u16,
    /// When the first byte arrived ([`now_ns`]).
    pub first_byte_ns: u64,
    /// When the last byte arrived.
    pub done_ns: u64,
    /// Whether the server will close the connection.
    pub close: bool,
}

/// The bytes of a request with an empty body.
pub fn request(method: &str, path: &str, host: &str, headers: &[(&str, &str)]) -> Vec<u8> {
    let mut text = format!("{method} {path} HTTP/1.1\r\nhost: {host}\r\n");
    for (name, value) in headers {
        text.push_str(name);
        text.push_str(": ");
        text.push_str(value);
        text.push_str("\r\n");
    }
    if !matches!(method, "GET" | "HEAD") {
        text.push_str("content-length: 0\r\n");
    }
    text.push_str("\r\n");
    text.into_bytes()
}

/// The bytes of a request with a JSON body.
pub fn request_with_body(
    method: &str,
    path: &str,
    host: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> Vec<u8> {
    let mut text = format!("{method} {path} HTTP/1.1\r\nhost: {host}\r\n");
    for (name, value) in headers {
        text.push_str(&format!("{name}: {value}\r\n"));
    }
    text.push_str(&format!(
        "content-type: application/json\r\ncontent-length: {}\r\n\r\n",
        body.len()
    ));
    let mut bytes = text.into_bytes();
    bytes.extend_from_slice(body);
    bytes
}

/// Writes `request`, returning when it was handed to the kernel.
pub async fn send<S: AsyncWrite + Unpin>(stream: &mut S, request: &[u8]) -> io::Result<u64> {
    stream.write_all(request).await?;
    Ok(now_ns())
}

/// Reads one whole response from `stream`. `buf` carries bytes between
/// calls on the same connection and is left empty when the answer ends
/// exactly at a message boundary.
pub async fn receive<S: AsyncRead + Unpin>(
    stream: &mut S,
    buf: &mut Vec<u8>,
) -> Result<Answer, ExchangeError> {
    receive_inner(stream, buf, None).await
}

/// Like [`receive`], and also returns the body.
pub async fn receive_with_body<S: AsyncRead + Unpin>(
    stream: &mut S,
    buf: &mut Vec<u8>,
) -> Result<(Answer, Vec<u8>), ExchangeError> {
    let mut body = Vec::new();
    let answer = receive_inner(stream, buf, Some(&mut body)).await?;
    Ok((answer, body))
}

async fn receive_inner<S: AsyncRead + Unpin>(
    stream: &mut S,
    buf: &mut Vec<u8>,
    mut body: Option<&mut Vec<u8>>,
) -> Result<Answer, ExchangeError> {
    let mut first_byte_ns = if buf.is_empty() { 0 } else { now_ns() };
    let head_end = loop {
        if let Some(end) = find(buf, b"\r\n\r\n") {
            break end + 4;
        }
        if buf.len() > MAX_HEAD {
            return Err(ExchangeError::Malformed("response head too large"));
        }
        if read_more(stream, buf).await? == 0 {
            return Err(ExchangeError::Closed);
        }
        if first_byte_ns == 0 {
            first_byte_ns = now_ns();
        }
    };
    let head = parse_head(&buf[..head_end])?;
    buf.drain(..head_end);

    match head.framing {
        Framing::Length(length) => {
            while buf.len() < length {
                if read_more(stream, buf).await? == 0 {
                    return Err(ExchangeError::Closed);
                }
            }
            let taken = buf.drain(..length);
            if let Some(body) = body.as_deref_mut() {
                body.extend(taken);
            }
        }
        Framing::Chunked => read_chunked(stream, buf, body).await?,
        Framing::UntilClose => {
            while read_more(stream, buf).await? != 0 {}
            let taken = buf.drain(..);
            if let Some(body) = body {
                body.extend(taken);
            }
        }
    }
    Ok(Answer { status: head.status, first_byte_ns, done_ns: now_ns(), close: head.close })
}

/// Reads only the status of an answer, timing its first byte; what
/// follows the head is left unread. For connections used once.
pub async fn receive_head<S: AsyncRead + Unpin>(
    stream: &mut S,
    buf: &mut Vec<u8>,
) -> Result<Answer, ExchangeError> {
    let mut first_byte_ns = 0;
    loop {
        if let Some(end) = find(buf, b"\r\n\r\n") {
            let head = parse_head(&buf[..end + 4])?;
            let now = now_ns();
            return Ok(Answer { status: head.status, first_byte_ns, done_ns: now, close: true });
        }
        if buf.len() > MAX_HEAD {
            return Err(ExchangeError::Malformed("response head too large"));
        }
        if read_more(stream, buf).await? == 0 {
            return Err(ExchangeError::Closed);
        }
        if first_byte_ns == 0 {
            first_byte_ns = now_ns();
        }
    }
}

async fn read_more<S: AsyncRead + Unpin>(stream: &mut S, buf: &mut Vec<u8>) -> io::Result<usize> {
    buf.reserve(8 * 1024);
    stream.read_buf(buf).await
}

/// Reads a chunked body to its last chunk and the blank line after any
/// trailers.
async fn read_chunked<S: AsyncRead + Unpin>(
    stream: &mut S,
    buf: &mut Vec<u8>,
    mut body: Option<&mut Vec<u8>>,
) -> Result<(), ExchangeError> {
    loop {
        let line_end = loop {
            if let Some(end) = find(buf, b"\r\n") {
                break end;
            }
            if read_more(stream, buf).await? == 0 {
                return Err(ExchangeError::Closed);
            }
        };
        let size_text = std::str::from_utf8(&buf[..line_end])
            .map_err(|_| ExchangeError::Malformed("chunk size"))?;
        let size_text = size_text.split(';').next().unwrap_or_default().trim();
        let size = usize::from_str_radix(size_text, 16)
            .map_err(|_| ExchangeError::Malformed("chunk size"))?;
        buf.drain(..line_end + 2);
        if size == 0 {
            // Trailers, if any, end with an empty line.
            loop {
                if buf.starts_with(b"\r\n") {
                    buf.drain(..2);
                    return Ok(());
                }
                if let Some(end) = find(buf, b"\r\n\r\n") {
                    buf.drain(..end + 4);
                    return Ok(());
                }
                if read_more(stream, buf).await? == 0 {
                    return Err(ExchangeError::Closed);
                }
            }
        }
        while buf.len() < size + 2 {
            if read_more(stream, buf).await? == 0 {
                return Err(ExchangeError::Closed);
            }
        }
        if let Some(body) = body.as_deref_mut() {
            body.extend_from_slice(&buf[..size]);
        }
        buf.drain(..size + 2);
    }
}

enum Framing {
    Length(usize),
    Chunked,
    UntilClose,
}

struct Head {
    status: u16,
    framing: Framing,
    close: bool,
}

fn parse_head(head: &[u8]) -> Result<Head, ExchangeError> {
    let text = std::str::from_utf8(head).map_err(|_| ExchangeError::Malformed("not text"))?;
    let mut lines = text.split("\r\n");
    let status_line = lines.next().unwrap_or_default();
    let mut parts = status_line.split(' ');
    if !parts.next().is_some_and(|v| v.starts_with("HTTP/1.")) {
        return Err(ExchangeError::Malformed("status line"));
    }
    let status =
        parts.next().and_then(|s| s.parse().ok()).ok_or(ExchangeError::Malformed("status code"))?;

    let mut framing = Framing::UntilClose;
    let mut close = false;
    for line in lines {
        let Some((name, value)) = line.split_once(':') else { continue };
        let value = value.trim();
        if name.eq_ignore_ascii_case("content-length") {
            let length = value.parse().map_err(|_| ExchangeError::Malformed("content-length"))?;
            framing = Framing::Length(length);
        } else if name.eq_ignore_ascii_case("transfer-encoding")
            && value.to_ascii_lowercase().contains("chunked")
        {
            framing = Framing::Chunked;
        } else if name.eq_ignore_ascii_case("connection") && value.eq_ignore_ascii_case("close") {
            close = true;
        }
    }
    if status == 204 || status == 304 || (100..200).contains(&status) {
        framing = Framing::Length(0);
    }
    Ok(Head { status, framing, close })
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|window| window == needle)
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn read(bytes: &[u8]) -> (Result<Answer, ExchangeError>, Vec<u8>) {
        let mut stream = bytes;
        let mut buf = Vec::new();
        let answer = receive(&mut stream, &mut buf).await;
        (answer, buf)
    }

    #[tokio::test]
    async fn a_response_with_a_length_is_read_to_its_end() {
        let (answer, rest) = read(b"HTTP/1.1 200 OK\r\ncontent-length: 5\r\n\r\nhelloHTTP").await;
        let answer = answer.unwrap();
        assert_eq!(answer.status, 200);
        assert!(answer.first_byte_ns > 0 && answer.done_ns >= answer.first_byte_ns);
        assert_eq!(rest, b"HTTP");
    }

    #[tokio::test]
    async fn a_chunked_response_is_read_to_its_last_chunk() {
        let bytes =
            b"HTTP/1.1 403 Forbidden\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n";
        let mut stream = &bytes[..];
        let mut buf = Vec::new();
        let (answer, body) = receive_with_body(&mut stream, &mut buf).await.unwrap();
        assert_eq!(answer.status, 403);
        assert_eq!(body, b"abc");
        assert!(buf.is_empty());
    }

    #[tokio::test]
    async fn a_response_cut_short_is_an_error() {
        let (answer, _) = read(b"HTTP/1.1 200 OK\r\ncontent-length: 5\r\n\r\nhe").await;
        assert!(matches!(answer, Err(ExchangeError::Closed)));
    }

    #[test]
    fn requests_without_a_body_say_so_unless_they_are_reads() {
        let get = String::from_utf8(request("GET", "/a", "h", &[("x", "1")])).unwrap();
        assert_eq!(get, "GET /a HTTP/1.1\r\nhost: h\r\nx: 1\r\n\r\n");
        let delete = String::from_utf8(request("DELETE", "/a", "h", &[])).unwrap();
        assert!(delete.contains("content-length: 0\r\n"));
    }
}
