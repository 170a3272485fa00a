"""The pipeline package's contracts: the source's listing and fingerprint, and the results-folder layout
that the worker writes and the API reads."""

from __future__ import annotations

import copy
import gzip
import io
import zipfile

import nibabel as nib
import numpy as np
import pytest

from neuroradix import MANUFACTURER
from neuroradix.analyzers.registry import build_analyzers
from neuroradix.config import PipelineSettings, Settings
from neuroradix.imaging.ctseries import volume_to_ct_series, write_series
from neuroradix.jobs.ledger import UPLOAD, JobState, Ledger
from neuroradix.jobs.worker import Worker
from neuroradix.pacs.series import source_fingerprint
from neuroradix.pacs.summaries import SeriesSummary
from neuroradix.pipeline.layout import (
    RESULTS_JSON,
    folder_entries,
    job_results_dir,
    labels_name,
    object_name,
    read_document,
    read_labels,
    uploads_dir,
    zip_bytes,
)
from neuroradix.pipeline.run import StageTimer, process_study
from neuroradix.pipeline.sinks import FolderSink
from neuroradix.pipeline.sources import LocalSource, SeriesListing, read_folder, read_zip
from neuroradix.samples.phantom import thorax_phantom


@pytest.fixture(scope="module")
def study(tmp_path_factory):
    """A synthetic chest CT of one series, as files and as datasets."""
    volume, _ = thorax_phantom()
    folder = tmp_path_factory.mktemp("ct")
    write_series(volume_to_ct_series(volume, uid_seed="layout"), folder)
    return folder


def test_a_source_returns_the_fingerprint_with_its_listing(study):
    datasets = read_folder(study)
    source = LocalSource(datasets)
    assert source.listed is None
    listing = source.listing()
    assert isinstance(listing, SeriesListing) and source.listed == listing
    assert [s.series_uid for s in listing.series] == [str(datasets[0].SeriesInstanceUID)]
    assert listing.series[0].n_instances == len(datasets)
    counted = SeriesSummary(str(datasets[0].SeriesInstanceUID), n_instances=len(datasets))
    assert listing.fingerprint == source_fingerprint([counted], MANUFACTURER)
    # one slice fewer is another study state; the node's own output series do not count
    assert LocalSource(datasets[:-1]).listing().fingerprint != listing.fingerprint
    own = [copy.deepcopy(ds) for ds in datasets[:2]]
    for ds in own:
        ds.SeriesInstanceUID, ds.Manufacturer = "2.25.1234", MANUFACTURER
    with_own = LocalSource([*datasets, *own]).listing()
    assert len(with_own.series) == 2 and with_own.fingerprint == listing.fingerprint


def test_stage_timer_only_times(study):
    timer = StageTimer()
    process_study(LocalSource(read_folder(study)), [], PipelineSettings(), build_analyzers(PipelineSettings()), timer)
    assert {"select", "fetch", "assemble", "decode", "analyze:lung-hu", "encode:lung-hu", "store"} <= set(timer.seconds)
    assert vars(timer).keys() == {"seconds"}


def test_the_results_folder_the_sink_writes_is_the_one_the_layout_reads(study, tmp_path):
    settings = PipelineSettings()
    folder = job_results_dir(tmp_path / "var", 7)
    assert folder == tmp_path / "var" / "results" / "job-7"
    assert uploads_dir(tmp_path / "var") == tmp_path / "var" / "uploads"
    assert read_document(folder) is None and read_labels(folder, "lung-hu") is None
    folder.mkdir(parents=True)
    (folder / "stale.txt").write_text("from an earlier run")

    sink = FolderSink(folder, include_dicom=False, replace=True)
    outcome = process_study(LocalSource(read_folder(study)), [sink], settings, build_analyzers(settings))

    names = [name for name, _ in folder_entries(folder)]
    assert names == sorted([RESULTS_JSON, labels_name("lung-hu")])  # the stale file is gone
    assert labels_name("lung-hu") == "lung-hu/labels.nii.gz"
    assert read_document(folder) == outcome.document()
    labels = nib.Nifti1Image.from_bytes(gzip.decompress(read_labels(folder, "lung-hu")))
    assert int(np.prod(labels.shape)) == outcome.assembled.volume.array.size
    assert zipfile.ZipFile(io.BytesIO(zip_bytes(folder_entries(folder)))).namelist() == names

    with_dicom = FolderSink(tmp_path / "out")
    with_dicom.store(outcome)
    written = sorted(p.relative_to(tmp_path / "out").as_posix() for p in with_dicom.written)
    objects = [object_name("lung-hu", i, str(ds.Modality)) for i, ds in enumerate(outcome.analyzers[0].datasets)]
    assert written == sorted([*objects, labels_name("lung-hu"), RESULTS_JSON])
    assert objects[0].startswith("lung-hu/01-") and objects[0].endswith(".dcm")


def _settings(tmp_path):
    (tmp_path / "var").mkdir(exist_ok=True)
    return Settings(
        orthanc_url="http://127.0.0.1:1",
        orthanc_user="u",
        orthanc_password="p",
        sidecar_token="test-token-0123456789abcdef",
        var_dir=tmp_path / "var",
    )


def _upload(study, path, n_slices):
    with zipfile.ZipFile(path, "w") as archive:
        for f in sorted(study.iterdir())[:n_slices]:
            archive.write(f, f"study/{f.name}")
    return path


def test_the_worker_records_the_fingerprint_the_source_returned_even_for_a_skipped_study(study, tmp_path):
    """A study skipped for too few slices keeps what the worker saw, so that late slices rerun it."""
    settings = _settings(tmp_path)
    ledger = Ledger(settings.resolved_ledger_url)
    few = _upload(study, tmp_path / "few.zip", 4)
    job, _ = ledger.enqueue("1.2.3", "v-few", source=UPLOAD, input_path=str(few))
    first = read_zip(few, 10**9)[0]
    expected = source_fingerprint([SeriesSummary(str(first.SeriesInstanceUID), n_instances=4)], MANUFACTURER)
    worker = Worker(settings, ledger=ledger, pacs=object(), analyzers=[], worker_id="w1")
    assert worker.run_once()
    done = ledger.get(job.id)
    assert done.state == JobState.SKIPPED and "fewer than 10" in (done.error_message or "")
    assert done.source_fingerprint == expected

    # failing before the source listed anything records no fingerprint (the enqueued one stays)
    gone, _ = ledger.enqueue("1.2.3", "v-gone", source=UPLOAD, input_path=str(tmp_path / "gone.zip"))
    ledger_fp = ledger.get(gone.id).source_fingerprint
    assert worker.run_once()
    failed = ledger.get(gone.id)
    assert failed.state == JobState.FAILED and failed.source_fingerprint == ledger_fp
