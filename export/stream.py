"""The tracing process holds the model's large weights one block at a time, not all at once.

Importing torch, torchvision and open_clip already takes ~0.74 GB; the image tower of
ViT-B-16-plus-240 is 0.45 GB more, so a process holding both is at 2.7x the model file
before it does anything. Three pieces keep it under that:

    with spilled_while_built(store) as spilled:      # random-init backbone: each module's
        backbone = load_backbone(...)                # tensors go to the weights file as soon as
                                                     # it is built, replaced by stand-ins
    with streamed(model, spilled, workdir):          # forward: each block's weights are read
        outputs = model(pixels)                      # back just before it runs, dropped after
    with weights_as_inputs(model, names):            # the trace sees the weights as inputs
        torch.onnx.export(model, (image, *weights), ...)

A stand-in is a zero-stride tensor of the weight's shape and type (no memory). The random
initialisation draws exactly what a normal build draws (spilling draws nothing), so the
weights are bit-identical to `build_visual`'s (tested). Code that wrote into a stand-in
fails loudly (a zero-stride tensor cannot be written in place); code that read one during
the build, or a block whose weights are used outside its own forward, would give a wrong
reference, and the export's parity check (on the real weights) then fails it.
"""

from __future__ import annotations

import itertools
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

from fsac.export.weightless import DETACH_MIN_BYTES

# Smaller tensors (biases, norms) stay in memory; the same bound as the one below which the
# trace's weights stay inline in the graph, so every stand-in has its bytes in a weights file.
SPILL_MIN_BYTES = DETACH_MIN_BYTES
_suspended = [False]  # spilling paused (open_clip's own loader needs the real tensors)
BLOCK_BUDGET_BYTES = 64 << 20  # the largest subtree whose weights are read back at once


def standin(tensor):
    """A zero-stride tensor with `tensor`'s shape, dtype and device: no memory."""
    import torch

    return torch.zeros((), dtype=tensor.dtype, device=tensor.device).expand(tensor.shape)


def is_standin(tensor) -> bool:
    return tensor.numel() > 1 and all(s == 0 for s in tensor.stride())


def _own_tensors(module, recurse: bool):
    return itertools.chain(module.parameters(recurse=recurse), module.buffers(recurse=recurse))


@contextmanager
def spilled_while_built(store, min_bytes: int = SPILL_MIN_BYTES,
                        spilled: dict | None = None) -> Iterator[dict[int, tuple[Any, Any]]]:
    """While active, a module attached to its parent has each of its tensors of at least
    `min_bytes` appended to `store` (a `fsac.export.external.TensorFile`) and replaced by a
    stand-in. Yields {id(tensor): (tensor, TensorProto in the store)} (`spilled`, if given);
    the tensors are kept referenced, so the ids stay valid. With `store` None the values are
    dropped (proto None): a weights file will replace them (`stream_weights_file`)."""
    import torch

    spilled = {} if spilled is None else spilled

    def hook(parent, name, submodule):
        if submodule is None or _suspended[0]:
            return None
        for t in _own_tensors(submodule, recurse=True):
            if (id(t) in spilled or t.is_meta or is_standin(t)
                    or t.numel() * t.element_size() < min_bytes):
                continue
            proto = None if store is None else store.append(f"spilled.{len(spilled)}", t.detach().cpu().numpy())
            spilled[id(t)] = (t, proto)
            t.data = standin(t)
        return None

    handle = torch.nn.modules.module.register_module_module_registration_hook(hook)
    try:
        yield spilled
    finally:
        handle.remove()


def _load(tensor, proto, base_dir: Path) -> None:
    import torch

    from fsac.export.external import tensor_bytes

    data = bytearray(tensor_bytes(proto, base_dir))
    tensor.data = torch.frombuffer(data, dtype=tensor.dtype).reshape(tensor.shape)


