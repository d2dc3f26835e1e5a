//! The Xid catalog: what NVIDIA's published Xid catalog says to do about each code, as the
//! `action` label (`alerts/xid_catalog.csv`, which the rules and the README share; embedded
//! here).

use std::{collections::HashMap, sync::OnceLock};

/// The table, as shipped.
pub const CSV: &str = include_str!("../../../../alerts/xid_catalog.csv");

/// Every `action` value.
pub const ACTIONS: [&str; 5] = [
    "none",
    "restart_app",
    "reset_gpu",
    "reboot",
    "inspect_hardware",
];

/// The action of a code the table does not list.
pub const UNLISTED: &str = "inspect_hardware";

fn table() -> &'static HashMap<u32, &'static str> {
    static TABLE: OnceLock<HashMap<u32, &'static str>> = OnceLock::new();
    TABLE.get_or_init(|| {
        CSV.lines()
            .filter(|l| !l.starts_with('#') && !l.starts_with("code,") && !l.trim().is_empty())
            .filter_map(|l| {
                let mut f = l.split(',');
                let code = f.next()?.trim().parse().ok()?;
                let _bucket = f.next()?;
                let action = f.next()?.trim();
                Some((code, ACTIONS.into_iter().find(|a| *a == action)?))
            })
            .collect()
    })
}

/// The action for Xid `code` by the table alone.
pub fn action(code: u32) -> &'static str {
    table().get(&code).copied().unwrap_or(UNLISTED)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_row_of_the_shipped_table_parses_with_a_known_action() {
        let rows: Vec<&str> = CSV
            .lines()
            .filter(|l| !l.starts_with('#') && !l.starts_with("code,"))
            .collect();
        assert!(rows.len() > 30);
        assert_eq!(table().len(), rows.len(), "a row did not parse: {rows:?}");
        assert_eq!(action(79), "reboot");
        assert_eq!(action(48), "reset_gpu");
        assert_eq!(action(13), "restart_app");
        assert_eq!(action(63), "none");
        // Rows checked against the catalog that an earlier table had wrong.
        assert_eq!(action(43), "none");
        assert_eq!(action(92), "none");
        assert_eq!(action(109), "reset_gpu");
        assert_eq!(action(137), "none");
        assert_eq!(action(151), "reboot");
        assert_eq!(action(54), "inspect_hardware");
        assert_eq!(action(9999), "inspect_hardware");
    }
}
