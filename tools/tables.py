"""
The results tables of README.md and of the study pages assets/<study>/README.md, and the few sentences there
that carry numbers, generated from the saved outputs they cite.

$ python tools/tables.py          # rewrite every generated block in README.md and assets/*/README.md

A generated block is the text between `<!-- tables.py: NAME -->` and `<!-- /tables.py -->`; NAME is a
function of this module that returns the block from the saved files (no argument). tests/test_readme.py
regenerates every block and compares it with the page, so a number in a block cannot drift from its source.
Every value is computed from the unrounded saved values and rounded once, when it is printed.
"""

import functools
import json
import os
import re
import statistics
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
BLOCK = re.compile(r"(<!-- tables\.py: (\w+) -->\n)(.*?)(<!-- /tables\.py -->)", re.S)


def load(path):
    with open(os.path.join(ROOT, path)) as f:
        return json.load(f)


def jsonl(path):
    with open(os.path.join(ROOT, path)) as f:
        return [json.loads(line) for line in f if line.strip()]


def table(head, rows):
    return "\n".join(["| " + " | ".join(head) + " |", "|" + " --- |" * len(head)]
                     + ["| " + " | ".join(map(str, r)) + " |" for r in rows]) + "\n"


# ----------------------------------------------------------------------------------------------------
# ablate.py sweeps: val cross-entropy per seed, and each row against another on the same seeds


def runs_of(path):
    """{row name: (row, {seed: final val CE})} of an ablate_runs.json."""
    return {r["name"]: (r, {x["seed"]: x["final_val"] for x in r["runs"]}) for r in load(path)["rows"]}


def ce_table(path, rows, seeds=(1337, 1338, 1339), extra=None):
    """rows: (name, label, name of the row it is compared with or None). Per-seed differences are taken on
    the seeds both rows have; the difference of means only when both have every seed. extra: (more column
    heads, a function of a row giving their cells)."""
    res = runs_of(path)
    out = []
    for name, label, versus in rows:
        row, vals = res[name]
        per_seed = " / ".join(f"{vals[s]:.3f}" if s in vals else "—" for s in seeds)
        v = list(vals.values())
        mean = f"{statistics.fmean(v):.3f} ± {statistics.stdev(v):.3f}" if len(v) > 1 else "one seed"
        delta = delta_mean = "—"
        if versus:
            other = res[versus][1]
            common = [s for s in seeds if s in vals and s in other]
            delta = " / ".join(f"{vals[s] - other[s]:+.3f}" if s in common else "—" for s in seeds) + f" (`{versus}`)"
            if len(vals) == len(other) == len(seeds):
                delta_mean = f"{statistics.fmean(v) - statistics.fmean(other.values()):+.3f}"
        params = f"{row['params'] / 1e6:.2f}M" if row.get("params") else "—"
        out.append([label, params, per_seed, mean, delta, delta_mean] + (extra[1](row) if extra else []))
    head = ["model", "parameters", "val CE, seeds " + " / ".join(map(str, seeds)), "mean ± std",
            "difference per seed (against)", "difference of the means"]
    return table(head + (extra[0] if extra else []), out)


def quality_vs_gpt():
    return ce_table("assets/tinystories_cpu/ablate_runs.json", [
        ("rwkv", "MicroRWKV: pure RWKV-7, the default (`rwkv`)", "gpt"),
        ("full-no-attn", "with the mixture of experts (`full-no-attn`)", "rwkv"),
        ("full7", "with every block: SWA, GQA and MoE (`full7`)", "rwkv"),
        ("gpt", "GPT (`gpt`)", None)])


def tinystories_cpu_full_layer():
    return ce_table("assets/tinystories_cpu/full_layer/ablate_runs.json", [
        ("rwkv7", "the full layer, RWKV-7 blocks (`rwkv7`)", "rwkv"),
        ("rwkv7-ln-emb-1", "the same, ln0's gain starting at 1 (`rwkv7-ln-emb-1`)", "rwkv7"),
        ("rwkv", "the full layer, x051a blocks, RWKV's init (`rwkv`)", "gpt"),
        ("rwkv-init-gpt2", "the same with GPT-2's init (`rwkv-init-gpt2`)", "rwkv"),
        ("gpt", "GPT (`gpt`)", None)])


