"""Signed webhooks against a real loopback receiver that verifies the signature over the raw body."""

from __future__ import annotations

import datetime as dt
import json

import pytest

from neuroradix.notify.webhook import send_webhook, sign, verify, webhook_body

SECRET = b"s3cret-for-tests"


def test_body_content_and_timestamp(notification):
    at = dt.datetime(2026, 12, 7, 22, 41, 0, tzinfo=dt.UTC)
    body = webhook_body(notification, timestamp=at)
    data = json.loads(body)
    assert data["timestamp"] == "2026-12-07T22:41:00+00:00"
    for key in ("study_uid", "accession_number", "level", "reasons", "evidence", "policy_version", "policy_sha256",
                "kind", "delivery_id", "links"):  # fmt: skip
        assert data[key] == notification.to_dict()[key], key
    assert data["links"]["ohif_url"].startswith("http://127.0.0.1:8042/ohif/")
    text = body.decode()
    for private in ("PAT-7781", "Doe", "19580214"):
        assert private not in text  # no patient identity in a webhook
    assert webhook_body(notification, timestamp=at) == body  # deterministic for one attempt time
    later = webhook_body(notification, timestamp=at + dt.timedelta(seconds=30))
    assert sign(later, SECRET) != sign(body, SECRET)  # the timestamp is inside the signed bytes


def test_sign_and_verify():
    body = b'{"a":1}'
    header = sign(body, SECRET)
    assert header.startswith("sha256=") and len(header) == 7 + 64
    # The published HMAC-SHA256 test vector (key "key", the quick brown fox).
    fox = sign(b"The quick brown fox jumps over the lazy dog", b"key")
    assert fox == "sha256=f7bc83f430538424b13298e6aa6fb143ef4d59a14946175997479dbc2d1a3cd8"
    assert verify(body, header, SECRET)
    assert verify(body, header.upper().replace("SHA256=", "sha256="), SECRET)
    assert not verify(body + b" ", header, SECRET)
    assert not verify(body, header, b"other secret")
    assert not verify(body, header[7:], SECRET)  # no "sha256=" prefix
    assert not verify(body, None, SECRET)
    assert not verify(body, "sha256=zz", SECRET)
    with pytest.raises(ValueError):
        sign(body, b"")


def test_delivered_and_verified_by_the_receiver(http_peer, notification):
    body = webhook_body(notification)
    result = send_webhook(http_peer.url + "/hook", body, secret=SECRET, delivery_id=notification.delivery_id, timeout=5)
    assert result.ok and result.detail == "HTTP 200"
    (got,) = http_peer.received
    assert got.path == "/hook"
    assert got.headers["content-type"] == "application/json"
    assert got.headers["x-neuroradix-delivery"] == notification.delivery_id
    assert verify(got.body, got.headers["x-neuroradix-signature"], SECRET)  # over the raw bytes received
    assert got.body == body
    assert not verify(got.body, got.headers["x-neuroradix-signature"], b"wrong")


def test_retries_repeat_the_delivery_id(http_peer, notification):
    http_peer.answers = [503, 200]
    first = send_webhook(http_peer.url, webhook_body(notification), secret=SECRET, delivery_id="nrx-1", timeout=5)
    second = send_webhook(http_peer.url, webhook_body(notification), secret=SECRET, delivery_id="nrx-1", timeout=5)
    assert (first.ok, first.permanent, first.detail.split(":")[0]) == (False, False, "HTTP 503")
    assert second.ok
    assert [r.headers["x-neuroradix-delivery"] for r in http_peer.received] == ["nrx-1", "nrx-1"]
    assert all(verify(r.body, r.headers["x-neuroradix-signature"], SECRET) for r in http_peer.received)


def test_rejected_timed_out_and_refused(http_peer, notification, closed_port):
    body = webhook_body(notification)
    http_peer.answers = [400, "slow"]
    rejected = send_webhook(http_peer.url, body, secret=SECRET, delivery_id="d", timeout=5)
    assert not rejected.ok and rejected.permanent and rejected.detail.startswith("HTTP 400")
    slow = send_webhook(http_peer.url, body, secret=SECRET, delivery_id="d", timeout=0.5)
    assert not slow.ok and not slow.permanent and slow.detail == "timeout"
    refused = send_webhook(f"http://127.0.0.1:{closed_port}/", body, secret=SECRET, delivery_id="d", timeout=2)
    assert not refused.ok and not refused.permanent and refused.detail == "connection refused"
    redirect_target = send_webhook("ftp://127.0.0.1/", body, secret=SECRET, delivery_id="d", timeout=2)
    assert redirect_target.permanent and "bad URL" in redirect_target.detail
