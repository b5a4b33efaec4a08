//! Gradient checkpointing ([`Checkpointing::Layers`]) gives the loss and the adapter gradients of
//! the plain pass ([`Checkpointing::Off`]) within 1e-5, with LoRA dropout on, for the families
//! whose decoder blocks differ: untied Llama, Mistral's window, Gemma 2's soft-capping and
//! sandwich norms, Gemma 3's local/global layers and q/k norms, Phi-3's fused projections and
//! Qwen3-MoE's sparse MLPs.

mod common;

use std::sync::Mutex;

use common::fixtures_of;
use tailor_model::{Adapters, CausalLm, Checkpointing, LoraAdapter, LoraConfig, PackedBatch, peft};
use tch::{Device, Kind, Tensor};

/// libtorch's generator is global: the tests of this binary take turns.
static GENERATOR: Mutex<()> = Mutex::new(());

const FAMILIES: [&str; 6] = [
    "llama_gqa",
    "mistral",
    "gemma2",
    "gemma3",
    "phi3",
    "qwen3_moe",
];

/// The family's PEFT adapter (B nonzero, so every layer's gradient flows) with `dropout`.
fn adapter(model: &CausalLm, name: &str, dropout: f64) -> LoraAdapter {
    let dir = fixtures_of(&FAMILIES).join(name).join("peft_adapter");
    let a = peft::load_adapter(&dir, &model.config, Device::Cpu).expect("adapter");
    let config = LoraConfig {
        dropout,
        ..a.config.clone()
    };
    let pairs = a
        .pairs()
        .map(|(l, m, p)| (l, m, p.a.copy(), p.b.copy()))
        .collect();
    let mut adapter = LoraAdapter::from_pairs(&model.config, config, pairs).expect("pairs");
    adapter.set_requires_grad(true);
    adapter
}

/// Two micro-batches (as one optimizer step accumulates them) of three packed sequences each;
/// returns their losses and the accumulated gradients.
fn step(
    model: &CausalLm,
    adapter: &LoraAdapter,
    ids: &Tensor,
    checkpointing: Checkpointing,
) -> (Vec<f64>, Vec<Tensor>) {
    tch::manual_seed(11);
    let row = |r: i64, len: i64| ids.get(r).narrow(0, 0, len);
    let micro = [
        vec![row(0, 13), row(1, 9), row(0, 5)],
        vec![row(1, 13), row(0, 7), row(1, 2)],
    ];
    let mut losses = Vec::new();
    for seqs in &micro {
        let lengths: Vec<i64> = seqs.iter().map(|s| s.size()[0]).collect();
        let input_ids = Tensor::cat(seqs, 0);
        // Every position but each sequence's last predicts the next token.
        let mut keep = Vec::new();
        let mut offset = 0;
        for &l in &lengths {
            keep.extend(offset..offset + l - 1);
            offset += l;
        }
        let keep = Tensor::from_slice(&keep);
        let targets = input_ids.index_select(0, &(&keep + 1));
        let batch = PackedBatch {
            input_ids: &input_ids,
            lengths: &lengths,
            keep: &keep,
            targets: &targets,
        };
        let loss = model
            .packed_loss_backward(&batch, adapter, 0.01, checkpointing)
            .expect("loss and backward");
        losses.push(loss);
    }
    let grads = adapter
        .parameters()
        .iter()
        .map(|p| p.grad().copy())
        .collect();
    for p in adapter.parameters() {
        let _ = p.grad().zero_();
    }
    (losses, grads)
}

#[test]
fn checkpointed_losses_and_gradients_equal_the_plain_pass_with_dropout() {
    let _turn = GENERATOR.lock().unwrap_or_else(|e| e.into_inner());
    for name in FAMILIES {
        let dir = fixtures_of(&FAMILIES).join(name);
        let model = CausalLm::load(&dir, Kind::Float, Device::Cpu).expect("load");
        let ids = common::reference(&dir, "input_ids");
        let a = adapter(&model, name, 0.2);
        let (plain, plain_grads) = step(&model, &a, &ids, Checkpointing::Off);
        let (ckpt, ckpt_grads) = step(&model, &a, &ids, Checkpointing::Layers);
        for (p, c) in plain.iter().zip(&ckpt) {
            assert!(
                (p - c).abs() <= 1e-5 * p.abs().max(1.0),
                "{name}: losses {plain:?} vs checkpointed {ckpt:?}"
            );
        }
        let mut worst: f64 = 0.0;
        let mut largest: f64 = 0.0;
        for (p, c) in plain_grads.iter().zip(&ckpt_grads) {
            worst = worst.max((p - c).abs().max().double_value(&[]));
            largest = largest.max(p.abs().max().double_value(&[]));
        }
        assert!(largest > 0.0, "{name}: no gradient reached the adapter");
        assert!(worst <= 1e-5, "{name}: gradients differ by {worst}");

        // Dropout is live (its masks change the loss), and a second run repeats itself.
        let (undropped, _) = step(
            &model,
            &adapter(&model, name, 0.0),
            &ids,
            Checkpointing::Off,
        );
        assert!(
            (undropped[0] - plain[0]).abs() > 1e-6,
            "{name}: dropout changed nothing"
        );
        let (again, _) = step(&model, &a, &ids, Checkpointing::Layers);
        assert_eq!(again, ckpt, "{name}: checkpointed pass not reproducible");
        println!(
            "{name}: losses {plain:?}, checkpointed equal; gradients within {worst:.1e} (largest {largest:.2e})"
        );
    }
}

/// Without dropout nothing is reseeded, and the hidden states of a training pass are those of
/// an inference pass.
#[test]
fn without_dropout_a_training_pass_equals_inference() {
    let _turn = GENERATOR.lock().unwrap_or_else(|e| e.into_inner());
    let dir = fixtures_of(&FAMILIES).join("llama_gqa");
    let model = CausalLm::load(&dir, Kind::Float, Device::Cpu).expect("load");
    let ids = common::reference(&dir, "input_ids");
    let a = adapter(&model, "llama_gqa", 0.0);
    let packed = ids.reshape([-1]);
    let keep = Tensor::from_slice(&[0i64, 12, 13, 25]);
    let lengths = [13i64, 13];
    let adapters = Adapters::All(&a);
    tch::manual_seed(5);
    let train =
        tch::no_grad(|| model.hidden_states_packed(&packed, &lengths, &adapters, true, &keep))
            .expect("train");
    let after = Tensor::randint(1 << 30, [4], (Kind::Int64, Device::Cpu));
    tch::manual_seed(5);
    let eval =
        tch::no_grad(|| model.hidden_states_packed(&packed, &lengths, &adapters, false, &keep))
            .expect("eval");
    let expected = Tensor::randint(1 << 30, [4], (Kind::Int64, Device::Cpu));
    assert_eq!(common::max_abs_diff(&train, &eval), 0.0);
    assert_eq!(
        Vec::<i64>::try_from(&after).expect("ints"),
        Vec::<i64>::try_from(&expected).expect("ints"),
        "the generator was touched without dropout"
    );
}
