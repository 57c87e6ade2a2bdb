//! Notices requests that carry both `Content-Length` and
//! `Transfer-Encoding`, which hyper accepts (dropping the length, as RFC
//! 9112 allows) but the gateway refuses.
//!
//! hyper removes the `Content-Length` header before a handler sees the
//! request, so the check happens on the wire: the agent listener's
//! connections are wrapped in a [`FramingGuard`] that watches header
//! blocks as they are read and raises a per-connection flag when one holds
//! both headers. hyper closes a connection after such a request, so the
//! flagged request is always the last one on it.
//!
//! # Security
//!
//! Two framings in one request are the raw material of request smuggling:
//! a proxy and its upstream may read the body differently. Refusing them
//! outright leaves no room for disagreement.

use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::{Context, Poll};

use axum::extract::ConnectInfo;
use axum::extract::Request;
use axum::extract::connect_info::Connected;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::serve::{IncomingStream, Listener};
use http::header::TRANSFER_ENCODING;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};

use crate::error::AppError;

/// Longest header name the scanner needs to recognise, plus its colon.
const NAME_PREFIX: usize = "transfer-encoding:".len();

/// A TCP listener whose connections are watched for ambiguous framing.
#[derive(Debug)]
pub(crate) struct GuardedListener(pub(crate) TcpListener);

impl Listener for GuardedListener {
    type Io = FramingGuard<TcpStream>;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        let (stream, addr) = Listener::accept(&mut self.0).await;
        (FramingGuard::new(stream), addr)
    }

    fn local_addr(&self) -> io::Result<Self::Addr> {
        self.0.local_addr()
    }
}

/// Who is on the other end of a connection, and what its bytes showed.
#[derive(Clone, Debug)]
pub(crate) struct Peer {
    /// The peer's address.
    pub(crate) addr: SocketAddr,
    ambiguous: Arc<AtomicBool>,
}

impl Peer {
    /// Whether a header block on this connection held both framings.
    pub(crate) fn saw_ambiguous_framing(&self) -> bool {
        self.ambiguous.load(Ordering::Acquire)
    }
}

impl Connected<IncomingStream<'_, GuardedListener>> for Peer {
    fn connect_info(stream: IncomingStream<'_, GuardedListener>) -> Self {
        Self { addr: *stream.remote_addr(), ambiguous: stream.io().flag.clone() }
    }
}

/// Refuses a request whose head held both `Content-Length` and
/// `Transfer-Encoding`, before anything else looks at it.
pub(crate) async fn reject_ambiguous(request: Request, next: Next) -> Response {
    let flagged = request
        .extensions()
        .get::<ConnectInfo<Peer>>()
        .is_some_and(|ConnectInfo(peer)| peer.saw_ambiguous_framing());
    // hyper kept `Transfer-Encoding` and dropped the length; the flag says
    // the length was there.
    if flagged && request.headers().contains_key(TRANSFER_ENCODING) {
        return AppError::AmbiguousLength.into_response();
    }
    next.run(request).await
}

/// Wraps a connection and watches the bytes read from it.
#[derive(Debug)]
pub(crate) struct FramingGuard<IO> {
    io: IO,
    scanner: Scanner,
    flag: Arc<AtomicBool>,
}

impl<IO> FramingGuard<IO> {
    fn new(io: IO) -> Self {
        Self { io, scanner: Scanner::default(), flag: Arc::new(AtomicBool::new(false)) }
    }
}

impl<IO: AsyncRead + Unpin> AsyncRead for FramingGuard<IO> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let this = &mut *self;
        let poll = Pin::new(&mut this.io).poll_read(cx, buf);
        if let Poll::Ready(Ok(())) = poll
            && this.scanner.feed(&buf.filled()[before..])
        {
            this.flag.store(true, Ordering::Release);
        }
        poll
    }
}

impl<IO: AsyncWrite + Unpin> AsyncWrite for FramingGuard<IO> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.io).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.io).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }
}

/// Reads bytes line by line and remembers, per block of lines ended by an
/// empty line, whether both framing headers started a line in it.
///
/// It does not know where bodies are, so a body's lines are scanned too;
/// a body that spells out both headers can only cause a refusal, never let
/// an ambiguous head through.
#[derive(Debug, Default)]
struct Scanner {
    prefix: Vec<u8>,
    line_len: usize,
    saw_length: bool,
    saw_encoding: bool,
}

impl Scanner {
    /// Scans more bytes; returns whether a block with both headers ended.
    fn feed(&mut self, bytes: &[u8]) -> bool {
        let mut found = false;
        for &byte in bytes {
            match byte {
                b'\n' => {
                    if self.line_len == 0 {
                        found |= self.saw_length && self.saw_encoding;
                        self.saw_length = false;
                        self.saw_encoding = false;
                    } else {
                        self.saw_length |= self.prefix.starts_with(b"content-length:");
                        self.saw_encoding |= self.prefix.starts_with(b"transfer-encoding:");
                    }
                    self.prefix.clear();
                    self.line_len = 0;
                }
                b'\r' => {}
                other => {
                    if self.prefix.len() < NAME_PREFIX {
                        self.prefix.push(other.to_ascii_lowercase());
                    }
                    self.line_len += 1;
                }
            }
        }
        found
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scan(chunks: &[&str]) -> bool {
        let mut scanner = Scanner::default();
        chunks.iter().fold(false, |found, chunk| found | scanner.feed(chunk.as_bytes()))
    }

    #[test]
    fn head_with_both_framings_is_noticed_even_across_reads() {
        let head = "POST /x HTTP/1.1\r\nHost: a\r\nContent-Length: 4\r\n\
                    Transfer-Encoding: chunked\r\n\r\n0\r\n\r\n";
        assert!(scan(&[head]));
        let (a, b) = head.split_at(40);
        assert!(scan(&[a, b]));
        assert!(scan(&[
            "POST / HTTP/1.1\r\ntransfer-ENCODING: chunked\r\nCONTENT-LENGTH: 3\r\n\r\n"
        ]));
    }

    #[test]
    fn heads_with_one_framing_each_are_not_flagged() {
        assert!(!scan(&[
            "POST /a HTTP/1.1\r\nContent-Length: 2\r\n\r\nok",
            "POST /b HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nok\r\n0\r\n\r\n",
        ]));
        assert!(!scan(&[
            "GET / HTTP/1.1\r\nX-Content-Length: 1\r\nTransfer-Encoding: chunked\r\n\r\n"
        ]));
    }
}
