"""C2PA manifests on MP4 files: who made them (endless, the model) and when, signed.

`sign_mp4(path, manifest_info, signer)` embeds a signed manifest in place (offline renders
call it, and so can recordings). The signer comes from the operator's key and certificate
chain (`--c2pa-key`, `--c2pa-cert`, PEM); without them a development chain is made once
(an EC P-256 root and a signing certificate under it) and kept in the state directory,
with a warning that such a manifest proves nothing to anyone else.

`read_manifest(path)` returns the active manifest's summary and the validation state, or
None when the file has none.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from model.errors import ConfigError, RenderError

log = logging.getLogger(__name__)
GENERATOR = "endless"
AI_SOURCE = "http://cv.iptc.org/newscodes/digitalsourcetype/trainedAlgorithmicMedia"
PROVENANCE_LABEL = "org.endless.provenance"


@dataclass(frozen=True)
class ManifestInfo:
    model: str  # e.g. "tiny"
    created: dt.datetime  # generation start (UTC)
    title: str = "endless video"
    version: str = "0.1.0"
    extra: dict = field(default_factory=dict)  # watermark payload, prompts, ...

    def manifest(self) -> dict:
        when = self.created.astimezone(dt.UTC).isoformat(timespec="seconds")
        return {
            "claim_generator_info": [{"name": GENERATOR, "version": self.version}],
            "title": self.title,
            "format": "video/mp4",
            "assertions": [
                {
                    "label": "c2pa.actions",
                    "data": {
                        "actions": [
                            {
                                "action": "c2pa.created",
                                "when": when,
                                "softwareAgent": {"name": GENERATOR, "version": self.version},
                                "digitalSourceType": AI_SOURCE,
                            }
                        ]
                    },
                },
                {
                    "label": PROVENANCE_LABEL,
                    "data": {"generator": GENERATOR, "model": self.model, "time": when}
                    | self.extra,
                },
            ],
        }


def default_state_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "endless"


def _c2pa():
    try:
        import c2pa
    except ImportError as exc:  # an optional install: the rest of endless works without it
        raise ConfigError(f"C2PA signing needs the c2pa-python package: {exc}") from exc
    return c2pa


def make_dev_chain(folder: Path) -> tuple[Path, Path]:
    """A development key and chain (root CA + signing certificate), made once in `folder`."""
    key_path, cert_path = folder / "dev-signer.key.pem", folder / "dev-chain.pem"
    if key_path.is_file() and cert_path.is_file():
        return key_path, cert_path
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    now = dt.datetime.now(dt.UTC)

    def name(cn: str) -> x509.Name:
        return x509.Name(
            [
                x509.NameAttribute(NameOID.COMMON_NAME, cn),
                x509.NameAttribute(NameOID.ORGANIZATION_NAME, "endless development"),
            ]
        )

    root_key = ec.generate_private_key(ec.SECP256R1())
    root = (
        x509.CertificateBuilder()
        .subject_name(name("endless development root"))
        .issuer_name(name("endless development root"))
        .public_key(root_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(days=1))
        .not_valid_after(now + dt.timedelta(days=3650))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(False, False, False, False, False, True, True, False, False),
            critical=True,
        )
        .sign(root_key, hashes.SHA256())
    )
    key = ec.generate_private_key(ec.SECP256R1())
    leaf = (
        x509.CertificateBuilder()
        .subject_name(name("endless development signer"))
        .issuer_name(root.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(days=1))
        .not_valid_after(now + dt.timedelta(days=3650))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(True, False, False, False, False, False, False, False, False),
            critical=True,
        )
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.EMAIL_PROTECTION]), False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(root_key.public_key()), False
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), False)
        .sign(root_key, hashes.SHA256())
    )
    folder.mkdir(parents=True, exist_ok=True)
    pem = serialization.Encoding.PEM
    key_bytes = key.private_bytes(
        pem, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    fd = os.open(key_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(key_bytes)
    cert_path.write_bytes(leaf.public_bytes(pem) + root.public_bytes(pem))
    return key_path, cert_path


@dataclass(frozen=True)
class SignerConfig:
    key: Path
    cert: Path
    development: bool


def signer_config(
    key: str | None, cert: str | None, state_dir: str | Path | None = None
) -> SignerConfig:
    """The operator's key and chain, or (neither given) the development chain."""
    if (key is None) != (cert is None):
        raise ConfigError("give both --c2pa-key and --c2pa-cert, or neither")
    if key is not None:
        for p in (key, cert):
            if not Path(p).is_file():
                raise ConfigError(f"C2PA key/certificate file {p} not found", value=p)
        return SignerConfig(Path(key), Path(cert), development=False)
    folder = Path(state_dir) if state_dir is not None else default_state_dir()
    k, c = make_dev_chain(folder / "c2pa")
    log.warning(
        "C2PA: signing with a DEVELOPMENT key (%s); its manifests prove nothing to anyone "
        "else: give --c2pa-key/--c2pa-cert for real ones",
        k,
    )
    return SignerConfig(k, c, development=True)


def make_signer(config: SignerConfig):
    c2pa = _c2pa()
    info = c2pa.C2paSignerInfo(
        c2pa.C2paSigningAlg.ES256, config.cert.read_bytes(), config.key.read_bytes(), None
    )
    return c2pa.Signer.from_info(info)


def sign_mp4(path: str | Path, manifest_info: ManifestInfo, signer) -> Path:
    """Embed a signed C2PA manifest in the MP4 at `path` (replaced atomically).

    `signer`: a SignerConfig (or a c2pa.Signer made by `make_signer`)."""
    c2pa = _c2pa()
    path = Path(path)
    if isinstance(signer, SignerConfig):
        signer = make_signer(signer)
    fd, tmp = tempfile.mkstemp(suffix=".mp4", dir=path.parent)
    os.close(fd)
    try:
        with c2pa.Builder(json.dumps(manifest_info.manifest())) as builder:
            builder.sign_file(str(path), tmp, signer)
        os.replace(tmp, path)
    except c2pa.C2paError as exc:
        raise RenderError(f"C2PA signing of {path} failed: {exc}", value=str(path)) from exc
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return path


def read_manifest(path: str | Path) -> dict | None:
    """The active manifest's summary, or None (no manifest, or c2pa-python missing)."""
    try:
        import c2pa
    except ImportError:
        return None
    try:
        with c2pa.Reader(str(path)) as reader:
            store = json.loads(reader.json())
    except c2pa.C2paError:
        return None
    active = store.get("manifests", {}).get(store.get("active_manifest", ""), {})
    if not active:
        return None
    assertions = {a.get("label"): a.get("data") for a in active.get("assertions", [])}
    actions = next((d for k, d in assertions.items() if k.startswith("c2pa.actions")), {})
    sig = active.get("signature_info", {})
    return {
        "generator": [g.get("name") for g in active.get("claim_generator_info", [])],
        "title": active.get("title"),
        "provenance": assertions.get(PROVENANCE_LABEL),
        "actions": [a.get("action") for a in (actions or {}).get("actions", [])],
        "signer": sig.get("common_name"),
        "issuer": sig.get("issuer"),
        "validation_state": store.get("validation_state"),
        "validation_errors": [s.get("code") for s in store.get("validation_status", []) or []],
    }
