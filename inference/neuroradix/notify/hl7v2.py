"""HL7 v2.5.1 ``ORU^R01`` triage results, sent over MLLP.

The message (segments separated by ``\\r``)::

    MSH  sender, receiver, MSH-7 = the notice's creation time, MSH-9 ORU^R01^ORU_R01,
         MSH-10 = control id derived from the delivery id (a retry repeats it), MSH-12 2.5.1,
         MSH-18 UNICODE UTF-8
    PID  PID-3 patient id (CX, type PI), PID-5 name (XPN from DICOM PN), PID-7 birth date, PID-8 sex
    OBR  OBR-3 filler order number = accession number, OBR-4 NRX-TRIAGE, OBR-5 priority
         (table 0168), OBR-7/22 decision time, OBR-25 result status P (preliminary)
    OBX  the level (CWE; OBX-8 flag, table 0078), the study UID (ST, DCM 110180), the notice kind,
         the policy version, one ST per reason, one NM per evidence item, the note if any

Priorities (OBR-5, table 0168) and flags (OBX-8, table 0078):

============  =====  ======  ============================================================
level         OBR-5  OBX-8   why
============  =====  ======  ============================================================
urgent        S      AA      stat; critically abnormal
priority      A      A       as soon as possible; abnormal
routine       R      N       routine; normal
pending       empty  empty   the AI has not judged the study: an empty OBR-5 leaves the
not-analyzed  empty  empty   order's own priority alone (``R`` would claim a judgement the AI
                             did not make and could lower a STAT order); an empty OBX-8 is
                             table 0078's "no range defined / normal ranges don't apply"
============  =====  ======  ============================================================

Evidence flags: a measurement at or above an ``at_least`` threshold is ``H``, at or below an
``at_most`` threshold ``L``; a finding whose probability met its threshold is ``A``; a value that
does not meet its threshold is ``N``; no value, no flag.

Text goes through :func:`escape` (HL7 2.10.4: ``| ^ ~ \\ &`` become ``\\F\\ \\S\\ \\R\\ \\E\\ \\T\\``,
line breaks ``\\.br\\``, other control characters dropped). Non-ASCII text is kept as UTF-8 and
MSH-18 says so: python-hl7's ``util.escape`` would turn it into ``\\Xhh\\`` escapes, which the
receiver must read in the message's character set, so a name outside Latin-1 could not survive.
python-hl7 parses every built message (a check) and every ACK.

Transport: plain blocking sockets rather than python-hl7's clients. Its ``MLLPClient`` connects
without a timeout and takes whatever one ``recv`` returns as the ACK; its asyncio client needs an
event loop that the outbox's delivery threads do not run. Here connect, send and the wait for the
ACK share one deadline, and the ACK is read until its ``0x1C 0x0D`` trailer.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import logging
import socket
import time
from urllib.parse import urlsplit

import hl7
from hl7.exceptions import HL7Exception

from neuroradix.errors import NotificationError
from neuroradix.notify.message import Evidence, Notification
from neuroradix.notify.result import DeliveryResult

logger = logging.getLogger(__name__)

START_BLOCK = b"\x0b"
END_BLOCK = b"\x1c\x0d"
MAX_ACK_BYTES = 1 << 20

PRIORITY = {"urgent": "S", "priority": "A", "routine": "R", "pending": "", "not-analyzed": ""}  # table 0168
LEVEL_FLAG = {"urgent": "AA", "priority": "A", "routine": "N", "pending": "", "not-analyzed": ""}  # table 0078
LEVEL_TEXT = {
    "urgent": "Urgent",
    "priority": "Priority",
    "routine": "Routine",
    "pending": "Pending (not analyzed yet)",
    "not-analyzed": "Not analyzed",
}
SEX = {"M": "M", "F": "F", "O": "O"}  # DICOM (0010,0040) -> table 0001; anything else -> U
LOCAL = "L"  # coding system of the node's own codes (HL7 table 0396: L = local)
# UCUM spellings of units that results.json uses; others are sent as local codes.
UCUM = {"%": "%", "HU": "[hnsf'U]", "mL": "mL", "ml": "mL", "L": "L", "mm": "mm", "cm": "cm", "g": "g", "mm3": "mm3"}
MALFORMED_CODES = range(100, 200)  # table 0357: segment sequence, required field, data type, table value


def escape(text: str) -> str:
    """``text`` with HL7's delimiters escaped (``|^~\\&``), line breaks as ``\\.br\\``, other controls removed.

    Parameters
    ----------
    text
        Any text for one field, component or subcomponent.
    """
    out = []
    for ch in text.replace("\r\n", "\n"):
        if ch == "\\":
            out.append("\\E\\")
        elif ch == "|":
            out.append("\\F\\")
        elif ch == "^":
            out.append("\\S\\")
        elif ch == "~":
            out.append("\\R\\")
        elif ch == "&":
            out.append("\\T\\")
        elif ch in "\r\n":
            out.append("\\.br\\")
        elif ord(ch) < 0x20 or ord(ch) == 0x7F:
            continue  # tabs, MLLP frame bytes and the like have no place in a field
        else:
            out.append(ch)
    return "".join(out)


def control_id(delivery_id: str) -> str:
    """MSH-10 for ``delivery_id``: ``NRX`` + 17 hex digits of its SHA-256 (20 characters, the ST limit).

    Parameters
    ----------
    delivery_id
        The outbox row's stable id; the same id always gives the same control id.
    """
    return "NRX" + hashlib.sha256(delivery_id.encode("utf-8")).hexdigest()[:17].upper()


def hl7_time(moment: dt.datetime) -> str:
    """``YYYYMMDDHHMMSS+0000`` (DTM, UTC) for an aware datetime.

    Parameters
    ----------
    moment
        An aware datetime.
    """
    if moment.tzinfo is None:
        raise ValueError("hl7_time needs an aware datetime")
    return moment.astimezone(dt.UTC).strftime("%Y%m%d%H%M%S+0000")


def xpn_from_pn(pn: str) -> str:
    """An XPN (``family^given^middle^suffix^prefix``) from a DICOM PN (``family^given^middle^prefix^suffix``).

    Only the alphabetic group (before the first ``=``) is used; each part is escaped.

    Parameters
    ----------
    pn
        The DICOM PatientName value.
    """
    parts = (pn.split("=")[0].split("^") + [""] * 5)[:5]
    family, given, middle, prefix, suffix = (p.strip() for p in parts)
    return "^".join(escape(p) for p in (family, given, middle, suffix, prefix)).rstrip("^")


def _number(value: float) -> str:
    """NM text without an exponent (``15.2``, ``0.8123``, ``-950``)."""
    text = f"{value:.6f}".rstrip("0").rstrip(".")
    return "0" if text in ("-0", "") else text


def _code(identifier: str, text: str, system: str = LOCAL) -> str:
    return f"{escape(identifier)}^{escape(text)}^{system}"


def _evidence_code(item: Evidence) -> str:
    digest = hashlib.sha256(f"{item.kind}\x00{item.name}".encode()).hexdigest()[:8].upper()
    return _code(f"NRX-{'F' if item.kind == 'finding' else 'M'}{digest}", item.name)


def _evidence_flag(item: Evidence) -> str:
    met = item.met
    if met is None:
        return ""
    if not met:
        return "N"
    if item.kind == "finding":
        return "A"
    return "H" if item.comparator == ">=" else "L"


def _reference_range(item: Evidence) -> str:
    if item.threshold is None:
        return ""
    # The range of values that do NOT fire the rule: below an at_least threshold, above an at_most one.
    return f"<{_number(item.threshold)}" if item.comparator == ">=" else f">{_number(item.threshold)}"


def _units(unit: str) -> str:
    if not unit:
        return ""
    if unit in UCUM:
        return f"{escape(UCUM[unit])}^{escape(unit)}^UCUM"
    return _code(unit, unit)


def _segment(name: str, fields: dict[int, str]) -> str:
    size = max(fields) if fields else 0
    values = [fields.get(i, "") for i in range(1, size + 1)]
    return "|".join([name, *values]).rstrip("|")


def _obx(set_id: int, value_type: str, code: str, value: str, *, units: str = "", ref: str = "", flag: str = "",
         status: str = "P", at: str = "") -> str:  # fmt: skip
    return _segment(
        "OBX",
        {1: str(set_id), 2: value_type, 3: code, 5: value, 6: units, 7: ref, 8: flag, 11: status, 14: at},
    )


def build_oru(
    n: Notification,
    *,
    sending_app: str = "NEURORADIX",
    sending_facility: str = "",
    receiving_app: str = "",
    receiving_facility: str = "",
) -> str:
    """The HL7 v2.5.1 ORU^R01 for ``n`` (segments joined by ``\\r``; see the module docstring).

    The same notification always gives the same message: MSH-7 is the notice's creation time and
    MSH-10 derives from its delivery id, so a retry repeats both.

    Parameters
    ----------
    n
        The notification.
    sending_app, sending_facility, receiving_app, receiving_facility
        MSH-3 to MSH-6 (HD namespace ids).

    Raises
    ------
    NotificationError
        The built message does not parse back (a defect).
    """
    decided = hl7_time(n.decided_at_utc)
    msh = (
        "MSH|^~\\&|"
        + "|".join(escape(v) for v in (sending_app, sending_facility, receiving_app, receiving_facility))
        + f"|{hl7_time(n.created_at_utc)}||ORU^R01^ORU_R01|{control_id(n.delivery_id)}|P|2.5.1"
        + "||||||UNICODE UTF-8"
    )
    patient = n.patient
    birth = patient.birth_date.strip()
    pid = _segment(
        "PID",
        {
            1: "1",
            3: f"{escape(patient.id.strip())}^^^^PI" if patient.id.strip() else "",
            5: xpn_from_pn(patient.name),
            7: birth if len(birth) == 8 and birth.isdigit() else "",
            8: SEX.get(patient.sex.strip().upper(), "U"),
        },
    )
    obr = _segment(
        "OBR",
        {
            1: "1",
            3: escape(n.accession_number.strip()),
            4: _code("NRX-TRIAGE", "AI triage of chest CT"),
            5: PRIORITY[n.level],
            7: decided,
            22: decided,
            25: "P",
        },
    )
    obx: list[str] = []

    def add(value_type: str, code: str, value: str, **extra: str) -> None:
        obx.append(_obx(len(obx) + 1, value_type, code, value, at=decided, **extra))

    add("CWE", _code("NRX-LEVEL", "AI triage level"), _code(n.level, LEVEL_TEXT[n.level]), flag=LEVEL_FLAG[n.level])
    add("ST", _code("110180", "Study Instance UID", "DCM"), n.study_uid)
    add("ST", _code("NRX-NOTICE", "Notice kind"), n.kind)
    add("ST", _code("NRX-POLICY", "Triage policy version"), escape(f"{n.policy_version} sha256:{n.policy_sha256}"))
    for reason in n.reasons:
        add("ST", _code("NRX-REASON", "Triage reason"), escape(reason))
    for item in n.evidence:
        add(
            "NM",
            _evidence_code(item),
            "" if item.value is None else _number(item.value),
            units=_units(item.unit),
            ref=_reference_range(item),
            flag=_evidence_flag(item),
            status="P" if item.value is not None else "X",
        )
    if n.untrained_or_licence_note:
        add("ST", _code("NRX-NOTE", "Note"), escape(n.untrained_or_licence_note))
    message = "\r".join([msh, pid, obr, *obx])
    _check(message, expected_segments=3 + len(obx))
    return message


def _check(message: str, expected_segments: int) -> None:
    try:
        parsed = hl7.parse(message)
        count = len(parsed)
        kind = str(parsed.segment("MSH")[9])
    except (HL7Exception, KeyError, IndexError, ValueError) as exc:
        raise NotificationError(f"the built ORU^R01 does not parse: {exc}") from exc
    if count != expected_segments or kind != "ORU^R01^ORU_R01":
        raise NotificationError(f"the built ORU^R01 parses to {count} segments of type {kind!r}")


def parse_mllp_url(url: str) -> tuple[str, int]:
    """``(host, port)`` of ``mllp://host:port``.

    Parameters
    ----------
    url
        The destination's URL.

    Raises
    ------
    ValueError
        Not ``mllp://host:port`` (no path, query or user part).
    """
    if not isinstance(url, str):
        raise TypeError(f"url must be a str, not {type(url).__name__}")
    parts = urlsplit(url)
    try:
        port = parts.port
    except ValueError as exc:
        raise ValueError(f"url has a bad port: {url!r}") from exc
    if (
        parts.scheme != "mllp"
        or not parts.hostname
        or port is None
        or port == 0
        or parts.path not in ("", "/")
        or parts.query
        or parts.fragment
        or parts.username is not None
    ):
        raise ValueError(f"url must be mllp://host:port, not {url!r}")
    return parts.hostname, port


def _ack_codes(ack: hl7.Message) -> list[int]:
    """The HL7 table 0357 codes an ACK carries: ERR-3 (v2.5), ERR-1.4 (v2.3 ELD) and MSA-6."""
    codes = []
    candidates: list[str] = []
    for segment in ack:
        name = str(segment[0])
        if name == "ERR":
            candidates.append(_component(segment, 3, 1))
            candidates.append(_component(segment, 1, 4))
        elif name == "MSA":
            candidates.append(_component(segment, 6, 1))
    for text in candidates:
        text = text.strip()
        if text.isdigit():
            codes.append(int(text))
    return codes


def _component(segment: hl7.Segment, field: int, component: int) -> str:
    """Text of ``segment``'s field ``field``, first repetition, component ``component`` ('' if absent).

    Split with the separators the ACK's own MSH declares (``segment.separators``: segment, field,
    repetition, component, subcomponent), so a receiver with other encoding characters is read right.
    """
    if len(segment) <= field:
        return ""
    seps = str(getattr(segment, "separators", "") or "")
    seps = seps + "\r|~^&"[len(seps) :] if len(seps) < 5 else seps
    repetition_sep: str = seps[2]
    component_sep: str = seps[3]
    subcomponent_sep: str = seps[4]
    parts = str(segment[field]).split(repetition_sep)[0].split(component_sep)
    return parts[component - 1].split(subcomponent_sep)[0] if len(parts) >= component else ""


def _ack_text(ack: hl7.Message) -> str:
    """MSA-3 and the ERR segments' texts (ERR-3.2, ERR-8), for the dead-letter record."""
    texts = []
    for segment in ack:
        name = str(segment[0])
        if name == "MSA" and len(segment) > 3:
            texts.append(str(segment[3]))
        elif name == "ERR":
            texts.append(" ".join(p for p in (_component(segment, 3, 1), _component(segment, 3, 2)) if p))
            if len(segment) > 8:
                texts.append(str(segment[8]))
    return "; ".join(t for t in texts if t.strip())


