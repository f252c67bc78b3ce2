"""Reproducible runs: a seeded tiny run gives the same ledgers and metrics every time, and a pin
of one short run catches unintended changes to sampling, chat rendering, masking or injection.

The pinned run is a 2-step GCPO run of the tiny model in float64, sampled from the float64 module
itself, on one thread. float64 is what makes it exact across CPUs: the only platform differences
left are in the last bits of float64 sums (different vector units, BLAS kernels), far below what
can move a sampled token or a metric rounded to 6 decimals. One thread keeps the summation order
independent of the machine's core count. A bias on the end-of-turn logit makes some rollouts stop
early, so stop handling is in the ledgers too, next to sampled, prompt and golden (tool-turn) tokens.

Measured (torch 2.13, Xeon with AVX512): the pin is the same under torch's AVX2 kernels
(ATEN_CPU_CAPABILITY=avx2 MKL_ENABLE_INSTRUCTIONS=AVX2 ONEDNN_MAX_CPU_ISA=AVX2) and with 2 threads;
raw float64 metrics differ there in the 16th digit, float32 ones in the 7th (too close to the
rounding). So the pin check does not skip on another platform; a failure names the platform the
pin was made on, should a torch or BLAS change ever move it.

After a deliberate change to any of those, regenerate the pin and commit it with the change:

    AGCPO_REGENERATE_PINS=1 pytest tests/test_reproducible.py
    # or: python tests/test_reproducible.py --regenerate
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
import tempfile
from pathlib import Path

import pytest
import torch

from agentic_gcpo.config import load_config
from agentic_gcpo.models import tiny_model
from agentic_gcpo.precision import cpu_description
from agentic_gcpo.train.trainer import Trainer

PIN = Path(__file__).parent / "pins" / "reproducible_run.json"
REGENERATE = os.environ.get("AGCPO_REGENERATE_PINS") == "1"
OVERRIDES = [
    "model.path=tiny",
    "algorithm.name=gcpo",
    "run.seed=0",
    "train.steps=2",
    "train.prompts_per_step=2",
    "rollout.group_size=4",
    "rollout.max_new_tokens_per_turn=16",
    "data.limit=8",
    "train.precision=float32",  # no autocast: the float64 model computes in float64
    "engine.dtype=float32",  # overridden below: the engine samples from the float64 module
    "train.save_final=false",
    "sandbox.pool_size=1",
    "log.progress=false",
]
STOP_BIAS = 6.0  # added to <|im_end|>'s logit: roughly a third of the rollouts stop within 16 tokens
SOURCES = {"0": "PROMPT", "1": "SAMPLED", "2": "TOOL", "3": "TEMPLATE"}  # ledger.Source, as stored
DECIMALS = 6  # metrics are pinned to this many decimals: float64 noise never reaches them


def platform() -> dict[str, str]:
    return {
        "torch": torch.__version__,
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "cpu": cpu_description(),
    }


def tiny_run(out_dir: Path) -> dict:
    """One seeded 2-step run: every trajectory the trainer trained on, in order, and its metrics."""
    model, tok = tiny_model(seed=0)
    model.double()
    bias = torch.zeros(len(tok), dtype=torch.float64)
    bias[tok.convert_tokens_to_ids("<|im_end|>")] = STOP_BIAS
    # On the head, so the engine's sampling and the trainer's log-probs see the same distribution.
    model.lm_head.register_forward_hook(lambda _module, _inputs, logits: logits + bias)
    cfg = load_config("configs/tiny_cpu.yaml", [*OVERRIDES, f"run.output_dir={out_dir}"])
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        tr = Trainer(cfg, run_dir=out_dir, model=model, tokenizer=tok)
        # The engine would sample from a float32 copy of a float64 model; sample from the model itself.
        tr.engine.sampler = tr.model
        ledgers = []
        step = tr.step

        def recording_step(i: int):
            res = step(i)
            ledgers.extend(
                {"ids": list(t.token_ids), "sources": "".join(map(str, t.sources)), "golden": t.is_golden}
                for t in res.trajectories
            )
            return res

        tr.step = recording_step
        tr.train()
    finally:
        torch.set_num_threads(threads)
    rows = [json.loads(line) for line in (out_dir / "metrics.jsonl").read_text().splitlines()]
    return {"ledgers": ledgers, "metrics": rows, "tokenizer": tok}


def pinned_metrics(rows: list[dict]) -> list[dict]:
    """Metrics without wall-clock keys, rounded; + 0.0 turns -0.0 into 0.0."""
    return [
        {
            k: round(v, DECIMALS) + 0.0 if isinstance(v, float) else v
            for k, v in sorted(r.items())
            if not k.startswith("time/")
        }
        for r in rows
    ]


def sha256(obj) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True).encode()).hexdigest()


def pin_of(run: dict) -> dict:
    metrics = pinned_metrics(run["metrics"])
    return {
        "regenerate": "AGCPO_REGENERATE_PINS=1 pytest tests/test_reproducible.py",
        "platform": platform(),
        "ledgers_sha256": sha256(run["ledgers"]),
        "metrics_sha256": sha256(metrics),
        "metrics": metrics,
        "ledgers": run["ledgers"],
    }


def write_pin(run: dict) -> None:
    PIN.parent.mkdir(parents=True, exist_ok=True)
    pin = pin_of(run)
    # One trajectory per line: a regenerated pin diffs readably in review.
    body = ",\n".join(json.dumps(t, separators=(",", ":")) for t in pin.pop("ledgers"))
    head = json.dumps(pin, indent=1)[:-2]
    PIN.write_text(f'{head},\n "ledgers": [\n{body}\n ]\n}}\n')


def first_difference(want: list[dict], got: list[dict], tok) -> str:
    """Where two ledgers part: trajectory k, position i, expected vs got token (id, text, source)."""
    if len(want) != len(got):
        return f"{len(got)} trajectories, pinned {len(want)}"
    for k, (w, g) in enumerate(zip(want, got)):
        if w == g:
            continue
        if w["golden"] != g["golden"]:
            return f"trajectory {k}: is_golden {g['golden']}, pinned {w['golden']}"
        n = min(len(w["ids"]), len(g["ids"]))
        i = next((i for i in range(n) if (w["ids"][i], w["sources"][i]) != (g["ids"][i], g["sources"][i])), n)
        context = tok.decode(w["ids"][max(0, i - 12) : i])
        return f"trajectory {k}, position {i} (after {context!r}): expected {_token(w, i, tok)}, got {_token(g, i, tok)}"
    return "ledgers equal"


def _token(t: dict, i: int, tok) -> str:
    if i >= len(t["ids"]):
        return f"end of trajectory (length {len(t['ids'])})"
    return f"id {t['ids'][i]} {tok.decode([t['ids'][i]])!r} {SOURCES[t['sources'][i]]}"


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> tuple[dict, dict]:
    return tiny_run(tmp_path_factory.mktemp("a")), tiny_run(tmp_path_factory.mktemp("b"))


def test_two_seeded_runs_are_identical(runs) -> None:
    a, b = runs
    assert a["ledgers"] == b["ledgers"], first_difference(a["ledgers"], b["ledgers"], a["tokenizer"])
    strip = [
        [{k: v for k, v in r.items() if not k.startswith("time/")} for r in run["metrics"]] for run in runs
    ]
    assert strip[0] == strip[1]  # exactly, not rounded
    sources = {s for t in a["ledgers"] for s in t["sources"]}
    assert sources == {"0", "1", "2", "3"}  # prompt, sampled, tool and template tokens are all pinned
    assert any(r["finish/stop"] > 0 for r in a["metrics"])  # and some rollouts stopped on their own


def test_run_matches_the_pin(runs) -> None:
    run = runs[0]
    if REGENERATE:
        write_pin(run)
        pytest.skip(f"regenerated {PIN}")
    if not PIN.exists():
        pytest.fail(f"no pin at {PIN}; make it with AGCPO_REGENERATE_PINS=1 pytest {__file__}")
    pin = json.loads(PIN.read_text())
    got = pin_of(run)
    if got["ledgers_sha256"] != pin["ledgers_sha256"]:
        where = first_difference(pin["ledgers"], run["ledgers"], run["tokenizer"])
        pytest.fail(f"the run's ledgers differ from the pin: {where}. {_hint(pin)}")
    if got["metrics_sha256"] != pin["metrics_sha256"]:
        diff = [
            f"step {w.get('step')} {k}: expected {w.get(k)}, got {g.get(k)}"
            for w, g in zip(pin["metrics"], got["metrics"])
            for k in sorted(set(w) | set(g))
            if w.get(k) != g.get(k)
        ]
        pytest.fail(f"the run's metrics differ from the pin: {'; '.join(diff[:10])}. {_hint(pin)}")


def _hint(pin: dict) -> str:
    made_on = pin["platform"]
    here = platform()
    other = "" if made_on == here else f" The pin was made on {made_on}, this is {here}."
    return f"If the change is deliberate: AGCPO_REGENERATE_PINS=1 pytest tests/test_reproducible.py.{other}"


if __name__ == "__main__":
    if sys.argv[1:] != ["--regenerate"]:
        sys.exit("usage: python tests/test_reproducible.py --regenerate")
    with tempfile.TemporaryDirectory() as d:
        write_pin(tiny_run(Path(d)))
    print(f"wrote {PIN}")
