//! `tailor-trainer train`: LoRA fine-tuning of a Hugging Face base model.
//!
//! One optimizer step = `gradAccum` micro-batches of `batchSize` examples. Its loss is the mean
//! token cross-entropy over every counted token of the step (see `examples` for which tokens
//! count): each micro-batch contributes `sum(CE) / counted_tokens_of_the_step`, so the gradient is
//! that of the token mean over the whole accumulated batch. Then gradients are clipped to
//! `maxGradNorm`, AdamW updates, and the learning-rate schedule advances.
//!
//! Data order is a seeded shuffle per epoch, so a step number fixes exactly which examples it
//! sees; that, the saved optimizer state and a per-step dropout seed make a resumed run equal an
//! uninterrupted one.

use std::path::Path;
use std::time::Instant;

use anyhow::{Context, bail};
use tailor_dist::ProcessGroup;
use tailor_model::profile;
use tailor_model::{
    Adapters, CausalLm, Checkpointing, LoraAdapter, LoraConfig, PackedBatch, TargetModule,
    Tokenizer, peft,
};
use tch::{Device, Kind, Tensor};

use crate::data_parallel::{all_reduce_grads, start_from_leader};
use crate::examples::{Example, Sample, tokenize};
use crate::optim::{AdamW, Flat, lr_factor, warmup_steps};
use crate::profiling::{StepProfile, matmul_parameters, peak_tflops};
use crate::progress::ProgressHandle;
use crate::run_state::{self, RunState};
pub use tailor_wire::train::{Outcome, Phase, StepRecord, Summary, TrainConfig};

/// Reads a prepared JSONL file; any bad line is an error naming file and line.
pub(crate) fn load_examples(path: &Path) -> anyhow::Result<Vec<Example>> {
    let bytes = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
    let mut out = Vec::new();
    for (i, raw) in bytes.split(|&b| b == b'\n').enumerate() {
        if raw.iter().all(u8::is_ascii_whitespace) {
            continue;
        }
        let line = std::str::from_utf8(raw)
            .map_err(|_| anyhow::anyhow!("{}:{}: not valid UTF-8", path.display(), i + 1))?;
        let ex = Example::parse_any(line)
            .map_err(|e| anyhow::anyhow!("{}:{}: {e}", path.display(), i + 1))?;
        out.push(ex);
    }
    Ok(out)
}

pub(crate) fn tokenize_all(
    examples: &[Example],
    tok: &Tokenizer,
    template: Option<&tailor_model::ChatTemplate>,
    max_len: usize,
    path: &Path,
) -> anyhow::Result<(Vec<Sample>, usize)> {
    let mut out = Vec::with_capacity(examples.len());
    let mut skipped = 0;
    for (i, e) in examples.iter().enumerate() {
        let s = tokenize(e, tok, template, max_len)
            .map_err(|err| anyhow::anyhow!("{}: example {}: {err}", path.display(), i + 1))?;
        if s.target_count() == 0 {
            skipped += 1;
        } else {
            out.push(s);
        }
    }
    Ok((out, skipped))
}

/// CPU seconds (user + system, all threads) this process has used, from `/proc/self/stat`
/// (whose unit, USER_HZ, is 100 on Linux); 0 where that file does not exist.
fn process_cpu_seconds() -> f64 {
    let Ok(stat) = std::fs::read_to_string("/proc/self/stat") else {
        return 0.0;
    };
    // Fields after the parenthesised command name; utime and stime are fields 14 and 15.
    let Some((_, rest)) = stat.rsplit_once(')') else {
        return 0.0;
    };
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks = |i: usize| f.get(i).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0);
    (ticks(11) + ticks(12)) / 100.0
}

/// SplitMix64: a tiny, fully specified PRNG so the data order never depends on a library version.
struct SplitMix(u64);
impl SplitMix {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
}

fn epoch_order(n: usize, seed: u64, epoch: usize) -> Vec<usize> {
    let mut rng = SplitMix(seed ^ (epoch as u64).wrapping_mul(0xA076_1D64_78BD_642F));
    let mut idx: Vec<usize> = (0..n).collect();
    for i in (1..n).rev() {
        let j = (rng.next() % (i as u64 + 1)) as usize;
        idx.swap(i, j);
    }
    idx
}

