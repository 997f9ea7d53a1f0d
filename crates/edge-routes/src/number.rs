//! `as_number`: .NET's `double.TryParse(s, NumberStyles.Any, CultureInfo.InvariantCulture)`.
//!
//! Accepted: surrounding white space, a leading or trailing sign, parentheses for a
//! negative number, `,` group separators in the integer part, a `.` decimal point, an
//! exponent, the currency sign `¤`, and the symbols `Infinity`, `-Infinity`, `NaN`. A value
//! too large for a double fails (edgeHub's tests expect `as_number('10e1000')` undefined).

pub(crate) fn parse_dotnet_double(s: &str) -> Option<f64> {
    let t = s.trim_matches(|c: char| matches!(c, ' ' | '\t' | '\n' | '\u{b}' | '\u{c}' | '\r'));
    match t {
        "Infinity" | "+Infinity" => return Some(f64::INFINITY),
        "-Infinity" => return Some(f64::NEG_INFINITY),
        "NaN" => return Some(f64::NAN),
        _ => {}
    }
    let mut t = t;
    let mut negative = false;
    if t.starts_with('(') && t.ends_with(')') && t.len() >= 2 {
        negative = true;
        t = &t[1..t.len() - 1];
    }
    t = t.strip_prefix('¤').unwrap_or(t);
    t = t.strip_suffix('¤').unwrap_or(t);
    let mut signed = false;
    if let Some(rest) = t.strip_prefix('-') {
        negative = !negative;
        signed = true;
        t = rest;
    } else if let Some(rest) = t.strip_prefix('+') {
        signed = true;
        t = rest;
    }
    if !signed {
        if let Some(rest) = t.strip_suffix('-') {
            negative = !negative;
            t = rest;
        } else if let Some(rest) = t.strip_suffix('+') {
            t = rest;
        }
    }
    t = t.strip_prefix('¤').unwrap_or(t);
    t = t.strip_suffix('¤').unwrap_or(t);

    // digits[,digits]*[.digits][e[+-]digits]
    let mut clean = String::with_capacity(t.len() + 1);
    let mut chars = t.chars().peekable();
    let mut int_digits = 0;
    while let Some(&c) = chars.peek() {
        if c.is_ascii_digit() {
            clean.push(c);
            int_digits += 1;
        } else if c != ',' || int_digits == 0 {
            break;
        }
        chars.next();
    }
    let mut frac_digits = 0;
    if chars.peek() == Some(&'.') {
        chars.next();
        clean.push('.');
        while let Some(&c) = chars.peek() {
            if !c.is_ascii_digit() {
                break;
            }
            clean.push(c);
            frac_digits += 1;
            chars.next();
        }
    }
    if int_digits + frac_digits == 0 {
        return None;
    }
    if matches!(chars.peek(), Some('e' | 'E')) {
        chars.next();
        clean.push('e');
        if let Some(&c @ ('+' | '-')) = chars.peek() {
            clean.push(c);
            chars.next();
        }
        let mut exp_digits = 0;
        while let Some(&c) = chars.peek() {
            if !c.is_ascii_digit() {
                break;
            }
            clean.push(c);
            exp_digits += 1;
            chars.next();
        }
        if exp_digits == 0 {
            return None;
        }
    }
    if chars.next().is_some() {
        return None;
    }
    if clean.ends_with('.') {
        clean.push('0');
    }
    let v: f64 = clean.parse().ok()?;
    if v.is_infinite() {
        return None;
    }
    Some(if negative { -v } else { v })
}

#[cfg(test)]
mod tests {
    use super::parse_dotnet_double as p;

    #[test]
    fn dotnet_number_styles_any() {
        assert_eq!(p("3"), Some(3.0));
        assert_eq!(p("  -3.5 "), Some(-3.5));
        assert_eq!(p("10e10"), Some(10e10));
        assert_eq!(p("1,000.5"), Some(1000.5));
        assert_eq!(p("(12)"), Some(-12.0));
        assert_eq!(p("12-"), Some(-12.0));
        assert_eq!(p("+.5"), Some(0.5));
        assert_eq!(p("5."), Some(5.0));
        assert_eq!(p("¤5"), Some(5.0));
        assert_eq!(p("10000000000000000000000000"), Some(1e25));
        assert_eq!(p("Infinity"), Some(f64::INFINITY));
        assert_eq!(p("10e1000"), None);
        assert_eq!(p("value1"), None);
        assert_eq!(p("VALUE3"), None);
        assert_eq!(p(""), None);
        assert_eq!(p("1e"), None);
        assert_eq!(p("0x10"), None);
        assert_eq!(p(",5"), None);
        assert!(p("NaN").is_some_and(f64::is_nan));
    }
}
