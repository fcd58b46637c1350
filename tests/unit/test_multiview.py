"""The multi-view (wrist) model: shapes, missing views, view dropout, freezing, ONNX bundle, INT8."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from care_companion.errors import ConfigError, ModelError
from care_companion.models.bundle import INT8_FILE, ONNX_FILE, BundleMeta, load_meta, save_meta
from care_companion.models.export import export_onnx
from care_companion.models.factory import Classifier, create_model, feature_width, load_init_weights
from care_companion.models.multiview import MultiViewClassifier
from care_companion.models.predictor import BundlePredictor
from care_companion.models.quantize import quantize_int8
from care_companion.tasks import CHEST, WRIST
from tests.conftest import fit_briefly, write_bundle

SIZE = 48
BACKBONE = "resnet10t"


def _model(backbone: str = BACKBONE, **kwargs) -> MultiViewClassifier:
    torch.manual_seed(0)
    model, _ = create_model(WRIST, backbone, **kwargs)
    assert isinstance(model, MultiViewClassifier)
    return model


def _studies(count: int, seed: int, *, squares: bool = False) -> list[dict[str, np.ndarray | None]]:
    """Studies of random uint8 views of odd sizes; every third lacks its lateral, some others their PA. With
    ``squares`` every other study has a bright square in its first view present (a "fracture")."""
    rng = np.random.default_rng(seed)
    studies: list[dict[str, np.ndarray | None]] = []
    for i in range(count):
        lateral = rng.integers(0, 256, (60, 66), dtype=np.uint8) if i % 3 != 2 else None
        pa = rng.integers(0, 256, (70, 52), dtype=np.uint8) if i % 5 != 4 or lateral is None else None
        if squares and i % 2:
            (pa if pa is not None else lateral)[10:40, 10:40] = 255  # type: ignore[index]
        studies.append({"pa": pa, "lateral": lateral})
    return studies


@pytest.fixture(scope="module")
def model() -> MultiViewClassifier:
    return _model().eval()


@pytest.fixture(scope="module")
def bundle(tmp_path_factory: pytest.TempPathFactory, model: MultiViewClassifier) -> Path:
    directory = tmp_path_factory.mktemp("wrist") / "bundle"
    diff = export_onnx(model, directory / ONNX_FILE, input_size=SIZE)
    assert diff <= 1e-4
    save_meta(directory, BundleMeta.for_task(WRIST, backbone=BACKBONE, input_size=SIZE, temperature=1.5))
    return directory


def test_shapes_and_the_shared_protocol(model: MultiViewClassifier) -> None:
    images, present = model.example_inputs(5, SIZE, torch.Generator().manual_seed(0))
    assert images.shape == (5, 2, 1, SIZE, SIZE) and present.shape == (5, 2)
    assert (present.sum(1) >= 1).all() and (present.sum(1) < 2).any()  # some studies miss a view
    assert (images[present == 0] == 0).all()
    assert model(images, present).shape == (5, len(WRIST.classes))
    assert model.features(images, present).shape == (5, 256)
    assert model.input_names == ("images", "present")
    chest, _ = create_model(CHEST, BACKBONE)
    assert isinstance(chest, Classifier) and chest.input_names == ("image",)
    (image,) = chest.example_inputs(3, SIZE)
    assert chest(image).shape == (3, len(CHEST.classes))


def test_missing_view_pixels_do_not_change_the_output(model: MultiViewClassifier) -> None:
    images, present = model.example_inputs(6, SIZE, torch.Generator().manual_seed(1))
    noisy = images + torch.randn(images.shape) * 5 * (1 - present)[:, :, None, None, None]
    assert not torch.equal(noisy, images)
    with torch.inference_mode():
        assert torch.equal(model(images, present), model(noisy, present))


def test_one_view_study_gives_a_finite_different_answer(model: MultiViewClassifier) -> None:
    images = torch.randn(1, 2, 1, SIZE, SIZE, generator=torch.Generator().manual_seed(2))
    with torch.inference_mode():
        both = model(images, torch.ones(1, 2))
        pa_only = model(images * torch.tensor([1.0, 0.0])[None, :, None, None, None], torch.tensor([[1.0, 0.0]]))
    assert torch.isfinite(pa_only).all() and not torch.allclose(both, pa_only)


def test_view_dropout_only_in_training_and_never_hides_every_view() -> None:
    net = _model(view_dropout=1.0)
    present = torch.tensor([[1.0, 1.0], [1.0, 0.0], [0.0, 1.0]]).repeat(200, 1)
    net.train()
    used = net.view_mask(present)
    assert (used.sum(1) == 1).all()  # two-view studies lose exactly one view, one-view studies keep theirs
    assert torch.equal(used[1::3], present[1::3]) and torch.equal(used[2::3], present[2::3])
    assert 0 < used[0::3, 0].sum() < 200  # either view can be the hidden one
    net.view_dropout = 0.25
    share = (net.view_mask(torch.ones(4000, 2)).sum(1) < 2).float().mean().item()
    assert 0.2 < share < 0.3
    net.eval()
    assert torch.equal(net.view_mask(present), present)


@pytest.mark.parametrize("task", [CHEST, WRIST], ids=["single-view", "multi-view"])
def test_freezing_trains_the_head_only(task) -> None:
    net, _ = create_model(task, f"{BACKBONE},test_efficientnet" if task is WRIST else BACKBONE)
    net.freeze_backbone(True)
    net.train()
    assert not any(p.requires_grad for p in net.backbone.parameters())
    head = [p for n, p in net.named_parameters() if not n.startswith("backbone.")]
    assert head and all(p.requires_grad for p in head)
    assert not any(m.training for m in net.backbone.modules()) and net.head.training
    net.freeze_backbone(False)
    net.train()
    assert all(p.requires_grad for p in net.parameters()) and net.backbone.training


def test_shared_and_separate_backbones() -> None:
    shared, separate, mixed = _model(), _model(f"{BACKBONE},{BACKBONE}"), _model(f"{BACKBONE},test_efficientnet")
    one_backbone = sum(p.numel() for p in shared.backbone.parameters())
    assert len(shared.backbone) == 1 and len(separate.backbone) == 2 and len(mixed.backbone) == 2
    count = [sum(p.numel() for p in m.parameters()) for m in (shared, separate)]
    assert count[1] - count[0] == one_backbone
    images, present = mixed.eval().example_inputs(3, SIZE)
    assert mixed(images, present).shape == (3, len(WRIST.classes))
    widths = [feature_width(net) for net in mixed.backbone]
    views = mixed.view_features(images, present)  # per view, zero-padded to the widest backbone
    assert views.shape == (3, 2, max(widths)) and (views[:, widths.index(min(widths)), min(widths) :] == 0).all()
    for wrong in ("resnet_does_not_exist", f"{BACKBONE},{BACKBONE},{BACKBONE}"):
        with pytest.raises(ConfigError):
            create_model(WRIST, wrong)
    with pytest.raises(ConfigError, match="one backbone"):
        create_model(CHEST, f"{BACKBONE},{BACKBONE}")


def test_backbones_start_from_a_single_view_checkpoint(tmp_path: Path) -> None:
    chest, _ = create_model(CHEST, BACKBONE)
    torch.save(chest.state_dict(), tmp_path / "chest.pt")
    net, origin = create_model(WRIST, f"{BACKBONE},{BACKBONE}", init_weights=tmp_path / "chest.pt")
    assert origin.startswith("local checkpoint")
    for backbone in net.backbone:
        for key, value in chest.backbone.state_dict().items():
            assert torch.equal(backbone.state_dict()[key], value)
    torch.save(net.state_dict(), tmp_path / "wrist.pt")
    again = _model(f"{BACKBONE},{BACKBONE}")
    load_init_weights(again, tmp_path / "wrist.pt")  # a full multi-view checkpoint loads whole
    assert all(torch.equal(v, net.state_dict()[k]) for k, v in again.state_dict().items())


def test_bundle_declares_the_inputs_and_onnx_matches_pytorch(bundle: Path, model: MultiViewClassifier) -> None:
    meta = load_meta(bundle)
    assert meta.multiview and [(i.name, i.shape) for i in meta.inputs] == [
        ("images", ["batch", 2, 1, SIZE, SIZE]),
        ("present", ["batch", 2]),
    ]
    predictor = BundlePredictor(bundle)
    assert predictor.input_names == ("images", "present")
    studies = _studies(12, 0)
    feed = predictor.preprocess_studies(studies)
    assert feed["images"].shape == (12, 2, 1, SIZE, SIZE) and feed["present"].shape == (12, 2)
    assert feed["present"][2].tolist() == [1.0, 0.0] and feed["present"][4].tolist() == [0.0, 1.0]
    assert (feed["images"][feed["present"] == 0] == 0).all()
    inputs = [torch.from_numpy(feed[name]) for name in model.input_names]
    with torch.inference_mode():
        expected, views = model(*inputs).numpy(), model.view_features(*inputs).numpy()
    assert np.abs(predictor.logits(feed, chunk=5) - expected).max() < 1e-4
    logits, _, view_features = predictor.engine_outputs(feed, chunk=5)
    assert predictor.has_view_embeddings and view_features.shape == views.shape == (12, 2, views.shape[2])
    assert np.abs(view_features - views).max() < 1e-4 and np.abs(logits - expected).max() < 1e-4
    for row in (2, 4):  # a one-view study: the given view's features are the single image's backbone features
        given = int(feed["present"][row].argmax())
        with torch.inference_mode():
            alone = model.backbone[0](inputs[0][row : row + 1, given]).numpy()[0]
        assert np.abs(view_features[row, given] - alone).max() < 1e-4
    probs = predictor.predict_studies(studies)
    assert probs.shape == (12, len(WRIST.classes)) and np.allclose(probs.sum(1), 1)


def test_predictor_refuses_bad_studies_and_single_image_calls(bundle: Path) -> None:
    predictor = BundlePredictor(bundle)
    image = np.zeros((40, 40), dtype=np.uint8)
    with pytest.raises(ModelError, match="unknown view 'oblique'"):
        predictor.preprocess_studies([{"pa": image, "oblique": image}])
    with pytest.raises(ModelError, match="study 1 has no image"):
        predictor.preprocess_studies([{"pa": image}, {"pa": None}])
    with pytest.raises(ModelError, match="predict_studies"):
        predictor.predict_proba([image])
    with pytest.raises(ModelError, match="feed dict"):
        predictor.logits(np.zeros((1, 1, SIZE, SIZE), dtype=np.float32))


def test_single_view_bundles_take_studies_too(tmp_path: Path) -> None:
    chest = BundlePredictor(write_bundle(tmp_path / "chest", backbone=BACKBONE, input_size=32))
    assert [(i.name, i.shape) for i in chest.meta.inputs] == [("image", ["batch", 1, 32, 32])]
    images = [s["pa"] for s in _studies(4, 1) if s["pa"] is not None]
    by_study = chest.predict_studies([{"frontal": image} for image in images])
    assert np.allclose(by_study, chest.predict_proba(images), atol=1e-6)


LOGITS = [0.0, 2.0, -3.0]  # normal, fracture, unknown


def test_write_bundle_makes_wrist_bundles_with_fixed_answers(tmp_path: Path) -> None:
    directory = write_bundle(tmp_path / "wrist", task=WRIST, backbone=BACKBONE, input_size=32, logits=LOGITS)
    predictor = BundlePredictor(directory)
    assert predictor.meta.thresholds == {"abnormal": 0.5, "fracture": 0.5}
    probs = predictor.predict_studies(_studies(3, 2))
    assert np.allclose(probs, np.exp(LOGITS) / np.exp(LOGITS).sum(), atol=1e-5)


def test_int8_quantisation_of_a_multiview_model(tmp_path: Path) -> None:
    """A briefly trained model (an untrained one answers every study alike, so there is no spread to keep)."""
    copy = write_bundle(
        tmp_path / "bundle", task=WRIST, backbone=BACKBONE, input_size=SIZE,
        fit=(_studies(32, 5, squares=True), [i % 2 for i in range(32)]),
    )  # fmt: skip
    fp32 = BundlePredictor(copy)
    calibration = fp32.preprocess_studies(_studies(24, 3, squares=True))
    with pytest.raises(ModelError, match="feed dict"):
        quantize_int8(copy / ONNX_FILE, copy / INT8_FILE, calibration["images"])
    quantize_int8(copy / ONNX_FILE, copy / INT8_FILE, calibration)
    int8 = BundlePredictor(copy, precision="int8")
    feed = fp32.preprocess_studies(_studies(10, 4, squares=True))
    reference = fp32.logits(feed)
    spread = float(reference.max() - reference.min()) or 1.0
    assert np.abs(int8.logits(feed) - reference).max() < 0.1 * spread


def test_a_few_gradient_steps_lower_the_loss() -> None:
    """A fracture is a bright square in either view; both views are needed to see every fracture."""
    net = _model(view_dropout=0.25)
    generator = torch.Generator().manual_seed(0)
    images, present = net.example_inputs(32, 32, generator)
    labels = torch.arange(32) % 2
    for i in range(32):
        if labels[i]:
            view = int(present[i].argmax())
            images[i, view, 0, 8:20, 8:20] = 4.0
    losses = fit_briefly(net, [images, present], labels)
    assert np.mean(losses[-3:]) < losses[0]


def test_bundle_embeds_the_task_and_still_reads_schema_version_1(tmp_path: Path) -> None:
    meta = BundleMeta.for_task(CHEST, backbone="resnet18", input_size=64)
    assert meta.schema_version == 2 and not meta.multiview and meta.spec == CHEST
    assert "spec" in meta.model_dump() and "classes" not in meta.model_dump()
    assert [(i.name, i.shape) for i in meta.inputs] == [("image", ["batch", 1, 64, 64])]
    old = {"task": "chest", "classes": CHEST.classes, "negative": "normal", "positives": CHEST.positives}
    (tmp_path / "bundle.json").write_text(json.dumps({**old, "backbone": "resnet18", "input_size": 64}))
    read = load_meta(tmp_path)
    assert read.views == ["frontal"] and read.task == "chest" and read.spec.refusal_code == CHEST.refusal_code


@pytest.mark.parametrize("backbone", ["lcnet_050", BACKBONE])
def test_backbones_with_a_head_layer_after_pooling_fit_the_view_projection(backbone: str) -> None:
    """LCNet (like MobileNetV3) puts a 1x1 conv after the pooling, so its output is wider than num_features."""
    net = _model(backbone).eval()
    images, present = net.example_inputs(2, SIZE)
    with torch.inference_mode():
        assert net(images, present).shape == (2, len(WRIST.classes))
    chest, _ = create_model(CHEST, backbone)
    with torch.inference_mode():
        assert chest.eval()(*chest.example_inputs(2, SIZE)).shape == (2, len(CHEST.classes))
