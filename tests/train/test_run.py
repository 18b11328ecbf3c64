"""What the training-side commands do around training: output folders, checkpoint + synth files."""

import pytest

from fsac.errors import FsacError
from fsac.train.run import check_out_dir, save_trained
from fsac.train.trainer import TrainConfig, train


def test_check_out_dir_refuses_a_file_or_a_path_under_a_file(tmp_path):
    # An --out that is a file used to fail in mkdir with a traceback, after all the work.
    f = tmp_path / "model.png"
    f.write_bytes(b"x")
    with pytest.raises(FsacError, match="--out .*model.png: not a folder"):
        check_out_dir(f)
    with pytest.raises(FsacError, match="model.png is a file"):
        check_out_dir(f / "sub" / "dir")
    assert check_out_dir(tmp_path / "new" / "dir") == tmp_path / "new" / "dir"
    assert check_out_dir(tmp_path) == tmp_path


def test_overwritten_checkpoint_keeps_no_synth_images_of_the_old_one(tiny_backbone, bottle_shots, tmp_path):
    # `fsac train --force` without --write-synth used to leave synth/ of the previous model,
    # shown as the anomalies this checkpoint trained against.
    cfg = TrainConfig(stage1_epochs=1, stage2_epochs=1, encoder_precision="fp32")
    result = train(tiny_backbone, bottle_shots[:1], "bottle", cfg, quiet=True)
    out = tmp_path / "ckpt"
    save_trained(out, result, cfg, write_synth=True)
    assert list((out / "synth").glob("*.png"))
    save_trained(out, result, cfg, write_synth=False)
    assert not list((out / "synth").glob("*.png"))
    assert (out / "model.json").is_file()
