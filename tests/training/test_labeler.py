"""The rule-based 18-finding labeler, negation included."""
from __future__ import annotations

import numpy as np

from neuroradix_train.data.findings import FINDINGS
from neuroradix_train.evaluation.evaluate import labeler_agreement_on
from neuroradix_train.evaluation.labeler import ReportLabeler


def _pos(text):
    lab = ReportLabeler().label(text)
    return {FINDINGS[i] for i in np.nonzero(lab)[0]}


def test_positive_and_negated_mentions():
    assert _pos("Emphysematous changes are observed in both lungs.") == {"Emphysema"}
    assert _pos("No pleural effusion was detected.") == set()
    assert _pos("Pleural effusion was not detected.") == set()
    assert _pos("No pleural or pericardial effusion was detected. Cardiomegaly.") == {"Cardiomegaly"}
    assert _pos("Bilateral pleural effusion, but no pericardial effusion.") == {"Pleural effusion"}
    assert _pos("A 4 mm nodule in the right lower lobe; no consolidation.") == {"Lung nodule"}
    assert _pos("Calcific atherosclerotic changes in the aorta and coronary artery wall calcification.") == {
        "Arterial wall calcification", "Coronary artery wall calcification"}
    assert _pos("No lymph nodes of pathological size. Sliding hiatal hernia.") == {"Hiatal hernia"}
    assert _pos("") == set()


def test_agreement_with_fixture_label_csv(mini_ctrate):
    agr = labeler_agreement_on(mini_ctrate, "train")
    assert agr["micro"]["accuracy"] == 1.0  # templated phantom reports: the labeler reads them exactly
    assert agr["per_finding"]["Emphysema"]["accuracy"] == 1.0
