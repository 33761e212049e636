//! The contract between EdgeTally's parts, with no I/O and no clock.
//!
//! This crate owns the event model ([`event`]), exact money ([`money`]),
//! signed click IDs ([`click_id`]), fraud flags and the bot rule ([`fraud`]), the campaign snapshot the aggregator
//! sends its edges ([`campaigns`]), the
//! Arrow schemas of what an edge ships ([`batch`]) and the binary frame that
//! carries a batch from a collector to the aggregator ([`frame`]). Whatever
//! needs the current time takes it as an argument, so every rule here is
//! deterministic and testable without a runtime.

pub mod batch;
pub mod campaigns;
pub mod click_id;
pub mod event;
pub mod frame;
pub mod fraud;
pub mod money;

pub use batch::{BatchError, ConversionRow, QuarantineRow, RollupCounts, RollupKey};
pub use campaigns::{Affiliate, Campaign, Campaigns, CampaignsError, Payout};
pub use click_id::{Click, ClickIdError, ClickKey, ClickKeys};
pub use event::{Event, EventError, EventKind, SubId};
pub use frame::{Ack, BatchFrame, ConfigSnapshot, FrameError, Hello, HelloAck};
pub use fraud::Flag;
pub use money::{Currency, Money, MoneyError, Percent, PercentError};
