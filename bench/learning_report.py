"""The learning bench's report: Wilson intervals, the issue's bar checks, the markdown table and the
plot. bench/learning.py runs the arms and writes results.json; this module only reads that dict, so
bench/seeds.py and the tests use it without training anything.
"""

from __future__ import annotations

import math
from pathlib import Path

EPS = 1e-9  # counts over n make fractions; 0.6 - 0.3 must count as 30 points


def wilson(k: int, n: int, z: float = 1.96) -> tuple[float, float]:
    """95 % Wilson score interval of k successes in n trials."""
    if n == 0:
        return 0.0, 1.0
    p, d = k / n, 1 + z * z / n
    c, h = (p + z * z / (2 * n)) / d, z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / d
    return max(0.0, c - h), min(1.0, c + h)


def pc(x) -> str:
    return "n/a" if x is None else f"{100 * x:.1f} %"


def checks(arms: dict) -> list[dict]:
    """The issue's bar, each met / not met (None: not measured) with its numbers."""

    def f(a: str | None, s: str) -> dict:
        return (arms.get(a) or {}).get("final", {}).get(s, {}) if a else {}

    def acc(a: str | None, s: str) -> float | None:
        return f(a, s).get("accuracy")

    out = []

    def add(name: str, met: bool | None, detail: str) -> None:
        out.append({"check": name, "met": met, "detail": detail})

    # The arith bars for each start: from the untouched model, and after the same SFT stage (where
    # the GRPO control is sft+grpo). An SFT pair is checked only when its GCPO arm ran.
    for gname, rname, label in (("gcpo", "grpo", "GCPO"), ("sft+gcpo", "sft+grpo", "SFT then GCPO")):
        g, r = acc(gname, "arith"), acc(rname, "arith")
        if gname != "gcpo" and g is None:
            continue
        add(f"arith test: {label} >= 60 %", None if g is None else g >= 0.6 - EPS, f"{gname} {pc(g)}")
        gap = None if None in (g, r) else g - r
        add(
            f"arith test: {label} >= {label.replace('GCPO', 'GRPO')} + 30 points",
            None if gap is None else gap >= 0.3 - EPS,
            f"{gname} {pc(g)}, {rname} {pc(r)}, difference {pc(gap)}",
        )
    gcpo_recipes = ("gcpo", "sft+gcpo")
    recipes = [a for a in gcpo_recipes if acc(a, "gsm8k") is not None]
    best = max(recipes, key=lambda a: acc(a, "gsm8k"), default=None)
    label = best or " / ".join(gcpo_recipes)  # neither evaluated on GSM8K: name what was looked for
    b, s, u = acc(best, "gsm8k"), acc("sft", "gsm8k"), acc("untouched", "gsm8k")
    add(
        "GSM8K test: best GCPO recipe >= SFT-only",
        None if None in (b, s) else b >= s,
        f"{label} {pc(b)}, sft {pc(s)}",
    )
    blo, uhi = f(best, "gsm8k").get("ci95", [None])[0], f("untouched", "gsm8k").get("ci95", [0, None])[1]
    add(
        "GSM8K test: best GCPO recipe above the untouched model, 95 % intervals not overlapping",
        None if None in (blo, uhi) else blo > uhi,
        f"{label} {pc(b)} (lower bound {pc(blo)}), untouched {pc(u)} (upper bound {pc(uhi)})",
    )
    for s in ("arith", "gsm8k"):
        t = f("gcpo", s).get("tool_call_rate")
        add(
            f"{s}: tool calls in >= 90 % of GCPO's final trajectories",
            None if t is None else t >= 0.9 - EPS,
            f"gcpo {pc(t)}",
        )
    return out


def cells(e: dict) -> list[str]:
    if "n" not in e:
        return ["-", "-"]
    lo, hi = e["ci95"]
    acc = f"{e['correct']}/{e['n']} = {100 * e['accuracy']:.1f} % [{100 * lo:.1f}, {100 * hi:.1f}]"
    return [acc, f"{100 * e['tool_call_rate']:.0f} %"]


