"""Seconds per GRPO step: TRL's GRPOTrainer against agentic_gcpo's Trainer, same job for both.

    pip install -c <(echo torch==2.13.0) "trl==1.16.0"     # bench-only; never lets pip swap torch
    python bench/peer_trl.py                               # 1 warm-up + 3 measured steps each
    python bench/peer_trl.py --reward coin --out bench/results/peer_trl_coin.json   # both do full updates
    python bench/peer_trl.py --steps 1 --prompts-per-step 2 --which ours   # a quick look while developing

Prints mean seconds per optimizer step (warm-up excluded), generated tokens per step, the ratio
ours/TRL (the project's target is <= 0.7) and writes bench/results/peer_trl.json.

The job: the embedded SmolLM2-135M-Instruct, plain GRPO without tools and without KL, G=8
completions for each of 4 GSM8K problems per step (32 completions), at most 128 new tokens,
temperature 1, one optimizer step per rollout batch, micro-batches of 8, fp32 master weights with
the compute dtype that agentic_gcpo.precision.resolve picks for this CPU (or --dtype).

Equalised: model weights and tokenizer (the same local directory), prompt token ids (both render
our no-tools system prompt + the question through the model's chat template), problems and their
order (the first N rows, unshuffled, 4 per step), G, max new tokens, temperature/top_p, stop at the
end-of-turn token, the loss (token-clipped ratio, eps 0.2, each sequence's tokens averaged then
sequences averaged = TRL loss_type "grpo"; advantages scaled by the group std), no reference model,
no old-logprob pass (TRL skips it when steps_per_generation == gradient_accumulation_steps and
num_iterations == 1; ours detaches the current log-probs), lr 1e-5 constant, grad clip 1.0,
no gradient checkpointing (TRL's default is on; ours is off, so TRL gets it off too), the reward
(our verifier against the same reference), the torch thread count (both run in this process).

Not equal, by design of each trainer, and left that way because it is what each costs:
- Sampling: ours decodes with its own loop from a bf16 copy of the weights (re-synced after each
  step, counted in its step time) and computes a prompt's prefill once for its G samples; TRL calls
  transformers' generate() on the fp32 model under bf16 autocast (when bf16), which re-casts every
  weight at every decode step: on this CPU that is slower than plain fp32 generate. That is what
  TRL does with fp32 master weights; --trl-weights bfloat16 shows TRL with pure bf16 weights (its
  usual GPU recipe; faster sampling, but not the same training precision as ours).
- Training: ours forwards only sequences with a non-zero advantage (under GRPO the others add
  nothing to the loss or the gradient), packs length-sorted micro-batches and projects only
  completion positions onto the vocabulary; TRL forwards all 32 completions padded to the batch's
  longest completion. So on a step where every group is all-correct or all-wrong (frequent for a
  135M model on GSM8K) ours does no backward pass at all; "trained seqs" shows how many it did.
- Stop tokens: ours also stops at <|endoftext|>, TRL only at the tokenizer/generation eos
  (<|im_end|> for this model); sampled lengths are reported so a reader can see whether they match.
- Random streams differ, so the two trainers sample different completions of different lengths.
- Per-step time: ours is the wall time of Trainer.step (rollout, verify, update, weight sync); TRL's
  is on_step_begin -> on_step_end (generation, reward, 4 forward/backward passes, optimizer step).
  Both exclude logging and checkpointing.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import time
import zlib
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # no hub on this machine; TRL must not try it
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import torch  # noqa: E402
import transformers  # noqa: E402

from agentic_gcpo.data import load_problems  # noqa: E402
from agentic_gcpo.models import embedded_model_dir  # noqa: E402
from agentic_gcpo.precision import cpu_description, resolve  # noqa: E402
from agentic_gcpo.rollout.chat import ChatFormat  # noqa: E402
from agentic_gcpo.verify import verify  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results" / "peer_trl.json"
PROBE = "layers.0.self_attn.q_proj"  # one Linear whose output dtype says what precision really ran


def dtype_probe(*models) -> dict[str, set[str]]:
    """Record the output dtype of layer 0's q_proj, split by phase (grad off = sampling, on = training)."""
    seen: dict[str, set[str]] = {"sampling": set(), "training": set()}

    def hook(_mod, _inp, out):
        seen["training" if torch.is_grad_enabled() else "sampling"].add(str(out.dtype).replace("torch.", ""))

    for m in models:
        if isinstance(m, torch.nn.Module):
            for name, mod in m.named_modules():
                if name.endswith(PROBE):
                    mod.register_forward_hook(hook)
    return seen