/// A micro-batch packed without padding: the sequences back to back, and the packed indices
/// whose next token counts.
pub(crate) struct Batch {
    input_ids: Tensor,
    lengths: Vec<i64>,
    positions: Tensor,
    targets: Tensor,
    counted: usize,
    /// The same batch right-padded, in `transformers`' label convention (for `--dump-batches`).
    pub(crate) dump: Option<serde_json::Value>,
}

pub(crate) fn make_batch(samples: &[&Sample], pad: i64, device: Device, dump: bool) -> Batch {
    let mut ids = Vec::new();
    let mut lengths = Vec::with_capacity(samples.len());
    let mut positions = Vec::new();
    let mut targets = Vec::new();
    for s in samples {
        let offset = ids.len();
        ids.extend_from_slice(&s.ids);
        lengths.push(s.ids.len() as i64);
        for (p, (&id, &counted)) in s.ids.iter().zip(&s.counted).enumerate().skip(1) {
            if counted {
                positions.push((offset + p - 1) as i64);
                targets.push(id);
            }
        }
    }
    let dump = dump.then(|| {
        let t = samples.iter().map(|s| s.ids.len()).max().unwrap_or(1);
        let rows: Vec<Vec<i64>> = samples
            .iter()
            .map(|s| {
                let mut r = s.ids.clone();
                r.resize(t, pad);
                r
            })
            .collect();
        let labels: Vec<Vec<i64>> = samples
            .iter()
            .map(|s| {
                let mut l: Vec<i64> = s
                    .ids
                    .iter()
                    .zip(&s.counted)
                    .enumerate()
                    .map(|(p, (&id, &c))| if c && p > 0 { id } else { -100 })
                    .collect();
                l.resize(t, -100);
                l
            })
            .collect();
        serde_json::json!({"input_ids": rows, "labels": labels, "tokens": ids.len()})
    });
    Batch {
        input_ids: to_device(&ids, device),
        lengths,
        counted: targets.len(),
        positions: to_device(&positions, device),
        targets: to_device(&targets, device),
        dump,
    }
}

/// A host vector on `device`: on a GPU through pinned memory, so the copy is asynchronous and
/// does not stall the host on the kernels already queued.
fn to_device(values: &[i64], device: Device) -> Tensor {
    let t = Tensor::from_slice(values);
    if device.is_cuda() {
        t.pin_memory(device)
            .to_device_(device, Kind::Int64, true, false)
    } else {
        t
    }
}

/// Summed token cross-entropy of a micro-batch (logits only where a token counts). With
/// `backward = (scale, checkpointing)` and an adapter, also accumulates the gradient of
/// `scale * loss` into the adapter's tensors (`CausalLm::packed_loss_backward`: the frozen LM
/// head's part formed chunk by chunk without autograd, then backpropagated through the layers,
/// with gradient checkpointing when asked).
fn batch_loss_sum(
    model: &CausalLm,
    adapter: Option<&LoraAdapter>,
    batch: &Batch,
    train: bool,
    backward: Option<(f64, bool)>,
) -> anyhow::Result<f64> {
    if let (Some(adapter), Some((scale, checkpointing))) = (adapter, backward) {
        let packed = PackedBatch {
            input_ids: &batch.input_ids,
            lengths: &batch.lengths,
            keep: &batch.positions,
            targets: &batch.targets,
        };
        let checkpointing = if checkpointing {
            Checkpointing::Layers
        } else {
            Checkpointing::Off
        };
        return Ok(model.packed_loss_backward(&packed, adapter, scale, checkpointing)?);
    }
    let adapters = adapter.map_or(Adapters::None, Adapters::All);
    let h = model.hidden_states_packed(
        &batch.input_ids,
        &batch.lengths,
        &adapters,
        train,
        &batch.positions,
    )?;
    let (loss, _) = tch::no_grad(|| model.head_cross_entropy(&h, &batch.targets, false))?;
    Ok(loss)
}

