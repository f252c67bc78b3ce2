"""Benchmark evaluation through the same engine and agent loop as training.

`evaluate(model, problems, k, tools, limits)` samples k trajectories per problem (tool-using or
plain), verifies each final answer with the training verifier and reports:

- ``pass@1``: mean over problems of c/n (the expected accuracy of one sample);
- ``pass@k``: the unbiased estimator 1 - C(n-c, k) / C(n, k) (Chen et al., 2021), averaged;
- ``maj@k``: majority vote over the extracted answers. Votes are *equivalence-aware*: answers are
  clustered with the verifier's own `is_equivalent` (so "0.5" and "\\frac{1}{2}" are one vote), the
  largest cluster wins, ties go to the cluster whose first member was sampled first, and the vote
  is correct when that cluster's first member verified as correct. Samples with no extractable
  answer do not vote; a problem where nobody answered counts as wrong.
- the training metrics over all samples (`metrics.rollout_metrics`: tool calls per trajectory,
  tool error rate, finish reasons, lengths) plus tokens per problem and throughput.

`eval_metrics(...)` is the in-training hook: it reuses the trainer's engine, chat format, tools and
sandbox and returns the same numbers with an ``eval/`` prefix.
"""

from __future__ import annotations

import math
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from agentic_gcpo.data import Problem
from agentic_gcpo.ledger import Trajectory
from agentic_gcpo.metrics import rollout_metrics
from agentic_gcpo.rollout.agent_loop import AgentLoop, LoopLimits
from agentic_gcpo.rollout.chat import DEFAULT_SYSTEM, ChatFormat
from agentic_gcpo.verify import check_modes, is_equivalent, verify

# chat.py's answer instruction starts with "Then" (it follows the python how-to); without tools
# the system prompt must stand on its own.
NO_TOOLS_SYSTEM = DEFAULT_SYSTEM + " Reason step by step, then give the final answer as \\boxed{answer}."


def pass_at_k(n: int, c: int, k: int) -> float:
    """Unbiased pass@k from n samples of which c are correct: 1 - C(n-c, k) / C(n, k).

    Computed as a product (1 - k/m for m in n-c+1..n) so large n cannot overflow a float.
    """
    if not 0 <= c <= n or k < 1:
        raise ValueError(f"need 0 <= c <= n and k >= 1 (got n={n}, c={c}, k={k})")
    if k > n:
        raise ValueError(f"pass@{k} needs at least {k} samples per problem, got {n}")
    if n - c < k:
        return 1.0
    return 1.0 - math.prod(1.0 - k / m for m in range(n - c + 1, n + 1))


def majority_vote(
    answers: list[str | None], correct: list[bool], timeout_s: float = 1.0
) -> tuple[str | None, bool, int]:
    """(winning answer, whether it is correct, its votes); equivalence-aware (see module doc)."""
    clusters: list[list[int]] = []  # indices into answers, first member = representative
    for i, a in enumerate(answers):
        if a is None:
            continue
        for cl in clusters:
            rep = answers[cl[0]]
            assert rep is not None
            # Same text is one vote without asking the verifier; otherwise ask it (time-limited).
            if a.strip() == rep.strip() or is_equivalent(a, rep, timeout_s):
                cl.append(i)
                break
        else:
            clusters.append([i])
    if not clusters:
        return None, False, 0
    best = max(clusters, key=lambda cl: (len(cl), -cl[0]))
    return answers[best[0]], bool(correct[best[0]]), len(best)


@dataclass
class ProblemEval:
    problem: Problem
    trajectories: list[Trajectory]
    majority: str | None = None
    maj_correct: bool = False
    votes: int = 0

    @property
    def n(self) -> int:
        return len(self.trajectories)

    @property
    def c(self) -> int:
        return sum(t.correct for t in self.trajectories)


@dataclass
class EvalResult:
    metrics: dict[str, float]
    problems: list[ProblemEval]
    settings: dict[str, Any] = field(default_factory=dict)
    tokenizer: Any = None  # for decoding transcripts in reports

    @property
    def trajectories(self) -> list[Trajectory]:
        return [t for p in self.problems for t in p.trajectories]


def score_trajectories(
    trajs: list[Trajectory], timeout_s: float = 2.0, modes: tuple[str, ...] | None = None
) -> None:
    """The training reward, written onto each trajectory (same verifier, same fields)."""
    for t in trajs:
        r = verify(t.final_text, t.reference, timeout_s, modes)
        t.extracted_answer, t.correct = r.extracted, r.correct
        t.reward = 1.0 if r.correct else 0.0


