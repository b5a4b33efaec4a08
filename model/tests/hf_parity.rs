//! tailor-model against Hugging Face `transformers` and `peft` (tests/reference.py) on tiny
//! random checkpoints: logits, PEFT adapters both ways, KV cache and per-row adapters.

use std::path::{Path, PathBuf};
use std::process::Command;

use tailor_model::{Adapters, CausalLm, ForwardInput, LoraAdapter, ModelError, peft};
use tch::{Device, Kind, Tensor};

const MODELS: [&str; 3] = ["llama_gqa", "qwen2", "qwen3"];

mod common;

use common::{fixtures_of, max_abs_diff, python, reference, script};

/// The fixtures are built once per test binary.
fn fixtures() -> &'static Path {
    fixtures_of(&MODELS)
}

fn load(name: &str) -> (PathBuf, CausalLm) {
    let dir = fixtures().join(name);
    let model = CausalLm::load(&dir, Kind::Float, Device::Cpu).expect("load model");
    (dir, model)
}

#[test]
fn logits_match_transformers() {
    for name in MODELS {
        let (dir, model) = load(name);
        let ids = reference(&dir, "input_ids");
        let logits =
            tch::no_grad(|| model.forward(&ForwardInput::new(&ids), None)).expect("forward");
        let diff = max_abs_diff(&logits, &reference(&dir, "logits"));
        assert!(diff <= 1e-4, "{name}: max abs diff {diff}");
    }
}

#[test]
fn peft_adapter_loads_and_matches_peft_logits() {
    for name in MODELS {
        let (dir, model) = load(name);
        let adapter = peft::load_adapter(&dir.join("peft_adapter"), &model.config, Device::Cpu)
            .expect("load adapter");
        assert_eq!(
            adapter.pairs().count(),
            7 * model.config.num_hidden_layers as usize
        );
        let ids = reference(&dir, "input_ids");
        let input = ForwardInput {
            adapters: Adapters::All(&adapter),
            ..ForwardInput::new(&ids)
        };
        let logits = tch::no_grad(|| model.forward(&input, None)).expect("forward");
        let diff = max_abs_diff(&logits, &reference(&dir, "peft_logits"));
        assert!(diff <= 1e-4, "{name}: max abs diff {diff}");
        // The base model alone must differ, or the adapter test proves nothing.
        assert!(max_abs_diff(&logits, &reference(&dir, "logits")) > 1e-3);
    }
}

#[test]
fn tailor_adapter_loads_in_peft_with_equal_logits() {
    for name in MODELS {
        let (dir, model) = load(name);
        tch::manual_seed(7);
        let config = tailor_model::LoraConfig {
            r: 4,
            alpha: 8.0,
            dropout: 0.0,
            target_modules: tailor_model::TargetModule::parse_list(&[
                "q_proj",
                "v_proj",
                "down_proj",
            ])
            .expect("targets"),
            use_rslora: false,
        };
        let mut adapter = LoraAdapter::init(&model.config, config, Device::Cpu).expect("init");
        // Non-zero B so the adapter changes the logits.
        let pairs: Vec<_> = adapter
            .pairs()
            .map(|(l, m, p)| {
                (
                    l,
                    m,
                    p.a.copy(),
                    Tensor::randn(p.b.size(), (Kind::Float, Device::Cpu)) * 0.1,
                )
            })
            .collect();
        adapter =
            LoraAdapter::from_pairs(&model.config, adapter.config.clone(), pairs).expect("pairs");
        let out = tempfile::tempdir().expect("tempdir");
        peft::save_adapter(&adapter, out.path(), "tiny").expect("save");
        let logits_file = out.path().join("peft_logits.safetensors");
        let run = Command::new(python())
            .arg(script())
            .arg("peft-load")
            .arg(&dir)
            .arg(out.path())
            .arg(&logits_file)
            .output()
            .expect("run reference.py");
        assert!(
            run.status.success(),
            "{name}: PEFT rejected the adapter: {}{}",
            String::from_utf8_lossy(&run.stdout),
            String::from_utf8_lossy(&run.stderr)
        );
        let peft_logits = tailor_model::checkpoint::read_safetensors(&logits_file, Device::Cpu)
            .expect("logits")[0]
            .1
            .shallow_clone();
        let ids = reference(&dir, "input_ids");
        let input = ForwardInput {
            adapters: Adapters::All(&adapter),
            ..ForwardInput::new(&ids)
        };
        let logits = tch::no_grad(|| model.forward(&input, None)).expect("forward");
        let diff = max_abs_diff(&logits, &peft_logits);
        assert!(diff <= 1e-4, "{name}: max abs diff {diff}");
    }
}

