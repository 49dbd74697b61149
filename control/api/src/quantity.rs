//! Resource quantities (`500m`, `1.5`, `128Mi`, `1e3`) as exact thousandths, and their
//! canonical text the way Kubernetes' `resource.Quantity.String()` prints it.

use std::cmp::Ordering;
use std::collections::BTreeMap;
use std::fmt;

use k8s_openapi::api::core::v1::{Container, Pod};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity as K8sQuantity;

/// How a quantity is printed (Kubernetes' `Format`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Format {
    /// Decimal SI suffixes (`m`, ``, `k`, `M`, `G`, ...).
    #[default]
    DecimalSi,
    /// Binary suffixes (`Ki`, `Mi`, `Gi`, ...).
    BinarySi,
}

/// A parsed quantity: the value in thousandths of its unit, and the format it was written in.
#[derive(Debug, Clone, Copy, Default)]
pub struct Quantity {
    /// Value × 1000, rounded up (Kubernetes rounds sub-milli values up too).
    pub milli: i128,
    /// Print format.
    pub format: Format,
}

impl PartialEq for Quantity {
    fn eq(&self, other: &Self) -> bool {
        self.milli == other.milli
    }
}

impl Eq for Quantity {}

impl PartialOrd for Quantity {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for Quantity {
    fn cmp(&self, other: &Self) -> Ordering {
        self.milli.cmp(&other.milli)
    }
}

impl Quantity {
    /// A whole number in decimal format (`pods=2`).
    pub fn count(n: i64) -> Self {
        Quantity {
            milli: i128::from(n) * 1000,
            format: Format::DecimalSi,
        }
    }

    /// Parses `q`; `None` when malformed or out of range.
    pub fn parse(q: &str) -> Option<Self> {
        let q = q.trim();
        if q.is_empty() {
            return None;
        }
        let split = q
            .char_indices()
            .find(|(_, c)| !(c.is_ascii_digit() || *c == '.' || *c == '+' || *c == '-'))
            .map_or(q.len(), |(i, _)| i);
        let (num, suffix) = q.split_at(split);
        let mut format = Format::DecimalSi;
        let (mult_num, mult_den): (i128, i128) = match suffix {
            "" => (1, 1),
            "m" => (1, 1000),
            "k" => (1_000, 1),
            "M" => (1_000_000, 1),
            "G" => (1_000_000_000, 1),
            "T" => (1_000_000_000_000, 1),
            "P" => (1_000_000_000_000_000, 1),
            "E" => (1_000_000_000_000_000_000, 1),
            "Ki" | "Mi" | "Gi" | "Ti" | "Pi" | "Ei" => {
                format = Format::BinarySi;
                let shift = match suffix {
                    "Ki" => 10,
                    "Mi" => 20,
                    "Gi" => 30,
                    "Ti" => 40,
                    "Pi" => 50,
                    _ => 60,
                };
                (1i128 << shift, 1)
            }
            s if s.starts_with(['e', 'E']) => {
                let exp: i32 = s[1..].parse().ok()?;
                if !(-18..=18).contains(&exp) {
                    return None;
                }
                if exp >= 0 {
                    (10i128.pow(exp as u32), 1)
                } else {
                    (1, 10i128.pow((-exp) as u32))
                }
            }
            _ => return None,
        };
        let negative = num.starts_with('-');
        let digits = num.trim_start_matches(['+', '-']);
        let (int_part, frac_part) = digits.split_once('.').unwrap_or((digits, ""));
        if int_part.is_empty() && frac_part.is_empty() {
            return None;
        }
        if !int_part
            .chars()
            .chain(frac_part.chars())
            .all(|c| c.is_ascii_digit())
        {
            return None;
        }
        let frac_part = &frac_part[..frac_part.len().min(18)];
        let int_val: i128 = if int_part.is_empty() {
            0
        } else {
            int_part.parse().ok()?
        };
        let frac_den = 10i128.pow(frac_part.len() as u32);
        let frac_val: i128 = if frac_part.is_empty() {
            0
        } else {
            frac_part.parse().ok()?
        };
        let numer = int_val
            .checked_mul(frac_den)?
            .checked_add(frac_val)?
            .checked_mul(mult_num)?
            .checked_mul(1000)?;
        let denom = frac_den.checked_mul(mult_den)?;
        let v = (numer + denom - 1) / denom;
        Some(Quantity {
            milli: if negative { -v } else { v },
            format,
        })
    }

