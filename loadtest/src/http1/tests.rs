//! The lean client against a scripted server on a loopback socket.

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

use super::*;

/// Serves `answers` in order, each written in pieces to exercise partial
/// reads, and returns every request head and body it read.
async fn scripted(answers: Vec<&'static [u8]>) -> (String, tokio::task::JoinHandle<Vec<u8>>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    let server = tokio::spawn(async move {
        let (mut stream, _) = listener.accept().await.unwrap();
        let mut received = Vec::new();
        for answer in answers {
            let mut chunk = [0u8; 4096];
            let n = stream.read(&mut chunk).await.unwrap();
            received.extend_from_slice(&chunk[..n]);
            for piece in answer.chunks(7) {
                stream.write_all(piece).await.unwrap();
                stream.flush().await.unwrap();
                tokio::task::yield_now().await;
            }
        }
        received
    });
    (addr, server)
}

#[tokio::test]
async fn exchanges_keep_alive_answers() {
    let (addr, server) = scripted(vec![
        b"HTTP/1.1 200 OK\r\nContent-Type: image/gif\r\nX-EdgeTally-Outcome: bad_id\r\nContent-Length: 3\r\n\r\nGIF",
        b"HTTP/1.1 413 Payload Too Large\r\ncontent-length: 5\r\nconnection: close\r\n\r\nlarge",
    ])
    .await;
    let mut connection = Connection::new(Box::new(tokio::net::TcpStream::connect(&addr).await.unwrap()));
    let pixel = Request {
        post: false,
        path_and_query: "/p.gif?aff=1",
        host: "edge",
        user_agent: "ua",
        forwarded_for: Some(std::net::Ipv4Addr::new(10, 0, 0, 7)),
        content_type: "",
        body: b"",
    };
    let answer = connection.exchange(&pixel, false).await.unwrap();
    assert_eq!(
        (answer.status, answer.outcome.as_deref(), &answer.body[..], answer.closing),
        (200, Some(&b"bad_id"[..]), &b""[..], false)
    );
    let post = Request {
        post: true,
        path_and_query: "/v1/events",
        body: b"{}",
        content_type: "application/json",
        forwarded_for: None,
        ..pixel
    };
    let answer = connection.exchange(&post, true).await.unwrap();
    assert_eq!((answer.status, answer.outcome, &answer.body[..], answer.closing), (413, None, &b"large"[..], true));
    let received = String::from_utf8(server.await.unwrap()).unwrap();
    assert_eq!(
        received,
        "GET /p.gif?aff=1 HTTP/1.1\r\nhost: edge\r\nuser-agent: ua\r\nx-forwarded-for: 10.0.0.7\r\n\r\n\
         POST /v1/events HTTP/1.1\r\nhost: edge\r\nuser-agent: ua\r\ncontent-type: application/json\r\ncontent-length: 2\r\n\r\n{}"
    );
}

#[tokio::test]
async fn refuses_answers_it_cannot_frame() {
    let (addr, _server) = scripted(vec![b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n0\r\n\r\n"]).await;
    let mut connection = Connection::new(Box::new(tokio::net::TcpStream::connect(&addr).await.unwrap()));
    let request = Request {
        post: false,
        path_and_query: "/",
        host: "h",
        user_agent: "u",
        forwarded_for: None,
        content_type: "",
        body: b"",
    };
    assert!(matches!(connection.exchange(&request, false).await, Err(Http1Error::NoLength)));

    let (addr, _server) = scripted(vec![b"HTTP/1.1 200 OK\r\ncontent-length: 10\r\n\r\nshort"]).await;
    let mut connection = Connection::new(Box::new(tokio::net::TcpStream::connect(&addr).await.unwrap()));
    assert!(matches!(connection.exchange(&request, false).await, Err(Http1Error::Closed)));
}