def coin(text: str) -> float:
    """--reward coin: a fixed pseudo-random 0/1 per completion text, so that nearly every group has a
    non-zero advantage and both trainers train on (nearly) all 32 completions."""
    return float(zlib.crc32(text.encode()) & 1)


def summarise(steps: list[dict], warmup: int, probe: dict[str, set[str]]) -> dict:
    measured = steps[warmup:]
    mean = lambda key: statistics.fmean(s[key] for s in measured)  # noqa: E731
    return {
        "step_s": mean("seconds"),
        "step_s_median": statistics.median(s["seconds"] for s in measured),  # robust to a load spike
        "rollout_s": mean("rollout_s"),  # sampling (TRL: generate + reward + advantages)
        "rest_s": mean("seconds") - mean("rollout_s"),  # mostly forward/backward + optimizer
        "trained_seqs": mean("trained_seqs"),
        "tokens_per_step": mean("tokens"),
        "completion_len_mean": mean("tokens") / mean("completions"),
        "accuracy": mean("accuracy"),
        "dtypes_seen": {k: sorted(v) for k, v in probe.items()},
        "steps": steps,  # every step, warm-up first
    }


# --- ours ----------------------------------------------------------------------------------------
def run_ours(a: argparse.Namespace, dtype: str, workdir: Path) -> dict:
    from agentic_gcpo.config import load_config
    from agentic_gcpo.train.trainer import Trainer

    n_steps = a.warmup + a.steps
    cfg = load_config(
        None,
        [
            "model.path=embedded",
            "tools.names=[]",
            "algorithm.name=grpo",
            f"engine.dtype={dtype}",
            f"train.precision={dtype}",
            f"rollout.group_size={a.group_size}",
            "rollout.max_turns=1",
            f"rollout.max_new_tokens_per_turn={a.max_new_tokens}",
            f"rollout.max_total_tokens={a.max_new_tokens + 1024}",  # never the binding limit
            "rollout.temperature=1.0",
            "rollout.top_p=1.0",
            f"train.prompts_per_step={a.prompts_per_step}",
            f"train.micro_batch_size={a.micro_batch}",
            f"train.lr={a.lr}",
            "train.lr_schedule=constant",
            "train.warmup_steps=0",
            "train.mini_batches=1",  # one optimizer step per rollout batch, no old-logprob pass
            "train.epochs=1",
            f"train.steps={n_steps}",
            f"data.limit={n_steps * a.prompts_per_step}",
            "data.shuffle=false",
            "eval.every=0",
            "train.save_final=false",
            "train.samples_per_step=0",
            "log.progress=false",
            "run.name=peer-trl-ours",
            f"run.output_dir={workdir}",
        ],
    )
    if a.reward == "coin":  # verify as usual (same cost, accuracy still reported), then replace the reward
        import agentic_gcpo.train.trainer as trainer_module

        real_score = trainer_module.score

        def coin_score(trajs, **kw):
            penalties = real_score(trajs, **kw)
            for t in trajs:
                t.reward = coin(t.final_text)
            return penalties

        trainer_module.score = coin_score
    trainer = Trainer(cfg)
    probe = dtype_probe(trainer.model, getattr(trainer.engine, "sampler", None))
    steps = []
    try:
        for i in range(n_steps):
            t0 = time.perf_counter()
            res = trainer.step(i)
            seconds = time.perf_counter() - t0
            trainer.logger.log(i + 1, res.metrics)  # outside the clock, as TRL's logging is
            own = [t for t in res.trajectories if not t.is_golden]
            steps.append(
                {
                    "seconds": seconds,
                    "rollout_s": res.metrics.get("time/rollout_s", float("nan")),
                    "tokens": sum(t.num_policy_tokens for t in own),
                    "completions": len(own),
                    "accuracy": statistics.fmean(float(t.correct) for t in own),
                    "trained_seqs": int(res.metrics.get("loss/active_seqs", 0)),
                    "logged_step_s": res.metrics.get("time/step_s"),
                }
            )
            print(f"  ours step {i + 1}/{n_steps}: {seconds:.1f}s, {steps[-1]['tokens']} tokens", flush=True)
    finally:
        trainer.close()
        if a.reward == "coin":
            trainer_module.score = real_score
    return summarise(steps, a.warmup, probe)


