"""Pydantic models of the Task and TaskTemplate resources; crds/ is the source of truth they mirror.

Handlers parse a raw body into these once, at the edge; nothing deeper digs in dicts.
tests/unit/test_models.py proves that every field, type, default and limit agrees with the CRD schemas.
"""

from __future__ import annotations

import datetime as dt
import re
from collections.abc import Mapping
from dataclasses import dataclass
from enum import StrEnum
from types import MappingProxyType
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, PrivateAttr, TypeAdapter, ValidationError
from pydantic.alias_generators import to_camel

GROUP = "taskpod.dev"
VERSION = "v1alpha1"
API_VERSION = f"{GROUP}/{VERSION}"
DEFAULT_TEMPLATE = "default"
Key = tuple[str, str]  # a Task's namespace and name: what the operator keeps per task is kept by this
DEFAULT_AGENT_PORT = 3284
NAME_PATTERN = r"^[a-z0-9]([-a-z0-9.]*[a-z0-9])?$"
DNS_SUBDOMAIN_PATTERN = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$"
# https://, http://, ssh://, git:// or scp-like (git@host:path), with no password in it: a Secret holds
# credentials. (The API server's patterns are RE2: no look-ahead.)
REPOSITORY_URL_PATTERN = r"^((https?|ssh|git)://[^\s:@/]+(:[0-9]*)?/|(ssh://)?[^\s:@/]+@[^\s:@/]+[:/])\S*$"
# A branch, tag or commit, in the characters git's ref names commonly use; git itself checks the rest
# (`..`, a trailing ".lock") and the clone fails with its message.
# A Kubernetes duration as people write one (30m, 1h30m, 45s), or 0 for off.
DURATION_PATTERN = r"^(0|([0-9]{1,6}h)?([0-9]{1,6}m)?([0-9]{1,7}s)?)$"
GIT_REF_PATTERN = r"^[A-Za-z0-9_][A-Za-z0-9._/+-]*$"
# A path under the volume: relative, and no segment is "." or ".." (each starts with a letter, digit or _)
REPOSITORY_PATH_PATTERN = r"^[A-Za-z0-9_][A-Za-z0-9._-]*(/[A-Za-z0-9_][A-Za-z0-9._-]*)*$"


NO_STATUS: Mapping[str, Any] = MappingProxyType({})  # one empty status: callers may tell it by identity
LONE_SURROGATE = re.compile("[\ud800-\udfff]")


def storable(text: str) -> str:
    """`text` as the API server can keep it: a lone surrogate (JSON's "\\ud83d" with no pair, which an
    agent may send) is not Unicode the API server can store, so it becomes U+FFFD, as Go would make it."""
    return LONE_SURROGATE.sub("\ufffd", text)


def _zoned(moment: dt.datetime) -> dt.datetime:
    return moment if moment.tzinfo is not None else moment.replace(tzinfo=dt.UTC)


# A time in status or metadata, as the API server's date-time takes it: with a zone, or without one,
# which it means as UTC. Read naive, it could not be compared with now, and every reconcile would fail.
Time = Annotated[dt.datetime, AfterValidator(_zoned)]
_TIME = TypeAdapter(Time)


def parse_time(text: object) -> dt.datetime | None:
    """A time as text (in a raw status, or an agent's message), or None if it is none or not a time."""
    if not isinstance(text, str) or not text:
        return None
    try:
        return _TIME.validate_python(text)
    except ValidationError:
        return None


def rfc3339(moment: dt.datetime) -> str:
    """A UTC time as Kubernetes writes it: 2026-11-28T12:00:00Z."""
    return moment.isoformat().replace("+00:00", "Z")


class Phase(StrEnum):
    """The task's status, as Coder Tasks named it."""

    PENDING = "Pending"
    INITIALIZING = "Initializing"
    ACTIVE = "Active"
    PAUSED = "Paused"
    ERROR = "Error"
    UNKNOWN = "Unknown"


class AgentState(StrEnum):
    WORKING = "working"
    IDLE = "idle"
    COMPLETE = "complete"
    FAILED = "failed"


class AgentStatus(StrEnum):
    """AgentAPI's own status: stable means the agent waits for input."""

    STABLE = "stable"
    RUNNING = "running"


class ConditionStatus(StrEnum):
    TRUE = "True"
    FALSE = "False"
    UNKNOWN = "Unknown"


class Model(BaseModel):
    model_config = ConfigDict(alias_generator=to_camel, populate_by_name=True, extra="ignore")

    def dump(self) -> dict[str, Any]:
        """The object as the API shows it: camelCase keys, unset fields left out."""
        return self.model_dump(mode="json", by_alias=True, exclude_none=True)