@contextmanager
def streamed(model, spilled: dict[int, tuple[Any, Any]], base_dir: Path, budget: int = BLOCK_BUDGET_BYTES):
    """Run `model` with its spilled weights read back block by block: the largest subtrees
    whose spilled weights fit in `budget` get them just before their forward and stand-ins
    again after it; spilled tensors owned directly by larger modules (a positional
    embedding) are read back for the whole block of code."""
    def size(m) -> int:
        seen = {id(t) for t in _own_tensors(m, recurse=True) if id(t) in spilled}
        return sum(spilled[i][0].numel() * spilled[i][0].element_size() for i in seen)

    resident: list[Any] = []
    handles = []

    def subtree(m):
        return [spilled[id(t)] for t in dict.fromkeys(_own_tensors(m, recurse=True)) if id(t) in spilled]

    def hook_block(m) -> None:
        def before(module, args):
            for t, proto in subtree(module):
                _load(t, proto, base_dir)

        def after(module, args, output):
            for t, _ in subtree(module):
                t.data = standin(t)

        handles.append(m.register_forward_pre_hook(before))
        handles.append(m.register_forward_hook(after, always_call=True))

    def visit(m) -> None:
        s = size(m)
        if s == 0:
            return
        if s <= budget:
            hook_block(m)
            return
        for t in _own_tensors(m, recurse=False):
            if id(t) in spilled:
                _load(t, spilled[id(t)][1], base_dir)
                resident.append(t)
        for child in m.children():
            visit(child)

    visit(model)
    try:
        yield
    finally:
        for h in handles:
            h.remove()
        for t in resident:
            t.data = standin(t)


@contextmanager
def weights_as_inputs(model, names: list[str]):
    """While active, `model(image, *weights)` runs `model(image)` with the tensors named
    `names` (state-dict keys) taken from the arguments instead of from the module, and the
    module holds no tensors of its own under those names. A trace of it records the weights
    as graph inputs, and the exporter never holds their values: `torch.onnx.export` runs ONNX
    shape inference on a copy of every parameter it is given (+0.4 GB on the full model,
    measured), on inputs only their shapes. The module stays the traced root, so the node
    names keep their module paths ("/visual/transformer/resblocks.0/...", which `fsac
    quantize` uses to find the encoder)."""
    slots = []
    for name in names:
        owner, _, leaf = name.rpartition(".")
        sub = model.get_submodule(owner) if owner else model
        table = sub._parameters if leaf in sub._parameters else sub._buffers
        slots.append((table, leaf, table[leaf]))
    original_forward = model.forward

    def forward(image, *weights):
        for (table, leaf, _), t in zip(slots, weights):
            table[leaf] = t
        try:
            return original_forward(image)
        finally:
            for table, leaf, _ in slots:
                table[leaf] = None

    for table, leaf, _ in slots:
        table[leaf] = None
    model.forward = forward
    try:
        yield
    finally:
        del model.forward
        for table, leaf, old in slots:
            table[leaf] = old


def weight_names(model) -> list[str]:
    """State-dict keys of `model` whose tensors are distinct (a tied weight is passed once)."""
    seen, names = set(), []
    for name, t in model.state_dict(keep_vars=True).items():
        if id(t) not in seen:
            seen.add(id(t))
            names.append(name)
    return names


def spilled_protos(model, spilled: dict[int, tuple[Any, Any]]) -> dict[str, Any]:
    """{state-dict key: its TensorProto in the weights file, renamed} for the spilled tensors."""
    from onnx import TensorProto

    out = {}
    for name, t in model.state_dict(keep_vars=True).items():
        if id(t) in spilled:
            proto = TensorProto()
            proto.CopyFrom(spilled[id(t)][1])
            proto.name = name
            out[name] = proto
    return out


class _NotStreamable(Exception):
    pass


