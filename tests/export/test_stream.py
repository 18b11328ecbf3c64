"""The tracing process's weights one block at a time: spilled while built (bit-identical to a
normal build), read back block by block for the reference, passed as inputs to the trace."""

from __future__ import annotations

import numpy as np
import pytest


def test_a_spilled_build_is_bit_identical_and_holds_stand_ins(tmp_path, models):
    import torch

    from fsac.export.external import TensorFile, tensor_array
    from fsac.export.stream import is_standin, spilled_while_built
    from fsac.train.backbone import build_visual

    want = build_visual(models.TINY_ARCH, random_init_seed=3)
    with spilled_while_built(TensorFile(tmp_path / "w.bin"), min_bytes=1024) as spilled:
        got = build_visual(models.TINY_ARCH, random_init_seed=3)
    assert len(spilled) > 10
    state = got.state_dict(keep_vars=True)
    n_standins = 0
    for name, t in want.state_dict().items():
        mine = state[name]
        if id(mine) in spilled:
            n_standins += 1
            assert is_standin(mine) and mine.shape == t.shape
            assert np.array_equal(tensor_array(spilled[id(mine)][1], tmp_path), t.numpy()), name
        else:
            assert torch.equal(mine, t), name
    assert n_standins == len(spilled)


def test_streamed_forward_matches_the_normal_one_and_restores_the_stand_ins(tmp_path, models):
    import torch

    from fsac.export.external import TensorFile
    from fsac.export.stream import is_standin, spilled_while_built, streamed
    from fsac.train.backbone import build_visual

    x = torch.from_numpy(np.random.default_rng(0).standard_normal((2, 3, 240, 240)).astype(np.float32))
    want = build_visual(models.TINY_ARCH, random_init_seed=1).visual.eval()
    with torch.no_grad():
        ref = want(x)
    with spilled_while_built(TensorFile(tmp_path / "w.bin"), min_bytes=1024) as spilled:
        visual = build_visual(models.TINY_ARCH, random_init_seed=1).visual.eval()
    calls = []
    blocks = list(visual.transformer.resblocks)
    blocks[0].register_forward_pre_hook(lambda m, a: calls.append(
        sum(not is_standin(t) for t in m.parameters() if id(t) in spilled)))
    with streamed(visual, spilled, tmp_path, budget=256 << 10), torch.no_grad():  # one block (193 KiB) at a time
        got = visual(x)
    assert torch.equal(got, ref)
    assert calls and calls[0] == 0  # a block's weights are stand-ins until its own hook reads them
    assert all(is_standin(t) for t, _ in spilled.values())  # and again after the forward


@pytest.mark.filterwarnings("ignore::DeprecationWarning")  # the TorchScript exporter's notice
def test_weights_as_inputs_trace_names_every_input_by_its_key_and_keeps_module_paths(tmp_path):
    import onnx
    import torch

    from fsac.export.stream import weight_names, weights_as_inputs

    model = torch.nn.Sequential(torch.nn.Linear(4, 3), torch.nn.ReLU(), torch.nn.Linear(3, 2)).eval()
    names = weight_names(model)
    state = model.state_dict(keep_vars=True)
    weights = [state[n] for n in names]
    x = torch.ones(1, 4)
    with weights_as_inputs(model, names):
        assert not model.state_dict()  # the module holds none of them meanwhile
        assert torch.equal(model(x, *[w * 0 for w in weights]), torch.zeros(1, 2))  # the given ones are used
        with torch.no_grad():
            torch.onnx.export(model, (x, *weights), str(tmp_path / "m.onnx"), input_names=["x", *names],
                              export_params=False, do_constant_folding=False, dynamo=False,
                              keep_initializers_as_inputs=True)
    assert model[0].weight is state["0.weight"] and torch.equal(model(x), model(x))  # all back, plain forward
    m = onnx.load(str(tmp_path / "m.onnx"))
    assert [i.name for i in m.graph.input] == ["x", *names] and not m.graph.initializer
    assert any(n.name.startswith("/0/") for n in m.graph.node)  # module paths in the node names


