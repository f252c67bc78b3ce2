"""Tool schemas: a typed signature + docstring -> a pydantic arguments model -> a JSON schema.

Parameter descriptions come from the docstring's `Args:` (Google) or `Parameters` (numpy) section
and land in each property's `description`, unless an `Annotated[..., Field(description=...)]` says
otherwise. The JSON schema is tidied for models: nested models are inlined (no `$ref` to follow,
except for recursive ones) and pydantic's `title`s are dropped.
"""

from __future__ import annotations

import inspect
import re
import typing
from collections.abc import Callable
from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field, create_model
from pydantic.fields import FieldInfo

_GOOGLE_ARGS = re.compile(r"^(Args|Arguments|Parameters|Params|Keyword Args|Keyword Arguments)\s*:\s*$")
_GOOGLE_OTHER = re.compile(
    r"^(Returns?|Raises|Yields?|Examples?|Notes?|See Also|Warnings?|Attributes)\s*:\s*$"
)
_GOOGLE_ITEM = re.compile(r"^\*{0,2}(\w+)\s*(?:\([^)]*\))?\s*:\s*(.*)$")
_NUMPY_ITEM = re.compile(r"^\*{0,2}(\w+)\s*(?::.*)?$")


def parse_docstring(doc: str | None) -> tuple[str, dict[str, str]]:
    """(description, {param: description}) from a Google- or numpy-style docstring."""
    lines = inspect.cleandoc(doc or "").splitlines()
    desc: list[str] = []
    params: dict[str, str] = {}
    section: str | None = None  # None (description), "args", "other"
    current: str | None = None
    base_indent = 0
    i = 0
    while i < len(lines):
        line, stripped = lines[i], lines[i].strip()
        numpy_header = (
            i + 1 < len(lines)
            and re.fullmatch(r"-{3,}", lines[i + 1].strip() or "x")
            and not line[:1].isspace()
        )
        if numpy_header or (
            not line[:1].isspace() and (_GOOGLE_ARGS.match(line) or _GOOGLE_OTHER.match(line))
        ):
            is_args = bool(_GOOGLE_ARGS.match(stripped + ":" if numpy_header else stripped))
            section, current = ("args_numpy" if numpy_header else "args") if is_args else "other", None
            i += 2 if numpy_header else 1
            continue
        if section is None:
            desc.append(stripped)
        elif section == "args" and stripped:
            m = _GOOGLE_ITEM.match(stripped)
            indent = len(line) - len(line.lstrip())
            if m and (current is None or indent <= base_indent):
                base_indent, current = indent, m.group(1)
                params[current] = m.group(2).strip()
            elif current is not None:
                params[current] = (params[current] + " " + stripped).strip()
        elif section == "args_numpy" and stripped:
            m = _NUMPY_ITEM.match(stripped)
            if not line[:1].isspace() and m:
                current = m.group(1)
                params[current] = ""
            elif current is not None:
                params[current] = (params[current] + " " + stripped).strip()
        i += 1
    return " ".join(d for d in desc if d), params


def _has_description(ann: Any) -> bool:
    return any(isinstance(m, FieldInfo) and m.description for m in getattr(ann, "__metadata__", ()))


def args_model(
    fn: Callable[..., Any], tool_name: str, docs: dict[str, str], context_type: type
) -> tuple[type[BaseModel], str | None]:
    try:
        hints = typing.get_type_hints(fn, include_extras=True)
    except Exception as e:
        raise TypeError(f"tool '{tool_name}': cannot resolve the type hints of its signature ({e})") from None
    fields: dict[str, Any] = {}
    ctx_param = None
    for pname, p in inspect.signature(fn).parameters.items():
        ann = hints.get(pname, Any)
        if ann is context_type or (
            context_type in typing.get_args(ann) and type(None) in typing.get_args(ann)
        ):
            ctx_param = pname
            continue
        if p.kind in (p.VAR_POSITIONAL, p.VAR_KEYWORD, p.POSITIONAL_ONLY):
            raise TypeError(f"tool '{tool_name}': parameter '{pname}' must be an ordinary named parameter")
        if pname.startswith("_"):
            raise TypeError(
                f"tool '{tool_name}': parameter '{pname}' starts with '_' (pydantic cannot use it)"
            )
        default = ... if p.default is p.empty else p.default
        own = default.description if isinstance(default, FieldInfo) else None
        if docs.get(pname) and not own and not _has_description(ann):
            # As Annotated metadata, so pydantic merges it with the user's own Field(...) if any.
            ann = Annotated[ann, Field(description=docs[pname])]
        fields[pname] = (ann, default)
    model = create_model(f"{tool_name}_args", __config__=ConfigDict(extra="forbid"), **fields)
    return model, ctx_param


_DATA_KEYS = ("default", "enum", "const", "examples")


def tidy_schema(schema: dict[str, Any]) -> dict[str, Any]:
    """Inline `$ref`s (small models and many templates do not follow them) and drop `title`s."""
    defs = schema.get("$defs", {})
    recursive: set[str] = set()

    def walk(node: Any, stack: frozenset[str]) -> Any:
        if isinstance(node, list):
            return [walk(x, stack) for x in node]
        if not isinstance(node, dict):
            return node
        ref = node.get("$ref")
        if isinstance(ref, str) and ref.startswith("#/$defs/") and ref[8:] in defs:
            key = ref[8:]
            if key in stack:  # a recursive model cannot be inlined; keep the reference
                recursive.add(key)
                return dict(node)
            rest = {k: walk(v, stack) for k, v in node.items() if k != "$ref"}
            return {**walk(defs[key], stack | {key}), **rest}
        out: dict[str, Any] = {}
        for k, v in node.items():
            if k == "$defs" or (k == "title" and isinstance(v, str)):
                continue
            if k in _DATA_KEYS:
                out[k] = v
            elif k in ("properties", "patternProperties") and isinstance(v, dict):
                out[k] = {pk: walk(pv, stack) for pk, pv in v.items()}
            else:
                out[k] = walk(v, stack)
        return out

    out = walk(schema, frozenset())
    if recursive:
        out["$defs"] = {k: walk(v, frozenset({k})) for k, v in defs.items()}
    return out
