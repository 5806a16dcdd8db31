"""`cloister serve --workers` on the command line."""

from __future__ import annotations

import pytest

from gateway.cli import main


@pytest.mark.parametrize("count", ["0", "-1", "two"])
def test_a_worker_count_below_one_is_refused(count, capsys) -> None:
    with pytest.raises(SystemExit) as exited:
        main(["serve", "--workers", count])
    assert exited.value.code == 2
    assert "--workers" in capsys.readouterr().err
