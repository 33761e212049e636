//! A bare GIF server: the baseline that "overhead over a bare server" is
//! measured against (`benches/compare.sh`).
//!
//! It runs the collector's HTTP stack and nothing else: as the collector,
//! one thread per core, each with a single-threaded tokio runtime and its
//! own `SO_REUSEPORT` listener, hyper-util's auto builder with HTTP/1.1
//! keep-alive, `TCP_NODELAY` on every connection, and
//! every request answered with the collector's 43-byte [`PIXEL_GIF`] and the
//! same `Content-Type` and `Cache-Control`. No parsing, validation, counting,
//! limits, timers or metrics, so the collector's throughput divided by this
//! one's is the share of the machine left after EdgeTally's own work.
//!
//! Usage: `bare-gif --listen 127.0.0.1:0`; prints `listening on ADDR` on
//! stdout once bound and serves until killed. `--workers N` sets the
//! number of threads (the collector's `--http-workers`).

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use clap::Parser;
use edgetally_collector::PIXEL_GIF;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::header::{CACHE_CONTROL, CONTENT_TYPE, HeaderValue};
use hyper::service::service_fn;
use hyper::{Request, Response};
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use tokio::net::TcpListener;

/// A server that answers every request with the pixel GIF, as a baseline.
#[derive(Debug, Parser)]
struct Args {
    /// Address to listen on (port 0 picks a free port, printed on stdout).
    #[arg(long, default_value = "127.0.0.1:0")]
    listen: SocketAddr,
    /// Serving threads, one per core when absent (as the collector).
    #[arg(long)]
    workers: Option<usize>,
}

fn main() -> std::io::Result<()> {
    let args = Args::parse();
    let n_workers = args.workers.unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()));
    let listeners = edgetally_collector::bind_http(args.listen, n_workers.max(1))?;
    // Rust's stdout is line-buffered, so the line is out before any accept.
    println!("listening on {}", listeners[0].local_addr()?);
    let workers: Vec<_> = listeners
        .into_iter()
        .map(|listener| {
            std::thread::spawn(move || -> std::io::Result<()> {
                let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
                runtime.block_on(async move { serve(TcpListener::from_std(listener)?).await })
            })
        })
        .collect();
    for worker in workers {
        worker.join().map_err(|_| std::io::Error::other("worker panicked"))??;
    }
    Ok(())
}

async fn serve(listener: TcpListener) -> std::io::Result<()> {
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder.http1().keep_alive(true);
    let builder = Arc::new(builder);
    loop {
        let stream = match listener.accept().await {
            Ok((stream, _peer)) => stream,
            Err(error) => {
                // As in the collector: out of file descriptors, most likely;
                // pause instead of spinning.
                eprintln!("bare-gif: accepting a connection failed: {error}");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let _ = stream.set_nodelay(true);
        let builder = builder.clone();
        tokio::spawn(async move {
            // Errors are client resets, which are normal at the end of a run.
            let _ = builder.serve_connection_with_upgrades(TokioIo::new(stream), service_fn(gif)).await;
        });
    }
}

async fn gif(_request: Request<Incoming>) -> Result<Response<Full<Bytes>>, Infallible> {
    let mut response = Response::new(Full::new(Bytes::from_static(&PIXEL_GIF)));
    let headers = response.headers_mut();
    headers.insert(CONTENT_TYPE, HeaderValue::from_static("image/gif"));
    headers.insert(CACHE_CONTROL, HeaderValue::from_static("no-store"));
    Ok(response)
}
