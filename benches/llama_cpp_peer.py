"""deepseek-lsp against llama.cpp on the same GGUF file (issue 10's peer comparison).

Run through benches/llama_cpp_peer.sh, which provides the virtualenv with llama-cpp-python and
the release binary. Both programs get the same file, the same threads, the same prompt (token
ids, no tokenizer: deepseek-lsp's `engine::bench::prompt_ids`) and the same generation length:

- prefill: the P prompt tokens evaluated on an empty context, fastest of R runs;
- decode: after that prompt, N tokens one at a time, each the argmax of the last logits.

Without --gguf, deepseek-lsp writes a Lite-shaped synthetic file (`bench prefill --synthetic
lite:LAYERS --quant Q --gguf-out FILE`, its prefill measurement), which the other runs read.
Prints a markdown table, then one JSON object with every figure (also to --json FILE).
"""

import argparse
import json
import math
import os
import statistics
import subprocess
import sys
import tempfile
import time

import llama_cpp
import numpy as np
from llama_cpp import Llama


def prompt_ids(vocab: int, length: int) -> list[int]:
    """deepseek-lsp's bench prompt (engine/src/bench.rs, prompt_ids): the same routing both sides."""
    return [(i * 7919 + 13) % vocab for i in range(length)]


def ours(args, kind: str, model_args: list[str]) -> dict:
    command = [
        args.deepseek_lsp, "bench", kind, *model_args,
        "--prompt", str(args.prompt), "--tokens", str(args.tokens),
        "--threads", str(args.threads), "--repeats", str(args.repeats),
    ]
    print("$ " + " ".join(command), file=sys.stderr, flush=True)
    # Its progress goes to stderr, its figures to stdout as one JSON object.
    done = subprocess.run(command, stdout=subprocess.PIPE, text=True, check=True)
    return json.loads(done.stdout)


def last_argmax(llm: Llama) -> int:
    logits = np.ctypeslib.as_array(llm._ctx.get_logits_ith(-1), shape=(llm.n_vocab(),))
    return int(logits.argmax())


def theirs(args, path: str) -> dict:
    started = time.perf_counter()
    llm = Llama(
        model_path=path,
        n_ctx=args.prompt + args.tokens + 16,
        # The whole prompt in one llama_decode call; llama.cpp splits it into its own ubatches.
        n_batch=max(args.prompt, 512),
        n_threads=args.threads,
        n_threads_batch=args.threads,
        flash_attn=args.flash_attn,
        verbose=args.verbose,
    )
    load_seconds = time.perf_counter() - started
    ids = prompt_ids(llm.n_vocab(), args.prompt)

    best = math.inf
    for _ in range(args.repeats):
        llm.reset()  # eval() then drops every cached position from 0 on: an empty context
        started = time.perf_counter()
        llm.eval(ids)
        best = min(best, time.perf_counter() - started)

    llm.reset()
    llm.eval(ids)
    token = last_argmax(llm)
    started = time.perf_counter()
    for _ in range(args.tokens):
        llm.eval([token])
        token = last_argmax(llm)
    decode_seconds = time.perf_counter() - started
    return {
        "load_seconds": load_seconds,
        "prefill_tokens_per_second": args.prompt / best,
        "prefill_seconds": best,
        "decode_tokens_per_second": args.tokens / decode_seconds,
        "decode_ms_per_token": decode_seconds * 1e3 / args.tokens,
        "n_vocab": llm.n_vocab(),
    }


def ratio(a, b):
    return a / b if a and b else None


def median(values):
    values = [v for v in values if v is not None]
    return statistics.median(values) if values else None