pub(crate) fn eval_loss(
    model: &CausalLm,
    adapter: Option<&LoraAdapter>,
    samples: &[Sample],
    batch_size: usize,
    pad: i64,
) -> anyhow::Result<Option<f64>> {
    if samples.is_empty() {
        return Ok(None);
    }
    let mut sum = 0.0;
    let mut n = 0usize;
    for chunk in samples.chunks(batch_size.max(1)) {
        let refs: Vec<&Sample> = chunk.iter().collect();
        let b = make_batch(&refs, pad, model.device(), false);
        sum += tch::no_grad(|| batch_loss_sum(model, adapter, &b, false, None))?;
        n += b.counted;
    }
    Ok(Some(sum / n.max(1) as f64))
}

/// The padding token: the tokenizer's pad token, else its end-of-sequence token, else 0.
pub(crate) fn pad_id(tokenizer: &Tokenizer) -> i64 {
    tokenizer
        .pad_token
        .as_deref()
        .and_then(|t| tokenizer.token_to_id(t))
        .or_else(|| tokenizer.eos_token_id())
        .map_or(0, i64::from)
}

pub(crate) fn choose_device(name: &str) -> anyhow::Result<Device> {
    Ok(tailor_model::parse_device(name)?)
}

fn validate(cfg: &TrainConfig) -> anyhow::Result<()> {
    let positive = [
        ("epochs", cfg.epochs),
        ("batchSize", cfg.batch_size),
        ("gradAccum", cfg.grad_accum),
        ("maxSeqLength", cfg.max_seq_length),
    ];
    for (name, v) in positive {
        if v == 0 {
            bail!("{name} must be at least 1");
        }
    }
    if cfg.max_seq_length < 2 {
        bail!("maxSeqLength must be at least 2");
    }
    if !(cfg.learning_rate > 0.0 && cfg.learning_rate.is_finite()) {
        bail!(
            "learningRate must be a positive number, got {}",
            cfg.learning_rate
        );
    }
    if !(0.0..1.0).contains(&cfg.warmup_ratio) {
        bail!("warmupRatio must be in [0, 1), got {}", cfg.warmup_ratio);
    }
    Ok(())
}

