"""The learner across processes (train/distributed.py): the bar of issue 13.

- Two gloo processes under `accelerate launch` train the tiny model (float64) for two updates on a
  fixed ledger batch, half the groups each, and end with the parameters of one process that trained
  on all of it: max |difference| < 1e-9 (float64 summation order; the updates move the weights by
  ~1e-2). Covered: a seq-mean algorithm with a golden member (gcpo, one optimizer step per update)
  and a token-mean one with a batch statistic (gpg's alpha, two mini-batches per update).
- Likewise with FSDP2 (`fully_shard` works on CPU with gloo for the tiny model): the float64 update
  matches one process that forwards without the shared-prompt pass (FSDP forwards through the
  root module) within the same 1e-9.
- `accelerate launch --config_file configs/accelerate/cpu_2proc.yaml -m agentic_gcpo.cli train` (and
  `cpu_2proc_fsdp2.yaml`) runs 2 steps of the tiny config
  end to end, data parallel and FSDP2: one run directory, metrics written once per step by rank 0,
  a final checkpoint, exit 0, no process left.
- `train --resume` under both launches: a run that lost its last step's checkpoint computes that
  step again with the same metrics and bit-identical weights (FSDP2: the optimizer shards gathered
  whole by name at save, resharded on resume).
- Without a launcher nothing changes (`Dist()`), and a batch that does not divide is refused.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from agentic_gcpo.train import distributed

REPO = Path(__file__).resolve().parents[1]
WORKER = REPO / "tests" / "dist_update_worker.py"
TOL = 1e-9

needs_accelerate = pytest.mark.skipif(
    shutil.which("accelerate") is None, reason='accelerate is not installed: pip install -e ".[scale]"'
)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK")}
    env["PYTHONPATH"] = str(REPO) + os.pathsep + env.get("PYTHONPATH", "")
    env["OMP_NUM_THREADS"] = "1"  # two ranks on two cores
    env["CUDA_VISIBLE_DEVICES"] = ""  # gloo on CPU even where a GPU is present
    return env


def _launch(args: list[str], cwd: Path, config: str = "cpu_2proc.yaml") -> subprocess.CompletedProcess:
    """`accelerate launch` with a shipped config of configs/accelerate/ (2 CPU processes, gloo)."""
    cmd = [
        "accelerate",
        "launch",
        "--config_file",
        str(REPO / "configs" / "accelerate" / config),
        "--main_process_port",
        str(_free_port()),
        *args,
    ]
    return subprocess.run(
        cmd, cwd=cwd, env=_env(), capture_output=True, text=True, timeout=300, start_new_session=True
    )


def _tiny_train(out: Path, *extra: str) -> list[str]:
    """`python` arguments of a tiny float32 `train` run (2 problems x 2 one-turn rollouts a step)."""
    return [
        "-m",
        "agentic_gcpo.cli",
        "train",
        "-c",
        str(REPO / "configs" / "tiny_cpu.yaml"),
        f"run.output_dir={out}",
        "train.prompts_per_step=2",
        "rollout.group_size=2",
        "rollout.max_turns=1",
        "rollout.max_new_tokens_per_turn=8",
        "sandbox.pool_size=1",
        "engine.dtype=float32",
        "train.precision=float32",
        *extra,
    ]


# ALGORITHM:MINI_BATCHES[:fsdp]; FSDP2 runs on CPU with gloo for the tiny model, so it is tested here
CASES = ["gcpo:1", "gpg:2", "gpg:2:fsdp"]


@needs_accelerate
def test_two_processes_update_like_one(tmp_path: Path) -> None:
    two = tmp_path / "two.pt"
    r = _launch([str(WORKER), str(two), *CASES], tmp_path)
    assert r.returncode == 0, r.stderr[-3000:]
    from agentic_gcpo.models import tiny_model

    sys.path.insert(0, str(WORKER.parent))
    try:
        import dist_update_worker as worker  # the one-process reference runs here, in this process
    finally:
        sys.path.remove(str(WORKER.parent))
    one = {c: worker.run(distributed.Dist(), *worker.parse(c)) for c in CASES}
    start = {k: v.detach().double() for k, v in tiny_model(seed=0)[0].named_parameters()}
    for case in CASES:
        a, b = one[case], torch.load(two)[case]
        assert (a["world"], b["world"]) == (1, 2)
        moved = max(float((a["params"][k] - start[k]).abs().max()) for k in start)
        assert moved > 1e-3, f"{case}: the updates did not move the weights; the comparison proves nothing"
        worst = max(float((a["params"][k] - b["params"][k]).abs().max()) for k in a["params"])
        assert worst < TOL, f"{case}: 2-process parameters differ from 1-process ones by {worst:.3e}"
        # The logged numbers are the whole batch's too. (Ratio metrics are means of per-micro-batch
        # means, which depend on how sequences fall into micro-batches even in one process.)
        for ma, mb in zip(a["metrics"], b["metrics"]):
            assert ma.keys() == mb.keys()
            for k in ("loss/policy", "loss/active_seqs", "adv/abs_mean", "loss/grad_norm", "train/lr"):
                assert abs(ma[k] - mb[k]) < 1e-7, (case, k, ma[k], mb[k])


@needs_accelerate
@pytest.mark.parametrize("mode", ["ddp", pytest.param("fsdp2", marks=pytest.mark.slow)])
def test_cli_train_under_accelerate_launch(tmp_path: Path, mode: str) -> None:
    out = tmp_path / "runs"
    args = _tiny_train(out, "train.steps=2", "train.samples_per_step=1")
    r = _launch(args, REPO, "cpu_2proc_fsdp2.yaml" if mode == "fsdp2" else "cpu_2proc.yaml")
    assert r.returncode == 0, r.stderr[-4000:]
    runs = list(out.iterdir())
    assert len(runs) == 1, f"ranks made {len(runs)} run directories: {runs}"
    rows = [json.loads(line) for line in (runs[0] / "metrics.jsonl").read_text().splitlines()]
    assert [row["step"] for row in rows] == [1, 2]  # rank 0 alone writes, each step once
    assert rows[0]["sampling/train_seqs"] == 4.0  # 2 problems x 2 rollouts, one problem per rank
    assert len((runs[0] / "samples.jsonl").read_text().splitlines()) >= 2
    assert (runs[0] / "checkpoints" / "final" / "config.json").exists()
    assert json.loads((runs[0] / "summary.json").read_text())["updates"] == 2
    # The launcher ran in its own session: nothing of it may outlive it.
    left = subprocess.run(["ps", "-eo", "pid,sid,args"], capture_output=True, text=True).stdout
    pids = {line.split()[0] for line in left.splitlines()[1:] if str(out) in line}
    assert not pids, f"processes left behind: {pids}"


@needs_accelerate
@pytest.mark.parametrize("mode", ["ddp", pytest.param("fsdp2", marks=pytest.mark.slow)])
def test_resume_under_accelerate_recomputes_the_lost_step(tmp_path: Path, mode: str) -> None:
    """A 3-step run under `accelerate launch` checkpoints every step; its step-3 and final
    checkpoints are removed (a run killed during step 3), and `train --resume` under the same launch
    computes step 3 again: the same metrics and the same final weights. Under FSDP2 the ranks'
    optimizer shards are gathered whole, by parameter name, and resharded on resume."""
    from safetensors.torch import load_file

    out = tmp_path / "runs"
    launch = "cpu_2proc_fsdp2.yaml" if mode == "fsdp2" else "cpu_2proc.yaml"
    args = _tiny_train(out, "train.steps=3", "train.checkpoint_every=1")
    r = _launch(args, REPO, launch)
    assert r.returncode == 0, r.stderr[-4000:]
    (run,) = out.iterdir()
    ckpts = run / "checkpoints"
    ref_rows = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    ref_final = load_file(str(ckpts / "final" / "model.safetensors"))
    state = torch.load(ckpts / "step-2" / "trainer_state.pt", map_location="cpu", weights_only=False)
    assert state["optimizer_layout"] == ("full" if mode == "fsdp2" else "torch")
    assert state["optimizer"]["state"], "the checkpoint holds no optimizer moments"
    for name in ("step-3", "final"):
        shutil.rmtree(ckpts / name)

    r = _launch(["-m", "agentic_gcpo.cli", "train", "--resume", str(run)], REPO, launch)
    assert r.returncode == 0, r.stderr[-4000:]
    assert f"resuming from {ckpts / 'step-2'} at step 2 of 3" in r.stdout
    rows = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    assert [x["step"] for x in rows] == [x["step"] for x in ref_rows] == [1, 2, 3]
    a, b = ref_rows[2], rows[2]
    diff = {
        k: (a.get(k), b.get(k))
        for k in a.keys() | b.keys()
        if not k.startswith("time/") and a.get(k) != b.get(k)
    }
    assert not diff, f"step 3 computed again differs: {diff}"
    got = load_file(str(ckpts / "final" / "model.safetensors"))
    step2 = load_file(str(ckpts / "step-2" / "model.safetensors"))
    assert any(not torch.equal(step2[k], ref_final[k]) for k in ref_final), "step 3 did not train"
    unequal = [k for k in ref_final if not torch.equal(ref_final[k], got[k])]
    assert not unequal, f"final weights differ after resume: {unequal[:5]}"


def test_single_process_is_untouched(monkeypatch: pytest.MonkeyPatch) -> None:
    for var in ("WORLD_SIZE", "RANK", "LOCAL_RANK", "ACCELERATE_USE_FSDP"):
        monkeypatch.delenv(var, raising=False)
    d = distributed.setup()
    assert d == distributed.Dist() and not d.active and d.is_main
    assert d.sum([1.0, 2.0]) == [1.0, 2.0] and d.gather("x") == ["x"] and d.any(True)
    assert d.shard([1, 2, 3]) == [1, 2, 3] and d.sampling_seed(41) == 41


def test_batches_that_do_not_divide_are_refused() -> None:
    d = distributed.Dist(rank=1, world=2)
    assert d.shard([1, 2, 3, 4]) == [3, 4]
    with pytest.raises(
        ValueError, match=r"prompts_per_step=3 does not divide among 2 processes.*multiple of 2"
    ):
        d.local_prompts(3)


@pytest.mark.parametrize(
    "env,match",
    [
        ({"ACCELERATE_USE_DEEPSPEED": "true"}, "DeepSpeed"),
        ({"ACCELERATE_USE_FSDP": "true", "FSDP_VERSION": "1"}, "fsdp_version: 2"),
        ({"ACCELERATE_USE_FSDP": "true", "FSDP_VERSION": "2", "FSDP_OFFLOAD_PARAMS": "true"}, "offload"),
    ],
)
def test_unsupported_launch_modes_are_refused(monkeypatch: pytest.MonkeyPatch, env, match) -> None:
    for var, value in env.items():
        monkeypatch.setenv(var, value)
    with pytest.raises(ValueError, match=match):
        distributed.setup()


def test_fsdp_refuses_lora_and_models_without_blocks() -> None:
    pytest.importorskip("peft", reason='peft is not installed: pip install -e ".[scale]"')
    from agentic_gcpo.config import LoRAConfig
    from agentic_gcpo.models import tiny_model
    from agentic_gcpo.train import lora

    d = distributed.Dist(rank=0, world=2, fsdp=True)
    inner = lora.trained_module(lora.wrap(tiny_model(seed=0)[0], LoRAConfig(enabled=True, r=2)))
    with pytest.raises(ValueError, match="LoRA.*data parallel"):
        d.shard_model(inner)
    with pytest.raises(ValueError, match="_no_split_modules"):
        d.shard_model(torch.nn.Sequential(torch.nn.Linear(2, 2)))


def test_a_gathered_optimizer_state_loads_in_one_process_and_layouts_are_checked() -> None:
    """The 'full' layout (what FSDP checkpoints hold: AdamW moments keyed by parameter name) loads
    into an unsharded model in one process and continues exactly like the optimizer it came from;
    a 'torch' (index-keyed) state is refused under FSDP, and an unknown layout everywhere."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_optimizer_state_dict

    from agentic_gcpo.models import tiny_model

    def trained_pair():
        model = tiny_model(seed=0)[0].float()
        return model, torch.optim.AdamW(model.parameters(), lr=1e-2, weight_decay=0.1)

    ids = torch.randint(0, 100, (2, 6), generator=torch.Generator().manual_seed(0))

    def step(model, opt) -> None:
        opt.zero_grad()
        model(input_ids=ids, labels=ids).loss.backward()
        opt.step()

    a, opt_a = trained_pair()
    step(a, opt_a)
    full = get_optimizer_state_dict(a, opt_a, options=StateDictOptions(full_state_dict=True))
    saved = torch.load(_roundtrip(full), weights_only=False)  # as a checkpoint holds it: no aliasing
    assert "model.embed_tokens.weight" in saved["state"]  # keyed by name
    b, opt_b = trained_pair()
    b.load_state_dict(a.state_dict())
    distributed.Dist().load_optimizer_state(b, opt_b, "full", saved)
    step(a, opt_a)
    step(b, opt_b)
    assert all(torch.equal(x, y) for x, y in zip(a.parameters(), b.parameters()))
    fsdp = distributed.Dist(rank=0, world=2, fsdp=True)
    with pytest.raises(ValueError, match="saved without FSDP"):
        fsdp.load_optimizer_state(b, opt_b, "torch", opt_b.state_dict())
    with pytest.raises(ValueError, match="unknown optimizer state layout 'sharded'"):
        distributed.Dist().load_optimizer_state(b, opt_b, "sharded", {})


def _roundtrip(obj: object):
    import io

    buf = io.BytesIO()
    torch.save(obj, buf)
    buf.seek(0)
    return buf
