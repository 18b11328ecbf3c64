"""`fsac bench runtime`: how close the daemon gets to the bare backend, on the same frames.

Three measurements in one run, same model, same images, same batch size (each one in
runtime/bench_passes.py):

  bare backend  frames decoded and resized beforehand (not timed); only `backend.infer` on
                full batches is timed. The ceiling: nothing but the model.
  serial loop   decode -> resize -> infer, one frame after the other on one thread: what a
                naive script does. Context for the daemon's number.
  daemon        the real pipeline (folder source, decode pool, batching scorer, JSON-lines
                sink) run in this process in every-frame mode; timed from the first frame
                read to the last record flushed. Latency per frame from the records (it
                includes the time a frame waits in the queue behind the backlog).

Bare and daemon passes alternate for `rounds` rounds, so that load from other processes on
a shared machine falls on both alike.

Then `fsac-run` itself runs on the same frames in a subprocess to measure its peak resident
memory (VmHWM, reported by the process at exit), compared with the model's size + 300 MB
and with a bare backend loop measured the same way (the difference is the daemon's own
cost; what the model needs for weights and activations is in both).

Trigger mode: N inspection requests one after the other through `POST /v1/inspect`, timed
from request to answer (p50/p95/max), with the image in the request and, where Aravis's fake
GigE Vision camera is installed, from that camera with a software trigger per request
(runtime/bench_trigger.py).

Storage: the daemon passes run with the JSON-lines sink and, when a `mosquitto` binary is
on PATH, the MQTT sink against a private broker (default settings otherwise: journal fsync
before acknowledgements, JSONL fsync per delivery). The bytes the process caused to be
written to storage (`write_bytes` in /proc/self/io, counted when pages are dirtied: the
journal, the JSONL file, the cursors) are divided by the records written.

Targets (issue 8): at most 4 KB written per record; daemon >= 95 % of the bare backend's
throughput in every-frame mode. The
daemon decodes and resizes every frame and the bare backend does not, so the target is only
reachable when inference takes longer than decoding + resizing (the real CLIP model on an
edge CPU/GPU). With a toy model that takes microseconds the ratio measures the decoder, not
the daemon; the printed notes say so.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path
from typing import Any, Optional

import numpy as np

from fsac.errors import FsacError
from fsac.io import atomic_write_json
from fsac.preprocess import list_images

from .backends import prepack_text
from .bench_passes import Bare, Broker, daemon_pass, frames_folder, rss_subprocess

RSS_ALLOWANCE = 300 * 1024 * 1024


def _percentiles(values_ms: list[float]) -> tuple[float, float]:
    if not values_ms:
        return float("nan"), float("nan")
    arr = np.asarray(values_ms, dtype=np.float64)
    return float(np.percentile(arr, 50)), float(np.percentile(arr, 99))


def bench_runtime(model: str | os.PathLike, images: str | os.PathLike, n_frames: int = 200, batch_size: int = 4,
                  out_json: str | os.PathLike | None = None, *, providers: list[str] | None = None,
                  threads: int = 0, workers: int = 2, queue_size: int = 8, measure_rss: bool = True,
                  spin_wait: bool = False, rounds: int = 2, backend: str = "", precision: str = "",
                  streams: int | str = "auto", cpu_prepack: bool = True,
                  peaks: bool = True, page_client: bool = False, trigger_requests: int = 50,
                  paced_fps: float = 0.0, paced_seconds: float = 15.0) -> dict[str, Any]:
    """Bare backend vs daemon on the same frames; returns (and optionally writes) the figures."""
    from .config import auto_streams

    # The trigger and paced passes resolve `auto` for their own source, as fsac-run would; the
    # bare loop takes what the daemon pass (a folder, every frame) resolves it to.
    bk = {"backend": backend, "precision": precision, "streams": streams, "cpu_prepack": cpu_prepack}
    bk_folder = {**bk, "streams": auto_streams("folder", "every-frame") if streams == "auto" else streams}
    model, images = Path(model), Path(images)
    if n_frames < 1 or rounds < 1:
        raise FsacError("--frames and --rounds must be >= 1")
    providers = list(providers or [])
    with tempfile.TemporaryDirectory(prefix="fsac-bench-") as tmp:
        work = Path(tmp)
        files = frames_folder(images, n_frames, work / "frames")
        result: dict[str, Any] = {"model": str(model), "images": str(images), "frames": n_frames,
                                  "cpu_count": os.cpu_count(), "workers": workers}
        result["spin_wait"] = spin_wait
        result["rounds"] = rounds
        bare = Bare(model, files, batch_size, providers, threads, spin_wait, bk_folder)
        served = bare.model.backend
        result.update({"serial_fps": n_frames / bare.serial_s, "batch_size": served.max_batch,
                       "providers": list(served.providers), "model_bytes": bare.model.size_bytes,
                       "backend": served.name,
                       "precision": _precision_of(getattr(served, "precision", bare.model.info.precision)),
                       "streams": getattr(served, "streams", None),
                       "cpu_prepack": getattr(served, "cpu_prepack", None),
                       "gflop_per_image": _gflop(bare.model.info)})
        # Alternate the two measurements so that load from other processes (a shared CPU)
        # falls on both alike.
        bare_s, bare_lat, runs, page_runs = 0.0, [], [], []
        broker = Broker(work) if shutil.which("mosquitto") else None
        try:
            for i in range(rounds):
                seconds, lat = bare.run()
                bare_s += seconds
                bare_lat += lat
                runs.append(daemon_pass(model, work / "frames", work / f"daemon{i}.jsonl", batch_size, providers,
                                         threads, workers, queue_size, spin_wait,
                                         broker.port if broker is not None else None, bk_folder))
                if page_client:  # the same pass with the live view on and a page connected
                    page_runs.append(daemon_pass(model, work / "frames", work / f"page{i}.jsonl", batch_size,
                                                  providers, threads, workers, queue_size, spin_wait,
                                                  broker.port if broker is not None else None, bk_folder,
                                                  page=True))
            if paced_seconds > 0:  # frames at a camera's pace: batches of one (runtime/bench_paced.py)
                from .bench_paced import bench_paced

                run_s = sum(r["seconds"] for r in runs)
                fps = paced_fps or min(30.0, max(0.5, 0.5 * sum(r["frames"] for r in runs) / run_s if run_s else 1))
                result["paced"] = bench_paced(model, files, round(fps, 1), paced_seconds, work / "paced",
                                              mqtt_port=broker.port if broker is not None else None,
                                              batch_size=batch_size, threads=threads, backend=bk)
        finally:
            if broker is not None:
                broker.stop()
        bare.model.backend.close()
        if page_runs:
            page_s = sum(r["seconds"] for r in page_runs)
            result["page_fps"] = sum(r["frames"] for r in page_runs) / page_s if page_s > 0 else float("nan")
            result["page_client"] = {k: sum(r["page"][k] for r in page_runs) for k in page_runs[0]["page"]}
        result["sinks"] = "jsonl+mqtt" if broker is not None else "jsonl (no mosquitto on PATH)"
        written = [r["written_bytes"] for r in runs]
        if all(w is not None for w in written):
            result["bytes_written_per_record"] = sum(written) / max(1, sum(r["frames"] for r in runs))
            result["meets_4kb_target"] = bool(result["bytes_written_per_record"] <= 4096)
        result["delivered"] = {k: sum(r["delivered"].get(k, 0) for r in runs) for k in runs[0]["delivered"]}
        daemon_s = sum(r["seconds"] for r in runs)
        n_scored = sum(r["frames"] for r in runs)
        batches = sum(r["batches"] for r in runs)
        p50, p99 = _percentiles(bare_lat)
        dp50, dp99 = _percentiles([x for r in runs for x in r["latencies"]])
        result.update({"bare_fps": rounds * n_frames / bare_s, "bare_p50_ms": p50, "bare_p99_ms": p99,
                       "daemon_fps": n_scored / daemon_s if daemon_s > 0 else float("nan"),
                       "daemon_p50_ms": dp50, "daemon_p99_ms": dp99, "daemon_frames": n_scored,
                       "daemon_errors": sum(r["errors"] for r in runs),
                       "daemon_mean_batch": n_scored / batches if batches else 0.0})
        result["ratio"] = result["daemon_fps"] / result["bare_fps"]
        result["meets_95pct_target"] = bool(result["ratio"] >= 0.95)
        if page_runs:
            result["page_ratio"] = result["page_fps"] / result["bare_fps"]
            result["page_meets_95pct_target"] = bool(result["page_ratio"] >= 0.95)
        result["rss_budget_bytes"] = result["model_bytes"] + RSS_ALLOWANCE
        if measure_rss:
            result.update(rss_subprocess(model, work / "frames", work, batch_size, providers, threads, workers,
                                          spin_wait, bk_folder, live=page_client))
            result["rss_within_budget"] = bool(result["rss_peak_bytes"] <= result["rss_budget_bytes"])
        if trigger_requests:  # request -> answer in trigger mode (runtime/bench_trigger.py)
            from .bench_trigger import bench_trigger

            (work / "trigger").mkdir()
            result["trigger"] = bench_trigger(model, list_images(images)[0], trigger_requests, work / "trigger",
                                              batch_size=batch_size, threads=threads, backend=bk)
    if peaks:
        from fsac.peaks import measure_peaks

        # Same threads as the backend (0 = the runtime's default, which is every core here).
        pk = measure_peaks(threads or (os.cpu_count() or 1))
        result["peaks"] = pk.to_dict()
        result["cpu_flags"] = pk.flags
        g = result["gflop_per_image"]
        peak = pk.peak(result["precision"])
        result["bare_gops"] = None if g is None else g * result["bare_fps"]
        result["bare_pct_of_peak"] = None if (g is None or not peak) else 100 * g * result["bare_fps"] / peak
    if out_json is not None:
        atomic_write_json(out_json, result)
    return result


def _precision_of(p: str) -> str:
    p = str(p).lower()
    return {"f32": "fp32", "fp32": "fp32", "bf16": "bf16"}.get(p, "int8" if "int8" in p else p)


def _gflop(info) -> float | None:
    """GFLOP per image recorded by `fsac export` (fsac.gflop_per_image), if the file has it."""
    try:
        return float(info.metadata["fsac.gflop_per_image"])
    except (KeyError, TypeError, ValueError):
        return None


def format_table(r: dict[str, Any]) -> str:
    mb = 1024 * 1024
    rows = [
        ("bare backend", f"{r['bare_fps']:.1f} frames/s", f"p50 {r['bare_p50_ms']:.2f} ms",
         f"p99 {r['bare_p99_ms']:.2f} ms"),
        ("serial loop (decode+infer)", f"{r['serial_fps']:.1f} frames/s", "", ""),
        ("daemon (every-frame)", f"{r['daemon_fps']:.1f} frames/s", f"p50 {r['daemon_p50_ms']:.2f} ms",
         f"p99 {r['daemon_p99_ms']:.2f} ms"),
    ]
    w = max(len(row[0]) for row in rows)
    lines = [f"model {r['model']} ({r['model_bytes'] / mb:.1f} MB), {r['frames']} frames x {r['rounds']} rounds, "
             f"batch <= {r['batch_size']}, {r['workers']} decode workers, {r['cpu_count']} CPUs, "
             f"backend {r.get('backend', '?')} {r.get('precision', '')}"
             + (f" ({r['streams']} streams)" if (r.get("streams") or 1) > 1 else "")
             + f", providers {','.join(r['providers'])}"
             + prepack_text(r.get("cpu_prepack"))]
    if "peaks" in r:
        pk = r["peaks"]
        f = lambda x: "n/a" if x is None else f"{x:.0f}"  # noqa: E731
        lines.append(f"  CPU flags: {' '.join(r['cpu_flags']) or 'none'} ({pk['cpu_class']}); peaks on "
                     f"{pk['threads']} threads: fp32 {f(pk['fp32'])} GFLOP/s, bf16 {f(pk['bf16'])} GFLOP/s, "
                     f"int8 {f(pk['int8'])} GOP/s")
        if r.get("bare_pct_of_peak") is not None:
            lines.append(f"  bare backend: {r['bare_gops']:.0f} G(FL)OP/s = {r['bare_pct_of_peak']:.1f} % of the "
                         f"{r['precision']} peak ({r['gflop_per_image']:.2f} GFLOP per image)")
        else:
            lines.append("  bare backend fraction of peak: n/a (the model file records no fsac.gflop_per_image; "
                         "re-export it with this fsac)")
    lines += [f"  {a:<{w}}  {b:>16}  {c:>14}  {d:>14}" for a, b, c, d in rows]
    lines.append(f"  daemon / bare throughput: {r['ratio'] * 100:.1f} % (target >= 95 %: "
                 f"{'met' if r['meets_95pct_target'] else 'NOT met'}); mean batch {r['daemon_mean_batch']:.2f}")
    if "page_ratio" in r:
        c = r["page_client"]
        lines.append(f"  daemon + live view with a page connected: {r['page_fps']:.1f} frames/s, "
                     f"{r['page_ratio'] * 100:.1f} % of bare (target >= 95 %: "
                     f"{'met' if r['page_meets_95pct_target'] else 'NOT met'}); the client got {c['snapshots']} "
                     f"snapshots and {c['images']} frame images, {c['errors']} errors")
    if "bytes_written_per_record" in r:
        lines.append(f"  storage written per record (sinks {r['sinks']}, /proc/self/io write_bytes): "
                     f"{r['bytes_written_per_record']:.0f} B (target <= 4 KB: "
                     f"{'met' if r['meets_4kb_target'] else 'NOT met'}); delivered "
                     + ", ".join(f"{k} {v}" for k, v in r["delivered"].items()))
    if "paced" in r:
        from .bench_paced import format_row

        lines.append(format_row(r["paced"]))
    if "rss_peak_bytes" in r:
        lines.append(f"  fsac-run peak RSS: {r['rss_peak_bytes'] / mb:.1f} MB (budget model + 300 MB = "
                     f"{r['rss_budget_bytes'] / mb:.1f} MB: {'within' if r['rss_within_budget'] else 'OVER'}); "
                     f"bare backend loop: {r['bare_rss_peak_bytes'] / mb:.1f} MB, so the daemon adds "
                     f"{(r['rss_peak_bytes'] - r['bare_rss_peak_bytes']) / mb:.1f} MB")
    if "trigger" in r:
        from .bench_trigger import format_rows

        lines += format_rows(r["trigger"])
    if r.get("rss_live_peak_bytes"):
        lines.append(f"  fsac-run peak RSS with the live view on: {r['rss_live_peak_bytes'] / mb:.1f} MB")
    if r["bare_fps"] > 2 * r["serial_fps"] and (r.get("streams") or 1) <= 1:  # streams: a lone frame uses one stream
        lines.append("  note: inference is much faster than decoding+resizing here, so the daemon is bound by the "
                     "decoder and the ratio says little about daemon overhead; it is meaningful with a model whose "
                     "inference takes longer than decoding (the real CLIP model).")
    return "\n".join(lines)


try:  # typer is a base dependency; the runtime itself does not need it
    from typing import Annotated

    import typer

    def bench_runtime_command(
        model: Annotated[Path, typer.Option("--model", help="sealed fsac model file (.onnx)", exists=True,
                                            dir_okay=False)],
        images: Annotated[Path, typer.Option("--images", help="folder of images to score", exists=True,
                                             file_okay=False)],
        frames: Annotated[int, typer.Option("--frames", min=1, help="frames per measurement")] = 200,
        batch_size: Annotated[int, typer.Option("--batch-size", min=1, help="model.batch_size")] = 4,
        workers: Annotated[int, typer.Option("--workers", min=1, help="source.decode_workers")] = 2,
        threads: Annotated[int, typer.Option("--threads", min=0, help="onnxruntime intra-op threads (0: auto)")] = 0,
        providers: Annotated[Optional[str], typer.Option("--providers",
                                                         help="comma-separated, e.g. cuda,cpu (default: best)")] = None,
        out: Annotated[Optional[Path], typer.Option("--out", help="write the figures as JSON")] = None,
        rss: Annotated[bool, typer.Option("--rss/--no-rss", help="measure fsac-run's peak RSS in a subprocess")] = True,
        spin_wait: Annotated[bool, typer.Option("--spin-wait/--no-spin-wait",
                                                help="model.spin_wait for both measurements")] = False,
        rounds: Annotated[int, typer.Option("--rounds", min=1,
                                            help="alternate bare and daemon passes this many times")] = 2,
        backend: Annotated[str, typer.Option("--backend", help="model.backend (onnxruntime, openvino; "
                                             "default: the config default)")] = "",
        precision: Annotated[str, typer.Option("--precision", help="model.openvino.precision (f32, bf16, int8, int8_bf16, "
                                               "auto) for --backend openvino")] = "",
        streams: Annotated[str, typer.Option("--streams", help="model.openvino.streams for --backend openvino: "
                                             "auto (the daemon's rule per source), throughput, or a number "
                                             "(0 or 1: one stream, the latency hint)")] = "auto",
        cpu_prepack: Annotated[bool, typer.Option("--cpu-prepack/--no-cpu-prepack",
                                                  help="model.cpu_prepack for every pass")] = True,
        peaks: Annotated[bool, typer.Option("--peaks/--no-peaks", help="measure this CPU's matmul peaks")] = True,
        page_client: Annotated[bool, typer.Option("--page-client/--no-page-client",
                                                  help="also time the daemon with the live view on and a page "
                                                       "client connected (events + frame images)")] = False,
        trigger_requests: Annotated[int, typer.Option("--trigger-requests", min=0,
                                                      help="inspection requests per trigger latency row "
                                                           "(POST /v1/inspect; 0: skip)")] = 50,
        paced_fps: Annotated[float, typer.Option("--paced-fps", min=0.0,
                                                 help="frame rate of the paced (camera-like) storage pass "
                                                      "(0: half the daemon's measured throughput, at most 30)")] = 0.0,
        paced_seconds: Annotated[float, typer.Option("--paced-seconds", min=0.0,
                                                     help="length of the paced storage pass (0: skip)")] = 15.0,
    ) -> None:
        """Daemon throughput and p50/p99 latency against the bare backend on the same frames."""
        from pydantic import ValidationError

        from .config import OpenVinoConfig

        try:  # the daemon's own check of the value, so the bench refuses what fsac-run would
            streams = OpenVinoConfig(streams=int(streams) if streams.strip().isdigit() else streams).streams
        except ValidationError as e:
            raise typer.BadParameter(e.errors()[0]["msg"].removeprefix("Value error, "), param_hint="--streams") from None
        result = bench_runtime(model, images, frames, batch_size, out,
                               providers=[p for p in (providers or "").split(",") if p], threads=threads,
                               workers=workers, measure_rss=rss, spin_wait=spin_wait, rounds=rounds,
                               backend=backend, precision=precision, streams=streams, cpu_prepack=cpu_prepack,
                               peaks=peaks, page_client=page_client,
                               trigger_requests=trigger_requests, paced_fps=paced_fps,
                               paced_seconds=paced_seconds)
        typer.echo(format_table(result))
        if out is not None:
            typer.echo(f"wrote {out}")

except ImportError:  # pragma: no cover
    pass
