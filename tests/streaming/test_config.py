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
    ("data", "message"),
    [
        ({"detector": {"conf_treshold": 0.3}}, "detector.conf_treshold"),
        ({"detector": {"conf_threshold": 1.5}}, "detector.conf_threshold"),
        ({"detector": {"type": "yolov99"}}, "detector"),
        ({"embedder": {"batch_size": 0}}, "embedder.batch_size"),
        ({"trackr": {}}, "trackr"),
        ({"tracker": {"max_lost_s": -1}}, "tracker.max_lost_s"),
        ({"ingest": {"sample_fps": "fast"}}, "ingest.sample_fps"),
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
        ("data_dir: ${REFIND_TEST_UNSET_VAR}", r"REFIND_TEST_UNSET_VAR\} is not set"),
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


def test_env_placeholder_is_substituted(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("REFIND_TEST_DIR", str(tmp_path))
    p = tmp_path / "env.yaml"
    p.write_text("data_dir: ${REFIND_TEST_DIR}/x\n")
    assert load_config(p).data_dir == tmp_path / "x"
