"""fsac.procmem.peak_rss: a child's own peak resident memory."""

from __future__ import annotations

from pathlib import Path

import pytest

from fsac.errors import FsacError
from fsac.procmem import peak_rss

pytestmark = pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="VmHWM needs Linux /proc")


def test_peak_rss_sees_what_the_child_allocated():
    small, _ = peak_rss("pass", [])
    big, _ = peak_rss("import sys; b = bytearray(int(sys.argv[1])); b[::4096] = b'x' * len(b[::4096])",
                      [str(200 * 2**20)])
    assert small is not None and big is not None and big - small > 150 * 2**20


def test_a_failing_child_is_an_error_with_its_stderr():
    with pytest.raises(FsacError, match="boom"):
        peak_rss("raise SystemExit('boom')", [])
