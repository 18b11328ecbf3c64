"""The torch half of `fsac export`: trace the graph, run the PyTorch reference, write the weights once.

    info = trace_to_dir(trained, checkpoint_sha, image_paths, workdir, opset, attention)

writes into `workdir`:
    graph.onnx     the traced graph, weights as ONNX external data (a few hundred KB)
    weights.bin    every weight the graph uses, once, page-aligned (written from torch's own memory)
    reference.npz  the parity images' pixels and the PyTorch outputs on them
and returns what the torch-free half (`fsac.export.finish`) needs, JSON-able.

The weights are written first; with `release_torch` they are then swapped for zero-stride
stand-ins (`release_for_trace`), and the graph is traced with `export_params=False,
do_constant_folding=False`: the exporter copies no weights into its protobuf and computes no
folded second copy of them; the folding happens without torch, one node at a time
(`fsac.export.fold`). So this process holds the model's weights once, and nothing else of
that size (the exporter's shape inference still materialises the stand-ins it is given).

`fsac export` runs this in its own process (`python -m fsac.export.trace JOB.json`), so that
torch's and open_clip's ~0.7 GB of imports and the torch weights are gone before the
ONNX-side sessions exist; `fsac bench export` calls `trace_to_dir` in-process.
"""

from __future__ import annotations

import contextlib
import gc
import json
import os
import sys
import time
import warnings
from pathlib import Path

import numpy as np

from fsac.errors import FsacError
from fsac.modelfile import INPUT_NAME, OUTPUT_NAMES

GRAPH_FILE = "graph.onnx"
WEIGHTS_FILE = "weights.bin"
REFERENCE_FILE = "reference.npz"


def trace_weightless(deploy_model, image_size: int, path: Path, opset: int, attention: str,
                     last_block: str = "class-token") -> None:
    """torch.onnx.export of `deploy_model` to `path` with no parameters and no folding: every
    weight is a graph input named by its state-dict key, passed in as an argument
    (`fsac.export.stream.weights_as_inputs`), so the values may be stand-ins."""
    import torch

    from fsac.train.last_block import last_block as last_block_traced
    from fsac.export.lean_attention import lean_attention
    from fsac.export.onnx_export import _mha_fastpath_disabled
    from fsac.export.stream import weight_names, weights_as_inputs

    device = next(deploy_model.parameters()).device
    example = torch.zeros(1, image_size, image_size, 3, dtype=torch.uint8, device=device)
    axes = {INPUT_NAME: {0: "batch"}, **{name: {0: "batch"} for name in OUTPUT_NAMES}}
    names = weight_names(deploy_model)
    state = deploy_model.state_dict(keep_vars=True)
    weights = [state[n] for n in names]
    with warnings.catch_warnings(), _mha_fastpath_disabled(), lean_attention(deploy_model, attention), \
            last_block_traced(deploy_model, last_block), weights_as_inputs(deploy_model, names), torch.no_grad():
        warnings.simplefilter("ignore")  # the TorchScript exporter's deprecation notice, trace warnings
        torch.onnx.export(
            deploy_model, (example, *weights), str(path), input_names=[INPUT_NAME, *names],
            output_names=list(OUTPUT_NAMES), dynamic_axes=axes, opset_version=opset, export_params=False,
            do_constant_folding=False, dynamo=False,
            # No deduplication "by value": it would merge distinct weights that happen to be
            # equal (two all-zero biases).
            keep_initializers_as_inputs=True,
        )


def write_weights(deploy_model, weights_path: Path, spilled: dict | None = None) -> dict[str, bytes]:
    """Every tensor of the model's state dict -> its TensorProto (serialized), large ones
    written to `weights_path` straight from the torch tensor's memory (or already there:
    `spilled`, see `fsac.export.stream.spilled_while_built`), small ones (biases,
    LayerNorm) inline: the optimiser then sees their values, as it did when torch folded
    (onnxslim drops the Add of an all-zero bias, for one)."""
    from onnx import numpy_helper

    from fsac.export.external import TensorFile
    from fsac.export.stream import is_standin, spilled_protos
    from fsac.export.weightless import DETACH_MIN_BYTES

    store = TensorFile(weights_path)
    protos = {name: t.SerializeToString() for name, t in spilled_protos(deploy_model, spilled or {}).items()}
    for name, tensor in deploy_model.state_dict(keep_vars=True).items():
        if name in protos:
            continue
        if is_standin(tensor):
            raise FsacError(f"{name}: the model holds a stand-in, not the weight (spilled while building, but not "
                            "recorded)")
        array = tensor.detach().cpu().contiguous().numpy()
        t = numpy_helper.from_array(array, name) if array.nbytes < DETACH_MIN_BYTES else store.append(name, array)
        protos[name] = t.SerializeToString()
    return protos


