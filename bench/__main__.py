"""`python -m bench` (`make bench`): run the core benchmark; the channel and tuning benchmarks are
separate scripts, listed here, because each starts its own fake platform or training run.

    .venv/bin/python -m bench [core_bench options, e.g. --data-dir DIR --sections 1,2,3]
"""

from __future__ import annotations

import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

from bench import core_bench  # noqa: E402


def others() -> list[Path]:
    return sorted(p for p in HERE.glob("*_bench.py") if p.name != "core_bench.py")


if __name__ == "__main__":
    print("Other benchmarks (run each on its own):", file=sys.stderr)
    for script in others():
        print(f"  .venv/bin/python bench/{script.name} [--data-dir DIR]", file=sys.stderr)
    print(file=sys.stderr)
    core_bench.main(sys.argv[1:])
