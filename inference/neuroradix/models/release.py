"""Model releases: a folder with ``manifest.json`` listing every file with its sha256.

Layout (see ``weights/README.md``)::

    <release>/manifest.json
    <release>/backbone.pt        state dict of the SwinUNETR (torch.save, loaded weights_only)
    <release>/encoder.pt         or: state dict of another trained encoder (e.g. "vit")
    <release>/head.pt            state dict of the multitask head
    <release>/tokenizer/...      tokenizer.json + tokenizer_config.json

The manifest names the image encoder the head was trained on: ``"encoder": {"name", "width"}``,
plus, for a pretrained encoder whose weights come from a package (``"merlin"``, ``"astra"``),
``"pretrained": {"package", "version", "sha256", "bytes", "source", "licence"}`` (the sha256 must be
this code's pin, :data:`neuroradix.models.pretrained.PRETRAINED`).  A manifest without the
field is a SwinUNETR release (releases written before encoders were named).  A release can only be
served with its own encoder (:func:`load_release` ``encoder=``).

:func:`load_release` checks the manifest format, every file's size and sha256, the model
config, the class scheme and the finding catalogue against what this code knows, and refuses
a mismatch with a :class:`~neuroradix.errors.WeightsError` saying what differs.  An untrained
release (random weights) is refused unless ``allow_untrained=True``
(:class:`~neuroradix.errors.NotConfiguredError`).
"""

from __future__ import annotations

import dataclasses
import datetime as _dt
import hashlib
import json
import logging
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping, NoReturn, Optional, Sequence, Union

from neuroradix.errors import NotConfiguredError, WeightsError
from neuroradix.models.config import ModelConfig, diff_dicts, tiny_config
from neuroradix.models.findings import load_findings
from neuroradix.models.pretrained import PRETRAINED, WIDTH
from neuroradix.schemes import load_scheme

logger = logging.getLogger(__name__)

__all__ = [
    "MANIFEST",
    "FORMAT",
    "CTRATE_LICENCE",
    "Release",
    "write_release",
    "load_release",
    "make_test_release",
    "sha256_file",
    "write_published_release",
    "load_published_release",
    "is_published_release",
]

MANIFEST = "manifest.json"
FORMAT = "neuroradix-weights/1"
CTRATE_LICENCE = "CC-BY-NC-SA-4.0"
SCHEME = "chest-ct-43"
FINDINGS = "ct-rate-18"
_MODEL_FILES = ("backbone", "head")
DEFAULT_ENCODER = "swinunetr"


def encoder_files(encoder: str, pretrained: bool) -> tuple[str, ...]:
    """Model files a release of ``encoder`` holds: SwinUNETR ``backbone`` + ``head``; a pretrained
    encoder only ``head`` (its weights come from the package); another trained encoder ``encoder`` + ``head``."""
    if encoder == DEFAULT_ENCODER:
        return _MODEL_FILES
    return ("head",) if pretrained else ("encoder", "head")


def manifest_encoder(manifest: Mapping) -> dict:
    """The manifest's ``encoder`` entry; a manifest without one is a SwinUNETR release."""
    enc = manifest.get("encoder")
    if enc is None:
        width = 24 * int(manifest.get("model", {}).get("backbone", {}).get("feature_size", 48))
        return {"name": DEFAULT_ENCODER, "width": width}
    return dict(enc)


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