def blocks():
    return ce_table("assets/ablate_full/ablate_runs.json", [
        ("rwkv", "pure RWKV, 4 layers (`rwkv`)", "full"),
        ("full", "full layer: TimeMix + ChannelMix + SWA + GQA + MoE (`full`)", None),
        ("full-no-swa", "without SWA (`full-no-swa`)", "full"),
        ("full-no-gqa", "without GQA (`full-no-gqa`)", "full"),
        ("full-no-attn", "without SWA and GQA (`full-no-attn`)", "full"),
        ("full-no-moe", "without MoE (`full-no-moe`)", "full"),
        ("rwkv-deep", "pure RWKV, 11 layers: the full layer's size (`rwkv-deep`)", "full")])


def screen():
    return ce_table("assets/ablate_screen/ablate_runs.json", [
        ("rwkv", "our RWKV x051a: the recipe (`rwkv`: GPT-2's init, ln0 gain 0.02)", "nanoRWKV"),
        ("rwkv-ln-emb-1", "ln0's gain starting at 1 (`rwkv-ln-emb-1`)", "rwkv"),
        ("rwkv-no-ln-emb", "no ln0 (`rwkv-no-ln-emb`)", "rwkv"),
        ("rwkv-init-rwkv", "RWKV's per-parameter init (`rwkv-init-rwkv`)", "rwkv"),
        ("rwkv-head32", "head size 32 (`rwkv-head32`)", "rwkv"),
        ("rwkv-cmix3", "ChannelMix 3x, nanoRWKV's (`rwkv-cmix3`)", "rwkv"),
        ("rwkv-wd-time", "weight decay on `time_faaaa` (`rwkv-wd-time`)", "rwkv"),
        ("rwkv-wpe", "learned positions, nanoRWKV's `wpe` (`rwkv-wpe`)", "rwkv"),
        ("nanoRWKV", "BlinkDL's nanoRWKV x051a, its own model.py", None),
        ("gpt", "our GPT (`gpt`)", "nanoGPT"),
        ("nanoGPT", "Karpathy's nanoGPT, its own model.py", None)])


def context_1024():
    """The ablation recipe at context 1,024: val CE per seed, by position in the context, and training time."""
    path = "assets/ctx1024/ablate_runs.json"
    res = runs_of(path)
    train_s = lambda row: statistics.fmean(r["train_s"] for r in row["runs"])
    base = train_s(res["rwkv7"][0])
    edges = next(r["val_by_pos"]["edges"] for row, _ in res.values() for r in row["runs"] if r.get("val_by_pos"))

    import ablate

    def cells(row):
        pos = ablate.summarize(row, None).get("val_by_pos")  # the mean over seeds of each bucket
        by_pos = " / ".join(f"{v:.3f}" for v in pos["val_ce"]) if pos and pos["edges"] == edges else "—"
        return [by_pos, f"{train_s(row):,.0f} ({train_s(row) / base:.2f}×)"]

    head = ["val CE at positions " + " / ".join(f"{a}-{b}" for a, b in zip(edges, edges[1:])), "training s (× `rwkv7`)"]
    rows = [("rwkv7-gqa4", "RWKV-7, GQA in the last of 4 layers (`rwkv7-gqa4`)", "rwkv7"),
            ("rwkv7", "pure RWKV-7 (`rwkv7`)", "gpt" if "gpt" in res else None),
            ("gpt", "GPT (`gpt`)", None)]
    return ce_table(path, [r for r in rows if r[0] in res], extra=(head, cells))


def ablate_section(path):
    """The table ablate.py printed for a saved ablate_runs.json (every summary recomputed from the runs); its
    note, free text, is taken from the saved ablate_table.md beside it."""
    import ablate
    saved = load(path)
    rows = [dict(r, summary=ablate.summarize(r, saved["wall_clock"])) for r in saved["rows"]]
    with open(os.path.join(ROOT, os.path.dirname(path), "ablate_table.md")) as f:
        note = f.read().rstrip("\n").rsplit("\n\n", 1)[1]
    return ablate.make_table(rows, saved["baseline"], saved["wall_clock"], note)


# ----------------------------------------------------------------------------------------------------
# benchmark_inference_time.py


