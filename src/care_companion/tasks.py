"""Task definitions: what each clinical task classifies, which classes are disease, how it is trained."""

from __future__ import annotations

from pydantic import BaseModel, Field


class Recipe(BaseModel):
    """Default training recipe of a task; every field can be overridden on the command line."""

    backbone: str = "resnet18"
    image_size: int = 192
    batch_size: int = 32
    head_epochs: int = 1
    head_lr: float = 1e-3
    finetune_epochs: int = 10
    finetune_lr: float = 2e-3
    weight_decay: float = 1e-4
    warmup_fraction: float = 0.1
    patience: int = 4
    samples_per_epoch: int | None = 3500
    max_train_per_class: int | None = None


class TaskSpec(BaseModel):
    """A clinical task: its classes, disease (positive) classes, reject class and default recipe."""

    name: str
    classes: list[str]
    negative: str = Field(description="The normal class.")
    positives: list[str] = Field(description="Disease classes: sensitivity is measured and gated on these.")
    reject: str | None = Field(default=None, description="Class meaning 'not an image of this task'.")
    views: list[str] = Field(default_factory=lambda: ["frontal"])
    recipe: Recipe = Field(default_factory=Recipe)

    def index(self, name: str) -> int:
        """Index of a class name."""
        return self.classes.index(name)

    @property
    def positive_indices(self) -> list[int]:
        """Indices of the disease classes."""
        return [self.index(c) for c in self.positives]

    @property
    def clinical_classes(self) -> list[str]:
        """Classes that describe a radiograph of this task (everything but the reject class)."""
        return [c for c in self.classes if c != self.reject]


CHEST = TaskSpec(
    name="chest",
    classes=["normal", "pneumonia", "tuberculosis", "unknown"],
    negative="normal",
    positives=["pneumonia", "tuberculosis"],
    reject="unknown",
    views=["frontal"],
    recipe=Recipe(),
)

WRIST = TaskSpec(
    name="wrist",
    classes=["normal", "fracture"],
    negative="normal",
    positives=["fracture"],
    reject=None,
    views=["pa", "lateral"],
    recipe=Recipe(image_size=160, batch_size=16, samples_per_epoch=2000, finetune_epochs=8),
)

TASKS: dict[str, TaskSpec] = {CHEST.name: CHEST, WRIST.name: WRIST}


def get_task(name: str) -> TaskSpec:
    """Look a task up by name, with a clear error for unknown names."""
    from care_companion.errors import ConfigError

    try:
        return TASKS[name]
    except KeyError:
        raise ConfigError(f"unknown task {name!r}; known tasks: {', '.join(sorted(TASKS))}") from None
