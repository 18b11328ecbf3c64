"""fsac export under real faults: a full disk (small tmpfs mounts), a path it cannot write, a
killed tracing process, Ctrl-C, a SIGKILLed command. One line naming what went wrong, a
non-zero exit status, and nothing left behind (no scratch folder, no partial model file, no
process still writing)."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from fsac.errors import FsacError


def fsac_export(checkpoint: Path, out: Path, timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "fsac.cli", "export", str(checkpoint), "-o", str(out), "-q"],
                          capture_output=True, text=True, timeout=timeout)


def one_error_line(r: subprocess.CompletedProcess) -> str:
    assert r.returncode == 2, r.stderr
    lines = [ln for ln in r.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("fsac: error: "), r.stderr  # no traceback
    return lines[0]


def test_a_disk_too_small_for_the_weights_is_one_line_naming_the_folder(tiny_checkpoint, mount_small):
    fs = mount_small("256k")  # smaller than the tiny model's weights
    line = one_error_line(fsac_export(tiny_checkpoint, fs / "model.onnx"))
    assert "No space left on device" in line and str(fs) in line
    assert "3x the model file" in line  # what it needs, so the user knows how much to free
    assert list(fs.iterdir()) == []  # the scratch folder is gone, no partial model file


def test_a_disk_without_room_for_the_rest_is_refused_before_the_trace(tiny_checkpoint, mount_small):
    fs = mount_small("3m")  # the weights fit; the folded weights + model file + margin do not
    line = one_error_line(fsac_export(tiny_checkpoint, fs / "model.onnx"))
    assert "not enough free disk space for fsac export" in line and str(fs) in line
    assert "traced" not in line and list(fs.iterdir()) == []


def test_a_disk_that_fills_during_the_torch_free_half_is_one_line_and_leaves_nothing(tiny_checkpoint, mount_small):
    fs = mount_small("8m")  # enough for the tiny export (it succeeds here alone)
    folded = fs / ".model.onnx.export" / "folded.onnx"  # written by the torch-free half
    filled = threading.Event()

    def fill_when_folded() -> None:
        deadline = time.monotonic() + 240
        while not folded.exists() and time.monotonic() < deadline:
            time.sleep(0.002)
        fd = os.open(fs / "filler", os.O_WRONLY | os.O_CREAT)
        try:
            while True:
                os.write(fd, b"\0" * 65536)
        except OSError:
            filled.set()
        finally:
            os.close(fd)

    t = threading.Thread(target=fill_when_folded, daemon=True)
    t.start()
    r = fsac_export(tiny_checkpoint, fs / "model.onnx")
    t.join(timeout=30)
    assert filled.is_set(), "the filler never ran: folded.onnx did not appear"
    line = one_error_line(r)
    assert "No space left on device" in line and str(fs) in line
    assert sorted(p.name for p in fs.iterdir()) == ["filler"]  # no scratch, no .model.onnx.*.tmp


def test_the_same_export_fits_an_ample_disk(tiny_checkpoint, mount_small):
    fs = mount_small("8m")  # the control for the test above: the disk size alone is not the fault
    r = fsac_export(tiny_checkpoint, fs / "model.onnx")
    assert r.returncode == 0, r.stderr
    assert sorted(p.name for p in fs.iterdir()) == ["model.onnx"]


def test_check_free_space_compares_with_the_real_free_space(tmp_path, mount_small):
    from fsac.export.trace import SPACE_MARGIN_BYTES, check_free_space

    fs = mount_small("16m")
    free = os.statvfs(fs).f_bavail * os.statvfs(fs).f_frsize
    fits = (free - SPACE_MARGIN_BYTES) // 3 - 4096  # weights, folded weights, model file
    check_free_space(fs, fits, "slim")
    with pytest.raises(FsacError, match="not enough free disk space"):
        check_free_space(fs, fits + 8192, "slim")
    check_free_space(fs, fits + 8192, "slim", written=fits + 8192)  # the weights file is there already
    with pytest.raises(FsacError, match="not enough free disk space"):  # ort holds the weights once more
        check_free_space(fs, fits, "ort")


def test_a_model_over_2_gib_is_refused_before_the_trace(tmp_path):
    from fsac.export.trace import check_free_space

    with pytest.raises(FsacError, match="one ONNX file holds less than 2 GiB"):
        check_free_space(tmp_path, 2**31, "slim")


def test_an_output_that_is_a_folder_is_refused_by_name(tiny_checkpoint, tmp_path):
    line = one_error_line(fsac_export(tiny_checkpoint, tmp_path))
    assert f"{tmp_path} is a folder; name the model file" in line


def test_an_output_under_a_file_is_refused_in_one_line(tiny_checkpoint, tmp_path):
    (tmp_path / "afile").write_text("not a folder")
    line = one_error_line(fsac_export(tiny_checkpoint, tmp_path / "afile" / "sub" / "model.onnx"))
    assert f"{tmp_path / 'afile'} is a file, not a folder" in line


def test_a_read_only_folder_is_one_line_naming_it(tiny_checkpoint, tmp_path, mount_small):
    fs = mount_small("8m")
    subprocess.run(["mount", "-o", "remount,ro", str(fs)], check=True)
    line = one_error_line(fsac_export(tiny_checkpoint, fs / "model.onnx"))
    assert "Read-only file system" in line and str(fs) in line


def test_any_fsac_command_on_a_full_disk_is_one_line_not_a_traceback(bottle, mount_small):
    """fsac/cli.py: an OSError that is the machine's state (here ENOSPC from `fsac synth`'s
    atomic PNG writes) prints one line and exits 2, like a user error."""
    fs = mount_small("64k")
    r = subprocess.run([sys.executable, "-m", "fsac.cli", "synth", str(bottle / "train" / "good"), "-o",
                        str(fs / "synth"), "--max-images", "2"], capture_output=True, text=True, timeout=300)
    line = one_error_line(r)
    assert "No space left on device" in line and f"{fs}/synth/" in line  # the file it could not write


def test_an_output_folder_that_is_a_file_is_one_line_not_a_traceback(bottle, tmp_path):
    """fsac/cli.py: mkdir on a path that is a file raises FileExistsError (EEXIST); `fsac bench
    export --out-dir FILE` printed a traceback for it."""
    taken = tmp_path / "results"
    taken.write_text("not a folder")
    r = subprocess.run([sys.executable, "-m", "fsac.cli", "bench", "export", "--images", str(bottle / "train" / "good"),
                        "--out-dir", str(taken), "--quiet"], capture_output=True, text=True, timeout=300)
    line = one_error_line(r)
    assert "File exists" in line and str(taken) in line


def _trace_child_pid(job: Path, deadline: float) -> int | None:
    """The pid of the `python -m fsac.export.trace <job>` process, from /proc."""
    while time.monotonic() < deadline:
        for d in Path("/proc").iterdir():
            if d.name.isdigit():
                try:
                    argv = (d / "cmdline").read_bytes().split(b"\0")
                except OSError:
                    continue
                if b"fsac.export.trace" in argv and str(job).encode() in argv:
                    return int(d.name)
        time.sleep(0.01)
    return None


def test_a_killed_tracing_process_is_named_and_leaves_nothing(tiny_checkpoint, tmp_path):
    import signal

    out_dir = tmp_path / "out"
    proc = subprocess.Popen([sys.executable, "-m", "fsac.cli", "export", str(tiny_checkpoint), "-o",
                             str(out_dir / "model.onnx"), "-q"], stderr=subprocess.PIPE, text=True)
    pid = _trace_child_pid(out_dir / ".model.onnx.export" / "job.json", time.monotonic() + 120)
    assert pid is not None, "the tracing process never started"
    os.kill(pid, signal.SIGKILL)  # what the kernel's OOM killer does
    _, err = proc.communicate(timeout=120)
    line = one_error_line(subprocess.CompletedProcess(proc.args, proc.returncode, "", err))
    assert "killed by signal 9 (out of memory?)" in line
    assert list(out_dir.iterdir()) == []


def _wait_gone(pid: int, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
        except OSError:
            return True
        if state == "Z":
            return True
        time.sleep(0.01)
    return False


def test_ctrl_c_exits_130_in_one_line_and_leaves_nothing(tiny_checkpoint, tmp_path):
    """SIGINT to the process group, as a terminal's Ctrl-C sends it to both processes. typer
    returns Ctrl-C as exit code 130 instead of raising, and `fsac` used to exit 0 then."""
    import signal

    out_dir = tmp_path / "out"
    proc = subprocess.Popen([sys.executable, "-m", "fsac.cli", "export", str(tiny_checkpoint), "-o",
                             str(out_dir / "model.onnx"), "-q"], stderr=subprocess.PIPE, text=True,
                            start_new_session=True)
    pid = _trace_child_pid(out_dir / ".model.onnx.export" / "job.json", time.monotonic() + 120)
    assert pid is not None, "the tracing process never started"
    time.sleep(0.3)  # anywhere in the child: its imports, the build or the trace
    os.killpg(proc.pid, signal.SIGINT)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err
    assert err.strip().splitlines() == ["fsac: interrupted"]  # no traceback from either process
    assert _wait_gone(pid, 10) and list(out_dir.iterdir()) == []


def test_a_sigkilled_export_takes_its_tracing_process_with_it(tiny_checkpoint, tmp_path):
    """SIGKILL (the OOM killer) of the command: the kernel stops the tracing process too
    (PR_SET_PDEATHSIG), and the next export into the same place clears the scratch folder."""
    import signal

    out = tmp_path / "out" / "model.onnx"
    proc = subprocess.Popen([sys.executable, "-m", "fsac.cli", "export", str(tiny_checkpoint), "-o", str(out), "-q"],
                            stderr=subprocess.DEVNULL, start_new_session=True)
    pid = _trace_child_pid(out.parent / ".model.onnx.export" / "job.json", time.monotonic() + 120)
    assert pid is not None, "the tracing process never started"
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait(timeout=30)
    assert _wait_gone(pid, 10), "the tracing process outlived the command"
    assert (out.parent / ".model.onnx.export").exists() and not out.exists()  # what a SIGKILL leaves
    r = fsac_export(tiny_checkpoint, out)
    assert r.returncode == 0, r.stderr
    assert sorted(p.name for p in out.parent.iterdir()) == ["model.onnx"]


def test_a_file_that_fails_the_last_check_never_replaces_the_model(tiny_checkpoint, tmp_path, monkeypatch):
    """The sealed file is checked in the scratch folder and only then renamed to the output:
    an existing model survives a --force export whose written file fails its parity check
    (the failure injected into that one check)."""
    import fsac.export.parity as parity
    from fsac.export.cli import export_command

    out = tmp_path / "model.onnx"
    out.write_bytes(b"the model on the line")
    real = parity.check_parity

    def failing(torch_out, model, pixels, names, tau, tolerance, what):
        if what == "written model file":
            raise FsacError(f"{what}: parity failed (injected)")
        return real(torch_out, model, pixels, names, tau, tolerance, what)

    monkeypatch.setattr(parity, "check_parity", failing)
    with pytest.raises(FsacError, match="injected"):
        export_command(tiny_checkpoint, out=out, force=True, quiet=True, optimize="none")
    assert out.read_bytes() == b"the model on the line"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.onnx"]


def test_bad_engine_options_are_refused_before_the_export(tiny_checkpoint, tmp_path):
    r = subprocess.run([sys.executable, "-m", "fsac.cli", "export", str(tiny_checkpoint), "-o", str(tmp_path / "m.onnx"),
                        "--engine", "--max-batch", "0"], capture_output=True, text=True, timeout=120)
    assert "--max-batch must be >= 1" in one_error_line(r)
    assert list(tmp_path.iterdir()) == []  # refused before anything was written


def test_a_second_export_to_the_same_file_is_refused_while_the_first_runs(tiny_checkpoint, tmp_path):
    """Both would use one scratch folder (the second deleting the first's weights): the second
    is refused by name, the first finishes, and its lock file is gone afterwards."""
    out = tmp_path / "model.onnx"
    first = subprocess.Popen([sys.executable, "-m", "fsac.cli", "export", str(tiny_checkpoint), "-o", str(out), "-q"],
                             stderr=subprocess.PIPE, text=True)
    assert _trace_child_pid(tmp_path / ".model.onnx.export" / "job.json", time.monotonic() + 120) is not None
    line = one_error_line(fsac_export(tiny_checkpoint, out))
    assert f"another fsac export is writing {out} now" in line
    _, err = first.communicate(timeout=300)
    assert first.returncode == 0, err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.onnx"]
