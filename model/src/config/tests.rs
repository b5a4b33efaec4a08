use super::*;

fn parse(json: &str) -> Result<ModelConfig> {
    serde_json::from_str::<HfConfig>(json)
        .map_err(|e| ModelError::InvalidConfig(e.to_string()))?
        .normalize()
}

const BASE: &str = r#""hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2,
    "num_attention_heads": 4, "vocab_size": 100"#;

#[test]
fn llama_defaults_and_gqa() -> Result<()> {
    let c = parse(&format!(
        r#"{{"architectures": ["LlamaForCausalLM"], {BASE}, "num_key_value_heads": 2, "rms_norm_eps": 1e-5}}"#
    ))?;
    assert_eq!(c.family, Family::Llama);
    assert_eq!((c.num_key_value_heads, c.head_dim), (2, 16));
    assert_eq!(c.rope.theta, 10_000.0);
    assert_eq!(c.rope.rotary_dim, 16);
    assert!(!c.qkv_bias && !c.qk_norm && !c.tie_word_embeddings && !c.sandwich_norms);
    assert_eq!(c.layer_types, vec![LayerType::Full; 2]);
    assert_eq!(
        (c.activation, c.norm_style),
        (Activation::Silu, NormStyle::Scale)
    );
    Ok(())
}

#[test]
fn llama3_rope_scaling_both_spellings() -> Result<()> {
    let old = parse(&format!(
        r#"{{"architectures": ["LlamaForCausalLM"], {BASE}, "rope_theta": 500000.0,
          "rope_scaling": {{"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0,
          "high_freq_factor": 4.0, "original_max_position_embeddings": 8192}}}}"#
    ))?;
    let new = parse(&format!(
        r#"{{"architectures": ["LlamaForCausalLM"], {BASE},
          "rope_parameters": {{"rope_type": "llama3", "rope_theta": 500000.0, "factor": 8.0,
          "low_freq_factor": 1.0, "high_freq_factor": 4.0, "original_max_position_embeddings": 8192}}}}"#
    ))?;
    assert_eq!(old, new);
    assert_eq!(old.rope.theta, 500_000.0);
    assert!(matches!(old.rope.scaling, RopeScaling::Llama3 { factor, .. } if factor == 8.0));
    Ok(())
}

#[test]
fn rope_types_linear_dynamic_yarn() -> Result<()> {
    let with = |scaling: &str| {
        parse(&format!(
            r#"{{"architectures": ["LlamaForCausalLM"], {BASE}, "max_position_embeddings": 64, "rope_scaling": {scaling}}}"#
        ))
    };
    let lin = with(r#"{"type": "linear", "factor": 2.0}"#)?;
    assert_eq!(lin.rope.scaling, RopeScaling::Linear { factor: 2.0 });
    let dynamic = with(r#"{"rope_type": "dynamic", "factor": 4.0}"#)?;
    assert_eq!(
        dynamic.rope.scaling,
        RopeScaling::Dynamic {
            factor: 4.0,
            max_position_embeddings: 64
        }
    );
    let yarn =
        with(r#"{"rope_type": "yarn", "factor": 4.0, "original_max_position_embeddings": 16}"#)?;
    match yarn.rope.scaling {
        RopeScaling::Yarn {
            attention_factor,
            beta_fast,
            truncate,
            ..
        } => {
            assert!((attention_factor - (0.1 * 4f64.ln() + 1.0)).abs() < 1e-12);
            assert_eq!((beta_fast, truncate), (32.0, true));
        }
        other => panic!("expected yarn, got {other:?}"),
    }
    Ok(())
}

#[test]
fn unknown_rope_type_is_named() {
    let err = parse(&format!(
        r#"{{"architectures": ["LlamaForCausalLM"], {BASE}, "rope_scaling": {{"rope_type": "mrope", "factor": 2}}}}"#
    ))
    .expect_err("mrope");
    let msg = err.to_string();
    assert!(
        msg.contains("\"mrope\"") && msg.contains("longrope"),
        "{msg}"
    );
}

#[test]
fn quantized_checkpoints_are_refused_by_method() {
    let err = parse(&format!(
        r#"{{"architectures": ["LlamaForCausalLM"], {BASE}, "quantization_config": {{"quant_method": "awq", "bits": 4}}}}"#
    ))
    .expect_err("awq");
    let msg = err.to_string();
    assert!(
        msg.contains("quantization_config") && msg.contains("\"awq\""),
        "{msg}"
    );
}

#[test]
fn qwen_variants() -> Result<()> {
    let q2 = parse(&format!(
        r#"{{"architectures": ["Qwen2ForCausalLM"], {BASE}, "tie_word_embeddings": true,
          "sliding_window": 32768, "use_sliding_window": false}}"#
    ))?;
    assert!(q2.qkv_bias && !q2.o_bias && q2.tie_word_embeddings && !q2.qk_norm);
    assert_eq!(q2.sliding_window, None);
    let q3 = parse(&format!(
        r#"{{"architectures": ["Qwen3ForCausalLM"], {BASE}, "head_dim": 32,
          "use_sliding_window": true, "sliding_window": 8, "max_window_layers": 1}}"#
    ))?;
    assert!(q3.qk_norm && !q3.qkv_bias);
    assert_eq!(q3.head_dim, 32);
    assert_eq!(q3.layer_types, vec![LayerType::Full, LayerType::Sliding]);
    assert_eq!((q3.window_of(0), q3.window_of(1)), (None, Some(8)));
    Ok(())
}

