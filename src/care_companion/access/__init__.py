"""Who may do what with the records, and the audit trail of it: the rules behind the HTTP API, without HTTP.

- :mod:`~care_companion.access.credentials`: the user behind an access token or API key, role permissions.
- :mod:`~care_companion.access.signin`: password sign-in and its lockout policy.
- :mod:`~care_companion.access.departments`: department scoping (another department's record is "not found").
- :mod:`~care_companion.access.patients`: patients and studies as a signed-in user may see and change them.
- :mod:`~care_companion.access.accounts`: users and API keys as an admin manages them (the self-lockout rule).
- :mod:`~care_companion.access.audit`: the audit rows every action appends.

Functions take the caller's SQLAlchemy ``Session`` and never commit (the caller owns the transaction); they
raise :class:`~care_companion.errors.CareError` subclasses (:class:`~care_companion.records.repos.NotFound`,
:class:`~care_companion.errors.Forbidden`, ...) that the service maps to HTTP answers and the CLI to messages.
"""