def interpret_ack(ack_text: str, control: str) -> DeliveryResult:
    """What an ACK means for the message with MSH-10 ``control``.

    ``AA`` (or ``CA``, an enhanced-mode commit) delivers. ``AE``/``AR`` (``CE``/``CR``) are
    retried, unless an error code in table 0357's 100-199 range (segment sequence error, required
    field missing, data type error, table value not found ...) says that the message itself is
    malformed: then it is permanent (dead-letter) with the ACK's text. An ACK for another control
    id, or one without MSA, is retried.

    Parameters
    ----------
    ack_text
        The ACK message, without the MLLP frame.
    control
        MSH-10 of the message that was sent.
    """
    try:
        ack = hl7.parse(ack_text.strip("\r\n"))
        msa = ack.segment("MSA")
    except (HL7Exception, KeyError, IndexError, ValueError):
        return DeliveryResult.retry("unreadable ACK")
    code = _component(msa, 1, 1).strip()
    acked = _component(msa, 2, 1).strip()
    if acked != control:
        return DeliveryResult.retry(f"ACK {code} for another message")
    if code in ("AA", "CA"):
        return DeliveryResult.delivered(f"ACK {code}")
    if code not in ("AE", "AR", "CE", "CR"):
        return DeliveryResult.retry(f"ACK with unknown code {code!r}")
    codes = _ack_codes(ack)
    text = _ack_text(ack)
    detail = " ".join(p for p in (f"ACK {code}", ",".join(str(c) for c in codes), text) if p)
    if any(c in MALFORMED_CODES for c in codes):
        return DeliveryResult.dead(detail)
    return DeliveryResult.retry(detail)


