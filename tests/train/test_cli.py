"""The `fsac` command line as a user runs it (subprocesses for exit codes and tracebacks)."""

import json
import math
import subprocess
import sys
from pathlib import Path

from fsac.cli import main
from tests.conftest import TINY_ARCH

FAST = ["--arch", TINY_ARCH, "--weights", "random", "--epochs1", "4", "--epochs2", "4", "-q"]


def _fsac(*args):
    return subprocess.run([sys.executable, "-m", "fsac.cli", *args], capture_output=True, text=True, timeout=300)


def test_unknown_model_is_a_one_line_error_without_traceback():
    r = _fsac("train", "--arch", "ViT-Nope", "--weights", "random")
    assert r.returncode == 2
    assert "unknown model 'ViT-Nope'" in r.stderr and "Traceback" not in r.stderr


def test_train_explain_and_overwrite_protection(bottle, tmp_path, capsys):
    out = tmp_path / "ckpt"
    shots = sorted((bottle / "train" / "good").glob("*.png"))[:2]
    assert main(["train", *map(str, shots), "--out", str(out), "--write-synth", "--synth", "mixed"] + FAST) == 0
    meta = json.loads((out / "model.json").read_text())
    assert meta["shots"] == 2 and meta["object_name"] == "bottle" and meta["train"]["synth"]["kind"] == "mixed"
    d = meta["diagnostics"]
    assert -1 <= d["cos_at"] <= 1 and -1 <= d["cos_t"] <= 1 and d["adapter_ratio"]["normal"] > 0
    assert math.isfinite(d["pair_gap"]) and all("overwhelmed" in w for w in d["warnings"])
    assert (out / "synth" / "contact_sheet.png").exists()
    # A second run into the same folder needs --force: a trained model is not lost by accident.
    assert main(["train", *map(str, shots), "--out", str(out)] + FAST) == 2
    assert "pass --force" in capsys.readouterr().err
    assert main(["train", *map(str, shots), "--out", str(out), "--force", "--seed", "1"] + FAST) == 0
    assert json.loads((out / "model.json").read_text())["seed"] == 1
    # Explanation map of a defective test image.
    img = next((bottle / "test" / "broken_large").glob("*.png"))
    assert main(["explain", str(img), "--model", str(out), "--out", str(tmp_path / "ex")]) == 0
    png = tmp_path / "ex" / f"{img.stem}_explain.png"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "logit z = " in capsys.readouterr().out


def test_shots_option_samples_from_a_folder(bottle, tmp_path):
    out = tmp_path / "k1"
    assert main(["train", str(bottle), "--shots", "1", "--out", str(out), "--preset", "visa"] + FAST) == 0
    meta = json.loads((out / "model.json").read_text())
    assert meta["shots"] == 1 and meta["object_name"] == "bottle"
    assert meta["train"]["preset"] == "visa" and meta["train"]["synth"]["kind"] == "nsa"
    assert meta["head"]["beta1"] == 1.0 and meta["head"]["beta2"] == 1.0


def test_the_same_photo_under_two_names_is_not_two_shots(bottle, tmp_path, capsys):
    good = sorted((bottle / "train" / "good").glob("*.png"))
    folder = tmp_path / "good"
    folder.mkdir()
    for name, src in [("a.png", good[0]), ("a_copy.png", good[0]), ("b.png", good[1]), ("c.png", good[2])]:
        (folder / name).write_bytes(src.read_bytes())
    # All four given: one is a copy, so this would be a 4-shot model of 3 parts.
    assert main(["train", *map(str, sorted(folder.iterdir())), "--out", str(tmp_path / "x")] + FAST) == 2
    err = capsys.readouterr().err
    assert "a_copy.png and" in err and "a.png have the same bytes" in err and "3 distinct images given" in err
    # Drawn from the folder: the copy is left out of the pool, and the run says so.
    out = tmp_path / "k3"
    assert main(["train", str(folder), "--shots", "3", "--out", str(out)] + FAST[:-1]) == 0
    assert "left out 1 byte-identical copy of other images" in capsys.readouterr().err
    names = sorted(Path(t["name"]).name for t in json.loads((out / "model.json").read_text())["train_images"])
    assert names == ["a.png", "b.png", "c.png"]


def test_synth_command_writes_pngs(bottle, tmp_path):
    assert main(["synth", str(bottle), "--out", str(tmp_path / "s"), "--kind", "nsa", "--per-image", "2",
                 "--max-images", "2"]) == 0
    assert len(list((tmp_path / "s").glob("*_nsa.png"))) + len(list((tmp_path / "s").glob("*_gaussian.png"))) == 4


def test_help_lists_commands():
    r = _fsac("--help")
    assert r.returncode == 0
    for cmd in ("train", "eval", "synth", "explain", "demo", "bench"):
        assert cmd in r.stdout


import pytest  # noqa: E402


