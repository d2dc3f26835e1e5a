//! The kernel-log Xid and SXid parser: any record gives an event or nothing, never a panic.
#![no_main]

use libfuzzer_sys::fuzz_target;
use nodewatch::collectors::gpu_xid::{
    catalog::ACTIONS,
    parse::{Event, event, record},
};

fuzz_target!(|data: &[u8]| {
    // The collector reads records lossily, as here.
    let raw = String::from_utf8_lossy(data);
    let message = record(&raw).map_or(raw.as_ref(), |r| r.message);
    match event(message) {
        Some(Event::Xid { code, action, .. }) => {
            assert!(code <= 99_999, "codes have at most 5 digits: {code}");
            assert!(ACTIONS.contains(&action), "{action}");
        }
        Some(Event::Sxid { code, .. }) => assert!(code <= 99_999, "{code}"),
        None => {}
    }
});
