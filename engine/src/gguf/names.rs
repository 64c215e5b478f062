//! Where each Hugging Face weight the model asks for lives in a `deepseek2` GGUF file, following
//! llama.cpp's tensor names (gguf-py/gguf/constants.py) and its converter's layouts
//! (conversion/deepseek.py: experts stacked per layer, kv_b_proj split for MLA absorption).

/// Where the bytes of one Hugging Face tensor are.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Stored {
    /// A GGUF tensor with the same values in the same row-major order.
    Whole(String),
    /// One expert's rows inside a tensor that stacks every expert of a layer:
    /// [experts, rows_per_expert, columns] in row-major order.
    Expert {
        tensor: String,
        expert: usize,
        rows: ExpertRows,
    },
    /// kv_b_proj, which today's converter splits into W_UK transposed per head
    /// (`attn_k_b`, [heads, kv_lora, nope]) and W_UV (`attn_v_b`, [heads, v, kv_lora]).
    SplitKvB { k_b: String, v_b: String },
}

/// Which of an expert's rows a weight is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExpertRows {
    All,
    /// The first half of a fused gate+up tensor (`ffn_gate_up_exps`).
    FusedGate,
    /// The second half of a fused gate+up tensor.
    FusedUp,
}

/// Which GGUF tensors hold `hf_name` in a file that has the tensors `exists` says it has.
pub fn locate(hf_name: &str, exists: &dyn Fn(&str) -> bool) -> Option<Stored> {
    // Not a .weight/.bias: DeepSeek-V3's router bias, which the converter renames to a bias.
    if let Some(layer) = hf_name
        .strip_prefix("model.layers.")
        .and_then(|rest| rest.strip_suffix(".mlp.gate.e_score_correction_bias"))
    {
        return Some(Stored::Whole(format!("blk.{layer}.exp_probs_b.bias")));
    }
    let (stem, suffix) = hf_name.rsplit_once('.')?;
    if !matches!(suffix, "weight" | "bias") {
        return None;
    }
    let whole = |gguf: String| Some(Stored::Whole(format!("{gguf}.{suffix}")));
    match stem {
        "model.embed_tokens" => return whole("token_embd".into()),
        "model.norm" => return whole("output_norm".into()),
        "lm_head" => return whole("output".into()),
        _ => {}
    }
    let (layer, part) = stem.strip_prefix("model.layers.")?.split_once('.')?;
    layer.parse::<usize>().ok()?;
    let blk = |name: &str| format!("blk.{layer}.{name}");
    if let Some(expert_part) = part.strip_prefix("mlp.experts.") {
        return locate_expert(expert_part, suffix, &blk, exists);
    }
    let name = match part {
        "input_layernorm" => "attn_norm",
        "post_attention_layernorm" => "ffn_norm",
        "self_attn.q_proj" => "attn_q",
        "self_attn.q_a_proj" => "attn_q_a",
        "self_attn.q_a_layernorm" => "attn_q_a_norm",
        "self_attn.q_b_proj" => "attn_q_b",
        "self_attn.kv_a_proj_with_mqa" => "attn_kv_a_mqa",
        "self_attn.kv_a_layernorm" => "attn_kv_a_norm",
        "self_attn.kv_b_proj" => {
            let whole_name = format!("{}.{suffix}", blk("attn_kv_b"));
            if suffix == "weight" && !exists(&whole_name) {
                return Some(Stored::SplitKvB {
                    k_b: format!("{}.weight", blk("attn_k_b")),
                    v_b: format!("{}.weight", blk("attn_v_b")),
                });
            }
            return Some(Stored::Whole(whole_name));
        }
        "self_attn.o_proj" => "attn_output",
        "mlp.gate_proj" => "ffn_gate",
        "mlp.up_proj" => "ffn_up",
        "mlp.down_proj" => "ffn_down",
        "mlp.gate" => "ffn_gate_inp",
        "mlp.shared_experts.gate_proj" => "ffn_gate_shexp",
        "mlp.shared_experts.up_proj" => "ffn_up_shexp",
        "mlp.shared_experts.down_proj" => "ffn_down_shexp",
        _ => return None,
    };
    whole(blk(name))
}

