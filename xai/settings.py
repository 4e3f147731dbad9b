"""Settings read from the environment (prefix ``XAI_``) at the edges: gateway, worker, CLI.

Libraries inside (explainers, ingest, registry) take plain arguments and never read the environment.
"""

from __future__ import annotations

import hashlib
from functools import lru_cache
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, StringConstraints, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

Scope = Literal["explain", "admin"]


MIN_KEY_CHARS = 16  # a shorter secret can be guessed by trying; generate one: python -c "import secrets; print(secrets.token_urlsafe(32))"


# A host a callback may be sent to, as it appears in a URL (no port: any port of an allowed host).
CallbackHost = Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9.-]+$|^\[[0-9A-Fa-f:.]+\]$", max_length=253,
                                                to_lower=True)]
# A web origin exactly as a browser sends it: no "*" (images of patients are not for any page), no path.
Origin = Annotated[str, StringConstraints(pattern=r"^https?://[A-Za-z0-9.-]+(:[0-9]{1,5})?$", max_length=253)]

class ApiKey(BaseModel):
    """One API key. Give ``key_sha256`` (preferred, the hex digest of the key) or the plain ``key``.

    Refused at start-up: an empty name, a plain key shorter than 16 characters, a digest that is not
    64 hex digits, or both or neither given.
    """

    name: str = Field(..., min_length=1, max_length=64, pattern=r"^[A-Za-z0-9._-]+$")
    key: str | None = Field(None, min_length=MIN_KEY_CHARS)
    key_sha256: str | None = Field(None, pattern=r"^[0-9a-fA-F]{64}$")
    scopes: list[Scope] = Field(["explain"], min_length=1)
    callback_secret: str | None = Field(None, min_length=MIN_KEY_CHARS, description="Signs the callbacks of this "
                                        "key's jobs (HMAC-SHA256); a key without one cannot ask for callbacks")

    @model_validator(mode="after")
    def _one_secret(self) -> ApiKey:
        if (self.key is None) == (self.key_sha256 is None):
            raise ValueError(f"API key {self.name!r} needs exactly one of 'key' and 'key_sha256'")
        return self

    def digest(self) -> str:
        return self.key_sha256.lower() if self.key_sha256 else hashlib.sha256(self.key.encode()).hexdigest()


class DicomwebDestination(BaseModel):
    """A STOW-RS endpoint DICOM results may be sent to. Credentials come from a file only the service reads,
    never from a request: JSON ``{"username": ..., "password": ...}`` (HTTP basic) or ``{"token": ...}`` (bearer)."""

    model_config = ConfigDict(extra="forbid")

    url: Annotated[str, StringConstraints(pattern=r"^https?://[^\s]+$", max_length=2000)] = Field(
        ..., description="STOW-RS base URL: studies are POSTed to <url>/studies")
    credentials_file: Path | None = Field(None, description="JSON file with the credentials (mode 0600)")


OutputKind = Literal["png", "dicom"]