def _file_tensors(path: Path):
    """(keys, {key: shape}, read(key) -> tensor, done(key, tensor)) for a safetensors file or
    torch's zip format, reading one tensor at a time: safetensors opens the file per tensor
    (its mapping goes when it closes); a zip checkpoint is mapped once (torch.load mmap) and
    each tensor's pages are dropped from the mapping once it has been copied."""
    import torch

    if path.suffix == ".safetensors":
        from safetensors import safe_open

        with safe_open(str(path), "pt") as f:
            keys = list(f.keys())
            shapes = {k: tuple(f.get_slice(k).get_shape()) for k in keys}

        def read(key):
            with safe_open(str(path), "pt") as f:
                return f.get_tensor(key)

        return keys, shapes, read, lambda key, t: None
    try:
        sd = torch.load(str(path), map_location="cpu", mmap=True, weights_only=True)
    except Exception as e:  # legacy (non-zip) pickles cannot be mapped
        raise _NotStreamable(f"cannot map {path.name} ({type(e).__name__})") from None
    if isinstance(sd, dict) and isinstance(sd.get("state_dict"), dict):
        sd = sd["state_dict"]  # a training checkpoint, as open_clip.load_state_dict reads it
    if not isinstance(sd, dict) or not all(isinstance(v, torch.Tensor) for v in sd.values()):
        raise _NotStreamable(f"{path.name} is not a flat tensor dictionary")
    if sd and all(k.startswith("module.") for k in sd):
        sd = {k[len("module."):]: v for k, v in sd.items()}

    def done(key, t):  # drop the copied pages of the mapping (MAP_PRIVATE: nothing is lost)
        _drop_pages(sd[key])

    return list(sd), {k: tuple(v.shape) for k, v in sd.items()}, lambda key: sd[key], done


def _drop_pages(tensor) -> None:
    import ctypes

    start, n = tensor.data_ptr(), tensor.numel() * tensor.element_size()
    page = 4096
    lo, hi = start // page * page, -(-(start + n) // page) * page
    try:
        ctypes.CDLL("libc.so.6").madvise(ctypes.c_void_p(lo), ctypes.c_size_t(hi - lo), 4)  # MADV_DONTNEED
    except (OSError, AttributeError):
        pass


def stream_weights_file(model, path: Path, arch: str, spilled: dict, store) -> None:
    """`fsac.train.backbone.load_weights_file` for a tower built by `spilled_while_built`:
    the file's keys and shapes are checked strictly against the whole CLIP architecture, and
    the image tower's tensors are read one at a time, the spilled ones written to `store`
    (their stand-ins stay), the others copied into the model. A file that needs open_clip's
    conversions (other key names, a legacy pickle) is loaded by open_clip as usual, after the
    stand-ins are given real memory again."""
    import torch

    from fsac.errors import FsacError
    from fsac.train.backbone import _meta_clip, load_weights_file

    expected = {k: tuple(v.shape) for k, v in _meta_clip(arch, model.visual).state_dict(keep_vars=True).items()}
    try:
        keys, shapes, read, done = _file_tensors(Path(path))
        if set(keys) != set(expected) or any(shapes[k] != expected[k] for k in keys):
            raise _NotStreamable("its keys or shapes need open_clip's conversion")
    except _NotStreamable:
        for t, _ in spilled.values():
            t.data = torch.empty(t.shape, dtype=t.dtype, device=t.device)
        spilled.clear()
        _suspended[0] = True
        try:
            load_weights_file(model, Path(path), arch)
        finally:
            _suspended[0] = False
        return
    tower = model.state_dict(keep_vars=True)
    with torch.no_grad():
        for key in keys:
            if key not in tower:
                continue  # the text tower: checked above, not read
            target, value = tower[key], read(key)
            if id(target) in spilled:
                spilled[id(target)] = (target, store.append(key, value.to(target.dtype).contiguous().numpy()))
            else:
                target.copy_(value)
            done(key, value)
            del value
    unfilled = [k for k, t in tower.items() if id(t) in spilled and spilled[id(t)][1] is None]
    if unfilled:
        raise FsacError(f"{path}: no values for {unfilled[:3]} (the tower's tensors were dropped while it was built)")