/// `E.gate_proj` etc. of `model.layers.N.mlp.experts.E.gate_proj.weight`.
fn locate_expert(
    part: &str,
    suffix: &str,
    blk: &dyn Fn(&str) -> String,
    exists: &dyn Fn(&str) -> bool,
) -> Option<Stored> {
    let (expert, projection) = part.split_once('.')?;
    let expert = expert.parse::<usize>().ok()?;
    if suffix != "weight" {
        return None; // llama.cpp's stacked experts have no biases
    }
    let stacked = |name: &str, rows| Stored::Expert {
        tensor: format!("{}.weight", blk(name)),
        expert,
        rows,
    };
    // llama.cpp's loader takes a fused gate+up tensor in place of the two (each expert's gate
    // rows, then its up rows).
    let fused = exists(&format!("{}.weight", blk("ffn_gate_up_exps")))
        && !exists(&format!("{}.weight", blk("ffn_gate_exps")));
    match projection {
        "down_proj" => Some(stacked("ffn_down_exps", ExpertRows::All)),
        "gate_proj" if fused => Some(stacked("ffn_gate_up_exps", ExpertRows::FusedGate)),
        "up_proj" if fused => Some(stacked("ffn_gate_up_exps", ExpertRows::FusedUp)),
        "gate_proj" => Some(stacked("ffn_gate_exps", ExpertRows::All)),
        "up_proj" => Some(stacked("ffn_up_exps", ExpertRows::All)),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn split_file(name: &str) -> bool {
        !name.contains("attn_kv_b") && !name.contains("gate_up")
    }

    #[test]
    fn attention_and_norms_map_to_llama_cpp_names() {
        let cases = [
            ("model.embed_tokens.weight", "token_embd.weight"),
            ("model.norm.weight", "output_norm.weight"),
            ("lm_head.weight", "output.weight"),
            (
                "model.layers.3.input_layernorm.weight",
                "blk.3.attn_norm.weight",
            ),
            (
                "model.layers.3.post_attention_layernorm.weight",
                "blk.3.ffn_norm.weight",
            ),
            (
                "model.layers.0.self_attn.q_proj.weight",
                "blk.0.attn_q.weight",
            ),
            (
                "model.layers.0.self_attn.q_a_proj.weight",
                "blk.0.attn_q_a.weight",
            ),
            (
                "model.layers.0.self_attn.q_a_proj.bias",
                "blk.0.attn_q_a.bias",
            ),
            (
                "model.layers.0.self_attn.q_a_layernorm.weight",
                "blk.0.attn_q_a_norm.weight",
            ),
            (
                "model.layers.0.self_attn.q_b_proj.weight",
                "blk.0.attn_q_b.weight",
            ),
            (
                "model.layers.12.self_attn.kv_a_proj_with_mqa.weight",
                "blk.12.attn_kv_a_mqa.weight",
            ),
            (
                "model.layers.1.self_attn.kv_a_layernorm.weight",
                "blk.1.attn_kv_a_norm.weight",
            ),
            (
                "model.layers.1.self_attn.o_proj.weight",
                "blk.1.attn_output.weight",
            ),
            (
                "model.layers.0.mlp.gate_proj.weight",
                "blk.0.ffn_gate.weight",
            ),
            (
                "model.layers.0.mlp.down_proj.weight",
                "blk.0.ffn_down.weight",
            ),
            (
                "model.layers.2.mlp.gate.weight",
                "blk.2.ffn_gate_inp.weight",
            ),
            (
                "model.layers.2.mlp.gate.e_score_correction_bias",
                "blk.2.exp_probs_b.bias",
            ),
            (
                "model.layers.2.mlp.shared_experts.up_proj.weight",
                "blk.2.ffn_up_shexp.weight",
            ),
        ];
        for (hf, gguf) in cases {
            assert_eq!(
                locate(hf, &split_file),
                Some(Stored::Whole(gguf.into())),
                "{hf}"
            );
        }
    }

    #[test]
    fn kv_b_is_whole_when_the_file_has_it_and_split_otherwise() {
        let name = "model.layers.4.self_attn.kv_b_proj.weight";
        assert_eq!(
            locate(name, &split_file),
            Some(Stored::SplitKvB {
                k_b: "blk.4.attn_k_b.weight".into(),
                v_b: "blk.4.attn_v_b.weight".into()
            })
        );
        assert_eq!(
            locate(name, &|_| true),
            Some(Stored::Whole("blk.4.attn_kv_b.weight".into()))
        );
    }

    #[test]
    fn experts_are_slices_of_the_stacked_tensors() {
        assert_eq!(
            locate("model.layers.1.mlp.experts.5.up_proj.weight", &split_file),
            Some(Stored::Expert {
                tensor: "blk.1.ffn_up_exps.weight".into(),
                expert: 5,
                rows: ExpertRows::All
            })
        );
        let fused = |name: &str| !name.contains("ffn_gate_exps");
        assert_eq!(
            locate("model.layers.1.mlp.experts.5.up_proj.weight", &fused),
            Some(Stored::Expert {
                tensor: "blk.1.ffn_gate_up_exps.weight".into(),
                expert: 5,
                rows: ExpertRows::FusedUp
            })
        );
    }

    #[test]
    fn unknown_names_have_no_place() {
        for name in [
            "model.layers.x.input_layernorm.weight",
            "model.layers.1.self_attn.rotary_emb.inv_freq",
            "model.layers.1.mlp.experts.5.up_proj.bias",
            "something.weight",
        ] {
            assert_eq!(locate(name, &|_| true), None, "{name}");
        }
    }
}