def decoding():
    s = load("assets/benchmark_inference/summary.json")
    names = {"rwkv": "pure RWKV x051a (`rwkv`)", "rwkv7": "pure RWKV x070 (`rwkv7`)",
             "microrwkv": "full MicroRWKV layer (`microrwkv`)", "gpt": "GPT, KV cache (`gpt`)"}
    rows = [[names[m["model"]], f"{m['params'] / 1e6:.1f}M", f"{m['tokens']:,}" + (" (time budget)" if m["stopped"] != "-" else ""),
             f"{m['first10_ms']:.1f} → {m['last10_ms']:.1f}", f"{m['x_floor_first']:.1f} → {m['x_floor_last']:.1f}",
             f"{m['state_first_MiB']:.2f} → {m['state_last_MiB']:.2f}", f"{m['state_alloc_last_MiB']:.2f}",
             f"{m['tokens_per_s']:.1f}"] for m in s["models"]]
    return table(["model", "parameters", "tokens decoded", "ms/token, first 10% → last 10%", "× memory floor",
                  "state MiB, first → last", "allocated MiB, last", "tokens/s"], rows)


def decoding_16k():
    s = {m["model"]: m for m in load("assets/benchmark_inference/16k/summary.json")["models"]}
    rows = {name: jsonl(f"assets/benchmark_inference/16k/{name}.jsonl") for name in ("rwkv", "gpt")}
    at = 15000
    cum = {n: next(r["cum_s"] for r in rows[n] if r["i"] + 1 == at) for n in rows}
    mib = {n: next(r["state_bytes"] for r in rows[n] if r["i"] + 1 == at) / 2 ** 20 for n in rows}
    out = [[n, f"{s[n]['tokens']:,}" + (" (time budget)" if s[n]["stopped"] != "-" else ""),
            f"{s[n]['first10_ms']:.1f} → {s[n]['last10_ms']:.1f}",
            f"{s[n]['state_last_MiB']:.2f} → {s[n]['state_alloc_last_MiB']:.2f}", f"{cum[n]:.0f} s", f"{mib[n]:.2f}"]
           for n in ("rwkv", "gpt")]
    return table(["model", "tokens decoded", "ms/token, first 10% → last 10%", "state MiB at the end, logical → allocated",
                  f"decoding time to {at:,} tokens", f"state MiB at {at:,} tokens"], out)


def crossover_16k():
    """Where GPT's decoding cost passes RWKV's, from the per-token rows."""
    rows = {n: jsonl(f"assets/benchmark_inference/16k/{n}.jsonl") for n in ("rwkv", "gpt")}
    n = min(len(r) for r in rows.values())
    window = 128
    med = {k: [statistics.median(r["latency_ms"] for r in v[i:i + window]) for i in range(0, n - window + 1, window)]
           for k, v in rows.items()}
    slower = [med["gpt"][i] > med["rwkv"][i] for i in range(len(med["gpt"]))]
    first = next(i for i in range(len(slower)) if all(slower[i:]))
    total = next(i for i in range(n) if rows["gpt"][i]["cum_s"] > rows["rwkv"][i]["cum_s"]
                 and all(rows["gpt"][j]["cum_s"] > rows["rwkv"][j]["cum_s"] for j in range(i, n)))
    i15 = 15000 - 1
    return (f"Taking the median latency of each {window}-token window of the per-token rows, GPT is slower than RWKV in "
            f"every window from position {rows['gpt'][first * window]['pos']:,} on; its total decoding time passes "
            f"RWKV's at position {rows['gpt'][total]['pos']:,}, and after 15,000 tokens it has taken "
            f"{rows['gpt'][i15]['cum_s'] / rows['rwkv'][i15]['cum_s']:.2f}× RWKV's time.\n")


def decode_dtypes():
    runs = [("float32", 1, "float32"), ("bfloat16", 1, "bfloat16"), ("float32", 8, "float32_batch8"),
            ("bfloat16", 8, "bfloat16_batch8")]
    res = {d: load(f"assets/benchmark_inference/decode/{d}/summary.json")["models"][0] for _, _, d in runs}
    base = res["float32"]["tokens_per_s"]
    rows = [[w, b, f"{res[d]['tokens_per_s']:.1f} ({min(res[d]['repeat_tokens_per_s']):.1f} – "
             f"{max(res[d]['repeat_tokens_per_s']):.1f})", f"{res[d]['tokens_per_s'] / base:.2f}×",
             f"{res[d]['state_last_MiB'] / b:.2f}"] for w, b, d in runs]
    return table(["weights", "sequences per step", "tokens/s, all sequences: median (min – max) of 3 runs",
                  "vs float32, batch 1", "state MiB per sequence"], rows)


