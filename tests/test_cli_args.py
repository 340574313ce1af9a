"""One CLI vocabulary: every subcommand's `--help` runs, every flag has a help text, a shared flag reads the same
wherever it appears, no retired spelling survives, and a flag that cannot apply is an error naming both flags."""
from __future__ import annotations

import argparse
import re

import pytest

from exif_jax import cli, cli_args

# Commands that write an output folder / show progress bars: each must use the shared flag for it.
WRITES = ("train-tokenizer", "build-data", "make-splices", "localize", "eval-localize", "probe", "retrieval",
          "export", "import-official", "package")
PROGRESS = ("build-data", "make-splices", "localize", "eval-localize", "probe", "retrieval")


@pytest.fixture(scope="module")
def parsers() -> dict[str, argparse.ArgumentParser]:
    """Every subcommand's parser, built as `exif-jax` builds it."""
    sub = argparse.ArgumentParser(prog="exif-jax").add_subparsers()
    return {name: cli.add_command(sub, name)[0] for name in cli.COMMANDS}


def shared_flags() -> dict[str, argparse.Action]:
    """option string -> the action the shared groups of cli_args make for it (the reference wording)."""
    from exif_jax.eval.baselines import BASELINE_METHOD
    from exif_jax.eval.consensus import CONSENSUS
    from exif_jax.eval.embedders import DEFAULT_CROP_SIZE
    from exif_jax.eval.patches import NUM_PER_DIM

    ref = argparse.ArgumentParser()
    cli_args.add_model_source(ref, tuple(BASELINE_METHOD))
    cli_args.add_out(ref, "x")
    cli_args.add_progress(ref)
    cli_args.add_limit(ref, "x")
    cli_args.add_crop_size(ref, DEFAULT_CROP_SIZE)
    cli_args.add_grid(ref, CONSENSUS, NUM_PER_DIM)
    return {o: a for a in ref._actions if a.option_strings and a.dest != "help" for o in a.option_strings}


def _flat(text: str) -> str:
    return " ".join(text.split())


def test_every_flag_has_help_and_shared_flags_read_the_same(parsers):
    ref = shared_flags()
    seen: dict[str, list[str]] = {}
    for name, parser in parsers.items():
        for action in parser._actions:
            if action.dest == "help":
                continue
            assert action.help and action.help.strip(), f"exif-jax {name}: {action.option_strings or action.dest}"
            for opt in action.option_strings:
                assert opt not in cli_args.RETIRED, f"exif-jax {name} still has {opt}"
                if opt in ref:
                    seen.setdefault(opt, []).append(name)
                    assert action.help == ref[opt].help, f"exif-jax {name} {opt}: {action.help!r}"
                    assert action.option_strings == ref[opt].option_strings, (name, action.option_strings)
                    assert action.type == ref[opt].type and action.default == ref[opt].default, (name, opt)
    for name in WRITES:
        assert name in seen["-o"], f"exif-jax {name} must take -o/--out"
    for name in PROGRESS:
        assert name in seen["--no-progress"], f"exif-jax {name} must take --no-progress"
    # The groups are really shared: each flag appears in more than one command.
    assert all(len(seen.get(o, [])) >= 2 for o in ("--checkpoint", "--step", "--baseline", "--crop-size",
                                                   "--limit", "--stride")), seen


@pytest.mark.parametrize("name", list(cli.COMMANDS))
def test_help_runs_and_shows_the_shared_wording(name, capsys):
    with pytest.raises(SystemExit) as e:
        cli.main([name, "--help"])
    assert e.value.code == 0
    text = capsys.readouterr().out
    assert text.startswith(f"usage: exif-jax {name}")
    flat = _flat(text)
    for opt, action in shared_flags().items():
        if re.search(rf"(?<![\w-]){re.escape(opt)}(?![\w-])", text.split("\n\n", 1)[0]):  # in the usage line
            assert _flat(action.help) in flat, (name, opt)
    for old in cli_args.RETIRED:
        assert not re.search(rf"(?<![\w-]){re.escape(old)}(?![\w-])", text), (name, old)


@pytest.mark.parametrize("argv, words", [
    (["localize", "p.jpg", "--checkpoint", "WD", "--crop-size", "64", "-o", "o"], ("--crop-size", "--checkpoint")),
    (["localize", "p.jpg", "--baseline", "noise", "--step", "3", "-o", "o"], ("--step", "--checkpoint")),
    (["localize", "p.jpg", "--baseline", "noise", "--stride", "8", "--num-per-dim", "9", "-o", "o"],
     ("--num-per-dim", "--stride")),
    (["localize", "p.jpg", "--baseline", "noise", "--paper-color-bug", "-o", "o"],
     ("--paper-color-bug", "--checkpoint")),
    (["eval-localize", "--dataset", "folder:B", "--checkpoint", "WD", "--crop-size", "64", "-o", "o"],
     ("--crop-size", "--checkpoint")),
    (["eval-localize", "--dataset", "folder:B", "--baseline", "noise", "--step", "3", "-o", "o"],
     ("--step", "--checkpoint")),
    (["eval-localize", "--dataset", "folder:B", "--baseline", "noise", "--stride", "8", "--num-per-dim", "9",
      "-o", "o"], ("--num-per-dim", "--stride")),
    (["build-data", "--images", "D", "--yfcc-images", "I", "-o", "o"], ("--yfcc-images", "--yfcc-exif")),
    (["build-data", "--images", "D", "--keep-original", "--no-fast-path", "-o", "o"],
     ("--keep-original", "--no-fast-path")),
    (["train", "--config", "c.py", "--workdir", "w", "--distributed", "off", "--coordinator", "h:1"],
     ("--coordinator", "--distributed off")),
    (["train", "--config", "c.py", "--workdir", "w", "--num-processes", "2"], ("--num-processes", "--coordinator")),
])
def test_a_flag_that_cannot_apply_is_an_error(argv, words, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)  # nothing here: the check must come before any file is read
    monkeypatch.delenv("EXIF_JAX_COORDINATOR", raising=False)
    assert cli.main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"exif-jax {argv[0]}: ") and all(w in err for w in words), err
    assert not list(tmp_path.iterdir())  # nothing written
