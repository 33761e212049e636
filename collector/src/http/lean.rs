//! The lean pixel loop: answers keep-alive `GET /p.gif` and `GET /cv.gif`
//! on HTTP/1.1 connections, plain or TLS (when the client did not choose
//! HTTP/2), straight from the stream, and hands the connection to hyper
//! at its first request that is anything else.
//!
//! Pixels are most of an edge's traffic, and their answer is always the
//! same GIF with one varying header. hyper builds a `Request` and a
//! `HeaderMap` each way, encodes the answer's headers and arms a timer for
//! every request head; here a pixel costs an `httparse` pass into a stack
//! array and one answer written from constants. What a pixel has no part
//! of stays hyper's: a request with a body, `HEAD`, HTTP/1.0,
//! `Connection: close` or `upgrade`, `Expect`, a target with characters
//! outside the plain set, a head larger than the read buffer, a parse
//! error, HTTP/2's preface. Such a request goes to hyper with the bytes
//! already read, and so does every later request of its connection.
//!
//! Limits hold as on hyper's path: the URL limit (a longer target goes to
//! hyper, which answers `414`), the in-flight bound, the client's rate, and
//! the header read time-out, which here is the time from the last answer
//! (or the connection's start) until the next head is complete. A head
//! cut off by it is counted as refused, reason `header_read_timeout`. A
//! head still arriving when it outgrows the read buffer goes to hyper,
//! whose own time-out starts then: such a head may take up to twice the
//! limit.
//!
//! At shutdown the loop answers no further head: it writes the answers
//! it made, closes its side, and reads what the client still sends for a
//! moment before letting go, so that closing with unread bytes does not
//! reset the connection and lose answers on their way.

use std::future::poll_fn;
use std::io;
use std::net::IpAddr;
use std::pin::{Pin, pin};
use std::task::Poll;
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::sync::watch;
use tokio::time::Instant;

use super::{Ingress, OUTCOME_HEADER, PIXEL_GIF, Source};
use crate::metrics::ReasonLabels;

/// Read buffer of a connection, holding pipelined heads. Pixel heads are
/// well under 2 KiB; a head that does not fit goes to hyper, whose own
/// bound is larger.
const READ_BUF_BYTES: usize = 8 * 1024;

/// Answers are written once they fill this much, so a client pipelining
/// many small heads never makes the loop hold more.
const OUT_FLUSH_BYTES: usize = 16 * 1024;

/// Headers a pixel head may carry here; one with more goes to hyper
/// (which takes up to 100).
const HEADERS_MAX: usize = 32;

/// How long a connection closed at shutdown reads and drops what its
/// client still sends.
const LINGER: Duration = Duration::from_secs(1);

/// The answer's bytes before the outcome word.
const ANSWER_HEAD: &[u8] = b"HTTP/1.1 200 OK\r\ncontent-type: image/gif\r\ncache-control: no-store\r\n";

/// How a lean connection ended.
pub(super) enum Ended<S> {
    /// Closed: by the client, an error, the time-out or shutdown.
    Closed,
    /// A request the loop does not answer came: the connection is hyper's
    /// from it on, bytes already read first.
    HandOff(Rewind<S>),
}

