//! The mix draws what its shares say.

use std::collections::BTreeSet;

use rand::SeedableRng;

use super::*;

fn args() -> MixArgs {
    MixArgs {
        affiliates: 100,
        campaigns: 10,
        subs: 5,
        campaigns_per_affiliate: 3,
        subs_per_affiliate: 2,
        visitors: 50,
        zipf_exponent: 1.1,
        click_share: 0.1,
        lead_share: 0.05,
        sale_share: 0.05,
        duplicate_share: 0.1,
        malformed_share: 0.1,
        bot_share: 0.0,
        postback_share: 0.0,
        events_per_post: 2,
        pixels_only: false,
    }
}

#[test]
fn amounts_render_in_major_units() {
    assert_eq!(format_amount(1999, 2), "19.99");
    assert_eq!(format_amount(5, 2), "0.05");
    assert_eq!(format_amount(1500, 0), "1500");
    assert_eq!(format_amount(1250, 3), "1.250");
}

#[test]
fn each_affiliate_keeps_to_its_own_campaigns_and_subs() {
    let mut seen: std::collections::BTreeMap<u32, (BTreeSet<u32>, BTreeSet<String>)> = Default::default();
    let mut campaigns = BTreeSet::new();
    // Two connections, each with its own draws and its own set-up (as two
    // runs): the same affiliates' campaigns.
    for task_idx in 0..2 {
        let mix = Mix::new(&args(), task_idx, Setup::new(&args()).unwrap()).unwrap();
        let mut rng = StdRng::seed_from_u64(task_idx as u64);
        for _ in 0..20_000 {
            let (affiliate_id, campaign_id, sub1) = mix.ids(&mut rng);
            let (own_campaigns, own_subs) = seen.entry(affiliate_id).or_default();
            own_campaigns.insert(campaign_id);
            campaigns.insert(campaign_id);
            if !sub1.is_empty() {
                own_subs.insert(sub1);
            }
        }
    }
    for (affiliate_id, (own_campaigns, own_subs)) in &seen {
        assert!(own_campaigns.len() <= 3, "affiliate {affiliate_id}: {own_campaigns:?}");
        assert!(own_subs.len() <= 2, "affiliate {affiliate_id}: {own_subs:?}");
    }
    // Between them, the affiliates promote most of the ten campaigns.
    assert!(campaigns.len() >= 8 && campaigns.iter().all(|id| (1..=10).contains(id)), "{campaigns:?}");
    let top = &seen[&1];
    assert!(top.0.len() >= 2, "the busiest affiliate runs several campaigns: {:?}", top.0);
}

#[test]
fn shares_are_respected() {
    let mut mix = Mix::new(&args(), 0, Setup::new(&args()).unwrap()).unwrap();
    let mut rng = StdRng::seed_from_u64(3);
    let mut previous: Option<Plan> = None;
    let mut by_label = std::collections::BTreeMap::new();
    let mut visitors = std::collections::BTreeSet::new();
    let n_plans = 20_000;
    for _ in 0..n_plans {
        let plan = mix.next(&mut rng, previous.as_ref());
        *by_label.entry(plan.label).or_insert(0u32) += 1;
        if plan.label == Label::Click {
            assert!(plan.path_and_query.starts_with("/c/"));
        }
        if plan.label == Label::Events {
            assert_eq!(plan.truths.len(), 2);
            assert_eq!(plan.body.split(|b| *b == b'\n').count(), 2);
        }
        for truth in &plan.truths {
            assert!((1..=100).contains(&truth.affiliate_id) && (1..=10).contains(&truth.campaign_id));
        }
        // Visitors come from 10.0.0.0/8, one of `visitors`; a duplicate
        // repeats its original's visitor.
        let visitor_idx = u32::from(plan.visitor_ip) - 0x0a00_0000;
        assert!(visitor_idx < 50, "{}", plan.visitor_ip);
        visitors.insert(visitor_idx);
        if plan.label == Label::Duplicate {
            assert_eq!(Some(plan.visitor_ip), previous.as_ref().map(|previous| previous.visitor_ip));
        }
        previous = Some(plan);
    }
    assert_eq!(visitors.len(), 50);
    let share = |labels: &[Label]| {
        labels.iter().map(|label| by_label.get(label).copied().unwrap_or(0)).sum::<u32>() as f64 / n_plans as f64
    };
    // Shares within two percentage points of the configured ones.
    let malformed = [
        Label::BadPixel,
        Label::BadClickId,
        Label::BadJson,
        Label::BadAmount,
        Label::OversizeBody,
        Label::UnknownRoute,
    ];
    assert!((share(&[Label::Duplicate]) - 0.1).abs() < 0.02, "{by_label:?}");
    assert!((share(&malformed) - 0.1).abs() < 0.02, "{by_label:?}");
    assert!((share(&[Label::Click]) - 0.1).abs() < 0.02, "{by_label:?}");
    assert!((share(&[Label::Events]) - 0.1).abs() < 0.02, "{by_label:?}");
    assert!((share(&[Label::Pixel]) - 0.6).abs() < 0.02, "{by_label:?}");
}

#[test]
fn pixels_only_draws_only_valid_pixels() {
    let mut mix = Mix::new(&MixArgs { pixels_only: true, ..args() }, 0, Setup::new(&args()).unwrap()).unwrap();
    let mut rng = StdRng::seed_from_u64(3);
    for _ in 0..1000 {
        let plan = mix.next(&mut rng, None);
        assert_eq!(plan.label, Label::Pixel);
        assert!(plan.path_and_query.starts_with("/p.gif?aff="));
    }
}

#[test]
fn conversions_use_remembered_clicks() {
    let args = MixArgs { postback_share: 1.0, click_share: 0.0, duplicate_share: 0.0, malformed_share: 0.0, ..args() };
    let mut mix = Mix::new(&args, 3, Setup::new(&args).unwrap()).unwrap();
    let mut rng = StdRng::seed_from_u64(5);
    // Without a remembered click, conversions are posted as events.
    let plans: Vec<Plan> = (0..200).map(|_| mix.next(&mut rng, None)).collect();
    assert!(plans.iter().all(|plan| plan.label != Label::Postback && plan.label != Label::ConversionPixel));
    let click_id = "C".repeat(48);
    mix.remember_click(&click_id, 11, 12);
    let mut n_postbacks = 0;
    for _ in 0..400 {
        let plan = mix.next(&mut rng, None);
        if matches!(plan.label, Label::Postback | Label::ConversionPixel) {
            n_postbacks += 1;
            assert!(plan.path_and_query.contains(&format!("click_id={click_id}")), "{}", plan.path_and_query);
            assert!(plan.path_and_query.starts_with(if plan.label == Label::Postback { "/pb?" } else { "/cv.gif?" }));
            let truth = &plan.truths[0];
            assert_eq!((truth.affiliate_id, truth.campaign_id), (11, 12));
            assert_eq!(truth.money.is_some(), truth.kind == Kind::Sale);
        }
    }
    // Leads and sales are 10% of requests, all of them against the click.
    assert!((20..=60).contains(&n_postbacks), "{n_postbacks}");
}
