"""The environment the tests start Cloister's processes with: this one's, less what the
gateway's allow-list refuses (enclave/isolation.py), as a measured image starts it. The
machine running the tests may set anything (CA bundles, pip settings, CI's own)."""

from __future__ import annotations

import os

from enclave.isolation import refused_variables


def clean_environment(**extra: str) -> dict[str, str]:
    refused = set(refused_variables(os.environ))
    return {**{k: v for k, v in os.environ.items() if k not in refused}, **extra}