def prompt_state():
    def speed(name):
        line = open(os.path.join(ROOT, "assets/benchmark_inference/decode", name)).read().strip().splitlines()[-1]
        return re.search(r"\[prompt (\d+) tokens .*?\(([\d.]+) s, (?:incl\. )?1st token\)", line).groups()
    (n, save_s), (_, load_s) = speed("state_save.txt"), speed("state_load.txt")
    same = open(os.path.join(ROOT, "assets/benchmark_inference/decode/greedy_float32.txt")).read().splitlines()[:-1] == \
        open(os.path.join(ROOT, "assets/benchmark_inference/decode/greedy_bfloat16.txt")).read().splitlines()[:-1]
    return table(["check", "result"], [
        ["greedy text, bf16 weights against float32", "the same text" if same else "different texts"],
        [f"prefill a {int(n):,}-token prompt, then the first token", f"{float(save_s):.3f} s"],
        ["the same from its saved state (`--load_state`)", f"{float(load_s):.3f} s"]])


# ----------------------------------------------------------------------------------------------------
# benchmark_training.py


MODELS = {"rwkv": "pure RWKV x051a", "rwkv7": "pure RWKV x070", "microrwkv-top2": "full layer x051a, top-2",
          "microrwkv7-top2": "full layer x070, top-2", "gpt": "GPT"}


def throughput(files):
    """tokens/s (× GPT's in the same run) per T, mode and model."""
    rows, models = [], None
    for path, mode in files:
        res = load(path)["results"]
        models = list(dict.fromkeys(r["model"] for r in res))
        for T in sorted({r["seq_len"] for r in res}):
            at = {r["model"]: r for r in res if r["seq_len"] == T}
            rows.append([T, mode] + [f"{at[m]['tokens_per_s']['median']:,.0f} ({at[m]['vs_gpt']:.2f}×)" for m in models])
    return table(["T", "mode"] + [MODELS[m] for m in models], rows)


def training_cpu():
    return throughput([("assets/benchmark_training/cpu.json", "eager"),
                       ("assets/benchmark_training/cpu_compile.json", "compiled")])


def training_h200():
    return throughput([("assets/benchmark_training/h200_bf16.json", "eager, bf16")])


def training_cpu_notes():
    eager, comp = load("assets/benchmark_training/cpu.json")["results"], load("assets/benchmark_training/cpu_compile.json")["results"]
    head = [r["breakdown"]["parts"]["head+loss"]["pct"] for r in eager]
    slow = [r for r in comp if min(r["tokens_per_s"]["runs"]) < 0.8 * r["tokens_per_s"]["median"]]
    first = sorted(r["first_step_s"] for r in comp)
    full = {r["seq_len"]: r for r in eager if r["model"] == "microrwkv-top2"}
    gpt = {r["seq_len"]: r for r in eager if r["model"] == "gpt"}
    ratio = [full[T]["flops_per_token"] / gpt[T]["flops_per_token"] for T in sorted(full)]
    return (f"The LM head and loss take {min(head):.0f}-{max(head):.0f}% of every eager step (the breakdown in "
            f"`cpu.txt`). The full layer does {min(ratio):.2f}-{max(ratio):.2f}× GPT's FLOPs per token. Compiling took "
            f"{first[0]:.0f}-{first[-2]:.0f} s per model and T, and {first[-1]:,.0f} s once; {len(slow)} of the "
            f"{len(comp)} compiled measurements had one timed run below 80% of their median (a recompile: their "
            f"minimum in the JSON), so the median is that of the other two.\n")


def model_size():
    with open(os.path.join(ROOT, "assets/model_size.txt")) as f:
        n = float(re.search(r"([\d.]+)M parameters", f.read()).group(1))
    return f"The defaults are `config/train_tinystories.py`'s model, {n:.1f}M parameters (`python model.py`, output in `assets/model_size.txt`).\n"


# ----------------------------------------------------------------------------------------------------
# benchmark_recall.py


@functools.lru_cache(maxsize=None)
def recall_rows(path):
    """benchmark_recall.summarize of the runs saved in path, once per path (it builds a model per layout)."""
    import benchmark_recall
    return benchmark_recall.summarize(load(path)["runs"])


def recall():
    """The MQAR table benchmark_recall.py printed, recomputed from the runs saved beside the page."""
    import benchmark_recall
    return benchmark_recall.format_table(recall_rows("assets/recall/recall_runs.json"))


def recall_budget(folder):
    """The same table for the runs of another budget, saved in assets/recall/<folder>/."""
    import benchmark_recall
    return benchmark_recall.format_table(recall_rows(f"assets/recall/{folder}/recall_runs.json"))


