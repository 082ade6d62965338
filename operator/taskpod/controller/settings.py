"""The operator's configuration: one object, built once in `__main__` and passed in.

Every knob is a command-line flag and a TASKPOD_* environment variable (the chart sets the variables); a
flag wins over its variable, and a variable over the default. Anthropic's own variables (ANTHROPIC_API_KEY,
ANTHROPIC_MODEL, ANTHROPIC_BASE_URL) are read here too, once: nothing else reads the environment.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Annotated, Any, Literal

from pydantic import Field, PositiveFloat, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

NAMING_VARIABLES = ("ANTHROPIC_API_KEY", "ANTHROPIC_MODEL", "ANTHROPIC_BASE_URL", "TASKPOD_NAMING_TIMEOUT")


class Settings(BaseSettings):
    """What `python -m taskpod --help` lists; docs/operator.md's table documents each."""

    model_config = SettingsConfigDict(env_prefix="TASKPOD_", frozen=True, extra="forbid")

    namespaces: Annotated[tuple[str, ...], NoDecode] = Field(
        default=(),
        description="watch this namespace (repeatable; the variable takes a,b); none: every namespace",
    )
    all_namespaces: bool = Field(default=False, description="watch every namespace (the default)")
    liveness: str | None = Field(
        default=None, description="Kopf's health probe URL, e.g. http://0.0.0.0:8080/healthz"
    )
    agent_transport: Literal["direct", "proxy"] = Field(
        default="direct",
        description="reach agents at the pod IP (direct, in-cluster) or through the API server's pod "
        "proxy (proxy, works from outside)",
    )
    agent_grace_seconds: PositiveFloat = Field(
        default=30.0, description="how long an agent may be silent before the phase is Unknown"
    )
    agent_probe_after_seconds: PositiveFloat = Field(
        default=60.0,
        description="ask an agent whose event stream has been quiet this long whether it still answers "
        "(at most 20 such probes a second in all)",
    )
    report_listen: str | None = Field(
        default=None, description="serve the agents' report endpoint here, e.g. 0.0.0.0:8081"
    )
    report_url: str | None = Field(
        default=None,
        description="the report endpoint as workspaces reach it, e.g. "
        "http://taskpod.taskpod-system.svc:8081/report",
    )
    http_listen: str | None = Field(
        default=None, description="serve /metrics (Prometheus), /healthz and /readyz here, e.g. 0.0.0.0:8080"
    )
    leader_election: bool = Field(
        default=False,
        description="reconcile only while holding a coordination.k8s.io Lease, so replicas stand by",
    )
    lease_name: str = Field(default="taskpod-operator", description="the Lease's name")
    lease_namespace: str | None = Field(
        default=None,
        description="the Lease's namespace (default: POD_NAMESPACE, else the in-cluster ServiceAccount's, "
        "else default)",
    )
    verbose: bool = Field(default=False, description="debug logging")
    # ANTHROPIC_* and TASKPOD_NAMING_TIMEOUT, for display names of tasks applied without one (taken from
    # the environment by `from_environment`, not by a variable of its own).
    naming: Mapping[str, str] = Field(default_factory=dict, exclude=True)

    @field_validator("namespaces", mode="before")
    @classmethod
    def _split(cls, value: Any) -> Any:
        if isinstance(value, str):
            names = tuple(ns.strip() for ns in value.split(",") if ns.strip())
            if not names:  # " , " would otherwise mean every namespace: the widest scope, by a typo
                raise ValueError("names no namespace; leave it unset to watch every namespace")
            return names
        return value

    @field_validator("report_listen", "http_listen")
    @classmethod
    def _host_port(cls, value: str | None) -> str | None:
        """HOST:PORT, HOST optional ("0.0.0.0" then); refused here rather than when the server starts."""
        if value is None:
            return None
        _host, sep, port = value.rpartition(":")
        if not sep or not port.isdigit() or not 0 < int(port) < 65536:
            raise ValueError(f"{value!r} is not HOST:PORT (a port from 1 to 65535)")
        return value

    @model_validator(mode="after")
    def _one_scope(self) -> Settings:
        if self.all_namespaces and self.namespaces:
            raise ValueError("choose namespaces or all namespaces, not both")
        return self

    @property
    def cluster_wide(self) -> bool:
        return not self.namespaces

    @property
    def report_host_port(self) -> tuple[str, int] | None:
        if not self.report_listen:
            return None
        host, _sep, port = self.report_listen.rpartition(":")
        return host or "0.0.0.0", int(port)

    @classmethod
    def from_environment(cls, **flags: Any) -> Settings:
        """The settings from these flags (None: not given), then TASKPOD_* variables, then defaults."""
        given = {name: value for name, value in flags.items() if value is not None}
        naming = {name: os.environ[name] for name in NAMING_VARIABLES if os.environ.get(name)}
        return cls(**given, naming=naming)
