"""What an evaluation writes: results JSON, per-problem trajectories JSONL, a readable Markdown report.

Transcripts are decoded by ledger segment (prompt / sampled / tool / template), never by
re-tokenising text, so the report shows exactly the tokens the model saw and wrote. Template glue
(role headers, end-of-turn markers) is left out of the transcript; it carries no content.

"Worst" failures, shown first: problems no sample solved, ranked by how the best-looking failing
sample ended (cut off by a limit before a tool error before no answer before a wrong answer),
then by length. That order puts broken behaviour (rambling, crashing tools) ahead of honest
mistakes, which is what a person debugging a run looks for first.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from agentic_gcpo.evaluate import EvalResult, ProblemEval
from agentic_gcpo.ledger import Source, Trajectory

RESULTS_FILE, TRAJECTORIES_FILE, REPORT_FILE = "results.json", "trajectories.jsonl", "report.md"


def _clean(v: Any) -> Any:
    return None if isinstance(v, float) and not math.isfinite(v) else v


def _severity(t: Trajectory) -> tuple[int, int, int, int]:
    cut = t.finish_reason != "stop"
    tool_err = any(c.status != "ok" for c in t.tool_calls)
    return (int(cut), int(tool_err), int(t.extracted_answer is None), len(t.token_ids))


def worst_failures(result: EvalResult, n: int) -> list[tuple[ProblemEval, Trajectory]]:
    failed = [p for p in result.problems if p.c == 0 and p.trajectories]
    picks = [(p, max(p.trajectories, key=_severity)) for p in failed]
    picks.sort(key=lambda pt: _severity(pt[1]), reverse=True)
    return picks[:n]


def _fence(text: str, info: str = "text") -> str:
    ticks = "~~~~"
    while ticks in text:
        ticks += "~"
    return f"{ticks}{info}\n{text.rstrip()}\n{ticks}"


def transcript(t: Trajectory, tokenizer: Any, question: str | None = None) -> str:
    """One trajectory as Markdown: the question, then each model turn and tool output in order."""
    parts: list[str] = []
    if question is not None:
        parts.append("**User**\n\n" + _fence(question))
    turn = 0
    for src, ids in t.segments():
        if src == Source.PROMPT and question is None:
            parts.append("**Prompt**\n\n" + _fence(tokenizer.decode(ids)))
        elif src == Source.SAMPLED:
            turn += 1
            parts.append(f"**Model, turn {turn}**\n\n" + _fence(tokenizer.decode(ids)))
        elif src == Source.TOOL:
            parts.append("**Tool output**\n\n" + _fence(tokenizer.decode(ids)))
    calls = ", ".join(f"{c.name}:{c.status}" for c in t.tool_calls) or "none"
    parts.append(
        f"*finish: `{t.finish_reason}` | extracted: `{t.extracted_answer}` | reference: `{t.reference}` | "
        f"tool calls: {calls} | tokens: {len(t.token_ids) - t.prompt_len} after the prompt*"
    )
    return "\n\n".join(parts)


def _table(rows: list[tuple[str, str]]) -> str:
    return "\n".join(["| metric | value |", "| --- | --- |"] + [f"| {a} | {b} |" for a, b in rows])


def _fmt(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:.4f}" if abs(v) < 1000 else f"{v:.0f}"
    return str(v)


def markdown_report(result: EvalResult, n_failures: int = 5, title: str = "Evaluation report") -> str:
    m, s = result.metrics, result.settings
    k = s.get("k", 1)
    head = ["pass@1", f"pass@{k}", f"maj@{k}"] if k > 1 else ["pass@1"]
    lines = [f"# {title}", ""]
    if s.get("command"):
        lines += ["```", s["command"], "```", ""]
    lines += [
        f"{int(m.get('problems', 0))} problems, k = {k}, tools: {', '.join(s.get('tools', [])) or 'none'}.",
        "",
        "## Headline",
        "",
        _table([(h, _fmt(m.get(h, float("nan")))) for h in head]),
        "",
        "## Everything measured",
        "",
        _table([(key, _fmt(v)) for key, v in sorted(m.items())]),
        "",
        "## Settings",
        "",
        _fence(json.dumps({k2: v for k2, v in s.items() if k2 != "system_prompt"}, indent=2), "json"),
        "",
        "System prompt:",
        "",
        _fence(s.get("system_prompt", "")),
        "",
        f"## Worst failures (up to {n_failures})",
        "",
        "Problems no sample solved, cut-off and tool-error samples first (see `agentic_gcpo/report.py`).",
        "",
    ]
    worst = worst_failures(result, n_failures)
    if not worst:
        lines.append("None: every problem was solved by at least one sample.")
    for i, (p, t) in enumerate(worst, 1):
        lines += [f"### {i}. `{p.problem.id}`", "", transcript(t, result.tokenizer, p.problem.question), ""]
    return "\n".join(lines) + "\n"


def problem_record(p: ProblemEval, tokenizer: Any) -> dict[str, Any]:
    return {
        "id": p.problem.id,
        "question": p.problem.question,
        "reference": p.problem.reference,
        "n": p.n,
        "correct": p.c,
        "majority": p.majority,
        "maj_correct": p.maj_correct,
        "votes": p.votes,
        "samples": [t.to_json(tokenizer) for t in p.trajectories],
    }


def write_results(
    result: EvalResult, out_dir: str | Path, n_failures: int = 5, title: str = "Evaluation report"
) -> dict[str, Path]:
    """Write results.json, trajectories.jsonl (one line per problem) and report.md into out_dir."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = {name: out / name for name in (RESULTS_FILE, TRAJECTORIES_FILE, REPORT_FILE)}
    summary = {
        "metrics": {k: _clean(v) for k, v in result.metrics.items()},
        "settings": result.settings,
        "per_problem": [
            {
                "id": p.problem.id,
                "n": p.n,
                "correct": p.c,
                "majority": p.majority,
                "maj_correct": p.maj_correct,
            }
            for p in result.problems
        ],
    }
    paths[RESULTS_FILE].write_text(json.dumps(summary, indent=2, default=str) + "\n")
    with paths[TRAJECTORIES_FILE].open("w") as f:
        for p in result.problems:
            f.write(json.dumps(problem_record(p, result.tokenizer), default=str) + "\n")
    paths[REPORT_FILE].write_text(markdown_report(result, n_failures, title))
    return paths
