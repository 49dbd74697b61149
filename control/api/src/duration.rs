//! Durations as Kubernetes' flags and kubectl take them: Go's `time.ParseDuration` grammar.
//!
//! A duration is a sequence of decimal numbers, each with an optional fraction and a unit:
//! `300ms`, `1.5h`, `2h45m`, `.5s`; units `ns`, `us` (or `µs`, `μs`), `ms`, `s`, `m`, `h`.
//! `0` alone needs no unit; any other number without a unit is an error, as in Go. Flags
//! never take negative durations, so a sign other than `+` is refused with a message.

use std::time::Duration;

/// Parses a Go-style duration (see the module documentation).
pub fn parse(s: &str) -> Result<Duration, String> {
    let orig = s;
    let mut s = s.trim();
    if let Some(rest) = s.strip_prefix('+') {
        s = rest;
    } else if s.starts_with('-') {
        return Err(format!("invalid duration {orig:?}: must not be negative"));
    }
    if s == "0" {
        return Ok(Duration::ZERO);
    }
    if s.is_empty() {
        return Err(format!("invalid duration {orig:?}"));
    }
    let mut nanos: u128 = 0;
    while !s.is_empty() {
        // The number: digits, then an optional fraction.
        let int_len = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
        let (int, rest) = s.split_at(int_len);
        let (frac, rest) = match rest.strip_prefix('.') {
            Some(r) => {
                let n = r.find(|c: char| !c.is_ascii_digit()).unwrap_or(r.len());
                r.split_at(n)
            }
            None => ("", rest),
        };
        if int.is_empty() && frac.is_empty() {
            return Err(format!("invalid duration {orig:?}"));
        }
        // The unit: everything up to the next number.
        let unit_len = rest
            .find(|c: char| c.is_ascii_digit() || c == '.')
            .unwrap_or(rest.len());
        let (unit, rest) = rest.split_at(unit_len);
        let per_unit: u128 = match unit {
            "ns" => 1,
            "us" | "µs" | "μs" => 1_000,
            "ms" => 1_000_000,
            "s" => 1_000_000_000,
            "m" => 60 * 1_000_000_000,
            "h" => 3_600 * 1_000_000_000,
            "" => return Err(format!("missing unit in duration {orig:?}")),
            u => return Err(format!("unknown unit {u:?} in duration {orig:?}")),
        };
        let overflow = || format!("invalid duration {orig:?}: too large");
        let whole: u128 = if int.is_empty() {
            0
        } else {
            int.parse().map_err(|_| overflow())?
        };
        nanos = whole
            .checked_mul(per_unit)
            .and_then(|n| n.checked_add(nanos))
            .ok_or_else(overflow)?;
        // The fraction, to the nanosecond (Go truncates the same way).
        let mut scale = per_unit;
        for d in frac.bytes().take(30) {
            scale /= 10;
            nanos += u128::from(d - b'0') * scale;
        }
        s = rest;
    }
    let secs = u64::try_from(nanos / 1_000_000_000)
        .map_err(|_| format!("invalid duration {orig:?}: too large"))?;
    Ok(Duration::new(secs, (nanos % 1_000_000_000) as u32))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn go_durations() {
        let ms = Duration::from_millis;
        for (s, want) in [
            ("0", Duration::ZERO),
            ("+0", Duration::ZERO),
            ("0s", Duration::ZERO),
            ("40s", Duration::from_secs(40)),
            ("5m", Duration::from_secs(300)),
            ("1m30s", Duration::from_secs(90)),
            ("1h0m0s", Duration::from_secs(3600)),
            ("2h45m", Duration::from_secs(9900)),
            ("500ms", ms(500)),
            ("1.5h", Duration::from_secs(5400)),
            (".5s", ms(500)),
            ("1.s", Duration::from_secs(1)),
            ("1µs", Duration::from_micros(1)),
            ("1μs", Duration::from_micros(1)),
            ("3us", Duration::from_micros(3)),
            ("7ns", Duration::from_nanos(7)),
            ("1.000000001s", Duration::new(1, 1)),
            ("1.0000000019s", Duration::new(1, 1)),
            ("1h1m1s1ms", Duration::from_millis(3_661_001)),
            (" 10s ", Duration::from_secs(10)),
        ] {
            assert_eq!(parse(s), Ok(want), "{s:?}");
        }
    }

    #[test]
    fn bad_durations_say_why() {
        for (s, why) in [
            ("", "invalid duration"),
            ("5", "missing unit"),
            ("1m30", "missing unit"),
            ("3x", "unknown unit \"x\""),
            ("1d", "unknown unit \"d\""),
            ("-1s", "must not be negative"),
            (".s", "invalid duration"),
            ("s", "invalid duration"),
            ("1..5s", "missing unit"),
            ("99999999999999999999999h", "too large"),
        ] {
            let e = parse(s).expect_err(s);
            assert!(e.contains(why), "{s:?}: {e}");
        }
    }
}
