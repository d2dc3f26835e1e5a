//! The config parser: any text is a config or a `file:line:col` error, never a panic.
#![no_main]

use libfuzzer_sys::fuzz_target;
use nodewatch::config::Config;

fuzz_target!(|data: &[u8]| {
    if let Ok(text) = std::str::from_utf8(data) {
        if let Err(e) = Config::parse("fuzz.yaml", text) {
            let _ = e.to_string();
        }
    }
});
