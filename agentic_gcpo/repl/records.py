"""Saved trajectories read back as `Trajectory` records, for `agentic-gcpo show` and the REPL.

Two files hold them: a training run's `samples.jsonl` (one trajectory a line: `Trajectory.to_json`
plus `step`) and an eval's `trajectories.jsonl` (one problem a line, its trajectories under
`samples`, with the question). The REPL's `/save` writes the first shape.

Per-token text needs the tokenizer the run used; `find_tokenizer` looks next to the file (a run
directory's checkpoints or its config's model), and the views fall back to the saved segment texts
without one.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

from agentic_gcpo.ledger import ToolCallRecord, Trajectory

_FIELDS = {f.name for f in fields(Trajectory)}


class RecordError(ValueError):
    """A file that does not hold saved trajectories; the message names the file and line."""


@dataclass
class SavedTrajectory:
    traj: Trajectory
    where: str  # file:line, for headers
    question: str | None = None
    step: int | None = None
    segment_texts: list[str] | None = None  # decoded runs, as saved (used when no tokenizer is found)


def trajectory_from_json(d: dict[str, Any]) -> Trajectory:
    """The inverse of `Trajectory.to_json` (extra keys such as `step` or `segments` are ignored)."""
    kw = {k: v for k, v in d.items() if k in _FIELDS}
    kw["sampler_logprobs"] = [math.nan if x is None else float(x) for x in d.get("sampler_logprobs", [])]
    kw["turn_spans"] = [tuple(s) for s in d.get("turn_spans", [])]
    kw["tool_calls"] = [ToolCallRecord(**c) for c in d.get("tool_calls", [])]
    t = Trajectory(**kw)
    if not (len(t.token_ids) == len(t.sources) == len(t.sampler_logprobs)):
        raise ValueError("token_ids, sources and sampler_logprobs have different lengths")
    return t


def _saved(d: dict[str, Any], where: str, question: str | None) -> SavedTrajectory:
    segs = d.get("segments")
    return SavedTrajectory(
        trajectory_from_json(d),
        where,
        question,
        d.get("step"),
        [s["text"] for s in segs] if isinstance(segs, list) else None,
    )


def load_records(path: str | Path) -> list[SavedTrajectory]:
    """Every trajectory in a samples.jsonl / trajectories.jsonl file, in file order."""
    p = Path(path)
    if not p.is_file():
        raise RecordError(f"'{p}' not found; give a run's samples.jsonl or an eval's trajectories.jsonl")
    out: list[SavedTrajectory] = []
    with p.open(encoding="utf-8") as f:
        for n, line in enumerate(f, start=1):
            if not line.strip():
                continue
            where = f"{p.name}:{n}"
            try:
                d = json.loads(line)
                if not isinstance(d, dict):
                    raise ValueError("not a JSON object")
                if "samples" in d:  # an eval's line: one problem, its k trajectories
                    for j, sample in enumerate(d["samples"]):
                        out.append(_saved(sample, f"{where}#{j}", d.get("question")))
                else:
                    out.append(_saved(d, where, d.get("question")))
            except (ValueError, TypeError, KeyError) as e:
                raise RecordError(
                    f"{where}: not a saved trajectory ({e}); expected lines of a run's samples.jsonl "
                    "or an eval's trajectories.jsonl"
                ) from None
    if not out:
        raise RecordError(f"'{p}' holds no trajectories")
    return out


def question_from_prompt(prompt_text: str) -> str | None:
    """The last user message of a ChatML prompt (SmolLM2's template); None for other templates."""
    found = re.findall(r"<\|im_start\|>user\n(.*?)<\|im_end\|>", prompt_text, flags=re.S)
    return found[-1].strip() if found else None


def find_tokenizer(path: str | Path, model: str | None = None) -> Any:
    """The tokenizer for a saved file: `model` if given; else a run directory's checkpoint or
    config model next to the file; else the embedded model's (every shipped model shares it).
    None when none can be loaded (the views then show saved text instead of tokens)."""
    from agentic_gcpo.models import EMBEDDED, ModelLoadError, load_tokenizer

    candidates: list[str] = [model] if model else []
    if not model:
        run = Path(path).resolve().parent
        ckpts = run / "checkpoints"
        if ckpts.is_dir():
            candidates += [
                str(d) for d in sorted(ckpts.iterdir(), reverse=True) if (d / "config.json").is_file()
            ]
        cfg = run / "config.yaml"
        if cfg.is_file():
            import yaml

            name = (yaml.safe_load(cfg.read_text()) or {}).get("model", {}).get("path")
            if isinstance(name, str):
                candidates.append(name)
        candidates.append(EMBEDDED)
    for name in candidates:
        try:
            return load_tokenizer(EMBEDDED if name == "tiny" else name)
        except (ModelLoadError, OSError, ValueError):
            if model:
                raise
    return None