def release_for_trace(deploy_model) -> None:
    """Replace every large weight of the model by a zero-stride stand-in of the same shape and
    type (no memory): the trace needs shapes, and the exporter's shape inference materialises
    the parameters it is given (+ 0.4 GB on the full model, measured). Only for a model
    nobody runs again: its weights are in the weights file by now. A value-dependent branch
    traced differently would fail the parity check, which runs on the real weights."""
    import torch

    from fsac.export.stream import SPILL_MIN_BYTES, standin

    with torch.no_grad():
        for tensor in deploy_model.state_dict(keep_vars=True).values():
            if tensor.numel() * tensor.element_size() >= SPILL_MIN_BYTES:
                tensor.data = standin(tensor)


def bind_weights(graph_path: Path, protos: dict[str, bytes]) -> int:
    """Turn the weight inputs of the traced graph into the initializers `write_weights`
    made -> number of weights bound."""
    import onnx

    model = onnx.load(str(graph_path), load_external_data=False)
    inputs = list(model.graph.input)
    unknown = [i.name for i in inputs if i.name != INPUT_NAME and i.name not in protos]
    if unknown:
        raise FsacError(f"the traced graph has inputs that are not weights of the model: {unknown[:5]}")
    del model.graph.input[:]
    model.graph.input.extend([i for i in inputs if i.name == INPUT_NAME])
    bound = [i.name for i in inputs if i.name != INPUT_NAME]
    for name in bound:
        model.graph.initializer.add().ParseFromString(protos[name])
    onnx.save(model, str(graph_path))
    return len(bound)


def trace_to_dir(trained, checkpoint_sha: str, image_paths: list[Path], workdir: Path, opset: int = 17,
                 attention: str = "lean", extra_meta: dict[str, str] | None = None, quiet: bool = False,
                 release_torch: bool = False, spilled: dict | None = None, last_block: str = "class-token") -> dict:
    """See the module docstring. `trained` is a `fsac.train.checkpoint.TrainedModel`.
    release_torch: nobody runs the torch model afterwards, so its weights are freed before the
    trace (`release_for_trace`); the benchmark keeps them to time PyTorch. spilled: the
    backbone was built with `fsac.export.stream.spilled_while_built` into workdir's weights
    file; the reference then runs block by block (`fsac.export.stream.streamed`)."""
    from fsac.export.cli import _encoder_shape, _gflop_per_image, _say
    from fsac.export.onnx_export import build_metadata
    from fsac.export.parity import load_pixels, run_torch
    from fsac.export.stream import streamed
    from fsac.procmem import give_back_memory

    workdir.mkdir(parents=True, exist_ok=True)
    deploy = trained.deploy_model()
    spec = trained.backbone.spec
    pixels = load_pixels(image_paths, spec)
    _say(quiet, f"parity images: {len(image_paths)} real images")
    t0 = time.perf_counter()
    # Batches of 2: the full model's activations at batch 8 raised this process's peak by
    # 110 MiB over batch 2 (measured), for no gain on a handful of images.
    with (streamed(deploy, spilled, workdir) if spilled else contextlib.nullcontext()):
        torch_out = run_torch(deploy, pixels, batch_size=2)
    torch_s = time.perf_counter() - t0
    give_back_memory()
    np.savez(workdir / REFERENCE_FILE, pixels=pixels, **torch_out)
    width, heads = _encoder_shape(trained.backbone.visual)
    gflop = _gflop_per_image(deploy, spec.image_size, last_block)
    give_back_memory()
    t0 = time.perf_counter()
    protos = write_weights(deploy, workdir / WEIGHTS_FILE, spilled)
    if release_torch:
        release_for_trace(deploy)
        gc.collect()
        give_back_memory()
    trace_weightless(deploy, spec.image_size, workdir / GRAPH_FILE, opset, attention, last_block)
    bound = bind_weights(workdir / GRAPH_FILE, protos)
    del protos
    export_s = time.perf_counter() - t0
    _say(quiet, f"traced to ONNX (opset {opset}, {attention} attention, last block {last_block}, {bound} weights) in {export_s:.1f} s")
    return {
        "images": [str(p) for p in image_paths],
        "tau": float(trained.head.cfg.tau),
        "gflop_per_image": gflop,
        "width": width, "heads": heads,
        "random_weights": bool(trained.backbone.info.is_random),
        "metadata": build_metadata(trained, checkpoint_sha, opset, "fp32", extra_meta, attention=attention,
                                   last_block=last_block),
        "export_s": export_s, "torch_reference_s": torch_s,
    }


