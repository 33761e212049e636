//! How the lean loop reads pixel heads, what it hands to hyper, and what
//! it writes.

use proptest::strategy::Strategy;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::*;

/// A [`Pixel`] that owns what it read.
type OwnedPixel = (Source, String, Vec<u8>, Option<Vec<u8>>);

/// Reads a complete head as the loop does, with the loop's limits.
fn read(head: &[u8], client_ip_header: Option<&str>) -> Option<OwnedPixel> {
    let mut headers = [httparse::EMPTY_HEADER; HEADERS_MAX];
    let mut request = httparse::Request::new(&mut headers);
    assert!(request.parse(head).unwrap().is_complete(), "incomplete head: {head:?}");
    let pixel = Pixel::read(&request, 100, client_ip_header)?;
    Some((pixel.source, pixel.query.to_owned(), pixel.user_agent.to_owned(), pixel.forwarded.map(<[u8]>::to_vec)))
}

#[test]
fn plain_pixels_are_read_with_their_query_agent_and_client() {
    let head = b"GET /p.gif?aff=1&cmp=2&sub1=a%20b HTTP/1.1\r\nHost: edge\r\nUser-Agent: Mozilla/5.0\r\n\
        user-agent: second\r\nConnection: Keep-Alive\r\nX-Forwarded-For: 10.0.0.1\r\nx-forwarded-for: 10.0.0.2, 10.0.0.3\r\n\r\n";
    let (source, query, user_agent, forwarded) = read(head, Some("x-forwarded-for")).unwrap();
    assert_eq!(source, Source::Pixel);
    assert_eq!(query, "aff=1&cmp=2&sub1=a%20b");
    // hyper's `HeaderMap::get` gives the first value; the client IP
    // header's last value is the one the load balancer appended.
    assert_eq!(user_agent, b"Mozilla/5.0");
    assert_eq!(forwarded.as_deref(), Some(&b"10.0.0.2, 10.0.0.3"[..]));

    let (source, query, user_agent, forwarded) =
        read(b"GET /cv.gif HTTP/1.1\r\ncontent-length: 0\r\nx-forwarded-for: 10.0.0.1\r\n\r\n", None).unwrap();
    assert_eq!(
        (source, query.as_str(), user_agent.as_slice(), forwarded),
        (Source::ConversionPixel, "", &b""[..], None)
    );
    assert_eq!(read(b"GET /p.gif? HTTP/1.1\r\n\r\n", None).unwrap().1, "");
}

#[test]
fn everything_a_pixel_has_no_part_of_goes_to_hyper() {
    for head in [
        &b"HEAD /p.gif?aff=1 HTTP/1.1\r\n\r\n"[..],
        b"POST /p.gif?aff=1 HTTP/1.1\r\n\r\n",
        b"GET /p.gif?aff=1 HTTP/1.0\r\n\r\n",
        b"GET /pb?click_id=x HTTP/1.1\r\n\r\n",
        b"GET /healthz HTTP/1.1\r\n\r\n",
        b"GET /p.gifx?aff=1 HTTP/1.1\r\n\r\n",
        b"GET /P.GIF?aff=1 HTTP/1.1\r\n\r\n",
        b"GET http://edge/p.gif?aff=1 HTTP/1.1\r\n\r\n",
        b"GET /p.gif?aff=1#top HTTP/1.1\r\n\r\n",
        b"GET /p.gif?aff={1} HTTP/1.1\r\n\r\n",
        b"GET /p.gif?aff=\"1\" HTTP/1.1\r\n\r\n",
        b"GET /p.gif?aff=1 HTTP/1.1\r\nConnection: close\r\n\r\n",
        b"GET /p.gif?aff=1 HTTP/1.1\r\nconnection: keep-alive, upgrade\r\n\r\n",
        b"GET /p.gif?aff=1 HTTP/1.1\r\nUpgrade: h2c\r\n\r\n",
        b"GET /p.gif?aff=1 HTTP/1.1\r\nContent-Length: 5\r\n\r\n",
        b"GET /p.gif?aff=1 HTTP/1.1\r\nContent-Length: 00\r\n\r\n",
        b"GET /p.gif?aff=1 HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n",
        b"GET /p.gif?aff=1 HTTP/1.1\r\nExpect: 100-continue\r\n\r\n",
    ] {
        assert_eq!(read(head, None), None, "{}", String::from_utf8_lossy(head));
    }
    // Over the URL limit: hyper's path answers 414.
    let long = format!("GET /p.gif?cb={} HTTP/1.1\r\n\r\n", "9".repeat(100 - "/p.gif?cb=".len() + 1));
    assert_eq!(read(long.as_bytes(), None), None);
    let at_limit = format!("GET /p.gif?cb={} HTTP/1.1\r\n\r\n", "9".repeat(100 - "/p.gif?cb=".len()));
    assert!(read(at_limit.as_bytes(), None).is_some());
}

#[test]
fn plain_target_bytes_are_those_the_uri_parser_reads_alike() {
    // Every byte the loop passes parses as the same path and query with
    // the `http` crate that hyper uses.
    for byte in 0..=u8::MAX {
        if !is_plain_target_byte(byte) {
            continue;
        }
        let target = format!("/p.gif?a={}&b=1", byte as char);
        let parsed: http::Uri = target.parse().unwrap_or_else(|error| panic!("byte {byte}: {error}"));
        let (path, query) = target.split_once('?').unwrap();
        assert_eq!((parsed.path(), parsed.query()), (path, Some(query)), "byte {byte}");
    }
    assert!(!is_plain_target_byte(b'#') && !is_plain_target_byte(b' ') && !is_plain_target_byte(0x80));
}

