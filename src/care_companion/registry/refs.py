"""Model references, parsed once: registry aliases and versions, run artifacts and bundle folders.

The forms accepted wherever a model is named (``--model``, ``CARE_MODELS__<task>``, drift reports, initial
weights):

- ``models:/NAME@ALIAS``: the version an alias of a registered model points at (``models:/chest@production``);
- ``models:/NAME/VERSION``: one registered version (``models:/chest/3``);
- ``runs:/RUN_ID/PATH``: artifacts of an MLflow run (``runs:/0123.../bundle``);
- a bundle folder, as a path or a ``file://`` URI.

Parsing only reads the text: whether the model, alias, run or folder exists is for
:func:`care_companion.registry.models.resolve_bundle` to find out.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from urllib.parse import unquote, urlparse

from care_companion.errors import ConfigError, ModelError

ALIASES = ("staging", "canary", "production")
BUNDLE_ARTIFACT_PATH = "bundle"
MODELS_SCHEME = "models:/"
RUNS_SCHEME = "runs:/"


class InvalidModelRef(ModelError, ConfigError):
    """A model reference in none of the accepted forms (code ``model_error``, as registry errors)."""


class RefKind(StrEnum):
    """What a model reference names."""

    ALIAS = "alias"
    VERSION = "version"
    RUN = "run"
    FOLDER = "folder"


@dataclass(frozen=True)
class ModelRef:
    """A parsed model reference.

    Attributes:
        kind: alias, version, run or folder.
        text: the reference as given (surrounding blanks removed), for messages.
        name: the registered model (alias and version references).
        alias: the alias (alias references).
        version: the version number (version references).
        run_id: the MLflow run (run references).
        path: the artifact path inside the run (run references) or the folder (folder references).
    """

    kind: RefKind
    text: str
    name: str = ""
    alias: str = ""
    version: int | None = None
    run_id: str = ""
    path: str = ""

    @classmethod
    def parse(cls, text: str | Path) -> ModelRef:
        """Parse a model reference (see the module docstring for the forms).

        Raises:
            InvalidModelRef: a ``models:/`` or ``runs:/`` URI that is incomplete, or a URI of another scheme.
                It is both a :class:`~care_companion.errors.ModelError` and a
                :class:`~care_companion.errors.ConfigError`.
        """
        given = str(text).strip()
        if given.startswith(MODELS_SCHEME):
            return cls._parse_models(given)
        if given.startswith(RUNS_SCHEME):
            run_id, _, path = given.removeprefix(RUNS_SCHEME).partition("/")
            path = path.strip("/")
            if not run_id or not path:
                raise InvalidModelRef(f"invalid run URI {given!r}; expected runs:/RUN_ID/{BUNDLE_ARTIFACT_PATH}")
            return cls(RefKind.RUN, given, run_id=run_id, path=path)
        parsed = urlparse(given)
        if parsed.scheme == "file":
            return cls(RefKind.FOLDER, given, path=unquote(parsed.path))
        if len(parsed.scheme) > 1:  # one letter is a Windows drive
            raise InvalidModelRef(
                f"unsupported model reference {given!r}; use a bundle folder, models:/NAME@ALIAS, "
                f"models:/NAME/VERSION or runs:/RUN_ID/{BUNDLE_ARTIFACT_PATH}"
            )
        if not given:
            raise InvalidModelRef(
                "empty model reference; give a bundle folder, models:/NAME@ALIAS or models:/NAME/VERSION"
            )
        return cls(RefKind.FOLDER, given, path=given)

    @classmethod
    def _parse_models(cls, given: str) -> ModelRef:
        """``models:/NAME@ALIAS`` or ``models:/NAME/VERSION``."""
        rest = given.removeprefix(MODELS_SCHEME).strip("/")
        if "@" in rest:
            name, alias = rest.split("@", 1)
            if not name or not alias or "/" in alias:
                raise InvalidModelRef(f"invalid model URI {given!r}; expected models:/NAME@ALIAS")
            return cls(RefKind.ALIAS, given, name=name, alias=alias)
        parts = rest.split("/")
        if len(parts) != 2 or not parts[0] or not parts[1].isdigit():
            raise InvalidModelRef(
                f"invalid model URI {given!r}; expected models:/NAME@ALIAS or models:/NAME/VERSION "
                f"(aliases: {', '.join(ALIASES)})"
            )
        return cls(RefKind.VERSION, given, name=parts[0], version=int(parts[1]))

    @classmethod
    def registered(cls, name: str, version: int) -> ModelRef:
        """The reference to version ``version`` of registered model ``name`` (``models:/NAME/VERSION``)."""
        return cls(RefKind.VERSION, f"{MODELS_SCHEME}{name}/{version}", name=name, version=version)

    @property
    def in_registry(self) -> bool:
        """True for registry references (an alias or a version)."""
        return self.kind in (RefKind.ALIAS, RefKind.VERSION)

    @property
    def in_mlflow(self) -> bool:
        """True when the bundle comes from MLflow (registry or run) and is downloaded into the local cache."""
        return self.kind is not RefKind.FOLDER

    @property
    def directory(self) -> Path:
        """The bundle folder of a folder reference (``~`` expanded).

        Raises:
            InvalidModelRef: for a reference that is not a folder.
        """
        if self.kind is not RefKind.FOLDER:
            raise InvalidModelRef(f"{self.text!r} is a {self.kind} reference, not a bundle folder")
        return Path(self.path).expanduser()

    @property
    def uri(self) -> str:
        """The reference written canonically (``models:/chest@production``, ``models:/chest/3``, ...)."""
        if self.kind is RefKind.ALIAS:
            return f"{MODELS_SCHEME}{self.name}@{self.alias}"
        if self.kind is RefKind.VERSION:
            return f"{MODELS_SCHEME}{self.name}/{self.version}"
        if self.kind is RefKind.RUN:
            return f"{RUNS_SCHEME}{self.run_id}/{self.path}"
        return self.path

    def __str__(self) -> str:
        return self.text
