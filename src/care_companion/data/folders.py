"""Find labelled images in class-folder trees (Kaggle layouts, plain ``<class>/<image>`` folders)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from care_companion.tasks import TaskSpec

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".dcm", ".dicom", ".bmp", ".tif", ".tiff", ""}
_ALIASES: dict[str, str] = {
    "tb": "tuberculosis",
    "non-xray": "unknown",
    "non_xray": "unknown",
    "not_xray": "unknown",
    "not-xray": "unknown",
    "other": "unknown",
    "fracture": "fractured",
    "not_fracture": "not_fractured",
}


@dataclass(frozen=True)
class LabelledFile:
    """A file found under a source root and the class its folders give it."""

    path: Path
    relative: str
    label: str


def class_of(folder_name: str, task: TaskSpec) -> str | None:
    """The task class a folder name stands for (any case, a few common aliases), or ``None``."""
    name = folder_name.strip().lower()
    name = _ALIASES.get(name, name)
    return name if name in task.classes else None


def image_files(root: Path) -> list[Path]:
    """Candidate image files under ``root`` (any depth), sorted, hidden files and non-image suffixes left out."""
    root = Path(root)
    return sorted(
        p
        for p in root.rglob("*")
        if p.is_file()
        and not any(part.startswith(".") for part in p.relative_to(root).parts)
        and p.suffix.lower() in IMAGE_SUFFIXES
    )


def scan_class_folders(root: Path, task: TaskSpec) -> tuple[list[LabelledFile], list[str]]:
    """All candidate image files under ``root`` with the class of their nearest class-named ancestor.

    Class folders may sit at any depth (``train/NORMAL``, ``data/test/Tuberculosis``). Returns the
    labelled files (sorted by relative path) and the relative paths of files under no class folder.
    """
    root = Path(root)
    labelled: list[LabelledFile] = []
    unlabelled: list[str] = []
    for path in image_files(root):
        rel = path.relative_to(root)
        label = next((c for part in reversed(rel.parts[:-1]) if (c := class_of(part, task))), None)
        if label is None:
            unlabelled.append(rel.as_posix())
        else:
            labelled.append(LabelledFile(path=path, relative=rel.as_posix(), label=label))
    return labelled, unlabelled
