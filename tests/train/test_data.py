"""Dataset layouts and few-shot sampling on the real images in ../shared/data."""

import pytest

from fsac.errors import FsacError
from fsac.train.data import (embedded_dataset, find_categories, guess_object_name, sample_shots, subsample,
                             training_images)


def test_mvtec_category(bottle):
    (cat,) = find_categories(bottle)
    assert cat.name == "bottle" and cat.layout == "mvtec"
    assert len(cat.train_pool) == 209
    assert sum(t.label == 0 for t in cat.test) == 20 and sum(t.label == 1 for t in cat.test) == 63
    assert {t.defect for t in cat.test} == {"good", "broken_large", "broken_small", "contamination"}
    shots, test = cat.split(4, seed=0)
    assert len(shots) == 4 and len(test) == 83 and all(s in cat.train_pool for s in shots)


def test_dataset_root_with_several_categories(shared_data):
    cats = find_categories(shared_data / "mvtec_ad")
    assert [c.name for c in cats] == ["bottle"]
    cats = find_categories(shared_data / "autovi", ["pipe_staple"])
    assert cats[0].layout == "mvtec" and sum(t.label for t in cats[0].test) == 117
    with pytest.raises(FsacError, match="unknown category nut.*found: pipe_staple"):
        find_categories(shared_data / "autovi", ["nut"])


def test_two_folder_layout_protocol(shared_data):
    (cat,) = find_categories(shared_data / "brain_mri")
    assert cat.layout == "two-folder" and len(cat.train_pool) == 98 and len(cat.test) == 155
    shots, test = cat.split(2, seed=1)
    assert len(shots) == 2
    normals = [t.path for t in test if t.label == 0]
    copies = cat.shot_copies(shots)  # both shots of this draw have a byte-identical twin among the normals
    assert len(copies) == 2 and len(normals) == 96 - 2 and not set(shots + copies) & set(normals)
    assert sum(t.label for t in test) == 155


def test_sampling_is_seeded(bottle):
    (cat,) = find_categories(bottle)
    assert sample_shots(cat.train_pool, 4, 0) == sample_shots(cat.train_pool, 4, 0)
    assert sample_shots(cat.train_pool, 4, 0) != sample_shots(cat.train_pool, 4, 1)
    assert sample_shots(cat.train_pool, 0, 0) == []


def test_clear_errors(tmp_path, bottle):
    with pytest.raises(FsacError, match=f"data folder not found: {tmp_path / 'missing'}"):
        find_categories(tmp_path / "missing")
    with pytest.raises(FsacError, match="no categories found"):
        find_categories(tmp_path)
    (tmp_path / "normal").mkdir()
    (tmp_path / "anomalous").mkdir()
    with pytest.raises(FsacError, match="no images in .*(normal|anomalous)"):
        find_categories(tmp_path)
    (cat,) = find_categories(bottle)
    with pytest.raises(FsacError, match="asked for 300 shots but .* has only 209 normal images"):
        cat.split(300, 0)
    with pytest.raises(FsacError, match="not found"):
        training_images([tmp_path / "nope.png"])


def test_training_images_from_folders_and_files(bottle):
    assert len(training_images([bottle])) == 209  # a category folder means train/good
    one = sorted((bottle / "train" / "good").glob("*.png"))[0]
    assert training_images([one]) == [one]


def test_guess_object_name(bottle, shared_data):
    assert guess_object_name(bottle) == "bottle"
    assert guess_object_name(bottle / "train" / "good") == "bottle"
    assert guess_object_name(next((bottle / "train" / "good").glob("*.png"))) == "bottle"
    assert guess_object_name(shared_data / "autovi" / "pipe_staple") == "pipe staple"


def test_embedded_default_input():
    cat = embedded_dataset()
    assert cat.name == "textile" and cat.layout == "two-folder"
    assert len(cat.train_pool) == 1000 and len(cat.test) == 1000
    assert {t.defect for t in cat.test} == {"local", "global"}
    small = subsample(cat, 10, 6, seed=0)
    assert len(small.train_pool) == 10 and len(small.test) == 6
    assert subsample(cat, 10, 6, seed=0).train_pool == small.train_pool


def test_the_same_training_image_twice_is_refused(bottle):
    # Overlapping arguments (a folder and one of its files) used to train on the file twice
    # and record two shots for one image.
    one = bottle / "train" / "good" / "000.png"
    with pytest.raises(FsacError, match="000.png is given twice"):
        training_images([one, one])
    with pytest.raises(FsacError, match="000.png is given twice"):
        training_images([bottle / "train" / "good", one])
    assert len(training_images([one, bottle / "train" / "good" / "001.png"])) == 2


def test_shots_are_distinct_images_and_no_test_image_is_a_copy_of_one(shared_data):
    """shared/data/brain_mri has 11 pairs of byte-identical normals. A shot must not be drawn
    twice under two names, and its copy must not be scored as an unseen test image."""
    from fsac.train.data import content_id, distinct_by_content

    (cat,) = find_categories(shared_data / "brain_mri")
    distinct, copies = distinct_by_content(cat.train_pool)
    assert len(copies) == 11 and len(distinct) == 87
    leaked = 0
    for seed in range(6):
        shots, test = cat.split(4, seed)
        ids = [content_id(p) for p in shots]
        assert len(set(ids)) == 4
        assert not {content_id(t.path) for t in test} & set(ids)
        left_out = cat.shot_copies(shots)
        leaked += len(left_out)
        assert sum(t.label == 0 for t in test) == 98 - 4 - len(left_out) and sum(t.label for t in test) == 155
    assert leaked >= 3  # these seeds do draw images that have copies (seed 0: 49 no.jpg = no 1.jpg)
    shots, _ = cat.split(4, 0)
    assert [p.name for p in cat.shot_copies(shots)] == ["no 1.jpg"]


def test_copies_of_the_pool_can_leave_too_few_distinct_shots(tmp_path, bottle):
    from fsac.train.data import Category

    good = sorted((bottle / "train" / "good").glob("*.png"))
    pool = []
    for i, src in enumerate([good[0], good[0], good[1]]):
        pool.append(tmp_path / f"n{i}.png")
        pool[-1].write_bytes(src.read_bytes())
    cat = Category("c", tmp_path, "two-folder", pool, [])
    with pytest.raises(FsacError, match="only 2 distinct normal images .1 are byte-identical copies of others, "
                                        "e.g. n1.png = n0.png"):
        cat.split(3, 0)
    shots, test = cat.split(2, 0)
    assert sorted(p.name for p in shots) == ["n0.png", "n2.png"] and test == []  # n1.png is n0.png
