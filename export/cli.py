"""`fsac export` commands (plain functions with typer annotations; fsac/cli.py registers them).

    fsac export CHECKPOINT [-o model.onnx] [--check-images DIR] [--optimize slim|ort|none] [--attention lean|torch]
                           [--last-block class-token|all-tokens]
                           [--engine --precision fp16|fp32|int8] [--force]
    fsac engine MODEL.onnx [--precision fp16|int8] [--max-batch 8]   (on the Jetson)

Imports of torch, onnx and onnxruntime happen inside the functions, so `fsac --help` and
the edge runtime never pay for them. `fsac export` itself never imports torch: the torch half
runs in a child process (`fsac.export.trace`), the rest here (`fsac.export.finish`).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import sys
import time
from pathlib import Path
from typing import Annotated, Optional

import typer

from fsac.errors import FsacError


def _say(quiet: bool, msg: str) -> None:
    if not quiet:
        print(msg, file=sys.stderr, flush=True)


def check_output_path(out: Path, force: bool) -> None:
    """Refuse, by name, a model file that exists (without --force), a folder, or a path under a file."""
    if out.is_dir():
        raise FsacError(f"{out} is a folder; name the model file, e.g. -o {out / 'model.onnx'}")
    if out.exists() and not force:
        raise FsacError(f"{out} exists; pass --force to overwrite it")
    for parent in (out.parent, *out.parent.parents):
        if parent.exists():  # the nearest existing one: mkdir would only say "File exists"
            if not parent.is_dir():
                raise FsacError(f"{parent} is a file, not a folder: cannot write the model file {out} there")
            break


def default_model_path(checkpoint: Path) -> Path:
    folder = checkpoint.parent if checkpoint.suffix == ".json" else checkpoint
    return folder / "model.onnx"


def export_command(
    checkpoint: Annotated[Path, typer.Argument(help="checkpoint folder written by `fsac train`")],
    out: Annotated[Optional[Path], typer.Option("--out", "-o", help="model file to write [default: CHECKPOINT/model.onnx]")] = None,
    check_images: Annotated[Optional[list[Path]], typer.Option(
        "--check-images", help="real images (files or folders) for the parity check [default: the training shots "
                               "plus a few held-out images from their folder]")] = None,
    force: Annotated[bool, typer.Option("--force", help="overwrite an existing model file / engine")] = False,
    tolerance: Annotated[float, typer.Option(help="max |Δ similarity| allowed between ONNX Runtime and PyTorch "
                                             "(the logit is held to tolerance / tau) "
                                                  "(1e-4 at most; may be made stricter)")] = 1e-4,
    optimize: Annotated[str, typer.Option(help="graph optimisation: slim (onnxslim, portable), ort (onnxruntime "
                                               "transformer fusions, ONNX Runtime only) or none")] = "slim",
    opset: Annotated[int, typer.Option(help="ONNX opset")] = 17,
    attention: Annotated[str, typer.Option(help="how the encoder's self-attention is traced: lean (2 Transposes per "
                                                "block, faster in OpenVINO and ONNX Runtime) or torch (torch's own "
                                                "slow-path graph); parity is checked either way")] = "lean",
    last_block: Annotated[str, typer.Option(help="what the encoder's last block computes: class-token (only the "
                                                 "[CLS] token the model reads, 7 % fewer operations on "
                                                 "ViT-B-16-plus-240) or all-tokens (the block as trained); "
                                                 "parity is checked either way")] = "class-token",
    weights: Annotated[Optional[str], typer.Option(help="backbone weights (tag or file) if not the recorded ones")] = None,
    engine: Annotated[bool, typer.Option("--engine", help="also build a TensorRT engine (run this on the target device)")] = False,
    precision: Annotated[str, typer.Option(help="engine precision: fp16, fp32 or int8 (int8 needs --int8-model)")] = "fp16",
    int8_model: Annotated[Optional[Path], typer.Option(help="QDQ model from `fsac quantize --target tensorrt`, for --precision int8")] = None,
    max_batch: Annotated[int, typer.Option(help="largest batch the engine accepts")] = 8,
    report: Annotated[Optional[Path], typer.Option(help="also write the export report as JSON here")] = None,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="no progress messages")] = False,
) -> dict:
    """Export a trained checkpoint to one sealed ONNX model file, checked against PyTorch."""
    checkpoint = Path(checkpoint)
    out = Path(out) if out is not None else default_model_path(checkpoint)
    check_output_path(out, force)
    if optimize not in ("slim", "ort", "none"):
        raise FsacError(f"--optimize must be slim, ort or none, got {optimize!r}")
    if attention not in ("lean", "torch"):
        raise FsacError(f"--attention must be lean or torch, got {attention!r}")
    if last_block not in ("class-token", "all-tokens"):
        raise FsacError(f"--last-block must be class-token or all-tokens, got {last_block!r}")
    if engine and precision == "int8" and int8_model is None:
        raise FsacError("--engine --precision int8 needs --int8-model (the output of `fsac quantize --target tensorrt`)")
    if not (0 < tolerance <= 1e-4):
        raise FsacError(f"--tolerance must be in (0, 1e-4] (fp32 parity is not negotiable), got {tolerance}")

    if engine:  # fail before the slow part: engines are built on the target device only
        from fsac.export.tensorrt_build import check_engine_options, cuda_device_name, default_engine_path, import_tensorrt

        if int8_model is not None and precision == "int8" and not Path(int8_model).is_file():
            raise FsacError(f"--int8-model: {int8_model} not found (the output of `fsac quantize --target tensorrt`)")
        check_engine_options(default_engine_path(int8_model if precision == "int8" else out, precision), precision,
                             max_batch, force)
        import_tensorrt()
        cuda_device_name()

    # The torch half (load, PyTorch reference, trace, weights written once) runs in its own
    # process: its imports and the torch weights are gone before this one opens a session.
    from fsac.export.finish import finish_export
    from fsac.export.trace import disk_error_message, run_in_child
    from fsac.procmem import peak_rss_self, rss_bytes

    t_start = time.perf_counter()
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        # Exclusive: two exports to one file would share (and delete) one scratch folder.
        with _sole_export(out), _scratch_folder(out) as workdir:
            rss_waiting = rss_bytes()
            job = {"checkpoint": str(checkpoint), "weights": weights, "opset": opset, "attention": attention,
                   "last_block": last_block,
                   "check_images": [str(p) for p in check_images] if check_images else None, "quiet": quiet,
                   "optimize": optimize}
            info = run_in_child(job, workdir)
            result = finish_export(workdir, info, out, force=force, tolerance=tolerance, optimize=optimize,
                                   quiet=quiet)
    except OSError as e:  # a full disk, a folder that cannot be written: one line naming the file
        raise FsacError(disk_error_message(e, _workdir_for(out), optimize)) from e
    result["peak_rss"] = {"trace_process_bytes": info.get("peak_rss_bytes"), "export_process_while_tracing_bytes":
                          rss_waiting, "export_process_bytes": peak_rss_self()}
    result["total_s"] = time.perf_counter() - t_start
    if engine:
        from fsac.export.tensorrt_build import build_engine, default_engine_path

        src = int8_model if precision == "int8" else out
        eng = build_engine(src, default_engine_path(src, precision), precision, max_batch, force=force)
        result["engine"] = eng.to_dict()
        _say(quiet, f"engine: {eng.engine} ({eng.precision}, {eng.size_bytes / 1e6:.1f} MB, built in {eng.build_s:.0f} s)")
    if report is not None:
        from fsac.io import atomic_write_json

        atomic_write_json(report, result)
    return result


def _preset_text(train: dict) -> str:
    """fsac.train_preset: the preset name, and the settings that differ from it, so the model
    file never names a preset whose values it does not have ("" for checkpoints without one)."""
    name, over = str(train.get("preset") or ""), train.get("preset_overrides") or {}
    return name + (" with " + ", ".join(f"{k}={v}" for k, v in over.items()) if name and over else "")


def _parity_image_paths(folder: Path, ck_meta: dict, check_images) -> list[Path]:
    from fsac.export.parity import select_parity_images

    return select_parity_images(folder, ck_meta, check_images)


@contextlib.contextmanager
def _sole_export(out: Path):
    """Within the block this process is the only `fsac export` writing `out`: an exclusive
    flock on a lock file beside it (removed afterwards; the kernel drops the lock if the
    process dies, so a killed export never blocks the next one)."""
    import fcntl

    lock = out.parent / f".{out.name}.export.lock"
    fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise FsacError(f"another fsac export is writing {out} now (it holds {lock}); wait for it to "
                            "finish, or write this one elsewhere with -o") from None
        try:
            yield
        finally:
            with contextlib.suppress(OSError):
                os.unlink(lock)
    finally:
        os.close(fd)


def _workdir_for(out: Path) -> Path:
    """The export's scratch folder, beside the output: its weight files are as large as the
    model, and a tmpfs /tmp would hold them in memory."""
    return out.parent / f".{out.name}.export"


@contextlib.contextmanager
def _scratch_folder(out: Path):
    """The export's scratch folder (`_workdir_for`), empty on entry (a killed export's
    leftovers would be appended to, not replaced) and removed on leaving, whatever happened."""
    workdir = _workdir_for(out)
    shutil.rmtree(workdir, ignore_errors=True)
    try:
        yield workdir
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


def export_trained(trained, checkpoint_sha: str, out: Path, image_paths: list[Path], force: bool = False,
                   tolerance: float = 1e-4, optimize: str = "slim", opset: int = 17, quiet: bool = False,
                   extra_meta: dict[str, str] | None = None, release_torch: bool = False,
                   attention: str = "lean", last_block: str = "class-token") -> dict:
    """The export, both halves in this process, for a TrainedModel already in memory (the
    benchmark, tests): `fsac.export.trace.trace_to_dir`, then `fsac.export.finish.finish_export`.

    release_torch: the caller is done with the torch model; its weights are freed once the
    graph is traced. The benchmark keeps them to time PyTorch afterwards.
    """
    from fsac.export.finish import finish_export
    from fsac.export.trace import trace_to_dir

    check_output_path(out, force)
    out.parent.mkdir(parents=True, exist_ok=True)
    with _scratch_folder(out) as workdir:
        info = trace_to_dir(trained, checkpoint_sha, list(image_paths), workdir, opset, attention, extra_meta, quiet,
                            release_torch=release_torch, last_block=last_block)
        if release_torch:
            _release_torch(trained)
        return finish_export(workdir, info, out, force=force, tolerance=tolerance, optimize=optimize, quiet=quiet)


def _encoder_shape(visual) -> tuple[int | None, int | None]:
    """(width, heads) of the ViT, for the "ort" optimiser. A function, so that no local name
    keeps the encoder's blocks (and their weights) alive once the torch model is released."""
    width = getattr(getattr(visual, "transformer", None), "width", None)
    blocks = getattr(visual.transformer, "resblocks", []) if width is not None else []
    heads = getattr(blocks[0].attn, "num_heads", None) if len(blocks) and hasattr(blocks[0], "attn") else None
    return width, heads


