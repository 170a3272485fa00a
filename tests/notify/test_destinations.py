"""Destinations: validation, the min_level rule, the file (0600, atomic, live reload), deliver() per kind."""

from __future__ import annotations

import json
import os
import stat

import hl7
import pytest

from neuroradix.errors import ConfigError
from neuroradix.notify.destinations import (
    Destination,
    DestinationStore,
    check_secret_file,
    deliver,
    destinations_path,
)
from neuroradix.notify.webhook import verify


@pytest.fixture
def secret_file(tmp_path):
    path = tmp_path / "hook.secret"
    path.write_bytes(b"webhook-secret\n")
    path.chmod(0o600)
    return path


@pytest.mark.parametrize(
    ("kwargs", "words"),
    [
        ({"name": "Bad Name", "kind": "hl7v2", "url": "mllp://h:1"}, "name"),
        ({"name": "x" * 41, "kind": "hl7v2", "url": "mllp://h:1"}, "name"),
        ({"name": "ris", "kind": "email", "url": "mllp://h:1"}, "kind"),
        ({"name": "ris", "kind": "hl7v2", "url": "http://h:1"}, "mllp"),
        ({"name": "ris", "kind": "fhir", "url": "mllp://h:1"}, "http"),
        ({"name": "ris", "kind": "hl7v2", "url": "mllp://h:1", "min_level": "pending"}, "min_level"),
        ({"name": "hook", "kind": "webhook", "url": "https://h/x"}, "secret_file is required"),
        ({"name": "hook", "kind": "webhook", "url": "https://h/x", "secret_file": "rel/path"}, "absolute"),
        ({"name": "ris", "kind": "hl7v2", "url": "mllp://h:1", "secret_file": "/s"}, "no secret"),
    ],
)
def test_invalid_destinations_are_refused(kwargs, words):
    with pytest.raises(ValueError, match=words):
        Destination(**kwargs)


def test_min_level_rule():
    routine = Destination("all", "hl7v2", "mllp://127.0.0.1:2575")
    urgent_only = Destination("pager", "webhook", "https://h/x", "urgent", "/etc/secret")
    assert [routine.wants(level) for level in ("urgent", "priority", "routine")] == [True, True, True]
    assert [urgent_only.wants(level) for level in ("urgent", "priority", "routine")] == [True, False, False]
    for level in ("pending", "not-analyzed"):  # a study the AI could not judge always goes out
        for kind in ("decision", "max-wait"):
            assert urgent_only.wants(level, kind) and routine.wants(level, kind)
    assert urgent_only.wants("urgent", "escalation")
    with pytest.raises(ValueError):
        routine.wants("urgent", "reminder")
    with pytest.raises(ValueError):
        routine.wants("high")


def test_store_writes_0600_atomically_and_round_trips(tmp_path, secret_file):
    path = destinations_path(tmp_path / "var")
    store = DestinationStore(path)
    assert store.list() == ()
    old_umask = os.umask(0)  # a permissive umask must not leak into the file's mode
    try:
        store.add(Destination("ris", "hl7v2", "mllp://127.0.0.1:2575"))
        store.add(Destination("hook", "webhook", "https://h.example/x", "priority", str(secret_file)))
    finally:
        os.umask(old_umask)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert [d.name for d in store.list()] == ["ris", "hook"]
    data = json.loads(path.read_text())
    assert data["destinations"][1] == {
        "name": "hook",
        "kind": "webhook",
        "url": "https://h.example/x",
        "min_level": "priority",
        "secret_file": str(secret_file),
    }
    assert [p.name for p in path.parent.iterdir() if p.name.endswith(".tmp")] == []
    with pytest.raises(ValueError, match="exists"):
        store.add(Destination("ris", "hl7v2", "mllp://127.0.0.1:9999"))
    store.add(Destination("ris", "hl7v2", "mllp://127.0.0.1:9999"), replace=True)
    assert store.get("ris").url == "mllp://127.0.0.1:9999"
    store.remove("ris")
    with pytest.raises(KeyError):
        store.remove("ris")
    with pytest.raises(KeyError):
        store.get("ris")
    assert stat.S_IMODE(path.stat().st_mode) == 0o600


