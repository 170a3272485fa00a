"""ORU^R01 content (parsed back with python-hl7) and MLLP delivery against a real loopback listener."""

from __future__ import annotations

import asyncio
import threading
import time

import hl7
import pytest
from hl7.mllp import start_hl7_server

from neuroradix.notify.hl7v2 import (
    build_oru,
    control_id,
    escape,
    interpret_ack,
    parse_mllp_url,
    send_mllp,
    xpn_from_pn,
)
from neuroradix.notify.message import Evidence, PatientInfo
from tests.notify.conftest import make_notification


def _obx(message: hl7.Message) -> list[hl7.Segment]:
    return [s for s in message if str(s[0]) == "OBX"]


def test_oru_parses_and_carries_the_fields(notification):
    text = build_oru(notification, sending_facility="NRX-NODE", receiving_app="RIS", receiving_facility="HOSP")
    assert "\n" not in text and text.count("\r") == len(text.split("\r")) - 1
    m = hl7.parse(text)
    msh, pid, obr = m.segment("MSH"), m.segment("PID"), m.segment("OBR")
    assert str(msh[9]) == "ORU^R01^ORU_R01" and str(msh[12]) == "2.5.1"
    assert str(msh[10]) == control_id(notification.delivery_id) and len(str(msh[10])) <= 20
    assert str(msh[7]) == "20261207224006+0000"
    assert [str(msh[i]) for i in (3, 4, 5, 6)] == ["NEURORADIX", "NRX-NODE", "RIS", "HOSP"]
    assert str(msh[18]) == "UNICODE UTF-8"
    assert str(pid[3]).split("^")[0] == "PAT-7781" and str(pid[3]).split("^")[4] == "PI"
    # DICOM PN family^given^middle^prefix^suffix -> XPN family^given^middle^suffix^prefix
    assert str(pid[5]) == "Doe^Jane^Q^III^Dr"
    assert str(pid[7]) == "19580214" and str(pid[8]) == "F"
    assert str(obr[3]) == "ACC-2026-0042"
    assert str(obr[4]).startswith("NRX-TRIAGE^")
    assert str(obr[5]) == "A"  # priority -> ASAP (table 0168)
    assert str(obr[25]) == "P"
    obx = _obx(m)
    assert [int(str(s[1])) for s in obx] == list(range(1, len(obx) + 1))
    level = obx[0]
    assert str(level[2]) == "CWE" and str(level[5]).split("^")[0] == "priority" and str(level[8]) == "A"
    study = next(s for s in obx if str(s[3]).startswith("110180^"))
    assert str(study[2]) == "ST" and str(study[5]) == notification.study_uid
    reasons = [str(s[5]) for s in obx if str(s[3]).startswith("NRX-REASON")]
    assert reasons == ["severe emphysema"]
    numbers = [s for s in obx if str(s[2]) == "NM"]
    assert len(numbers) == 2
    laa, effusion = numbers
    assert str(laa[3]).split("^")[1] == "Total LAA-950" and str(laa[5]) == "17.25"
    assert str(laa[6]).split("^")[0] == "%" and str(laa[7]) == "<15" and str(laa[8]) == "H"
    assert str(effusion[5]) == "0.42" and str(effusion[8]) == "N"  # below its threshold: normal
    assert all(str(s[11]) == "P" for s in obx)


@pytest.mark.parametrize(
    ("level", "priority", "flag"),
    [
        ("urgent", "S", "AA"),
        ("priority", "A", "A"),
        ("routine", "R", "N"),
        ("pending", "", ""),
        ("not-analyzed", "", ""),
    ],
)
def test_priority_and_flag_per_level(level, priority, flag):
    m = hl7.parse(build_oru(make_notification(level=level)))
    assert str(m.segment("OBR")[5]) == priority
    assert str(_obx(m)[0][8]) == flag


def test_evidence_flags_follow_the_comparator():
    evidence = (
        Evidence("low density", "Mean lung HU", -960.5, "HU", -950.0, "<=", None, "measurement"),
        Evidence("big effusion", "Pleural effusion", 0.93, "", 0.8, ">=", "deep", "finding"),
        Evidence("missing", "Total LAA-910", None, "%", 30.0, ">=", None, "measurement"),
    )
    m = hl7.parse(build_oru(make_notification(evidence=evidence, level="urgent")))
    numbers = [s for s in _obx(m) if str(s[2]) == "NM"]
    assert [str(s[8]) for s in numbers] == ["L", "A", ""]
    assert str(numbers[0][5]) == "-960.5" and str(numbers[0][7]) == ">-950"
    assert str(numbers[0][6]).split("^")[2] == "UCUM"
    assert str(numbers[2][5]) == "" and str(numbers[2][11]) == "X"