def _read_ack(sock: socket.socket, deadline: float) -> bytes:
    """Bytes up to the MLLP trailer, or raise TimeoutError / ConnectionError."""
    buffer = b""
    while END_BLOCK not in buffer:
        left = deadline - time.monotonic()
        if left <= 0:
            raise TimeoutError("no ACK in time")
        sock.settimeout(left)
        chunk = sock.recv(4096)
        if not chunk:
            raise ConnectionAbortedError("the receiver closed the connection without an ACK")
        buffer += chunk
        if len(buffer) > MAX_ACK_BYTES:
            raise ConnectionAbortedError("ACK larger than 1 MiB")
    frame = buffer[: buffer.index(END_BLOCK)]
    start = frame.find(START_BLOCK)
    return frame[start + 1 :] if start >= 0 else frame


def send_mllp(url: str, message: str, *, timeout: float) -> DeliveryResult:
    """Send ``message`` over MLLP to ``url`` and wait for its ACK; never raises for network trouble.

    Parameters
    ----------
    url
        ``mllp://host:port``.
    message
        An HL7 v2 message (segments joined by ``\\r``), e.g. from :func:`build_oru`.
    timeout
        Seconds for the whole exchange: connect, send and the ACK.

    Returns
    -------
    DeliveryResult
        See :func:`interpret_ack`; connection refused or reset, a timeout or a closed connection
        without an ACK are retried; a bad URL or a message without MSH-10 is permanent.
    """
    try:
        host, port = parse_mllp_url(url)
    except ValueError as exc:
        return DeliveryResult.dead(f"bad URL: {exc}")
    try:
        control = str(hl7.parse(message).segment("MSH")[10])
    except (HL7Exception, KeyError, IndexError, ValueError):
        return DeliveryResult.dead("the message has no MSH-10")
    deadline = time.monotonic() + timeout
    try:
        with socket.create_connection((host, port), timeout=timeout) as sock:
            sock.settimeout(max(deadline - time.monotonic(), 0.001))
            sock.sendall(START_BLOCK + message.encode("utf-8") + END_BLOCK)
            raw = _read_ack(sock, deadline)
    except ConnectionRefusedError:
        result = DeliveryResult.retry("connection refused")
    except ConnectionResetError:
        result = DeliveryResult.retry("connection reset")
    except ConnectionAbortedError as exc:
        result = DeliveryResult.retry(str(exc))
    except TimeoutError:
        result = DeliveryResult.retry("timeout waiting for ACK")
    except OSError as exc:  # unreachable host, name resolution, broken pipe
        result = DeliveryResult.retry(f"network error: {exc.strerror or type(exc).__name__}")
    else:
        result = interpret_ack(raw.decode("utf-8", errors="replace"), control)
    logger.info("MLLP delivery of message %s: %s", control, result.detail)
    return result