def test_a_running_store_sees_changes_live(tmp_path):
    path = tmp_path / "destinations.json"
    node = DestinationStore(path)  # the running node's view
    assert node.list() == ()
    cli = DestinationStore(path)  # another process editing the file
    cli.add(Destination("ris", "hl7v2", "mllp://127.0.0.1:2575"))
    assert [d.url for d in node.list()] == ["mllp://127.0.0.1:2575"]
    # Same size, possibly the same mtime tick: the atomic replace gives a new inode, which is seen.
    cli.add(Destination("ris", "hl7v2", "mllp://127.0.0.1:2576"), replace=True)
    assert [d.url for d in node.list()] == ["mllp://127.0.0.1:2576"]
    cli.remove("ris")
    assert node.list() == ()


def test_invalid_file(tmp_path, caplog):
    path = tmp_path / "destinations.json"
    path.write_text('{"destinations": [{"name": "x", "kind": "pager", "url": "mllp://h:1"}]}')
    with pytest.raises(ConfigError, match="kind"):
        DestinationStore(path).list()
    path.write_text('{"destinations": []}')
    node = DestinationStore(path)
    assert node.list() == ()
    DestinationStore(path).add(Destination("ris", "hl7v2", "mllp://127.0.0.1:2575"))
    assert len(node.list()) == 1
    path.write_text("{broken")  # a hand edit gone wrong: the node keeps what it had
    assert [d.name for d in node.list()] == ["ris"]
    assert "keeping the previous destinations" in caplog.text


def test_secret_file_checks(tmp_path, secret_file):
    assert check_secret_file(secret_file) == b"webhook-secret"
    secret_file.chmod(0o644)
    with pytest.raises(ConfigError, match="others"):
        check_secret_file(secret_file)
    empty = tmp_path / "empty"
    empty.write_text("\n")
    empty.chmod(0o600)
    with pytest.raises(ConfigError, match="empty"):
        check_secret_file(empty)
    with pytest.raises(ConfigError, match="cannot be read"):
        check_secret_file(tmp_path / "missing")


# --- deliver() against real peers ------------------------------------------------------------


def test_deliver_hl7v2(mllp_peer, notification):
    result = deliver(Destination("ris", "hl7v2", mllp_peer.url), notification, timeout=5)
    assert result.ok and result.detail == "ACK AA"
    (message,) = mllp_peer.received
    assert str(hl7.parse(message).segment("MSH")[9]) == "ORU^R01^ORU_R01"


def test_deliver_fhir_with_bearer_token(http_peer, notification, secret_file):
    result = deliver(
        Destination("fhir", "fhir", http_peer.url + "/fhir", secret_file=str(secret_file)), notification, timeout=5
    )
    assert result.ok
    (got,) = http_peer.received
    assert got.headers["authorization"] == "Bearer webhook-secret"
    assert json.loads(got.body)["type"] == "transaction"


def test_deliver_webhook_reads_the_secret_at_send_time(http_peer, notification, secret_file):
    destination = Destination("hook", "webhook", http_peer.url + "/hook", secret_file=str(secret_file))
    assert deliver(destination, notification, timeout=5).ok
    secret_file.write_bytes(b"rotated")  # a rotated secret applies to the next send
    assert deliver(destination, notification, timeout=5).ok
    first, second = http_peer.received
    assert verify(first.body, first.headers["x-neuroradix-signature"], b"webhook-secret")
    assert verify(second.body, second.headers["x-neuroradix-signature"], b"rotated")
    assert first.headers["x-neuroradix-delivery"] == second.headers["x-neuroradix-delivery"] == notification.delivery_id


def test_deliver_with_an_unsafe_secret_is_retried_not_sent(http_peer, notification, secret_file):
    secret_file.chmod(0o604)
    result = deliver(
        Destination("hook", "webhook", http_peer.url, secret_file=str(secret_file)), notification, timeout=5
    )
    assert not result.ok and not result.permanent and "others" in result.detail
    assert http_peer.received == []


def test_deliver_to_a_receiver_that_is_down(closed_port, notification):
    result = deliver(Destination("ris", "hl7v2", f"mllp://127.0.0.1:{closed_port}"), notification, timeout=2)
    assert not result.ok and not result.permanent and result.detail == "connection refused"
