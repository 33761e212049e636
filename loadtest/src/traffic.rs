//! A trickle of generated traffic for the local stack: pixels over a skewed
//! spread of affiliates, campaigns and sub IDs, with an occasional click,
//! lead and sale posted as JSON.

use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use rand::Rng;
use rand::rngs::StdRng;
use serde_json::json;

/// What the trickle has sent and what the collector accepted.
#[derive(Debug, Default, Clone, Copy)]
pub(crate) struct Sent {
    pub(crate) requests: u64,
    pub(crate) accepted_events: u64,
    pub(crate) failed_requests: u64,
}

pub(crate) struct Trickle {
    client: Client<HttpConnector, Full<Bytes>>,
    base_url: String,
    rng: StdRng,
    pub(crate) sent: Sent,
}

const SUBS: [&str; 4] = ["", "newsletter", "search", "social"];

impl Trickle {
    pub(crate) fn new(base_url: String, rng: StdRng) -> Trickle {
        Trickle { client: Client::builder(TokioExecutor::new()).build_http(), base_url, rng, sent: Sent::default() }
    }

    /// Squaring a uniform draw favours small ids, as real affiliate traffic
    /// is dominated by a few large affiliates.
    fn skewed(&mut self, n: u32) -> u32 {
        let draw: f64 = self.rng.random();
        1 + ((draw * draw) * f64::from(n)) as u32
    }

    /// Sends one request: mostly pixels, sometimes a JSON conversion.
    pub(crate) async fn send_one(&mut self) {
        let affiliate_id = self.skewed(20);
        let campaign_id = self.skewed(5);
        let sub1 = SUBS[self.rng.random_range(0..SUBS.len())];
        let roll: u32 = self.rng.random_range(0..100);
        let request = if roll < 85 {
            let url = format!("{}/p.gif?aff={affiliate_id}&cmp={campaign_id}&sub1={sub1}", self.base_url);
            http::Request::get(url).body(Full::default())
        } else {
            let kind = match roll {
                85..=94 => "click",
                95..=97 => "lead",
                _ => "sale",
            };
            let mut event =
                json!({"kind": kind, "affiliate_id": affiliate_id, "campaign_id": campaign_id, "sub1": sub1});
            if kind == "sale" {
                let cents: u32 = self.rng.random_range(500..20_000);
                event["amount"] = json!(format!("{}.{:02}", cents / 100, cents % 100));
                event["currency"] = json!("USD");
            }
            http::Request::post(format!("{}/v1/events", self.base_url)).body(Full::new(Bytes::from(event.to_string())))
        };
        // Both requests are built from valid parts above.
        let request = request.expect("valid request");
        let is_pixel = request.method() == http::Method::GET;
        self.sent.requests += 1;
        match tokio::time::timeout(Duration::from_secs(5), self.client.request(request)).await {
            Ok(Ok(response)) if response.status().is_success() => {
                let body = response.into_body().collect().await.map(|body| body.to_bytes()).unwrap_or_default();
                let accepted = if is_pixel {
                    1
                } else {
                    serde_json::from_slice::<serde_json::Value>(&body)
                        .ok()
                        .and_then(|answer| answer["accepted"].as_u64())
                        .unwrap_or(0)
                };
                self.sent.accepted_events += accepted;
            }
            _ => self.sent.failed_requests += 1,
        }
    }
}
