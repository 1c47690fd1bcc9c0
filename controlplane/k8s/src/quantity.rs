//! Kubernetes resource quantities (`100m`, `1.5`, `64Mi`, `1G`, `2e3`) as exact milli-units, the
//! form the scheduler counts in and the kubelet turns into cgroup values and into the downward
//! API's resourceFieldRef. Exact integers, so `1` and `1000m` compare equal.

use k8s_openapi::apimachinery::pkg::api::resource::Quantity;

/// A quantity that does not parse; names the text.
#[derive(Debug, thiserror::Error, PartialEq)]
#[error("invalid quantity {0:?}")]
pub struct BadQuantity(pub String);

/// The quantity in thousandths of its unit (`100m` → 100, `1Ki` → 1 024 000), rounded up.
pub fn milli(q: &Quantity) -> Result<i128, BadQuantity> {
    parse_milli(&q.0)
}

/// The quantity in whole units, rounded up (`100m` → 1, `64Mi` → 67 108 864).
pub fn units(q: &Quantity) -> Result<i128, BadQuantity> {
    Ok(ceil_div(milli(q)?, 1000))
}

pub fn ceil_div(a: i128, b: i128) -> i128 {
    if a >= 0 { (a + b - 1) / b } else { a / b }
}

fn parse_milli(text: &str) -> Result<i128, BadQuantity> {
    let bad = || BadQuantity(text.to_string());
    let s = text.trim();
    let split = s
        .find(|c: char| !(c.is_ascii_digit() || c == '.' || c == '+' || c == '-'))
        .unwrap_or(s.len());
    let (number, suffix) = s.split_at(split);
    if number.is_empty() || number.len() > 40 {
        return Err(bad());
    }
    let (negative, number) = match number.as_bytes()[0] {
        b'-' => (true, &number[1..]),
        b'+' => (false, &number[1..]),
        _ => (false, number),
    };
    let (whole, frac) = number.split_once('.').unwrap_or((number, ""));
    if whole.is_empty() && frac.is_empty()
        || !whole.bytes().all(|b| b.is_ascii_digit())
        || !frac.bytes().all(|b| b.is_ascii_digit())
    {
        return Err(bad());
    }
    // The number as an integer mantissa times 10^-scale.
    let mantissa: i128 = format!("{whole}{frac}").parse().map_err(|_| bad())?;
    let scale = frac.len() as i32;
    let (base, exp): (i128, i32) = match suffix {
        "" => (1, 0),
        "n" => (1, -9),
        "u" => (1, -6),
        "m" => (1, -3),
        "k" => (1, 3),
        "M" => (1, 6),
        "G" => (1, 9),
        "T" => (1, 12),
        "P" => (1, 15),
        "E" => (1, 18),
        "Ki" => (1 << 10, 0),
        "Mi" => (1 << 20, 0),
        "Gi" => (1 << 30, 0),
        "Ti" => (1 << 40, 0),
        "Pi" => (1 << 50, 0),
        "Ei" => (1 << 60, 0),
        e if e.starts_with(['e', 'E']) => (1, e[1..].parse::<i32>().map_err(|_| bad())?),
        _ => return Err(bad()),
    };
    // value * 1000 = mantissa * base * 10^(exp + 3 - scale)
    let power = exp + 3 - scale;
    if !(-40..=30).contains(&power) {
        return Err(bad());
    }
    let scaled = mantissa.checked_mul(base).ok_or_else(bad)?;
    let value = if power >= 0 {
        scaled
            .checked_mul(10i128.pow(power as u32))
            .ok_or_else(bad)?
    } else {
        ceil_div(scaled, 10i128.pow((-power) as u32))
    };
    Ok(if negative { -value } else { value })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn m(s: &str) -> i128 {
        parse_milli(s).unwrap()
    }

    #[test]
    fn parses_kubernetes_forms() {
        assert_eq!(m("100m"), 100);
        assert_eq!(m("500u"), 1);
        assert_eq!(m("250000000n"), 250);
        assert_eq!(m("1"), 1000);
        assert_eq!(m("1.5"), 1500);
        assert_eq!(m("0.1"), 100);
        assert_eq!(m("64Mi"), 64 * 1024 * 1024 * 1000);
        assert_eq!(m("1G"), 1_000_000_000_000);
        assert_eq!(m("2e3"), 2_000_000);
        assert_eq!(m("1.5Gi"), 1_610_612_736_000);
        assert_eq!(units(&Quantity("100m".into())).unwrap(), 1);
        assert!(parse_milli("ten").is_err());
        assert!(parse_milli("1Qi").is_err());
        assert!(parse_milli("").is_err());
    }
}
