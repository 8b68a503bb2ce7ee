//! Durations as users write them in manifests: `90m`, `2h`, `14d`, `1h30m`.
//!
//! Go's `time.ParseDuration` (and so `metav1.Duration`) has no days, yet experiment
//! windows are naturally written in days, so Tally accepts `d` (24h) and `w` (7d) too.
//! The text is kept as written so that status and server-side apply round-trip it.

use std::{borrow::Cow, fmt, str::FromStr};

use jiff::SignedDuration;
use schemars::{JsonSchema, Schema, SchemaGenerator, json_schema};
use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// The CEL pattern every duration matches (checked by the API server).
const DURATION_PATTERN: &str = r"^([0-9]+(\\.[0-9]+)?(ms|s|m|h|d|w))+$";

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid duration {text:?}: {reason} (write e.g. 90m, 2h, 14d or 1h30m)")]
pub struct DurationError {
    pub text: String,
    pub reason: &'static str,
}

/// A non-negative duration.
#[derive(Clone, PartialEq, Eq)]
pub struct Duration {
    text: String,
    value: SignedDuration,
}

impl Duration {
    pub fn as_signed(&self) -> SignedDuration {
        self.value
    }

    pub fn is_zero(&self) -> bool {
        self.value.is_zero()
    }

    pub fn from_secs(secs: i64) -> Self {
        Self {
            text: format!("{secs}s"),
            value: SignedDuration::from_secs(secs),
        }
    }
}

impl fmt::Debug for Duration {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Duration({})", self.text)
    }
}

impl fmt::Display for Duration {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}

impl FromStr for Duration {
    type Err = DurationError;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let err = |reason| DurationError {
            text: text.to_string(),
            reason,
        };
        if text.is_empty() {
            return Err(err("empty"));
        }
        if text.starts_with('-') {
            return Err(err(
                "negative; durations count forward from their anchor (e.g. 1d)",
            ));
        }
        let mut nanos: i128 = 0;
        let mut rest = text;
        while !rest.is_empty() {
            let number_len = rest
                .find(|c: char| !(c.is_ascii_digit() || c == '.'))
                .ok_or_else(|| err("missing unit"))?;
            let (number, tail) = rest.split_at(number_len);
            let unit_len = tail
                .find(|c: char| c.is_ascii_digit() || c == '.')
                .unwrap_or(tail.len());
            let (unit, tail) = tail.split_at(unit_len);
            let unit_nanos: i128 = match unit {
                "ms" => 1_000_000,
                "s" => 1_000_000_000,
                "m" => 60 * 1_000_000_000,
                "h" => 3_600 * 1_000_000_000,
                "d" => 86_400 * 1_000_000_000,
                "w" => 7 * 86_400 * 1_000_000_000,
                _ => return Err(err("unknown unit (use ms, s, m, h, d or w)")),
            };
            let (whole, fraction) = number.split_once('.').unwrap_or((number, ""));
            if whole.is_empty() || fraction.contains('.') {
                return Err(err("malformed number"));
            }
            let whole: i128 = whole.parse().map_err(|_| err("number too large"))?;
            let mut part = whole
                .checked_mul(unit_nanos)
                .ok_or_else(|| err("too large"))?;
            if !fraction.is_empty() {
                let digits = fraction.len().min(18) as u32;
                let fraction: i128 = fraction[..digits as usize]
                    .parse()
                    .map_err(|_| err("malformed number"))?;
                part += fraction * unit_nanos / 10_i128.pow(digits);
            }
            nanos = nanos.checked_add(part).ok_or_else(|| err("too large"))?;
            rest = tail;
        }
        let secs = i64::try_from(nanos / 1_000_000_000).map_err(|_| err("too large"))?;
        let value = SignedDuration::new(secs, (nanos % 1_000_000_000) as i32);
        Ok(Self {
            text: text.to_string(),
            value,
        })
    }
}

impl Serialize for Duration {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&self.text)
    }
}

