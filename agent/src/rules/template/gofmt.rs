//! Go's number formatting (`strconv.FormatFloat`, `fmt`'s `%v %g %e %f`), byte for byte, so
//! templates expand and test reports read exactly as Prometheus's do.

/// Decimal digits of |v| without trailing zeros, and the decimal point position: |v| is
/// `0.d1d2... * 10^dp`. `sig` rounds to that many significant digits; None is the shortest
/// representation that reads back as `v`.
fn digits(v: f64, sig: Option<usize>) -> (Vec<u8>, i32) {
    let v = v.abs();
    if v == 0.0 {
        return (Vec::new(), 0);
    }
    let s = match sig {
        None => format!("{v:e}"),
        Some(n) => format!("{:.*e}", n.max(1) - 1, v),
    };
    let (mant, exp) = s.split_once('e').expect("{:e} has an exponent");
    let exp: i32 = exp.parse().expect("{:e} exponent is an integer");
    let mut d: Vec<u8> = mant.bytes().filter(u8::is_ascii_digit).collect();
    while d.len() > 1 && d.last() == Some(&b'0') {
        d.pop();
    }
    (d, exp + 1)
}

fn special(v: f64) -> Option<&'static str> {
    if v.is_nan() {
        Some("NaN")
    } else if v == f64::INFINITY {
        Some("+Inf")
    } else if v == f64::NEG_INFINITY {
        Some("-Inf")
    } else {
        None
    }
}

fn fmt_e(neg: bool, d: &[u8], prec: usize, exp_char: char, dp: i32) -> String {
    let mut out = String::new();
    if neg {
        out.push('-');
    }
    out.push(d.first().map_or('0', |&c| c as char));
    if prec > 0 {
        out.push('.');
        for i in 1..=prec {
            out.push(d.get(i).map_or('0', |&c| c as char));
        }
    }
    let exp = if d.is_empty() { 0 } else { dp - 1 };
    out.push(exp_char);
    out.push(if exp < 0 { '-' } else { '+' });
    out.push_str(&format!("{:02}", exp.abs()));
    out
}

fn fmt_f(neg: bool, d: &[u8], prec: usize, dp: i32) -> String {
    let mut out = String::new();
    if neg {
        out.push('-');
    }
    if dp > 0 {
        for i in 0..dp as usize {
            out.push(d.get(i).map_or('0', |&c| c as char));
        }
    } else {
        out.push('0');
    }
    if prec > 0 {
        out.push('.');
        for i in 0..prec as i32 {
            let j = dp + i;
            let c = if j >= 0 {
                d.get(j as usize).map_or('0', |&c| c as char)
            } else {
                '0'
            };
            out.push(c);
        }
    }
    out
}

/// `%g` with `prec` significant digits, or `%v` (shortest) when None.
pub fn format_g(v: f64, prec: Option<usize>) -> String {
    if let Some(s) = special(v) {
        return s.into();
    }
    let neg = v.is_sign_negative();
    let (d, dp) = digits(v, prec);
    let nd = d.len() as i32;
    let mut p = prec.map_or(nd, |p| p.max(1) as i32);
    let mut eprec = p;
    if eprec > nd && nd >= dp {
        eprec = nd;
    }
    if prec.is_none() {
        eprec = 6;
    }
    let exp = dp - 1;
    if exp < -4 || exp >= eprec {
        if p > nd {
            p = nd;
        }
        return fmt_e(neg, &d, (p - 1).max(0) as usize, 'e', dp);
    }
    if p > dp {
        p = nd;
    }
    fmt_f(neg, &d, (p - dp).max(0) as usize, dp)
}

/// `%e`/`%E` with `prec` digits after the point, or shortest when None (`FormatFloat(v, 'e', -1)`).
pub fn format_e(v: f64, prec: Option<usize>, upper: bool) -> String {
    if let Some(s) = special(v) {
        return s.into();
    }
    let (d, dp) = digits(v, prec.map(|p| p + 1));
    let p = prec.unwrap_or(d.len().max(1) - 1);
    fmt_e(
        v.is_sign_negative(),
        &d,
        p,
        if upper { 'E' } else { 'e' },
        dp,
    )
}

/// `%f` with `prec` digits after the point (Go's default is 6).
pub fn format_f(v: f64, prec: usize) -> String {
    if let Some(s) = special(v) {
        return s.into();
    }
    let s = format!("{:.*}", prec, v.abs());
    if v.is_sign_negative() {
        format!("-{s}")
    } else {
        s
    }
}

/// An argument of [`sprintf`].
#[derive(Debug, Clone)]
pub enum Arg {
    Float(f64),
    Str(String),
}

impl Arg {
    fn go_type(&self) -> String {
        match self {
            Arg::Float(v) => format!("float64={}", format_g(*v, None)),
            Arg::Str(s) => format!("string={s}"),
        }
    }
}

