"""Finding images on disk: training shots, evaluation categories, the embedded default set.

Layouts understood by `fsac eval`:

  MVTec AD / VisA style   <root>/<category>/train/good, <root>/<category>/test/good,
                          <root>/<category>/test/<defect>/   (root may also be one category)
  two folders             <root>/normal/ (or good, ok, nominal) and <root>/anomalous/ (or
                          abnormal, anomaly, bad, defect, defective, ng); no split: the k shots
                          are drawn from the normals and the test set is the remaining normals
                          plus every anomalous image (shared/data/README.md's protocol)

Errors are one-line `FsacError`s naming the folder at fault.
"""

from __future__ import annotations

import functools
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from fsac.errors import FsacError
from fsac.io import sha256_file
from fsac.preprocess import list_images

NORMAL_NAMES = ("normal", "good", "ok", "nominal")
ANOMALOUS_NAMES = ("anomalous", "abnormal", "anomaly", "bad", "defect", "defective", "ng")


@dataclass
class TestItem:
    path: Path
    label: int  # 1 = anomalous, 0 = normal
    defect: str  # "good" or the defect folder's name


@dataclass
class Category:
    """One product category: the pool of normal images shots are drawn from, and the test set.

    For a two-folder layout `test` holds only the anomalous images: `split(k, seed)` adds the
    normals that were not drawn as shots.
    """

    name: str
    root: Path
    layout: str  # "mvtec" | "two-folder"
    train_pool: list[Path]
    test: list[TestItem] = field(default_factory=list)

    def split(self, k: int, seed: int) -> tuple[list[Path], list[TestItem]]:
        """Draw k shots from the pool (seeded) -> (shots, test items).

        Shots are drawn from the pool's distinct images (a byte-identical copy would make a
        k-shot model that saw fewer than k images), and no test item has the bytes of a shot:
        a copy of a training image in the test set (real sets have them: 11 pairs among
        shared/data/brain_mri's normals) would be scored as if unseen."""
        distinct, copies = distinct_by_content(self.train_pool)
        if copies and len(distinct) < k <= len(self.train_pool):
            raise FsacError(f"asked for {k} shots but {self.root} has only {len(distinct)} distinct normal images "
                            f"({len(copies)} are byte-identical copies of others, e.g. {copies[0][0].name} = "
                            f"{copies[0][1].name})")
        shots = sample_shots(distinct, k, seed, where=str(self.root))
        drop = {*shots, *self.shot_copies(shots)}
        normals = [] if self.layout == "mvtec" else [TestItem(p, 0, "good") for p in self.train_pool]
        return shots, [t for t in normals + list(self.test) if t.path not in drop]

    def shot_copies(self, shots: list[Path]) -> list[Path]:
        """The test images (of any split) with the bytes of one of `shots`, other than the
        shots themselves: what `split` leaves out of the test set."""
        seen = {content_id(p) for p in shots}
        chosen = set(shots)
        return [p for p in self.all_test_paths() if p not in chosen and seen and content_id(p) in seen]

    def all_test_paths(self) -> list[Path]:
        """Every image that can appear in a test set of this category."""
        if self.layout == "mvtec":
            return [t.path for t in self.test]
        return list(self.train_pool) + [t.path for t in self.test]


@functools.lru_cache(maxsize=None)
def _content_id(path: str, size: int, mtime_ns: int) -> str:
    return sha256_file(path)


def content_id(path: Path) -> str:
    """sha256 of the file's bytes, computed once per (path, size, mtime)."""
    st = os.stat(path)
    return _content_id(str(path), st.st_size, st.st_mtime_ns)


def distinct_by_content(paths: list[Path]) -> tuple[list[Path], list[tuple[Path, Path]]]:
    """(the first path of each distinct content, in order; [(copy, the path it copies)])."""
    first: dict[str, Path] = {}
    kept, copies = [], []
    for p in paths:
        key = content_id(p)
        if key in first:
            copies.append((p, first[key]))
        else:
            first[key] = p
            kept.append(p)
    return kept, copies


def sample_shots(pool: list[Path], k: int, seed: int, where: str = "") -> list[Path]:
    """k images drawn without replacement from `pool`, the same for the same (pool, k, seed)."""
    if k < 0:
        raise FsacError(f"shots must be >= 0, got {k}")
    if k > len(pool):
        raise FsacError(f"asked for {k} shots but {where or 'the pool'} has only {len(pool)} normal images")
    if k == 0:
        return []
    rng = np.random.default_rng([seed, k])
    idx = sorted(rng.choice(len(pool), size=k, replace=False).tolist())
    return [pool[i] for i in idx]


def _find_child(folder: Path, names: tuple[str, ...]) -> Path | None:
    for child in sorted(folder.iterdir()):
        if child.is_dir() and child.name.lower() in names:
            return child
    return None


def _nonempty_images(folder: Path) -> list[Path]:
    images = list_images(folder)
    if not images:
        raise FsacError(f"no images in {folder} (looked for .png .jpg .jpeg .bmp .tif .tiff .webp)")
    return images


def _mvtec_category(folder: Path) -> Category:
    train_good = folder / "train" / "good"
    test_dir = folder / "test"
    if not train_good.is_dir():
        raise FsacError(f"{folder}: missing train/good folder")
    if not test_dir.is_dir():
        raise FsacError(f"{folder}: missing test folder")
    test: list[TestItem] = []
    for sub in sorted(p for p in test_dir.iterdir() if p.is_dir()):
        label = 0 if sub.name.lower() in NORMAL_NAMES else 1
        test += [TestItem(p, label, sub.name) for p in list_images(sub)]
    if not test:
        raise FsacError(f"no test images under {test_dir}")
    return Category(folder.name, folder, "mvtec", _nonempty_images(train_good), test)


