"""``GET /metrics``: the node's Prometheus metrics (reader or admin token).

The ledger's view (jobs by state, queue depth, oldest queued job) is read per scrape; the worker
processes' counters and histograms come from their files under ``<var>/run/metrics``
(prometheus_client multiprocess mode, see :mod:`neuroradix.jobs.metrics`). Workers on other
hosts serve their own (``neuroradix worker --metrics-port``); the ledger figures here already
cover them.
"""

from __future__ import annotations

from fastapi import APIRouter, Depends
from fastapi.responses import Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from neuroradix.api.deps import READ, get_ledger, get_settings, require_scope
from neuroradix.config import Settings
from neuroradix.jobs.ledger import Ledger
from neuroradix.jobs.metrics import multiprocess_dir, node_registry

router = APIRouter(tags=["metrics"], dependencies=[Depends(require_scope(READ))])


@router.get("/metrics", response_class=Response)
def metrics(settings: Settings = Depends(get_settings), ledger: Ledger = Depends(get_ledger)) -> Response:
    """Prometheus text format: ``neuroradix_*`` families (see docs/scale-out.md)."""
    registry = node_registry(ledger, multiprocess_dir(settings.var_dir))
    return Response(generate_latest(registry), media_type=CONTENT_TYPE_LATEST)