def test_delimiters_in_text_are_escaped():
    n = make_notification(
        accession_number="A|B^C",
        reasons=("rule with | pipe ^ caret ~ tilde & amp \\ backslash\nnew line",),
        patient=PatientInfo(id="ID&1", name="O'Brien^Seán", birth_date="1958", sex="X"),
    )
    text = build_oru(n)
    m = hl7.parse(text)
    assert len(m) == 3 + len(_obx(m))
    reason = next(s for s in _obx(m) if str(s[3]).startswith("NRX-REASON"))
    assert len(reason) == 15 and str(reason[11]) == "P"  # the pipe inside the reason did not shift fields
    assert str(reason[5]) == "rule with \\F\\ pipe \\S\\ caret \\R\\ tilde \\T\\ amp \\E\\ backslash\\.br\\new line"
    assert m.unescape(str(reason[5])).startswith("rule with | pipe ^ caret ~ tilde & amp \\ backslash")
    assert str(m.segment("OBR")[3]) == "A\\F\\B\\S\\C"
    assert str(m.segment("PID")[5]) == "O'Brien^Seán"
    assert str(m.segment("PID")[7]) == ""  # not a full date: left out
    assert str(m.segment("PID")[8]) == "U"
    assert escape("a\x0bb\x1cc") == "abc"  # MLLP frame bytes never reach the wire inside a field


def test_name_conversion():
    assert xpn_from_pn("Yamada^Tarou=山田^太郎") == "Yamada^Tarou"
    assert xpn_from_pn("") == ""
    assert xpn_from_pn("Smith") == "Smith"


def test_same_notification_same_message(notification):
    assert build_oru(notification) == build_oru(make_notification())
    other = make_notification(delivery_id="nrx-ffffffffffffffffffffffffffffffff")
    assert control_id(other.delivery_id) != control_id(notification.delivery_id)


@pytest.mark.parametrize(
    "url",
    ["http://h:1", "mllp://h", "mllp://:2575", "mllp://h:2575/path", "mllp://u@h:1", "mllp://h:99999", "mllp://h:0"],
)
def test_bad_mllp_urls(url):
    with pytest.raises(ValueError, match="mllp"):
        parse_mllp_url(url)


def test_mllp_url():
    assert parse_mllp_url("mllp://127.0.0.1:2575") == ("127.0.0.1", 2575)
    assert parse_mllp_url("mllp://ris.example.org:6661/") == ("ris.example.org", 6661)


# --- against the loopback listener ----------------------------------------------------------


def test_ack_aa_delivers(mllp_peer, notification):
    message = build_oru(notification)
    result = send_mllp(mllp_peer.url, message, timeout=5)
    assert result.ok and not result.permanent and result.detail == "ACK AA"
    assert mllp_peer.received == [message]


def test_retry_repeats_the_control_id(mllp_peer, notification):
    mllp_peer.mode = "ae"
    first = send_mllp(mllp_peer.url, build_oru(notification), timeout=5)
    assert not first.ok and not first.permanent and first.detail.startswith("ACK AE")
    mllp_peer.mode = "aa"
    second = send_mllp(mllp_peer.url, build_oru(from_outbox(notification)), timeout=5)
    assert second.ok
    ids = [str(hl7.parse(m).segment("MSH")[10]) for m in mllp_peer.received]
    assert len(ids) == 2 and ids[0] == ids[1]


def from_outbox(n):
    """The notification as the outbox gives it back on a retry: from its stored JSON."""
    return type(n).from_json(n.to_json())


@pytest.mark.parametrize("mode", ["ar-malformed", "ar-malformed-v23"])
def test_malformed_rejection_is_permanent_with_the_ack_text(mllp_peer, notification, mode):
    mllp_peer.mode = mode
    result = send_mllp(mllp_peer.url, build_oru(notification), timeout=5)
    assert not result.ok and result.permanent
    assert result.detail.startswith("ACK AR")
    assert ("101" in result.detail and "PID-3 needs an assigning authority" in result.detail) or (
        "102" in result.detail
    )


def test_internal_error_rejection_is_retried(mllp_peer, notification):
    mllp_peer.mode = "ar-internal"
    result = send_mllp(mllp_peer.url, build_oru(notification), timeout=5)
    assert not result.ok and not result.permanent and "207" in result.detail


