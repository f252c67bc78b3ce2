"""Prompts and tool turns as token ids, rendered through the tokenizer's own chat template.

Token-in, token-out: the conversation is never re-tokenised. The prompt is rendered once; after
that every assistant turn is the engine's ids and every tool turn is a *delta*: the template text
that a tool message adds after an assistant message, found by rendering a conversation with
sentinel strings and cutting around them. Glue pieces become TEMPLATE tokens, the observation
becomes TOOL tokens (tokenised with special tokens split, so a tool printing "<|im_end|>" cannot
forge a turn boundary). Golden trajectories and few-shot examples go through the same path.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from agentic_gcpo.ledger import Source
from agentic_gcpo.rollout.tool_calls import JSON_CLOSE, JSON_OPEN, STOP_STRINGS

DEFAULT_SYSTEM = "You are a careful math assistant."
PYTHON_HOWTO = (
    " Solve the problem with Python: start with a ```python block that computes the result and prints "
    "it. Its output comes back to you in a tool message; variables persist between blocks."
)
ANSWER_HOWTO = " Give the final answer as \\boxed{answer}."

# Worked examples shown before the problem when prompt.fewshot > 0. Their tool outputs are what the
# sandbox prints for the code (tests/test_chat.py checks that against a real sandbox).
FEWSHOT: list[tuple[str, str, str, str]] = [
    (
        "A baker makes 12 trays of 24 cookies and sells 230 cookies. How many cookies are left?",
        "I'll count the cookies and subtract the ones sold.\n```python\ntotal = 12 * 24\nleft = total - 230\nprint(total, left)\n```\n",
        "288 58",
        "The baker made 288 cookies, so 288 - 230 = 58 are left.\nThe answer is \\boxed{58}.",
    ),
    (
        "Tom reads 15 pages a day for 3 weeks, then 20 pages a day for 4 days. How many pages does he read?",
        "Three weeks are 21 days.\n```python\npages = 15 * 21 + 20 * 4\nprint(pages)\n```\n",
        "395",
        "He reads 15 * 21 = 315 pages, then 20 * 4 = 80 pages, 395 in total.\nThe answer is \\boxed{395}.",
    ),
    (
        "A shirt costs $40. It is discounted by 25%, then a $5 coupon is applied. What is the final price?",
        "```python\nprice = 40 * (1 - 0.25) - 5\nprint(price)\n```\n",
        "25.0",
        "After the 25% discount the shirt costs $30, and the coupon brings it to $25.\nThe answer is \\boxed{25}.",
    ),
]

_A = "\u2063ASSISTANT\u2063"  # invisible separators: cannot occur in a real template
_O = "\u2063OBS{}\u2063"


@dataclass
class ToolTurn:
    """A tool turn as ledger pieces: [(ids, source), ...] in order."""

    pieces: list[tuple[list[int], Source]]

    @property
    def ids(self) -> list[int]:
        return [t for ids, _ in self.pieces for t in ids]


class ChatFormat:
    """Everything the agent loop needs from a tokenizer + chat template, and nothing else."""

    def __init__(
        self,
        tokenizer: Any,
        tools: dict[str, Any],
        call_format: str = "auto",
        system: str | None = None,
        fewshot: int = 0,
    ) -> None:
        if not getattr(tokenizer, "chat_template", None):
            raise ValueError("the tokenizer has no chat template; give a model whose tokenizer defines one")
        self.tok = tokenizer
        self.tools = tools
        self.tool_names = set(tools)
        # A template that mentions `tools` renders the schemas itself (SmolLM2's does not).
        self.template_has_tools = "tools" in tokenizer.chat_template
        self.call_format = call_format
        fenced_python = "python" in tools and call_format in ("fenced", "auto")
        howto = (PYTHON_HOWTO if fenced_python else "") + ANSWER_HOWTO
        self.system = (system if system is not None else DEFAULT_SYSTEM + howto) + self._tools_text()
        self.fewshot = fewshot
        # The end-of-turn token first: that is what a golden turn ends with. Others also stop.
        candidates = [
            tokenizer.convert_tokens_to_ids(t) for t in ("<|im_end|>", "<|eot_id|>", "<|endoftext|>")
        ]
        candidates.insert(1, tokenizer.eos_token_id)
        self.eos_ids: list[int] = []
        for i in candidates:
            if isinstance(i, int) and i >= 0 and i != tokenizer.unk_token_id and i not in self.eos_ids:
                self.eos_ids.append(i)
        if not self.eos_ids:
            raise ValueError("the tokenizer has no end-of-turn / eos token; generation could never stop")
        if call_format not in STOP_STRINGS:
            raise ValueError(f"unknown call_format '{call_format}'; valid: {', '.join(STOP_STRINGS)}")
        self.stop = STOP_STRINGS[call_format]
        if not tools:  # a plain model: a closing ``` is prose, and the examples use tools
            self.stop, self.fewshot = [], 0
        self._glue: dict[int, list[str]] = {}

    # --- the system prompt -------------------------------------------------------------------
    def _tools_text(self) -> str:
        """Documented fallback for templates without `tools=`: schemas + the JSON call format.

        Templates with tool support get the schemas through `tools=` instead (see _render)."""
        # In 'auto' the python tool is described as fenced blocks (what small models write best).
        json_tools = [t for n, t in self.tools.items() if not (n == "python" and self.call_format != "json")]
        if not json_tools or self.call_format == "fenced" or self.template_has_tools:
            return ""
        schemas = "\n".join(json.dumps(t.schema()["function"]) for t in json_tools)
        return (
            f"\n\nYou can also call these tools:\n<tools>\n{schemas}\n</tools>\nTo call one, write "
            f'{JSON_OPEN}{{"name": <tool name>, "arguments": <JSON object>}}{JSON_CLOSE}.'
        )

    def _render(self, messages: list[dict[str, str]], generation_prompt: bool) -> str:
        # Templates that know about tools (Hermes/Qwen style) describe them their own way.
        tools = [t.schema() for t in self.tools.values()] if self.template_has_tools and self.tools else None
        return self.tok.apply_chat_template(
            messages, tools=tools, tokenize=False, add_generation_prompt=generation_prompt
        )

    def prompt_messages(self, question: str) -> list[dict[str, str]]:
        msgs = [{"role": "system", "content": self.system}]
        for q, a1, obs, a2 in FEWSHOT[: self.fewshot]:
            msgs += [
                {"role": "user", "content": q},
                {"role": "assistant", "content": a1},
                {"role": "tool", "content": obs},
                {"role": "assistant", "content": a2},
            ]
        msgs.append({"role": "user", "content": question})
        return msgs

    def prompt_ids(self, question: str) -> list[int]:
        text = self._render(self.prompt_messages(question), generation_prompt=True)
        return self.tok(text, add_special_tokens=False).input_ids

    # --- tool turns --------------------------------------------------------------------------
    def _glue_pieces(self, n: int) -> list[str]:
        """Template text before, between and after n tool messages that follow an assistant turn."""
        if n not in self._glue:
            msgs = [{"role": "user", "content": "q"}, {"role": "assistant", "content": _A}]
            msgs += [{"role": "tool", "content": _O.format(i)} for i in range(n)]
            full = self._render(msgs, generation_prompt=True)
            rest = full[full.index(_A) + len(_A) :]
            pieces = []
            for i in range(n):
                before, rest = rest.split(_O.format(i), 1)
                pieces.append(before)
            pieces.append(rest)
            self._glue[n] = pieces
        return self._glue[n]

    def tool_turn(self, observations: list[str], last_sampled_id: int | None) -> ToolTurn:
        """The ids that follow an assistant turn that made len(observations) tool calls."""
        glue = list(self._glue_pieces(len(observations)))
        if last_sampled_id is not None:
            # The model may have closed its own turn (sampled <|im_end|>): don't close it twice.
            closed = self.tok.decode([last_sampled_id])
            if last_sampled_id in self.eos_ids and glue[0].startswith(closed):
                glue[0] = glue[0][len(closed) :]
        pieces: list[tuple[list[int], Source]] = []
        for i, obs in enumerate(observations):
            pieces.append((self._encode_template(glue[i]), Source.TEMPLATE))
            pieces.append(
                (self.tok(obs, add_special_tokens=False, split_special_tokens=True).input_ids, Source.TOOL)
            )
        pieces.append((self._encode_template(glue[-1]), Source.TEMPLATE))
        return ToolTurn([(ids, src) for ids, src in pieces if ids])

    def _encode_template(self, text: str) -> list[int]:
        return self.tok(text, add_special_tokens=False).input_ids if text else []

    def encode_assistant(self, text: str, close_turn: bool) -> list[int]:
        """Policy-written text as ids (golden trajectories); `close_turn` appends end-of-turn."""
        ids = self.tok(text, add_special_tokens=False, split_special_tokens=True).input_ids
        return ids + ([self.eos_ids[0]] if close_turn else [])

    def decode(self, ids: list[int]) -> str:
        return self.tok.decode(ids)
