//! The rule unit-test format (`promtool test rules`), run against the embedded rules (no
//! file access; at most a few hundred evaluations per test group so one input stays fast).
#![no_main]

use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use nodewatch::rules::{
    default_rules,
    file::GroupDef,
    unittest::{Rules, run_text},
};

fuzz_target!(|data: &[u8]| {
    static RULES: OnceLock<Vec<GroupDef>> = OnceLock::new();
    let rules = RULES.get_or_init(default_rules);
    if let Ok(text) = std::str::from_utf8(data) {
        let _ = run_text("fuzz_test.yaml", text, Rules::Given(rules), 300);
    }
});
