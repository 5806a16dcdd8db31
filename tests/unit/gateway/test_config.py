"""Configuration is a value (`gateway.config.ServeConfig`): one description of each
option gives the command line, the `--config` file and the measured workload."""

from __future__ import annotations

import dataclasses
import re

import pytest

from attestation.workload import workload_digest
from cli.arguments import add_arguments, build
from cli.main import _parser, main
from enclave.padding import PaddingPolicy
from gateway import options
from gateway.config import KeyholderConfig, Limits, ServeConfig
from gateway.options import ConfigError, load_toml, option
from gateway.workload import build_manifest


def _serve_parser():
    sub = next(a for a in _parser()._actions if a.dest == "command")
    return sub.choices["serve"]


def test_serve_help_lists_exactly_the_configuration_fields() -> None:
    listed = {flag for action in _serve_parser()._actions for flag in action.option_strings
              if flag.startswith("--")} - {"--help", "--config"}
    assert listed == set(options.flags_of(ServeConfig))
    help_text = _serve_parser().format_help()
    for flag in options.flags_of(ServeConfig):
        assert re.search(rf"{flag}\b", help_text), flag


@pytest.mark.parametrize("config_type", [ServeConfig, KeyholderConfig])
def test_every_option_is_written_once_and_says_why_if_it_is_not_measured(config_type) -> None:
    fields = options.fields(config_type)
    names = [each.name for each in fields]
    assert len(names) == len(set(names))  # ServeConfig.of(name=...) is unambiguous
    for each in fields:
        assert each.how.help, each.key
        assert each.how.unmeasured is None or len(each.how.unmeasured) > 10, each.key


def _extended(new_default: object):
    """ServeConfig with one more limit, added the way a developer would: a field."""
    limits = dataclasses.make_dataclass(
        "MoreLimits", [("max_images", int, option(new_default, "images a request may carry",
                                                  minimum=0))],
        bases=(Limits,), frozen=True)
    return dataclasses.make_dataclass(
        "MoreConfig", [("limits", limits, dataclasses.field(default_factory=limits))],
        bases=(ServeConfig,), frozen=True)


def _digest(config) -> bytes:
    return workload_digest(build_manifest([], config.workload_settings()))


def test_a_new_option_is_in_the_measured_identity_with_no_other_edit() -> None:
    more = _extended(4)
    assert more().workload_settings()["max_images"] == 4
    assert _digest(more()) != _digest(ServeConfig())
    assert _digest(options.of(more, max_images=5)) != _digest(more())
    # and it is a flag and a config entry at once
    import argparse

    parser = argparse.ArgumentParser()
    add_arguments(parser, more)
    assert build(more, parser.parse_args(["--max-images", "7"])).config.limits.max_images == 7
    assert options.make(more, options.read_table(more, {"limits": {"max_images": 9}})
                        ).limits.max_images == 9


def test_the_fleets_trust_anchors_are_measured(tmp_path) -> None:
    """An operator who swaps the release key (or the keyholder's) changes the digest the
    clients and the fleet's statements pin."""
    from attestation.statement import generate_key, key_id, public_pem

    honest_key = generate_key()
    honest, operators = tmp_path / "release.pub", tmp_path / "operator.pub"
    honest.write_bytes(public_pem(honest_key.public_key()))
    operators.write_bytes(public_pem(generate_key().public_key()))
    for config_type in (ServeConfig, KeyholderConfig):
        with_honest = options.of(config_type, release_key=(honest,), join=("http://k",))
        swapped = options.of(config_type, release_key=(operators,), join=("http://k",))
        assert _digest(with_honest) != _digest(swapped)
        settings = with_honest.workload_settings()
        assert settings["release_key_ids"] == [key_id(honest_key.public_key())]
        assert settings["min_statement_version"] == 0
        assert _digest(options.of(config_type, release_key=(honest,))) != _digest(with_honest)
        floored = options.of(config_type, release_key=(honest,), join=("http://k",),
                             min_statement_version=4)
        assert _digest(floored) != _digest(with_honest)
    # where it listens, or from which file (in which spelling) it reads the same key, is
    # not the workload
    moved = tmp_path / "elsewhere.pub"
    moved.write_bytes(b"a comment\n" + honest.read_bytes() + b"\n\n")
    assert ServeConfig.of(release_key=(honest,), port=9).same_workload(
        ServeConfig.of(release_key=(moved,)))
    garbage = tmp_path / "garbage.pub"
    garbage.write_bytes(b"not a key")
    with pytest.raises(ConfigError, match="holds no public key"):
        ServeConfig.of(release_key=(garbage,)).workload_settings()


