"""The notification as stored in the outbox: exact JSON round trip and argument checks."""

from __future__ import annotations

import json
from dataclasses import replace

import pytest

from neuroradix.errors import NotificationError
from neuroradix.notify.message import LEVELS, Evidence, Notification, PatientInfo, level_rank
from neuroradix.notify.result import DeliveryResult
from tests.notify.conftest import make_notification


def test_json_round_trip_is_exact(notification):
    text = notification.to_json()
    again = Notification.from_json(text)
    assert again == notification
    assert again.to_json() == text
    assert isinstance(again.evidence, tuple) and isinstance(again.evidence[0], Evidence)
    assert again.evidence[0].value == 17.25 and again.evidence[1].analyzer == "deep"


def test_round_trip_of_awkward_values():
    n = make_notification(
        patient=PatientInfo(id="", name="Müller^Zoë", birth_date="", sex=""),
        reasons=(),
        evidence=(Evidence("r", "x", None, "", None, "<=", None, "measurement"),),
        accession_number="",
        untrained_or_licence_note="UNTRAINED: random weights, not for clinical use",
        kind="max-wait",
        level="not-analyzed",
        decided_at="2026-12-07T23:40:05.123456Z",
    )
    assert Notification.from_json(n.to_json()) == n


def test_integer_values_become_floats():
    item = Evidence("r", "Total LAA-950", 15, "%", 15, ">=", None, "measurement")
    assert isinstance(item.value, float) and isinstance(item.threshold, float)
    assert item.met is True
    assert replace(item, value=14.9).met is False
    assert replace(item, comparator="<=", value=14.9).met is True


@pytest.mark.parametrize(
    ("overrides", "error", "words"),
    [
        ({"kind": "reminder"}, ValueError, "kind"),
        ({"level": "high"}, ValueError, "level"),
        ({"study_uid": "1.2.03"}, ValueError, "study_uid"),
        ({"delivery_id": "bad id\r\nX-Evil: 1"}, ValueError, "delivery_id"),
        ({"decided_at": "2026-12-07 22:40"}, ValueError, "UTC offset"),
        ({"created_at": "yesterday"}, ValueError, "created_at"),
        ({"reasons": ["a list"]}, TypeError, "reasons"),
        ({"patient": {"id": "x"}}, TypeError, "patient"),
    ],
)
def test_bad_arguments_are_refused_by_name(overrides, error, words):
    with pytest.raises(error, match=words):
        make_notification(**overrides)


def test_bad_evidence_is_refused():
    with pytest.raises(ValueError, match="comparator"):
        Evidence("r", "x", 1.0, "", 1.0, ">", None, "finding")
    with pytest.raises(ValueError, match="finite"):
        Evidence("r", "x", float("nan"), "", 1.0, ">=", None, "finding")
    with pytest.raises(TypeError, match="value"):
        Evidence("r", "x", "1.0", "", 1.0, ">=", None, "finding")  # type: ignore[arg-type]


def test_broken_json_raises_notification_error(notification):
    with pytest.raises(NotificationError, match="does not parse"):
        Notification.from_json("{not json")
    data = json.loads(notification.to_json())
    data["extra"] = 1
    with pytest.raises(NotificationError, match="extra"):
        Notification.from_json(json.dumps(data))
    data = json.loads(notification.to_json())
    data["format"] = 99
    with pytest.raises(NotificationError, match="format"):
        Notification.from_dict(data)
    data = json.loads(notification.to_json())
    data["level"] = "nope"
    with pytest.raises(NotificationError, match="level"):
        Notification.from_dict(data)


def test_level_ranks():
    assert [level_rank(level) for level in LEVELS] == [3, 2, 1, 0, 0]
    with pytest.raises(ValueError):
        level_rank("high")


def test_delivery_result_rules():
    assert DeliveryResult.delivered("ACK AA") == DeliveryResult(True, False, "ACK AA")
    assert DeliveryResult.dead("x").permanent and not DeliveryResult.retry("x").permanent
    with pytest.raises(ValueError):
        DeliveryResult(True, True, "both")
    long = DeliveryResult.retry("line one\nline two " + "x" * 500)
    assert "\n" not in long.detail and len(long.detail) <= 200
