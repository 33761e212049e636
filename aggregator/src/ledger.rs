//! The conversion ledger: each conversion the aggregator booked, with the
//! edge it came from, its status and its commission; and the commission
//! rules that priced it.
//!
//! **Commissions.** The rules are the campaigns file the aggregator serves
//! (`protocol::campaigns`). For a conversion of affiliate `a` on campaign
//! `c`, the rule is the first of: `a`'s payout for `c`, `a`'s payout for
//! every campaign, `c`'s default payout; with none, the commission is 0
//! and the rule `none`. `cpa` pays its fixed amount in its own currency;
//! `revshare` pays its percentage of the sale's amount in the sale's
//! currency (a conversion without an amount earns 0). If `a` has a parent
//! with an `override_percent`, the parent earns that percentage of `a`'s
//! commission on top, in the same currency. Percentages round half to even
//! ([`Percent::of`]); amounts are exact `i64` minor units.
//!
//! **Dedup.** A conversion's key is the edge's: `(campaign_id, order_id)`,
//! else `(click_id, kind)`, else `event_id`. The ledger books the first
//! conversion of a key from any edge; a later one from another edge is a
//! cross-edge duplicate (`store.rs` moves it from the conversion counters
//! to `duplicates`). Conversions without any key cannot be deduplicated
//! and are all booked.
//!
//! **Status.** A conversion is booked `pending`, or `held` when an edge's
//! fraud rule flagged it (its `flag` column says which); an admin changes
//! it to `approved` or `rejected` (a refunded sale is reversed by
//! rejecting it, a held one released by approving it). Only `pending` and
//! `approved` conversions are payable: a held or rejected one stays in the
//! ledger, with its commission computed, and out of the money rollups.

use std::sync::{Arc, LazyLock};

use arrow_array::builder::{Int64Builder, StringBuilder, UInt32Builder};
use arrow_array::cast::AsArray;
use arrow_array::types::{Int64Type, UInt32Type};
use arrow_array::{Array, ArrayRef, RecordBatch};
use arrow_schema::{DataType, Field, Schema, SchemaRef};
use edgetally_protocol::batch::{BatchError, CONVERSION_SCHEMA, ConversionRow, conversions_from_batch};
use edgetally_protocol::{Campaigns, Currency, EventKind, Payout};

/// Where a conversion stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) enum Status {
    Pending,
    Approved,
    Rejected,
    /// Flagged by an edge's fraud rule; waiting for review.
    Held,
}

/// What rule priced a conversion: which setting, and which kind of payout.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) enum Rule {
    None,
    CampaignCpa,
    CampaignRevShare,
    AffiliateCpa,
    AffiliateRevShare,
    AffiliateCampaignCpa,
    AffiliateCampaignRevShare,
}

/// A conversion's commission and its parent's override.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Commission {
    pub(crate) amount_minor: i64,
    /// `None` only when the amount is 0 for want of a rule or of a sale
    /// amount.
    pub(crate) currency: Option<Currency>,
    pub(crate) rule: Rule,
    /// The affiliate's parent, when it has one.
    pub(crate) parent_affiliate_id: Option<u32>,
    /// What the parent earns on top, in `currency`; 0 without a parent or
    /// an override percentage.
    pub(crate) parent_amount_minor: i64,
}

/// One booked conversion.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Conversion {
    pub(crate) row: ConversionRow,
    pub(crate) edge_id: u32,
    pub(crate) status: Status,
    pub(crate) commission: Commission,
}

/// The identity of a conversion across edges.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub(crate) enum ConversionKey {
    Order { campaign_id: u32, order_id: String },
    Click { click_id: String, kind: EventKind },
    Event { event_id: String },
}

/// The commission rules in force, as one campaigns file.
#[derive(Debug, Clone, Default)]
pub(crate) struct Rules {
    /// The file as served (what the log and snapshots record).
    pub(crate) body: bytes::Bytes,
    pub(crate) campaigns: Arc<Campaigns>,
}

/// The schema of the `conversions` dataset: the columns an edge ships, then
/// `edge_id`, `status`, `commission_minor`, `commission_currency`, `rule`,
/// `parent_affiliate_id` and `parent_commission_minor`.
pub(crate) static LEDGER_SCHEMA: LazyLock<SchemaRef> = LazyLock::new(|| {
    let extra = [
        Field::new("edge_id", DataType::UInt32, false),
        Field::new("status", DataType::Utf8, false),
        Field::new("commission_minor", DataType::Int64, false),
        Field::new("commission_currency", DataType::Utf8, true),
        Field::new("rule", DataType::Utf8, false),
        Field::new("parent_affiliate_id", DataType::UInt32, true),
        Field::new("parent_commission_minor", DataType::Int64, false),
    ];
    let fields: Vec<Field> =
        CONVERSION_SCHEMA.fields().iter().map(|field| field.as_ref().clone()).chain(extra).collect();
    Arc::new(Schema::new(fields))
});

