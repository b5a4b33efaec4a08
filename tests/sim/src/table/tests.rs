use super::*;

#[test]
fn jsonpath_filters_conditions() {
    let o = json!({"status": {"conditions": [{"type": "A", "status": "False"}, {"type": "Ready", "status": "True"}]}});
    assert_eq!(
        jsonpath(&o, r#".status.conditions[?(@.type=="Ready")].status"#),
        vec![json!("True")]
    );
    assert_eq!(jsonpath(&o, ".status.conditions[0].type"), vec![json!("A")]);
}

#[test]
fn durations_read_like_kubectl() {
    assert_eq!(human_duration(45), "45s");
    assert_eq!(human_duration(200), "3m20s");
    assert_eq!(human_duration(3 * 3600), "3h");
}
