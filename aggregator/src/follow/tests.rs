//! The feed from the store to followers: nothing before `publish`, every
//! applied batch in order after it, a lagging follower cut off with the
//! number it missed, shutdown ending the stream, and the follower bound.

use std::time::Duration;

use edgetally_protocol::batch::ConversionRow;
use edgetally_protocol::event::EventKind;
use futures::StreamExt;
use tonic::Code;

use super::*;
use crate::flight_service::into_status;
use crate::store::{Admission, Store};
use crate::ticket;

/// Bounds each test so a hang fails instead of stalling CI.
const TEST_TIMEOUT: Duration = Duration::from_secs(10);

/// Batch `sequence` of edge 1: one lead of affiliate 7 with order id
/// `o-{sequence}`.
fn batch(sequence: u64) -> Batch {
    let conversion = ConversionRow {
        time_ms: 1_795_514_400_000,
        kind: EventKind::Lead,
        affiliate_id: 7,
        campaign_id: 9,
        sub1: String::new(),
        money: None,
        order_id: Some(format!("o-{sequence}")),
        click_id: None,
        event_id: None,
        flag: None,
    };
    Batch { edge_id: 1, epoch: 1, sequence, conversions: vec![conversion], ..Batch::default() }
}

fn follow_conversions(
    store: &Store,
    followers: &Arc<Followers>,
) -> impl Stream<Item = Result<RecordBatch, FollowError>> {
    let query = ticket::parse(br#"{"dataset":"conversions","follow":true}"#).unwrap();
    let slot = followers.admit().unwrap();
    stream(query, store.follow().expect("the store publishes"), slot, followers.clone())
}

fn order_ids(batch: &RecordBatch) -> Vec<String> {
    use arrow_array::cast::AsArray;
    let column = batch.column_by_name("order_id").unwrap().as_string::<i32>();
    column.iter().map(|order_id| order_id.unwrap().to_owned()).collect()
}

#[test]
fn replay_publishes_nothing() {
    let store = Store::default();
    // As replay finds it: not publishing, so there is nothing to follow.
    assert!(store.follow().is_none());
    assert_eq!(store.apply(batch(1)), Admission::Apply);
    store.publish(4);
    let mut feed = store.follow().unwrap();
    assert_eq!(feed.try_recv().unwrap_err(), broadcast::error::TryRecvError::Empty);
    // A skipped batch is not news either; an applied one is, once.
    assert_eq!(store.apply(batch(1)), Admission::Skip);
    assert_eq!(store.apply(batch(2)), Admission::Apply);
    let applied = feed.try_recv().unwrap();
    // Conversions go to followers as booked, beside the rest of the batch.
    let expect = batch(2);
    assert_eq!(applied.batch, Batch { conversions: Vec::new(), ..expect.clone() });
    let booked: Vec<_> = applied.conversions.iter().map(|conversion| conversion.row.clone()).collect();
    assert_eq!(booked, expect.conversions);
    assert_eq!(feed.try_recv().unwrap_err(), broadcast::error::TryRecvError::Empty);
    store.stop_publishing();
    assert!(store.follow().is_none());
    assert_eq!(feed.try_recv().unwrap_err(), broadcast::error::TryRecvError::Closed);
}

#[tokio::test]
async fn follower_sees_batches_in_order_then_shutdown() {
    tokio::time::timeout(TEST_TIMEOUT, async {
        let store = Store::default();
        store.publish(4);
        let followers = Arc::new(Followers::new());
        let mut stream = std::pin::pin!(follow_conversions(&store, &followers));
        assert_eq!(followers.n_followers(), 1);
        for sequence in 1..=3 {
            store.apply(batch(sequence));
        }
        store.stop_publishing();
        // What was published before the stop is still delivered.
        for sequence in 1..=3 {
            let batch = stream.next().await.unwrap().unwrap();
            assert_eq!(order_ids(&batch), [format!("o-{sequence}")]);
        }
        let error = stream.next().await.unwrap().unwrap_err();
        assert!(matches!(error, FollowError::Stopped), "{error:?}");
        assert_eq!(into_status(error.into()).code(), Code::Unavailable);
        assert!(stream.next().await.is_none());
        assert_eq!(followers.n_lagged(), 0);
    })
    .await
    .expect("test finishes in time");
}

#[tokio::test]
async fn lagging_follower_is_cut_off() {
    tokio::time::timeout(TEST_TIMEOUT, async {
        let store = Store::default();
        store.publish(2);
        let followers = Arc::new(Followers::new());
        let mut stream = Box::pin(follow_conversions(&store, &followers));
        // Five batches into a queue of two: the oldest three are lost to
        // this follower.
        for sequence in 1..=5 {
            store.apply(batch(sequence));
        }
        let error = stream.next().await.unwrap().unwrap_err();
        assert!(matches!(error, FollowError::Lagged { n_missed: 3 }), "{error:?}");
        let status = into_status(error.into());
        assert_eq!(status.code(), Code::DataLoss);
        assert_eq!(
            status.message(),
            "follow: follower fell behind and missed 3 batches; read the dataset again, then follow again"
        );
        // Never a silent skip to what is left: the stream ends, and its
        // slot is free.
        assert!(stream.next().await.is_none());
        assert_eq!((followers.n_followers(), followers.n_lagged()), (0, 1));
    })
    .await
    .expect("test finishes in time");
}

#[test]
fn followers_are_bounded() {
    let followers = Followers::new();
    let mut slots: Vec<Slot> = (0..FOLLOWERS_MAX).map(|_| followers.admit().unwrap()).collect();
    assert_eq!(followers.n_followers(), FOLLOWERS_MAX as u64);
    let error = followers.admit().unwrap_err();
    let status = into_status(error.into());
    assert_eq!(status.code(), Code::ResourceExhausted);
    assert_eq!(status.message(), "follow: too many followers: 256 follow already; retry later");
    slots.pop();
    assert_eq!(followers.n_followers(), FOLLOWERS_MAX as u64 - 1);
    slots.push(followers.admit().unwrap());
    drop(slots);
    assert_eq!(followers.n_followers(), 0);
}
