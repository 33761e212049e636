//! Fuzzes the campaign snapshot parser (`Campaigns::parse`), which reads
//! the aggregator's `--campaigns` file and what an edge receives on the
//! control stream, and the landing-URL macros of every campaign it accepts.
#![no_main]

use edgetally_protocol::Campaigns;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    let Ok(campaigns) = Campaigns::parse(text) else { return };
    // The ids, read independently of the parser that accepted them. serde
    // reads a struct from a JSON array of its fields too, so
    // `[[[3, "https://x.example"]]]` is a snapshot like the object form.
    let value: serde_json::Value = serde_json::from_str(text).expect("accepted snapshots are JSON");
    let listed = match &value {
        serde_json::Value::Object(object) => &object["campaigns"],
        serde_json::Value::Array(fields) => &fields[0],
        other => panic!("accepted snapshot {other} is neither an object nor an array"),
    };
    let listed = listed.as_array().expect("accepted snapshots list campaigns");
    assert_eq!(listed.len(), campaigns.len());
    for entry in listed {
        let id = match entry {
            serde_json::Value::Object(object) => &object["id"],
            serde_json::Value::Array(fields) => &fields[0],
            other => panic!("accepted campaign {other} is neither an object nor an array"),
        };
        let id = u32::try_from(id.as_u64().expect("ids are numbers")).expect("ids are u32");
        let campaign = campaigns.campaign(id).expect("every listed campaign is kept");
        let subs = ["a", "", "b-c", "", "z"];
        let landing = campaign.landing("AAAA", 7, subs);
        assert!(landing.starts_with("http://") || landing.starts_with("https://"));
        assert!(campaign.attribution_window_ms > 0);
    }
});