#[test]
fn kv_cache_decode_equals_full_forward() {
    let (dir, model) = load("llama_gqa");
    let ids = reference(&dir, "input_ids");
    let adapter =
        peft::load_adapter(&dir.join("peft_adapter"), &model.config, Device::Cpu).expect("adapter");
    let adapters = Adapters::All(&adapter);
    let full = tch::no_grad(|| {
        model.forward(
            &ForwardInput {
                adapters,
                ..ForwardInput::new(&ids)
            },
            None,
        )
    })
    .expect("full");
    let t = ids.size()[1];
    let mut cache = model.new_cache();
    let prefix = 5;
    let mut parts = vec![
        tch::no_grad(|| {
            model.forward(
                &ForwardInput {
                    adapters,
                    ..ForwardInput::new(&ids.narrow(1, 0, prefix))
                },
                Some(&mut cache),
            )
        })
        .expect("prefill"),
    ];
    for i in prefix..t {
        let step = ids.narrow(1, i, 1);
        parts.push(
            tch::no_grad(|| {
                model.forward(
                    &ForwardInput {
                        adapters,
                        ..ForwardInput::new(&step)
                    },
                    Some(&mut cache),
                )
            })
            .expect("decode"),
        );
    }
    assert_eq!(cache.lengths(), vec![t, t]);
    let inc = Tensor::cat(&parts, 1);
    let diff = max_abs_diff(&inc, &full);
    assert!(diff <= 1e-4, "incremental vs full: {diff}");
}

#[test]
fn ragged_batch_with_per_row_adapters() {
    let (dir, model) = load("qwen3");
    let ids = reference(&dir, "input_ids");
    let adapter =
        peft::load_adapter(&dir.join("peft_adapter"), &model.config, Device::Cpu).expect("adapter");
    let row0 = ids.narrow(0, 0, 1);
    let row1 = ids.narrow(0, 1, 1).narrow(1, 0, 9);
    let alone0 = tch::no_grad(|| {
        model.forward(
            &ForwardInput {
                adapters: Adapters::All(&adapter),
                ..ForwardInput::new(&row0)
            },
            None,
        )
    })
    .expect("row0");
    let alone1 = tch::no_grad(|| model.forward(&ForwardInput::new(&row1), None)).expect("row1");
    // Row 1 is left-padded by 4 tokens; row 0 uses the adapter, row 1 the base model.
    let pad = Tensor::zeros([1, 4], (Kind::Int64, Device::Cpu));
    let batch = Tensor::cat(
        &[
            row0.shallow_clone(),
            Tensor::cat(&[pad, row1.shallow_clone()], 1),
        ],
        0,
    );
    let valid = Tensor::ones([2, 13], (Kind::Bool, Device::Cpu));
    let _ = valid.narrow(1, 0, 4).get(1).fill_(0);
    let rows = [Some(&adapter), None];
    let mut cache = model.new_cache();
    let out = tch::no_grad(|| {
        model.forward(
            &ForwardInput {
                input_ids: &batch,
                valid: Some(&valid),
                adapters: Adapters::PerRow(&rows),
                train: false,
            },
            Some(&mut cache),
        )
    })
    .expect("batch");
    assert!(max_abs_diff(&out.get(0), &alone0.get(0)) <= 1e-4);
    assert!(max_abs_diff(&out.get(1).narrow(0, 4, 9), &alone1.get(0)) <= 1e-4);
    assert_eq!(cache.lengths(), vec![13, 9]);
}

#[test]
fn tokenizer_and_chat_template() {
    let dir = fixtures().join("llama_gqa");
    let tok = tailor_model::Tokenizer::from_dir(&dir).expect("tokenizer");
    let tmpl = tok
        .chat_template()
        .expect("template")
        .expect("has template");
    let text = tmpl
        .render(
            &[tailor_model::ChatMessage::new("user", "hello world")],
            true,
        )
        .expect("render");
    assert_eq!(
        text,
        "<|im_start|>user\nhello world<|im_end|>\n<|im_start|>assistant\n"
    );
    let ids = tok.encode(&text, false).expect("encode");
    assert_eq!(ids[0], tok.token_to_id("<|im_start|>").expect("special"));
    assert_eq!(tok.decode(&ids, false).expect("decode"), text);
    assert_eq!(tok.eos_token_id(), tok.token_to_id("<|im_end|>"));
}

