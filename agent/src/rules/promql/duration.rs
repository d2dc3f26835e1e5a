//! Durations written the Prometheus way (`model.Duration`): `1h30m`, `500ms`, `0`.

/// Milliseconds in each unit, largest first, as the parser accepts them in order.
const UNITS: [(&str, i64); 7] = [
    ("y", 365 * 24 * 3600 * 1000),
    ("w", 7 * 24 * 3600 * 1000),
    ("d", 24 * 3600 * 1000),
    ("h", 3600 * 1000),
    ("m", 60 * 1000),
    ("s", 1000),
    ("ms", 1),
];

/// Parses `[0-9]+(y|w|d|h|m|s|ms)` terms in that order (each at most once), or `0`, into
/// milliseconds.
pub fn parse(text: &str) -> Result<i64, String> {
    if text.is_empty() {
        return Err("empty duration string".into());
    }
    if text == "0" {
        return Ok(0);
    }
    let bad = || format!("not a valid duration string: {text:?}");
    let mut rest = text;
    let mut total: i64 = 0;
    let mut next_unit = 0;
    while !rest.is_empty() {
        let digits = rest.chars().take_while(char::is_ascii_digit).count();
        if digits == 0 {
            return Err(bad());
        }
        let n: i64 = rest[..digits].parse().map_err(|_| bad())?;
        rest = &rest[digits..];
        // "ms" must be tried before "m".
        let unit = UNITS[next_unit..]
            .iter()
            .enumerate()
            .filter(|(_, (u, _))| rest.starts_with(u))
            .max_by_key(|(_, (u, _))| u.len())
            .ok_or_else(bad)?;
        let (i, (u, mult)) = unit;
        total = n
            .checked_mul(*mult)
            .and_then(|v| total.checked_add(v))
            .ok_or_else(|| format!("duration {text:?} is too long"))?;
        rest = &rest[u.len()..];
        next_unit += i + 1;
    }
    Ok(total)
}

/// Formats milliseconds as Prometheus does (`model.Duration.String()`): `1h30m`, `90d`, `0s`.
pub fn format(ms: i64) -> String {
    if ms == 0 {
        return "0s".into();
    }
    let mut ms = ms;
    let mut out = String::new();
    for (unit, mult) in UNITS {
        // Years and weeks only when exact: 90d reads better than 12w6d.
        let exact_only = unit == "y" || unit == "w";
        if exact_only && ms % mult != 0 {
            continue;
        }
        let v = ms / mult;
        if v > 0 {
            out.push_str(&format!("{v}{unit}"));
            ms -= v * mult;
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_prometheus_durations() {
        assert_eq!(parse("0"), Ok(0));
        assert_eq!(parse("1m"), Ok(60_000));
        assert_eq!(parse("1h30m"), Ok(5_400_000));
        assert_eq!(parse("500ms"), Ok(500));
        assert_eq!(parse("1m500ms"), Ok(60_500));
        assert_eq!(parse("2d"), Ok(172_800_000));
        for bad in ["", "1.5m", "m", "1m1h", "5 m", "1mm", "-1s", "10"] {
            assert!(parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn formats_like_prometheus() {
        assert_eq!(format(0), "0s");
        assert_eq!(format(60_000), "1m");
        assert_eq!(format(5_400_000), "1h30m");
        assert_eq!(format(90 * 86_400_000), "90d");
        assert_eq!(format(14 * 86_400_000), "2w");
        assert_eq!(format(1500), "1s500ms");
    }
}
