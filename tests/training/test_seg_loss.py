"""The segmentation loss: MONAI's DiceCELoss as is, or with the Dice averaged over the classes present."""

from __future__ import annotations

import pytest
import torch

from neuroradix.errors import ConfigError
from neuroradix_train.stages.segmentation import SegLoss


def _batch():
    torch.manual_seed(0)
    logits = torch.randn(2, 6, 4, 4, 4)
    target = torch.zeros(2, 1, 4, 4, 4, dtype=torch.long)
    target[0, 0, :2] = 3  # crop 0: classes 0 and 3
    target[1, 0, :, :1] = 5  # crop 1: classes 0 and 5
    target[1, 0, :1, 2:] = 1  # ... and 1
    return logits, target


def test_all_is_monai_dice_ce():
    from monai.losses import DiceCELoss

    logits, target = _batch()
    assert torch.allclose(SegLoss("all")(logits, target), DiceCELoss(to_onehot_y=True, softmax=True)(logits, target))


def test_present_averages_dice_over_each_crops_classes():
    from monai.losses import DiceLoss

    logits, target = _batch()
    per = DiceLoss(to_onehot_y=True, softmax=True, reduction="none")(logits, target).flatten(1)
    dice = (per[0, 0] + per[0, 3] + per[1, 0] + per[1, 1] + per[1, 5]) / 5
    expected = dice + torch.nn.functional.cross_entropy(logits, target[:, 0])
    assert torch.allclose(SegLoss("present")(logits, target), expected)
    # an absent class no longer dilutes the Dice term: the present-class loss is larger than MONAI's mean
    assert SegLoss("present")(logits, target) != SegLoss("all")(logits, target)


def test_unknown_choice_is_refused():
    with pytest.raises(ConfigError, match="dice_classes"):
        SegLoss("some")
