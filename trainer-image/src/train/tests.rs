//! Unit tests of `train`: data order and the config's wire form.

use super::*;

#[test]
fn epoch_order_is_a_stable_permutation() {
    let a = epoch_order(10, 1, 0);
    assert_eq!(a, epoch_order(10, 1, 0));
    assert_ne!(a, epoch_order(10, 1, 1));
    let mut s = a.clone();
    s.sort();
    assert_eq!(s, (0..10).collect::<Vec<_>>());
}

#[test]
fn config_accepts_camel_case_and_aliases() {
    let c: TrainConfig = serde_json::from_str(
        r#"{"baseModel":"/m","train":"/t.jsonl","output":"/o","targetModules":"q_proj, v_proj",
            "gradientAccumulationSteps":4,"checkpointEverySteps":10,"scheduler":"cosine"}"#,
    )
    .expect("config");
    assert_eq!(c.target_modules, ["q_proj", "v_proj"]);
    assert_eq!((c.grad_accum, c.checkpoint_every), (4, 10));
    assert!(
        serde_json::from_str::<TrainConfig>(
            r#"{"baseModel":"/m","train":"/t","output":"/o","lerningRate":1}"#
        )
        .is_err()
    );
}