/// Trains; `on_checkpoint` is called with each checkpoint directory once it is written.
/// With a `group`, this process is one rank of a data-parallel run (see `data_parallel`): only
/// rank 0 reads checkpoints, evaluates and writes anything to the output.
pub fn run(
    cfg: &TrainConfig,
    progress: &ProgressHandle,
    on_checkpoint: &dyn Fn(&Path) -> anyhow::Result<()>,
    group: Option<&ProcessGroup>,
) -> anyhow::Result<Summary> {
    let started = Instant::now();
    let (rank, world) = group.map_or((0, 1), |g| (g.rank(), g.size()));
    let leader = rank == 0;
    if world > 1 && cfg.dump_batches.is_some() {
        bail!("dumpBatches is for single-process runs, this one has {world} ranks");
    }
    let base_name = cfg
        .base_model_name
        .clone()
        .unwrap_or_else(|| cfg.base_model.display().to_string());
    validate(cfg)?;
    if let Some(n) = cfg.threads {
        tch::set_num_threads(n);
    }
    let device = choose_device(&cfg.device)?;
    let kind = if device.is_cuda() {
        Kind::BFloat16
    } else {
        Kind::Float
    };
    progress.update(|p| p.phase = Phase::Loading);
    let model = CausalLm::load(&cfg.base_model, kind, device)
        .with_context(|| format!("loading base model {}", cfg.base_model.display()))?;
    let tokenizer = Tokenizer::from_dir(&cfg.base_model)
        .with_context(|| format!("loading tokenizer of {}", cfg.base_model.display()))?;
    let template = tokenizer.chat_template()?;
    let lora_config = LoraConfig {
        r: cfg.rank,
        alpha: cfg.alpha,
        dropout: cfg.dropout,
        target_modules: TargetModule::resolve(&cfg.target_modules, &model.config)?,
        use_rslora: false,
    };
    lora_config.validate()?;

    let train_examples = load_examples(&cfg.train)?;
    let (train, skipped) = tokenize_all(
        &train_examples,
        &tokenizer,
        template.as_ref(),
        cfg.max_seq_length,
        &cfg.train,
    )?;
    if train.is_empty() {
        bail!(
            "{}: no training examples with tokens to learn from ({} lines, {} left without counted tokens after truncation to {} tokens)",
            cfg.train.display(),
            train_examples.len(),
            skipped,
            cfg.max_seq_length
        );
    }
    let validation = match &cfg.validation {
        Some(p) => {
            tokenize_all(
                &load_examples(p)?,
                &tokenizer,
                template.as_ref(),
                cfg.max_seq_length,
                p,
            )?
            .0
        }
        None => Vec::new(),
    };
    let pad = pad_id(&tokenizer);

    // A micro-batch is `batchSize` examples per rank.
    let global_batch = cfg.batch_size * world;
    let micro_per_epoch = train.len().div_ceil(global_batch);
    let steps_per_epoch = micro_per_epoch.div_ceil(cfg.grad_accum);
    let total_steps = steps_per_epoch * cfg.epochs;
    let warmup = warmup_steps(total_steps, cfg.warmup_ratio);
    let last_step = cfg.max_steps.map_or(total_steps, |m| m.min(total_steps));

    // Resume, or start from the given/fresh adapter.
    let ckpt_dir = cfg.output.join("checkpoints");
    let resumed = if leader {
        run_state::latest(&ckpt_dir)?
    } else {
        None
    };
    let (adapter, mut optim, mut state) = match &resumed {
        Some(dir) => {
            let (adapter, optim, state) =
                run_state::load(dir, &model.config, device, cfg.weight_decay)
                    .with_context(|| format!("resuming from {}", dir.display()))?;
            if adapter.config.target_modules != lora_config.target_modules
                || adapter.config.r != lora_config.r
            {
                bail!(
                    "checkpoint {} was written with another rank or target modules than this run asks for",
                    dir.display()
                );
            }
            tracing::info!(step = state.step, checkpoint = %dir.display(), "resuming");
            (adapter, optim, state)
        }
        None => {
            let mut adapter = match &cfg.init_adapter {
                Some(dir) => {
                    let a = peft::load_adapter(dir, &model.config, device)
                        .with_context(|| format!("loading initial adapter {}", dir.display()))?;
                    if a.config.target_modules != lora_config.target_modules
                        || a.config.r != lora_config.r
                    {
                        bail!(
                            "initial adapter {} has rank {} and targets {:?}, the run asks for rank {} and {:?}",
                            dir.display(),
                            a.config.r,
                            a.config.target_modules,
                            lora_config.r,
                            lora_config.target_modules
                        );
                    }
                    LoraAdapter::from_pairs(
                        &model.config,
                        lora_config.clone(),
                        a.pairs()
                            .map(|(l, m, p)| (l, m, p.a.copy(), p.b.copy()))
                            .collect(),
                    )?
                }
                None => {
                    tch::manual_seed(cfg.seed as i64);
                    LoraAdapter::init(&model.config, lora_config.clone(), device)?
                }
            };
            adapter.set_requires_grad(true);
            let optim = AdamW::new(&adapter.parameters(), cfg.weight_decay);
            progress.update(|p| p.phase = Phase::BaseValidation);
            let base = if leader {
                eval_loss(&model, None, &validation, cfg.batch_size, pad)?
            } else {
                None
            };
            (adapter, optim, RunState::new(base))
        }
    };
    // From here on the adapter, its gradients and the moments live in flat buffers.
    let (adapter, flat) = Flat::new(&adapter, &model.config, &mut optim)?;
    let mut resumed_from = resumed.as_ref().map(|_| state.step);
    if let Some(g) = group {
        if start_from_leader(g, &flat, &mut optim, &mut state, resumed.is_some())? {
            resumed_from = Some(state.step);
        }
        tracing::info!(
            rank,
            world,
            step = state.step,
            "joined the data-parallel group"
        );
    }
    // Wall time of earlier attempts (a resumed run's metrics cover the whole job).
    let wall_before = state.wall_seconds;
    progress.update(|p| {
        p.phase = Phase::Running;
        p.total_steps = total_steps as u64;
        p.step = state.step as u64;
        p.base_validation_loss = state.base_validation_loss;
    });

    let mut dump_steps = Vec::new();
    let loop_start = Instant::now();
    let loop_cpu_start = process_cpu_seconds();
    let mut loop_tokens = 0u64;
    let mut order_epoch = usize::MAX;
    let mut order = Vec::new();
    let mut last_ckpt_step = state.step;
    let mut step_profile = StepProfile::default();
    if profile::enabled() {
        crate::profiling::count_ops()?;
    }
    while state.step < last_step {
        let step = state.step;
        profile::start(device);
        let epoch = step / steps_per_epoch;
        if epoch != order_epoch {
            order = epoch_order(train.len(), cfg.seed, epoch);
            order_epoch = epoch;
        }
        let first_micro = (step % steps_per_epoch) * cfg.grad_accum;
        let micro_end = (first_micro + cfg.grad_accum).min(micro_per_epoch);
        // The step's examples over all ranks, and this rank's slice of each micro-batch.
        let global = |m: usize| {
            let start = m * global_batch;
            start..(start + global_batch).min(train.len())
        };
        let step_samples = || {
            (first_micro..micro_end)
                .flat_map(global)
                .map(|i| &train[order[i]])
        };
        let counted: usize = step_samples().map(Sample::target_count).sum();
        let tokens: usize = step_samples().map(|s| s.ids.len()).sum();
        let batches: Vec<Batch> = (first_micro..micro_end)
            .filter_map(|m| {
                let all = global(m);
                let start = (all.start + rank * cfg.batch_size).min(all.end);
                let end = (start + cfg.batch_size).min(all.end);
                let refs: Vec<&Sample> = order[start..end].iter().map(|&i| &train[i]).collect();
                (!refs.is_empty())
                    .then(|| make_batch(&refs, pad, device, cfg.dump_batches.is_some()))
            })
            .collect();
        profile::phase("data");
        // Ranks draw their own dropout masks (rank 0's are a single process's).
        tch::manual_seed(
            (cfg.seed
                ^ (step as u64).wrapping_mul(0x9E37_79B9)
                ^ (rank as u64).wrapping_mul(0xD1B5_4A32_D192_ED03)) as i64,
        );
        let mut loss_sum = 0.0;
        for b in &batches {
            loss_sum += batch_loss_sum(
                &model,
                Some(&adapter),
                b,
                true,
                Some((1.0 / counted as f64, cfg.gradient_checkpointing)),
            )?;
        }
        if let Some(g) = group {
            loss_sum = all_reduce_grads(g, &flat, loss_sum)?;
            profile::phase("all-reduce");
        }
        flat.clip_grad_norm(cfg.max_grad_norm);
        profile::phase("clip");
        let lr = cfg.learning_rate * lr_factor(cfg.scheduler, step, total_steps, warmup);
        flat.update(&mut optim, lr);
        flat.zero_grad();
        profile::phase("optimizer");
        step_profile.record(profile::take(), tokens);
        let loss = loss_sum / counted.max(1) as f64;
        if !loss.is_finite() {
            bail!("training diverged: loss is {loss} at step {}", step + 1);
        }
        loop_tokens += tokens as u64;
        state.tokens += tokens as u64;
        state.step += 1;
        state.epoch = epoch;
        state.micro_batch = micro_end % micro_per_epoch;
        state.history.push(StepRecord {
            step: state.step as u64,
            loss,
            lr,
        });
        if cfg.dump_batches.is_some() {
            dump_steps.push(serde_json::Value::Array(
                batches.iter().filter_map(|b| b.dump.clone()).collect(),
            ));
        }
        let elapsed = loop_start.elapsed().as_secs_f64().max(1e-9);
        let tps = loop_tokens as f64 / elapsed;
        let secs_per_step = elapsed / (state.step - resumed_from.unwrap_or(0)).max(1) as f64;
        progress.add_tokens(tokens as u64);
        progress.update(|p| {
            p.step = state.step as u64;
            p.epoch = epoch as u64;
            p.train_loss = Some(loss);
            p.tokens_per_second = tps;
            p.eta = Some(secs_per_step * (last_step - state.step) as f64);
        });
        tracing::info!(
            step = state.step,
            total_steps,
            loss,
            lr,
            tokens_per_second = tps,
            "step"
        );
        if leader
            && cfg.checkpoint_every > 0
            && state.step % cfg.checkpoint_every == 0
            && state.step < last_step
        {
            state.wall_seconds = wall_before + started.elapsed().as_secs_f64();
            let dir = run_state::save(&ckpt_dir, &adapter, &optim, &state, &base_name)?;
            on_checkpoint(&dir)?;
            last_ckpt_step = state.step;
            // Periodic validation, so /progress shows it while the run goes on.
            if !validation.is_empty() {
                let v = eval_loss(&model, Some(&adapter), &validation, cfg.batch_size, pad)?;
                tracing::info!(step = state.step, validation_loss = v, "validation");
                progress.update(|p| p.validation_loss = v);
            }
        }
    }
    progress.update(|p| p.phase = Phase::Validation);
    let validation_loss = if leader {
        eval_loss(&model, Some(&adapter), &validation, cfg.batch_size, pad)?
    } else {
        None
    };
    state.wall_seconds = wall_before + started.elapsed().as_secs_f64();
    if !leader {
        // The group's outcome is rank 0's to record.
        return Ok(Summary {
            status: Outcome::Succeeded,
            message: None,
            base_validation_loss: None,
            validation_loss: None,
            train_loss: state.history.last().map(|h| h.loss),
            steps: state.step as u64,
            total_steps: total_steps as u64,
            epochs: cfg.epochs as u64,
            tokens: state.tokens,
            tokens_per_second: loop_tokens as f64 / loop_start.elapsed().as_secs_f64().max(1e-9),
            train_cpu_seconds: process_cpu_seconds() - loop_cpu_start,
            wall_seconds: state.wall_seconds,
            train_examples: train.len() as u64,
            skipped_examples: skipped as u64,
            resumed_from_step: resumed_from.map(|s| s as u64),
            adapter: String::new(),
            history: state.history.clone(),
            truncated: false,
        });
    }
    if last_ckpt_step != state.step {
        let dir = run_state::save(&ckpt_dir, &adapter, &optim, &state, &base_name)?;
        on_checkpoint(&dir)?;
    }
    peft::save_adapter(&adapter, &cfg.output, &base_name)?;
    if let Some(report) = profile::enabled()
        .then(|| step_profile.report(matmul_parameters(&model.config), peak_tflops()))
        .flatten()
    {
        tracing::info!(profile = %report, "step profile");
        std::fs::write(
            cfg.output.join("profile.json"),
            serde_json::to_vec_pretty(&report)?,
        )
        .with_context(|| format!("writing {}", cfg.output.join("profile.json").display()))?;
    }
    if let Some(path) = &cfg.dump_batches {
        let dump = serde_json::json!({
            "hyperparameters": {
                "learningRate": cfg.learning_rate,
                "weightDecay": cfg.weight_decay,
                "scheduler": cfg.scheduler,
                "maxGradNorm": cfg.max_grad_norm,
            },
            "totalSteps": total_steps,
            "warmupSteps": warmup,
            "steps": dump_steps,
        });
        std::fs::write(path, serde_json::to_vec(&dump)?)
            .with_context(|| format!("writing {}", path.display()))?;
    }
    let elapsed = loop_start.elapsed().as_secs_f64();
    let train_cpu_seconds = process_cpu_seconds() - loop_cpu_start;
    let summary = Summary {
        status: Outcome::Succeeded,
        message: None,
        base_validation_loss: state.base_validation_loss,
        validation_loss,
        train_loss: state.history.last().map(|h| h.loss),
        steps: state.step as u64,
        total_steps: total_steps as u64,
        epochs: cfg.epochs as u64,
        tokens: state.tokens,
        tokens_per_second: if elapsed > 0.0 {
            loop_tokens as f64 / elapsed
        } else {
            0.0
        },
        train_cpu_seconds,
        wall_seconds: wall_before + started.elapsed().as_secs_f64(),
        train_examples: train.len() as u64,
        skipped_examples: skipped as u64,
        resumed_from_step: resumed_from.map(|s| s as u64),
        adapter: cfg.output.display().to_string(),
        history: state.history.clone(),
        truncated: false,
    };
    std::fs::write(
        cfg.output.join("metrics.json"),
        serde_json::to_vec_pretty(&summary)?,
    )
    .with_context(|| format!("writing {}", cfg.output.join("metrics.json").display()))?;
    progress.update(|p| {
        p.phase = Phase::Succeeded;
        p.validation_loss = validation_loss;
        p.eta = Some(0.0);
    });
    Ok(summary)
}

#[cfg(test)]
mod tests;
