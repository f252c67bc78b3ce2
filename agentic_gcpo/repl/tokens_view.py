"""The token view: a trajectory exactly as the trainer sees it.

Tokens are grouped into runs of one source (prompt, sampled, tool, template). Each run gets a
header with its source, its loss mask and whether it is trained on; sampled and template runs are
shown token by token (sampled ones with the sampler's logprob), prompt and tool runs as text. The
mask shown is `Trajectory.loss_mask`, the one the loss uses, never recomputed here.
"""

from __future__ import annotations

import math
import shutil
from collections.abc import Callable

from agentic_gcpo.ledger import Source, Trajectory
from agentic_gcpo.repl.style import Style

LEGEND = (
    "prompt: mask 0 · sampled: mask 1, trained on · tool: mask 0, not trained on · "
    "template: mask 0, not trained on"
)
_TRAINED = {1: "trained on", 0: "not trained on"}


def token_text(text: str) -> str:
    """A token's text with its whitespace visible, quoted so leading spaces show."""
    return (
        '"' + text.replace("\\", "\\\\").replace("\n", "\\n").replace("\t", "\\t").replace('"', '\\"') + '"'
    )


def _wrap(cells: list[str], plain_lengths: list[int], width: int, indent: str = "    ") -> list[str]:
    """Cells joined by two spaces, wrapped to `width` by their visible (uncoloured) length."""
    lines: list[str] = []
    line, used = indent, len(indent)
    for cell, n in zip(cells, plain_lengths):
        if used > len(indent) and used + 2 + n > width:
            lines.append(line)
            line, used = indent, len(indent)
        if used > len(indent):
            line, used = line + "  ", used + 2
        line, used = line + cell, used + n
    if used > len(indent):
        lines.append(line)
    return lines


def render_tokens(
    t: Trajectory,
    decode: Callable[[list[int]], str] | None,
    style: Style,
    width: int | None = None,
    segment_texts: list[str] | None = None,
) -> str:
    """The whole trajectory, run by run. Without `decode` (no tokenizer), runs are shown as the
    saved `segment_texts` and sampled tokens by id, so a file is still readable."""
    s = style
    width = width or shutil.get_terminal_size((110, 40)).columns
    mask = t.loss_mask
    counts = {src: 0 for src in Source}
    for src in t.sources:
        counts[Source(src)] += 1
    lines = [
        s(
            f"tokens of {'the GOLDEN' if t.is_golden else 'a sampled'} trajectory · problem {t.problem_id} · "
            f"{len(t.token_ids)} tokens: "
            + ", ".join(f"{src.name.lower()} {counts[src]}" for src in Source)
            + f" · loss-mask tokens {sum(mask)}",
            "bold",
        ),
        "legend: " + " · ".join(s.source(part, src) for part, src in zip(LEGEND.split(" · "), Source)),
    ]
    if t.is_golden:
        lines.append(
            "golden: its 'sampled' turns were written for the policy (no sampler logprob, shown as —) "
            "and train like sampled ones; tool output and template glue are not trained on."
        )
    pos = 0
    for k, (src, ids) in enumerate(t.segments()):
        src = Source(src)
        m = mask[pos]
        lp = [t.sampler_logprobs[i] for i in range(pos, pos + len(ids))]
        head = f"[{src.name.lower()} · mask {m} · {_TRAINED[m]} · #{pos}-#{pos + len(ids) - 1}"
        if src == Source.SAMPLED:
            known = [x for x in lp if not math.isnan(x)]
            head += f" · mean logprob {sum(known) / len(known):.3f}" if known else " · no sampler logprobs"
        lines.append(s.source(head + "]", src))
        if decode is None:
            text = segment_texts[k] if segment_texts and k < len(segment_texts) else None
            if text is not None:
                lines += [f"    {s.source(line, src)}" for line in text.split("\n")]
            else:
                lines.append("    ids " + " ".join(map(str, ids)))
        elif src in (Source.PROMPT, Source.TOOL):
            lines += [f"    {s.source(line, src)}" for line in decode(ids).split("\n")]
        else:
            texts = [token_text(decode([i])) for i in ids]
            if src == Source.SAMPLED:
                tails = ["—" if math.isnan(x) else f"{x:.2f}" for x in lp]
                cells = [s.source(a, src) + " " + s(b, "dim") for a, b in zip(texts, tails)]
                plain = [len(a) + 1 + len(b) for a, b in zip(texts, tails)]
            else:
                cells, plain = [s.source(a, src) for a in texts], [len(a) for a in texts]
            lines += _wrap(cells, plain, width)
        pos += len(ids)
    return "\n".join(lines)
