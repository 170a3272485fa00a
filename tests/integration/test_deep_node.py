"""Both analyzers in one node: separate series, the deep one marked UNTRAINED on a test release;
without a release the deep analyzer writes nothing and the job says why."""

from __future__ import annotations

import gzip
import subprocess

import nibabel as nib

from neuroradix.imaging.ctseries import volume_to_ct_series
from neuroradix.samples.phantom import thorax_phantom
from tests.harness import EphemeralNode
from tests.support import require_tool


def _errors(ds, tmp_path):
    path = tmp_path / f"{ds.SOPInstanceUID}.dcm"
    ds.save_as(path, enforce_file_format=True)
    run = subprocess.run([require_tool("dciodvfy"), str(path)], capture_output=True, text=True)
    return [line for line in (run.stdout + run.stderr).splitlines() if line.startswith("Error")]


def test_both_analyzers_store_separate_series_and_untrained_is_marked(test_release, tmp_path_factory, tmp_path):
    node = EphemeralNode(
        tmp_path_factory.mktemp("deep-node"),
        extra_env={
            "NEURORADIX_ANALYZERS": "lung-hu,deep",
            "NEURORADIX_WEIGHTS_DIR": str(test_release),
            "NEURORADIX_ALLOW_UNTRAINED": "true",
            "NEURORADIX_LEASE_SECONDS": "120",
        },
    ).start()
    try:
        volume, _ = thorax_phantom(shape=(48, 80, 80), spacing=(3.0, 2.5, 2.5))
        datasets = volume_to_ct_series(volume, uid_seed="it-deep")
        study_uid = str(datasets[0].StudyInstanceUID)
        node.upload(datasets)
        job = node.wait_job(study_uid, timeout=600)
        assert job["state"] == "succeeded", job
        assert job["details"]["analyzers"] == {"lung-hu": "stored", "swinunetr-ctrate": "stored"}
        by_analyzer: dict[str, list] = {}
        for record in job["output_uids"]:
            by_analyzer.setdefault(record["analyzer"], []).append(record)
        deep = [r for name, records in by_analyzer.items() if name != "lung-hu" for r in records]
        lung = by_analyzer["lung-hu"]
        assert {r["series_instance_uid"] for r in deep}.isdisjoint({r["series_instance_uid"] for r in lung})
        for record in deep:
            ds = node.pacs.retrieve_instance(study_uid, record["series_instance_uid"], record["sop_instance_uid"])
            assert "UNTRAINED - TEST OUTPUT" in ds.SeriesDescription
            assert _errors(ds, tmp_path) == [], ds.SeriesDescription
            if ds.Modality == "SEG":
                assert len(ds.SegmentSequence) >= 1
            if ds.Modality == "SR":
                text = str(ds.to_json_dict())
                assert "UNTRAINED - TEST OUTPUT" in text and "Abnormal" in text
        for record in lung:
            assert "UNTRAINED" not in record["series_description"]
        findings = job["details"]["results"]["swinunetr-ctrate"]["findings"]
        assert len(findings) == 19 and findings[-1]["name"] == "Abnormal"
        # per-token report attention through the API
        attention = node.api("GET", f"/v1/studies/{study_uid}/report-attention")
        assert attention["analyzer"] == "swinunetr-ctrate" and attention["tokens"], "the model generated no tokens"
        n_patches = len(attention["patch_centres_lps"])
        first = attention["tokens"][0]["patch_attention"]
        assert len(first) == n_patches and abs(sum(first) - 1.0) < 1e-3
        image = nib.Nifti1Image.from_bytes(
            gzip.decompress(node.api("GET", f"/v1/studies/{study_uid}/report-attention/0.nii.gz", raw=True))
        )
        assert image.get_fdata().max() > 0 and image.ndim == 3
    finally:
        node.stop()


def test_deep_analyzer_without_weights_writes_nothing_and_says_why(tmp_path_factory):
    node = EphemeralNode(
        tmp_path_factory.mktemp("noweights-node"), extra_env={"NEURORADIX_ANALYZERS": "lung-hu,deep"}
    ).start()
    try:
        volume, _ = thorax_phantom()
        datasets = volume_to_ct_series(volume, uid_seed="it-noweights")
        study_uid = str(datasets[0].StudyInstanceUID)
        node.upload(datasets)
        job = node.wait_job(study_uid)
        assert job["state"] == "succeeded"
        assert job["details"]["analyzers"]["lung-hu"] == "stored"
        assert job["details"]["analyzers"]["swinunetr-ctrate"].startswith("not configured")
        assert {r["analyzer"] for r in job["output_uids"]} == {"lung-hu"}
    finally:
        node.stop()