# --- TRL -----------------------------------------------------------------------------------------
def run_trl(a: argparse.Namespace, dtype: str, workdir: Path) -> dict:
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, AutoTokenizer, PrinterCallback, TrainerCallback
    from trl import GRPOConfig, GRPOTrainer

    n_steps = a.warmup + a.steps
    path = embedded_model_dir()
    # fp32 master weights, as ours; --trl-weights bfloat16 gives TRL pure bf16 weights instead (its usual
    # GPU recipe, not the same precision as ours: reported only as TRL's best case on this CPU).
    weights = torch.bfloat16 if a.trl_weights == "bfloat16" else torch.float32
    model = AutoModelForCausalLM.from_pretrained(path, dtype=weights)
    tok = AutoTokenizer.from_pretrained(path)
    chat = ChatFormat(tok, {})  # our system prompt for a model without tools: identical prompt ids
    problems = load_problems("builtin:gsm8k_train_500", n_steps * a.prompts_per_step, "gsm8k")
    data = Dataset.from_list(
        [{"prompt": chat.prompt_messages(p.question), "reference": p.reference} for p in problems]
    )

    batches: list[dict] = []  # one entry per generation batch (= per optimizer step here)

    def correctness(prompts, completions, reference, completion_ids, **_):
        texts = [c[-1]["content"] for c in completions]
        correct = [float(verify(x, r).correct) for x, r in zip(texts, reference)]
        batches.append({"tokens": sum(map(len, completion_ids)), "n": len(completion_ids), "r": correct})
        return [coin(x) for x in texts] if a.reward == "coin" else correct

    class Clock(TrainerCallback):
        def __init__(self) -> None:
            self.t0, self.seconds = 0.0, []

        def on_step_begin(self, args, state, control, **kw):
            self.t0 = time.perf_counter()

        def on_step_end(self, args, state, control, **kw):
            self.seconds.append(time.perf_counter() - self.t0)
            n = len(self.seconds)
            print(
                f"  trl step {n}/{n_steps}: {self.seconds[-1]:.1f}s, {batches[-1]['tokens']} tokens",
                flush=True,
            )

    gen_s: list[float] = []  # seconds of each generate-and-score phase
    prompt_ids: list[list[int]] = []  # what TRL actually tokenised, to compare with ours

    class TimedGRPO(GRPOTrainer):
        """GRPOTrainer unchanged, except that it times generate-and-score and keeps the prompt ids."""

        def _generate_and_score_completions(self, inputs):
            t0 = time.perf_counter()
            out = super()._generate_and_score_completions(inputs)
            gen_s.append(time.perf_counter() - t0)
            return out

        def _tokenize_prompts(self, prompts):
            out = super()._tokenize_prompts(prompts)
            prompt_ids.extend(list(ids) for ids in out[0])
            return out

    completions = a.group_size * a.prompts_per_step
    args = GRPOConfig(
        output_dir=str(workdir / "trl"),
        use_cpu=True,
        seed=0,
        bf16=dtype == "bfloat16",  # bf16 autocast over the (fp32) weights, as ours
        max_steps=n_steps,
        # one optimizer step = one generation batch of 32 completions, in micro-batches of 8
        per_device_train_batch_size=a.micro_batch,
        gradient_accumulation_steps=completions // a.micro_batch,
        steps_per_generation=completions // a.micro_batch,
        num_generations=a.group_size,
        num_iterations=1,
        max_completion_length=a.max_new_tokens,
        temperature=1.0,
        top_p=1.0,
        beta=0.0,
        loss_type="grpo",
        scale_rewards="group",
        epsilon=0.2,
        learning_rate=a.lr,
        lr_scheduler_type="constant",
        max_grad_norm=1.0,
        weight_decay=0.0,
        gradient_checkpointing=False,
        shuffle_dataset=False,
        logging_steps=1,
        report_to="none",
        save_strategy="no",
        disable_tqdm=True,
    )
    clock = Clock()
    trainer = TimedGRPO(
        model=model,
        reward_funcs=correctness,
        args=args,
        train_dataset=data,
        processing_class=tok,
        callbacks=[clock],
    )
    trainer.remove_callback(PrinterCallback)  # its per-step dicts; the numbers are kept below
    probe = dtype_probe(trainer.model)
    trainer.train()
    logged = [h["step_time"] for h in trainer.state.log_history if "step_time" in h]  # TRL's own clock
    steps = [
        {
            "seconds": s,
            "rollout_s": r,
            "tokens": b["tokens"],
            "completions": b["n"],
            "accuracy": statistics.fmean(b["r"]),
            "trained_seqs": b["n"],  # TRL forwards every completion
            "logged_step_s": t,
        }
        for s, r, b, t in zip(clock.seconds, gen_s, batches, logged)
    ]
    out = summarise(steps, a.warmup, probe)
    # TRL repeats each prompt G times; each must be the ids our ChatFormat renders for that problem.
    ours_ids = [chat.prompt_ids(p.question) for p in problems for _ in range(a.group_size)]
    out["prompt_ids_equal"] = prompt_ids == ours_ids[: len(prompt_ids)] and len(prompt_ids) > 0
    out["eos_token_ids"] = list(trainer.eos_token_ids)
    return out


