"""Backbone: architecture by name, weights from a tag (download path) or a local file, random."""

from pathlib import Path

import numpy as np
import open_clip
import pytest
import torch
from safetensors.torch import save_file

from fsac.errors import FsacError
from fsac.io import sha256_file
from fsac.train import backbone as bb
from fsac.train import pretrained
from tests.conftest import FULL_ARCH, TINY_ARCH


@pytest.fixture(scope="module")
def saved_checkpoint(tmp_path_factory) -> Path:
    """A checkpoint file saved from a randomly initialised tiny model (seed 123)."""
    model = bb.build_model(TINY_ARCH, random_init_seed=123)
    path = tmp_path_factory.mktemp("ckpt") / "tiny_clip.safetensors"
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(path))
    return path


def _same_weights(a: torch.nn.Module, b: torch.nn.Module) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


def test_local_checkpoint_file_loads(saved_checkpoint):
    loaded = bb.load_backbone(TINY_ARCH, str(saved_checkpoint), device="cpu", quiet=True)
    assert _same_weights(loaded.visual, bb.build_model(TINY_ARCH, random_init_seed=123).visual)
    assert not _same_weights(loaded.visual, bb.build_model(TINY_ARCH, random_init_seed=0).visual)
    # The text tower, built on first use, comes from the same file.
    assert _same_weights(loaded.text_model(), bb.build_model(TINY_ARCH, random_init_seed=123))
    assert loaded.info.weights_id == "file:tiny_clip.safetensors"
    assert loaded.info.weights_sha256 == sha256_file(saved_checkpoint)
    assert not loaded.info.is_random


def test_pretrained_tag_takes_the_same_loading_path(saved_checkpoint, monkeypatch):
    """A tag resolves to open_clip's download, then the file goes through load_weights_file,
    exactly like a local path. The download is replaced by the saved file (no hub here)."""
    calls = []
    monkeypatch.setattr(open_clip, "list_pretrained_tags_by_model", lambda arch: ["test_tag"])
    monkeypatch.setattr(open_clip, "get_pretrained_cfg", lambda arch, tag: {"hf_hub": "fake/repo/"})
    monkeypatch.setattr(pretrained, "cached_pretrained", lambda arch, tag, cache_dir=None: None)
    monkeypatch.setattr(pretrained, "hub_unreachable", lambda cfg: None)  # no DNS on CI boxes

    def fake_download(cfg, cache_dir=None):
        calls.append(cfg)
        return str(saved_checkpoint)

    monkeypatch.setattr(open_clip, "download_pretrained", fake_download)
    loaded_by_tag = bb.load_backbone(TINY_ARCH, "test_tag", device="cpu", quiet=True)
    loaded_by_path = bb.load_backbone(TINY_ARCH, str(saved_checkpoint), device="cpu", quiet=True)
    assert calls, "the tag was not resolved through open_clip's download"
    assert loaded_by_tag.info.weights_id == "test_tag"
    assert loaded_by_tag.info.weights_sha256 == loaded_by_path.info.weights_sha256
    assert _same_weights(loaded_by_tag.model, loaded_by_path.model)


def test_a_tower_a_file_fills_is_built_without_initialisation():
    """Same keys, shapes and dtypes as the initialised build, on the CPU; the file then fills
    every tensor (test_local_checkpoint_file_loads compares the values)."""
    built = bb.build_visual(TINY_ARCH).state_dict()
    bare = bb.uninitialised(lambda: bb.build_visual(TINY_ARCH)).state_dict()
    assert {k: (v.shape, v.dtype, v.device.type) for k, v in bare.items()} == \
        {k: (v.shape, v.dtype, v.device.type) for k, v in built.items()}