#[test]
fn mistral_window_applies_to_every_layer() -> Result<()> {
    let m = parse(&format!(
        r#"{{"architectures": ["MistralForCausalLM"], {BASE}, "sliding_window": 4096}}"#
    ))?;
    assert_eq!(m.layer_types, vec![LayerType::Sliding; 2]);
    assert_eq!(m.sliding_window, Some(4096));
    let none = parse(&format!(
        r#"{{"architectures": ["MistralForCausalLM"], {BASE}, "sliding_window": null}}"#
    ))?;
    assert_eq!(none.window_of(0), None);
    Ok(())
}

#[test]
fn gemma2_defaults() -> Result<()> {
    let g = parse(
        r#"{"architectures": ["Gemma2ForCausalLM"], "hidden_size": 64, "intermediate_size": 128,
          "num_hidden_layers": 4, "num_attention_heads": 4, "head_dim": 32, "vocab_size": 100,
          "query_pre_attn_scalar": 64, "sliding_window": 16}"#,
    )?;
    assert_eq!(g.family, Family::Gemma2);
    assert_eq!(g.activation, Activation::GeluTanh);
    assert_eq!(g.norm_style, NormStyle::OnePlusScale);
    assert!(g.sandwich_norms && g.tie_word_embeddings && !g.qk_norm);
    assert_eq!(g.embed_scale, Some(8.0));
    assert_eq!(g.attention_scale, Some(0.125));
    assert_eq!(
        (g.attn_logit_softcap, g.final_logit_softcap),
        (Some(50.0), Some(30.0))
    );
    use LayerType::{Full, Sliding};
    assert_eq!(g.layer_types, vec![Sliding, Full, Sliding, Full]);
    // An explicit null turns soft-capping off.
    let off = parse(&format!(
        r#"{{"architectures": ["Gemma2ForCausalLM"], {BASE}, "final_logit_softcapping": null}}"#
    ))?;
    assert_eq!(off.final_logit_softcap, None);
    Ok(())
}

#[test]
fn gemma3_local_and_global_rope_both_spellings() -> Result<()> {
    let head = r#""architectures": ["Gemma3ForCausalLM"], "hidden_size": 64, "intermediate_size": 128,
        "num_hidden_layers": 6, "num_attention_heads": 4, "head_dim": 16, "vocab_size": 100"#;
    let old = parse(&format!(
        r#"{{{head}, "rope_theta": 1000000.0, "rope_local_base_freq": 10000.0,
          "rope_scaling": {{"rope_type": "linear", "factor": 8.0}}, "sliding_window_pattern": 3}}"#
    ))?;
    let new = parse(&format!(
        r#"{{{head}, "layer_types": ["sliding_attention", "sliding_attention", "full_attention",
          "sliding_attention", "sliding_attention", "full_attention"],
          "rope_parameters": {{"full_attention": {{"rope_type": "linear", "factor": 8.0, "rope_theta": 1000000.0}},
          "sliding_attention": {{"rope_type": "default", "rope_theta": 10000.0}}}}}}"#
    ))?;
    assert_eq!(old, new);
    assert_eq!(old.rope.scaling, RopeScaling::Linear { factor: 8.0 });
    let local = old.sliding_rope.as_ref().expect("local rope");
    assert_eq!(
        (local.theta, &local.scaling),
        (10_000.0, &RopeScaling::None)
    );
    assert_eq!(old.rope_of(0).theta, 10_000.0);
    assert_eq!(old.rope_of(2).theta, 1_000_000.0);
    assert!(old.qk_norm && old.final_logit_softcap.is_none() && old.attn_logit_softcap.is_none());
    Ok(())
}

#[test]
fn phi3_longrope_partial_rotary_and_fused_projections() -> Result<()> {
    let short: Vec<String> = (0..6)
        .map(|i| format!("{}", 1.0 + i as f64 * 0.1))
        .collect();
    let long: Vec<String> = (0..6).map(|i| format!("{}", 2.0 + i as f64)).collect();
    let c = parse(&format!(
        r#"{{"architectures": ["Phi3ForCausalLM"], "hidden_size": 64, "intermediate_size": 96,
          "num_hidden_layers": 2, "num_attention_heads": 4, "vocab_size": 100,
          "max_position_embeddings": 128, "original_max_position_embeddings": 32,
          "partial_rotary_factor": 0.75, "sliding_window": 48,
          "rope_scaling": {{"type": "su", "short_factor": [{}], "long_factor": [{}]}}}}"#,
        short.join(","),
        long.join(",")
    ))?;
    assert_eq!(c.layout, ProjectionLayout::Fused);
    assert_eq!(c.rope.rotary_dim, 12);
    match &c.rope.scaling {
        RopeScaling::LongRope {
            original_max_position_embeddings,
            attention_factor,
            long_factor,
            ..
        } => {
            assert_eq!(*original_max_position_embeddings, 32);
            assert!((attention_factor - (1.0 + 4f64.ln() / 32f64.ln()).sqrt()).abs() < 1e-12);
            assert_eq!(long_factor.len(), 6);
        }
        other => panic!("expected longrope, got {other:?}"),
    }
    assert_eq!(c.window_of(1), Some(48));
    assert_eq!(c.lora_targets().len(), 4);
    Ok(())
}

#[test]
fn unsupported_architecture_is_named() {
    let err = parse(&format!(
        r#"{{"architectures": ["GPT2LMHeadModel"], {BASE}}}"#
    ));
    match err {
        Err(e @ ModelError::UnsupportedArchitecture { .. }) => {
            assert!(e.to_string().contains("GPT2LMHeadModel"));
        }
        other => panic!("expected UnsupportedArchitecture, got {other:?}"),
    }
}

#[test]
fn bad_head_layout_rejected() {
    let err = parse(&format!(
        r#"{{"architectures": ["LlamaForCausalLM"], {BASE}, "num_key_value_heads": 3}}"#
    ));
    assert!(matches!(err, Err(ModelError::InvalidConfig(_))));
}
