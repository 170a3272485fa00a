"""A published model served by the node: a COLIPRI release (made from a test snapshot, so UNTRAINED)
analyzes a study sent with storescu; its SR, PDF and Parametric Maps are stored in the PACS with the
18 findings, the model card's restriction and the UNTRAINED mark (a Parametric Map per finding
called present), and the embedding is in the job.

The snapshot is built for a 32³ input (``--input-size 32``) so that the model runs in seconds on a
CPU; the code path is the one a 192³ release takes.
"""

from __future__ import annotations

from neuroradix.cli import main as neuroradix
from neuroradix.imaging.ctseries import volume_to_ct_series, write_series
from neuroradix.models.published.base import FINDINGS
from neuroradix.samples.phantom import thorax_phantom
from tests.harness import EphemeralNode

PARAMETRIC_MAP = "1.2.840.10008.5.1.4.1.1.30"


def test_a_colipri_release_is_served_into_the_pacs(tmp_path_factory, tmp_path):
    snapshot, release = tmp_path / "download", tmp_path / "release"
    assert neuroradix(["weights", "make-test-snapshot", "colipri", str(snapshot), "--input-size", "32"]) == 0
    assert neuroradix(["weights", "import", "colipri", str(snapshot), "--out", str(release)]) == 0
    node = EphemeralNode(
        tmp_path_factory.mktemp("published-node"),
        extra_env={
            "NEURORADIX_ANALYZERS": "lung-hu,deep",
            "NEURORADIX_WEIGHTS_DIR": str(release),
            "NEURORADIX_ALLOW_UNTRAINED": "true",
            "NEURORADIX_LEASE_SECONDS": "120",
        },
    ).start()
    try:
        volume, _ = thorax_phantom(shape=(48, 80, 80), spacing=(3.0, 2.5, 2.5))
        datasets = volume_to_ct_series(volume, uid_seed="it-published")
        study_uid = str(datasets[0].StudyInstanceUID)
        node.storescu(write_series(datasets, tmp_path / "ct"))
        job = node.wait_job(study_uid, timeout=600, states=("succeeded", "failed"))
        assert job["state"] == "succeeded", job
        assert job["details"]["analyzers"] == {"lung-hu": "stored", "colipri-published": "stored"}
        result = job["details"]["results"]["colipri-published"]
        assert [f["name"] for f in result["findings"]] == list(FINDINGS)
        assert result["analyzer"]["untrained"] is True and len(result["embedding"]) == 768
        ours = [r for r in job["output_uids"] if r["analyzer"] == "colipri-published"]
        classes, texts = set(), []
        for record in ours:
            ds = node.pacs.retrieve_instance(study_uid, record["series_instance_uid"], record["sop_instance_uid"])
            assert "UNTRAINED - TEST OUTPUT" in ds.SeriesDescription
            classes.add(str(ds.SOPClassUID))
            if ds.Modality == "SR":
                texts.append(str(ds.to_json_dict()))
        # COLIPRI's patch-text maps are stored for the findings called present (none may be, on random weights)
        assert (PARAMETRIC_MAP in classes) == any(f["present"] for f in result["findings"])
        assert texts and "not meant to be used for clinical practice" in texts[0]
        assert all(name in texts[0] for name in ("Pleural effusion", "Emphysema"))
    finally:
        node.stop()
