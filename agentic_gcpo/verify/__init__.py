"""The verifier (the RL reward): extraction, our normalisation rules, exact numbers, math-verify.

``verify(text, reference)`` extracts the model's final answer and decides whether it is equivalent
to the reference; it never raises on odd input, never hangs (the slow checkers run in killable
helper processes) and prefers a false "wrong" to a false "right". See ``core`` for the pipeline
and docs/verifier.md for the rules and the measured agreement.

Modules: ``extract`` (finding the answer), ``rules`` (our LaTeX rewrites and answer shapes),
``units``, ``normalise`` (our LaTeX -> plain text), ``numeric`` (exact Fractions), ``helper_pool``
and ``worker`` (the killable SymPy / math-verify helpers), ``core`` (the pipeline), ``cli``.
"""

from agentic_gcpo.verify.core import (
    VerifyResult,
    check_modes,
    extract_answer,
    is_equivalent,
    verify,
)
from agentic_gcpo.verify.extract import EXTRACT_MODES

__all__ = ["EXTRACT_MODES", "VerifyResult", "check_modes", "extract_answer", "is_equivalent", "verify"]
