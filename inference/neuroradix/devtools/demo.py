"""``make demo``: start the node, send a real chest CT over DICOM, wait, and show what was stored."""

from __future__ import annotations

import json
import logging
import shutil
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any, Optional, TextIO

import pydicom

from neuroradix.deploy.launcher import NodeConfig, tighten_permissions, up
from neuroradix.imaging.ctseries import volume_to_ct_series, write_series
from neuroradix.pacs.dicomweb import PacsClient
from neuroradix.samples.real_ct import even_in_plane, sample_ct_volume

logger = logging.getLogger(__name__)


def write_sample_series(out_dir: Path) -> tuple[list[Path], str, str]:
    """Write the sample CT as a DICOM series; returns (files, StudyInstanceUID, which source)."""

    volume, source = sample_ct_volume()
    # The test CT is 167 x 233 in plane; OHIF 3.13 overlays a Parametric Map only when
    # rows x columns is even (see even_in_plane), as it is for clinical 512 x 512 images.
    datasets = volume_to_ct_series(
        even_in_plane(volume),
        uid_seed=f"neuroradix-demo:{source}",
        series_description="Demo chest CT",
        study_description="Neuro Radix demo",
    )
    if out_dir.exists():
        shutil.rmtree(out_dir)
    return write_series(datasets, out_dir), str(datasets[0].StudyInstanceUID), source


def send(files: list[Path], config: NodeConfig) -> str:
    """C-STORE with dcmtk's storescu when present (as a modality would), else STOW-RS."""
    if shutil.which("storescu"):
        subprocess.run(
            [
                "storescu",
                "-aet",
                config.calling_aet,
                "-aec",
                config.aet,
                "127.0.0.1",
                str(config.dicom_port),
                *map(str, files),
            ],
            check=True,
            capture_output=True,
        )
        return f"C-STORE (storescu) to {config.aet}@127.0.0.1:{config.dicom_port}"

    pacs = PacsClient(config.orthanc_url + "/dicom-web", config.orthanc_user, config.orthanc_password)
    datasets = [pydicom.dcmread(f) for f in files]
    pacs.store(datasets, str(datasets[0].StudyInstanceUID))
    return "STOW-RS"


def api_get(config: NodeConfig, path: str) -> Any:
    request = urllib.request.Request(
        config.sidecar_url + path, headers={"Authorization": f"Bearer {config.sidecar_token}"}
    )
    with urllib.request.urlopen(request, timeout=30) as response:
        return json.loads(response.read())


def wait_for_job(config: NodeConfig, study_uid: str, timeout: float, out: TextIO) -> Optional[dict]:
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        jobs = api_get(config, f"/v1/jobs?study_uid={study_uid}")
        job = jobs[0] if jobs else None
        state = job["state"] if job else "waiting for the study to become stable"
        if state != last:
            print(f"  job: {state}", file=out, flush=True)
            last = state
        if job and job["state"] in ("succeeded", "failed", "skipped"):
            return job
        time.sleep(1.0)
    return None


def run_demo(var_dir: Path, out: TextIO = sys.stdout, timeout: float = 900.0) -> int:
    print("Starting the node (Orthanc + sidecar) ...", file=out, flush=True)
    config = up(var_dir)
    print(
        f"  Orthanc {config.orthanc_url}  DICOM {config.aet}@127.0.0.1:{config.dicom_port}  sidecar {config.sidecar_url}",
        file=out,
    )
    files, study_uid, source = write_sample_series(var_dir / "demo" / "ct")
    tighten_permissions(var_dir)  # the demo CT carries (made-up) patient identifiers: 0700 / 0600
    print(f"Sample CT: {source}; {len(files)} slices written to {files[0].parent}", file=out)
    how = send(files, config)
    print(f"Sent with {how}. Waiting for the results ...", file=out, flush=True)
    started = time.monotonic()
    job = wait_for_job(config, study_uid, timeout, out)
    if job is None:
        print(f"No result within {timeout:.0f} s: see {var_dir}/logs/sidecar.log", file=out)
        return 1
    print(f"  finished in {time.monotonic() - started:.0f} s after sending", file=out)
    if job["state"] != "succeeded":
        print(f"Job {job['state']}: {job['error_class']}: {job['error_message']}", file=out)
        return 1
    print_results(config, study_uid, job, out)
    return 0


def print_triage(config: NodeConfig, study_uid: str, out: TextIO, timeout: float = 20.0) -> None:
    """The study's triage level from the worklist (decided by the sidecar's sweep within seconds)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for item in api_get(config, "/v1/worklist"):
            if item["study_uid"] == study_uid and item["level"] != "pending":
                reasons = "; ".join(item["reasons"]) or "no rule fired"
                print(
                    f"\nTriage: {item['level']} ({reasons}; policy {item['policy_version']}; "
                    f"Orthanc label {item['label'] or 'not applied yet'})",
                    file=out,
                )
                return
        time.sleep(0.5)
    print(f"\nTriage: not decided within {timeout:.0f} s (see /v1/studies/{study_uid}/timeline)", file=out)


def print_results(config: NodeConfig, study_uid: str, job: dict, out: TextIO) -> None:
    pacs = PacsClient(config.orthanc_url + "/dicom-web", config.orthanc_user, config.orthanc_password)
    print("\nSeries in the study now (QIDO-RS):", file=out)
    for s in sorted(pacs.search_series(study_uid), key=lambda s: s.series_number or 0):
        print(
            f"  #{s.series_number if s.series_number is not None else ''!s:>5}  {s.modality:4}  {s.description}",
            file=out,
        )
    for name, result in job["details"].get("results", {}).items():
        print(f"\n{result['analyzer']['title']} ({name} {result['analyzer']['version']}):", file=out)
        for m in result["measurements"]:
            unit = {"[hnsf'U]": "HU", "1": ""}.get(m["unit"], m["unit"])
            print(f"  {m['name']:<40} {m['value']:>10.1f} {unit}", file=out)
        for f in result["findings"]:
            print(f"  {f['name']:<40} p={f['probability']:.2f} {'PRESENT' if f['present'] else ''}", file=out)
        for warning in result.get("warnings", []):
            print(f"  Quality warning: {warning}", file=out)
        print("  Report:", file=out)
        for line in result["report_text"].splitlines():
            print(f"    {line}", file=out)
    for name, state in job["details"].get("analyzers", {}).items():
        if state != "stored":
            print(f"\nAnalyzer {name}: {state}", file=out)
    timings = ", ".join(f"{k} {v:.1f}s" for k, v in job["timings"].items())
    print(f"\nStage timings: {timings}", file=out)
    print_triage(config, study_uid, out)
    print(
        "\nWhere to look:\n"
        f"  set -a; . {config.var_dir}/node.env; set +a      # credentials and URLs\n"
        f'  curl -u "$ORTHANC_USER:$ORTHANC_PASSWORD" "$ORTHANC_URL/dicom-web/studies/{study_uid}/series"\n'
        f'  curl -H "Authorization: Bearer $SIDECAR_TOKEN" -o results.zip "$SIDECAR_URL/v1/studies/{study_uid}/results.zip"\n'
        f'  curl -H "Authorization: Bearer $SIDECAR_TOKEN" "$SIDECAR_URL/v1/studies/{study_uid}/timeline"   # triage audit\n'
        "  make viewer                                        # OHIF on this study\n"
        "  make down                                          # stop the node",
        file=out,
    )
