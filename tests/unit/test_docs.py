"""The documentation cannot drift from the code: every ``CARE_*`` setting is documented and every documented one
exists, the generated pages (docs/configuration.md, docs/api.md) match what ``scripts/gen_docs.py`` makes from
the live ``Settings`` and OpenAPI schema, every endpoint is in the API reference and nothing else is, the README
stays a front page (under 8 KB) and relative links in README.md and docs/ resolve (files and #anchors)."""

from __future__ import annotations

import importlib.util
import re
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

from care_companion.config import Settings

REPO = Path(__file__).resolve().parents[2]
README = REPO / "README.md"
DOCS = REPO / "docs"
README_LIMIT = 8 * 1024
VARIABLE = re.compile(r"CARE_[A-Z0-9_]+\*?")
LINK = re.compile(r"\[[^\]]*\]\(([^)\s]+)\)")
API_HEADING = re.compile(r"^### `([A-Z]+) (/\S*)`$", re.MULTILINE)


def load_generator() -> ModuleType:
    spec = importlib.util.spec_from_file_location("gen_docs", REPO / "scripts" / "gen_docs.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules.setdefault("gen_docs", module)
    spec.loader.exec_module(module)
    return module


gen_docs = load_generator()


def doc_files() -> list[Path]:
    return [README, *sorted(DOCS.rglob("*.md"))]


def setting_variables() -> set[str]:
    """Every environment variable that sets a field, dict fields as ``CARE_MODELS__<task>``."""
    return {name for field, info in Settings.model_fields.items() for name in gen_docs.env_names(field, info)}


def other_variables() -> set[str]:
    return {v.strip() for names, _, _ in gen_docs.OTHER_VARIABLES for v in names.split(",")}


def known(token: str) -> bool:
    """A documented ``CARE_*`` token names a real variable: exactly, as a dict field's ``CARE_X__<key>`` prefix,
    or as a wildcard family (``CARE_DRIFT_*``) that at least one variable belongs to."""
    variables = setting_variables() | other_variables()
    if token in variables:
        return True
    if token.endswith("__"):
        return f"{token}<task>" in variables
    if token.endswith("*"):
        return any(v.startswith(token[:-1]) for v in variables)
    return False


@pytest.fixture(scope="module")
def schema() -> dict[str, Any]:
    return gen_docs.openapi_schema()


def test_every_setting_has_a_description() -> None:
    missing = [name for name, info in Settings.model_fields.items() if not (info.description or "").strip()]
    assert not missing, f"Settings fields without a description (docs/configuration.md needs one): {missing}"


def test_every_setting_is_documented() -> None:
    text = (DOCS / "configuration.md").read_text()
    for field, info in Settings.model_fields.items():
        for name in gen_docs.env_names(field, info):
            assert f"`{name}`" in text, f"{name} (Settings.{field}) is not in docs/configuration.md: run make docs"


def test_every_documented_variable_exists() -> None:
    unknown = {
        f"{path.relative_to(REPO)}: {token}"
        for path in doc_files()
        for token in VARIABLE.findall(path.read_text())
        if not known(token)
    }
    assert not unknown, f"documented CARE_* variables that no setting reads: {sorted(unknown)}"


def test_dict_settings_are_documented_per_key() -> None:
    assert "CARE_MODELS__<task>" in setting_variables()
    assert not known("CARE_MODELS") and known("CARE_MODELS__") and not known("CARE_NO_SUCH_SETTING")


def test_other_variables_are_read_where_documented() -> None:
    for names, where, _ in gen_docs.OTHER_VARIABLES:
        source = (REPO / "src" / "care_companion" / where).read_text()
        for name in (n.strip() for n in names.split(",")):
            assert name in source, f"{name} is documented as read in {where}, which does not mention it"


def test_generated_docs_are_up_to_date() -> None:
    stale = [str(p.relative_to(REPO)) for p in gen_docs.stale_files()]
    assert not stale, f"out of date: {stale}; run `make docs` (.venv/bin/python scripts/gen_docs.py)"


def test_check_names_a_stale_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: Any) -> None:
    stale = tmp_path / "configuration.md"
    stale.write_text("# Configuration\n\n| `CARE_REMOVED_LONG_AGO` | |\n")
    fresh = tmp_path / "api.md"
    monkeypatch.setattr(gen_docs, "CONFIGURATION_MD", stale)
    monkeypatch.setattr(gen_docs, "API_MD", fresh)
    monkeypatch.setattr(gen_docs, "REPO", tmp_path)
    assert gen_docs.main(["--check"]) == 1
    out = capsys.readouterr().out
    assert "configuration.md is out of date" in out and "api.md is out of date" in out
    assert gen_docs.main([]) == 0
    capsys.readouterr()
    assert "CARE_DATA_DIR" in stale.read_text() and fresh.read_text().startswith("# HTTP API reference")
    assert gen_docs.main(["--check"]) == 0
    assert capsys.readouterr().out == ""


def test_api_reference_lists_exactly_the_schema_operations(schema: dict[str, Any]) -> None:
    live = set(gen_docs.operations(schema))
    assert live, "the OpenAPI schema has no operations"
    documented = set(API_HEADING.findall((DOCS / "api.md").read_text()))
    assert live - documented == set(), f"endpoints missing from docs/api.md (run make docs): {live - documented}"
    assert documented - live == set(), f"docs/api.md documents endpoints that do not exist: {documented - live}"


def test_api_reference_needs_no_model(schema: dict[str, Any]) -> None:
    """The schema comes from an app built on an empty data dir: no model, no database was needed."""
    assert any(path.startswith("/v1/predict") for path in schema["paths"])
    assert "securitySchemes" in schema.get("components", {})


def test_readme_is_a_front_page() -> None:
    size = len(README.read_bytes())
    assert size < README_LIMIT, f"README.md is {size} bytes; keep it under {README_LIMIT} and move detail to docs/"
    text = README.read_text()
    assert "make demo" in text and "make test" in text
    assert "<!-- demo-timing -->" in text


def github_anchor(heading: str) -> str:
    text = heading.strip().lower().replace("`", "")
    text = re.sub(r"[^\w\- ]", "", text)
    return text.replace(" ", "-")


def anchors(path: Path) -> set[str]:
    text = path.read_text()
    text_outside_code = re.sub(r"```.*?```", "", text, flags=re.DOTALL)
    found = {github_anchor(h) for h in re.findall(r"^#{1,6} (.+)$", text_outside_code, flags=re.MULTILINE)}
    return found | set(re.findall(r'<a id="([^"]+)"', text))


@pytest.mark.parametrize("path", doc_files(), ids=lambda p: str(p.relative_to(REPO)))
def test_relative_links_resolve(path: Path) -> None:
    broken = []
    for target in LINK.findall(re.sub(r"```.*?```", "", path.read_text(), flags=re.DOTALL)):
        if re.match(r"^[a-z]+:", target):
            continue  # http(s), mailto
        file_part, _, fragment = target.partition("#")
        linked = (path.parent / file_part).resolve() if file_part else path
        if not linked.exists():
            broken.append(target)
        elif fragment and linked.suffix == ".md" and fragment not in anchors(linked):
            broken.append(f"{target} (no such heading)")
    assert not broken, f"broken links in {path.relative_to(REPO)}: {broken}"
