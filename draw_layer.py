"""
Draw one MicroRWKV layer: the residual stream going up through its five pre-norm residual sub-layers
(LayerNorm -> block -> add), and beside each block the recurrent state it carries between tokens, with its
shape and its size in bytes for batch 1 and float32 activations.

$ python draw_layer.py                                                    # GPTConfig defaults
$ python draw_layer.py --config config/train_tinystories_cpu.py --out assets/layer.png

--config is executed as train.py executes a config file (in a namespace holding GPTConfig's defaults and
__file__); the GPTConfig fields it assigns are used, every other key (batch_size, ...) is ignored. The image
goes to --out (default out/layer.png), written to a temp file and renamed; assets/ is only written when --out
names it. The state sizes are also printed as a table. Bad input is one line `error: ...` and exit code 1.
"""

import argparse
import dataclasses
import sys

from metrics import save_figure

FLOAT32 = 4  # bytes


def load_config(path=None):
    """A GPTConfig: the defaults, or the GPTConfig fields a config file assigns (other keys ignored)."""
    from configurator import read_keys  # its ConfigError is a ValueError
    from model import GPTConfig
    defaults = {f.name: f.default for f in dataclasses.fields(GPTConfig)}
    args = defaults if path is None else read_keys(path, defaults)
    config = GPTConfig(**args)  # validates the architecture (ValueError with the fields to change)
    if config.model_type != "microrwkv":
        raise ValueError(f"model_type={config.model_type!r}: draw_layer.py draws a MicroRWKV layer")
    return config


def ordinal(k):
    return f"{k}{'th' if 10 <= k % 100 <= 20 else {1: 'st', 2: 'nd', 3: 'rd'}.get(k % 10, 'th')}"


def human(n):
    for unit in ("B", "KiB", "MiB"):
        if n < 1024 or unit == "MiB":
            return f"{n:,} B" if unit == "B" else f"{n:,.1f} {unit}"
        n /= 1024


def sublayers(cfg):
    """The five sub-layers of one layer, in order, with the state each carries (batch 1, float32)."""
    C, N, L = cfg.n_embd, cfg.head_size, cfg.n_layer
    H, hd, W, KV = C // N, C // cfg.n_head, cfg.window_size, cfg.n_kv_head
    v7 = getattr(cfg, "rwkv_version", "x051a") == "x070"  # RWKV-7: a delta-rule state of the same shape
    tmix = 'RWKV-7 "x070" delta-rule' if v7 else 'RWKV-5 "x051a"'
    hidden = 4 * C if v7 else int(cfg.cmix_mult * C) // 32 * 32
    swa_layers, gqa_layers = attention_layers(cfg)

    def where(layers):
        return "" if len(layers) == L else f"only in layer{'s' * (len(layers) > 1)} {', '.join(str(i + 1) for i in layers)} ({len(layers)} of {L})"

    def off(layers, flag):
        if layers:
            return ""
        if getattr(cfg, "layers", ""):
            return f"off (layers={cfg.layers!r})"
        return f"off ({flag}=False)" if not getattr(cfg, flag) else f"in no layer (attn_every={cfg.attn_every} > n_layer={L})"

    return [
        dict(name="TimeMix", detail=f"{tmix} linear attention\n{H} heads x {N}", off="", note="",
             state="x_prev + S", shape=f"x_prev (1, {C}) + S (1, {H}, {N}, {N}) float32",
             nbytes=FLOAT32 * (C + H * N * N), per_token=0),
        dict(name="ChannelMix", detail=f"token-shift FFN, hidden {hidden}", off="",
             note="", state="x_prev", shape=f"x_prev (1, {C})", nbytes=FLOAT32 * C, per_token=0),
        dict(name="SWA", detail=f"sliding window {W}, {cfg.n_head} heads x {hd}", off=off(swa_layers, "use_swa"),
             note=where(swa_layers), state=f"window_size-1 = {max(W - 1, 0)} keys + values (constant)",
             shape=f"K, V: 2 x (1, {cfg.n_head}, {max(W - 1, 0)}, {hd})",
             nbytes=2 * max(W - 1, 0) * C * FLOAT32, per_token=0),
        dict(name="GQA", detail=f"{cfg.n_head} query heads share {KV} K/V heads", off=off(gqa_layers, "use_gqa"),
             note=where(gqa_layers), state="every past key and value",
             shape=f"K, V: 2 x (1, {KV}, T, {hd})", nbytes=0, per_token=2 * KV * hd * FLOAT32,
             formula="2 x n_kv_head x head_dim x T floats, grows"),
        dict(name="TinyMoE", detail=f"top-{cfg.num_active_experts} of {cfg.num_experts} experts (GELU MLPs, "
             f"{cfg.expert_dim} wide)", off="" if cfg.use_moe else "off (use_moe=False)", note="",
             state="none (position-wise)", shape="-", nbytes=0, per_token=0),
    ]


