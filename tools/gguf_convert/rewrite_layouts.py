"""Rewrites a deepseek2 GGUF from today's llama.cpp converter into the two other layouts that
llama.cpp reads, so the engine's reader is tested on every layout it may meet:

- kv_b_proj whole (`blk.N.attn_kv_b`, [heads * (nope + v), kv_lora] in torch order), with
  `attention.key_length` = nope + rope, `value_length` = v_head_dim, `head_count_kv` = heads and
  no `*_mla` keys: what converters wrote before llama.cpp split kv_b for MLA absorption (2025).
  The split halves may hold different types, so the joined tensor is written as F32 from their
  exact dequantized values.
- gate and up experts fused (`blk.N.ffn_gate_up_exps`, [experts, 2 * n_ff, hidden], gate rows
  first): what llama.cpp's loader accepts in place of ffn_gate_exps + ffn_up_exps (the converter's
  --fuse-gate-up-exps, which refuses deepseek2 today). Quantized rows are copied byte for byte.

    python rewrite_layouts.py LLAMA_CPP_DIR INPUT.gguf OUTPUT.gguf
"""

import re
import sys

import numpy as np


def main() -> None:
    llama_dir, source, target = sys.argv[1:4]
    sys.path.insert(0, f"{llama_dir}/gguf-py")
    import gguf

    reader = gguf.GGUFReader(source)
    arch = reader.fields["general.architecture"].contents()
    writer = gguf.GGUFWriter(target, arch)

    key = lambda name: f"{arch}.{name}"  # noqa: E731
    scalar = lambda name: reader.fields[key(name)].contents()  # noqa: E731
    rewritten = {
        key(name)
        for name in (
            "attention.key_length",
            "attention.value_length",
            "attention.key_length_mla",
            "attention.value_length_mla",
            "attention.head_count_kv",
        )
    }
    for field in reader.fields.values():
        if field.name.startswith("GGUF.") or field.name == "general.architecture":
            continue  # written by GGUFWriter itself
        if field.name in rewritten:
            continue
        main_type = field.types[0]
        sub_type = field.types[-1] if main_type == gguf.GGUFValueType.ARRAY else None
        writer.add_key_value(field.name, field.contents(), main_type, sub_type)
    writer.add_key_length(scalar("attention.key_length_mla"))
    writer.add_value_length(scalar("attention.value_length_mla"))
    writer.add_head_count_kv(scalar("attention.head_count"))

    tensors = {t.name: t for t in reader.tensors}

    def values(name: str) -> np.ndarray:
        """The tensor as f32 in torch order (the reverse of GGUF's dims)."""
        t = tensors[name]
        return gguf.quants.dequantize(t.data, t.tensor_type).reshape(
            [int(d) for d in reversed(t.shape)]
        )

    def copy(name: str, new_name: str | None = None) -> None:
        t = tensors[name]
        writer.add_tensor(new_name or name, t.data, raw_dtype=t.tensor_type)

    for name in tensors:
        block = re.match(r"blk\.(\d+)\.", name)
        if name.endswith("attn_k_b.weight"):
            k_b = values(name)  # [heads, kv_lora, nope]
            v_b = values(name.replace("attn_k_b", "attn_v_b"))  # [heads, v, kv_lora]
            kv_b = np.concatenate([k_b.transpose(0, 2, 1), v_b], axis=1)
            writer.add_tensor(
                name.replace("attn_k_b", "attn_kv_b"),
                np.ascontiguousarray(kv_b.reshape(-1, kv_b.shape[-1]), dtype=np.float32),
            )
        elif name.endswith("attn_v_b.weight"):
            continue  # joined with attn_k_b above
        elif name.endswith("ffn_gate_exps.weight"):
            gate, up = tensors[name], tensors[name.replace("ffn_gate_exps", "ffn_up_exps")]
            fused_name = f"blk.{block.group(1)}.ffn_gate_up_exps.weight"
            if gate.tensor_type == up.tensor_type:
                # [experts, n_ff, row bytes] each: gate rows, then up rows, per expert.
                fused = np.concatenate([gate.data, up.data], axis=1)
                writer.add_tensor(fused_name, fused, raw_dtype=gate.tensor_type)
            else:
                fused = np.concatenate([values(gate.name), values(up.name)], axis=1)
                writer.add_tensor(fused_name, np.ascontiguousarray(fused, dtype=np.float32))
        elif name.endswith("ffn_up_exps.weight"):
            continue  # fused with ffn_gate_exps above
        else:
            copy(name)

    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()


if __name__ == "__main__":
    main()
