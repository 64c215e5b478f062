"""Runs llama.cpp's own convert_hf_to_gguf.py, changed in one place only.

    python run_converter.py LLAMA_CPP_DIR [convert_hf_to_gguf.py arguments...]

The converter names the pre-tokenizer by hashing the token ids its tokenizer gives for a fixed
text, and refuses vocabularies whose hash it does not know. Our test models have small vocabularies
of their own (so no known hash) but DeepSeek-V2's pre-tokenizer rules, so the hash lookup is
replaced by the name llama.cpp gives DeepSeek-V2 and DeepSeek-Coder-V2: "deepseek-llm". Everything
else (metadata keys, tensor names and layouts, quantization) is the converter's own code.
"""

import sys

DEEPSEEK_V2_PRE_TOKENIZER = "deepseek-llm"


def main() -> None:
    llama_dir = sys.argv[1]
    # The converter's own gguf-py, not whatever gguf package is installed.
    sys.path.insert(0, llama_dir)
    sys.path.insert(1, f"{llama_dir}/gguf-py")

    import conversion.base

    conversion.base.TextModel.get_vocab_base_pre = lambda self, tokenizer: DEEPSEEK_V2_PRE_TOKENIZER

    sys.argv = [f"{llama_dir}/convert_hf_to_gguf.py", *sys.argv[2:]]
    import convert_hf_to_gguf

    convert_hf_to_gguf.main()


if __name__ == "__main__":
    main()