class DicomRoute(BaseModel):
    """One rule of ``XAI_DICOM_ROUTES``: instances a PACS STOWs to /dicomweb/studies that match every given
    attribute (Modality, BodyPartExamined, SOP Class UID; unset matches any) are explained so."""

    model_config = ConfigDict(extra="forbid")

    modality: str | None = Field(None, max_length=16)
    body_part_examined: str | None = Field(None, max_length=16)
    sop_class_uid: str | None = Field(None, pattern=r"^[0-9.]{1,64}$")
    model_id: str = Field(..., min_length=1, max_length=128)
    model_version: int | None = Field(None, ge=1)
    methods: list[str] = Field(..., min_length=1)
    params: dict[str, dict[str, Any]] = Field(default_factory=dict, description="parameters per method")
    outputs: list[OutputKind] = Field(["dicom"], min_length=1)
    destination: str | None = Field(None, description="a name of XAI_DICOMWEB_DESTINATIONS")
    faithfulness: bool = Field(False, description="also score deletion and insertion AUC (they go into the SR)")

    def matches(self, modality: str | None, body_part: str | None, sop_class_uid: str | None) -> bool:
        wanted = ((self.modality, modality), (self.body_part_examined, body_part), (self.sop_class_uid, sop_class_uid))
        return all(rule is None or (value or "").upper() == rule.upper() for rule, value in wanted)


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="XAI_", env_file=None, extra="ignore")

    redis_url: str | None = Field(None, description="Redis to use; unset starts an embedded one (xai serve)")
    data_dir: Path = Field(Path("var"), description="State of embedded mode: Redis AOF, model store")
    model_dir: Path | None = Field(None, description="Model store shared by gateway and workers; default DATA_DIR/models")
    host: str = Field("127.0.0.1", description="Gateway bind address; beyond loopback needs API keys")
    port: int = Field(8000, description="Gateway port")
    api_keys: list[ApiKey] = Field(default_factory=list, description="JSON list of {name, key|key_sha256, scopes}")
    cors_origins: list[Origin] = Field(default_factory=list, description="Origins (scheme://host[:port]) whose pages may "
                                    "call the API from a browser, as a JSON list; [] allows none")
    url_signing_secret: str | None = Field(None, min_length=MIN_KEY_CHARS, description="Signs the short-lived result "
                                           "file URLs an <img> loads without a key; unset: a random secret kept in "
                                           "Redis, shared by every gateway on it")
    signed_url_ttl_s: int = Field(900, ge=10, le=7 * 24 * 3600, description="How long a signed result file URL works")
    callback_hosts: list[CallbackHost] = Field(default_factory=list, description="Hosts a job's callback_url may "
                                               "name, as a JSON list; [] allows no callbacks")
    callback_attempts: int = Field(8, ge=1, le=20, description="Deliveries tried before a callback is given up")
    callback_backoff_s: float = Field(2.0, gt=0, le=600, description="Wait before the second delivery; doubled "
                                      "after each failure, at most 300 s")
    callback_timeout_s: float = Field(10.0, gt=0, le=120, description="How long one delivery waits for an answer")
    dicomweb_destinations: dict[Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9_-]{1,64}$")],
                                DicomwebDestination] = Field(
        default_factory=dict, description="JSON object: name -> {url, credentials_file}; a job's destination=<name> "
        "sends its DICOM results there")
    dicomweb_attempts: int = Field(5, ge=1, le=20, description="Tries of one STOW-RS delivery (connection errors, 5xx)")
    dicomweb_backoff_s: float = Field(1.0, gt=0, le=300, description="Wait before the second try; doubled after each")
    dicomweb_timeout_s: float = Field(30.0, gt=0, le=600, description="How long one STOW-RS request waits")
    dicom_routes: list[DicomRoute] = Field(default_factory=list, description="JSON list of rules routing instances "
                                           "STOWed to /dicomweb/studies; the first that matches is used")
    device: str = Field("auto", description="Worker torch device: auto, cpu, cuda, cuda:N")
    torch_threads: int = Field(0, ge=0, le=256, description="CPU threads per worker for torch; 0: half the "
                               "machine's cores (at least 1), since several workers share them")
    input_ttl_s: int = Field(6 * 3600, description="How long an uploaded input is kept for its job")
    result_ttl_s: int = Field(24 * 3600, description="How long finished results are kept")
    failure_ttl_s: int = Field(24 * 3600, description="How long failed jobs are kept")
    timeout_fast_s: int = Field(300, description="Job timeout on the fast queue")
    timeout_slow_s: int = Field(3600, description="Job timeout on the slow queue")
    timeout_train_s: int = Field(48 * 3600, description="Job timeout on the train queue")
    training_data_dir: Path | None = Field(None, description="Folders the train API may read; default DATA_DIR/training-data")
    max_model_bytes: int = Field(2 * 1024**3, description="Largest accepted model weights upload")
    max_upload_bytes: int = Field(64 * 1024 * 1024, description="Largest accepted upload")
    stow_max_bytes: int = Field(512 * 1024 * 1024, description="Largest accepted STOW-RS request (all its "
                                "instances; each is also held to max_upload_bytes)")
    max_pixels: int = Field(40_000_000, description="Largest accepted image (rows x columns)")
    max_frames: int = Field(2000, description="Largest accepted number of frames in a multi-frame DICOM")
    model_cache_size: int = Field(4, description="Models a worker keeps resident (LRU)")
    heartbeat_s: int = Field(5, description="Worker heartbeat period while a job runs")
    worker_ttl_s: int = Field(20, ge=16, description="An idle worker heartbeats every worker_ttl_s - 15 s; /readyz "
                              "counts only workers heard from within worker_ttl_s")
    abandoned_after_s: int = Field(30, description="A started job whose worker is silent this long is failed")
    batch_max: int = Field(16, ge=1, description="Most waiting jobs of one model, method and params explained in one pass")
    batch_wait_ms: int = Field(0, ge=0, le=10_000, description="How long a worker waits for more compatible jobs "
                               "before running a batch smaller than batch_max")
    max_queue_depth: int = Field(10_000, ge=0, description="Waiting jobs a queue takes before new ones get 429 "
                                 "queue_full (0: no limit)")
    rate_limit_per_minute: int = Field(6_000, ge=0, description="Jobs one API key may submit per minute before 429 "
                                       "rate_limited (0: no limit)")
    redis_memory_headroom: float = Field(0.1, ge=0.0, lt=1.0, description="Share of Redis's maxmemory kept free: "
                                         "past it new jobs get 503 storage_full, before Redis itself refuses writes")
    display_max_side: int = Field(1024, ge=64, le=8192, description="Long side of the rendered PNGs and of the "
                                  "input copy kept for them; results never grow past it")
    result_store: Literal["redis", "filesystem"] = Field("redis", description="Where result files live")
    result_dir: Path | None = Field(None, description="Folder of the filesystem result store; default DATA_DIR/results")
    log_level: str = Field("INFO", description="Log level")
    api_docs: bool = Field(True, description="Serve the interactive schema at /docs and the OpenAPI document at "
                           "/openapi.json (without keys: they describe the API, not its data)")
    redis_maxmemory_mb: int = Field(1024, ge=0, description="Memory limit of the embedded Redis (noeviction: "
                                    "past it Redis refuses writes instead of dropping jobs); 0: no limit")
    redis_appendfsync: Literal["always", "everysec"] = Field(
        "always", description="When the embedded Redis fsyncs its AOF: 'always' before it answers, so a job the "
        "gateway accepted survives a kill -9 of Redis or a power cut (about 1 ms per request here); 'everysec' "
        "may lose the last second")

    @model_validator(mode="after")
    def _routes_name_destinations(self) -> Settings:
        unknown = {r.destination for r in self.dicom_routes if r.destination} - set(self.dicomweb_destinations)
        if unknown:
            raise ValueError(f"XAI_DICOM_ROUTES names destinations not in XAI_DICOMWEB_DESTINATIONS: {sorted(unknown)}")
        return self

    @property
    def model_store_dir(self) -> Path:
        return self.model_dir or self.data_dir / "models"

    @property
    def result_root(self) -> Path:
        return self.result_dir or self.data_dir / "results"

    @property
    def training_root(self) -> Path:
        return self.training_data_dir or self.data_dir / "training-data"

    def timeout_for(self, queue: str) -> int:
        return {"fast": self.timeout_fast_s, "slow": self.timeout_slow_s, "train": self.timeout_train_s}[queue]


@lru_cache
def get_settings() -> Settings:
    return Settings()
