//! Go's `time.ParseDuration` syntax plus Prometheus' `d`, `w` and `y` units, for the duration
//! keys of `http_config` and Azure's `pipeline_config`.
//!
//! Thanos reads these keys as Prometheus `model.Duration` (`1d`, `1w`), OpenCost as Go
//! durations (`1m30s`, `1.5h`, `300ms`); a file written for either must load, and nothing else.
//! No crate parses exactly that union: `humantime` also takes words, spaces and months and
//! makes a year 365.25 days (Prometheus: 365), and Go-only parsers lack `d`, `w` and `y`.

use std::fmt;
use std::time::Duration;

use serde::Deserialize;
use serde::de;

/// A duration as Go (`time.ParseDuration`: `1m30s`, `1.5h`, `300ms`) or Prometheus
/// (`model.Duration`: `1d`, `1w`) write it. Thanos uses the latter, OpenCost the former.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct GoDuration(pub(super) Duration);

impl<'de> Deserialize<'de> for GoDuration {
    fn deserialize<D: de::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct Visitor;
        impl de::Visitor<'_> for Visitor {
            type Value = GoDuration;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a duration such as 90s, 1m30s or 2m")
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<GoDuration, E> {
                parse_go_duration(v)
                    .map(GoDuration)
                    .map_err(|why| E::custom(format!("invalid duration `{v}`: {why}")))
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<GoDuration, E> {
                match v {
                    0 => Ok(GoDuration(Duration::ZERO)),
                    _ => Err(E::custom(format!(
                        "invalid duration `{v}`: a unit is required, e.g. `{v}s`"
                    ))),
                }
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<GoDuration, E> {
                match u64::try_from(v) {
                    Ok(v) => self.visit_u64(v),
                    Err(_) => Err(E::custom(format!("invalid duration `{v}`: negative"))),
                }
            }
            fn visit_f64<E: de::Error>(self, v: f64) -> Result<GoDuration, E> {
                Err(E::custom(format!(
                    "invalid duration `{v}`: a unit is required, e.g. `{v}s`"
                )))
            }
        }
        deserializer.deserialize_any(Visitor)
    }
}

/// Go's `time.ParseDuration` plus Prometheus' `d`, `w` and `y` units; no negative values.
pub(super) fn parse_go_duration(text: &str) -> Result<Duration, String> {
    let text = text.trim();
    if text == "0" {
        return Ok(Duration::ZERO);
    }
    if text.is_empty() {
        return Err("empty".into());
    }
    if text.starts_with('-') {
        return Err("negative".into());
    }
    let mut rest = text.strip_prefix('+').unwrap_or(text);
    let mut total_nanos = 0f64;
    while !rest.is_empty() {
        let number_len = rest
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .unwrap_or(rest.len());
        let number = &rest[..number_len];
        if number.is_empty() || number == "." {
            return Err("expected a number".into());
        }
        let value: f64 = number
            .parse()
            .map_err(|_| format!("`{number}` is not a number"))?;
        rest = &rest[number_len..];
        const UNITS: &[(&str, f64)] = &[
            ("ns", 1.0),
            ("us", 1e3),
            ("µs", 1e3),
            ("μs", 1e3),
            ("ms", 1e6),
            ("s", 1e9),
            ("m", 60e9),
            ("h", 3600e9),
            ("d", 86_400e9),
            ("w", 604_800e9),
            ("y", 31_536_000e9),
        ];
        // Two-letter units first so that `ms` is not read as `m` followed by garbage.
        let Some((unit, scale)) = UNITS.iter().find(|(unit, _)| rest.starts_with(unit)) else {
            return Err("a unit is required (ns, us, ms, s, m, h, d, w, y)".into());
        };
        rest = &rest[unit.len()..];
        total_nanos += value * scale;
    }
    if !total_nanos.is_finite() || total_nanos > u64::MAX as f64 {
        return Err("too large".into());
    }
    Ok(Duration::from_nanos(total_nanos as u64))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn go_durations() {
        let d = |s: &str| parse_go_duration(s);
        assert_eq!(d("90s"), Ok(Duration::from_secs(90)));
        assert_eq!(d("1m30s"), Ok(Duration::from_secs(90)));
        assert_eq!(d("1.5h"), Ok(Duration::from_secs(5400)));
        assert_eq!(d("300ms"), Ok(Duration::from_millis(300)));
        assert_eq!(d("2us"), Ok(Duration::from_micros(2)));
        assert_eq!(d("1d"), Ok(Duration::from_secs(86_400)));
        assert_eq!(d("1w"), Ok(Duration::from_secs(604_800)));
        assert_eq!(d("0"), Ok(Duration::ZERO));
        for bad in ["", "5", "-1s", "1x", "s", "1.2.3s", "ms"] {
            assert!(d(bad).is_err(), "{bad:?} should not parse");
        }
    }
}