@dataclass(frozen=True)
class Release:
    """A verified release: its folder, manifest and model config."""

    path: Path
    manifest: dict
    config: ModelConfig

    @property
    def version(self) -> str:
        return str(self.manifest["version"])

    @property
    def name(self) -> str:
        return str(self.manifest.get("name", "swinunetr-ctrate"))

    @property
    def untrained(self) -> bool:
        return bool(self.manifest["untrained"])

    @property
    def encoder(self) -> dict:
        """The image encoder the head was trained on (``{"name", "width", ...}``)."""
        return manifest_encoder(self.manifest)

    @property
    def encoder_name(self) -> str:
        return str(self.encoder["name"])

    def file(self, key: str) -> Path:
        return self.path / self.manifest["files"][key]["path"]

    def load_tokenizer(self):
        from neuroradix.models.tokenizer import load_tokenizer  # noqa: PLC0415 - optional heavy dependency (torch etc.)

        return load_tokenizer(self.path / self.manifest["tokenizer"]["path"])

    def build_models(self, device: str = "cpu"):
        """Build the encoder and head and load their state dicts (strict); ``(encoder, head, tokenizer)``.

        For a SwinUNETR release the first item is the ``SwinUNETR`` itself (segmentation + embeddings
        in one pass); otherwise the :class:`~neuroradix.models.encoders.base.Encoder` named in the
        manifest (a pretrained one loads its pinned package weights).
        """
        import torch  # noqa: PLC0415 - optional heavy dependency (torch etc.)

        from neuroradix.models.backbone import build_backbone  # noqa: PLC0415 - optional heavy dependency (torch etc.)
        from neuroradix.models.encoders import build_encoder  # noqa: PLC0415 - optional heavy dependency (torch etc.)
        from neuroradix.models.head import MultitaskHead  # noqa: PLC0415 - optional heavy dependency (torch etc.)

        tok = self.load_tokenizer()
        enc = self.encoder
        head = MultitaskHead(self.config.head, tok)
        encoder: torch.nn.Module
        if enc["name"] == DEFAULT_ENCODER:
            encoder, key = build_backbone(self.config.backbone), "backbone"
        elif enc.get("pretrained"):
            encoder, key = build_encoder(enc["name"], pretrained=True), ""
        else:
            encoder, key = build_encoder(enc["name"], **dict(enc.get("kwargs", {}))), "encoder"
        parts = [("head", head)] + ([(key, encoder)] if key else [])
        for key, module in parts:
            state = torch.load(self.file(key), map_location="cpu", weights_only=True)
            result = module.load_state_dict(state, strict=False)
            if result.missing_keys or result.unexpected_keys:
                raise WeightsError(
                    f"{self.file(key)}: state dict does not fit the configured {key}: "
                    f"missing {result.missing_keys[:5]}, unexpected {result.unexpected_keys[:5]}"
                )
        return encoder.to(device).eval(), head.to(device).eval(), tok


def _file_entry(root: Path, rel: str) -> dict:
    p = root / rel
    return {"path": rel, "sha256": sha256_file(p), "bytes": p.stat().st_size}


