"""Problems to train and evaluate on.

- `rows`: reading JSONL datasets (gsm8k, math, aime, svamp, generic shapes) into `Problem`s.
- `arith`: the seeded generator of multi-step arithmetic word problems behind `builtin:arith_train`,
  `builtin:arith_val` and `builtin:arith_test` (docs/data.md).
"""

from agentic_gcpo.data.rows import (
    DEFAULT_FIELDS,
    FORMATS,
    ROLES,
    DataError,
    Problem,
    ProblemStream,
    batches,
    load_problems,
    parse_gsm8k_row,
    parse_row,
    resolve_data_path,
)

__all__ = [
    "DEFAULT_FIELDS",
    "FORMATS",
    "ROLES",
    "DataError",
    "Problem",
    "ProblemStream",
    "batches",
    "load_problems",
    "parse_gsm8k_row",
    "parse_row",
    "resolve_data_path",
]
