"""The project's layout rule, checked on the source: wings import the core, not each other.

Every .py file under train/, export/, runtime/ and calibration/ is parsed with `ast` (nothing is
imported, so this runs without torch) and every import, at any depth (function-local imports
count: they run too), is resolved to a module name. A wing may import `fsac` (the core) and
itself; importing another wing fails unless ALLOWED lists it, with the reason.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
WINGS = {"train": "fsac.train", "export": "fsac.export", "runtime": "fsac.runtime", "calibration": "fsac.calibration"}
WING_PACKAGES = set(WINGS.values())

# (file relative to the repository root, or a folder prefix ending in "/") -> modules it may import
# from other wings. Keep this short: each entry is a decision, not a convenience.
ALLOWED: dict[str, tuple[str, ...]] = {
    # The export turns a training checkpoint into a model file: it must read the checkpoint;
    # and it traces the encoder's last block for [CLS] the way training encodes images (one
    # definition of that block, so the file and the training features cannot drift apart).
    "export/": ("fsac.train.checkpoint", "fsac.train.last_block"),
    # `fsac bench export` benchmarks every backend the project ships on the same images: it runs
    # the calibration wing's INT8 quantizer and the runtime wing's own backends and policy bounds
    # (timing a copy would measure something fsac-run does not run). These modules are the one
    # composition point of the wings (see export/bench.py's docstring).
    "export/bench.py": ("fsac.calibration.quantize", "fsac.calibration.int8_agreement",
                        "fsac.runtime.tensorrt_backend"),
    "export/bench_extra.py": ("fsac.runtime.openvino_backend", "fsac.runtime.policy"),
    "export/bench_memory.py": ("fsac.runtime.openvino_backend",),  # the OpenVINO rows' peak memory
    # The tracing process streams the checkpoint's backbone weights file into its spilled image
    # tower: it checks the file against the same architecture and falls back to the same open_clip
    # loader that loading the checkpoint uses (a second copy of either could drift from it).
    "export/stream.py": ("fsac.train.checkpoint", "fsac.train.backbone"),
}
# The core dispatches the `fsac` commands to the wings' command modules; nothing else in it may
# import a wing (the runtime installs the core without torch).
CORE_ALLOWED = {"fsac/cli.py"}
HEAVY = ("torch", "torchvision", "open_clip")


def _package(path: Path, root: Path) -> str:
    """The dotted package a file lives in (package-dir maps train/ to fsac.train, ...)."""
    rel = path.relative_to(root).with_suffix("").parts
    base = WINGS.get(rel[0], "fsac")
    return ".".join([base, *rel[1:-1]])


def imports(path: Path, root: Path = ROOT) -> list[tuple[int, str, bool]]:
    """(line, absolute module, relative?) for every import in the file; relative ones resolved."""
    tree = ast.parse(path.read_text(), filename=str(path))
    pkg = _package(path, root).split(".")
    out = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out += [(node.lineno, a.name, False) for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                if node.level > len(pkg):
                    out.append((node.lineno, "<above fsac>", True))
                    continue
                base = ".".join(pkg[: len(pkg) - node.level + 1])
                mod = f"{base}.{node.module}" if node.module else base
            else:
                mod = node.module or ""
            # `from fsac import train` names a wing as much as `import fsac.train` does
            out += [(node.lineno, f"{mod}.{a.name}" if mod == "fsac" else mod, bool(node.level)) for a in node.names]
    return out


def _wing_of(module: str) -> str | None:
    head = ".".join(module.split(".")[:2])
    return head if head in WING_PACKAGES else None


def _allowed(rel: str) -> tuple[str, ...]:
    return tuple(m for key, mods in ALLOWED.items() for m in mods
                 if rel == key or (key.endswith("/") and rel.startswith(key)))


def violations(files: list[Path], root: Path = ROOT) -> list[str]:
    """Imports of another wing not in ALLOWED, and relative imports that climb out of the wing."""
    bad = []
    for f in files:
        rel = f.relative_to(root).as_posix()
        own, ok = WINGS[rel.split("/")[0]], _allowed(rel)
        for line, mod, relative in imports(f, root):
            wing = _wing_of(mod)
            if relative and wing != own:  # `from .. import x` leaving the wing: write the core's name
                bad.append(f"{rel}:{line} relative import climbs out of {own} to {mod}")
            elif wing is not None and wing != own and not any(mod == a or mod.startswith(a + ".") for a in ok):
                bad.append(f"{rel}:{line} imports {mod}")
    return bad


def _wing_files() -> list[Path]:
    return sorted(p for w in WINGS for p in (ROOT / w).rglob("*.py"))


def test_the_scanner_sees_wings_files():
    files = _wing_files()
    assert len(files) > 50 and {p.relative_to(ROOT).parts[0] for p in files} == set(WINGS)


def test_wings_import_the_core_not_each_other():
    assert violations(_wing_files()) == []


def test_the_core_imports_no_wing():
    files = [p for p in sorted((ROOT / "fsac").glob("*.py")) if p.relative_to(ROOT).as_posix() not in CORE_ALLOWED]
    bad = [f"{f.relative_to(ROOT)}:{line} imports {mod}" for f in files for line, mod, _ in imports(f) if _wing_of(mod)]
    assert bad == []


def test_the_runtime_never_imports_torch_or_open_clip():
    """Not at module level, and not inside a function either: the edge box has neither."""
    bad = [f"{f.relative_to(ROOT)}:{line} imports {mod}" for f in sorted((ROOT / "runtime").rglob("*.py"))
           for line, mod, _ in imports(f) if mod.split(".")[0] in HEAVY]
    assert bad == []


@pytest.mark.parametrize("where, source, expect", [
    ("calibration/x.py", "from fsac.runtime.health import image_stats\n", ["calibration/x.py:1 imports fsac.runtime.health"]),
    ("calibration/x.py", "def f():\n    from fsac import train\n", ["calibration/x.py:2 imports fsac.train"]),
    ("calibration/x.py", "import fsac.export.cli\n", ["calibration/x.py:1 imports fsac.export.cli"]),
    ("calibration/x.py", "from ..runtime import policy\n",
     ["calibration/x.py:1 relative import climbs out of fsac.calibration to fsac.runtime"]),
    ("runtime/x.py", "from .. import score\n", ["runtime/x.py:1 relative import climbs out of fsac.runtime to fsac.score"]),
    ("runtime/sinks/x.py", "from ..settings_base import section_dict\nfrom . import jsonl\n", []),
    ("export/x.py", "from fsac.train.checkpoint import load_checkpoint\n", []),  # allowed: the checkpoint
    ("export/x.py", "from fsac.train.trainer import train\n", ["export/x.py:1 imports fsac.train.trainer"]),
    ("export/x.py", "from fsac.runtime.backends import OnnxBackend\n", ["export/x.py:1 imports fsac.runtime.backends"]),
    ("calibration/x.py", "from fsac.score import verdict\nfrom . import plot\nimport numpy\n", []),
])
def test_the_check_fails_on_a_cross_wing_import(tmp_path, where, source, expect):
    """The scanner itself, on files written here: a check that cannot fail proves nothing."""
    f = tmp_path / where
    f.parent.mkdir(parents=True)
    f.write_text(source)
    assert violations([f], root=tmp_path) == expect
