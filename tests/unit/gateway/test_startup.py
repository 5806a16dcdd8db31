"""What `cloister serve` says while it starts (`gateway.startup`, issue 33): steps with
their durations and a final block on a terminal; JSON log lines elsewhere."""

from __future__ import annotations

import io
import json

from gateway.startup import Startup


def test_on_a_terminal_each_step_and_the_ready_block_are_said_for_a_person() -> None:
    out = io.StringIO()
    startup = Startup(out, tty=True)
    with startup.step("starting the engine"):
        pass
    startup.ready({"public": "http://127.0.0.1:8000", "metrics": "http://127.0.0.1:9100"},
                  "ab" * 32, "cloister proxy --gateway http://127.0.0.1:8000 --simulated-roots X")
    text = out.getvalue()
    assert "  starting the engine ...\n  starting the engine: done in 0.0 s" in text
    assert "Cloister is ready" in text and "public   http://127.0.0.1:8000" in text
    assert "ab" * 32 in text and "A client runs:\n  cloister proxy --gateway" in text


def test_elsewhere_the_same_is_logged_as_json_lines(capsys) -> None:
    from enclave.logs import configure_logging

    configure_logging("info")
    startup = Startup(io.StringIO(), tty=False)
    with startup.step("the known-answer check"):
        pass
    startup.ready({"public": "http://127.0.0.1:8000"}, "cd" * 32, "cloister proxy ...")
    records = [json.loads(line) for line in capsys.readouterr().err.splitlines()
               if line.startswith("{")]
    events = {r["event"]: r for r in records}
    assert events["startup_step"]["step"] == "the known-answer check"
    assert events["startup_ready"]["workload"] == "cd" * 32