def table(report: dict) -> str:
    o, t, r = report["deepseek_lsp"], report["llama_cpp"], report["ratio"]
    rows = [
        (f"prefill ({report['prompt']} tokens, best of {report['repeats']})",
         o["prefill_tokens_per_second"], t["prefill_tokens_per_second"], r["prefill"]),
        (f"decode ({report['tokens']} tokens after the prompt)",
         o["decode_tokens_per_second"], t["decode_tokens_per_second"], r["decode"]),
    ]
    lines = [
        f"{report['model']}, {report['threads']} threads",
        "",
        "| | deepseek-lsp tok/s | llama.cpp tok/s | ratio |",
        "|---|---|---|---|",
    ]
    lines += [f"| {name} | {a:.2f} | {b:.2f} | {x:.2f}x |" for name, a, b, x in rows]
    if len(report["rounds"]) > 1:
        lines += [
            "",
            f"Medians of {len(report['rounds'])} rounds, each ours then llama.cpp; per round "
            "(prefill ratio, decode ratio): "
            + ", ".join(f"({r['prefill']:.2f}x, {r['decode']:.2f}x)"
                        for r in (round_["ratio"] for round_ in report["rounds"])),
        ]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--deepseek-lsp", required=True, help="the release binary")
    parser.add_argument("--gguf", help="a deepseek2 GGUF file (default: a synthetic one)")
    parser.add_argument("--layers", type=int, default=4, help="synthetic lite:LAYERS")
    parser.add_argument("--quant", default="Q4_K", help="synthetic file's quantization: Q4_K or Q8_0")
    parser.add_argument("--gguf-out", help="keep the synthetic file here (default: removed)")
    parser.add_argument("--prompt", type=int, default=512)
    parser.add_argument("--tokens", type=int, default=64)
    parser.add_argument("--threads", type=int, default=os.cpu_count())
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--rounds", type=int, default=1,
                        help="measure both sides this many times, alternating, and report the "
                             "medians (a shared machine's speed drifts between runs)")
    parser.add_argument("--flash-attn", action="store_true", help="llama.cpp's flash attention")
    parser.add_argument("--verbose", action="store_true", help="llama.cpp's own log")
    parser.add_argument("--json", help="also write the JSON report here")
    args = parser.parse_args()

    workdir = None
    if args.gguf:
        path, model = args.gguf, args.gguf
        prefill = ours(args, "prefill", ["--model", path])
    else:
        if args.gguf_out:
            path = args.gguf_out
        else:
            workdir = tempfile.TemporaryDirectory(prefix="llama-cpp-peer-")
            path = os.path.join(workdir.name, "synthetic.gguf")
        spec = f"lite:{args.layers}"
        model = f"synthetic {spec} {args.quant}"
        prefill = ours(args, "prefill", [
            "--synthetic", spec, "--quant", args.quant, "--gguf-out", path,
        ])
    file_bytes = os.path.getsize(path)
    rounds = []
    try:
        for index in range(max(args.rounds, 1)):
            if index > 0:
                prefill = ours(args, "prefill", ["--model", path])
            decode = ours(args, "decode", ["--model", path])
            print(f"llama.cpp {llama_cpp.__version__} on {path}...", file=sys.stderr, flush=True)
            peer = theirs(args, path)
            ours_figures = {
                "prefill_tokens_per_second": prefill["prefill"]["tokens_per_second"],
                "decode_tokens_per_second": decode["decode"]["tokens_per_second"],
                "decode_ms_per_token": decode["decode"]["ms_per_token"],
                "decode_roofline_fraction": decode["decode"].get("roofline_fraction"),
                "memory_read_gb_per_second": decode.get("memory_read_gb_per_second"),
                "load_seconds": decode["load_seconds"],
                "prefill_report": prefill,
                "decode_report": decode,
            }
            rounds.append({
                "deepseek_lsp": ours_figures,
                "llama_cpp": peer,
                "ratio": {
                    "prefill": ratio(ours_figures["prefill_tokens_per_second"],
                                     peer["prefill_tokens_per_second"]),
                    "decode": ratio(ours_figures["decode_tokens_per_second"],
                                    peer["decode_tokens_per_second"]),
                },
            })
    finally:
        if workdir is not None:
            workdir.cleanup()

    def middle(side, key):
        return median([r[side][key] for r in rounds])

    def figures(side):
        return [k for k, v in rounds[0][side].items() if v is None or isinstance(v, (int, float))]

    last = rounds[-1]
    report = {
        "model": model,
        "file": path if args.gguf or args.gguf_out else None,
        "file_bytes": file_bytes,
        "threads": args.threads,
        "prompt": args.prompt,
        "tokens": args.tokens,
        "repeats": args.repeats,
        # Medians over the rounds (the figures themselves with one round).
        "deepseek_lsp": {
            **{k: middle("deepseek_lsp", k) for k in figures("deepseek_lsp")},
            "prefill_report": last["deepseek_lsp"]["prefill_report"],
            "decode_report": last["deepseek_lsp"]["decode_report"],
        },
        "llama_cpp": {
            "version": llama_cpp.__version__,
            "system_info": llama_cpp.llama_print_system_info().decode().strip(),
            "flash_attn": args.flash_attn,
            **{k: middle("llama_cpp", k) for k in figures("llama_cpp")},
        },
        "ratio": {
            "prefill": median([r["ratio"]["prefill"] for r in rounds]),
            "decode": median([r["ratio"]["decode"] for r in rounds]),
        },
        "rounds": rounds,
    }
    print(table(report))
    print()
    text = json.dumps(report, indent=2)
    print(text)
    if args.json:
        with open(args.json, "w") as out:
            out.write(text + "\n")


if __name__ == "__main__":
    main()