def summarise(problems: list[ProblemEval], k: int, wall_s: float | None = None) -> dict[str, float]:
    """Headline metrics over scored, voted problems (names shared by the CLI and the trainer hook)."""
    if not problems:
        return {}
    trajs = [t for p in problems for t in p.trajectories]
    npb = len(problems)
    m: dict[str, float] = {
        "pass@1": sum(p.c / p.n for p in problems) / npb,
        f"pass@{k}": sum(pass_at_k(p.n, p.c, k) for p in problems) / npb,
        f"maj@{k}": sum(p.maj_correct for p in problems) / npb,
        "problems": float(npb),
        "samples_per_problem": float(k),
    }
    m.update(rollout_metrics(trajs))
    for key in ("reward/mean", "reward/accuracy", "groups/all_correct_frac", "groups/all_fail_frac"):
        m.pop(key, None)  # pass@1 / pass@k say the same thing under the field's names
    gen = sum(t.num_policy_tokens for t in trajs)
    m["answers/none_frac"] = sum(t.extracted_answer is None for t in trajs) / len(trajs)
    m["tokens/generated_per_problem"] = gen / npb
    m["tokens/total_per_problem"] = sum(len(t.token_ids) - t.prompt_len for t in trajs) / npb
    reasons = Counter(t.finish_reason for t in trajs)
    for r, cnt in reasons.items():  # named reasons beyond the four standard ones (e.g. "error")
        m.setdefault(f"finish/{r}", cnt / len(trajs))
    if wall_s is not None:
        m["time/wall_s"] = wall_s
        m["time/generated_tokens_per_s"] = gen / wall_s if wall_s > 0 else 0.0
    return m


def _vote(pe: ProblemEval, timeout_s: float) -> None:
    answers = [t.extracted_answer for t in pe.trajectories]
    pe.majority, pe.maj_correct, pe.votes = majority_vote(
        answers, [t.correct for t in pe.trajectories], timeout_s
    )