def num(b: dict, key: str) -> str:
    return f"{b[key]:.0f}" if key in b else "-"


def table(res: dict) -> str:
    sets = res["args"]["eval_sets"].split(",")
    head = (
        "| arm | seq passes | generated tokens | train wall | "
        + " | ".join(f"{s} acc. [95 % CI] | {s} tool calls" for s in sets)
        + " | curve acc. start → end |"
    )
    lines = [head, "|" + "---|" * (head.count("|") - 1)]
    for name, a in res["arms"].items():
        b = a["budget"]
        final = [x for s in sets for x in cells(a.get("final", {}).get(s, {}))]
        c = a.get("curve", [])
        curve = f"{c[0]['accuracy']:.3f} → {c[-1]['accuracy']:.3f}" if c else "-"
        wall = num(b, "train_wall_s") + (" s" if "train_wall_s" in b else "")
        err = f" (error: {a['error']})" if a.get("error") else ""
        lines.append(
            f"| {name}{err} | {num(b, 'trained_seq_passes')} | {num(b, 'generated_tokens')} | {wall} | "
            + " | ".join(final)
            + f" | {curve} |"
        )
    lines.append("")
    for ch in res["checks"]:
        mark = {True: "met", False: "**not met**", None: "not measured"}[ch["met"]]
        lines.append(f"- {ch['check']}: {mark} ({ch['detail']})")
    dirty = " (with uncommitted changes)" if res["dirty"] else ""
    lines += [f"\n`{res['command']}`, commit {res['commit'][:10]}{dirty}", f"budget: {res['budget_rule']}"]
    return "\n".join(lines)


def plot(res: dict, path: Path, curve_set: str) -> None:
    """Curves (accuracy, tool calls) per arm and the final scores with their intervals, in one PNG."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib not installed: no plot (pip install matplotlib)")
        return
    fig, ax = plt.subplots(1, 3, figsize=(17, 4.5))
    marks = "osD^vP*X"
    for k, (name, a) in enumerate(res["arms"].items()):
        c = a.get("curve", [])
        if not c:
            continue
        kw = dict(
            marker=marks[k % len(marks)], linestyle=["-", "--", ":", "-."][k % 4], label=name, alpha=0.85
        )
        ax[0].plot([p["x"] for p in c], [p["accuracy"] for p in c], **kw)
        ax[1].plot([p["x"] for p in c], [p["tool_call_rate"] for p in c], **kw)
    ev = res["args"]["eval_limit"]
    ax[0].set(
        title=f"{curve_set.removeprefix('builtin:')} accuracy, first {ev} (greedy)",
        xlabel="sequence passes trained",
        ylim=(0, 1.02),
    )
    ax[1].set(
        title="held-out trajectories with a tool call", xlabel="sequence passes trained", ylim=(0, 1.02)
    )
    sets, names = res["args"]["eval_sets"].split(","), list(res["arms"])
    w = 0.8 / max(1, len(sets))
    for j, s in enumerate(sets):
        xs, ys, err = [], [], [[], []]
        for i, name in enumerate(names):
            e = res["arms"][name].get("final", {}).get(s, {})
            if "n" in e:
                xs.append(i + (j - (len(sets) - 1) / 2) * w)
                ys.append(e["accuracy"])
                err[0].append(e["accuracy"] - e["ci95"][0])
                err[1].append(e["ci95"][1] - e["accuracy"])
        ax[2].bar(xs, ys, w, yerr=err, capsize=3, label=s)
    ax[2].set_xticks(range(len(names)), names, rotation=30, ha="right")
    ax[2].set(title=f"final greedy pass@1 (95 % Wilson), first {res['args']['final_limit']}", ylim=(0, 1.02))
    for a in ax:
        a.grid(alpha=0.3)
        if a.get_legend_handles_labels()[0]:  # an SFT-only run without curve evals draws no curve
            a.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