@pytest.mark.parametrize("suffix", [".safetensors", ".pt"])
def test_a_weights_file_streamed_into_a_spilled_tower_equals_open_clips_load(tmp_path, models, suffix):
    import torch
    from safetensors.torch import save_file

    from fsac.export.external import TensorFile, tensor_array
    from fsac.export.stream import is_standin, spilled_while_built, stream_weights_file
    from fsac.train.backbone import build_model, build_visual, load_weights_file

    state = {k: v.contiguous() for k, v in build_model(models.TINY_ARCH, random_init_seed=5).state_dict().items()}
    path = tmp_path / f"clip{suffix}"
    save_file(state, str(path)) if suffix == ".safetensors" else torch.save(state, str(path))
    want = build_visual(models.TINY_ARCH, random_init_seed=0)
    load_weights_file(want, path, models.TINY_ARCH)
    spilled: dict = {}
    store = TensorFile(tmp_path / "w.bin")
    with spilled_while_built(None, min_bytes=1024, spilled=spilled):  # the random values are not kept
        got = build_visual(models.TINY_ARCH, random_init_seed=0)
        assert all(proto is None for _, proto in spilled.values())
        stream_weights_file(got, path, models.TINY_ARCH, spilled, store)
    assert len(spilled) > 10
    mine = got.state_dict(keep_vars=True)
    for name, t in want.state_dict().items():
        if id(mine[name]) in spilled:
            assert is_standin(mine[name])
            assert np.array_equal(tensor_array(spilled[id(mine[name])][1], tmp_path), t.numpy()), name
        else:
            assert torch.equal(mine[name], t), name


def test_a_file_that_cannot_be_streamed_is_loaded_by_open_clip(tmp_path, models):
    import torch

    from fsac.export.external import TensorFile
    from fsac.export.stream import is_standin, spilled_while_built, stream_weights_file
    from fsac.train.backbone import build_model, build_visual, load_weights_file

    state = {k: v.contiguous() for k, v in build_model(models.TINY_ARCH, random_init_seed=5).state_dict().items()}
    path = tmp_path / "legacy.pt"
    torch.save(state, str(path), _use_new_zipfile_serialization=False)  # a pickle torch cannot map
    want = build_visual(models.TINY_ARCH, random_init_seed=0)
    load_weights_file(want, path, models.TINY_ARCH)
    spilled: dict = {}
    store = TensorFile(tmp_path / "w.bin")
    with spilled_while_built(store, min_bytes=1024, spilled=spilled):
        got = build_visual(models.TINY_ARCH, random_init_seed=0)
        stream_weights_file(got, path, models.TINY_ARCH, spilled, store)
    assert not spilled and not any(is_standin(t) for t in got.state_dict().values())
    for name, t in want.state_dict().items():
        assert torch.equal(got.state_dict()[name], t), name


def test_a_file_that_does_not_fit_is_refused_by_open_clips_strict_load(tmp_path, models):
    import torch
    from safetensors.torch import save_file

    from fsac.errors import FsacError
    from fsac.export.external import TensorFile
    from fsac.export.stream import spilled_while_built, stream_weights_file
    from fsac.train.backbone import build_model, build_visual

    state = {k: v.contiguous() for k, v in build_model(models.TINY_ARCH, random_init_seed=5).state_dict().items()}
    state["visual.extra"] = torch.zeros(3)  # a key the architecture does not have
    path = tmp_path / "odd.safetensors"
    save_file(state, str(path))
    spilled: dict = {}
    store = TensorFile(tmp_path / "w.bin")
    with spilled_while_built(store, min_bytes=1024, spilled=spilled):
        got = build_visual(models.TINY_ARCH, random_init_seed=0)
        with pytest.raises(FsacError, match="does not fit the model architecture"):  # open_clip's strict load
            stream_weights_file(got, path, models.TINY_ARCH, spilled, store)
    assert not spilled  # the stand-ins got real memory back for open_clip to load into (and refuse)
