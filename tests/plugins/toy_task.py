"""Registers the toy ankle task on import: the plug-in module a service or CLI names in CARE_TASK_MODULES."""

from __future__ import annotations

from care_companion.tasks import register_task
from tests.plugins.ankle import ANKLE

register_task(ANKLE)