/// Go's `fmt.Sprintf` for the verbs templates use: `%v %s %q %d %f %e %g %%`, with flags
/// `-+ 0`, width and precision. Mismatches read as Go writes them (`%!d(float64=1.5)`).
pub fn sprintf(format: &str, args: &[Arg]) -> String {
    let mut out = String::new();
    let mut args = args.iter();
    let mut chars = format.chars().peekable();
    while let Some(c) = chars.next() {
        if c != '%' {
            out.push(c);
            continue;
        }
        let (mut minus, mut plus, mut zero, mut space) = (false, false, false, false);
        while let Some(&f) = chars.peek() {
            match f {
                '-' => minus = true,
                '+' => plus = true,
                '0' => zero = true,
                ' ' => space = true,
                _ => break,
            }
            chars.next();
        }
        let mut width = String::new();
        while let Some(&d) = chars.peek().filter(|d| d.is_ascii_digit()) {
            width.push(d);
            chars.next();
        }
        let mut prec: Option<usize> = None;
        if chars.peek() == Some(&'.') {
            chars.next();
            let mut p = String::new();
            while let Some(&d) = chars.peek().filter(|d| d.is_ascii_digit()) {
                p.push(d);
                chars.next();
            }
            prec = Some(p.parse().unwrap_or(0));
        }
        let Some(verb) = chars.next() else {
            out.push_str("%!(NOVERB)");
            break;
        };
        if verb == '%' {
            out.push('%');
            continue;
        }
        let Some(arg) = args.next() else {
            out.push_str(&format!("%!{verb}(MISSING)"));
            continue;
        };
        let body = match (verb, arg) {
            ('v' | 'g', Arg::Float(v)) => format_g(*v, prec),
            ('e' | 'E', Arg::Float(v)) => format_e(*v, Some(prec.unwrap_or(6)), verb == 'E'),
            ('f' | 'F', Arg::Float(v)) => format_f(*v, prec.unwrap_or(6)),
            ('v' | 's', Arg::Str(s)) => match prec {
                Some(p) => s.chars().take(p).collect(),
                None => s.clone(),
            },
            ('q', Arg::Str(s)) => crate::store::labels::go_quote(s),
            _ => {
                out.push_str(&format!("%!{verb}({})", arg.go_type()));
                continue;
            }
        };
        let numeric = matches!(arg, Arg::Float(_));
        let mut body = body;
        if numeric && !body.starts_with('-') && body != "NaN" {
            if plus {
                body.insert(0, '+');
            } else if space {
                body.insert(0, ' ');
            }
            if body.starts_with("++") {
                body.remove(0);
            }
        }
        let width: usize = width.parse().unwrap_or(0);
        let len = body.chars().count();
        if len < width {
            let pad = width - len;
            if minus {
                body.push_str(&" ".repeat(pad));
            } else if zero && numeric && body.chars().last().is_some_and(|c| c.is_ascii_digit()) {
                let sign = body.starts_with(['-', '+', ' ']);
                let at = usize::from(sign);
                body.insert_str(at, &"0".repeat(pad));
            } else {
                body.insert_str(0, &" ".repeat(pad));
            }
        }
        out.push_str(&body);
    }
    let extra: Vec<String> = args.map(Arg::go_type).collect();
    if !extra.is_empty() {
        out.push_str(&format!("%!(EXTRA {})", extra.join(", ")));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn v_is_shortest_g_with_exponent_from_1e21_down_to_6_digits() {
        for (v, want) in [
            (0.0, "0"),
            (1.0, "1"),
            (0.1, "0.1"),
            (123456.0, "123456"),
            (1e6, "1e+06"),
            (1234567.0, "1.234567e+06"),
            (0.0001, "0.0001"),
            (0.00001, "1e-05"),
            (-2.5, "-2.5"),
            (1.0 / 3.0, "0.3333333333333333"),
            (f64::INFINITY, "+Inf"),
            (f64::NEG_INFINITY, "-Inf"),
            (f64::NAN, "NaN"),
        ] {
            assert_eq!(format_g(v, None), want, "{v}");
        }
    }

    #[test]
    fn g_with_precision() {
        for (v, p, want) in [
            (1.5, 4, "1.5"),
            (100.0, 4, "100"),
            (123456.0, 4, "1.235e+05"),
            (12.3456, 4, "12.35"),
            (0.0, 4, "0"),
            (999.99, 4, "1000"),
            (0.000012345, 4, "1.234e-05"),
        ] {
            assert_eq!(format_g(v, Some(p)), want, "{v} %.{p}g");
        }
    }

    #[test]
    fn e_and_f() {
        assert_eq!(format_e(1.0, None, true), "1E+00");
        assert_eq!(
            format_e(0.36666666666666664, None, true),
            "3.6666666666666664E-01"
        );
        assert_eq!(format_e(1100.0, None, false), "1.1e+03");
        assert_eq!(format_e(1.0, Some(2), false), "1.00e+00");
        assert_eq!(format_f(2.0 / 3.0, 2), "0.67");
        assert_eq!(format_f(-1.0, 0), "-1");
    }

    #[test]
    fn sprintf_like_go() {
        let f = |v| Arg::Float(v);
        assert_eq!(sprintf("%.2f%%", &[f(12.345)]), "12.35%");
        assert_eq!(
            sprintf("%v and %s", &[f(1.0), Arg::Str("x".into())]),
            "1 and x"
        );
        assert_eq!(sprintf("%d", &[f(1.5)]), "%!d(float64=1.5)");
        assert_eq!(
            sprintf("%5.1f|%-5s|", &[f(2.0), Arg::Str("ab".into())]),
            "  2.0|ab   |"
        );
        assert_eq!(sprintf("%05.1f", &[f(-2.0)]), "-02.0");
        assert_eq!(sprintf("%s", &[]), "%!s(MISSING)");
        assert_eq!(sprintf("x", &[f(1.0)]), "x%!(EXTRA float64=1)");
        assert_eq!(sprintf("%q", &[Arg::Str("a\"".into())]), "\"a\\\"\"");
    }
}
