"""CT-CLIP: committed key lists, parity with the authors' code, strict import, licence acceptance.

The golden files in ``data/`` were recorded once, by hand, from the authors' public code
(``ibrahimethemhamamci/CT-CLIP``, CC BY-NC-SA 4.0) run outside this repository; nothing of that
code is here.  Procedure:

1. ``git archive`` the authors' repository into ``/tmp/ctclip-ref``; patch the scratch copy only
   so that it runs on a CPU without downloads: ``torch.device('cuda')`` -> ``'cpu'`` in ``ctvit.py``
   and ``attention.py``, ``transformer_maskgit/__init__.py`` reduced to ``from
   transformer_maskgit.ctvit import CTViT``, and the tokenizer name in ``CTCLIP.__init__`` read
   from ``$CTCLIP_TOKENIZER``; a scratch venv with torch 2.13.0 (CPU), transformers 5.25.0,
   einops 0.8.2, beartype, ``vector-quantize-pytorch==1.1.2`` and a stub ``torchvision`` (the
   authors import it for training-only transforms).
2. Keys: the authors' ``CTViT``/``CTCLIP`` built on the ``meta`` device with the hyper-parameters
   of their ``run_zero_shot.py`` and a BERT-base (CXR-BERT-sized) text encoder; ``state_dict()``
   names and shapes -> ``ct-clip-golden-keys.json``.
3. Outputs: ``make_test_snapshot(dir, seed=0)`` (weights from :func:`keyed_random_tensor`, so
   they do not depend on construction order) loaded strictly into the authors' model, ``eval()``;
   input ``torch.randn((1, 1, 20, 480, 480), generator=manual_seed(1234)).clamp(-1, 1)``;
   recorded: codebook indices, token statistics, ``image_latents``, the text latents and logits of
   the Cardiomegaly prompt pair, the ClassFine sigmoid, and the continuous tokens before
   quantisation (``vt.encode(vt.to_patch_emb(x))``) -> ``ct-clip-golden.json``.
4. Preprocessing: the authors' ``CTReportDatasetinfer.nii_img_to_tensor`` (``scripts/
   data_inference_nii.py``) on ``thorax_ct_1.5mm.nii.gz`` of ``shared/data/real-ct`` (slope 1,
   intercept 0, spacings from the header): shape, sum, count of -1 pads and 4,000 voxels at
   ``numpy.random.default_rng(7)`` positions -> ``ct-clip-golden-preprocess.json``.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from neuroradix.cli import main as cli_main
from neuroradix.errors import WeightsError
from neuroradix.imaging.nifti import nifti_to_volume
from neuroradix.models.published.base import FINDINGS, KEYS_DIR, PROMPT_FILE, load_prompt_embeddings
from neuroradix.models.published.ctclip import (
    CHECKPOINT,
    CLASSFINE,
    CTCLIP,
    HEAD_FILE,
    IMAGE_FILE,
    model_axes,
    preprocess_array,
)
from neuroradix.models.published.ctclip_net import CTCLIPImage
from tests.support import real_ct

DATA = Path(__file__).parent / "data"
ACCEPT = "cc-by-nc-sa-4.0"
# fp32 on a CPU; the authors' attention is einsum + softmax, ours scaled_dot_product_attention
LATENT_ATOL = 1e-4
TOKEN_RTOL = 1e-4


def _golden_input() -> torch.Tensor:
    gen = torch.Generator().manual_seed(1234)
    return torch.randn((1, 1, 20, 480, 480), generator=gen).clamp(-1, 1)


@pytest.fixture(scope="module")
def golden() -> dict:
    return json.loads((DATA / "ct-clip-golden.json").read_text(encoding="utf-8"))


@pytest.fixture(scope="module")
def snapshot(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("ctclip-snapshot")
    assert cli_main(["weights", "make-test-snapshot", "ct-clip", str(path), "--seed", "0"]) == 0
    return path


@pytest.fixture(scope="module")
def release(snapshot, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("ctclip-release")
    # the way a site imports it (the golden outputs were recorded on a seed-0 snapshot)
    rc = cli_main(["weights", "import", "ct-clip", str(snapshot), "--out", str(out), "--accept-license", ACCEPT])
    assert rc == 0
    return out


@pytest.fixture(scope="module")
def ours(release):
    encoder = CTCLIP.load(release, allow_untrained=True)
    x = _golden_input()
    with torch.inference_mode():
        continuous = encoder.model.visual_transformer.encode(x)
        tokens, index = encoder.model.visual_transformer(x)
        latent = encoder.embed(x)
    return {"encoder": encoder, "x": x, "continuous": continuous, "tokens": tokens, "index": index, "latent": latent}


def test_committed_key_lists_equal_the_authors_state_dict():
    golden = json.loads((DATA / "ct-clip-golden-keys.json").read_text(encoding="utf-8"))
    image = json.loads((KEYS_DIR / "ct-clip-keys.json").read_text(encoding="utf-8"))["keys"]
    text = json.loads((KEYS_DIR / "ct-clip-text-keys.json").read_text(encoding="utf-8"))["keys"]
    assert not set(image) & set(text)
    committed = {**image, **text}
    published = dict(golden["keys"])
    assert committed == published
    # the published file also holds BERT's position_ids (reported on CT-CLIP's issue tracker): allowed, not listed
    assert golden["published_extra"] == ["text_transformer.embeddings.position_ids"]
    assert len(published) + 1 == 362


def test_our_network_has_the_published_image_keys():
    with torch.device("meta"):
        model = CTCLIPImage()
    ours = {k: list(v.shape) for k, v in model.state_dict().items()}
    image = json.loads((KEYS_DIR / "ct-clip-keys.json").read_text(encoding="utf-8"))["keys"]
    # the release drops the unused CLOOB projection; everything else is the published image side
    assert ours == {k: v for k, v in image.items() if k != "to_visual_latent_extra.weight"}


def test_codebook_indices_equal_the_authors(ours, golden):
    index = ours["index"].reshape(-1).tolist()
    assert len(index) == 2 * 24 * 24
    assert index == golden["codebook_indices"]


def test_continuous_tokens_equal_the_authors(ours, golden):
    flat = ours["continuous"].reshape(-1)
    np.testing.assert_allclose(flat[:64].numpy(), golden["continuous_first64"], rtol=0, atol=LATENT_ATOL)
    np.testing.assert_allclose(flat[-64:].numpy(), golden["continuous_last64"], rtol=0, atol=LATENT_ATOL)
    assert float(flat.abs().sum()) == pytest.approx(golden["continuous_abs_sum"], rel=TOKEN_RTOL)


def test_tokens_and_image_latent_equal_the_authors(ours, golden):
    tokens = ours["tokens"]
    assert list(tokens.shape) == golden["tokens_shape"]
    assert float(tokens.abs().sum()) == pytest.approx(golden["tokens_abs_sum"], rel=TOKEN_RTOL)
    first = tokens.mean(dim=1).reshape(-1)[:64]
    np.testing.assert_allclose(first.numpy(), golden["tokens_mean_over_slabs_first64"], rtol=0, atol=LATENT_ATOL)
    np.testing.assert_allclose(ours["latent"][0].numpy(), golden["image_latent"], rtol=0, atol=LATENT_ATOL)
    assert float(ours["latent"].norm()) == pytest.approx(1.0, abs=1e-5)


def test_prompt_embeddings_and_zero_shot_equal_the_authors(release, ours, golden):
    positive, negative = load_prompt_embeddings(release / PROMPT_FILE)
    i = FINDINGS.index("Cardiomegaly")
    assert golden["prompts"] == ["cardiomegaly is present.", "cardiomegaly is not present."]
    np.testing.assert_allclose(positive[i].numpy(), golden["text_latents"][0], rtol=0, atol=LATENT_ATOL)
    np.testing.assert_allclose(negative[i].numpy(), golden["text_latents"][1], rtol=0, atol=LATENT_ATOL)
    encoder = ours["encoder"]
    scale = encoder.model.logit_scale()
    latent = ours["latent"][0]
    logits = [float(positive[i] @ latent) * scale, float(negative[i] @ latent) * scale]
    np.testing.assert_allclose(logits, golden["logits"], rtol=0, atol=1e-3)
    # the release has the ClassFine head, so findings() uses it; the zero-shot path is checked here
    zero_shot = math.exp(logits[0]) / (math.exp(logits[0]) + math.exp(logits[1]))
    assert zero_shot == pytest.approx(golden["prob_present"], abs=1e-4)


def test_classfine_findings_equal_the_authors(ours, golden):
    probs = ours["encoder"].findings(ours["x"])
    assert list(probs) == list(FINDINGS)
    np.testing.assert_allclose(list(probs.values()), golden["classfine_lipro_order"], rtol=0, atol=1e-4)


def test_release_is_untrained_and_states_the_licence(release):
    manifest = json.loads((release / "manifest.json").read_text(encoding="utf-8"))
    assert manifest["untrained"] is True
    pub = manifest["published"]
    assert pub["model"] == "ct-clip" and pub["licence"] == "CC-BY-NC-SA-4.0"
    assert "non-commercial" in pub["restriction"]
    assert all(r["label"] == "reported" for r in pub["reported"])
    assert set(pub["source_sha256"]) >= {CHECKPOINT, CLASSFINE}
    assert {IMAGE_FILE, PROMPT_FILE, HEAD_FILE} <= set(manifest["files"])


def test_import_refuses_without_licence_acceptance(snapshot, tmp_path, capsys):
    for accepted in (None, "", "mit", "cc-by-4.0"):
        with pytest.raises(WeightsError, match="accept-license cc-by-nc-sa-4.0"):
            CTCLIP.check_acceptance(accepted)
    CTCLIP.check_acceptance("CC-BY-NC-SA-4.0")  # case-insensitive
    # as a site runs it: the CLI refuses before reading a byte, and writes nothing
    rc = cli_main(["weights", "import", "ct-clip", str(snapshot), "--out", str(tmp_path / "out")])
    assert rc == 1
    assert "REFUSED" in capsys.readouterr().out
    assert not (tmp_path / "out").exists()
    rc = cli_main(
        ["weights", "import", "ct-clip", str(snapshot), "--out", str(tmp_path / "out"), "--accept-license", "mit"]
    )
    assert rc == 1 and not (tmp_path / "out").exists()


def _rewrite(snapshot: Path, tmp_path: Path, change) -> Path:
    src = tmp_path / "src"
    src.mkdir()
    for p in snapshot.iterdir():
        if p.is_file() and p.name != CHECKPOINT:
            (src / p.name).symlink_to(p)
        elif p.is_dir():
            (src / p.name).symlink_to(p, target_is_directory=True)
    state = torch.load(str(snapshot / CHECKPOINT), map_location="cpu", weights_only=True)
    change(state)
    torch.save(state, src / CHECKPOINT)
    return src


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda s: s.pop("visual_transformer.vq._codebook.embed"), "1 missing"),
        (lambda s: s.pop("text_transformer.encoder.layer.11.output.dense.weight"), "1 missing"),
        (
            lambda s: s.__setitem__("visual_transformer.dec_spatial_transformer.norm_out.gamma", torch.ones(512)),
            "1 unexpected",
        ),
        (lambda s: s.__setitem__("text_transformer.pooler.extra", torch.ones(2)), "1 unexpected"),
        (lambda s: s.__setitem__("to_visual_latent.weight", torch.ones(512, 4608)), "shapes differ"),
    ],
)
def test_strict_key_check_refuses_missing_extra_or_reshaped_keys(snapshot, tmp_path, change, message):
    src = _rewrite(snapshot, tmp_path, change)
    with pytest.raises(WeightsError, match=message):
        CTCLIP.import_release(src, tmp_path / "out")


def test_position_ids_are_allowed_and_optional(snapshot, tmp_path):
    src = _rewrite(snapshot, tmp_path, lambda s: s.pop("text_transformer.embeddings.position_ids"))
    section = CTCLIP.import_release(src, tmp_path / "out")
    assert section["findings_method"] == "ClassFine linear head"


def test_preprocessing_crops_pads_and_scales_like_ct_rate():
    # 30 slices of 2 mm, 300 x 700 pixels of 0.9 mm (model axis order): resampled, cropped, padded
    arr = np.full((30, 300, 700), -2000.0)
    arr[:, 100:200, 300:400] = 500.0
    x = preprocess_array(arr, (2.0, 0.9, 0.9))
    assert tuple(x.shape) == (1, 1, 240, 480, 480)
    size = (int(30 * 2.0 / 1.5), int(300 * 0.9 / 0.75), int(700 * 0.9 / 0.75))
    assert size == (40, 360, 840)
    d0, h0 = (240 - 40) // 2, (480 - 360) // 2
    assert float(x[0, 0, d0 - 1, 240, 240]) == -1.0  # pad value
    assert float(x[0, 0, d0, h0, 0]) == pytest.approx(-1.0)  # clipped to -1000 HU, / 1000
    assert float(x[0, 0, 120, 240, 240]) == pytest.approx(0.5)  # 500 HU, centre of the box kept


def test_preprocessing_of_real_ct_equals_the_authors():
    golden = json.loads((DATA / "ct-clip-golden-preprocess.json").read_text(encoding="utf-8"))
    volume = nifti_to_volume(real_ct(golden["file"]))
    arr, spacing = model_axes(volume)
    x = preprocess_array(arr, spacing)[0].numpy()
    assert list(x.shape) == golden["shape"]
    assert int((x == -1).sum()) == golden["pad_count"]
    assert float(x.astype(np.float64).sum()) == pytest.approx(golden["sum"], rel=1e-9)
    pos = np.array(golden["positions"])
    np.testing.assert_allclose(x[tuple(pos.T)], golden["values"], rtol=0, atol=1e-6)
