//! The pod's termination message: the final summary as JSON, within Kubernetes' limit.
//!
//! The kubelet keeps at most 4096 bytes of a termination message and cuts the rest, which
//! leaves no JSON at all. The full summary is on disk (`metrics.json`, `stats.json`), so the
//! message keeps what the operator needs — status, counts and final metrics — and gives up, in
//! this order: bulk detail (the per-step history), the tails of arrays (invalid-line samples),
//! the tails of long strings (an error chain), then whatever is not a number, a boolean or
//! `status`. A shortened message carries `"truncated": true`.

use serde_json::{Map, Value};

/// Kubernetes' limit on one container's termination message, in bytes.
pub const LIMIT: usize = 4096;

/// Keys whose whole content is dropped first: they have a full copy on disk.
const BULK: &[&str] = &["history"];

/// Strings are never cut below this many bytes while anything else can give.
const MIN_STRING: usize = 64;

fn len(v: &Value) -> usize {
    v.to_string().len()
}

/// `s` cut to at most `max` bytes (at a character boundary), with an ellipsis when cut.
fn cut(s: &str, max: usize) -> String {
    if s.len() <= max {
        return s.to_string();
    }
    let mut end = max.saturating_sub('…'.len_utf8());
    while end > 0 && !s.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…", &s[..end])
}

/// The longest string in `v` (recursively) above `floor` bytes, as a mutable reference.
fn longest_string(v: &mut Value, floor: usize) -> Option<&mut String> {
    match v {
        Value::String(s) if s.len() > floor => Some(s),
        Value::Array(a) => a
            .iter_mut()
            .filter_map(|x| longest_string(x, floor))
            .max_by_key(|s| s.len()),
        Value::Object(o) => o
            .values_mut()
            .filter_map(|x| longest_string(x, floor))
            .max_by_key(|s| s.len()),
        _ => None,
    }
}

/// The longest non-empty array among the values of `o`.
fn longest_array(o: &mut Map<String, Value>) -> Option<&mut Vec<Value>> {
    o.values_mut()
        .filter_map(|v| match v {
            Value::Array(a) if !a.is_empty() => Some(a),
            _ => None,
        })
        .max_by_key(|a| a.len())
}

/// The JSON text of `value`, shortened (see the module docs) to at most `limit` bytes.
pub fn render(value: &Value, limit: usize) -> String {
    let full = value.to_string();
    if full.len() <= limit {
        return full;
    }
    let mut v = match value {
        Value::Object(o) => o.clone(),
        other => {
            let mut m = Map::new();
            m.insert("message".into(), other.clone());
            m
        }
    };
    v.insert("truncated".into(), Value::Bool(true));
    for k in BULK {
        v.remove(*k);
    }
    let fits = |v: &Map<String, Value>| len(&Value::Object(v.clone())) <= limit;
    while !fits(&v) {
        match longest_array(&mut v) {
            Some(a) => {
                a.pop();
            }
            None => break,
        }
    }
    while !fits(&v) {
        let excess = len(&Value::Object(v.clone())) - limit;
        let mut whole = Value::Object(v);
        match longest_string(&mut whole, MIN_STRING) {
            Some(s) => {
                let keep = s.len().saturating_sub(excess + 8).max(MIN_STRING);
                *s = cut(s, keep);
                v = match whole {
                    Value::Object(o) => o,
                    _ => unreachable!("an object stays an object"),
                };
            }
            None => {
                v = match whole {
                    Value::Object(o) => o,
                    _ => unreachable!("an object stays an object"),
                };
                break;
            }
        }
    }
    if !fits(&v) {
        v.retain(|k, x| k == "status" || x.is_number() || x.is_boolean());
    }
    let text = Value::Object(v).to_string();
    if text.len() <= limit {
        text
    } else {
        // Only an absurd number of numeric fields gets here.
        serde_json::json!({"status": value.get("status"), "truncated": true}).to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn parsed(text: &str) -> Value {
        assert!(text.len() <= LIMIT, "{} bytes", text.len());
        serde_json::from_str(text).expect("still JSON")
    }

    #[test]
    fn a_short_summary_is_unchanged() {
        let v = json!({"status": "Succeeded", "steps": 10, "validationLoss": 1.25});
        assert_eq!(render(&v, LIMIT), v.to_string());
    }

    #[test]
    fn a_long_training_history_is_dropped_and_final_metrics_kept() {
        let history: Vec<Value> = (0..2000)
            .map(|s| json!({"step": s, "trainLoss": 2.0 - s as f64 / 1000.0, "learningRate": 1e-4}))
            .collect();
        let v = json!({
            "status": "Succeeded", "baseValidationLoss": 2.5, "validationLoss": 1.1,
            "trainLoss": 0.9, "steps": 2000, "totalSteps": 2000, "epochs": 3, "tokens": 123456,
            "tokensPerSecond": 812.5, "resumedFromStep": 1500,
            "adapter": "/artifacts/finetune/ns/job/adapter", "history": history,
        });
        assert!(v.to_string().len() > 50_000);
        let out = parsed(&render(&v, LIMIT));
        assert_eq!(out["truncated"], true);
        assert!(out.get("history").is_none());
        for k in [
            "status",
            "baseValidationLoss",
            "validationLoss",
            "trainLoss",
            "steps",
            "totalSteps",
            "tokens",
            "resumedFromStep",
            "adapter",
        ] {
            assert_eq!(out[k], v[k], "{k}");
        }
    }

    #[test]
    fn a_long_error_chain_is_cut_at_a_character_boundary() {
        let message = format!("prepare failed: {}", "données invalides; ".repeat(600));
        let v = json!({"status": "Failed", "message": message});
        let out = parsed(&render(&v, LIMIT));
        assert_eq!(out["status"], "Failed");
        let m = out["message"].as_str().expect("message");
        assert!(m.starts_with("prepare failed: données invalides;"));
        assert!(m.ends_with('…'));
        assert!(m.len() > 3000, "keeps most of the message: {}", m.len());
    }

    #[test]
    fn invalid_samples_give_way_before_the_counts() {
        let samples: Vec<Value> = (0..20)
            .map(|i| json!({"line": i * 7 + 1, "reason": format!("invalid JSON: {}", "x".repeat(400))}))
            .collect();
        let v = json!({
            "status": "Succeeded", "examples": 1200, "invalid": 800, "duplicatesRemoved": 3,
            "redactions": 17, "train": 1080, "validation": 120, "test": 0,
            "contentHash": "ab".repeat(32), "invalidSamples": samples,
        });
        let out = parsed(&render(&v, LIMIT));
        for k in [
            "examples",
            "invalid",
            "duplicatesRemoved",
            "redactions",
            "train",
            "validation",
            "test",
            "contentHash",
        ] {
            assert_eq!(out[k], v[k], "{k}");
        }
        let kept = out["invalidSamples"].as_array().expect("samples");
        assert!(!kept.is_empty() && kept.len() < 20, "{}", kept.len());
        assert_eq!(
            kept[0], v["invalidSamples"][0],
            "the first samples survive whole"
        );
    }

    #[test]
    fn anything_fits_in_the_end() {
        let mut big = Map::new();
        big.insert("status".into(), json!("Failed"));
        for i in 0..400 {
            big.insert(format!("field{i}"), json!("y".repeat(100)));
        }
        let out = parsed(&render(&Value::Object(big), LIMIT));
        assert_eq!(out["status"], "Failed");
        assert_eq!(out["truncated"], true);
    }
}
