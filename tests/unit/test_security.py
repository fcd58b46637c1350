"""Roles and permissions, password hashing, access tokens and API keys."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from care_companion.config import Settings
from care_companion.errors import AuthError
from care_companion.security import (
    Permission,
    Role,
    api_key_matches,
    api_key_prefix,
    can,
    create_access_token,
    decode_access_token,
    hash_password,
    new_api_key,
    verify_password,
)


def test_role_matrix() -> None:
    assert can("technician", Permission.PREDICT) and can("technician", Permission.READ_RECORDS)
    assert not can("technician", Permission.FEEDBACK) and not can("technician", Permission.MANAGE_MODELS)
    assert can("radiologist", Permission.FEEDBACK) and can("radiologist", Permission.NOTES)
    assert not can("radiologist", Permission.MANAGE_USERS) and not can("radiologist", Permission.READ_ALL_DEPARTMENTS)
    assert all(can("admin", p) for p in Permission)
    assert not can("janitor", Permission.PREDICT)


def test_password_hashes_are_salted_argon2_and_verify() -> None:
    first, second = hash_password("correct horse"), hash_password("correct horse")
    assert first.startswith("$argon2id$") and first != second
    assert verify_password(first, "correct horse") and verify_password(second, "correct horse")
    assert not verify_password(first, "wrong horse")
    assert not verify_password(None, "correct horse") and not verify_password("not-a-hash", "x")
    with pytest.raises(ValueError):
        hash_password("")


def test_access_tokens_round_trip_and_expire() -> None:
    settings = Settings(jwt_secret="test-secret-of-at-least-thirty-two-bytes", access_token_minutes=5)
    token = create_access_token(username="ana", role="radiologist", department="er", settings=settings)
    claims = decode_access_token(token, settings)
    assert (claims.sub, claims.role, claims.department) == ("ana", Role.RADIOLOGIST, "er")
    assert claims.exp - claims.iat == 300

    old = create_access_token(
        username="ana", role="admin", department="er", settings=settings, now=datetime.now(UTC) - timedelta(hours=1)
    )
    with pytest.raises(AuthError) as expired:
        decode_access_token(old, settings)
    assert expired.value.code == "token_expired"
    with pytest.raises(AuthError) as forged:
        decode_access_token(token, Settings(jwt_secret="another-secret-of-at-least-thirty-two-bytes"))
    assert forged.value.code == "invalid_token"
    with pytest.raises(AuthError):
        decode_access_token("not.a.token", settings)
    with pytest.raises(ValueError):
        create_access_token(username="x", role="janitor", department="er", settings=settings)


def test_api_keys() -> None:
    made = new_api_key()
    assert made.key.startswith(f"cc_{made.prefix}_") and len(made.prefix) == 8
    assert api_key_prefix(made.key) == made.prefix
    assert api_key_matches(made.key, made.key_hash) and not api_key_matches(made.key + "x", made.key_hash)
    assert new_api_key().key != made.key
    for bad in ("", "cc_short_x", "xx_12345678_secret", "cc_12345678_"):
        with pytest.raises(AuthError):
            api_key_prefix(bad)


def test_production_refuses_the_development_secret() -> None:
    with pytest.raises(ValueError, match="CARE_JWT_SECRET"):
        Settings(environment="production")
    assert Settings(environment="production", jwt_secret="a-real-secret").environment == "production"