def attention_layers(cfg):
    """The layers (0-based) that carry SWA, and those that carry GQA."""
    from model import GPTConfig
    marks = [GPTConfig.layer_attention(cfg, i) for i in range(cfg.n_layer)]
    return [i for i, (swa, _) in enumerate(marks) if swa], [i for i, (_, gqa) in enumerate(marks) if gqa]


def partial_attention(cfg):
    """True when some layers have SWA or GQA and others do not."""
    swa, gqa = attention_layers(cfg)
    return any(0 < len(layers) < cfg.n_layer for layers in (swa, gqa))


def totals(cfg, rows):
    """(constant bytes, bytes per token) of a layer with every switched-on block, of a layer without SWA/GQA,
    and of the whole model (SWA and GQA counted in the layers that carry them)."""
    on = {r["name"]: r for r in rows if not r["off"]}
    swa_layers, gqa_layers = attention_layers(cfg)
    full = (sum(r["nbytes"] for r in on.values()), sum(r["per_token"] for r in on.values()))
    plain = (sum(r["nbytes"] for n, r in on.items() if n not in ("SWA", "GQA")), 0)
    swa = on["SWA"]["nbytes"] if "SWA" in on else 0
    gqa = on["GQA"]["per_token"] if "GQA" in on else 0
    model = (cfg.n_layer * plain[0] + len(swa_layers) * swa, len(gqa_layers) * gqa)
    return full, plain, model


def table(cfg, rows, source):
    full, plain, model = totals(cfg, rows)
    lines = [f"recurrent state per layer, batch 1, float32 ({source}: n_layer {cfg.n_layer} x n_embd {cfg.n_embd})",
             f"{'block':<16}{'bytes':>12}  state"]
    for r in rows:
        if r["off"]:
            nbytes, what = "off", r["off"]
        elif r["per_token"]:
            nbytes = f"{r['per_token']}/token"
            what = f"{r['shape']}: {r['formula']} ({human(r['per_token'] * cfg.block_size)} at T={cfg.block_size})"
        else:
            nbytes, what = str(r["nbytes"]), r["shape"] if r["nbytes"] else r["state"]
        lines.append(f"{r['name']:<16}{nbytes:>12}  {what}" + (f"; {r['note']}" if r["note"] and not r["off"] else ""))
    sums = [("layer", full, "")]
    if partial_attention(cfg):
        sums.append(("layer, no attn", plain, " (the layers without SWA/GQA)"))
    sums.append(("model", model, f" ({cfg.n_layer} layers)"))
    for name, (const, tok), what in sums:
        lines.append(f"{name:<16}{const:>12}  constant" + (f" + {tok}/token" if tok else "") + what)
    return "\n".join(lines)


COLORS = {"TimeMix": "#4c78a8", "ChannelMix": "#54a24b", "SWA": "#f58518", "GQA": "#e45756", "TinyMoE": "#b279a2"}


