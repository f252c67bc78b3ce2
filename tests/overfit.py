"""Teach a tiny random model one golden tool trajectory by heart, so its greedy rollout calls the tool.

The random tiny models never write a tool call on their own; tests that need a real multi-turn tool
rollout through a real engine (the REPL, the vLLM engine) overfit one first (~10 s on CPU)."""

from __future__ import annotations

import torch

QUESTION = "Tom has 3 apples and buys 4 more. How many apples does he have now?"
GOLDEN = [
    {"role": "assistant", "content": "```python\nx = 3 + 4\nprint(x)\n```\n"},
    {"role": "assistant", "content": "The answer is \\boxed{7}."},
]


def overfit(
    model: torch.nn.Module, golden_ids: list[int], loss_mask: list[int], max_steps: int = 300
) -> float:
    """Teacher-force `model` on the loss-mask tokens of one trajectory until greedy reproduces them;
    returns the final loss."""
    ids = torch.tensor([golden_ids])
    mask = torch.tensor(loss_mask[1:]).bool()  # position i predicts token i + 1
    pos, target = torch.nonzero(mask).squeeze(-1), ids[0, 1:][mask]
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # on a busy 2-core machine, one thread is ~10x faster for this size
    try:
        opt = torch.optim.Adam(model.parameters(), lr=1e-2)
        model.train()
        for _ in range(max_steps):
            logits = model.lm_head(model.model(input_ids=ids).last_hidden_state[0, pos])
            loss = torch.nn.functional.cross_entropy(logits, target)
            if bool((logits.argmax(-1) == target).all()) and loss.item() < 0.3:
                break
            opt.zero_grad()
            loss.backward()
            opt.step()
        model.eval()
    finally:
        torch.set_num_threads(threads)
    return float(loss.item())