def write_release(
    out_dir: Union[str, Path],
    model_cfg: ModelConfig,
    files: Mapping[str, Mapping],
    tokenizer_dir: Union[str, Path],
    *,
    version: str,
    untrained: bool,
    training_data: Sequence[dict] = (),
    licence: str = CTRATE_LICENCE,
    name: str = "swinunetr-ctrate",
    notes: str = "",
    encoder: Optional[Mapping] = None,
) -> Path:
    """Write a release folder: state dicts, tokenizer copy and ``manifest.json``.

    Parameters
    ----------
    files:
        ``{"backbone": state_dict, "head": state_dict}`` for a SwinUNETR release; ``{"head": ...}``
        on a pretrained encoder; ``{"encoder": ..., "head": ...}`` on another trained encoder
        (:func:`encoder_files`).
    encoder:
        The manifest's ``encoder`` entry (default: SwinUNETR of ``model_cfg``'s width).
    training_data:
        Data sets used, e.g. ``[{"name": "CT-RATE", "licence": "CC-BY-NC-SA-4.0", "url": ...}]``.
    licence:
        Licence of the weights (CT-RATE's CC BY-NC-SA 4.0 carries over to models trained on it).
    """
    import torch  # noqa: PLC0415 - optional heavy dependency (torch etc.)

    enc = dict(encoder) if encoder is not None else {"name": DEFAULT_ENCODER, "width": model_cfg.backbone.embed_dim}
    _check_encoder(enc, model_cfg, Path(out_dir) / MANIFEST, ValueError)
    model_files = encoder_files(enc["name"], bool(enc.get("pretrained")))
    if set(files) != set(model_files):
        raise ValueError(f"files must have exactly the keys {list(model_files)}, got {sorted(files)}")
    if not version:
        raise ValueError("version must not be empty")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    entries = {}
    for key in model_files:
        rel = f"{key}.pt"
        state = {k: v.detach().cpu().contiguous() for k, v in files[key].items()}
        torch.save(state, out / rel)
        entries[key] = _file_entry(out, rel)
    tok_src = Path(tokenizer_dir)
    tok_dst = out / "tokenizer"
    if tok_src.resolve() != tok_dst.resolve():
        if tok_dst.exists():
            shutil.rmtree(tok_dst)
        shutil.copytree(tok_src, tok_dst)
    tok_files = sorted(p.relative_to(out).as_posix() for p in tok_dst.rglob("*") if p.is_file())
    for rel in tok_files:
        entries[rel] = _file_entry(out, rel)
    scheme = load_scheme(SCHEME)
    findings = load_findings(FINDINGS)
    manifest = {
        "format": FORMAT,
        "name": name,
        "version": str(version),
        "untrained": bool(untrained),
        "encoder": enc,
        "created": _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds"),
        "model": model_cfg.to_dict(),
        "class_scheme": {"name": scheme.name, "version": scheme.version, "classes": len(scheme)},
        "findings": {"name": findings.name, "version": findings.version, "names": findings.names},
        "tokenizer": {"path": "tokenizer", "files": tok_files},
        "files": entries,
        "training_data": list(training_data),
        "licence": licence,
        "notes": notes,
    }
    (out / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n", encoding="utf-8")
    logger.info("wrote release %s %s to %s (untrained=%s)", name, version, out, untrained)
    return out


def _check(cond: bool, path: Path, message: str) -> None:
    if not cond:
        raise WeightsError(f"{path}: {message}")


def _check_encoder(enc: Mapping, cfg: ModelConfig, path: Path, error: type[Exception] = WeightsError) -> None:
    """The encoder entry names a known encoder whose width is the head's input, and pins its weights."""

    def fail(message: str) -> NoReturn:
        raise error(f"{path}: encoder {message}")

    name, width = enc.get("name"), enc.get("width")
    if not isinstance(name, str) or not name:
        fail(f"entry has no name: {dict(enc)}")
    if name != cfg.encoder:
        fail(f"{name!r} differs from the model config's encoder {cfg.encoder!r}")
    if width != cfg.head.embed_dim:
        fail(f"{name!r} has width {width}, the head's embed_dim is {cfg.head.embed_dim}")
    if name == DEFAULT_ENCODER and width != cfg.backbone.embed_dim:
        fail(f"swinunetr width {width} differs from the backbone's {cfg.backbone.embed_dim}")
    pre = enc.get("pretrained")
    if pre:
        if name not in PRETRAINED:
            fail(f"{name!r} is marked pretrained but this code knows no pinned weights for it")
        want = PRETRAINED[name].to_dict()
        if pre.get("sha256") != want["sha256"]:
            fail(f"{name!r} weights sha256 {pre.get('sha256')} differ from this code's pin {want['sha256']}")
        for key in ("package", "version", "licence", "source"):
            if not pre.get(key):
                fail(f"{name!r}: pretrained.{key} is missing")


def pretrained_encoder_entry(name: str) -> dict:
    """The manifest ``encoder`` entry of a pinned pretrained encoder (``"merlin"``, ``"astra"``)."""
    if name not in PRETRAINED:
        raise KeyError(f"no pinned pretrained encoder {name!r}; known: {sorted(PRETRAINED)}")
    return {"name": name, "width": WIDTH, "architecture": "i3resnet152", "pretrained": PRETRAINED[name].to_dict()}


def load_release(
    directory: Union[str, Path],
    *,
    allow_untrained: bool = False,
    expected: Optional[ModelConfig] = None,
    encoder: Optional[str] = None,
) -> Release:
    """Verify a release folder and return it.

    ``encoder``, when given, is the encoder the caller means to serve the release with; a release
    trained on another one is refused (its head does not read that encoder's tokens).

    Raises
    ------
    WeightsError
        Missing/malformed manifest, a file missing or with another size or sha256 (the message
        names the file), a config that does not parse or differs from ``expected``, or a class
        scheme / finding catalogue other than this code's, an encoder entry that does not fit the
        head or pins other weights, or an encoder other than ``encoder``.
    NotConfiguredError
        The release is marked untrained and ``allow_untrained`` is false.
    """
    root = Path(directory)
    mpath = root / MANIFEST
    _check(mpath.is_file(), root, f"no {MANIFEST} (not a weights release)")
    try:
        manifest = json.loads(mpath.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise WeightsError(f"{mpath}: not valid JSON: {exc}") from exc
    _check(manifest.get("format") == FORMAT, mpath, f"format is {manifest.get('format')!r}, expected {FORMAT!r}")
    _check("published" not in manifest, mpath, "is a published-model release: load it with load_published_release")
    for key in ("version", "untrained", "model", "class_scheme", "findings", "tokenizer", "files", "licence"):
        _check(key in manifest, mpath, f"'{key}' is missing")
    files = manifest["files"]
    enc = manifest_encoder(manifest)
    if encoder is not None and enc.get("name") != encoder:
        raise WeightsError(
            f"{mpath}: release {manifest.get('name')} {manifest.get('version')} was trained on encoder "
            f"{enc.get('name')!r} and cannot be served with {encoder!r}"
        )
    for key in encoder_files(str(enc.get("name")), bool(enc.get("pretrained"))):
        _check(key in files, mpath, f"files has no '{key}' entry")
    for key, entry in files.items():
        p = root / entry["path"]
        _check(p.is_file(), p, f"file listed in the manifest ({key}) is missing")
        size = p.stat().st_size
        _check(
            size == entry.get("bytes", size), p, f"size {size} bytes differs from the manifest's {entry.get('bytes')}"
        )
        digest = sha256_file(p)
        _check(
            digest == entry.get("sha256"), p, f"sha256 mismatch: manifest says {entry.get('sha256')}, file has {digest}"
        )
    try:
        cfg = ModelConfig.from_dict(manifest["model"])
    except (ValueError, TypeError) as exc:
        raise WeightsError(f"{mpath}: model config is invalid: {exc}") from exc
    _check_encoder(enc, cfg, mpath)
    if expected is not None and cfg != expected:
        diffs = diff_dicts(expected.to_dict(), cfg.to_dict())
        raise WeightsError(f"{mpath}: model config differs from the expected one: " + "; ".join(diffs))
    scheme = load_scheme(SCHEME)
    cs = manifest["class_scheme"]
    want = {"name": scheme.name, "version": scheme.version, "classes": len(scheme)}
    _check(cs == want, mpath, "class scheme differs: " + "; ".join(diff_dicts(want, cs)))
    _check(
        cfg.backbone.out_channels == len(scheme) + 1,
        mpath,
        f"backbone.out_channels {cfg.backbone.out_channels} != {len(scheme)} classes + background",
    )
    fc = load_findings(FINDINGS)
    fm = manifest["findings"]
    wantf = {"name": fc.name, "version": fc.version, "names": fc.names}
    _check(fm == wantf, mpath, "finding catalogue differs: " + "; ".join(diff_dicts(wantf, fm)))
    tok_files = set(manifest["tokenizer"].get("files", []))
    _check(f"{manifest['tokenizer']['path']}/tokenizer.json" in tok_files, mpath, "tokenizer.json is not listed")
    _check(tok_files <= set(e["path"] for e in files.values()), mpath, "tokenizer files are not all hashed in 'files'")
    if manifest["untrained"] and not allow_untrained:
        raise NotConfiguredError(
            f"{root}: release {manifest['version']} is marked untrained (random weights); "
            "refusing it without the test-only allow-untrained switch"
        )
    return Release(root, manifest, cfg)


def make_test_release(
    out_dir: Union[str, Path],
    cfg: Optional[ModelConfig] = None,
    *,
    seed: int = 0,
    encoder: str = DEFAULT_ENCODER,
    version: str = "0.0.0-test",
    name: Optional[str] = None,
    notes: str = "Random weights for tests and demos. UNTRAINED - TEST OUTPUT.",
) -> Path:
    """A release in the real format with random weights, marked untrained (tests and demos).

    ``encoder`` ``"merlin"`` / ``"astra"`` writes an untrained head on that pinned pretrained encoder
    (``cfg``'s head gets the encoder's width); its weights are only needed when the release is run.
    """

    import torch  # noqa: PLC0415 - optional heavy dependency (torch etc.)

    from neuroradix.models.backbone import build_backbone  # noqa: PLC0415 - optional heavy dependency (torch etc.)
    from neuroradix.models.head import MultitaskHead  # noqa: PLC0415 - optional heavy dependency (torch etc.)
    from neuroradix.models.tokenizer import train_tokenizer  # noqa: PLC0415 - optional heavy dependency (torch etc.)

    cfg = cfg or tiny_config()
    enc_entry: Optional[dict] = None
    if encoder != DEFAULT_ENCODER:
        enc_entry = pretrained_encoder_entry(encoder)
        head_cfg = dataclasses.replace(cfg.head, embed_dim=int(enc_entry["width"]))
        cfg = dataclasses.replace(cfg, head=head_cfg, encoder=encoder)
    torch.manual_seed(seed)
    texts = [
        "No pleural effusion. The heart size is normal. No lymphadenopathy.",
        "Mild emphysema in both upper lobes. A 4 mm nodule in the right lower lobe.",
        "Atelectasis in the left lower lobe. Coronary artery wall calcification.",
        "Bilateral pleural effusion with adjacent consolidation. Cardiomegaly.",
    ] * 8
    with tempfile.TemporaryDirectory() as tmp:
        tok = train_tokenizer(texts, vocab_size=400, out_dir=tmp)
        head = MultitaskHead(cfg.head, tok)
        files = {"head": head.state_dict()}
        if enc_entry is None:
            files["backbone"] = build_backbone(cfg.backbone).state_dict()
        return write_release(
            out_dir,
            cfg,
            files,
            tmp,
            version=version,
            untrained=True,
            training_data=[],
            licence="Apache-2.0"
            if enc_entry is None
            else f"Apache-2.0 (head); encoder {enc_entry['pretrained']['licence']}",
            name=name or ("swinunetr-ctrate-test" if enc_entry is None else f"{encoder}-ctrate-untrained"),
            notes=notes,
            encoder=enc_entry,
        )


# ---------------------------------------------------------------------------- published models
# A release imported from a published model (COLIPRI, CT-CLIP, Merlin; neuroradix.models.published)
# has the same format and file hashing, no trained config/head/tokenizer, and a "published" section.

PUBLISHED_KEYS = ("model", "version", "source", "source_sha256", "licence", "restriction", "reported", "untrained")


def is_published_release(directory: Union[str, Path]) -> bool:
    """Whether ``directory`` holds a release imported from a published model (its manifest has ``published``)."""
    mpath = Path(directory) / MANIFEST
    if not mpath.is_file():
        return False
    try:
        return "published" in json.loads(mpath.read_text(encoding="utf-8"))
    except json.JSONDecodeError:
        return False


def write_published_release(
    out_dir: Union[str, Path],
    files: Mapping[str, Path],
    published: Mapping,
    *,
    untrained: bool,
    notes: str = "",
) -> Path:
    """Write a published-model release: copy ``files`` (``{name in the release: source path}``) and the manifest.

    ``published`` is the manifest's ``published`` section
    (:func:`neuroradix.models.published.base.published_section`); its ``model``, ``version`` and
    ``licence`` name the release.
    """
    missing = [k for k in PUBLISHED_KEYS if k not in published]
    if missing:
        raise ValueError(f"published section lacks {missing}")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    entries = {}
    for rel, src in sorted(files.items()):
        dst = out / rel
        dst.parent.mkdir(parents=True, exist_ok=True)
        if Path(src).resolve() != dst.resolve():
            shutil.copyfile(src, dst)
        entries[rel] = _file_entry(out, rel)
    manifest = {
        "format": FORMAT,
        "name": f"{published['model']}-published" + ("-untrained" if untrained else ""),
        "version": str(published["version"]),
        "untrained": bool(untrained),
        "created": _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds"),
        "files": entries,
        "licence": str(published["licence"]),
        "notes": notes,
        "published": dict(published),
    }
    (out / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n", encoding="utf-8")
    logger.info("wrote published-model release %s to %s (untrained=%s)", manifest["name"], out, untrained)
    return out


def load_published_release(directory: Union[str, Path], *, allow_untrained: bool = False) -> dict:
    """Verify a published-model release (format, every file's size and sha256, the section); its manifest.

    Raises
    ------
    WeightsError
        Not a published-model release, a file missing or changed, or the section incomplete.
    NotConfiguredError
        The release is untrained and ``allow_untrained`` is false.
    """
    root = Path(directory)
    mpath = root / MANIFEST
    _check(mpath.is_file(), root, f"no {MANIFEST} (not a weights release)")
    try:
        manifest = json.loads(mpath.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise WeightsError(f"{mpath}: not valid JSON: {exc}") from exc
    _check(manifest.get("format") == FORMAT, mpath, f"format is {manifest.get('format')!r}, expected {FORMAT!r}")
    pub = manifest.get("published")
    _check(isinstance(pub, dict), mpath, "no 'published' section (not a published-model release)")
    missing = [k for k in PUBLISHED_KEYS if k not in pub]
    _check(not missing, mpath, f"published section lacks {missing}")
    for key, entry in manifest.get("files", {}).items():
        p = root / entry["path"]
        _check(p.is_file(), p, f"file listed in the manifest ({key}) is missing")
        _check(p.stat().st_size == entry.get("bytes"), p, f"size differs from the manifest's {entry.get('bytes')}")
        digest = sha256_file(p)
        _check(
            digest == entry.get("sha256"), p, f"sha256 mismatch: manifest says {entry.get('sha256')}, file has {digest}"
        )
    if manifest.get("untrained") and not allow_untrained:
        raise NotConfiguredError(
            f"{root}: published-model release {pub['model']} {manifest['version']} is marked untrained "
            "(random weights); refusing it without the test-only allow-untrained switch"
        )
    return manifest
