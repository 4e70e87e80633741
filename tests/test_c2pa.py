"""C2PA manifests: signed with the operator's chain or a development one, read back, and
a file changed after signing fails validation."""

from __future__ import annotations

import datetime as dt
import logging

import pytest

from model.errors import ConfigError
from model.tinyworld.render import render_clip
from server.provenance.c2pa_sign import (
    ManifestInfo,
    make_dev_chain,
    read_manifest,
    sign_mp4,
    signer_config,
)
from server.video_file import Mp4Writer

WHEN = dt.datetime(2026, 12, 4, 12, 30, tzinfo=dt.UTC)


def small_mp4(path):
    with Mp4Writer(path, 24, 128, 128) as w:
        w.write(render_clip("a big red circle bouncing over the ocean", 0.5))
    return path


def test_development_chain_signs_a_manifest_naming_endless_the_model_and_time(tmp_path, caplog):
    """No key given: a development chain is made (and said so at WARNING); the manifest
    names endless, the model and the time, and validates."""
    path = small_mp4(tmp_path / "a.mp4")
    with caplog.at_level(logging.WARNING):
        signer = signer_config(None, None, tmp_path / "state")
    assert signer.development and "DEVELOPMENT key" in caplog.text
    sign_mp4(path, ManifestInfo("tiny", WHEN, extra={"seed": 3}), signer)
    m = read_manifest(path)
    assert m["generator"] == ["endless"] and m["actions"] == ["c2pa.created"]
    assert m["provenance"]["model"] == "tiny" and m["provenance"]["seed"] == 3
    assert m["provenance"]["time"] == "2026-12-04T12:30:00+00:00"
    assert m["validation_state"] == "Valid"
    assert m["signer"] == "endless development signer"


def test_development_chain_is_made_once_and_kept(tmp_path):
    """A second call reuses the same key and certificates."""
    k1, c1 = make_dev_chain(tmp_path)
    before = (k1.read_bytes(), c1.read_bytes())
    k2, c2 = make_dev_chain(tmp_path)
    assert (k2.read_bytes(), c2.read_bytes()) == before
    assert (k1.stat().st_mode & 0o777) == 0o600


def test_operator_key_and_cert_are_used_as_given(tmp_path):
    """--c2pa-key/--c2pa-cert: those files sign, and the signer is not a development one."""
    key, cert = make_dev_chain(tmp_path / "operator")
    signer = signer_config(str(key), str(cert))
    assert not signer.development and signer.key == key
    path = small_mp4(tmp_path / "b.mp4")
    sign_mp4(path, ManifestInfo("tiny", WHEN), signer)
    assert read_manifest(path)["validation_state"] == "Valid"


def test_key_without_cert_or_missing_files_are_config_errors(tmp_path):
    """Only one of key/cert, or a path that does not exist: ConfigError."""
    with pytest.raises(ConfigError):
        signer_config(str(tmp_path / "k.pem"), None)
    with pytest.raises(ConfigError):
        signer_config(str(tmp_path / "k.pem"), str(tmp_path / "c.pem"))


def test_a_file_changed_after_signing_fails_validation(tmp_path):
    """Flip bytes in the video data after signing: the manifest no longer validates."""
    path = small_mp4(tmp_path / "c.mp4")
    sign_mp4(path, ManifestInfo("tiny", WHEN), signer_config(None, None, tmp_path))
    data = bytearray(path.read_bytes())
    at = data.find(b"mdat") + 64
    data[at : at + 16] = bytes(16)
    path.write_bytes(bytes(data))
    m = read_manifest(path)
    assert m is not None and m["validation_state"] == "Invalid"


def test_an_unsigned_file_has_no_manifest(tmp_path):
    """read_manifest on a plain MP4: None."""
    assert read_manifest(small_mp4(tmp_path / "d.mp4")) is None