    /// The value in whole units, rounded up.
    pub fn value(&self) -> i128 {
        (self.milli + 999).div_euclid(1000)
    }
}

impl std::ops::Add for Quantity {
    type Output = Quantity;

    /// The sum, in the format of `self` (or of `other` when `self` is zero).
    fn add(self, other: Quantity) -> Quantity {
        Quantity {
            milli: self.milli + other.milli,
            format: if self.milli == 0 {
                other.format
            } else {
                self.format
            },
        }
    }
}

impl fmt::Display for Quantity {
    /// Kubernetes' canonical form: `500m`, `2`, `128Mi`, `1500`, `2k`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let m = self.milli;
        if m == 0 {
            return f.write_str("0");
        }
        if m % 1000 != 0 {
            return write!(f, "{m}m");
        }
        let v = m / 1000;
        match self.format {
            Format::BinarySi => {
                if v.abs() >= 1024 {
                    for (suffix, shift) in [
                        ("Ei", 60),
                        ("Pi", 50),
                        ("Ti", 40),
                        ("Gi", 30),
                        ("Mi", 20),
                        ("Ki", 10),
                    ] {
                        let unit = 1i128 << shift;
                        if v % unit == 0 {
                            return write!(f, "{}{suffix}", v / unit);
                        }
                    }
                }
                write!(f, "{v}")
            }
            Format::DecimalSi => {
                for (suffix, unit) in [
                    ("E", 1_000_000_000_000_000_000i128),
                    ("P", 1_000_000_000_000_000),
                    ("T", 1_000_000_000_000),
                    ("G", 1_000_000_000),
                    ("M", 1_000_000),
                    ("k", 1_000),
                ] {
                    if v % unit == 0 {
                        return write!(f, "{}{suffix}", v / unit);
                    }
                }
                write!(f, "{v}")
            }
        }
    }
}

/// The canonical text of quantity string `q` (unchanged when it does not parse).
pub fn canonical(q: &str) -> String {
    Quantity::parse(q).map_or_else(|| q.to_string(), |x| x.to_string())
}

/// CPU in millicores (`"500m"` -> 500, `"2"` -> 2000, `"0.25"` -> 250; sub-milli values round
/// up); `None` when malformed or out of range.
pub fn cpu_millis(q: &str) -> Option<i64> {
    Quantity::parse(q).and_then(|q| i64::try_from(q.milli).ok())
}

/// A byte count (memory, storage: `"128Mi"`, `"1G"`, `"1e9"`), fractions rounded up; `None`
/// when malformed or out of range.
pub fn bytes(q: &str) -> Option<i64> {
    Quantity::parse(q).and_then(|q| i64::try_from(q.value()).ok())
}

/// Requests and limits of a pod, summed over containers (init containers count as their
/// maximum, as in Kubernetes).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PodResources {
    /// `requests.cpu` in millicores.
    pub cpu_request: i64,
    /// `requests.memory` in bytes.
    pub memory_request: i64,
    /// `limits.cpu` in millicores.
    pub cpu_limit: i64,
    /// `limits.memory` in bytes.
    pub memory_limit: i64,
}

fn get(map: Option<&BTreeMap<String, K8sQuantity>>, key: &str, f: fn(&str) -> Option<i64>) -> i64 {
    map.and_then(|m| m.get(key))
        .and_then(|q| f(&q.0))
        .unwrap_or(0)
}