class EnvVar(Model):
    name: str = Field(min_length=1)
    value: str | None = None
    value_from: dict[str, Any] | None = None


# -- Task ----------------------------------------------------------------------------------------


class SecretReference(Model):
    name: str = Field(min_length=1, max_length=253, pattern=NAME_PATTERN)


class Repository(Model):
    """A git repository the workspace starts from: cloned into the volume once, before the agent starts.
    On a Task, each field set overrides the template's."""

    url: str | None = Field(default=None, min_length=1, max_length=2048, pattern=REPOSITORY_URL_PATTERN)
    ref: str | None = Field(default=None, min_length=1, max_length=255, pattern=GIT_REF_PATTERN)
    branch: str | None = Field(default=None, min_length=1, max_length=255, pattern=GIT_REF_PATTERN)
    path: str | None = Field(default=None, min_length=1, max_length=255, pattern=REPOSITORY_PATH_PATTERN)
    depth: int | None = Field(default=None, ge=0)
    secret_ref: SecretReference | None = None
    push: bool | None = None


class Automation(Model):
    """Lifecycle automation, on a TaskTemplate (the defaults) and a Task (its overrides): see
    core/automation.py."""

    idle_pause: str | None = Field(default=None, min_length=1, max_length=24, pattern=DURATION_PATTERN)
    pause_on_finish: bool | None = None
    delete_after_finish: str | None = Field(
        default=None, min_length=1, max_length=24, pattern=DURATION_PATTERN
    )


class TaskSpec(Automation):
    prompt: str = Field(min_length=1, max_length=65536)
    display_name: str | None = Field(default=None, max_length=64)
    paused: bool = False
    template: str = Field(default=DEFAULT_TEMPLATE, min_length=1, max_length=253, pattern=NAME_PATTERN)
    env: list[EnvVar] | None = None
    repository: Repository | None = None


class AutoPause(Model):
    """An automatic pause: why, when, and the wake annotation's value then (see core/automation.py)."""

    reason: str
    paused_at: Time
    wake: str | None = None
    woken_at: Time | None = None


class StateReport(Model):
    state: AgentState | None = None
    message: str | None = None
    uri: str | None = None
    timestamp: Time | None = None


class Condition(Model):
    type: str = Field(max_length=316)
    status: ConditionStatus
    observed_generation: int | None = Field(default=None, ge=0)
    last_transition_time: Time
    reason: str = Field(max_length=1024)
    message: str = Field(max_length=32768)


class WorkspaceStatus(Model):
    claim: str | None = None
    pod: str | None = None
    pod_ip: str | None = Field(default=None, alias="podIP")
    lifetime: int | None = Field(default=None, ge=0)


class AgentInfo(Model):
    status: AgentStatus | None = None
    type: str | None = None
    healthy: bool | None = None
    reason: str | None = None


class TemplateInfo(Model):
    name: str | None = None
    display_name: str | None = None
    icon: str | None = None


class PromptStatus(Model):
    sha256: str | None = None
    delivered_at: Time | None = None
    lifetime: int | None = Field(default=None, ge=0)


class LogSnapshot(Model):
    config_map: str | None = None
    taken_at: Time | None = None
    messages: int | None = Field(default=None, ge=0)
    bytes: int | None = Field(default=None, ge=0)
    truncated: bool | None = None
    sha256: str | None = None


class PushRecord(Model):
    branch: str | None = None
    commit: str | None = None
    pushed_at: Time | None = None


class GitState(Model):
    """A checkout's state, as the workspace reports it (see controller/reports.py)."""

    url: str | None = None
    branch: str | None = None
    head: str | None = None
    base: str | None = None
    ahead: int | None = Field(default=None, ge=0)
    files_changed: int | None = Field(default=None, ge=0)
    insertions: int | None = Field(default=None, ge=0)
    deletions: int | None = Field(default=None, ge=0)
    uncommitted: int | None = Field(default=None, ge=0)
    reported_at: Time | None = None
    pushed: PushRecord | None = None
    push_error: str | None = None


class TaskStatus(Model):
    phase: Phase | None = None
    message: str | None = None
    display_name: str | None = Field(default=None, max_length=64)
    state: StateReport | None = None
    conditions: list[Condition] | None = None
    workspace: WorkspaceStatus | None = None
    agent: AgentInfo | None = None
    template: TemplateInfo | None = None
    prompt: PromptStatus | None = None
    log_snapshot: LogSnapshot | None = None
    repository: GitState | None = None
    auto_pause: AutoPause | None = None
    idle_since: Time | None = None
    observed_generation: int | None = Field(default=None, ge=0)