#[test]
fn bad_checkpoints_give_clear_errors() {
    let src = fixtures().join("llama_gqa");
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::copy(src.join("config.json"), dir.path().join("config.json")).expect("copy");
    let err = CausalLm::load(dir.path(), Kind::Float, Device::Cpu).expect_err("no weights");
    assert!(matches!(err, ModelError::MissingCheckpoint { .. }), "{err}");
    let bytes = std::fs::read(src.join("model.safetensors")).expect("read");
    std::fs::write(
        dir.path().join("model.safetensors"),
        &bytes[..bytes.len() / 2],
    )
    .expect("write");
    let err = CausalLm::load(dir.path(), Kind::Float, Device::Cpu).expect_err("truncated");
    assert!(matches!(err, ModelError::CorruptCheckpoint { .. }), "{err}");
    std::fs::write(
        dir.path().join("model.safetensors"),
        b"\xff\xfe not a safetensors file",
    )
    .expect("write");
    let err = CausalLm::load(dir.path(), Kind::Float, Device::Cpu).expect_err("garbage");
    assert!(matches!(err, ModelError::CorruptCheckpoint { .. }), "{err}");
    // An adapter for another base model (other shapes) is refused with the tensor named.
    let other = fixtures().join("qwen3");
    let model = CausalLm::load(&src, Kind::Float, Device::Cpu).expect("load");
    let err = peft::load_adapter(&other.join("peft_adapter"), &model.config, Device::Cpu)
        .expect_err("shapes");
    assert!(
        matches!(err, ModelError::AdapterShapeMismatch { .. }),
        "{err}"
    );
    assert!(err.to_string().contains("different base model"));
}

/// Serving helpers: rows prefilled alone and joined with `KvCache::append_rows`, then decoded
/// together with `StackedAdapters`, equal each row decoded alone.
#[test]
fn appended_rows_with_stacked_adapters_equal_alone() {
    let (dir, model) = load("qwen3");
    let ids = reference(&dir, "input_ids");
    let adapter =
        peft::load_adapter(&dir.join("peft_adapter"), &model.config, Device::Cpu).expect("adapter");
    let prompts = [ids.narrow(0, 0, 1), ids.narrow(0, 1, 1).narrow(1, 0, 7)];
    let choice = [Some(&adapter), None];
    let step = Tensor::from_slice(&[5i64, 9]).view([2, 1]);
    let mut alone = Vec::new();
    let mut batch_cache = model.new_cache();
    for (i, p) in prompts.iter().enumerate() {
        let adapters = match choice[i] {
            Some(a) => Adapters::All(a),
            None => Adapters::None,
        };
        let mut cache = model.new_cache();
        let input = ForwardInput {
            adapters,
            ..ForwardInput::new(p)
        };
        let _ = tch::no_grad(|| model.forward(&input, Some(&mut cache))).expect("prefill");
        let mut joined = model.new_cache();
        let _ = tch::no_grad(|| model.forward(&input, Some(&mut joined))).expect("prefill");
        batch_cache.append_rows(joined).expect("append");
        let next = step.narrow(0, i as i64, 1);
        let input = ForwardInput {
            adapters,
            ..ForwardInput::new(&next)
        };
        alone.push(tch::no_grad(|| model.forward(&input, Some(&mut cache))).expect("decode"));
    }
    assert_eq!(batch_cache.lengths(), vec![13, 7]);
    let stacked = tailor_model::StackedAdapters::new(&choice, Device::Cpu).expect("stack");
    let out = tch::no_grad(|| {
        model.forward(
            &ForwardInput {
                adapters: Adapters::Stacked(&stacked),
                ..ForwardInput::new(&step)
            },
            Some(&mut batch_cache),
        )
    })
    .expect("batch decode");
    for (i, a) in alone.iter().enumerate() {
        assert!(
            max_abs_diff(&out.get(i as i64), &a.get(0)) <= 1e-4,
            "row {i}"
        );
    }
    batch_cache.select_rows(&[1]);
    batch_cache.trim();
    assert_eq!(batch_cache.columns(), 8);
}

