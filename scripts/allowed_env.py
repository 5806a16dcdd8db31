"""Run a command with the part of this environment the gateway allows (`make serve`).

    .venv/bin/python scripts/allowed_env.py COMMAND [ARGS...]

`cloister serve` takes its environment as an allow-list and refuses to start beside a
variable that could steer its code (enclave/isolation.py): a CA bundle, a make or pip
setting, anything nobody listed. A developer's shell has plenty of those; this drops them,
says which on stderr, and runs COMMAND with the rest, as a measured image would start it.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from enclave.isolation import forbidden_variables, refused_variables  # noqa: E402


def main(argv: list[str]) -> int:
    if not argv:
        print(__doc__, file=sys.stderr)
        return 2
    dropped = sorted({*forbidden_variables(os.environ), *refused_variables(os.environ)})
    if dropped:
        print(f"make serve: not passing {', '.join(dropped)} (the gateway's environment is "
              "an allow-list: docs/operating.md)", file=sys.stderr)
    environment = {k: v for k, v in os.environ.items() if k not in dropped}
    os.execvpe(argv[0], argv, environment)
    return 0  # not reached


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