def recall_uniform():
    return recall_budget("uniform")


def recall_1500():
    return recall_budget("steps1500")


def recall_12000():
    return recall_budget("steps12000")


def recall_6000():
    return recall_budget("steps6000")


def recall_batch16384():
    return recall_budget("batch16384")


def recall_compact():
    """The README's MQAR table: per model, the training mix it recalled best with (as the report keeps its best
    learning rate), judged on the seeds both mixes ran; the main setting per seed, near and far keys, the longest
    test, and state size."""
    import benchmark_recall

    def better(a, b):  # the higher mean accuracy, over the seeds both mixes ran where they share some
        acc_a, acc_b = (dict(zip(r["seeds"], r["main_per_seed"])) for r in (a, b))
        common = set(acc_a) & set(acc_b)
        mean = lambda acc: statistics.mean(acc[s] for s in (common or acc))
        return mean(acc_a) > mean(acc_b)

    best = {}  # gpt-rotary and rwkv-gqa4-first vary one row each: the study page has them
    for path, mix in (("assets/recall/uniform/recall_runs.json", "uniform"), ("assets/recall/recall_runs.json", "64 / 4 ×5")):
        for r in recall_rows(path):
            if r["model"] not in ("gpt-rotary", "rwkv-gqa4-first") and (
                    r["model"] not in best or better(r, best[r["model"]][0])):
                best[r["model"]] = (r, mix)
    rows = [best[m] for m in benchmark_recall.LAYOUTS if m in best]
    main = "{}x{}".format(*benchmark_recall.MAIN)
    longest = "{}x{}".format(*benchmark_recall.TEST_SETTINGS[-1])
    acc = lambda cell, key="acc": "n/a" if cell is None or cell[key] is None else f"{cell[key]:.3f}"
    gpt = best["gpt"][0]["state_bytes_long"]
    # MQAR is learned in a sudden transition that a run may miss: the mean of the seeds hides which did
    per_seed = lambda r: " / ".join(f"{a:.3f}" for a in r["main_per_seed"]) + (
        f" (mean {statistics.mean(r['main_per_seed']):.3f})" if len(r["main_per_seed"]) > 1 else "")
    return table(["model (`layers`)", "state after 4,096 tokens (× GPT's)", "training mix",
                  "accuracy, 512 tokens / 64 pairs, per seed", "key within / beyond the SWA window",
                  "2,048 tokens / 64 pairs", "seeds"],
                 [[f"`{r['model']}` ({benchmark_recall.layout_letters(r['model'])})",
                   f"{r['state_bytes_long'] / 1024:,.0f} KiB ({r['state_bytes_long'] / gpt:.2f}×)", mix,
                   per_seed(r), f"{acc(r['cells'][main], 'acc_near')} / {acc(r['cells'][main], 'acc_far')}",
                   acc(r["cells"][longest]), ", ".join(str(s) for s in r["seeds"])] for r, mix in rows])


# ----------------------------------------------------------------------------------------------------
# tools/count_ops.py and benchmark_training.py: TimeMix without a loop over chunks


def op_counts(name):
    """{(version, kind): [count at each T]} and the T's, from a count_ops.py output."""
    lines = open(os.path.join(ROOT, "assets/timemix_loopfree", name)).read().splitlines()
    head = next(line for line in lines if line.startswith("version"))
    Ts = [int(t) for t in re.findall(r"T=(\d+)", head.split("ratios")[0])]
    counts = {}
    for line in lines[lines.index(head) + 1:]:
        version, _, kind, *rest = line.split()
        counts[(version, kind)] = [int(x) for x in rest[:len(Ts)]]
    return Ts, counts


def loopfree_ops():
    Ts, before = op_counts("count_ops_main.txt")
    _, after = op_counts("count_ops_branch.txt")
    i256, i1024 = Ts.index(256), Ts.index(1024)
    rows = [[v, kind, *(f"{c[i256]} → {c[i1024]} ({c[i1024] / c[i256]:.3f}×)" for c in (before[(v, kind)], after[(v, kind)]))]
            for v, kind in before]
    return table(["version", "operators", "loop over chunks: T=256 → 1024 (ratio)", "no loop: T=256 → 1024 (ratio)"], rows)