#[test]
fn hidden_states_at_equals_gathered_full_pass() {
    let (dir, model) = load("qwen2");
    let ids = reference(&dir, "input_ids");
    let adapter =
        peft::load_adapter(&dir.join("peft_adapter"), &model.config, Device::Cpu).expect("adapter");
    let positions = Tensor::from_slice(&[0i64, 3, 12, 13, 20, 25]);
    let rows = [None, Some(&adapter)];
    for adapters in [
        Adapters::None,
        Adapters::All(&adapter),
        Adapters::PerRow(&rows),
    ] {
        let input = ForwardInput {
            adapters,
            ..ForwardInput::new(&ids)
        };
        let (full, at) = tch::no_grad(|| {
            let full = model.hidden_states(&input, None).expect("full");
            (
                full.view([-1, 64]).index_select(0, &positions),
                model.hidden_states_at(&input, &positions).expect("at"),
            )
        });
        assert!(max_abs_diff(&full, &at) <= 1e-5);
    }
}

#[test]
fn packed_sequences_equal_the_padded_batch() {
    let (dir, model) = load("llama_gqa");
    let ids = reference(&dir, "input_ids");
    let adapter =
        peft::load_adapter(&dir.join("peft_adapter"), &model.config, Device::Cpu).expect("adapter");
    let (l0, l1) = (13i64, 8i64);
    let packed = Tensor::cat(&[ids.get(0), ids.get(1).narrow(0, 0, l1)], 0);
    // Packed index of row 0 position 5 and 12, row 1 positions 0 and 7.
    let keep = Tensor::from_slice(&[5i64, 12, l0, l0 + 7]);
    let padded_keep = Tensor::from_slice(&[5i64, 12, 13, 13 + 7]);
    let adapters = Adapters::All(&adapter);
    let (a, b) = tch::no_grad(|| {
        let a = model
            .hidden_states_packed(&packed, &[l0, l1], &adapters, false, &keep)
            .expect("packed");
        let input = ForwardInput {
            adapters,
            ..ForwardInput::new(&ids)
        };
        (
            a,
            model
                .hidden_states_at(&input, &padded_keep)
                .expect("padded"),
        )
    });
    assert!(max_abs_diff(&a, &b) <= 1e-5);
    let err = model.hidden_states_packed(&packed, &[l0, l1 + 1], &adapters, false, &keep);
    assert!(matches!(err, Err(ModelError::InvalidInput(_))));
}

