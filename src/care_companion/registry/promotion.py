"""Model promotion as the service's admins do it: list a task's versions, move an alias, with the registry's
failures turned into clear errors (never an unexplained crash).

No such model or version is :class:`NotFound`, a bad alias :class:`RequestError`, the registry itself failing
(unreachable, timing out) :class:`ServiceUnavailable` (``registry_unavailable``). The calls block: run them in
a worker thread from async code.
"""

from __future__ import annotations

import logging
from collections.abc import Collection, Iterator
from contextlib import contextmanager

from care_companion.config import Settings
from care_companion.errors import CareError, ConfigError, ModelError, RequestError, ServiceUnavailable
from care_companion.records.repos import NotFound
from care_companion.registry.models import VersionInfo, alias_version, list_versions, set_alias

log = logging.getLogger(__name__)


def served_task(task: str, served: Collection[str]) -> str:
    """``task`` when it is one of the ``served`` tasks; :class:`NotFound` otherwise."""
    if task not in served:
        raise NotFound(f"unknown task {task!r}; this service serves: {', '.join(served)}")
    return task


@contextmanager
def registry_errors() -> Iterator[None]:
    """Registry failures as clear errors: no such model or version :class:`NotFound`, a bad alias
    :class:`RequestError`, the registry itself failing :class:`ServiceUnavailable`."""
    try:
        yield
    except ModelError as exc:
        raise NotFound(exc.detail) from exc
    except ConfigError as exc:
        raise RequestError(exc.detail) from exc
    except CareError:
        raise
    except Exception as exc:
        log.warning("model registry call failed", exc_info=True)
        raise ServiceUnavailable(
            f"the model registry is unavailable ({type(exc).__name__}); retry later", code="registry_unavailable"
        ) from exc


def registered_versions(task: str, settings: Settings) -> list[VersionInfo]:
    """Every registered version of model ``task``, oldest first (errors as in :func:`registry_errors`)."""
    with registry_errors():
        return list_versions(task, settings)


def move_alias(task: str, version: int, alias: str, settings: Settings) -> int | None:
    """Point ``alias`` of model ``task`` at ``version``; returns the version it pointed at before (None: none).
    Errors as in :func:`registry_errors`."""
    with registry_errors():
        previous = alias_version(task, alias, settings)
        set_alias(task, version, alias, settings)
    return previous