def loopfree_speed():
    def at(name):
        return {r["model"]: r for r in load(f"assets/timemix_loopfree/benchmark_training_cpu_{name}.json")["results"]}
    before, after = at("main"), at("branch")
    cell = lambda r: f"{r['tokens_per_s']['median']:,.0f} ({r['vs_gpt']:.2f}×)"
    return table(["model, T = 1024", "loop over chunks: tok/s (× GPT)", "no loop: tok/s (× GPT)", "change of the ratio to GPT"],
                 [[MODELS[m], cell(before[m]), cell(after[m]), f"{after[m]['vs_gpt'] / before[m]['vs_gpt']:.2f}×"]
                  for m in before if m != "gpt"])


# ----------------------------------------------------------------------------------------------------
# benchmark_rwkv_runtime.py


def rwkv_runtime():
    d = load("assets/rwkv7_import/benchmark_rwkv_runtime.json")
    c, g, tok = d["config"], d["greedy"], d["decode_tok_s"]
    ratio = d["ratio_vs_runtime"]
    return table(["check (a random RWKV-7 file of the 0.1B shape, float32)", "result"], [
        [f"logits, whole sequence, max relative error ({c['n_layer']} x {c['n_embd']}, vocabulary {c['vocab_size']:,})",
         f"{d['rel_err']['sequence']:.1e}"],
        ["logits, token by token, max relative error", f"{d['rel_err']['token_by_token']:.1e}"],
        ["greedy tokens identical to the runtime's", f"{g['identical_prefix']} of {g['n']}"],
        [f"decoding tokens/s, batch 1, {d['threads']} threads: generate.py / the runtime (`cpu fp32`), median of 3",
         f"{ratio['generate.py']:.2f}× ({tok['generate.py']['median']:.2f} / {tok['runtime']['median']:.2f})"],
        [f"the same, `generate.py {best_flag(d)}` / the runtime (greedy tokens identical: "
         f"{g.get('best_identical_prefix', g['identical_prefix'])} of {g['n']})",
         f"{ratio['best']:.2f}× ({tok['best']['median']:.2f} / {tok['runtime']['median']:.2f})"]])


def best_flag(d):
    return "--int8" if d["best_dtype"] == "int8" else f"--dtype {d['best_dtype']}"


def rwkv_runtime_decode():
    d = load("assets/rwkv7_import/benchmark_rwkv_runtime.json")
    names = {"runtime": "rwkv runtime, `cpu fp32`", "generate.py": "ours, generate.py float32",
             "best": f"ours, generate.py {best_flag(d)}"}
    runtime = d["decode_tok_s"]["runtime"]["median"]
    return table(["decode path", "tokens/s, median", "min", "max", "× the runtime"],
                 [[names[k], f"{v['median']:.2f}", f"{v['min']:.2f}", f"{v['max']:.2f}", f"{v['median'] / runtime:.2f}×"]
                  for k, v in d["decode_tok_s"].items()])


def rwkv_finetune():
    text = open(os.path.join(ROOT, "assets/rwkv7_import/finetune.txt")).read()
    evals = re.findall(r"step (\d+): train loss ([\d.]+), val loss ([\d.]+)", text)
    rows = [[f"{int(s)}" + (" (imported)" if s == "0" else ""), f"{float(t):.3f}", f"{float(v):.3f}"] for s, t, v in evals]
    drop = float(evals[0][2]) - float(evals[-1][2])
    return table(["step", "train loss", "val loss"], rows) + f"\nThe val loss falls by {drop:.2f} nats in {evals[-1][0]} steps.\n"


# ----------------------------------------------------------------------------------------------------


def pages():
    out = [os.path.join(ROOT, "README.md")]
    assets = os.path.join(ROOT, "assets")
    out += sorted(os.path.join(assets, d, "README.md") for d in os.listdir(assets)
                  if os.path.isfile(os.path.join(assets, d, "README.md")))
    return out


def render(text):
    return BLOCK.sub(lambda m: m.group(1) + globals()[m.group(2)]() + m.group(4), text)


def main():
    import argparse
    argparse.ArgumentParser(description="Rewrite the generated results blocks of README.md and assets/*/README.md "
                            "from the saved outputs.").parse_args()
    for page in pages():
        with open(page, encoding="utf-8") as f:
            text = f.read()
        new = render(text)
        if new != text:
            with open(page + ".tmp", "w", encoding="utf-8") as f:
                f.write(new)
            os.replace(page + ".tmp", page)
            print(f"rewrote {os.path.relpath(page, ROOT)}")


if __name__ == "__main__":
    main()
