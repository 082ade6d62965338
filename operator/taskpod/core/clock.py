"""The one clock of status times: UTC, in whole seconds, as Kubernetes writes its own timestamps."""

from __future__ import annotations

import datetime as dt


def now() -> dt.datetime:
    return dt.datetime.now(dt.UTC).replace(microsecond=0)