@pytest.mark.parametrize("args, says", [
    (["train", "--shot", "4"], "No such option: --shot"),
    (["trian"], "No such command 'trian'. Did you mean 'train'?"),
    (["calibrate"], "Missing argument 'model'"),
    (["train", "--shots", "abc"], "Invalid value for '--shots'"),
    (["eval", "{bottle}", "--shots", "abc"], "--shots must be a comma-separated list of integers, got 'abc'"),
    (["train", "--no-such-option"], "No such option: --no-such-option"),
])
def test_usage_errors_are_one_line_and_exit_2(args, says, bottle):
    """Whatever click typer vendors, a usage error is one line on stderr and exit status 2."""
    r = _fsac(*[a.replace("{bottle}", str(bottle.parent)) for a in args])
    assert r.returncode == 2, r.stderr
    lines = [ln for ln in r.stderr.splitlines() if ln.strip() and not ln.startswith("!!")]
    assert len(lines) == 1, r.stderr
    assert says in lines[0] and lines[0].startswith("fsac: error: ") and "Traceback" not in r.stderr
    assert "python -m" not in lines[0]  # the hint names the command the user knows


def test_eval_checks_shots_against_the_pool_before_encoding(bottle):
    r = _fsac("eval", str(bottle.parent), "--shots", "300", "--arch", TINY_ARCH, "--weights", "random")
    assert r.returncode == 2
    assert "asked for 300 shots but" in r.stderr and "has only 209 normal images" in r.stderr
    assert "encoding test images" not in r.stderr  # refused before any image was encoded


def test_demo_prints_training_warnings_and_records_the_preset(tmp_path, capsys, monkeypatch):
    """`fsac demo` trains a model: its warnings are printed as `fsac train` prints them, and
    --preset is applied and recorded in the report and the checkpoint."""
    import fsac.train.diagnostics as diagnostics

    monkeypatch.setattr(diagnostics, "MIN_PROTOTYPE_COSINE", 2.0)  # any cosine warns
    out = tmp_path / "demo"
    assert main(["demo", "--arch", TINY_ARCH, "--weights", "random", "--max-test", "3", "--preset", "visa",
                 "--out", str(out), "-q"]) == 0
    err = capsys.readouterr().err
    assert "warning: the text adapter has overwhelmed the residual" in err
    assert err.count("overwhelmed") == 1  # once, not again from the evaluation's summary
    report = json.loads((out / "report" / "report.json").read_text())
    assert report["meta"]["train"]["preset"] == "visa" and report["meta"]["train"]["synth"]["kind"] == "nsa"
    four = [r for r in report["results"] if r["shots"] == 4][0]
    assert "overwhelmed" in four["diagnostics"]["warnings"][0]
    meta = json.loads((out / "model" / "model.json").read_text())
    assert meta["train"]["preset"] == "visa" and meta["head"]["beta1"] == 1.0 and meta["head"]["beta2"] == 1.0


def test_out_that_is_a_file_is_refused_before_any_work(bottle, tmp_path, capsys, monkeypatch):
    # Used to train (or evaluate) first and then die in mkdir with a FileExistsError traceback.
    import fsac.train.run as run

    def must_not_run(*a, **k):
        raise AssertionError("backbone loaded before --out was checked")

    monkeypatch.setattr(run, "load_backbone", must_not_run)
    blocker = tmp_path / "taken.png"
    blocker.write_bytes(b"x")
    shot = str(bottle / "train" / "good" / "000.png")
    for argv in (["train", shot, "--out", str(blocker)] + FAST,
                 ["eval", str(bottle), "--shots", "0", "--out", str(blocker)] + FAST,
                 ["synth", shot, "--out", str(blocker / "sub")],
                 ["explain", shot, "--model", str(tmp_path), "--out", str(blocker)]):
        assert main(argv) == 2, argv
        err = capsys.readouterr().err
        assert f"--out {blocker}" in err and "not a folder" in err, argv


def test_bad_numeric_options_are_one_line_errors(bottle, tmp_path, capsys):
    # NaN options used to train into a NaN checkpoint (exit 0); --smooth nan, --max-test -1
    # ended in tracebacks; --shots 0 / --max-images 0 gave messages that named no option.
    shot = str(bottle / "train" / "good" / "000.png")
    out = tmp_path / "o"
    cases = [(["train", shot, "--out", str(out), "--tau", "nan"] + FAST, "--tau must be a finite number"),
             (["train", shot, "--out", str(out), "--beta1", "inf"] + FAST, "--beta1 must be a finite number"),
             (["train", shot, "--out", str(out), "--lr2", "inf"] + FAST, "stage2_lr must be > 0 and finite (--lr2)"),
             (["train", str(bottle), "--shots", "0", "--out", str(out)] + FAST, "--shots must be >= 1"),
             (["eval", str(bottle), "--max-test", "-1", "--out", str(out)] + FAST, "--max-test must be >= 1"),
             (["synth", shot, "--out", str(out), "--max-images", "0"], "--max-images must be >= 1"),
             (["explain", shot, "--model", str(tmp_path), "--smooth", "nan", "--out", str(out)], "--smooth must be")]
    for argv, message in cases:
        assert main(argv) == 2, argv
        assert message in capsys.readouterr().err, argv
    assert not out.exists()  # nothing half-written
