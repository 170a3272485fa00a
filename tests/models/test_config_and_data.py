"""Config round trips and validation; class scheme, findings catalogue and remap tables."""

from __future__ import annotations

import json

import numpy as np
import pytest

from neuroradix.errors import ConfigError
from neuroradix.models.config import BackboneConfig, HeadConfig, ModelConfig, PreprocessConfig, diff_dicts, tiny_config
from neuroradix.models.findings import CTRATE_FINDINGS, load_findings
from neuroradix.models.remap import load_remap, parse_remap
from neuroradix.schemes import load_scheme


def test_config_round_trip_through_json():
    for cfg in (ModelConfig(), tiny_config()):
        again = ModelConfig.from_dict(json.loads(json.dumps(cfg.to_dict())))
        assert again == cfg
    assert ModelConfig().head.embed_dim == 1152 == BackboneConfig().embed_dim


@pytest.mark.parametrize(
    "bad",
    [
        lambda: PreprocessConfig(hu_window=(100, -100)),
        lambda: PreprocessConfig(patch_size=80),
        lambda: PreprocessConfig(global_size=64),
        lambda: PreprocessConfig(target_spacing=None),
        lambda: PreprocessConfig(orientation="SPP"),
        lambda: BackboneConfig(in_channels=1),
        lambda: BackboneConfig(feature_size=20),
        lambda: BackboneConfig(window_size=8),
        lambda: BackboneConfig(window_size=1),
        lambda: HeadConfig(num_cls_queries=5),
        lambda: HeadConfig(bart={"d_model": 12}),
        lambda: ModelConfig(head=HeadConfig(embed_dim=100)),
    ],
)
def test_config_validation(bad):
    with pytest.raises(ValueError):
        bad()


def test_window_size_reaches_swinunetr_and_old_configs_keep_monai_default():
    from neuroradix.models.backbone import build_backbone

    d = tiny_config().to_dict()
    d["backbone"].pop("window_size")  # a release written before the setting existed
    assert ModelConfig.from_dict(d).backbone.window_size == 7
    model = build_backbone(BackboneConfig(feature_size=12, window_size=4))
    assert tuple(model.swinViT.window_size) == (4, 4, 4)


def test_from_dict_refuses_unknown_keys():
    d = tiny_config().to_dict()
    d["head"]["lamda_gen"] = 0.3
    with pytest.raises(ValueError, match="lamda_gen"):
        ModelConfig.from_dict(d)


def test_diff_dicts_names_the_path():
    a = tiny_config().to_dict()
    b = json.loads(json.dumps(a))
    b["backbone"]["feature_size"] = 24
    assert diff_dicts(a, b) == ["backbone.feature_size: expected 12, got 24"]


def test_chest_scheme_has_43_coded_classes_with_laterality():
    scheme = load_scheme("chest-ct-43")
    assert len(scheme) == 43 and BackboneConfig().out_channels == 44
    for seg in scheme.segments:
        assert seg.type.scheme == "SCT" and seg.category.value == "123037004"
        if seg.name == "Left atrial appendage":  # an unpaired structure: no laterality
            assert seg.laterality is None
        elif seg.name.startswith("Left "):
            assert seg.laterality.value == "7771000", seg.name
        elif seg.name.startswith("Right "):
            assert seg.laterality.value == "24028007", seg.name
    assert scheme.by_name("Left upper lung lobe").type.value == "44714003"
    assert scheme.by_name("Right lower lung lobe").type.value == "266005"


def test_findings_catalogue_order_and_codes():
    cat = load_findings()
    assert cat.names == list(CTRATE_FINDINGS) + ["Abnormal"]
    assert cat.findings[7].code.value == "87433001"  # pulmonary emphysema
    assert load_scheme("chest-ct-43").by_label(cat.findings[2].segment_labels[0]).name == "Heart"


def test_totalseg_remap_table():
    table = load_remap("totalseg117-to-chest-ct-43")
    scheme = load_scheme("chest-ct-43")
    src = {name: label for label, name in table.source_labels.items()}
    assert len(table.source_labels) == 117
    label = lambda n: scheme.by_name(n).label  # noqa: E731
    cases = {
        "spleen": label("Spleen"),
        "rib_left_7": label("Left ribs"),
        "rib_right_1": label("Right ribs"),
        "vertebrae_T5": label("Thoracic vertebrae"),
        "lung_middle_lobe_right": label("Right middle lung lobe"),
        "adrenal_gland_left": label("Adrenal glands"),
        "femur_left": 0,
        "colon": 0,
    }
    arr = np.array([0] + [src[n] for n in cases], dtype=np.uint8)
    assert table.apply(arr).tolist() == [0] + list(cases.values())
    with pytest.raises(ValueError, match="118"):
        table.apply(np.array([1, 118]))


def _tiny_table(**changes):
    data = {
        "name": "t",
        "version": "1",
        "source": {"name": "toy5", "labels": {"1": "a", "2": "b", "3": "c", "4": "d", "5": "e"}},
        "target": {"scheme": "chest-ct-43", "version": "1"},
        "map": {"a": "Heart", "b": 43, "c": None, "d": "Left ribs", "e": 1},
    }
    data.update(changes)
    return data


def test_any_n_source_classes():
    table = parse_remap(_tiny_table())
    out = table.apply(np.arange(6).reshape(1, 2, 3))
    assert out.dtype == np.uint8 and out.ravel().tolist() == [0, 8, 43, 0, 26, 1]


@pytest.mark.parametrize(
    "changes, message",
    [
        ({"map": {"a": "Heart", "b": 44, "c": None, "d": None, "e": None}}, "outside 0..43"),
        ({"map": {"a": "Heart", "b": 1, "c": None, "d": None, "e": None, "zz": 1}}, "unknown source"),
        ({"map": {"a": "Heart", "b": 1, "c": None, "d": None}}, "not mapped"),
        ({"map": {"a": "Hart", "b": 1, "c": None, "d": None, "e": None}}, "not a class"),
        ({"target": {"scheme": "chest-ct-43", "version": "9"}}, "version"),
    ],
)
def test_bad_remap_tables_are_refused(changes, message):
    with pytest.raises(ConfigError, match=message):
        parse_remap(_tiny_table(**changes))