def _two_folder_category(folder: Path, name: str | None = None) -> Category:
    normal = _find_child(folder, NORMAL_NAMES)
    anomalous = _find_child(folder, ANOMALOUS_NAMES)
    assert normal is not None and anomalous is not None
    test = [TestItem(p, 1, anomalous.name) for p in _nonempty_images(anomalous)]
    return Category(name or folder.name, folder, "two-folder", _nonempty_images(normal), test)


def _is_mvtec(folder: Path) -> bool:
    return (folder / "train").is_dir() and (folder / "test").is_dir()


def _is_two_folder(folder: Path) -> bool:
    return _find_child(folder, NORMAL_NAMES) is not None and _find_child(folder, ANOMALOUS_NAMES) is not None


def find_categories(root: str | Path, categories: list[str] | None = None) -> list[Category]:
    """Categories under `root` (or `root` itself), optionally only the named ones."""
    root = Path(root)
    if not root.exists():
        raise FsacError(f"data folder not found: {root}")
    if not root.is_dir():
        raise FsacError(f"not a folder: {root}")
    if _is_mvtec(root):
        found = [_mvtec_category(root)]
    elif _is_two_folder(root):
        found = [_two_folder_category(root)]
    else:
        found = []
        for child in sorted(p for p in root.iterdir() if p.is_dir()):
            if _is_mvtec(child):
                found.append(_mvtec_category(child))
            elif _is_two_folder(child):
                found.append(_two_folder_category(child))
        if not found:
            raise FsacError(
                f"{root}: no categories found (expected <category>/train/good + <category>/test/<defect>, "
                f"or normal/ + anomalous/ folders)"
            )
    if categories:
        by_name = {c.name: c for c in found}
        unknown = [c for c in categories if c not in by_name]
        if unknown:
            raise FsacError(f"{root}: unknown categor{'y' if len(unknown) == 1 else 'ies'} {', '.join(unknown)} "
                            f"(found: {', '.join(sorted(by_name))})")
        found = [by_name[c] for c in categories]
    return found


def training_images(paths: list[str | Path]) -> list[Path]:
    """Image files given on the command line: files, or folders (MVTec category -> train/good)."""
    out: list[Path] = []
    for p in map(Path, paths):
        if not p.exists():
            raise FsacError(f"not found: {p}")
        if p.is_dir():
            if _is_mvtec(p):
                p = p / "train" / "good"
            elif _is_two_folder(p):
                p = _find_child(p, NORMAL_NAMES)  # type: ignore[assignment]
            out += _nonempty_images(p)
        else:
            out.append(p)
    if not out:
        raise FsacError("no training images given")
    # The same file twice (a glob and a folder that overlap) would train on it twice and
    # record it as two shots: a k-shot model that saw fewer than k images.
    seen: dict[Path, Path] = {}
    for p in out:
        key = p.resolve()
        if key in seen:
            also = "" if str(seen[key]) == str(p) else f" (also as {seen[key]})"
            raise FsacError(f"training image {p} is given twice{also}; each shot must be a different file")
        seen[key] = p
    return out


def guess_object_name(path: str | Path) -> str:
    """Object name for the prompts from where the shots live: .../bottle/train/good/x.png,
    .../bottle (a category folder) or .../bottle/normal -> "bottle"; otherwise "object"."""
    from fsac.train.prompts import DEFAULT_OBJECT, object_name_from_category

    p = Path(path).resolve()
    folder = p if p.is_dir() else p.parent
    if _is_mvtec(folder) or _is_two_folder(folder):
        return object_name_from_category(folder.name)
    parts = [folder.name.lower(), folder.parent.name.lower()]
    if parts[0] in NORMAL_NAMES and parts[1] == "train":
        return object_name_from_category(folder.parent.parent.name)
    if parts[0] in NORMAL_NAMES:
        return object_name_from_category(folder.parent.name)
    return object_name_from_category(folder.name) if p.is_dir() else DEFAULT_OBJECT


# --------------------------------------------------------------------------- embedded default input

EMBEDDED_OBJECT = "textile"


def embedded_dataset() -> Category:
    """The default input: simulated textile images with local and global defects (MIT licence,
    PyPI package `conformal-clip-data`, installed with fsac[train]). Two-folder protocol with
    the nominal images as normals and both defect kinds as anomalous."""
    try:
        import conformal_clip_data as ccd
    except ImportError:
        raise FsacError("the embedded demo images need the package conformal-clip-data: pip install 'fsac[train]'") from None
    nominal = _nonempty_images(ccd.nominal_dir())
    test = [TestItem(p, 1, "local") for p in _nonempty_images(ccd.local_dir())]
    test += [TestItem(p, 1, "global") for p in _nonempty_images(ccd.global_dir())]
    return Category(EMBEDDED_OBJECT, ccd.textile_simulated_root(), "two-folder", nominal, test)


def subsample(category: Category, max_normal: int | None, max_anomalous: int | None, seed: int = 0) -> Category:
    """A smaller copy of a category (seeded), e.g. for the quick demo. None keeps everything."""
    rng = np.random.default_rng([seed, 7919])

    def pick(items: list, n: int | None) -> list:
        if n is None or n >= len(items):
            return list(items)
        idx = sorted(rng.choice(len(items), size=n, replace=False).tolist())
        return [items[i] for i in idx]

    anomalous = [t for t in category.test if t.label == 1]
    normal_test = [t for t in category.test if t.label == 0]
    if category.layout == "two-folder":
        return Category(category.name, category.root, category.layout, pick(category.train_pool, max_normal),
                        pick(anomalous, max_anomalous))
    return Category(category.name, category.root, category.layout, list(category.train_pool),
                    pick(normal_test, max_normal) + pick(anomalous, max_anomalous))
