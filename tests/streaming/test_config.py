from __future__ import annotations

from pathlib import Path

import pytest

from refind.config import RefindConfig, load_config, parse_config
from refind.streaming.config import ConfigError

CONFIGS = sorted((Path(__file__).resolve().parents[2] / "configs").glob("*.yaml"))


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.name)
def test_every_shipped_config_loads(path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import re

    for name in re.findall(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}", path.read_text()):
        monkeypatch.setenv(name, "secret")  # placeholders are for secrets
    assert isinstance(load_config(path), RefindConfig)


def test_placeholder_in_a_comment_is_ignored(tmp_path: Path) -> None:
    p = tmp_path / "c.yaml"
    p.write_text("# url: rtsp://u:${REFIND_NOT_SET_ANYWHERE}@h/s\ndata_dir: x\n")
    assert load_config(p).data_dir == Path("x")


def test_default_yaml_equals_embedded_defaults() -> None:
    cfg = load_config(Path(__file__).resolve().parents[2] / "configs" / "default.yaml")
    assert cfg == RefindConfig()


@pytest.mark.parametrize(
    ("section", "kind", "model"),
    [
        ({}, "omz_person", "person-detection-0202"),
        ({"model": "person-detection-0200"}, "omz_person", "person-detection-0200"),
        ({"model": "yolox_nano"}, "yolox", "yolox_nano"),
        ({"type": "yolox"}, "yolox", "yolox_nano"),
    ],
)
def test_a_detector_without_type_follows_its_model(section: dict, kind: str, model: str) -> None:
    detector = parse_config({"detector": section}).detector
    assert (detector.type, detector.model) == (kind, model)


@pytest.mark.parametrize(
    ("section", "fit"),
    [({}, "aspect"), ({"model": "person-detection-0200"}, "stretch"),
     ({"letterbox": True}, "letterbox"), ({"letterbox": False}, "stretch"),
     ({"fit": "stretch"}, "stretch")],
)
def test_an_omz_detector_fits_frames_as_measured_best_unless_told(section: dict, fit: str) -> None:
    """Left out, ``fit`` is the model's best on PETS; ``letterbox: true|false`` was the setting
    before ``fit`` and keeps its meaning."""
    assert parse_config({"detector": section}).detector.fit == fit


@pytest.mark.parametrize(
    ("section", "message"),
    [({"letterbox": True, "fit": "aspect"}, "give `fit` alone"),
     ({"letterbox": "yes"}, "letterbox must be true or false"),
     ({"fit": "crop"}, "detector.fit: Input should be .aspect."),
     ({"fit": "stretch", "input_area": 0.5}, "only `fit: aspect` does"),
     ({"model": "person-detection-0200", "input_area": 0.5}, r"\(fit is stretch\)"),
     ({"input_area": 0.0}, "detector.input_area")],
)
def test_a_wrong_fit_is_named(section: dict, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        parse_config({"detector": section})


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ({"detector": {"conf_treshold": 0.3}}, "detector.conf_treshold"),
        ({"detector": {"conf_threshold": 1.5}}, "detector.conf_threshold"),
        ({"detector": {"type": "yolov99"}}, "detector"),
        ({"embedder": {"batch_size": 0}}, "embedder.batch_size"),
        ({"trackr": {}}, "trackr"),
        ({"tracker": {"max_lost_s": -1}}, "tracker.max_lost_s"),
        ({"ingest": {"sample_fps": "fast"}}, "ingest.sample_fps"),
        ({"cameras": [{"name": "a", "url": "x.mp4", "region": [0.5, 0, 0.4, 1]}]},
         r"cameras.0.region.*left half"),
        ({"identities": {"links": [{"a": "x", "b": "y", "min_s": 9, "max_s": 1}]}},
         "identities.links.0"),
        ({"identities": {"link_threshold": 2}}, "identities.link_threshold"),
        ([1, 2], "top level must be a mapping"),
    ],
)
def test_bad_values_name_the_key(data: object, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        parse_config(data, "test.yaml")  # type: ignore[arg-type]


def test_unknown_key_says_so() -> None:
    with pytest.raises(ConfigError, match="unknown key"):
        parse_config({"gallery": {"index_factroy": "Flat"}})


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("detector: [unclosed", "not valid YAML"),
        ("kafka: {sasl_password: '${REFIND_TEST_UNSET_VAR}'}",
         r"kafka.sasl_password: environment variable \$\{REFIND_TEST_UNSET_VAR\} is not set"),
        ("data_dir: ${HOME}/x", r"data_dir: \$\{VAR\} placeholders are only for secrets"),
        ("search: {timezone: '${TZ_NAME}'}", r"search.timezone: \$\{VAR\} placeholders"),
        ("cameras: [{name: a, url: 'x', rtsp_transport: '${T}'}]",
         r"cameras\[0\].rtsp_transport: \$\{VAR\} placeholders are only for secrets"),
        ("api: {keys: [{name: a, key_sha256: '" + "0" * 64 + "', cameras: ['${GATE}']}]}",
         r"api.keys\[0\].cameras\[0\]: \$\{VAR\} placeholders are only for secrets \(.*"
         r"cameras\[\].url, .*api.keys\[\].key_sha256, api.session_secret\)"),
    ],
)
def test_bad_files(tmp_path: Path, text: str, message: str) -> None:
    p = tmp_path / "bad.yaml"
    p.write_text(text)
    with pytest.raises(ConfigError, match=message):
        load_config(p)


def test_missing_file() -> None:
    with pytest.raises(ConfigError, match="config file not found"):
        load_config("/nonexistent/refind.yaml")


SECRETS_YAML = """\
cameras:
  - {name: gate, url: "rtsp://viewer:${REFIND_T_CAM}@10.0.0.9/stream"}
kafka: {sasl_username: refind, sasl_password: "${REFIND_T_KAFKA}"}
metadata: {type: redis, url: "redis://:${REFIND_T_REDIS}@redis:6379/0"}
blobs: {url: "s3://bucket/${REFIND_T_PREFIX}"}
api:
  keys: [{name: ops, key_sha256: "${REFIND_T_SHA}"}]
"""


def test_placeholders_expand_in_the_secret_fields(tmp_path: Path, monkeypatch) -> None:
    sha = "ab" * 32
    for name, value in [("REFIND_T_CAM", "pw1"), ("REFIND_T_KAFKA", "pw2"),
                        ("REFIND_T_REDIS", "pw3"), ("REFIND_T_PREFIX", "crops"),
                        ("REFIND_T_SHA", sha)]:
        monkeypatch.setenv(name, value)
    p = tmp_path / "env.yaml"
    p.write_text(SECRETS_YAML)
    cfg = load_config(p)
    assert cfg.cameras[0].url == "rtsp://viewer:pw1@10.0.0.9/stream"
    assert (cfg.kafka.sasl_username, cfg.kafka.sasl_password) == ("refind", "pw2")
    assert cfg.metadata.url == "redis://:pw3@redis:6379/0"
    assert cfg.blobs.url == "s3://bucket/crops"
    assert cfg.api.keys[0].key_sha256 == sha