def test_dropped_connection_is_retried(mllp_peer, notification):
    mllp_peer.mode = "drop"
    result = send_mllp(mllp_peer.url, build_oru(notification), timeout=5)
    assert not result.ok and not result.permanent and "without an ACK" in result.detail
    assert len(mllp_peer.received) == 1


def test_silent_listener_times_out_and_is_retried(mllp_peer, notification):
    mllp_peer.mode = "silent"
    started = time.monotonic()
    result = send_mllp(mllp_peer.url, build_oru(notification), timeout=0.5)
    assert time.monotonic() - started < 3
    assert not result.ok and not result.permanent and result.detail == "timeout waiting for ACK"


def test_ack_for_another_message_is_not_a_delivery(mllp_peer, notification):
    mllp_peer.mode = "wrong-id"
    result = send_mllp(mllp_peer.url, build_oru(notification), timeout=5)
    assert not result.ok and not result.permanent and "another message" in result.detail


def test_unreadable_ack_is_retried(mllp_peer, notification):
    mllp_peer.mode = "garbage"
    result = send_mllp(mllp_peer.url, build_oru(notification), timeout=5)
    assert not result.ok and not result.permanent and result.detail == "unreadable ACK"


def test_nobody_listening_is_retried(closed_port, notification):
    result = send_mllp(f"mllp://127.0.0.1:{closed_port}", build_oru(notification), timeout=2)
    assert not result.ok and not result.permanent and result.detail == "connection refused"


def test_bad_url_is_permanent(notification):
    result = send_mllp("http://127.0.0.1:1", build_oru(notification), timeout=1)
    assert not result.ok and result.permanent and "bad URL" in result.detail


def test_enhanced_mode_codes():
    control = "NRX1"
    ack = f"MSH|^~\\&|R||N||20261207||ACK|1|P|2.5.1\rMSA|CA|{control}\r"
    assert interpret_ack(ack, control).ok
    ack = f"MSH|^~\\&|R||N||20261207||ACK|1|P|2.5.1\rMSA|CR|{control}\rERR|||103^Table value not found^HL70357\r"
    result = interpret_ack(ack, control)
    assert not result.ok and result.permanent and "103" in result.detail
    ack = f"MSH|^~\\&|R||N||20261207||ACK|1|P|2.5.1\rMSA|AE|{control}|||||200^Unsupported message type\r"
    result = interpret_ack(ack, control)
    assert not result.ok and not result.permanent


@pytest.fixture
def stock_listener():
    """python-hl7's own asyncio MLLP server (a receiver written by others), ACKing with ``create_ack``."""
    loop = asyncio.new_event_loop()
    received: list[hl7.Message] = []

    async def on_client(reader, writer):
        try:
            while not writer.is_closing():
                message = await reader.readmessage()
                received.append(message)
                writer.writemessage(message.create_ack("AA"))
                await writer.drain()
        except asyncio.IncompleteReadError:
            writer.close()

    async def start():
        return await start_hl7_server(on_client, "127.0.0.1", 0, encoding="utf-8")

    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    server = asyncio.run_coroutine_threadsafe(start(), loop).result(10)
    port = server.sockets[0].getsockname()[1]
    try:
        yield f"mllp://127.0.0.1:{port}", received
    finally:

        async def stop():  # asyncio objects are used in their loop's thread only
            server.close()
            await server.wait_closed()

        asyncio.run_coroutine_threadsafe(stop(), loop).result(10)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(10)
        loop.close()


def test_interoperates_with_python_hl7s_listener(stock_listener):
    url, received = stock_listener
    n = make_notification(patient=PatientInfo(id="PAT-9", name="Müller^Zoë", birth_date="19600101", sex="F"))
    result = send_mllp(url, build_oru(n), timeout=5)
    assert result.ok and result.detail == "ACK AA"
    (message,) = received
    assert str(message.segment("PID")[5]) == "Müller^Zoë"  # UTF-8 as MSH-18 declares
    study = next(s for s in message if str(s[0]) == "OBX" and str(s[3]).startswith("110180^"))
    assert str(study[5]) == n.study_uid


def test_ack_with_other_encoding_characters():
    ack = "MSH|#@!%|R||N||20261207||ACK|1|P|2.5.1\rMSA|AR|NRX1\rERR|||101#Required field missing#HL70357\r"
    result = interpret_ack(ack, "NRX1")
    assert result.permanent and "101 Required field missing" in result.detail