# --- main ----------------------------------------------------------------------------------------
def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--steps", type=int, default=3, help="measured steps per trainer (after the warm-up)")
    p.add_argument("--warmup", type=int, default=1, help="steps run first and not counted")
    p.add_argument("--dtype", choices=["auto", "float32", "bfloat16"], default="auto")
    p.add_argument("--group-size", type=int, default=8)
    p.add_argument("--prompts-per-step", type=int, default=4)
    p.add_argument("--max-new-tokens", type=int, default=128)
    p.add_argument("--micro-batch", type=int, default=8)
    p.add_argument("--lr", type=float, default=1e-5)
    p.add_argument("--which", choices=["both", "ours", "trl"], default="both")
    p.add_argument(
        "--reward",
        choices=["verifier", "coin"],
        default="verifier",
        help="verifier: correctness (the real job; a 135M model rarely solves GSM8K, so ours often skips "
        "the update); coin: a pseudo-random 0/1 per completion, so both trainers do a full update",
    )
    p.add_argument(
        "--trl-weights",
        choices=["float32", "bfloat16"],
        default="float32",
        help="TRL's weight dtype; float32 (default) matches ours, bfloat16 is TRL's best case, not equal",
    )
    p.add_argument("--out", type=Path, default=RESULTS)
    a = p.parse_args()
    if (a.group_size * a.prompts_per_step) % a.micro_batch:
        p.error("group size x prompts per step must be a multiple of --micro-batch")

    prec = resolve(a.dtype)
    versions = {"torch": torch.__version__, "transformers": transformers.__version__}
    if a.which != "ours":
        import trl

        versions["trl"] = trl.__version__
    print(f"cpu: {cpu_description()}; torch threads {torch.get_num_threads()}")
    print("versions: " + ", ".join(f"{k} {v}" for k, v in versions.items()))
    print(f"precision: {prec.dtype} ({prec.reason})")
    print(
        f"job: G={a.group_size} x {a.prompts_per_step} prompts, <= {a.max_new_tokens} new tokens, "
        f"micro-batch {a.micro_batch}, {a.warmup} warm-up + {a.steps} measured steps"
    )

    result: dict = {
        "cpu": cpu_description(),
        "versions": versions,
        "dtype": prec.dtype,
        "dtype_reason": prec.reason,
        "settings": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(a).items()},
    }
    with tempfile.TemporaryDirectory(prefix="peer_trl-") as tmp:
        for name, run in (("ours", run_ours), ("trl", run_trl)):
            if a.which in ("both", name):
                load = os.getloadavg()[0]
                print(f"{name}: running (load average {load:.1f})", flush=True)
                result[name] = run(a, prec.dtype, Path(tmp))
                result[name]["load_avg_before_after"] = [load, os.getloadavg()[0]]

    print()
    for name in ("ours", "trl"):
        if name in result:
            r = result[name]
            print(
                f"{name:>4}: {r['step_s']:6.1f} s/step (median {r['step_s_median']:.1f}; "
                f"rollout {r['rollout_s']:.1f} s, rest {r['rest_s']:.1f} s) | "
                f"{r['tokens_per_step']:.0f} tokens/step, mean completion {r['completion_len_mean']:.1f} | "
                f"trained seqs {r['trained_seqs']:.1f} | accuracy {r['accuracy']:.2f} | "
                f"dtypes {r['dtypes_seen']}"
            )
    if "trl" in result:
        print(f"TRL prompt ids equal to ours: {result['trl']['prompt_ids_equal']}")
    if "ours" in result and "trl" in result:
        ours, peer = result["ours"], result["trl"]
        result["ratio_ours_over_trl"] = ours["step_s"] / peer["step_s"]
        result["ratio_median"] = ours["step_s_median"] / peer["step_s_median"]
        tok_ratio = ours["tokens_per_step"] / peer["tokens_per_step"]
        print(
            f"ratio ours/TRL: {result['ratio_ours_over_trl']:.2f} (target <= 0.7; medians "
            f"{result['ratio_median']:.2f}); tokens ours/TRL {tok_ratio:.2f}"
        )
    a.out.parent.mkdir(parents=True, exist_ok=True)
    a.out.write_text(json.dumps(result, indent=1) + "\n")
    print(f"wrote {a.out}")


if __name__ == "__main__":
    main()
