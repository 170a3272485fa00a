"""Orthanc glue for Neuro Radix: the only module that imports ``orthanc``.

Loaded by Orthanc's Python plugin (``"PythonScript"`` in orthanc.json). On ``STABLE_STUDY`` it
queues the study for :class:`handoff.Handoff` and returns at once; the hand-off thread does the
rest. Settings come from the ``NeuroRadix`` section of the configuration, with the secret and the
URL from the environment (``NEURORADIX_SIDECAR_TOKEN``, ``NEURORADIX_SIDECAR_URL``), so no secret
sits in a configuration file.
"""
import json
import logging
import os
import sys

import orthanc

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from handoff import Handoff, HandoffConfig  # noqa: E402


class _OrthancLogHandler(logging.Handler):
    """Send the hand-off's log records to Orthanc's log."""

    def emit(self, record: logging.LogRecord) -> None:
        message = "[neuroradix] " + self.format(record)
        if record.levelno >= logging.ERROR:
            orthanc.LogError(message)
        elif record.levelno >= logging.WARNING:
            orthanc.LogWarning(message)
        else:
            orthanc.LogInfo(message)


def _config() -> HandoffConfig:
    section = json.loads(orthanc.GetConfiguration()).get("NeuroRadix", {})
    return HandoffConfig(
        sidecar_url=os.environ.get("NEURORADIX_SIDECAR_URL", section.get("SidecarUrl", "")),
        sidecar_token=os.environ.get("NEURORADIX_SIDECAR_TOKEN", ""),
        own_manufacturer=section.get("OwnManufacturer", "Neuro Radix"),
        modalities=tuple(section.get("Modalities", [])),
    )


_logger = logging.getLogger("neuroradix.plugin")
_logger.addHandler(_OrthancLogHandler())
_logger.setLevel(logging.INFO)
_logger.propagate = False

try:
    HANDOFF = Handoff(_config(), rest_get=orthanc.RestApiGet)
except ValueError as exc:
    HANDOFF = None
    orthanc.LogError(f"[neuroradix] hand-off disabled, configuration is invalid: {exc}")


def on_change(change_type, level, resource_id):
    """Orthanc change callback: queue stable studies, nothing else."""
    if HANDOFF is None:
        return
    if change_type == orthanc.ChangeType.ORTHANC_STARTED:
        HANDOFF.start()
    elif change_type == orthanc.ChangeType.STABLE_STUDY:
        HANDOFF.submit(resource_id)
    elif change_type == orthanc.ChangeType.ORTHANC_STOPPED:
        HANDOFF.stop()


orthanc.RegisterOnChangeCallback(on_change)
