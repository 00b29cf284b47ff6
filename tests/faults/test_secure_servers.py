"""Secrets in use, and out of every log: live ingestion against a redis-server that requires a
password and speaks only TLS (a certificate made for the test), the password given as a
${VAR} placeholder. Redis is restarted mid-run so that the error paths log too; then the
driver's log records, its output and every Ray worker's log are searched for the password."""

from __future__ import annotations

import logging
import subprocess
import time
import uuid
from pathlib import Path

import pytest
import ray
import yaml
from redis.exceptions import RedisError

from refind.config import load_config
from refind.indexer.config import RedisMetadataConfig
from refind.indexer.redis_meta import MetadataUnavailable, RedisMetadata
from refind.indexer.verify import check_gallery
from tests.conftest import (
    LIGHT_DETECTOR,
    MODELS_DIR,
    PETS_VIDEO,
    STARTS_RAY,
    need_models,
    need_pets,
)
from tests.faults.conftest import LiveRun
from tests.servers import RedisServer, _redis_bin, free_port

pytestmark = [pytest.mark.slow, STARTS_RAY]


def _certificate(tmp: Path) -> tuple[Path, Path]:
    """A self-signed certificate for 127.0.0.1 and its key (Debian's openssl)."""
    cert, key = tmp / "cert.pem", tmp / "key.pem"
    done = subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout",
                           str(key), "-out", str(cert), "-days", "1", "-subj", "/CN=127.0.0.1",
                           "-addext", "subjectAltName=IP:127.0.0.1"], capture_output=True)
    if done.returncode != 0:
        pytest.skip(f"openssl could not make a certificate: {done.stderr[-500:]!r}")
    return cert, key


def _ray_logs() -> list[Path]:
    """Every log file of this test session's Ray (the driver's, raylet's, each worker's)."""
    node = getattr(ray._private.worker, "_global_node", None)  # where Ray keeps its session
    session = Path(node.get_session_dir_path()) if node else Path("/tmp/ray/session_latest")
    return [p for p in (session / "logs").rglob("*") if p.is_file()]


def test_redis_with_a_password_over_tls_and_no_secret_in_any_log(
    ray_local, http_camera_factory, tmp_path, monkeypatch, caplog, capsys
) -> None:
    need_models()
    need_pets()
    cert, key = _certificate(tmp_path)
    password = f"pw-{uuid.uuid4().hex}"
    port = free_port()
    redis = RedisServer("redis-tls", [
        _redis_bin(), "--port", "0", "--tls-port", str(port), "--bind", "127.0.0.1",
        "--tls-cert-file", str(cert), "--tls-key-file", str(key), "--tls-ca-cert-file",
        str(cert), "--tls-auth-clients", "no", "--requirepass", password, "--save", "",
        "--appendonly", "no", "--dir", str(tmp_path)], port, tmp_path / "redis.log")
    redis.start()
    cam = http_camera_factory(PETS_VIDEO)
    monkeypatch.setenv("REFIND_TEST_REDIS_PASSWORD", password)
    config = tmp_path / "serve.yaml"
    config.write_text(yaml.safe_dump({
        "data_dir": str(tmp_path / "data"), "models": {"dir": str(MODELS_DIR)},
        "cameras": [{"name": "pets", "url": cam.url, "sample_fps": 5}],
        "crops": {"early_after_s": 0.5},
        "ray": {"embedder_num_cpus": 0, "detector_num_cpus": 0},
        "detector": LIGHT_DETECTOR,
        "metadata": {"type": "redis", "url": "rediss://:${REFIND_TEST_REDIS_PASSWORD}@"
                     f"127.0.0.1:{port}/0?ssl_ca_certs={cert}"},
        "live": {"reconnect": {"initial_backoff_s": 0.2, "max_backoff_s": 1.0}},
    }))
    cfg = load_config(config)
    assert password in cfg.metadata.url  # expanded for use, never written back
    caplog.set_level(logging.DEBUG)
    try:
        run = LiveRun(cfg)
        try:
            run.wait_for_crops(5)
            meta = RedisMetadata(RedisMetadataConfig(url=cfg.metadata.url))
            assert meta.tracks("pets"), "no track metadata reached Redis over TLS"
            redis.stop()  # the error paths log the server's URL
            time.sleep(4)
            redis.start()
            n = len(run.recorded())
            deadline = time.monotonic() + 60
            while len(run.recorded()) < n + 3 or not meta.cameras():
                assert time.monotonic() < deadline, "no crops or camera in Redis after restart"
                time.sleep(0.5)
        finally:
            run.stop()
    finally:
        redis.stop()
    assert check_gallery(run.cfg).ok
    # without the password or over plain TCP, Redis refuses
    for url in (f"rediss://127.0.0.1:{port}/0?ssl_ca_certs={cert}",
                f"redis://:{password}@127.0.0.1:{port}/0"):
        redis.start()
        try:
            with pytest.raises((MetadataUnavailable, RedisError)):
                RedisMetadata(RedisMetadataConfig(url=url, retries=0)).cameras()
        finally:
            redis.stop()
    out = capsys.readouterr()
    logs = _ray_logs()
    assert logs, "no Ray logs found to search"
    texts = {"driver log records": caplog.text, "driver output": out.out + out.err}
    texts |= {str(p): p.read_text(errors="replace") for p in logs}
    assert any("redis" in t.lower() for t in texts.values()), "the Redis errors logged nothing"
    leaked = [where for where, text in texts.items() if password in text]
    assert not leaked, f"the Redis password appears in {leaked}"