#[test]
fn the_answer_is_the_gif_with_its_outcome_and_date() {
    let mut out = Vec::new();
    push_answer(&mut out, "bad_id", b"Sun, 06 Dec 2026 09:00:00 GMT");
    let mut headers = [httparse::EMPTY_HEADER; 8];
    let mut response = httparse::Response::new(&mut headers);
    let head_len = response.parse(&out).unwrap().unwrap();
    assert_eq!((response.code, response.version), (Some(200), Some(1)));
    let headers: Vec<(String, &[u8])> =
        response.headers.iter().map(|header| (header.name.to_owned(), header.value)).collect();
    assert_eq!(
        headers,
        [
            ("content-type".to_owned(), &b"image/gif"[..]),
            ("cache-control".to_owned(), b"no-store"),
            (OUTCOME_HEADER.to_owned(), b"bad_id"),
            ("content-length".to_owned(), b"43"),
            ("date".to_owned(), b"Sun, 06 Dec 2026 09:00:00 GMT"),
        ]
    );
    assert_eq!(&out[head_len..], PIXEL_GIF);
}

#[test]
fn the_date_is_the_http_date_of_its_second() {
    let mut date = Date::new();
    assert_eq!(date.at(1_796_547_600_999), b"Sun, 06 Dec 2026 09:00:00 GMT");
    assert_eq!(date.at(1_796_547_601_000), b"Sun, 06 Dec 2026 09:00:01 GMT");
    let now_ms = crate::http::now_ms();
    let parsed = httpdate::parse_http_date(std::str::from_utf8(date.at(now_ms)).unwrap()).unwrap();
    let skew = SystemTime::now().duration_since(parsed).unwrap();
    assert!(skew < Duration::from_secs(2), "{skew:?}");
}

#[tokio::test]
async fn a_handed_off_connection_reads_the_unread_bytes_first() {
    let (client, server) = tokio::io::duplex(64);
    let mut rewind = Rewind { unread: Bytes::from_static(b"GET /v1/"), inner: server };
    let mut client = client;
    client.write_all(b"events HTTP/1.1\r\n\r\n").await.unwrap();
    drop(client);
    let mut read = Vec::new();
    rewind.read_to_end(&mut read).await.unwrap();
    assert_eq!(read, b"GET /v1/events HTTP/1.1\r\n\r\n");
}

proptest::proptest! {
    /// Heads of any method, pixel-like target, version and headers
    /// (including framing and connection headers with odd values): reading
    /// them never panics, and a head read as a pixel is a plain `GET` of a
    /// pixel path, HTTP/1.1, without a body, whose query is the target's
    /// after its first `?`.
    #[test]
    fn any_head_is_either_a_plain_pixel_or_hyper_s(
        method in proptest::sample::select(vec!["GET", "HEAD", "POST", "get"]),
        target in proptest::prop_oneof![
            3 => "/(p\\.gif|cv\\.gif|pb|P\\.GIF)(\\?[a-z0-9=&%._+-]{0,30})?",
            1 => "/(p\\.gif|cv\\.gif)(\\?[!-~]{0,30})?",
        ],
        headers in proptest::collection::vec((
            proptest::prop_oneof![
                3 => proptest::sample::select(vec![
                    "content-length", "Content-Length", "connection", "Connection", "transfer-encoding",
                    "Expect", "upgrade", "user-agent", "x-forwarded-for",
                ]).prop_map(str::to_owned),
                1 => "[a-zA-Z-]{1,16}",
            ],
            proptest::prop_oneof![
                proptest::sample::select(vec![
                    "0", "00", " 0", "5", "keep-alive", "Keep-Alive", "close", "chunked", "keep-alive, close",
                ]).prop_map(str::to_owned),
                "[ -~]{0,24}",
            ],
        ), 0..6),
        version in proptest::sample::select(vec!["HTTP/1.1", "HTTP/1.0", "HTTP/2.0"]),
    ) {
        let mut head = format!("{method} {target} {version}\r\n");
        for (name, value) in &headers {
            head.push_str(&format!("{name}: {value}\r\n"));
        }
        head.push_str("\r\n");
        let mut slots = [httparse::EMPTY_HEADER; HEADERS_MAX];
        let mut request = httparse::Request::new(&mut slots);
        if let Ok(httparse::Status::Complete(_)) = request.parse(head.as_bytes())
            && let Some(pixel) = Pixel::read(&request, 8192, Some("x-forwarded-for"))
        {
            proptest::prop_assert_eq!(method, "GET");
            proptest::prop_assert_eq!(version, "HTTP/1.1");
            let (path, query) = target.split_once('?').unwrap_or((&target, ""));
            proptest::prop_assert!(matches!(path, "/p.gif" | "/cv.gif"));
            proptest::prop_assert_eq!(pixel.query, query);
            for (name, value) in &headers {
                let name = name.to_ascii_lowercase();
                proptest::prop_assert!(!matches!(name.as_str(), "transfer-encoding" | "expect" | "upgrade"));
                if name == "content-length" {
                    proptest::prop_assert_eq!(value.trim(), "0");
                }
                if name == "connection" {
                    proptest::prop_assert!(value.trim().eq_ignore_ascii_case("keep-alive"));
                }
            }
        }
    }
}
