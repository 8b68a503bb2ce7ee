//! YAML that every reader reads back as the JSON it came from. Plain YAML scalars
//! are read differently by YAML 1.1 readers (kubectl's, PyYAML): a variant `on`, a
//! country `NO` or a date-like value would come back as a boolean or a date, and
//! `2.5e23` as a string. So every string is double-quoted and every float has a
//! fraction and a signed exponent.

use serde_json::Value;

/// `value` as a block-style YAML document (no leading `---`).
pub fn to_string(value: &Value) -> String {
    let mut out = String::new();
    match value {
        Value::Object(map) if !map.is_empty() => write_map(&mut out, map, 0),
        Value::Array(items) if !items.is_empty() => write_list(&mut out, items, 0),
        other => {
            out.push_str(&scalar(other));
            out.push('\n');
        }
    }
    out
}

fn scalar(value: &Value) -> String {
    match value {
        Value::Null => "null".into(),
        Value::Bool(b) => b.to_string(),
        Value::Number(n) if n.is_f64() => n.as_f64().map_or_else(|| n.to_string(), float),
        Value::Number(n) => n.to_string(),
        // A JSON string is a valid YAML double-quoted scalar.
        Value::String(s) => Value::String(s.clone()).to_string(),
        Value::Array(_) => "[]".into(),
        Value::Object(_) => "{}".into(),
    }
}

/// A float both YAML 1.1 and 1.2 read as one: a `.` in the mantissa and a sign on
/// the exponent (`1.0e+23`, not `1e23`).
fn float(f: f64) -> String {
    if !f.is_finite() {
        return if f.is_nan() {
            ".nan".into()
        } else if f > 0.0 {
            ".inf".into()
        } else {
            "-.inf".into()
        };
    }
    let text = serde_json::Number::from_f64(f).map_or_else(|| f.to_string(), |n| n.to_string());
    let (mantissa, exponent) = match text.split_once(['e', 'E']) {
        Some((m, e)) => (m.to_string(), Some(e.to_string())),
        None => (text.clone(), None),
    };
    let mantissa = if mantissa.contains('.') {
        mantissa
    } else {
        format!("{mantissa}.0")
    };
    match exponent {
        Some(e) if e.starts_with(['-', '+']) => format!("{mantissa}e{e}"),
        Some(e) => format!("{mantissa}e+{e}"),
        None => mantissa,
    }
}

/// A key as written: plain when it is an identifier no YAML reader takes for
/// anything but a string, else quoted.
fn key(name: &str) -> String {
    const WORDS: [&str; 22] = [
        "y", "Y", "yes", "Yes", "YES", "n", "N", "no", "No", "NO", "true", "True", "TRUE", "false",
        "False", "FALSE", "on", "On", "ON", "off", "Off", "OFF",
    ];
    let identifier = name.chars().next().is_some_and(|c| c.is_ascii_alphabetic())
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-');
    if identifier && !WORDS.contains(&name) && !name.eq_ignore_ascii_case("null") {
        name.to_string()
    } else {
        Value::String(name.to_string()).to_string()
    }
}

fn is_block(value: &Value) -> bool {
    match value {
        Value::Object(map) => !map.is_empty(),
        Value::Array(items) => !items.is_empty(),
        _ => false,
    }
}

fn write_map(out: &mut String, map: &serde_json::Map<String, Value>, indent: usize) {
    for (i, (name, value)) in map.iter().enumerate() {
        // The first key of a list item follows its `- `.
        if i > 0 || !out.ends_with("- ") {
            out.push_str(&" ".repeat(indent));
        }
        out.push_str(&key(name));
        out.push(':');
        write_value(out, value, indent);
    }
}

fn write_list(out: &mut String, items: &[Value], indent: usize) {
    for item in items {
        out.push_str(&" ".repeat(indent));
        out.push_str("- ");
        match item {
            Value::Object(map) if !map.is_empty() => write_map(out, map, indent + 2),
            Value::Array(inner) if !inner.is_empty() => {
                out.push('\n');
                write_list(out, inner, indent + 2);
            }
            other => {
                out.push_str(&scalar(other));
                out.push('\n');
            }
        }
    }
}

/// After `key:`, a scalar on the same line or a block below it.
fn write_value(out: &mut String, value: &Value, indent: usize) {
    if !is_block(value) {
        out.push(' ');
        out.push_str(&scalar(value));
        out.push('\n');
        return;
    }
    out.push('\n');
    match value {
        Value::Object(map) => write_map(out, map, indent + 2),
        Value::Array(items) => write_list(out, items, indent),
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn ambiguous_scalars_are_written_so_that_they_read_back_as_they_were() {
        let value = json!({
            "variant": "on",
            "dimensions": [{"dimension": "country", "value": "NO"}, {"dimension": "day", "value": "2026-10-01"}],
            "sumOfSquares": 2.50000000001e23,
            "small": 1e-7,
            "count": 3,
            "mean": 2.0,
            "missing": null,
            "ok": true,
            "empty": [],
            "nested": {"list": [[1, 2], []], "map": {}},
            "yes": "a key YAML 1.1 reads as a boolean",
        });
        let text = to_string(&value);
        assert!(text.contains("variant: \"on\"\n"), "{text}");
        assert!(text.contains("value: \"NO\"\n"), "{text}");
        assert!(text.contains("value: \"2026-10-01\"\n"), "{text}");
        assert!(text.contains("sumOfSquares: 2.50000000001e+23\n"), "{text}");
        assert!(text.contains("small: 1.0e-7\n"), "{text}");
        assert!(text.contains("\"yes\": "), "{text}");
        // And a YAML reader gets the same value back.
        let back: Value = serde_yaml::from_str(&text).unwrap();
        assert_eq!(back, value, "{text}");
    }

    #[test]
    fn a_resource_reads_back_unchanged() {
        let value = json!({
            "apiVersion": "tally.dev/v1alpha1",
            "kind": "MetricCalculation",
            "metadata": {"name": "mc", "namespace": "default"},
            "status": {"metricResults": {"metricBucketStats": [
                {"variant": "control", "dimensions": [], "summaryStats": {"averageSummaryStats": {"count": 2, "sum": 3.5}}},
                {"variant": "treatment", "dimensions": [{"dimension": "os", "value": "ios"}]}
            ]}}
        });
        let back: Value = serde_yaml::from_str(&to_string(&value)).unwrap();
        assert_eq!(back, value);
    }
}