/// Serves pixels on `stream` until the client leaves, the connection idles
/// or stalls past the header read time-out, `shutdown` turns true, or a
/// request comes that hyper must answer.
pub(super) async fn serve<S: AsyncRead + AsyncWrite + Unpin>(
    stream: S,
    peer_ip: IpAddr,
    ingress: &Ingress,
    mut shutdown: watch::Receiver<bool>,
) -> Ended<S> {
    let timeout = ingress.header_read_timeout;
    let mut conn = Conn { stream, buf: vec![0; READ_BUF_BYTES], start: 0, end: 0, out: Vec::new(), date: Date::new() };
    // The head being waited for must be complete by `waiting_since +
    // timeout`. The timer is set once and moved only when it fires, not
    // for every request: a busy connection costs no timer work.
    let mut waiting_since = Instant::now();
    let mut timer = pin!(tokio::time::sleep_until(waiting_since + timeout));
    // An idle connection learns of shutdown from `stopped`, polled when a
    // read waits; a busy one, which may never wait, from `stopping` before
    // each head (an atomic load: the value only ever turns true).
    let stopping = shutdown.clone();
    let mut stopped = pin!(crate::stopped(&mut shutdown));
    loop {
        let mut next = Next::Partial;
        while conn.out.len() < OUT_FLUSH_BYTES {
            if stopping.has_changed().unwrap_or(true) {
                next = Next::Stop;
                break;
            }
            next = conn.answer_next(ingress, peer_ip);
            if !matches!(next, Next::Answered) {
                break;
            }
        }
        if !conn.out.is_empty() {
            if conn.flush(timeout).await.is_err() {
                return Ended::Closed;
            }
            waiting_since = Instant::now();
        }
        match next {
            // The answers filled up: more heads may be waiting, and are
            // answered before anything more is read.
            Next::Answered => continue,
            Next::HandOff => return Ended::HandOff(conn.into_rewind()),
            Next::Partial if conn.start == 0 && conn.end == conn.buf.len() => {
                return Ended::HandOff(conn.into_rewind());
            }
            Next::Stop => {
                conn.close().await;
                return Ended::Closed;
            }
            Next::Partial => {}
        }
        conn.compact();
        let read = poll_fn(|cx| {
            let mut read_buf = ReadBuf::new(&mut conn.buf[conn.end..]);
            match Pin::new(&mut conn.stream).poll_read(cx, &mut read_buf) {
                Poll::Ready(Ok(())) => return Poll::Ready(Read::Bytes(read_buf.filled().len())),
                Poll::Ready(Err(_)) => return Poll::Ready(Read::Closed),
                Poll::Pending => {}
            }
            if stopped.as_mut().poll(cx).is_ready() {
                return Poll::Ready(Read::Stopped);
            }
            while timer.as_mut().poll(cx).is_ready() {
                let deadline = waiting_since + timeout;
                if deadline <= Instant::now() {
                    return Poll::Ready(Read::TimedOut);
                }
                timer.as_mut().reset(deadline);
            }
            Poll::Pending
        })
        .await;
        match read {
            Read::Bytes(0) | Read::Closed => return Ended::Closed,
            Read::Stopped => {
                conn.close().await;
                return Ended::Closed;
            }
            Read::Bytes(n_read) => conn.end += n_read,
            Read::TimedOut => {
                if conn.end > conn.start {
                    let labels = ReasonLabels { reason: "header_read_timeout" };
                    ingress.metrics.requests_refused.get_or_create(&labels).inc();
                }
                // Said properly (TLS's close_notify, then FIN), but what a
                // client this slow still sends is not waited for.
                let _ = tokio::time::timeout(LINGER, conn.stream.shutdown()).await;
                return Ended::Closed;
            }
        }
    }
}

enum Read {
    Bytes(usize),
    Closed,
    Stopped,
    TimedOut,
}

enum Next {
    Answered,
    Partial,
    HandOff,
    /// Shutdown began: no further head is answered.
    Stop,
}

struct Conn<S> {
    stream: S,
    /// Bytes read and not yet answered are `buf[start..end]`.
    buf: Vec<u8>,
    start: usize,
    end: usize,
    /// Answers not yet written: pipelined requests are answered in one
    /// write.
    out: Vec<u8>,
    date: Date,
}

