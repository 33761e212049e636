//! A lean HTTP/1.1 keep-alive client for the generator's hot path.
//!
//! The generator shares the machine with what it measures, so every
//! microsecond it spends per request is taken from the server. This client
//! writes each request head straight into a reused buffer, parses answers
//! with `httparse`, and runs in the task that sends, where hyper's client
//! would hand each request to a separate connection task and back. It speaks
//! only what a collector answers: `Content-Length` bodies, no pipelining.

use bytes::{Buf, Bytes, BytesMut};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

/// The largest response head read; a collector's is about 200 bytes.
const HEAD_BYTES_MAX: usize = 16 * 1024;

/// The largest response body read; a collector's largest answer is the
/// per-item result list of a 10,000-item post, about 300 KiB.
const BODY_BYTES_MAX: usize = 4 * 1024 * 1024;

/// Headers parsed per response.
const HEADERS_MAX: usize = 32;

#[derive(Debug, thiserror::Error)]
pub(crate) enum Http1Error {
    #[error("io: {0}")]
    Io(#[from] std::io::Error),
    #[error("connection closed before a complete answer")]
    Closed,
    #[error("bad response: {0}")]
    Parse(#[from] httparse::Error),
    #[error("response head larger than {HEAD_BYTES_MAX} bytes")]
    HeadTooLarge,
    #[error("response without a content-length (chunked answers are not read)")]
    NoLength,
    #[error("response body of {0} bytes, limit is {BODY_BYTES_MAX}")]
    BodyTooLarge(usize),
}

/// One answer, with only what the ledger needs copied out.
pub(crate) struct Answer {
    pub(crate) status: u16,
    /// The `x-edgetally-outcome` header, if any.
    pub(crate) outcome: Option<Bytes>,
    /// The `location` header of a redirect, if any.
    pub(crate) location: Option<Bytes>,
    /// The body, when the caller asked for it.
    pub(crate) body: Bytes,
    /// The server will close the connection after this answer.
    pub(crate) closing: bool,
}

/// The parts of a request.
pub(crate) struct Request<'a> {
    pub(crate) post: bool,
    pub(crate) path_and_query: &'a str,
    pub(crate) host: &'a str,
    pub(crate) user_agent: &'a str,
    /// Sent as `x-forwarded-for`, as a load balancer in front would.
    pub(crate) forwarded_for: Option<std::net::Ipv4Addr>,
    pub(crate) content_type: &'a str,
    pub(crate) body: &'a [u8],
}

/// A byte stream the client speaks over: plain TCP or TLS over it.
pub(crate) trait Io: AsyncRead + AsyncWrite + Unpin + Send {}

impl<T: AsyncRead + AsyncWrite + Unpin + Send> Io for T {}

pub(crate) struct Connection {
    stream: Box<dyn Io>,
    write: Vec<u8>,
    read: BytesMut,
}

// === impl Connection ===

impl Connection {
    pub(crate) fn new(stream: Box<dyn Io>) -> Connection {
        Connection { stream, write: Vec::with_capacity(512), read: BytesMut::with_capacity(8 * 1024) }
    }

    /// Sends one request and reads its answer; `keep_body` copies out the
    /// body of a successful answer (pixels' GIFs are not needed).
    pub(crate) async fn exchange(&mut self, request: &Request<'_>, keep_body: bool) -> Result<Answer, Http1Error> {
        self.write.clear();
        self.write.extend_from_slice(if request.post { b"POST " } else { b"GET " });
        self.write.extend_from_slice(request.path_and_query.as_bytes());
        self.write.extend_from_slice(b" HTTP/1.1\r\nhost: ");
        self.write.extend_from_slice(request.host.as_bytes());
        self.write.extend_from_slice(b"\r\nuser-agent: ");
        self.write.extend_from_slice(request.user_agent.as_bytes());
        if let Some(address) = request.forwarded_for {
            use std::io::Write;
            // Writing into a Vec cannot fail.
            let _ = write!(self.write, "\r\nx-forwarded-for: {address}");
        }
        if request.post {
            self.write.extend_from_slice(b"\r\ncontent-type: ");
            self.write.extend_from_slice(request.content_type.as_bytes());
            self.write.extend_from_slice(b"\r\ncontent-length: ");
            self.write.extend_from_slice(itoa::Buffer::new().format(request.body.len()).as_bytes());
        }
        self.write.extend_from_slice(b"\r\n\r\n");
        // Small bodies go out with the head in one write; large ones are not
        // copied.
        if request.body.len() <= 4096 {
            self.write.extend_from_slice(request.body);
            self.stream.write_all(&self.write).await?;
        } else {
            self.stream.write_all(&self.write).await?;
            self.stream.write_all(request.body).await?;
        }
        self.read_answer(keep_body).await
    }

    async fn read_answer(&mut self, keep_body: bool) -> Result<Answer, Http1Error> {
        loop {
            let mut headers = [httparse::EMPTY_HEADER; HEADERS_MAX];
            let mut response = httparse::Response::new(&mut headers);
            match response.parse(&self.read)? {
                httparse::Status::Complete(head_len) => {
                    let status = response.code.unwrap_or(0);
                    let mut content_length = None;
                    let mut outcome = None;
                    let mut location = None;
                    let mut closing = false;
                    for header in response.headers.iter() {
                        if header.name.eq_ignore_ascii_case("content-length") {
                            content_length = std::str::from_utf8(header.value).ok().and_then(|v| v.trim().parse().ok());
                        } else if header.name.eq_ignore_ascii_case(edgetally_collector::OUTCOME_HEADER) {
                            outcome = Some(Bytes::copy_from_slice(header.value));
                        } else if header.name.eq_ignore_ascii_case("location") {
                            location = Some(Bytes::copy_from_slice(header.value));
                        } else if header.name.eq_ignore_ascii_case("connection") {
                            closing = header.value.eq_ignore_ascii_case(b"close");
                        }
                    }
                    let body_len: usize = content_length.ok_or(Http1Error::NoLength)?;
                    if body_len > BODY_BYTES_MAX {
                        return Err(Http1Error::BodyTooLarge(body_len));
                    }
                    while self.read.len() < head_len + body_len {
                        self.fill().await?;
                    }
                    self.read.advance(head_len);
                    // Error answers explain themselves in their bodies.
                    let body = if keep_body || !matches!(status, 200 | 302) {
                        self.read.split_to(body_len).freeze()
                    } else {
                        self.read.advance(body_len);
                        Bytes::new()
                    };
                    return Ok(Answer { status, outcome, location, body, closing });
                }
                httparse::Status::Partial => {
                    if self.read.len() >= HEAD_BYTES_MAX {
                        return Err(Http1Error::HeadTooLarge);
                    }
                    self.fill().await?;
                }
            }
        }
    }

    async fn fill(&mut self) -> Result<(), Http1Error> {
        self.read.reserve(8 * 1024);
        if self.stream.read_buf(&mut self.read).await? == 0 {
            return Err(Http1Error::Closed);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests;
