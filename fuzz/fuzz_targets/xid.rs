//! The kernel-log Xid parser: any record gives a code or nothing, never a panic.
#![no_main]

use libfuzzer_sys::fuzz_target;
use nodewatch::collectors::gpu_xid::xid_code;

fuzz_target!(|data: &[u8]| {
    // The collector reads records lossily, as here.
    let record = String::from_utf8_lossy(data);
    if let Some(code) = xid_code(&record) {
        assert!(code <= 9999, "codes have at most 4 digits: {code}");
    }
});
