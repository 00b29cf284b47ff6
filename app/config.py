"""Config sections of the services: `refind serve`'s HTTP and the search API."""

from __future__ import annotations

from pathlib import Path

from pydantic import (
    Field,
    model_validator,
)

from refind.streaming.config import SECRET, Section


class ServeConfig(Section):
    host: str = Field("127.0.0.1", description="Address of the health and metrics endpoint.")
    port: int = Field(8080, ge=0, le=65535, description="Port; 0 picks a free one.")
    save_interval_s: float = Field(
        5.0, gt=0.0, le=3600.0, description="Index writers persist their shard this often."
    )


class ApiKeyConfig(Section):
    """One client of the search API: its name (for the audit log), its key's hash, its cameras."""

    name: str = Field(..., pattern=r"^[A-Za-z0-9_.@-]{1,64}$", description="Client name, logged.")
    key_sha256: str = Field(
        ..., pattern=r"^[0-9a-f]{64}$", json_schema_extra=SECRET,
        description="sha256 of the key, lowercase hex (`printf %s KEY | sha256sum`); never the "
        "key itself.",
    )
    cameras: tuple[str, ...] = Field(
        (), description="Cameras this key may search and view; empty = every camera."
    )
    forget: bool = Field(
        False, description="May this key forget people (delete a track for good) on its cameras? "
        "Every forget is audited with its reason."
    )
    manage_cameras: bool = Field(
        False, description="May this key add and remove live cameras (through api.serve_url)? "
        "Audited."
    )
    manage_watches: bool = Field(
        False, description="May this key add and remove watches (standing queries that alert "
        "when a person shows up) on its cameras? Audited."
    )


class ApiConfig(Section):
    """The HTTP search API (`refind api`): who may call it, what it logs, how much it accepts."""

    host: str = Field("127.0.0.1", description="Address the API listens on.")
    port: int = Field(8090, ge=0, le=65535, description="Port; 0 picks a free one.")
    keys: tuple[ApiKeyConfig, ...] = Field(
        (), description="API keys (sent as the X-API-Key header). With none, the API refuses to "
        "start unless allow_anonymous is set."
    )
    allow_anonymous: bool = Field(
        False, description="Serve without keys (every caller sees every camera); only allowed "
        "when `keys` is empty. For loopback development only."
    )
    audit_log: Path | None = Field(
        None, description="JSON-lines file recording every search; None = <data_dir>/audit.jsonl."
    )
    serve_url: str | None = Field(
        None, pattern=r"^https?://[^\s/]+(:\d+)?/?$", description="`refind serve`'s control "
        "port (http://HOST:PORT, serve.host/serve.port): the UI's cameras page then shows each "
        "camera live and adds and removes cameras. None: stored tracks only (and live state "
        "from Redis when metadata is there)."
    )
    session_hours: float = Field(
        12.0, gt=0.0, le=720.0, description="A web UI sign-in (a key entered once in a browser) "
        "lasts this long, or until the browser signs out."
    )
    secure_cookies: bool = Field(
        False, description="Mark the UI's session cookie Secure (sent over HTTPS only): set it "
        "when operators reach the API over HTTPS through a proxy that ends TLS; a request that "
        "arrives over HTTPS gets it anyway."
    )
    session_secret: str | None = Field(
        None, min_length=32, json_schema_extra=SECRET, description="Signs web UI sessions, so "
        "every replica of the API accepts a session any of them started: set the same secret "
        "(32+ characters, e.g. ${REFIND_SESSION_SECRET}) on all of them. None: a random secret "
        "per process (sessions end when it restarts)."
    )
    searches_per_min: int = Field(
        120, ge=0, le=100_000, description="Searches one key may make a minute (in bursts of "
        "up to half of that); over it: 429 with Retry-After. 0: no limit."
    )
    key_failures_per_min: int = Field(
        30, ge=0, le=10_000, description="Wrong keys one client address may present a minute "
        "(at the web UI's sign-in or in X-API-Key), in bursts of up to half of that; then 429 "
        "until it recovers, even for a right key (slows key guessing). 0: no limit."
    )
    max_body_kb: int = Field(
        64, ge=1, le=10_240, description="Largest request body of every route but the searches "
        "(they have their own limits), in KiB: 413 above it."
    )
    camera_url_schemes: tuple[str, ...] = Field(
        ("rtsp", "rtsps", "http", "https", "udp"), description="URL schemes a camera added "
        "through the API may use (add `file` to allow paths on the serve host)."
    )
    camera_hosts: tuple[str, ...] = Field(
        (), description="Hosts (names or CIDR ranges like 10.4.0.0/16) a camera added through the "
        "API may be on; empty: any host but loopback, link-local (cloud metadata) and unspecified "
        "addresses, which are always refused unless listed here."
    )
    max_upload_mb: float = Field(
        20.0, gt=0.0, le=20.0,
        description="Largest query image accepted, in MiB (the query decoder's cap is 20).",
    )

    @model_validator(mode="after")
    def _keys_are_distinct(self) -> ApiConfig:
        for attr in ("name", "key_sha256"):
            values = [getattr(k, attr) for k in self.keys]
            if len(set(values)) != len(values):
                raise ValueError(f"api.keys: every key needs a distinct {attr}")
        if self.allow_anonymous and self.keys:
            raise ValueError("api.allow_anonymous needs an empty api.keys (keys are then unused)")
        return self
