"""Peak resident memory of a Python child process (Linux), for the benchmarks, and giving
freed heap back to the OS (`fsac export` keeps its peak low step by step).

`fsac bench runtime` (fsac-run's memory) and `fsac bench export` (the export's memory) both
measure a command in a fresh interpreter; the helper lives in the core so that neither wing
reaches into the other's private functions.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys

from fsac.errors import FsacError

# Printed at exit by the measured process itself: VmHWM is the peak resident memory of its own
# address space. (getrusage/wait4's ru_maxrss is no good here: Linux carries the forking
# parent's peak over into the child across exec, so the child would report the bench's RSS.)
_HWM_PREFIX = """
import atexit, sys
def _fsac_bench_hwm():
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    sys.stderr.write("FSAC_BENCH_VMHWM_KB " + line.split()[1] + "\\n")
    except OSError:
        pass
atexit.register(_fsac_bench_hwm)
"""


def peak_rss(code: str, args: list[str]) -> tuple[int | None, str]:
    """Run `python -c code args`; return its peak resident memory in bytes and its stderr."""
    env = {k: v for k, v in os.environ.items() if k not in ("NOTIFY_SOCKET", "WATCHDOG_USEC")}
    proc = subprocess.run([sys.executable, "-c", _HWM_PREFIX + code, *args], stdout=subprocess.DEVNULL,
                          stderr=subprocess.PIPE, env=env, text=True, errors="replace")
    if proc.returncode != 0:
        raise FsacError(f"benchmark subprocess failed ({proc.returncode}): {proc.stderr.strip()[-500:]}")
    m = re.search(r"FSAC_BENCH_VMHWM_KB (\d+)", proc.stderr)
    return (int(m.group(1)) * 1024 if m else None), proc.stderr


def give_back_memory() -> None:
    """Return freed heap pages to the OS (glibc keeps them otherwise, and the peak RSS of the
    next step would sit on top of memory nobody uses)."""
    import ctypes

    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):  # not glibc: nothing to do
        pass


def _status_kib(field: str) -> int | None:
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1])
    except OSError:  # not Linux
        pass
    return None


def rss_bytes() -> int | None:
    """This process's resident memory now (VmRSS), or None where /proc is not there."""
    kib = _status_kib("VmRSS")
    return None if kib is None else kib * 1024


def peak_rss_self() -> int | None:
    """This process's peak resident memory so far (VmHWM), or None where /proc is not there."""
    kib = _status_kib("VmHWM")
    return None if kib is None else kib * 1024


def map_large_allocations(threshold: int = 1 << 20) -> bool:
    """Serve every allocation of at least `threshold` bytes from its own mapping (glibc
    mallopt M_MMAP_THRESHOLD), so that freeing it returns the memory at once. glibc raises
    its threshold by itself after such a free (up to 32 MiB), and from then on tensors that
    are freed stay in the heap and count in the resident memory; setting it fixes it. ->
    whether it took effect (False: not glibc)."""
    import ctypes

    M_MMAP_THRESHOLD = -3
    try:
        return bool(ctypes.CDLL("libc.so.6").mallopt(M_MMAP_THRESHOLD, int(threshold)))
    except (OSError, AttributeError):
        return False
