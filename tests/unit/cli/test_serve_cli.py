"""`cloister serve` refusals decided from the command line alone."""

from __future__ import annotations

import os

import pytest

from cli.main import main
from cli.serve import unsealable
from enclave.sealed_state import SEV_GUEST
from gateway.config import ServeConfig


@pytest.mark.parametrize("count", ["0", "-1", "two"])
def test_a_worker_count_below_one_is_refused(count, capsys) -> None:
    with pytest.raises(SystemExit) as exited:
        main(["serve", "--workers", count])
    assert exited.value.code == 2
    assert "--workers" in capsys.readouterr().err


@pytest.mark.skipif(os.path.exists(SEV_GUEST), reason="this machine has a firmware key")
@pytest.mark.parametrize(("attestation", "data_key", "refused"), [
    ("auto", "auto", True),  # real hardware, no firmware key, no key file named
    ("tdx", "auto", True),
    ("tdx", "file:/encrypted/data-key", False),
    ("simulated", "auto", False),
])
def test_stored_state_is_never_sealed_with_an_unprotected_key(attestation, data_key,
                                                              refused) -> None:
    """Decided before anything starts (the parent of `--workers` made the key file
    before its workers refused)."""
    config = ServeConfig.of(attestation=attestation, data_key=data_key)
    assert unsealable(config) is refused