// === impl Status ===

impl Status {
    pub(crate) const ALL: [Status; 4] = [Status::Pending, Status::Approved, Status::Rejected, Status::Held];

    /// What a conversion is booked as when it arrives.
    pub(crate) fn booked(row: &ConversionRow) -> Status {
        if row.flag.is_some() { Status::Held } else { Status::Pending }
    }

    /// Whether its money counts in the money rollups (what is owed).
    pub(crate) fn is_payable(self) -> bool {
        matches!(self, Status::Pending | Status::Approved)
    }

    pub(crate) fn parse(text: &str) -> Option<Status> {
        Status::ALL.into_iter().find(|status| status.as_str() == text)
    }

    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Status::Pending => "pending",
            Status::Approved => "approved",
            Status::Rejected => "rejected",
            Status::Held => "held",
        }
    }
}

// === impl Rule ===

impl Rule {
    const ALL: [Rule; 7] = [
        Rule::None,
        Rule::CampaignCpa,
        Rule::CampaignRevShare,
        Rule::AffiliateCpa,
        Rule::AffiliateRevShare,
        Rule::AffiliateCampaignCpa,
        Rule::AffiliateCampaignRevShare,
    ];

    /// `<scope>/<payout>`: where the rule is set (`campaign`, `affiliate`
    /// for every campaign, `affiliate_campaign`) and what it pays.
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Rule::None => "none",
            Rule::CampaignCpa => "campaign/cpa",
            Rule::CampaignRevShare => "campaign/revshare",
            Rule::AffiliateCpa => "affiliate/cpa",
            Rule::AffiliateRevShare => "affiliate/revshare",
            Rule::AffiliateCampaignCpa => "affiliate_campaign/cpa",
            Rule::AffiliateCampaignRevShare => "affiliate_campaign/revshare",
        }
    }

    fn parse(text: &str) -> Option<Rule> {
        Rule::ALL.into_iter().find(|rule| rule.as_str() == text)
    }
}

// === impl Commission ===

impl Commission {
    /// Prices `row` under `campaigns` (see the module documentation).
    pub(crate) fn compute(campaigns: &Campaigns, row: &ConversionRow) -> Commission {
        let affiliate = campaigns.affiliate(row.affiliate_id);
        let chosen = affiliate
            .and_then(|affiliate| {
                let specific = affiliate.payouts.get(&Some(row.campaign_id)).map(|payout| (payout, true));
                specific.or_else(|| affiliate.payouts.get(&None).map(|payout| (payout, false)))
            })
            .map(|(payout, specific)| (*payout, if specific { Scope::AffiliateCampaign } else { Scope::Affiliate }))
            .or_else(|| {
                campaigns.campaign(row.campaign_id).and_then(|campaign| campaign.payout).map(|p| (p, Scope::Campaign))
            });
        let (amount_minor, currency, rule) = match chosen {
            None => (0, None, Rule::None),
            Some((Payout::Cpa(money), scope)) => (money.minor_units, Some(money.currency), scope.rule(false)),
            Some((Payout::RevShare(percent), scope)) => match row.money {
                Some(money) => (percent.of(money.minor_units), Some(money.currency), scope.rule(true)),
                None => (0, None, scope.rule(true)),
            },
        };
        let parent_affiliate_id = affiliate.and_then(|affiliate| affiliate.parent_id);
        let parent_amount_minor = parent_affiliate_id
            .and_then(|parent_id| campaigns.affiliate(parent_id))
            .and_then(|parent| parent.override_percent)
            .map_or(0, |percent| percent.of(amount_minor));
        Commission { amount_minor, currency, rule, parent_affiliate_id, parent_amount_minor }
    }
}

#[derive(Debug, Clone, Copy)]
enum Scope {
    Campaign,
    Affiliate,
    AffiliateCampaign,
}

impl Scope {
    fn rule(self, revshare: bool) -> Rule {
        match (self, revshare) {
            (Scope::Campaign, false) => Rule::CampaignCpa,
            (Scope::Campaign, true) => Rule::CampaignRevShare,
            (Scope::Affiliate, false) => Rule::AffiliateCpa,
            (Scope::Affiliate, true) => Rule::AffiliateRevShare,
            (Scope::AffiliateCampaign, false) => Rule::AffiliateCampaignCpa,
            (Scope::AffiliateCampaign, true) => Rule::AffiliateCampaignRevShare,
        }
    }
}

// === impl ConversionKey ===

