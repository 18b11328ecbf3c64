"""fsac.feedback: the folder layout fsac-run writes and `fsac calibrate --feedback` reads."""

from __future__ import annotations

import json

from fsac.feedback import CONFIRMED_DEFECT, FALSE_ALARM, counts, good_images


def _pair(folder, label, stem, with_json=True, image=True):
    d = folder / label
    d.mkdir(parents=True, exist_ok=True)
    if image:
        (d / f"{stem}.png").write_bytes(b"\x89PNG fake")
    if with_json:
        (d / f"{stem}.json").write_text(json.dumps({"label": label, "image": f"{stem}.png"}))


def test_good_images_are_complete_false_alarm_pairs_oldest_first(tmp_path):
    _pair(tmp_path, FALSE_ALARM, "20240102")
    _pair(tmp_path, FALSE_ALARM, "20240101")
    _pair(tmp_path, FALSE_ALARM, "20240103", with_json=False)  # image written, JSON not yet: incomplete
    _pair(tmp_path, FALSE_ALARM, "20240104", image=False)  # image gone
    (tmp_path / FALSE_ALARM / "broken.json").write_text("{not json")
    _pair(tmp_path, CONFIRMED_DEFECT, "20240105")  # defects are not good images
    assert [p.name for p in good_images(tmp_path)] == ["20240101.png", "20240102.png"]
    assert counts(tmp_path) == {FALSE_ALARM: 2, CONFIRMED_DEFECT: 1}  # complete pairs, as documented
    assert good_images(tmp_path / "missing") == [] and counts(tmp_path / "missing") == {FALSE_ALARM: 0,
                                                                                       CONFIRMED_DEFECT: 0}


def test_a_json_that_is_not_an_object_or_points_outside_the_folder_is_no_pair(tmp_path):
    """`fsac calibrate --feedback` reads these: a list, null or a string used to raise an
    AttributeError traceback, and "../x.png" or an absolute path pulled in any file."""
    _pair(tmp_path, FALSE_ALARM, "ok")
    d = tmp_path / FALSE_ALARM
    (tmp_path / "outside.png").write_bytes(b"\x89PNG fake")
    for i, data in enumerate([[], None, "ok.png", {"image": "../outside.png"}, {"image": str(tmp_path / "outside.png")},
                              {"image": 7}]):
        (d / f"bad{i}.json").write_text(json.dumps(data))
    assert [p.name for p in good_images(tmp_path)] == ["ok.png"]
    assert counts(tmp_path)[FALSE_ALARM] == 1


def test_a_frame_also_marked_confirmed_defect_is_never_a_good_image(tmp_path):
    """An operator who marked a frame False alarm and then Confirmed defect (or the other way
    round) has said it may be a defect: calibrating on it as a normal image would raise the
    threshold over that very defect. The frame is known by its record (run_id, seq)."""
    def pair(label, stem, run_id, seq):
        d = tmp_path / label
        d.mkdir(parents=True, exist_ok=True)
        (d / f"{stem}.png").write_bytes(b"\x89PNG fake " + stem.encode())
        (d / f"{stem}.json").write_text(json.dumps({"label": label, "image": f"{stem}.png",
                                                    "record": {"run_id": run_id, "seq": seq}}))

    pair(FALSE_ALARM, "20240101", "run-a", 7)
    pair(FALSE_ALARM, "20240102", "run-a", 8)
    pair(CONFIRMED_DEFECT, "20240103", "run-a", 7)  # the same frame as 20240101, judged again
    pair(CONFIRMED_DEFECT, "20240104", "run-b", 8)  # another run's seq 8: another frame
    assert [p.name for p in good_images(tmp_path)] == ["20240102.png"]