def test_a_module_with_a_buffer_no_file_holds_is_initialised():
    class WithMask(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.weight = torch.nn.Parameter(torch.ones(3))
            self.register_buffer("mask", torch.full((2,), 7.0), persistent=False)

    module = bb.uninitialised(WithMask)
    assert torch.equal(module.mask, torch.full((2,), 7.0)) and torch.equal(module.weight, torch.ones(3))


def test_wrong_architecture_checkpoint_is_refused(saved_checkpoint, tmp_path):
    other = bb.build_model(TINY_ARCH)
    state = {k: v for k, v in other.state_dict().items() if not k.startswith("visual.")}
    path = tmp_path / "partial.safetensors"
    save_file({k: v.contiguous() for k, v in state.items()}, str(path))
    with pytest.raises(FsacError, match="does not fit the model architecture"):
        bb.load_backbone(TINY_ARCH, str(path), quiet=True)


def test_checkpoint_without_text_tower_is_refused(saved_checkpoint, tmp_path):
    """The image tower alone is loaded, yet the file is checked against the whole CLIP model."""
    other = bb.build_model(TINY_ARCH)
    state = {k: v for k, v in other.state_dict().items() if k.startswith("visual.")}
    path = tmp_path / "visual_only.safetensors"
    save_file({k: v.contiguous() for k, v in state.items()}, str(path))
    with pytest.raises(FsacError, match="does not fit the model architecture"):
        bb.load_backbone(TINY_ARCH, str(path), quiet=True)
    state = dict(other.state_dict())
    state["token_embedding.weight"] = state["token_embedding.weight"][:-1]  # wrong text shape
    save_file({k: v.contiguous() for k, v in state.items()}, str(path))
    with pytest.raises(FsacError, match="does not fit the model architecture"):
        bb.load_backbone(TINY_ARCH, str(path), quiet=True)


@pytest.mark.parametrize("arch", [TINY_ARCH, FULL_ARCH])
def test_visual_only_build_equals_the_full_builds_image_tower(arch):
    """Random-weight runs are rebuilt from their seed for export: the image tower built
    alone must be bit-identical to the one of the full model (which training used to build)."""
    assert _same_weights(bb.build_visual(arch, 7).visual, bb.build_model(arch, 7).visual)


def test_text_tower_is_built_only_when_prompts_are_encoded():
    b = bb.load_backbone(TINY_ARCH, "random", random_init_seed=3, quiet=True)
    assert not b.has_text_tower
    visual = b.visual
    t = b.encode_texts(["a photo of a bottle."])
    assert b.has_text_tower and b.visual is visual  # one image tower, kept
    full = bb.load_backbone(TINY_ARCH, "random", random_init_seed=3, quiet=True, text_tower=True)
    assert _same_weights(b.model, full.model)
    assert torch.equal(t, full.encode_texts(["a photo of a bottle."]))


def test_unknown_architecture_is_named():
    with pytest.raises(FsacError, match="unknown model 'ViT-Nope'"):
        bb.load_backbone("ViT-Nope", "random", quiet=True)


def test_random_weights_are_seeded_and_warn(capsys):
    a = bb.load_backbone(TINY_ARCH, "random", random_init_seed=5)
    assert "RANDOM BACKBONE WEIGHTS" in capsys.readouterr().err
    b = bb.load_backbone(TINY_ARCH, "random", random_init_seed=5, quiet=True)
    assert _same_weights(a.model, b.model)
    assert a.info.is_random and a.info.weights_sha256 is None
    # The global RNG is left alone.
    torch.manual_seed(0)
    x = torch.rand(1)
    torch.manual_seed(0)
    bb.build_model(TINY_ARCH, random_init_seed=9)
    assert torch.equal(torch.rand(1), x)


def test_encoders_are_frozen_and_shapes(tiny_backbone):
    assert not any(p.requires_grad for p in tiny_backbone.model.parameters())
    x = np.random.default_rng(0).integers(0, 256, (3, 240, 240, 3), dtype=np.uint8)
    f = tiny_backbone.encode_images(x, batch_size=2)
    assert f.shape == (3, 64)
    f1 = tiny_backbone.encode_images(x[:1])
    assert torch.allclose(f[:1], f1, atol=1e-5)  # batching does not change features
    with pytest.raises(FsacError, match="expected images of shape"):
        tiny_backbone.encode_images(x[:, :100])


def test_images_are_encoded_with_the_last_block_for_cls_only(tiny_backbone, last_mlp_tokens):
    """encode_images runs the last block for [CLS] alone: the features of the unchanged
    encoder (open_clip's own forward), and the block's MLP sees one token per image."""
    from fsac.train.last_block import last_block_of

    x = np.random.default_rng(1).integers(0, 256, (3, 240, 240, 3), dtype=np.uint8)
    with torch.no_grad():
        ref = tiny_backbone.visual(tiny_backbone.normalize(torch.from_numpy(x)))
    del last_mlp_tokens[:]  # the reference ran the full block
    block = last_block_of(tiny_backbone.visual)
    f_cls = tiny_backbone.encode_images(x, batch_size=2)
    f_all = tiny_backbone.encode_images(x, batch_size=2, last_block_mode="all-tokens")
    n_tokens = tiny_backbone.visual.positional_embedding.shape[0]
    assert last_mlp_tokens == [1, 1, n_tokens, n_tokens]
    assert torch.allclose(f_cls, ref, atol=1e-5) and torch.allclose(f_all, ref, atol=1e-5)
    assert "forward" not in vars(block)  # the block is itself again afterwards


def test_truncated_text_encoding_equals_open_clip(tiny_backbone):
    tokens = tiny_backbone.tokenizer(["a photo of a flawless bottle for visual inspection.", "damaged bottle"])
    with torch.no_grad():
        full = tiny_backbone.text_model().encode_text(tokens)
        short = bb.encode_text_truncated(tiny_backbone.text_model(), tokens)
    assert torch.allclose(full, short, atol=1e-5)


def test_preprocess_spec_follows_open_clip_config(tiny_backbone):
    spec = tiny_backbone.spec
    assert spec.image_size == 240 and spec.interpolation == "bicubic" and spec.resize_mode == "squash"  # fsac default, not open_clip crop
    assert spec.mean == tuple(open_clip.OPENAI_DATASET_MEAN) and spec.std == tuple(open_clip.OPENAI_DATASET_STD)
