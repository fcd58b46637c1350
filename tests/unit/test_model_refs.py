"""Model references: every accepted form parsed, and every malformed one refused with a clear error."""

from __future__ import annotations

from pathlib import Path

import pytest

from care_companion.errors import ConfigError, ModelError
from care_companion.registry.refs import InvalidModelRef, ModelRef, RefKind


def test_alias() -> None:
    ref = ModelRef.parse("  models:/chest@production ")
    assert (ref.kind, ref.name, ref.alias, ref.version) == (RefKind.ALIAS, "chest", "production", None)
    assert ref.text == str(ref) == "models:/chest@production" == ref.uri
    assert ref.in_registry and ref.in_mlflow


def test_version() -> None:
    ref = ModelRef.parse("models:/wrist/12/")
    assert (ref.kind, ref.name, ref.version, ref.alias) == (RefKind.VERSION, "wrist", 12, "")
    assert ref.uri == "models:/wrist/12" and ref.in_registry
    assert ModelRef.registered("wrist", 12) == ModelRef.parse("models:/wrist/12")


def test_run() -> None:
    ref = ModelRef.parse("runs:/0123abcd/bundle/")
    assert (ref.kind, ref.run_id, ref.path) == (RefKind.RUN, "0123abcd", "bundle")
    assert ref.uri == "runs:/0123abcd/bundle"
    assert ref.in_mlflow and not ref.in_registry


def test_folders(tmp_path: Path) -> None:
    plain = ModelRef.parse(str(tmp_path / "bundle"))
    assert (plain.kind, plain.directory) == (RefKind.FOLDER, tmp_path / "bundle")
    assert not plain.in_mlflow and not plain.in_registry
    spaced = tmp_path / "my bundle"
    assert ModelRef.parse(spaced.as_uri()).directory == spaced  # file:// URIs are unquoted
    assert ModelRef.parse(Path("~/b")).directory == Path.home() / "b"
    assert ModelRef.parse("relative/bundle").path == "relative/bundle"
    assert ModelRef.parse(r"C:\models\bundle").kind is RefKind.FOLDER  # a drive letter is not a scheme


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("models:/chest", "expected models:/NAME@ALIAS or models:/NAME/VERSION"),
        ("models:/chest/Production", "expected models:/NAME@ALIAS or models:/NAME/VERSION"),
        ("models:/chest/1/2", "expected models:/NAME@ALIAS or models:/NAME/VERSION"),
        ("models:/", "expected models:/NAME@ALIAS or models:/NAME/VERSION"),
        ("models:/@production", "expected models:/NAME@ALIAS"),
        ("models:/chest@", "expected models:/NAME@ALIAS"),
        ("models:/chest@prod/1", "expected models:/NAME@ALIAS"),
        ("runs:/onlyid", "expected runs:/RUN_ID/bundle"),
        ("runs://bundle", "expected runs:/RUN_ID/bundle"),
        ("gs://bucket/bundle", "unsupported model reference"),
        ("s3://bucket/bundle", "unsupported model reference"),
        ("", "empty model reference"),
        ("   ", "empty model reference"),
    ],
)
def test_malformed_references_are_refused(text: str, message: str) -> None:
    with pytest.raises(InvalidModelRef, match=message) as info:
        ModelRef.parse(text)
    assert isinstance(info.value, ConfigError) and isinstance(info.value, ModelError)
    assert info.value.code == "model_error"  # what the CLI and the service have always reported


def test_directory_of_a_registry_reference_is_an_error() -> None:
    with pytest.raises(InvalidModelRef, match="not a bundle folder"):
        _ = ModelRef.parse("models:/chest@staging").directory


def test_refs_are_frozen_and_hashable() -> None:
    ref = ModelRef.parse("models:/chest/3")
    with pytest.raises(AttributeError):
        ref.name = "wrist"  # type: ignore[misc]
    assert len({ref, ModelRef.parse("models:/chest/3")}) == 1