def run_job(job: dict) -> dict:
    """What `fsac export` asks of its tracing process (a JSON job), done in this process."""
    from fsac.export.cli import _parity_image_paths, _preset_text
    from fsac.export.external import TensorFile
    from fsac.export.stream import spilled_while_built, stream_weights_file
    from fsac.train.checkpoint import checkpoint_sha256, load_checkpoint, read_checkpoint_meta

    checkpoint, workdir = Path(job["checkpoint"]), Path(job["workdir"])
    folder, ck_meta = read_checkpoint_meta(checkpoint)
    check_images = [Path(p) for p in job["check_images"]] if job.get("check_images") else None
    images = _parity_image_paths(folder, ck_meta, check_images)
    workdir.mkdir(parents=True, exist_ok=True)
    # The backbone is spilled to the weights file while it is built, and a weights file is
    # streamed into it one tensor at a time (fsac.export.stream): this process never holds
    # the whole tower.
    store = TensorFile(workdir / WEIGHTS_FILE)
    spilled: dict = {}
    weights = job.get("weights") or ck_meta.get("backbone", {}).get("weights_id")
    # With a weights file the random init is replaced tensor by tensor: its values are not kept.
    build_store = store if weights in ("random", "none") else None

    def loader(model, path, arch):
        stream_weights_file(model, path, arch, spilled, store)

    trained = load_checkpoint(checkpoint, weights=job.get("weights"), device="cpu", quiet=job["quiet"],
                              backbone_context=lambda: spilled_while_built(build_store, spilled=spilled),
                              weights_loader=loader)
    # Sized from the model itself: on open_clip's fallback path (a legacy pickle) nothing is
    # in the weights file yet. Stand-ins have zero strides but their true numel.
    deploy = trained.deploy_model()
    model_bytes = sum(t.numel() * t.element_size() for t in deploy.state_dict().values())
    del deploy
    check_free_space(workdir, model_bytes, job.get("optimize", "slim"), written=store.path.stat().st_size)
    extra = {"fsac.train_images": json.dumps(ck_meta.get("train_images", [])),
             "fsac.train_preset": _preset_text(ck_meta.get("train") or {}),
             "fsac.training_diagnostics": json.dumps(ck_meta.get("diagnostics", {}))}
    return trace_to_dir(trained, checkpoint_sha256(checkpoint), images, workdir, job["opset"], job["attention"],
                        extra, job["quiet"], release_torch=True, spilled=spilled,
                        last_block=job.get("last_block", "class-token"))


def main(argv: list[str]) -> int:
    """`python -m fsac.export.trace JOB.json RESULT_FD`: writes the trace info (or, on an
    error the user can act on, {"error": message}) as JSON to the pipe RESULT_FD and exits
    0 / 2. A pipe, not a file in the work folder: on a full disk the error must still arrive."""
    from fsac.procmem import map_large_allocations

    map_large_allocations()  # a spilled or released weight gives its memory back when it is freed
    job = json.loads(Path(argv[0]).read_text())
    if not _exit_with_parent(job.get("parent_pid")):
        return 130  # the command is gone already (killed before this process got here)
    with os.fdopen(int(argv[1]), "w") as result:
        try:
            info = run_job(job)
        except FsacError as e:
            result.write(json.dumps({"error": str(e)}))
            return 2
        except OSError as e:  # a full disk, a folder that cannot be written: name the file
            result.write(json.dumps({"error": disk_error_message(e, Path(job["workdir"]), job.get("optimize", "slim"))}))
            return 2
        from fsac.procmem import peak_rss_self

        info["peak_rss_bytes"] = peak_rss_self()
        result.write(json.dumps(info))
    return 0


def _popen_ignoring_sigint(args: list[str], **kw):
    """subprocess.Popen of a child that ignores SIGINT: Ctrl-C reaches every process of the
    terminal's group, and the command, not the child, answers it (one "interrupted", no second
    traceback; the command then stops the child). The ignored disposition is inherited across
    exec, so it is set around the fork here rather than in a preexec_fn (unsafe once the
    command has threads, as CUDA's are with --engine). Signal handlers belong to the main
    thread; from another thread the child gets a session of its own instead."""
    import signal
    import subprocess
    import threading

    if threading.current_thread() is not threading.main_thread():
        return subprocess.Popen(args, start_new_session=True, **kw)
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        return subprocess.Popen(args, **kw)
    finally:
        signal.signal(signal.SIGINT, previous)


