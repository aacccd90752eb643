//! Kubernetes resource quantities ("100m", "64Mi", "1.5", "1e3").

/// The value of a quantity (cores for cpu, bytes for memory).
pub fn parse(s: &str) -> Result<f64, String> {
    let t = s.trim();
    let bad = || {
        format!(
            "quantities must match the regular expression '^([+-]?[0-9.]+)([eEinumkKMGTP]*[-+]?[0-9]*)$': {s:?}"
        )
    };
    let split = t
        .find(|c: char| !(c.is_ascii_digit() || c == '.' || c == '+' || c == '-'))
        .unwrap_or(t.len());
    let (num, suffix) = t.split_at(split);
    if num.is_empty() {
        return Err(bad());
    }
    let n: f64 = num.parse().map_err(|_| bad())?;
    let mult = match suffix {
        "" => 1.0,
        "n" => 1e-9,
        "u" => 1e-6,
        "m" => 1e-3,
        "k" => 1e3,
        "M" => 1e6,
        "G" => 1e9,
        "T" => 1e12,
        "P" => 1e15,
        "E" => 1e18,
        "Ki" => 1024.0,
        "Mi" => 1024.0 * 1024.0,
        "Gi" => 1024f64.powi(3),
        "Ti" => 1024f64.powi(4),
        "Pi" => 1024f64.powi(5),
        "Ei" => 1024f64.powi(6),
        e if e.starts_with(['e', 'E']) => {
            let exp: i32 = e[1..].parse().map_err(|_| bad())?;
            10f64.powi(exp)
        }
        _ => return Err(bad()),
    };
    if n < 0.0 {
        return Err(format!("{s:?} must be greater than or equal to 0"));
    }
    Ok(n * mult)
}

/// CPU in millicores, rounded up as upstream's `MilliValue`.
pub fn milli_cpu(s: &str) -> Result<i64, String> {
    Ok((parse(s)? * 1000.0).ceil() as i64)
}

/// Bytes, rounded up.
pub fn bytes(s: &str) -> Result<i64, String> {
    Ok(parse(s)?.ceil() as i64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values() {
        assert_eq!(milli_cpu("100m"), Ok(100));
        assert_eq!(milli_cpu("1.5"), Ok(1500));
        assert_eq!(milli_cpu("2"), Ok(2000));
        assert_eq!(bytes("64Mi"), Ok(64 << 20));
        assert_eq!(bytes("1G"), Ok(1_000_000_000));
        assert_eq!(bytes("1e3"), Ok(1000));
        assert!(parse("abc").is_err());
        assert!(parse("1x").is_err());
        assert!(parse("-1").is_err());
    }
}
