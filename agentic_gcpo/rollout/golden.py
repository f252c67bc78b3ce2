"""Golden trajectories for GCPO: verified, tool-using solutions in the rollout's own token format.

Source 'reference' (GSM8K): the calculator annotations of the worked solution, `<<48/2=24>>`,
become one python tool call that prints each expression; the call really runs in the sandbox
through the registered `python` tool, so its observation is rendered exactly as in a rollout. The
assistant then boxes the answer (`golden.style`: after restating the solution, or with the
solution's lines as code comments before each print). A solution without usable
annotations becomes a tool-free golden. Source 'teacher' (`golden_teacher.py`): the first verified
of k teacher-model rollouts, re-rendered in the policy's format. A row's own `golden` message list
is used when present, whatever the source.

Every golden trajectory is verified with the same verifier as rollouts before it may be injected;
one that fails is never injected and is counted. So is one whose tool call returned an error (or
names an unknown tool): its calls are what it teaches. One longer than the rollout limits is
counted, and refused under golden.over_limits='refuse'.
"""

from __future__ import annotations

import ast
import re
import threading
import uuid
from dataclasses import asdict, dataclass
from typing import Any

from agentic_gcpo.data import Problem
from agentic_gcpo.ledger import Source, ToolCallRecord, Trajectory
from agentic_gcpo.rollout.agent_loop import LoopLimits
from agentic_gcpo.rollout.chat import ChatFormat
from agentic_gcpo.rollout.golden_teacher import TeacherGoldens
from agentic_gcpo.tool_registry import ToolContext
from agentic_gcpo.verify import verify

ANNOTATION = re.compile(r"<<([^<>]*?)=([^<>]*?)>>")
_ALLOWED = (ast.Expression, ast.BinOp, ast.UnaryOp, ast.Constant, ast.operator, ast.unaryop)


def python_expr(expr: str) -> str | None:
    """A GSM8K annotation's left side as a plain arithmetic Python expression, or None."""
    e = expr.strip().replace("×", "*").replace("÷", "/").replace("^", "**").replace("$", "")
    e = re.sub(r"(?<=\d),(?=\d{3})", "", e)  # 1,000 -> 1000
    e = re.sub(r"(\d+(?:\.\d+)?)\s*%", r"(\1/100)", e)
    e = re.sub(r"(?<=[\d)])\s*x\s*(?=[\d(])", "*", e)
    if not e:
        return None
    try:
        tree = ast.parse(e, mode="eval")
    except (SyntaxError, ValueError):
        return None
    if not all(isinstance(n, _ALLOWED) for n in ast.walk(tree)):
        return None
    if any(isinstance(n, ast.Constant) and not isinstance(n.value, (int, float)) for n in ast.walk(tree)):
        return None
    return e


_RESULT = re.compile(r"\s*=\s*\$?\s*<<[^<>]*>>\S*?(?=[.,;:!?]?(?:\s|$))")
STYLES = ("restate", "commented")


def reference_turns(problem: Problem, style: str = "restate") -> tuple[str | None, str]:
    """(code for one python call or None, final assistant text) from a worked solution.

    'restate': the code prints every annotated expression, then the assistant restates the worked
    solution (annotations removed) and boxes the answer. 'commented': each solution line becomes a
    code comment (its computed results removed, so the comment is the plan and Python does the
    arithmetic) followed by prints of that line's expressions; the final turn only boxes the answer.
    The second puts the reasoning *before* the numbers are chosen and keeps the answer turn short.
    """
    if style not in STYLES:
        raise ValueError(f"unknown golden style {style!r}; valid: {', '.join(STYLES)}")
    exprs = [x for x in (python_expr(m.group(1)) for m in ANNOTATION.finditer(problem.solution)) if x]
    boxed = f"The answer is \\boxed{{{problem.reference}}}."
    prose = ANNOTATION.sub("", problem.solution).strip()
    if not exprs:  # nothing to run: a tool-free golden
        return None, (prose + "\n" if prose else "") + boxed
    if style == "restate":
        return "\n".join(f"print({e})" for e in exprs), (prose + "\n" if prose else "") + boxed
    lines = []
    for raw in problem.solution.splitlines():
        # "48/2 = <<48/2=24>>24" -> "48/2"; a bare "<<12=12>>12" keeps its result, not the markup
        comment = " ".join(ANNOTATION.sub("", _RESULT.sub("", raw)).split())
        line_exprs = [x for x in (python_expr(m.group(1)) for m in ANNOTATION.finditer(raw)) if x]
        if comment:
            lines.append(f"# {comment}")
        lines += [f"print({e})" for e in line_exprs]
    return "\n".join(lines), boxed


@dataclass
class GoldenStats:
    built: int = 0
    verify_failures: int = 0  # goldens refused by the verifier
    tool_errors: int = 0  # goldens refused because a tool call failed (error status or unknown tool)
    over_limits: int = 0  # verified goldens longer than the rollout limits (refused only if asked)

    def refusals(self) -> dict[str, int]:
        """The counters a step reports as differences, named as their gcpo/* metrics."""
        return {
            "golden_verify_failures": self.verify_failures,
            "golden_tool_errors": self.tool_errors,
            "golden_over_limits": self.over_limits,
        }