def _release_torch(trained) -> None:
    """Free the torch weights of a model nobody will run again (see export_trained)."""
    import gc

    from fsac.procmem import give_back_memory

    trained.backbone.model = None
    trained.backbone._visual_bf16 = None
    gc.collect()
    give_back_memory()


def _gflop_per_image(deploy, image_size: int, last_block: str = "class-token") -> float:
    from fsac.export.bench import model_flops

    return model_flops(deploy, image_size, last_block) / 1e9


def engine_command(
    model: Annotated[Path, typer.Argument(help="fsac model file (fp32 from `fsac export`, or INT8 QDQ from `fsac quantize --target tensorrt`)")],
    out: Annotated[Optional[Path], typer.Option("--out", "-o", help="engine file [default: MODEL.<precision>.engine]")] = None,
    precision: Annotated[str, typer.Option(help="fp16, fp32 or int8")] = "fp16",
    max_batch: Annotated[int, typer.Option(help="largest batch the engine accepts")] = 8,
    workspace_mb: Annotated[int, typer.Option(help="TensorRT builder workspace (MiB)")] = 1024,
    force: Annotated[bool, typer.Option("--force", help="overwrite an existing engine")] = False,
    verbose: Annotated[bool, typer.Option("--verbose", help="TensorRT's full build log")] = False,
    quiet: Annotated[bool, typer.Option("--quiet", "-q")] = False,
) -> dict:
    """Build a TensorRT engine (+ JSON sidecar) from a model file. Run it on the target device."""
    from fsac.export.tensorrt_build import build_engine, default_engine_path

    out = Path(out) if out is not None else default_engine_path(model, precision)
    rep = build_engine(model, out, precision, max_batch, workspace_mb, force, verbose)
    _say(quiet, f"engine: {rep.engine} ({rep.precision}, {rep.size_bytes / 1e6:.1f} MB, {rep.device}, "
                f"TensorRT {rep.tensorrt_version}, built in {rep.build_s:.0f} s); sidecar {rep.sidecar}")
    return rep.to_dict()
