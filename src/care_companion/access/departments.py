"""Department scoping: technicians and radiologists see and file records of their own department only.

Records of another department are answered exactly as missing ones (:class:`NotFound`), so a caller cannot
probe which ids exist elsewhere; roles with ``READ_ALL_DEPARTMENTS`` (admins) see every department.
"""

from __future__ import annotations

from care_companion.errors import Forbidden
from care_companion.records.models import User
from care_companion.records.repos import NotFound
from care_companion.security import Permission, can


def visible_department(user: User) -> str | None:
    """The one department whose records ``user`` sees, or None for all (roles with READ_ALL_DEPARTMENTS)."""
    return None if can(user.role, Permission.READ_ALL_DEPARTMENTS) else user.department


def check_department(user: User, department: str, *, what: str = "record") -> None:
    """Raise :class:`NotFound` ("``what`` not found", the same answer as a missing record: existence does not
    leak) when ``department`` is not visible to ``user``."""
    visible = visible_department(user)
    if visible is not None and department != visible:
        raise NotFound(f"{what} not found")


def check_assignable(user: User, department: str) -> None:
    """Raise :class:`Forbidden` when ``user`` may not put a record in ``department`` (non-admins: own only)."""
    visible = visible_department(user)
    if visible is not None and department != visible:
        raise Forbidden(f"a {user.role} may only create or move records in their own department ({visible!r})")