def test_a_config_file_is_read_and_the_flag_wins(tmp_path, capsys, monkeypatch) -> None:
    path = tmp_path / "cloister.toml"
    path.write_text('[limits]\nmax_in_flight = 12\nmax_per_client = 3\n'
                    '[side_channels]\npadding = "fixed:1024"\n'
                    '[listeners]\ntls_host = ["gw.example", "10.0.0.1"]\n')
    args = _parser().parse_args(["serve", "--config", str(path), "--max-per-client", "5"])
    built = build(ServeConfig, args, load_toml(path))
    config = built.config
    assert (config.limits.max_in_flight, config.limits.max_per_client) == (12, 5)
    assert config.side_channels.padding == PaddingPolicy("fixed", 1024)
    assert config.listeners.tls_host == ("gw.example", "10.0.0.1")
    assert built.overridden == ("limits.max_per_client: file 3, flag 5",)
    # The start log says so (the start is then refused for another reason).
    monkeypatch.setenv("LD_PRELOAD", "/tmp/x.so")
    assert main(["serve", "--config", str(path), "--max-per-client", "5"]) == 2
    err = capsys.readouterr().err
    assert "config_overridden" in err and "limits.max_per_client" in err


@pytest.mark.parametrize(("text", "named"), [
    ("[limits]\nmax_in_fligth = 3\n", "unknown key limits.max_in_fligth; [limits] has "),
    ("[limit]\nmax_in_flight = 3\n", "unknown section [limit]"),
    ('[limits]\nmax_in_flight = "many"\n', "limits.max_in_flight (--max-in-flight) must be "
                                           "an integer of at least 1"),
    ("[limits]\nmax_in_flight = 0\n", "limits.max_in_flight (--max-in-flight) must be an "
                                      "integer of at least 1, not 0"),
    ("[listeners]\ntls = 1\n", "listeners.tls (--tls) must be true or false"),
    ('[attestation]\nattestation = "sgx"\n', "must be one of auto, snp, tdx, simulated"),
    ('[side_channels]\npadding = "pow3:5"\n', "side_channels.padding (--padding) must be "
                                              "off|pow2:N|fixed:N"),
    ('[fleet]\nrelease_key = "one.pub"\n', "fleet.release_key (--release-key) must be a "
                                           "list of a file path"),
    ("limits = 3\n", "[limits] must be a table"),
    ("[limits\n", "not TOML"),
])
def test_a_bad_config_file_is_refused_at_start_with_the_key_and_its_form(
        tmp_path, capsys, text, named) -> None:
    path = tmp_path / "cloister.toml"
    path.write_text(text)
    assert main(["serve", "--config", str(path)]) == 2
    assert named in capsys.readouterr().err


def test_a_bad_flag_is_refused_with_its_form(capsys) -> None:
    with pytest.raises(SystemExit) as exited:
        main(["serve", "--max-in-flight", "0"])
    assert exited.value.code == 2
    assert "--max-in-flight" in capsys.readouterr().err


def test_inconsistent_keys_are_refused_before_anything_starts(capsys) -> None:
    assert main(["serve", "--key-rotation-seconds", "60", "--key-grace-seconds", "120"]) == 2
    assert "--key-grace-seconds must not exceed" in capsys.readouterr().err


def test_the_flat_constructor_refuses_unknown_options() -> None:
    assert ServeConfig.of(max_in_flight=2).limits.max_in_flight == 2
    with pytest.raises(TypeError, match="max_inflight"):
        ServeConfig.of(max_inflight=2)
    with pytest.raises(ConfigError, match="limits.max_in_flight"):
        options.read_table(ServeConfig, {"limits": {"max_in_flight": -1}})


def test_the_configuration_reference_is_the_configuration() -> None:
    """docs/configuration.md is written from the types (`python -m
    gateway.config_reference`); an option added, renamed or re-documented without
    rewriting it fails here."""
    from gateway.config_reference import DOC, reference

    assert DOC.read_text() == reference(), "run: python -m gateway.config_reference"


def test_more_workers_than_cores_get_a_warning_with_the_measured_cost(capsys) -> None:
    from gateway.workers import warn_past_cores

    assert not warn_past_cores(2, 2)
    assert capsys.readouterr().err == ""
    assert warn_past_cores(8, 2)
    said = capsys.readouterr().err
    assert "--workers 8 on 2 cores" in said and "1.16x" in said


def test_a_newcomer_gets_the_commands_and_a_mistyped_flag_its_closest(capsys) -> None:
    from cli.main import main

    assert main([]) == 0
    assert "cloister proxy --gateway URL" in capsys.readouterr().out
    with pytest.raises(SystemExit) as exited:
        main(["serve", "--atestation", "simulated"])
    assert exited.value.code == 2
    assert "did you mean --attestation?" in capsys.readouterr().err


@pytest.mark.parametrize(("argv", "said"), [
    # a flag of another command is not suggested as itself
    (["release", "sign", "--simulated", "--state-dir", "x"],
     "--state-dir is not an option of `cloister release sign`"),
    # suggestions come from the command given, not from every command
    (["receipts", "list", "--gatway", "x"], "unrecognized arguments"),
    (["attest", "--gateway", "http://gw", "--polcy", "p"], "did you mean --policy?"),
])
def test_a_suggestion_is_a_flag_of_the_command_given(argv, said, capsys) -> None:
    from cli.main import main

    with pytest.raises(SystemExit):
        main(argv)
    error = capsys.readouterr().err
    assert said in error
    assert "did you mean --state-dir" not in error