class GoldenSource:
    """Builds (once per problem, cached) and verifies golden trajectories."""

    def __init__(
        self,
        chat: ChatFormat,
        tools: dict[str, Any],
        sandbox: Any,
        verify_timeout_s: float = 2.0,
        style: str = "restate",
        teacher: TeacherGoldens | None = None,
        limits: LoopLimits | None = None,
        refuse_over_limits: bool = False,
    ) -> None:
        self.chat, self.tools, self.sandbox = chat, tools, sandbox
        self.verify_timeout_s, self.style, self.teacher = verify_timeout_s, style, teacher
        self.limits, self.refuse_over_limits = limits, refuse_over_limits
        self.stats = GoldenStats()
        self._cache: dict[str, Trajectory | None] = {}
        self._lock = threading.Lock()

    def state_dict(self) -> dict[str, Any]:
        """The built goldens (misses too), the counters and the teacher's state: what a resumed run
        needs so that it neither rebuilds nor re-asks the teacher (whose seed follows its counters)."""
        with self._lock:
            return {
                "cache": dict(self._cache),
                "stats": asdict(self.stats),
                "teacher": self.teacher.state_dict() if self.teacher is not None else None,
            }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        with self._lock:
            self._cache = dict(state["cache"])
            self.stats = GoldenStats(**state["stats"])
        if self.teacher is not None and state.get("teacher") is not None:
            self.teacher.load_state_dict(state["teacher"])

    def prefetch(self, problems: list[Problem]) -> None:
        """Let the teacher solve, in one batched run, the problems a coming get() will need."""
        if self.teacher is not None:
            with self._lock:
                need = [p for p in problems if not p.golden and p.id not in self._cache]
            if need:
                self.teacher.solve(need)

    def get(self, problem: Problem, group_id: int) -> Trajectory | None:
        with self._lock:
            if problem.id not in self._cache:
                self._cache[problem.id] = self._build(problem)
            cached = self._cache[problem.id]
        if cached is None:
            return None
        return _copy(cached, group_id)

    def _build(self, problem: Problem) -> Trajectory | None:
        if problem.golden:
            turns = _turns_from_messages(problem.golden, set(self.tools))
        elif self.teacher is not None:
            taught = self.teacher.solve([problem])[problem.id]  # cached when prefetched
            if taught is None:
                return None
            turns = taught
        else:
            code, final = reference_turns(problem, self.style)
            intro = "Let me compute the steps with Python.\n```python\n"
            turns = (
                [(f"{intro}{code}\n```\n", [{"name": "python", "arguments": {"code": code}}])] if code else []
            )
            turns.append((final, []))
        traj = Trajectory(problem_id=problem.id, group_id=-1, reference=problem.reference, is_golden=True)
        traj.append(self.chat.prompt_ids(problem.question), Source.PROMPT)
        session = f"golden-{uuid.uuid4().hex[:8]}"
        turn_lengths = []  # policy tokens per assistant turn, as the loop's per-turn limit counts them
        try:
            for k, (text, calls) in enumerate(turns):
                last = k == len(turns) - 1
                ids = self.chat.encode_assistant(text, close_turn=last)
                traj.append(ids, Source.SAMPLED)
                turn_lengths.append(len(ids))
                traj.turn_texts.append(text)
                if last:
                    break
                observations = []
                for c in calls:
                    outcome = self._call(c, session)
                    if outcome is None:
                        return None
                    observations.append(outcome.observation)
                    traj.tool_calls.append(
                        ToolCallRecord(k, c["name"], c["arguments"], outcome.observation, outcome.status)
                    )
                    if outcome.status != "ok":
                        # A golden teaches its calls as written: one whose call errs (or whose
                        # observation is an error message) would teach a broken call. Refused, counted.
                        self.stats.tool_errors += 1
                        return None
                for ids_, src in self.chat.tool_turn(observations, ids[-1] if ids else None).pieces:
                    traj.append(ids_, src)
        finally:
            if self.sandbox is not None:
                self.sandbox.close_session(session)
        traj.final_text = turns[-1][0]
        result = verify(traj.final_text, problem.reference, timeout_s=self.verify_timeout_s)
        traj.extracted_answer, traj.correct = result.extracted, result.correct
        traj.reward = 1.0 if result.correct else 0.0
        traj.finish_reason = "stop"
        if not result.correct:
            self.stats.verify_failures += 1
            return None
        if self._over_limits(turn_lengths, len(traj.token_ids)):
            self.stats.over_limits += 1
            if self.refuse_over_limits:
                return None
        self.stats.built += 1
        return traj

    def _over_limits(self, turn_lengths: list[int], total: int) -> bool:
        lim = self.limits
        if lim is None:
            return False
        return (
            max(turn_lengths, default=0) > lim.max_new_tokens_per_turn
            or len(turn_lengths) > lim.max_turns
            or total > lim.max_total_tokens
        )

    def _call(self, call: dict[str, Any], session: str) -> Any:
        t = self.tools.get(call.get("name"))
        if t is None:  # a row's golden naming a tool this run does not have: refused, counted
            self.stats.tool_errors += 1
            return None
        return t.call(call.get("arguments", {}), ToolContext(session=session, sandbox=self.sandbox))


def _turns_from_messages(
    messages: list[dict[str, Any]], tool_names: set[str]
) -> list[tuple[str, list[dict[str, Any]]]]:
    """A row's golden message list -> [(assistant text, [tool calls parsed from it])...]."""
    from agentic_gcpo.rollout.tool_calls import parse_turn

    turns = []
    for m in messages:
        if m.get("role") == "assistant":
            text = str(m.get("content", ""))
            parsed = parse_turn(text, "auto", tool_names)
            calls = [{"name": c.name, "arguments": c.arguments} for c in parsed.calls if c.status == "ok"]
            turns.append((text, calls))
    return turns or [("", [])]


def _copy(t: Trajectory, group_id: int) -> Trajectory:
    import copy

    c = copy.deepcopy(t)
    c.group_id = group_id
    return c
