"""A user tool defined in a temp .py file is trained with: a 1-step tiny-model run, end to end.

The tiny model is random, so it will not actually call the tool; what this proves is the path a
user takes: a file named in `tools.modules`, a name in `tools.names`, the config loads, the tool is
resolved and described in the system prompt the policy is trained on, and the run finishes.
"""

from __future__ import annotations

import json
import textwrap
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

USER_TOOLS = '''
from agentic_gcpo.tool_registry import tool


@tool
def my_tool(numbers: list[float], scale: float = 1.0) -> float:
    """Add up a list of numbers and multiply the sum by a scale.

    Args:
        numbers: The numbers to add.
        scale: Factor applied to the sum.
    """
    return sum(numbers) * scale
'''


def test_user_tool_in_a_one_step_run(tmp_path):
    from agentic_gcpo.config import load_config
    from agentic_gcpo.train.trainer import Trainer

    path = tmp_path / "my_tools.py"
    path.write_text(textwrap.dedent(USER_TOOLS))
    cfg = load_config(
        ROOT / "configs/tiny_cpu.yaml",
        [
            f"tools.modules=[{path}]",
            "tools.names=[python,my_tool]",
            "train.steps=1",
            f"run.output_dir={tmp_path}",
        ],
    )
    trainer = Trainer(cfg)
    assert list(trainer.tools) == ["python", "my_tool"]
    # The tool works as the agent loop would call it.
    from agentic_gcpo.tool_registry import ToolContext

    out = trainer.tools["my_tool"].call({"numbers": [1, 2, 3.5], "scale": 2}, ToolContext("t"))
    assert (out.status, out.observation) == ("ok", "13.0")

    run_dir = trainer.train()
    assert json.loads((run_dir / "summary.json").read_text())["steps"] == 1
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert len(rows) == 1 and "tools/tool_error" in rows[0]

    # The policy was shown the tool: its schema (with the docstring descriptions) is in the prompt.
    prompt = trainer.tok.decode(trainer.chat.prompt_ids("What is 1 + 1?"))
    assert '"name": "my_tool"' in prompt and "The numbers to add." in prompt
    sample = json.loads((run_dir / "samples.jsonl").read_text().splitlines()[0])
    assert "my_tool" in trainer.tok.decode(sample["token_ids"])