fn container_resources(c: &Container) -> PodResources {
    let r = c.resources.as_ref();
    let requests = r.and_then(|r| r.requests.as_ref());
    let limits = r.and_then(|r| r.limits.as_ref());
    let cpu_limit = get(limits, "cpu", cpu_millis);
    let memory_limit = get(limits, "memory", bytes);
    // A limit without a request defaults the request to the limit.
    let cpu_request = match requests.and_then(|m| m.get("cpu")) {
        Some(q) => cpu_millis(&q.0).unwrap_or(0),
        None => cpu_limit,
    };
    let memory_request = match requests.and_then(|m| m.get("memory")) {
        Some(q) => bytes(&q.0).unwrap_or(0),
        None => memory_limit,
    };
    PodResources {
        cpu_request,
        memory_request,
        cpu_limit,
        memory_limit,
    }
}

/// The resources a pod asks for.
pub fn pod_resources(pod: &Pod) -> PodResources {
    let Some(spec) = pod.spec.as_ref() else {
        return PodResources::default();
    };
    let mut sum = PodResources::default();
    for c in &spec.containers {
        let r = container_resources(c);
        sum.cpu_request += r.cpu_request;
        sum.memory_request += r.memory_request;
        sum.cpu_limit += r.cpu_limit;
        sum.memory_limit += r.memory_limit;
    }
    for c in spec.init_containers.iter().flatten() {
        let r = container_resources(c);
        sum.cpu_request = sum.cpu_request.max(r.cpu_request);
        sum.memory_request = sum.memory_request.max(r.memory_request);
        sum.cpu_limit = sum.cpu_limit.max(r.cpu_limit);
        sum.memory_limit = sum.memory_limit.max(r.memory_limit);
    }
    sum
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_prints_like_kubernetes() {
        for (input, milli, printed) in [
            ("500m", 500, "500m"),
            ("0.5", 500, "500m"),
            ("2", 2000, "2"),
            ("1000m", 1000, "1"),
            ("128Mi", 128 * 1024 * 1024 * 1000, "128Mi"),
            ("1Gi", (1i128 << 30) * 1000, "1Gi"),
            ("2000", 2_000_000, "2k"),
            ("1e3", 1_000_000, "1k"),
            ("1G", 1_000_000_000_000, "1G"),
            ("0", 0, "0"),
        ] {
            let q = Quantity::parse(input).unwrap_or_else(|| panic!("{input} parses"));
            assert_eq!(q.milli, milli, "{input}");
            assert_eq!(q.to_string(), printed, "{input}");
        }
        assert!(Quantity::parse("abc").is_none());
        assert!(Quantity::parse("1Zi").is_none());
        let sum = Quantity::parse("128Mi").expect("q") + Quantity::parse("128Mi").expect("q");
        assert_eq!(sum.to_string(), "256Mi");
        assert_eq!(Quantity::parse("1500m").expect("q").value(), 2);
    }

    #[test]
    fn pod_requests_default_to_limits_and_init_containers_count_as_max() {
        let pod: Pod = serde_json::from_value(serde_json::json!({
            "metadata": {"name": "p"},
            "spec": {
                "initContainers": [{"name": "i", "resources": {"requests": {"cpu": "2"}}}],
                "containers": [
                    {"name": "a", "resources": {"requests": {"cpu": "250m", "memory": "64Mi"}}},
                    {"name": "b", "resources": {"limits": {"cpu": "500m", "memory": "1Gi"}}},
                ]
            }
        }))
        .expect("pod literal");
        let r = pod_resources(&pod);
        assert_eq!(r.cpu_request, 2000, "init container max wins");
        assert_eq!(r.memory_request, (64 << 20) + (1 << 30));
        assert_eq!(r.cpu_limit, 500);
    }

    #[test]
    fn cpu_and_bytes() {
        assert_eq!(cpu_millis("500m"), Some(500));
        assert_eq!(cpu_millis("0.25"), Some(250));
        assert_eq!(cpu_millis("1e3"), Some(1_000_000));
        assert_eq!(bytes("128Mi"), Some(128 << 20));
        assert_eq!(bytes("1.5Gi"), Some(1_610_612_736));
        assert_eq!(bytes("1G"), Some(1_000_000_000));
        assert_eq!(cpu_millis("abc"), None);
        assert_eq!(bytes("1Zi"), None);
    }
}