impl ConversionKey {
    /// The dedup key of `row`, as the edge forms it; `None` when it has no
    /// identifying field.
    pub(crate) fn of(row: &ConversionRow) -> Option<ConversionKey> {
        if let Some(order_id) = &row.order_id {
            return Some(ConversionKey::Order { campaign_id: row.campaign_id, order_id: order_id.clone() });
        }
        if let Some(click_id) = &row.click_id {
            return Some(ConversionKey::Click { click_id: click_id.clone(), kind: row.kind });
        }
        row.event_id.as_ref().map(|event_id| ConversionKey::Event { event_id: event_id.clone() })
    }
}

// === impl Rules ===

impl Rules {
    /// The rules of a campaigns file's `body`; an empty body (no file)
    /// has no rules, so every commission is 0.
    pub(crate) fn parse(body: bytes::Bytes) -> Result<Rules, edgetally_protocol::CampaignsError> {
        if body.is_empty() {
            return Ok(Rules::default());
        }
        let campaigns = Campaigns::parse(&String::from_utf8_lossy(&body))?;
        Ok(Rules { body, campaigns: Arc::new(campaigns) })
    }
}

/// A log record that replaces the commission rules: this magic, then the
/// campaigns file.
pub(crate) const RULES_RECORD_MAGIC: [u8; 4] = *b"ETR1";
/// A log record that changes a conversion's status: this magic, then the
/// [`StatusChange`] JSON.
pub(crate) const STATUS_RECORD_MAGIC: [u8; 4] = *b"ETX1";

/// The largest status change accepted: a key of at most a few 64-byte IDs.
pub(crate) const STATUS_CHANGE_BYTES_MAX: usize = 1024;

/// An admin's change of one conversion's status, named by its dedup key:
/// `{"campaign_id":3,"order_id":"A-1","status":"rejected"}`, or
/// `{"click_id":"…","kind":"lead","status":"approved"}`, or
/// `{"event_id":"…","status":"approved"}`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct StatusChange {
    pub(crate) key: ConversionKey,
    pub(crate) status: Status,
}

#[derive(Debug, thiserror::Error)]
pub(crate) enum StatusChangeError {
    #[error("status change too large: {len} bytes, limit is {STATUS_CHANGE_BYTES_MAX}")]
    TooLarge { len: usize },
    #[error("bad status change json: {0}")]
    Json(#[from] serde_json::Error),
    #[error("unknown status {0:?}: expected pending, approved, rejected or held")]
    Status(String),
    #[error("unknown kind {0:?}: expected lead or sale")]
    Kind(String),
    #[error("name the conversion by campaign_id and order_id, by click_id and kind, or by event_id")]
    Key,
}

#[derive(Debug, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct StatusChangeJson {
    #[serde(skip_serializing_if = "Option::is_none")]
    campaign_id: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    order_id: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    click_id: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    kind: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    event_id: Option<String>,
    status: String,
}

// === impl StatusChange ===

impl StatusChange {
    pub(crate) fn parse(json: &[u8]) -> Result<StatusChange, StatusChangeError> {
        if json.len() > STATUS_CHANGE_BYTES_MAX {
            return Err(StatusChangeError::TooLarge { len: json.len() });
        }
        let json: StatusChangeJson = serde_json::from_slice(json)?;
        let status = Status::parse(&json.status).ok_or_else(|| StatusChangeError::Status(json.status.clone()))?;
        let key = match json {
            StatusChangeJson {
                campaign_id: Some(campaign_id),
                order_id: Some(order_id),
                click_id: None,
                kind: None,
                event_id: None,
                ..
            } => ConversionKey::Order { campaign_id, order_id },
            StatusChangeJson {
                campaign_id: None,
                order_id: None,
                click_id: Some(click_id),
                kind: Some(kind),
                event_id: None,
                ..
            } => {
                let kind = EventKind::parse(&kind)
                    .filter(EventKind::is_conversion)
                    .ok_or_else(|| StatusChangeError::Kind(kind.clone()))?;
                ConversionKey::Click { click_id, kind }
            }
            StatusChangeJson {
                campaign_id: None,
                order_id: None,
                click_id: None,
                kind: None,
                event_id: Some(event_id),
                ..
            } => ConversionKey::Event { event_id },
            _ => return Err(StatusChangeError::Key),
        };
        Ok(StatusChange { key, status })
    }

    /// The JSON [`StatusChange::parse`] reads.
    pub(crate) fn render(&self) -> Vec<u8> {
        let mut json = StatusChangeJson {
            campaign_id: None,
            order_id: None,
            click_id: None,
            kind: None,
            event_id: None,
            status: self.status.as_str().to_owned(),
        };
        match &self.key {
            ConversionKey::Order { campaign_id, order_id } => {
                json.campaign_id = Some(*campaign_id);
                json.order_id = Some(order_id.clone());
            }
            ConversionKey::Click { click_id, kind } => {
                json.click_id = Some(click_id.clone());
                json.kind = Some(kind.as_str().to_owned());
            }
            ConversionKey::Event { event_id } => json.event_id = Some(event_id.clone()),
        }
        // A struct of strings and integers always serializes.
        serde_json::to_vec(&json).expect("status change json serializes")
    }
}