class ObjectMeta(Model):
    name: str
    namespace: str
    uid: str = ""
    generation: int = 0
    resource_version: str = ""
    labels: dict[str, str] = Field(default_factory=dict)
    annotations: dict[str, str] = Field(default_factory=dict)
    creation_timestamp: Time | None = None
    deletion_timestamp: Time | None = None


class Task(Model):
    metadata: ObjectMeta
    spec: TaskSpec
    status: TaskStatus = Field(default_factory=TaskStatus)
    _raw: dict[str, Any] = PrivateAttr(default_factory=dict)

    @classmethod
    def from_api(cls, raw: Mapping[str, Any]) -> Task:
        """The Task the API server returned, keeping that object whole for `raw`."""
        task = cls.model_validate(raw)
        task._raw = dict(raw)
        return task

    @property
    def raw(self) -> dict[str, Any]:
        """The object as the API server returned it (every field, unknown ones included)."""
        return self._raw or self.dump()

    @property
    def stored_status(self) -> Mapping[str, Any]:
        """The status exactly as the API server holds it: what a merge patch of status is composed
        against, byte for byte (the parsed `status` would write back times in its own format)."""
        return self._raw.get("status") or NO_STATUS

    @property
    def name(self) -> str:
        return self.metadata.name

    @property
    def namespace(self) -> str:
        return self.metadata.namespace


@dataclass(frozen=True)
class InvalidTask:
    """A Task the API server took and these models refuse. They mirror the CRD, so this is a bug of
    ours: the task shows it (Error) rather than the operator failing on it at every event."""

    raw: Mapping[str, Any]
    message: str

    @property
    def stored_status(self) -> Mapping[str, Any]:
        return self.raw.get("status") or NO_STATUS


# -- TaskTemplate --------------------------------------------------------------------------------


class AgentSpec(Model):
    type: str = Field(default="claude", max_length=63)
    port: int = Field(default=DEFAULT_AGENT_PORT, ge=1, le=65535)


class Resources(Model):
    requests: dict[str, int | str] | None = None
    limits: dict[str, int | str] | None = None


class PodTemplate(Model):
    image: str = Field(min_length=1)
    image_pull_policy: Literal["Always", "IfNotPresent", "Never"] | None = None
    command: list[str] | None = None
    args: list[str] | None = None
    env: list[EnvVar] | None = None
    resources: Resources | None = None
    security_context: dict[str, Any] | None = None
    pod_security_context: dict[str, Any] | None = None
    service_account_name: str | None = None
    annotations: dict[str, str] | None = None
    labels: dict[str, str] | None = None
    node_selector: dict[str, str] | None = None
    tolerations: list[dict[str, Any]] | None = None
    # The rest of what a Pod takes, passed through as Kubernetes' own objects (the CRD types them).
    volumes: list[dict[str, Any]] | None = None
    volume_mounts: list[dict[str, Any]] | None = None
    env_from: list[dict[str, Any]] | None = None
    init_containers: list[dict[str, Any]] | None = None
    sidecars: list[dict[str, Any]] | None = None
    image_pull_secrets: list[dict[str, Any]] | None = None
    runtime_class_name: str | None = Field(default=None, max_length=253, pattern=DNS_SUBDOMAIN_PATTERN)
    affinity: dict[str, Any] | None = None
    priority_class_name: str | None = Field(default=None, max_length=253, pattern=DNS_SUBDOMAIN_PATTERN)
    host_aliases: list[dict[str, Any]] | None = None
    dns_config: dict[str, Any] | None = None
    topology_spread_constraints: list[dict[str, Any]] | None = None


class StorageSpec(Model):
    size: int | str = "10Gi"
    storage_class_name: str | None = None
    mount_path: str = Field(default="/workspace", pattern="^/")


class TaskTemplateSpec(Automation):
    display_name: str | None = Field(default=None, max_length=64)
    icon: str | None = Field(default=None, max_length=2048)
    description: str | None = Field(default=None, max_length=4096)
    agent: AgentSpec = Field(default_factory=AgentSpec)
    pod: PodTemplate
    storage: StorageSpec = Field(default_factory=StorageSpec)
    repository: Repository | None = None


class TaskTemplateStatus(Model):
    conditions: list[Condition] | None = None


class TaskTemplate(Model):
    metadata: ObjectMeta
    spec: TaskTemplateSpec
    status: TaskTemplateStatus = Field(default_factory=TaskTemplateStatus)
