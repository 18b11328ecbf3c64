"""Checkpoints: safetensors + JSON, no pickle, atomic, tamper-evident, rebuildable."""

import json

import numpy as np
import pytest
import torch

from fsac.errors import FsacError
from fsac.train.checkpoint import META_FILE, TENSORS_FILE, checkpoint_sha256, load_checkpoint, read_checkpoint_meta
from fsac.train.run import save_trained
from fsac.train.trainer import TrainConfig, train


@pytest.fixture(scope="module")
def trained(tiny_backbone, bottle_shots, tmp_path_factory):
    cfg = TrainConfig(stage1_epochs=5, stage2_epochs=5, seed=3)
    result = train(tiny_backbone, bottle_shots[:2], "bottle", cfg, quiet=True)
    out = tmp_path_factory.mktemp("run") / "ckpt"
    save_trained(out, result, cfg, write_synth=True)
    return result, out


def test_files_are_safetensors_and_json_only(trained):
    _, out = trained
    names = sorted(p.name for p in out.iterdir())
    assert names == [TENSORS_FILE, META_FILE, "synth"]
    raw = (out / TENSORS_FILE).read_bytes()
    header_len = int.from_bytes(raw[:8], "little")
    header = json.loads(raw[8:8 + header_len])  # safetensors: 8-byte length + JSON header + raw tensors
    assert {"image_adapter.0.weight", "text_adapter.0.weight", "cross_attention.proj.weight",
            "t_pos", "t_neg", "at_pos", "at_neg"} <= set(header)
    assert not any(p.name.endswith((".tmp", ".pt", ".pth", ".pkl", ".bin")) for p in out.rglob("*"))


def test_metadata_has_everything_to_rebuild_and_deploy(trained):
    result, out = trained
    meta = json.loads((out / META_FILE).read_text())
    assert meta["backbone"]["arch"] == "ViT-B-16-plus-240-tiny" and meta["backbone"]["weights_id"] == "random"
    assert meta["head"]["alpha1"] == 1.0 and meta["head"]["beta1"] == 0.1 and meta["head"]["tau"] == 0.01
    assert meta["object_name"] == "bottle"
    assert len(meta["prompts"]["normal"]) == 154 and len(meta["prompts"]["anomalous"]) == 88
    assert meta["preprocess"]["image_size"] == 240 and meta["preprocess"]["resize_mode"] == "squash"
    assert [t["name"] for t in meta["train_images"]] == [t["name"] for t in result.train_images]
    assert meta["seed"] == 3 and meta["train"]["mode"] == "two-stage"
    assert {"fsac", "torch", "open_clip", "python"} <= set(meta["versions"])
    assert len(meta["history"]["stage1"]) == 5


def test_round_trip_gives_identical_scores(trained, tiny_backbone, bottle_shots):
    result, out = trained
    loaded = load_checkpoint(out, quiet=True)
    # Random backbone weights are rebuilt from the recorded seed: same encoder, same features.
    from fsac.preprocess import preprocess_file, stack
    px = stack(preprocess_file(p, tiny_backbone.spec) for p in bottle_shots)
    f_orig = result.model.backbone.encode_images(px)
    f_loaded = loaded.backbone.encode_images(px)
    assert torch.equal(f_orig, f_loaded)
    s1 = result.model.score_features(f_orig)
    s2 = loaded.score_features(f_loaded)
    assert set(s1) == {"score", "logit", "sim_normal", "sim_anomalous"}
    for k in s1:
        assert np.array_equal(s1[k], s2[k])
    with torch.no_grad():
        d1 = result.model.deploy_model()(torch.from_numpy(px))[1].numpy()  # the logit output
        d2 = loaded.deploy_model()(torch.from_numpy(px))[1].numpy()
    assert np.allclose(d1, s1["logit"], atol=1e-4) and np.array_equal(d1, d2)


def test_tampered_tensors_are_refused(trained, tmp_path):
    _, out = trained
    copy = tmp_path / "copy"
    copy.mkdir()
    (copy / META_FILE).write_bytes((out / META_FILE).read_bytes())
    data = bytearray((out / TENSORS_FILE).read_bytes())
    data[-5] ^= 0x01
    (copy / TENSORS_FILE).write_bytes(bytes(data))
    with pytest.raises(FsacError, match="do not match the sha256"):
        load_checkpoint(copy, quiet=True)


def test_missing_and_foreign_checkpoints(tmp_path):
    with pytest.raises(FsacError, match="checkpoint not found"):
        read_checkpoint_meta(tmp_path / "nope")
    with pytest.raises(FsacError, match="not an fsac checkpoint"):
        read_checkpoint_meta(tmp_path)
    (tmp_path / META_FILE).write_text('{"format": "something-else"}')
    with pytest.raises(FsacError, match="not an fsac checkpoint"):
        read_checkpoint_meta(tmp_path)
    (tmp_path / META_FILE).write_text("{broken")
    with pytest.raises(FsacError, match="not valid JSON"):
        read_checkpoint_meta(tmp_path)


def test_checkpoint_sha256_changes_with_content(trained, tmp_path):
    _, out = trained
    h = checkpoint_sha256(out)
    assert len(h) == 64 and h == checkpoint_sha256(out / META_FILE)


def test_local_weights_file_must_be_given_again(trained, tmp_path):
    _, out = trained
    meta = json.loads((out / META_FILE).read_text())
    meta["backbone"]["weights_id"] = "file:my_clip.safetensors"
    copy = tmp_path / "c"
    copy.mkdir()
    (copy / TENSORS_FILE).write_bytes((out / TENSORS_FILE).read_bytes())
    (copy / META_FILE).write_text(json.dumps(meta))
    with pytest.raises(FsacError, match="pass it again with --weights PATH"):
        load_checkpoint(copy, quiet=True)


def _edited_copy(out, tmp_path, edit):
    """A copy of the checkpoint whose model.json went through edit(meta) (model.json carries
    no checksum, so a hand edit or a truncated write reaches the loader)."""
    copy = tmp_path / "edited"
    copy.mkdir()
    (copy / TENSORS_FILE).write_bytes((out / TENSORS_FILE).read_bytes())
    meta = json.loads((out / META_FILE).read_text())
    (copy / META_FILE).write_text(json.dumps(edit(meta)))
    return copy


@pytest.mark.parametrize("edit,message", [
    (lambda m: [m], "JSON list, not an object"),
    (lambda m: {k: v for k, v in m.items() if k != "head"}, "missing or malformed head"),
    (lambda m: {**m, "head": {**m["head"], "tau": float("nan")}}, "damaged checkpoint settings .*--tau"),
    (lambda m: {**m, "head": {**m["head"], "bogus": 1}}, "damaged checkpoint settings"),
    (lambda m: {**m, "head": {**m["head"], "embed_dim": 4 * m["head"]["embed_dim"]}}, "does not fit backbone"),
])
def test_damaged_model_json_is_a_one_line_error_naming_it(trained, tmp_path, edit, message):
    # These used to escape as AttributeError / KeyError / ValueError tracebacks, or (NaN tau)
    # load fine and score every image NaN.
    _, out = trained
    copy = _edited_copy(out, tmp_path, edit)
    with pytest.raises(FsacError, match=message) as e:
        load_checkpoint(copy, quiet=True)
    assert str(copy) in str(e.value)