/// The Arrow batch of `conversions`, in [`LEDGER_SCHEMA`].
pub(crate) fn ledger_to_batch<'a>(conversions: impl ExactSizeIterator<Item = &'a Conversion> + Clone) -> RecordBatch {
    let n_rows = conversions.len();
    let shipped =
        edgetally_protocol::batch::conversions_to_batch(conversions.clone().map(|conversion| &conversion.row));
    let mut edge_id = UInt32Builder::with_capacity(n_rows);
    let mut status = StringBuilder::with_capacity(n_rows, n_rows * 8);
    let mut commission_minor = Int64Builder::with_capacity(n_rows);
    let mut commission_currency = StringBuilder::with_capacity(n_rows, n_rows * 3);
    let mut rule = StringBuilder::with_capacity(n_rows, n_rows * 16);
    let mut parent_affiliate_id = UInt32Builder::with_capacity(n_rows);
    let mut parent_commission_minor = Int64Builder::with_capacity(n_rows);
    for conversion in conversions {
        edge_id.append_value(conversion.edge_id);
        status.append_value(conversion.status.as_str());
        commission_minor.append_value(conversion.commission.amount_minor);
        commission_currency.append_option(conversion.commission.currency.as_ref().map(Currency::code));
        rule.append_value(conversion.commission.rule.as_str());
        parent_affiliate_id.append_option(conversion.commission.parent_affiliate_id);
        parent_commission_minor.append_value(conversion.commission.parent_amount_minor);
    }
    let mut columns: Vec<ArrayRef> = shipped.columns().to_vec();
    columns.push(Arc::new(edge_id.finish()));
    columns.push(Arc::new(status.finish()));
    columns.push(Arc::new(commission_minor.finish()));
    columns.push(Arc::new(commission_currency.finish()));
    columns.push(Arc::new(rule.finish()));
    columns.push(Arc::new(parent_affiliate_id.finish()));
    columns.push(Arc::new(parent_commission_minor.finish()));
    // The builders above follow LEDGER_SCHEMA column for column.
    RecordBatch::try_new(LEDGER_SCHEMA.clone(), columns).expect("columns follow LEDGER_SCHEMA")
}

/// Reads conversions back from a [`LEDGER_SCHEMA`] batch (a snapshot's).
pub(crate) fn ledger_from_batch(batch: &RecordBatch) -> Result<Vec<Conversion>, BatchError> {
    if batch.schema().fields() != LEDGER_SCHEMA.fields() {
        return Err(BatchError::Schema(format!("expected the ledger schema, got {:?}", batch.schema())));
    }
    let n_shipped = CONVERSION_SCHEMA.fields().len();
    let shipped =
        RecordBatch::try_new(CONVERSION_SCHEMA.clone(), batch.columns()[..n_shipped].to_vec()).map_err(|error| {
            BatchError::Schema(format!("ledger columns do not form the shipped conversion schema: {error}"))
        })?;
    let rows = conversions_from_batch(&shipped)?;
    let column = |idx: usize| batch.column(n_shipped + idx);
    let edge_id = column(0).as_primitive::<UInt32Type>();
    let status = column(1).as_string::<i32>();
    let commission_minor = column(2).as_primitive::<Int64Type>();
    let commission_currency = column(3).as_string::<i32>();
    let rule = column(4).as_string::<i32>();
    let parent_affiliate_id = column(5).as_primitive::<UInt32Type>();
    let parent_commission_minor = column(6).as_primitive::<Int64Type>();
    let bad = |column: &'static str, reason: String| BatchError::Value { column, reason };
    let mut conversions = Vec::with_capacity(rows.len());
    for (row_idx, row) in rows.into_iter().enumerate() {
        let status = Status::parse(status.value(row_idx))
            .ok_or_else(|| bad("status", format!("unknown status {:?}", status.value(row_idx))))?;
        let rule = Rule::parse(rule.value(row_idx))
            .ok_or_else(|| bad("rule", format!("unknown rule {:?}", rule.value(row_idx))))?;
        let currency = commission_currency
            .is_valid(row_idx)
            .then(|| Currency::parse(commission_currency.value(row_idx)))
            .transpose()
            .map_err(|error| bad("commission_currency", error.to_string()))?;
        conversions.push(Conversion {
            row,
            edge_id: edge_id.value(row_idx),
            status,
            commission: Commission {
                amount_minor: commission_minor.value(row_idx),
                currency,
                rule,
                parent_affiliate_id: parent_affiliate_id.is_valid(row_idx).then(|| parent_affiliate_id.value(row_idx)),
                parent_amount_minor: parent_commission_minor.value(row_idx),
            },
        });
    }
    Ok(conversions)
}

#[cfg(test)]
mod tests;