/// Continuous batching over many decode steps (the KV buffers grow several times): rows join at
/// different steps (ragged, padded cache), one leaves (rows selected, cache trimmed), and every
/// row's logits at every step equal that row decoded alone, which in turn equal a full forward
/// pass over the row's whole sequence.
#[test]
fn continuous_batch_over_many_steps_equals_each_row_alone() {
    for name in ["llama_gqa", "qwen3"] {
        let (dir, model) = load(name);
        let ids = reference(&dir, "input_ids");
        let adapter = peft::load_adapter(&dir.join("peft_adapter"), &model.config, Device::Cpu)
            .expect("adapter");
        let vocab = model.config.vocab_size;
        let prompts = [
            ids.narrow(0, 0, 1),
            ids.narrow(0, 1, 1).narrow(1, 0, 7),
            ids.narrow(0, 0, 1).narrow(1, 2, 3),
        ];
        let choice = [Some(&adapter), None, Some(&adapter)];
        let (joins, leaves, steps) = ([0usize, 10, 20], [50usize, 90, 90], 90usize);
        let token = |step: usize, row: usize| ((step * 7 + row * 3) as i64) % vocab;
        let mut alone: Vec<Option<tailor_model::KvCache>> = vec![None, None, None];
        let mut alone_logits: Vec<Vec<Tensor>> = vec![Vec::new(), Vec::new(), Vec::new()];
        let mut fed: Vec<Vec<i64>> = prompts
            .iter()
            .map(|p| Vec::<i64>::try_from(p.reshape([-1])).expect("ids"))
            .collect();
        let mut batch = model.new_cache();
        let mut active: Vec<usize> = Vec::new();
        let single = |r: usize| match choice[r] {
            Some(a) => Adapters::All(a),
            None => Adapters::None,
        };
        tch::no_grad(|| {
            for step in 0..steps {
                for r in 0..3 {
                    if joins[r] == step {
                        let input = ForwardInput {
                            adapters: single(r),
                            ..ForwardInput::new(&prompts[r])
                        };
                        let mut own = model.new_cache();
                        let _ = model.forward(&input, Some(&mut own)).expect("prefill");
                        alone[r] = Some(own);
                        let mut joined = model.new_cache();
                        let _ = model.forward(&input, Some(&mut joined)).expect("prefill");
                        batch.append_rows(joined).expect("append");
                        active.push(r);
                    }
                }
                let keep: Vec<i64> = (0..active.len())
                    .filter(|&j| leaves[active[j]] > step)
                    .map(|j| j as i64)
                    .collect();
                if keep.len() != active.len() {
                    batch.select_rows(&keep);
                    batch.trim();
                    active = keep.iter().map(|&j| active[j as usize]).collect();
                }
                let toks: Vec<i64> = active.iter().map(|&r| token(step, r)).collect();
                let rows: Vec<Option<&LoraAdapter>> = active.iter().map(|&r| choice[r]).collect();
                let stacked =
                    tailor_model::StackedAdapters::new(&rows, Device::Cpu).expect("stack");
                let step_ids = Tensor::from_slice(&toks).view([-1, 1]);
                let out = model
                    .forward(
                        &ForwardInput {
                            adapters: Adapters::Stacked(&stacked),
                            ..ForwardInput::new(&step_ids)
                        },
                        Some(&mut batch),
                    )
                    .expect("batch decode");
                for (j, &r) in active.iter().enumerate() {
                    let one = Tensor::from_slice(&[toks[j]]).view([1, 1]);
                    let input = ForwardInput {
                        adapters: single(r),
                        ..ForwardInput::new(&one)
                    };
                    let cache = alone[r].as_mut().expect("joined");
                    let own = model.forward(&input, Some(cache)).expect("alone decode");
                    let diff = max_abs_diff(&out.get(j as i64), &own.get(0));
                    assert!(diff <= 1e-4, "{name}: row {r} at step {step}: {diff}");
                    alone_logits[r].push(own);
                    fed[r].push(toks[j]);
                }
            }
            for r in 0..3 {
                let all = Tensor::from_slice(&fed[r]).view([1, -1]);
                let full = model
                    .forward(
                        &ForwardInput {
                            adapters: single(r),
                            ..ForwardInput::new(&all)
                        },
                        None,
                    )
                    .expect("full");
                let n = alone_logits[r].len() as i64;
                let t = fed[r].len() as i64;
                let inc = Tensor::cat(&alone_logits[r], 1);
                let diff = max_abs_diff(&inc, &full.narrow(1, t - n, n));
                assert!(diff <= 1e-4, "{name}: row {r} incremental vs full: {diff}");
                let lens = alone[r].as_ref().expect("cache").lengths();
                assert_eq!(lens, vec![t]);
            }
        });
        assert!(batch.columns() <= 13 + steps as i64);
    }
}

/// The chunked LM-head loss and its hand-formed gradient equal autograd through the full
/// logits (more rows than one chunk, so chunking is exercised with a short last chunk).
#[test]
fn head_cross_entropy_equals_autograd() {
    let (_, model) = load("llama_gqa");
    tch::manual_seed(7);
    let (vocab, hidden) = (model.config.vocab_size, model.config.hidden_size);
    let rows = (1i64 << 22) / vocab + 37;
    let h = Tensor::randn([rows, hidden], (Kind::Float, Device::Cpu));
    let targets = Tensor::randint(vocab, [rows], (Kind::Int64, Device::Cpu));
    let leaf = h.detach().set_requires_grad(true);
    let expect = model.logits(&leaf).cross_entropy_loss::<Tensor>(
        &targets,
        None,
        tch::Reduction::Sum,
        -100,
        0.0,
    );
    expect.backward();
    let (loss, grad) = tch::no_grad(|| model.head_cross_entropy(&h, &targets, true)).expect("loss");
    let want = expect.double_value(&[]);
    assert!((loss - want).abs() <= 1e-4 * want.abs(), "{loss} vs {want}");
    let grad = grad.expect("grad");
    let diff = max_abs_diff(&grad, &leaf.grad());
    assert!(diff <= 1e-5, "gradient differs by {diff}");
    let (eval, none) =
        tch::no_grad(|| model.head_cross_entropy(&h, &targets, false)).expect("eval");
    assert!(none.is_none());
    assert_eq!(eval, loss);
}