impl<S: AsyncRead + AsyncWrite + Unpin> Conn<S> {
    /// Answers the next request in the buffer, if it is complete and a
    /// pixel.
    fn answer_next(&mut self, ingress: &Ingress, peer_ip: IpAddr) -> Next {
        if self.start == self.end {
            return Next::Partial;
        }
        let mut headers = [httparse::EMPTY_HEADER; HEADERS_MAX];
        let mut request = httparse::Request::new(&mut headers);
        let head_len = match request.parse(&self.buf[self.start..self.end]) {
            Ok(httparse::Status::Complete(head_len)) => head_len,
            Ok(httparse::Status::Partial) => return Next::Partial,
            Err(_) => return Next::HandOff,
        };
        let client_ip_header = ingress.client_ip_header.as_ref().map(http::HeaderName::as_str);
        let Some(pixel) = Pixel::read(&request, ingress.url_bytes_max, client_ip_header) else {
            return Next::HandOff;
        };
        ingress.metrics.request_received_bytes.inc_by(head_len as u64);
        // One clock reading dates both the event and the answer.
        let now_ms = super::now_ms();
        let outcome = match ingress.admit(false, || ingress.client_ip(pixel.forwarded, peer_ip)) {
            Ok(_in_flight) => ingress.pixel(pixel.source, pixel.query, pixel.user_agent, now_ms),
            Err((_, rejection)) => ingress.outcome(pixel.source, Err(rejection), pixel.query),
        };
        push_answer(&mut self.out, outcome, self.date.at(now_ms));
        self.start += head_len;
        Next::Answered
    }

    /// Writes the answers made so far. The usual write completes at once
    /// and arms no timer; one that waits gets the header read time-out,
    /// after which a client that reads nothing is let go.
    async fn flush(&mut self, timeout: Duration) -> io::Result<()> {
        let mut n_written = 0;
        let at_once = poll_fn(|cx| {
            while n_written < self.out.len() {
                match Pin::new(&mut self.stream).poll_write(cx, &self.out[n_written..]) {
                    Poll::Ready(Ok(0)) => return Poll::Ready(Some(Err(io::ErrorKind::WriteZero.into()))),
                    Poll::Ready(Ok(n)) => n_written += n,
                    Poll::Ready(Err(error)) => return Poll::Ready(Some(Err(error))),
                    Poll::Pending => return Poll::Ready(None),
                }
            }
            // A TLS stream holds records until flushed; a TCP one, nothing.
            match Pin::new(&mut self.stream).poll_flush(cx) {
                Poll::Ready(flushed) => Poll::Ready(Some(flushed)),
                Poll::Pending => Poll::Ready(None),
            }
        })
        .await;
        match at_once {
            Some(written) => written?,
            None => {
                let rest = async {
                    self.stream.write_all(&self.out[n_written..]).await?;
                    self.stream.flush().await
                };
                tokio::time::timeout(timeout, rest).await.map_err(|_| io::Error::from(io::ErrorKind::TimedOut))??;
            }
        }
        self.out.clear();
        Ok(())
    }

    /// Closes the connection after the answers written: its side first,
    /// then what the client still sends is read and dropped for at most
    /// [`LINGER`], until the client closes too.
    async fn close(mut self) {
        if self.stream.shutdown().await.is_err() {
            return;
        }
        let _ =
            tokio::time::timeout(LINGER, async { while let Ok(1..) = self.stream.read(&mut self.buf).await {} }).await;
    }

    /// Moves a partial head to the front of the buffer, making room to
    /// read the rest of it.
    fn compact(&mut self) {
        if self.start == self.end {
            (self.start, self.end) = (0, 0);
        } else if self.start > 0 {
            self.buf.copy_within(self.start..self.end, 0);
            (self.start, self.end) = (0, self.end - self.start);
        }
    }

    fn into_rewind(mut self) -> Rewind<S> {
        self.buf.truncate(self.end);
        let mut unread = Bytes::from(self.buf);
        let _ = unread.split_to(self.start);
        Rewind { unread, inner: self.stream }
    }
}

/// What a pixel's answer depends on, read from its head.
#[derive(Debug, PartialEq, Eq)]
struct Pixel<'h> {
    source: Source,
    query: &'h str,
    user_agent: &'h [u8],
    /// The last value of the configured client IP header.
    forwarded: Option<&'h [u8]>,
}

