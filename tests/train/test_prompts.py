import torch

from fsac.train.prompts import (ANOMALOUS_STATES, NORMAL_STATES, TEMPLATES, build_prompts,
                                object_name_from_category)
from fsac.train.trainer import text_features


def test_prompt_counts_are_winclip_cpe():
    assert (len(NORMAL_STATES), len(ANOMALOUS_STATES), len(TEMPLATES)) == (7, 4, 22)
    normal, anomalous = build_prompts("bottle")
    assert len(normal) == 154 and len(anomalous) == 88
    assert len(set(normal)) == 154 and len(set(anomalous)) == 88


def test_object_name_is_substituted_everywhere():
    normal, anomalous = build_prompts("metal nut")
    assert all("metal nut" in p for p in normal + anomalous)
    assert "a photo of a flawless metal nut for anomaly detection." in normal
    assert "a cropped photo of the metal nut with defect." in anomalous
    assert "{}" not in " ".join(normal + anomalous)


def test_object_name_from_category():
    assert object_name_from_category("metal_nut") == "metal nut"
    assert object_name_from_category("pipe_staple") == "pipe staple"
    assert object_name_from_category(None) == "object"
    assert object_name_from_category("") == "object"


def test_class_text_features_are_renormalised_mean(tiny_backbone):
    t_pos, t_neg, prompts = text_features(tiny_backbone, "bottle")
    assert t_pos.shape == (64,) and t_neg.shape == (64,)
    assert abs(t_pos.norm().item() - 1) < 1e-5 and abs(t_neg.norm().item() - 1) < 1e-5
    feats = torch.nn.functional.normalize(tiny_backbone.encode_texts(prompts["normal"]), dim=-1)
    expected = torch.nn.functional.normalize(feats.mean(0), dim=-1)
    assert torch.allclose(t_pos, expected, atol=1e-6)
    assert not torch.allclose(t_pos, t_neg)