def draw(cfg, rows, source):
    from matplotlib.figure import Figure  # no pyplot: no global figure state, no GUI backend
    from matplotlib.patches import Circle, FancyBboxPatch

    fig = Figure(figsize=(9, 10))
    ax = fig.add_axes([0, 0, 1, 1])
    ax.set_xlim(0, 9)
    ax.set_ylim(0, 10)  # data units are inches
    ax.axis("off")
    grey, dark = "#a0a0a0", "#222222"

    def box(x0, y0, w, h, face, edge, dashed=False):
        ax.add_patch(FancyBboxPatch((x0, y0), w, h, boxstyle="round,pad=0,rounding_size=0.08", facecolor=face,
                                    edgecolor=edge, linewidth=1.3, linestyle="--" if dashed else "-"))

    def arrow(x0, y0, x1, y1, color=dark, style="-|>", ls="-"):
        ax.annotate("", (x1, y1), (x0, y0), arrowprops=dict(arrowstyle=style, color=color, lw=1.4, linestyle=ls,
                                                            shrinkA=0, shrinkB=0, mutation_scale=12))

    ax.text(4.5, 9.62, f"One MicroRWKV layer  (n_layer x n_embd = {cfg.n_layer} x {cfg.n_embd})", ha="center",
            fontsize=15, weight="bold")
    ax.text(4.5, 9.28, f"{source}: head_size {cfg.head_size}, n_head {cfg.n_head}, n_kv_head {cfg.n_kv_head}, "
            f"window_size {cfg.window_size}, block_size {cfg.block_size}" +
            (f"; layers {cfg.layers}" if getattr(cfg, "layers", "") else
             f"; SWA/GQA in every {ordinal(cfg.attn_every)} layer" if cfg.attn_every > 1 else ""), ha="center", fontsize=9.5, color="#555555")
    head = dict(fontsize=9.5, color="#555555", style="italic", va="bottom")
    ax.text(0.9, 8.72, "residual\nstream", ha="center", **head)
    ax.text(3.2, 8.72, "x = x + block(LayerNorm(x))", ha="center", **head)
    ax.text(7.2, 8.72, "state carried between tokens\n(batch 1, float32 activations)", ha="center", **head)
    ax.text(7.2, 8.38, "solid: written after token t    dashed: read at token t+1", ha="center", fontsize=7.5,
            color="#777777")

    xs, y_in, y_out, row_h, base0 = 0.9, 0.95, 8.62, 1.45, 1.2
    x_ln, w_ln, x_blk, w_blk, x_st, w_st = 1.35, 0.85, 2.55, 2.5, 5.55, 3.3
    yc = [base0 + row_h * i + 0.55 for i in range(len(rows))]
    ax.plot([xs, xs], [y_in, y_out - 0.12], color=dark, lw=2.2, zorder=1)
    arrow(xs, y_out - 0.2, xs, y_out)
    ax.text(xs + 0.15, y_in - 0.02, "x  (B, T, C) from the layer below", fontsize=9, va="center")
    ax.text(xs + 0.15, y_out - 0.06, "to the layer above", fontsize=9, va="center")

    for r, y in zip(rows, yc):
        on, color = not r["off"], COLORS[r["name"]]
        edge, face, text = (color, color + "30", dark) if on else (grey, "#f2f2f2", grey)
        y_add = y + 0.7
        # LayerNorm -> block -> add, tapped off the stream and added back above
        ax.plot([xs], [y], "o", color=edge if on else grey, ms=4.5, zorder=3)
        arrow(xs, y, x_ln, y, color=dark if on else grey)
        box(x_ln, y - 0.22, w_ln, 0.44, "white", edge, dashed=not on)
        ax.text(x_ln + w_ln / 2, y, "LayerNorm", ha="center", va="center", fontsize=8.5, color=text)
        arrow(x_ln + w_ln, y, x_blk, y, color=dark if on else grey)
        box(x_blk, y - 0.45, w_blk, 0.9, face, edge, dashed=not on)
        ax.text(x_blk + w_blk / 2, y + 0.2, r["name"], ha="center", va="center", fontsize=12, weight="bold",
                color=text)
        sub = r["detail"] if on else r["off"]
        if on and r["note"]:
            sub = f"{sub}\n{r['note']}"
        ax.text(x_blk + w_blk / 2, y - 0.17, sub, ha="center", va="center", fontsize=8, color=text, linespacing=1.15)
        mid = x_blk + w_blk / 2
        ax.plot([mid, mid, xs + 0.13], [y + 0.45, y_add, y_add], color=dark if on else grey, lw=1.4, zorder=1,
                linestyle="-" if on else "--")
        arrow(xs + 0.5, y_add, xs + 0.13, y_add, color=dark if on else grey)
        ax.add_patch(Circle((xs, y_add), 0.13, facecolor="white", edgecolor=dark if on else grey, lw=1.4, zorder=4))
        ax.text(xs, y_add - 0.01, "+", ha="center", va="center", fontsize=12, weight="bold", zorder=5,
                color=dark if on else grey)
        # the state beside the block
        if not on:
            lines = [("no state: block switched off", {})]
        elif r["per_token"]:
            lines = [(r["state"], dict(weight="bold")), (r["shape"], dict(family="monospace")),
                     (r["formula"], {}), (f"= {human(r['per_token'])}/token: {human(r['per_token'] * cfg.block_size)}"
                                          f" at T = {cfg.block_size}", dict(weight="bold", color=color))]
        elif r["nbytes"]:
            lines = [(r["state"], dict(weight="bold")), (r["shape"], dict(family="monospace")),
                     (human(r["nbytes"]) if r["nbytes"] < 1024 else f"{r['nbytes']:,} B = {human(r['nbytes'])}",
                      dict(weight="bold", color=color))]
        else:
            lines = [(r["state"], dict(weight="bold")), ("0 B: nothing is carried between tokens", {})]
        box(x_st, y - 0.5, w_st, 1.0, "white" if on else "#f7f7f7", edge, dashed=True)
        step = 0.22
        for i, (line, style) in enumerate(lines):
            style = dict(dict(fontsize=8.5 if style.get("family") != "monospace" else 7.8, color=text), **style)
            ax.text(x_st + 0.12, y + step * (len(lines) - 1) / 2 - step * i, line, va="center", **style)
        if on and (r["nbytes"] or r["per_token"]):
            arrow(x_blk + w_blk + 0.03, y + 0.12, x_st - 0.03, y + 0.12, color=color)
            arrow(x_st - 0.03, y - 0.12, x_blk + w_blk + 0.03, y - 0.12, color=color, ls="--")

    full, plain, model = totals(cfg, rows)
    grow = lambda tok: f" + {human(tok)}/token" if tok else " (constant)"
    per_layer = f"per layer: {human(full[0])}{grow(full[1])}"
    if partial_attention(cfg):
        per_layer = f"per layer: {human(full[0])}{grow(full[1])} with SWA/GQA, {human(plain[0])} without,"
    ax.text(4.5, 0.5, f"{per_layer}      whole model ({cfg.n_layer} layers): {human(model[0])}{grow(model[1])}",
            ha="center", fontsize=9.5, weight="bold")
    ax.text(4.5, 0.18, "parallel form: training over the whole sequence; "
            "recurrent form: one token at a time with these states", ha="center", fontsize=9.5, style="italic",
            color="#555555")
    return fig


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", help="a train.py config file (default: the GPTConfig defaults)")
    parser.add_argument("--out", default="out/layer.png", help="PNG to write (default: %(default)s)")
    args = parser.parse_args(argv)
    if not args.out.lower().endswith(".png"):
        print(f"error: --out must be a .png file, got {args.out}", file=sys.stderr)
        return 1
    try:
        cfg = load_config(args.config)
    except ValueError as e:  # ConfigError is a ValueError, and so is GPTConfig's own check
        print(f"error: {e}", file=sys.stderr)
        return 1
    source = args.config or "GPTConfig defaults"
    rows = sublayers(cfg)
    fig = draw(cfg, rows, source)
    try:
        save_figure(fig, args.out)
    except OSError as e:
        print(f"error: cannot write {args.out}: {e.strerror}", file=sys.stderr)
        return 1
    print(f"wrote {args.out}")
    print(table(cfg, rows, source))
    return 0


if __name__ == "__main__":
    sys.exit(main())