def _exit_with_parent(parent_pid: int | None) -> bool:
    """Have the kernel send this process SIGTERM when `fsac export` dies (a SIGKILL, the OOM
    killer, a closed terminal), so that nothing goes on writing into its scratch folder; False
    if the parent is already gone. Linux (prctl PR_SET_PDEATHSIG); elsewhere a no-op."""
    import signal

    try:
        import ctypes

        ctypes.CDLL(None, use_errno=True).prctl(1, int(signal.SIGTERM))  # 1 = PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        return True
    return parent_pid is None or os.getppid() == parent_pid


def run_in_child(job: dict, workdir: Path) -> dict:
    """Run `job` in a fresh interpreter (stderr passes through: progress and warnings)
    -> its trace info, with "peak_rss_bytes" the child's own peak resident memory."""
    import subprocess

    workdir.mkdir(parents=True, exist_ok=True)
    job_path = workdir / "job.json"
    job_path.write_text(json.dumps({**job, "workdir": str(workdir), "parent_pid": os.getpid()}))
    env = {k: v for k, v in os.environ.items() if k not in ("NOTIFY_SOCKET", "WATCHDOG_USEC")}
    read_end, write_end = os.pipe()
    proc = None
    try:
        try:
            proc = _popen_ignoring_sigint([sys.executable, "-m", "fsac.export.trace", str(job_path), str(write_end)],
                                          env=env, pass_fds=(write_end,))
        finally:
            os.close(write_end)
        with os.fdopen(read_end) as result:
            read_end = None
            text = result.read()  # until the child exits (or closes it): the info is small
        returncode = proc.wait()
    except BaseException:  # interrupted: no process may go on writing into the scratch folder
        if read_end is not None:
            os.close(read_end)
        if proc is not None:
            proc.terminate()
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        raise
    try:
        info = json.loads(text) if text else None
    except ValueError:  # cut off by a kill
        info = None
    if isinstance(info, dict) and "error" in info:
        raise FsacError(info["error"])
    if returncode < 0:
        raise FsacError(f"the tracing process (python -m fsac.export.trace) was killed by signal "
                        f"{-returncode}" + (" (out of memory?)" if returncode == -9 else ""))
    if returncode != 0 or not isinstance(info, dict):
        raise FsacError(f"the tracing process (python -m fsac.export.trace) failed with exit status "
                        f"{returncode}; its messages are above")
    return info


# Free space the export needs, in multiples of the model's weights: the weights file, the
# folded weights (fsac.export.fold writes each transposed matrix anew) and the model file;
# with --optimize ort the optimiser's graph holds the weights once more.
SPACE_NEEDED = {"slim": 3.0, "none": 3.0, "ort": 4.0}
SPACE_MARGIN_BYTES = 4 << 20  # the graphs and the parity images' reference outputs
ONNX_FILE_LIMIT = 2**31 - 1  # protobuf: one ONNX file holds less than 2 GiB


def check_free_space(workdir: Path, model_bytes: int, optimize: str = "slim", written: int = 0) -> None:
    """Refuse to go on (FsacError) when the model cannot fit one ONNX file, or when the file
    system of `workdir` has less room than the rest of the export needs (`written` bytes of
    the weights file are there already): before the slow part rather than at its end."""
    import shutil

    if model_bytes >= ONNX_FILE_LIMIT:
        raise FsacError(f"the model's weights are {model_bytes / 2**30:.2f} GiB, and one ONNX file holds less than "
                        "2 GiB: this architecture cannot be exported as one fsac model file")
    need = int(SPACE_NEEDED.get(optimize, 4.0) * model_bytes) - written + SPACE_MARGIN_BYTES
    free = shutil.disk_usage(workdir).free
    if free < need:
        raise FsacError(f"{workdir.parent}: not enough free disk space for fsac export: about {need / 2**20:.0f} MiB "
                        f"more is needed for a model of {model_bytes / 2**20:.0f} MiB (the weights, the folded "
                        f"weights and the model file, in the scratch folder {workdir.name} and beside it), "
                        f"{free / 2**20:.0f} MiB is free; free some space or write the model file elsewhere (-o)")


def disk_error_message(e: OSError, workdir: Path, optimize: str = "slim") -> str:
    """One line for an OSError during the export: the file, the reason, and for a full disk
    what the export needs (its scratch folder `workdir` sits beside the model file)."""
    import errno
    import shutil

    msg = f"{e.filename or workdir}: {e.strerror or e}"  # a failed write() names no file: the folder
    if e.errno in (errno.ENOSPC, errno.EDQUOT):
        try:
            free = f"{shutil.disk_usage(workdir.parent).free / 2**20:.0f} MiB free now; "
        except OSError:
            free = ""
        msg += (f" ({free}fsac export needs about {SPACE_NEEDED.get(optimize, 4.0):g}x the model file's size free "
                f"beside it while it runs: the scratch folder {workdir.name}, removed afterwards, and the model "
                "file itself)")
    return msg


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