def problems_per_call(max_batch_size: int, k: int) -> int:
    """Problems per agent-loop call: enough k-sample groups to fill the engine's batch once."""
    return max(1, max_batch_size // k)


def run_problems(
    loop: AgentLoop,
    problems: list[Problem],
    k: int,
    seed: int = 0,
    chunk: int = 32,
    verify_timeout_s: float = 2.0,
    modes: tuple[str, ...] | None = None,
    progress: Any = None,
) -> list[ProblemEval]:
    """Roll out k samples per problem, `chunk` problems per agent-loop call, then score and vote.

    `progress` (a tqdm bar or None) advances by problems, showing the running pass@1.
    """
    out: list[ProblemEval] = []
    correct = total = 0
    for start in range(0, len(problems), chunk):
        part = problems[start : start + chunk]
        trajs = loop.run(part, k, seed=seed, first_group_id=start)
        score_trajectories(trajs, verify_timeout_s, modes)
        for gi, prob in enumerate(part):
            pe = ProblemEval(prob, trajs[gi * k : (gi + 1) * k])
            _vote(pe, min(1.0, verify_timeout_s))
            out.append(pe)
            correct += pe.c
            total += pe.n
        if progress is not None:
            progress.update(len(part))
            progress.set_postfix_str(f"pass@1 {correct / max(1, total):.3f} ({correct}/{total})")
    return out


def make_chat(
    tokenizer: Any,
    tools: dict[str, Any],
    call_format: str = "auto",
    system: str | None = None,
    fewshot: int = 0,
) -> ChatFormat:
    """The training ChatFormat; with no tools: no tool instructions, few-shot or call stop strings."""
    if tools:
        return ChatFormat(tokenizer, tools, call_format, system, fewshot)
    # "fenced" with no python tool parses no call, so a plain model's code block is just text;
    # ChatFormat itself drops the stop strings and the (tool-using) few-shot examples.
    return ChatFormat(tokenizer, {}, "fenced", system if system is not None else NO_TOOLS_SYSTEM, 0)


def _load(model: Any, tokenizer: Any) -> tuple[Any, Any]:
    if not isinstance(model, str):
        if tokenizer is None:
            raise ValueError("pass the tokenizer with an in-memory model")
        return model, tokenizer
    from agentic_gcpo.models import load_named

    return load_named(model)


def evaluate(
    model: Any,
    problems: list[Problem],
    k: int = 1,
    tools: list[str] | tuple[str, ...] | None = ("python",),
    limits: LoopLimits | None = None,
    *,
    tokenizer: Any = None,
    tool_modules: list[str] | None = None,
    sandbox_cfg: Any = None,
    engine: str = "hf",
    dtype: str = "auto",
    max_batch_size: int = 32,
    call_format: str = "auto",
    system: str | None = None,
    fewshot: int = 0,
    seed: int = 0,
    verify_timeout_s: float = 2.0,
    extract_modes: tuple[str, ...] | list[str] | None = None,
    progress: bool = True,
) -> EvalResult:
    """Evaluate `model` ("embedded", "tiny", a directory, or an in-memory model + `tokenizer`).

    `tools=None` or `[]` evaluates without tools (no sandbox is started).
    """
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    if not problems:
        raise ValueError("no problems to evaluate")
    modes = check_modes(extract_modes)
    limits = limits or LoopLimits(max_turns=3, max_new_tokens_per_turn=256, max_total_tokens=1024)
    from agentic_gcpo.engines import make_engine
    from agentic_gcpo.sandbox import SandboxConfig, make_sandbox
    from agentic_gcpo.tool_registry import get_tools

    tool_map = get_tools(list(tools), tool_modules or []) if tools else {}
    model, tokenizer = _load(model, tokenizer)
    chat = make_chat(tokenizer, tool_map, call_format, system, fewshot)
    eng = make_engine(engine, model, tokenizer, dtype=dtype, max_batch_size=max_batch_size)
    sandbox = make_sandbox(sandbox_cfg or SandboxConfig()) if tool_map else None
    loop = AgentLoop(eng, chat, tool_map, sandbox, limits)
    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=len(problems), desc=f"eval k={k}", unit="problem", dynamic_ncols=True)
    t0 = time.perf_counter()
    done = False
    try:
        chunk = problems_per_call(max_batch_size, k)
        results = run_problems(loop, problems, k, seed, chunk, verify_timeout_s, modes, bar)
        done = True
    finally:
        if bar is not None:
            bar.close()
        if sandbox is not None:  # first: a running tool call returns once its worker is killed
            sandbox.close()
        loop.close(wait=done)  # interrupted: queued tool calls are cancelled, running ones not joined
    wall = time.perf_counter() - t0
    prec = getattr(eng, "precision", None)  # what 'auto' resolved to, where the backend resolves it
    settings = {
        "k": k,
        "tools": sorted(tool_map),
        "call_format": chat.call_format,
        "system_prompt": chat.system,
        "fewshot": fewshot if tool_map else 0,
        "limits": vars(limits),
        "seed": seed,
        "engine": engine,
        "dtype": prec.dtype if prec else dtype,
        "dtype_reason": prec.reason if prec else "",
        "max_batch_size": max_batch_size,
        "verify_timeout_s": verify_timeout_s,
        "extract_modes": list(modes),
        "majority_vote": "equivalence-aware (verifier is_equivalent), ties to the earliest sample",
    }
    return EvalResult(summarise(results, k, wall), results, settings, tokenizer)


def eval_metrics(
    engine: Any,
    chat: ChatFormat,
    tools: dict[str, Any],
    sandbox: Any,
    problems: list[Problem],
    limits: LoopLimits,
    k: int = 1,
    seed: int = 0,
    prefix: str = "eval/",
) -> dict[str, float]:
    """In-training evaluation on a held-out split: the trainer's own engine/chat/tools/sandbox.

    Returns e.g. {"eval/pass@1": ..., "eval/pass@k" ..., "eval/tools/calls_per_traj": ...,
    "eval/time/wall_s": ...}; the engine must already hold the current weights.
    """
    loop = AgentLoop(engine, chat, tools, sandbox, limits)
    t0 = time.perf_counter()
    try:
        chunk = problems_per_call(getattr(engine, "max_batch_size", 32), k)
        results = run_problems(loop, problems, k, seed, chunk=chunk)
    except BaseException:  # Ctrl-C or a failure: do not wait for tool calls still running; re-raised
        loop.close(wait=False)
        raise
    loop.close()
    m = summarise(results, k, time.perf_counter() - t0)
    return {f"{prefix}{name}": v for name, v in m.items()}