impl<'de> Deserialize<'de> for Duration {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = String::deserialize(deserializer)?;
        text.parse().map_err(serde::de::Error::custom)
    }
}

impl JsonSchema for Duration {
    fn schema_name() -> Cow<'static, str> {
        "Duration".into()
    }

    fn json_schema(_: &mut SchemaGenerator) -> Schema {
        json_schema!({
            "type": "string",
            // Bounded so that the API server can bound the cost of the CEL rule.
            "maxLength": 64,
            "description": "A duration such as 90m, 2h, 14d or 1h30m (units ms, s, m, h, d, w).",
            "x-kubernetes-validations": [{
                "rule": format!("self.matches('{DURATION_PATTERN}')"),
                "message": "must be a duration such as 90m, 2h, 14d or 1h30m (units ms, s, m, h, d, w)"
            }]
        })
    }
}

/// A duration that must be greater than zero (window lengths, intervals, lags).
#[derive(Clone, PartialEq, Eq, Debug)]
pub struct PositiveDuration(pub Duration);

impl PositiveDuration {
    pub fn as_signed(&self) -> SignedDuration {
        self.0.as_signed()
    }
}

impl fmt::Display for PositiveDuration {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

impl FromStr for PositiveDuration {
    type Err = DurationError;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let duration: Duration = text.parse()?;
        if duration.is_zero() {
            return Err(DurationError {
                text: text.to_string(),
                reason: "must be greater than zero",
            });
        }
        Ok(Self(duration))
    }
}

impl Serialize for PositiveDuration {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        self.0.serialize(serializer)
    }
}

impl<'de> Deserialize<'de> for PositiveDuration {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = String::deserialize(deserializer)?;
        text.parse().map_err(serde::de::Error::custom)
    }
}

impl JsonSchema for PositiveDuration {
    fn schema_name() -> Cow<'static, str> {
        "PositiveDuration".into()
    }

    fn json_schema(_: &mut SchemaGenerator) -> Schema {
        json_schema!({
            "type": "string",
            // Bounded so that the API server can bound the cost of the CEL rule.
            "maxLength": 64,
            "description": "A duration greater than zero such as 90m, 2h, 14d or 1h30m (units ms, s, m, h, d, w).",
            "x-kubernetes-validations": [{
                "rule": format!("self.matches('{DURATION_PATTERN}') && self.matches('[1-9]')"),
                "message": "must be a positive duration such as 90m, 2h, 14d or 1h30m (units ms, s, m, h, d, w)"
            }]
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_units_and_compounds() {
        let secs = |s: &str| s.parse::<Duration>().unwrap().as_signed().as_secs();
        assert_eq!(secs("90m"), 5_400);
        assert_eq!(secs("2h"), 7_200);
        assert_eq!(secs("14d"), 14 * 86_400);
        assert_eq!(secs("1w"), 7 * 86_400);
        assert_eq!(secs("1h30m"), 5_400);
        assert_eq!(secs("1.5h"), 5_400);
        assert_eq!(secs("0s"), 0);
        assert_eq!(
            "250ms".parse::<Duration>().unwrap().as_signed().as_millis(),
            250
        );
    }

    #[test]
    fn rejects_malformed_text() {
        for bad in ["", "5", "h", "-1h", "1y", "1.2.3h", "1h 30m", "1H"] {
            assert!(bad.parse::<Duration>().is_err(), "{bad:?} should not parse");
        }
        assert!("0s".parse::<PositiveDuration>().is_err());
        assert!("0d0h".parse::<PositiveDuration>().is_err());
        assert!("1s".parse::<PositiveDuration>().is_ok());
    }

    #[test]
    fn a_negative_duration_is_named_as_such() {
        let error = "-1d".parse::<Duration>().unwrap_err().to_string();
        assert!(error.contains("negative"), "{error}");
    }

    #[test]
    fn keeps_the_text_as_written() {
        let d: Duration = serde_json::from_str("\"1h30m\"").unwrap();
        assert_eq!(serde_json::to_string(&d).unwrap(), "\"1h30m\"");
    }
}