impl<'h> Pixel<'h> {
    /// The pixel a head asks for, or `None` when hyper must answer it.
    /// `client_ip_header` is the header naming the client, when a trusted
    /// load balancer is in front.
    fn read(
        request: &httparse::Request<'_, 'h>,
        url_bytes_max: usize,
        client_ip_header: Option<&str>,
    ) -> Option<Pixel<'h>> {
        if request.method != Some("GET") || request.version != Some(1) {
            return None;
        }
        let target = request.path?;
        if target.len() > url_bytes_max || !target.bytes().all(is_plain_target_byte) {
            return None;
        }
        let (path, query) = target.split_once('?').unwrap_or((target, ""));
        let source = super::pixel_source(path)?;
        let (mut user_agent, mut forwarded) = (None, None);
        for header in request.headers.iter() {
            let (name, value) = (header.name, header.value);
            if name.eq_ignore_ascii_case("user-agent") {
                user_agent = user_agent.or(Some(value));
            } else if name.eq_ignore_ascii_case("connection") {
                if !value.eq_ignore_ascii_case(b"keep-alive") {
                    return None;
                }
            } else if name.eq_ignore_ascii_case("content-length") {
                if value != b"0" {
                    return None;
                }
            } else if name.eq_ignore_ascii_case("transfer-encoding")
                || name.eq_ignore_ascii_case("expect")
                || name.eq_ignore_ascii_case("upgrade")
            {
                return None;
            } else if client_ip_header.is_some_and(|client_ip_header| name.eq_ignore_ascii_case(client_ip_header)) {
                forwarded = Some(value);
            }
        }
        Some(Pixel { source, query, user_agent: user_agent.unwrap_or_default(), forwarded })
    }
}

/// Whether a byte of a request target is one that hyper's URI parser reads
/// the same way in any part of it: unreserved, sub-delimiters, `:`, `@`,
/// `/`, `?` and `%`. A target with any other byte goes to hyper.
fn is_plain_target_byte(byte: u8) -> bool {
    byte.is_ascii_alphanumeric()
        || matches!(
            byte,
            b'-' | b'.'
                | b'_'
                | b'~'
                | b'!'
                | b'$'
                | b'&'
                | b'\''
                | b'('
                | b')'
                | b'*'
                | b'+'
                | b','
                | b';'
                | b'='
                | b':'
                | b'@'
                | b'/'
                | b'?'
                | b'%'
        )
}

/// Appends the GIF answer with its outcome word and date.
fn push_answer(out: &mut Vec<u8>, outcome: &str, date: &[u8]) {
    out.extend_from_slice(ANSWER_HEAD);
    out.extend_from_slice(OUTCOME_HEADER.as_bytes());
    out.extend_from_slice(b": ");
    out.extend_from_slice(outcome.as_bytes());
    out.extend_from_slice(b"\r\ncontent-length: 43\r\ndate: ");
    out.extend_from_slice(date);
    out.extend_from_slice(b"\r\n\r\n");
    out.extend_from_slice(&PIXEL_GIF);
}

/// The `date` header's value, formatted once a second.
struct Date {
    second: i64,
    text: String,
}

impl Date {
    fn new() -> Date {
        Date { second: i64::MIN, text: String::new() }
    }

    /// The value for the time `now_ms` (milliseconds since the Unix
    /// epoch).
    fn at(&mut self, now_ms: i64) -> &[u8] {
        let second = now_ms.div_euclid(1_000);
        if second != self.second {
            self.second = second;
            let time = SystemTime::UNIX_EPOCH + Duration::from_secs(u64::try_from(second).unwrap_or(0));
            self.text = httpdate::fmt_http_date(time);
        }
        self.text.as_bytes()
    }
}

/// A connection handed to hyper: what the loop read and did not answer is
/// read first, then the socket.
pub(super) struct Rewind<T> {
    unread: Bytes,
    inner: T,
}

impl<T: AsyncRead + Unpin> AsyncRead for Rewind<T> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        if !self.unread.is_empty() {
            let n = self.unread.len().min(buf.remaining());
            buf.put_slice(&self.unread.split_to(n));
            if self.unread.is_empty() {
                // Lets the loop's read buffer go.
                self.unread = Bytes::new();
            }
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for Rewind<T> {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut std::task::Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut std::task::Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut std::task::Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests;
