"""Heat maps from the ONNX model's class maps: equal to Grad-CAM computed with PyTorch (torchcam) on the bundle's
``model.pt``, for one view and for each view of a multi-view model, for a decided disease and for the disease
probability of a negative decision; and meaningless maps would fail (model randomisation)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch

from care_companion.evaluation.decision import p_abnormal
from care_companion.models.bundle import CLASS_MAPS_OUTPUT, load_meta
from care_companion.models.factory import load_bundle_model
from care_companion.models.heatmap import MapCentres, class_weights, colourise, combine, heatmap_png, resize, weighted
from care_companion.models.predictor import BundlePredictor, softmax
from care_companion.tasks import CHEST, WRIST
from tests.conftest import write_bundle

SIZE = 128  # model input side: 4 x 4 maps from a stride-32 backbone
BACKBONE = "resnet10t"


def films(count: int, seed: int) -> tuple[list[np.ndarray], list[int]]:
    """Noisy films; every other one has a bright blob at a random place (the 'disease')."""
    rng = np.random.default_rng(seed)
    images, labels = [], []
    for i in range(count):
        image = rng.normal(90, 25, (150, 140)).clip(0, 255)
        if i % 2:
            r, c = rng.integers(10, 100, 2)
            image[r : r + 40, c : c + 40] += 120
        images.append(image.clip(0, 255).astype(np.uint8))
        labels.append(i % 2)
    return images, labels


def chest_studies(count: int, seed: int) -> tuple[list[dict[str, np.ndarray | None]], list[int]]:
    images, labels = films(count, seed)
    return [{CHEST.views[0]: image} for image in images], labels


def wrist_studies(count: int, seed: int) -> tuple[list[dict[str, np.ndarray | None]], list[int]]:
    pa, labels = films(count, seed)
    lateral, _ = films(count, seed + 1)
    studies: list[dict[str, np.ndarray | None]] = [
        {"pa": a, "lateral": b if i % 4 != 3 else None} for i, (a, b) in enumerate(zip(pa, lateral, strict=True))
    ]
    return studies, labels


@pytest.fixture(scope="module")
def chest_bundle(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_bundle(
        tmp_path_factory.mktemp("chest") / "bundle", backbone=BACKBONE, input_size=SIZE, fit=chest_studies(16, 0)
    )


@pytest.fixture(scope="module")
def wrist_bundle(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A wrist model with a backbone per view, so torchcam can hook each view's last stage on its own."""
    return write_bundle(
        tmp_path_factory.mktemp("wrist") / "bundle",
        task=WRIST,
        backbone=f"{BACKBONE},{BACKBONE}",
        input_size=SIZE,
        fit=wrist_studies(16, 0),
    )


def torchcam_maps(
    model: torch.nn.Module, layer: str, inputs: list[torch.Tensor], cls: int, negative: int, sign: float = 1.0
) -> np.ndarray:
    """torchcam's Grad-CAM ``[N, h, w]`` (ReLU'd, scaled to [0, 1]) at ``layer`` for class ``cls``'s log-odds
    against the ``negative`` class (its logit minus the negative's), times ``sign``."""
    from torchcam.methods import GradCAM

    extractor = GradCAM(model, target_layer=layer)
    try:
        with torch.enable_grad():
            logits = model(*inputs)
            return extractor(cls, sign * (logits - logits[:, [negative]]))[0].detach().numpy()
    finally:
        extractor.remove_hooks()


def autograd_maps(
    model: torch.nn.Module, layers: list[str], inputs: list[torch.Tensor], score: Callable[[torch.Tensor], torch.Tensor]
) -> list[np.ndarray]:
    """Grad-CAM before its ReLU ``[N, h, w]`` of ``score(logits)`` for each pass through ``layers`` in call order
    (one per view; a backbone shared by the views is passed once per view), with PyTorch autograd."""
    modules = dict(model.named_modules())
    captured: list[torch.Tensor] = []
    hooks = [modules[name].register_forward_hook(lambda _m, _i, out: captured.append(out)) for name in set(layers)]
    try:
        with torch.enable_grad():
            grads = torch.autograd.grad(score(model(*inputs)).sum(), captured)
    finally:
        for hook in hooks:
            hook.remove()
    return [
        (g.mean(dim=(2, 3), keepdim=True) * a).sum(dim=1).detach().numpy() for g, a in zip(grads, captured, strict=True)
    ]


def pearson(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.corrcoef(a.ravel(), b.ravel())[0, 1])


def ours(
    predictor: BundlePredictor,
    feed: dict[str, np.ndarray],
    decided: int,
    view: int | None,
    *,
    relu: bool = True,
    sign: float = 1.0,
) -> np.ndarray:
    """Our maps ``[N, h, w]`` (one view's for a multi-view model) for every item decided as ``decided``: shown
    (ReLU'd and scaled), or before the ReLU; with ``sign`` -1, the same machinery for the opposite score."""
    logits, maps = predictor.class_maps(feed)
    probabilities = softmax(logits, predictor.temperature)
    task = predictor.meta.task_spec()
    maps = maps if view is None else maps[:, view]
    rule = combine if relu else weighted
    return np.stack([rule(m, sign * class_weights(task, p, decided)) for m, p in zip(maps, probabilities, strict=True)])


def compare(bundle: Path, studies: list[dict[str, np.ndarray | None]], layers: list[str]) -> None:
    """Our maps against Grad-CAM on the bundle's ``model.pt``, per view: torchcam's for each class's log-odds
    against the negative class, and PyTorch autograd's before the ReLU for those and for P(abnormal) (a negative
    decision)."""
    predictor = BundlePredictor(bundle)
    task = predictor.meta.task_spec()
    assert predictor.has_class_maps
    feed = predictor.preprocess_studies(studies)
    model = load_bundle_model(bundle)
    inputs = [torch.from_numpy(feed[name]) for name in predictor.input_names]
    temperature = predictor.temperature

    def abnormal(logits: torch.Tensor) -> torch.Tensor:
        return torch.softmax(logits / temperature, dim=1)[:, task.positive_indices].sum(dim=1)

    negative = task.index(task.negative)
    checks: list[tuple[int, Callable[[torch.Tensor], torch.Tensor]]] = [
        (c, lambda logits, c=c: logits[:, c] - logits[:, negative]) for c in range(len(task.classes)) if c != negative
    ]
    checks.append((task.index(task.negative), abnormal))
    for decided, score in checks:
        references = autograd_maps(model, layers, inputs, score)
        for view, reference in enumerate(references):
            index = None if len(references) == 1 else view
            given = np.ones(len(studies), bool) if index is None else feed["present"][:, view] > 0.5
            mine = ours(predictor, feed, decided, index, relu=False)
            r = [pearson(mine[i], reference[i]) for i in np.flatnonzero(given)]
            assert min(r) >= 0.99, (task.classes[decided], view, r)
            assert not mine[~given].any() and not reference[~given].any(), "a missing view's map is not empty"
    for view, layer in enumerate(layers if len(set(layers)) == len(layers) else []):
        index = None if len(layers) == 1 else view
        given = np.ones(len(studies), bool) if index is None else feed["present"][:, view] > 0.5
        r = []
        for cls in range(len(task.classes)):  # a class's map can be all zero after the ReLU: those are left out
            if cls == task.index(task.negative):
                continue  # a negative decision shows P(abnormal)'s map, checked above
            for sign in (1.0, -1.0):  # a briefly trained model's map can be all negative: then its opposite's shows
                reference = torchcam_maps(model, layer, inputs, cls, negative, sign)
                mine = ours(predictor, feed, cls, index, sign=sign)
                shown = np.flatnonzero(given & (reference.reshape(len(studies), -1).std(axis=1) > 1e-6))
                r += [pearson(mine[i], reference[i]) for i in shown]
        assert len(r) >= given.sum() // 2, "too few torchcam maps with any signal"
        assert min(r) >= 0.99, r


def test_one_view_maps_are_grad_cam_of_the_bundles_torch_model(chest_bundle: Path) -> None:
    studies, _ = chest_studies(12, 1)
    compare(chest_bundle, studies, ["backbone.layer4"])


def test_each_views_maps_are_grad_cam_of_the_bundles_torch_model(wrist_bundle: Path) -> None:
    studies, _ = wrist_studies(12, 1)
    compare(wrist_bundle, studies, ["backbone.0.layer4", "backbone.1.layer4"])


def test_a_shared_backbone_gets_one_map_per_view(tmp_path: Path) -> None:
    """The default wrist model shares one backbone between views: each view still gets its own map, the
    gradient-weighted feature map of that view's pass."""
    bundle = write_bundle(tmp_path / "b", task=WRIST, backbone=BACKBONE, input_size=SIZE, fit=wrist_studies(16, 0))
    studies, _ = wrist_studies(8, 3)
    compare(bundle, studies, ["backbone.0.layer4", "backbone.0.layer4"])


def test_a_randomised_model_gives_different_maps(chest_bundle: Path, tmp_path: Path) -> None:
    """Model randomisation (Adebayo et al. 2018): re-initialise every weight and the maps change (mean Spearman
    rank correlation with the trained model's maps below 0.5), so the maps depend on what the model learnt."""
    from scipy.stats import spearmanr

    from care_companion.models.bundle import ONNX_FILE, save_meta
    from care_companion.models.export import export_onnx

    trained = BundlePredictor(chest_bundle)
    model = load_bundle_model(chest_bundle)
    torch.manual_seed(123)
    for module in model.modules():
        if hasattr(module, "reset_parameters"):
            module.reset_parameters()  # type: ignore[operator]
    random_dir = tmp_path / "random"
    save_meta(random_dir, load_meta(chest_bundle))
    export_onnx(model, random_dir / ONNX_FILE, input_size=SIZE)
    randomised = BundlePredictor(random_dir)
    studies, _ = chest_studies(16, 5)
    feed = trained.preprocess_studies(studies)
    disease = CHEST.positive_indices[0]
    # before the ReLU: the briefly trained fixture's shown maps can be all zero
    a, b = ours(trained, feed, disease, None, relu=False), ours(randomised, feed, disease, None, relu=False)
    rho = [spearmanr(x.ravel(), y.ravel())[0] for x, y in zip(a, b, strict=True) if x.std() and y.std()]
    assert len(rho) >= 8 and float(np.mean(rho)) < 0.5, rho


def test_weights_of_a_negative_decision_are_the_gradient_of_the_disease_probability() -> None:
    """Finite differences of P(abnormal) with respect to the logits match :func:`class_weights`."""
    logits = np.array([0.3, 1.2, -0.4, 0.1])
    task = CHEST if len(CHEST.classes) == 4 else pytest.skip("chest has another number of classes")
    p = softmax(logits[None])[0]
    weights = class_weights(task, p, task.index(task.negative))
    step = 1e-6
    numeric = [
        (p_abnormal(softmax((logits + step * np.eye(4)[c])[None]), task)[0] - p_abnormal(p[None], task)[0]) / step
        for c in range(4)
    ]
    assert np.allclose(weights, numeric, atol=1e-5)
    disease = task.positive_indices[0]
    expected = np.eye(4)[disease] - np.eye(4)[task.index(task.negative)]  # a disease's log-odds against normal
    assert np.array_equal(class_weights(task, p, disease), expected)


def test_maps_render_as_see_through_colour_at_the_films_size() -> None:
    cam = combine(np.array([[[0.0, 2.0], [-1.0, 4.0]]]), np.array([1.0]))
    assert cam.max() == 1.0 and cam.min() == 0.0 and cam[0, 1] == 0.5
    assert not combine(np.array([[[-1.0, -2.0]]]), np.array([1.0])).any()  # nothing pushed towards the answer
    big = resize(cam, 30, 20)
    assert big.shape == (30, 20) and big.max() <= 1.0 + 1e-6
    rgba = colourise(cam)
    assert rgba.shape == (2, 2, 4) and rgba[1, 0, 3] == 0 and rgba[1, 1, 3] > rgba[0, 1, 3] > 0
    import io

    from PIL import Image

    png = Image.open(io.BytesIO(heatmap_png(cam, 30, 20)))
    assert png.size == (20, 30) and png.mode == "RGBA"


def test_a_backbone_whose_head_follows_the_pooling_exports_no_maps(tmp_path: Path) -> None:
    """LCNet's pooled features go through a further layer: its head-gradient maps would not be Grad-CAM, so the
    model is exported without them and asking for maps is a clear error."""
    from care_companion.errors import ModelError

    bundle = write_bundle(tmp_path / "lcnet", backbone="lcnet_050", input_size=64)
    predictor = BundlePredictor(bundle)
    assert not predictor.has_class_maps
    with pytest.raises(ModelError, match=CLASS_MAPS_OUTPUT):
        predictor.class_maps(predictor.preprocess([np.zeros((64, 64), np.uint8)]))


def test_an_int8_model_keeps_float_maps_close_to_the_float32_models(chest_bundle: Path, tmp_path: Path) -> None:
    """Quantisation leaves the maps' own arithmetic in float32 (only the backbone is INT8), and the INT8 model's
    maps follow the float32 model's."""
    from care_companion.models.quantize import quantize_int8

    fp32 = BundlePredictor(chest_bundle)
    studies, _ = chest_studies(16, 7)
    feed = fp32.preprocess_studies(studies)
    target = quantize_int8(chest_bundle / "model.onnx", tmp_path / "model.int8.onnx", feed[fp32.input_names[0]])
    import onnxruntime as ort

    session = ort.InferenceSession(str(target), providers=["CPUExecutionProvider"])
    _, maps8 = session.run(["logits", CLASS_MAPS_OUTPUT], dict(feed))
    _, maps32 = fp32.class_maps(feed)
    disease = CHEST.positive_indices[0]
    r = [pearson(a[disease], b[disease]) for a, b in zip(maps8, maps32, strict=True)]
    assert float(np.median(r)) >= 0.9, r


def test_output_stride_16_doubles_the_maps_resolution_and_travels_with_the_bundle(tmp_path: Path) -> None:
    """A dilated last stage (``Recipe.output_stride=16``) gives maps twice as fine from the same weights; the
    bundle records it, so its ``model.pt`` is rebuilt with it."""
    from care_companion.models.bundle import CHECKPOINT_FILE, BundleMeta, save_meta
    from care_companion.models.factory import create_model

    x = torch.randn(2, 1, 96, 96)
    coarse, _ = create_model(CHEST, "test_resnet")
    fine, _ = create_model(CHEST, "test_resnet", output_stride=16)
    assert coarse.explained(x)[-1].shape[-2:] == (3, 3) and fine.explained(x)[-1].shape[-2:] == (6, 6)
    save_meta(tmp_path, BundleMeta.for_task(CHEST, backbone="test_resnet", output_stride=16, input_size=96))
    torch.save(fine.state_dict(), tmp_path / CHECKPOINT_FILE)
    assert load_bundle_model(tmp_path).explained(x)[-1].shape[-2:] == (6, 6)


def test_each_cell_is_drawn_at_its_centre() -> None:
    """A map's cells land where their centres say, and an even split resizes as PIL's bilinear filter does."""
    from PIL import Image

    cam = np.zeros((3, 3))
    cam[1, 2] = 1.0
    big = resize(cam, 100, 50, MapCentres(rows=[0.1, 0.305, 0.9], cols=[0.2, 0.5, 0.61]))
    assert np.unravel_index(big.argmax(), big.shape) == (30, 30)  # the pixels centred at 0.305 * 100, 0.61 * 50
    assert big[:10].max() == 0.0 and big[-9:].max() == 0.0, "beyond the outer centres the outer cells' values"
    grid = np.random.default_rng(0).random((4, 5)).astype(np.float32)
    pil = np.asarray(Image.fromarray(grid, mode="F").resize((40, 32), Image.Resampling.BILINEAR))
    assert np.allclose(resize(grid, 32, 40), pil, atol=1e-5)
    with pytest.raises(ValueError, match="centres"):
        resize(cam, 10, 10, MapCentres.even(2, 3))


def test_receptive_centres_follow_the_layers_geometry() -> None:
    """A strided 1 x 1 convolution's cell ``i`` sees input pixel ``2 i`` alone: its centre is that pixel's; a
    ResNet's centres increase across the input and stay on it."""
    from care_companion.models.base import median_position, receptive_centres
    from care_companion.models.factory import create_backbone

    class Strided(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv = torch.nn.Conv2d(1, 3, 1, stride=2)

        def forward_features(self, x: torch.Tensor) -> torch.Tensor:
            return self.conv(x)

    centres = receptive_centres(Strided(), 16)
    assert np.allclose(centres.rows, [(2 * i + 0.5) / 16 for i in range(8)])
    assert np.allclose(centres.cols, centres.rows)
    assert median_position(np.array([0.0, 1.0, 1.0, 0.0])) == 2.0  # two equal pixels: their common edge
    net, _, _ = create_backbone("test_resnet", output_stride=8)
    resnet = receptive_centres(net, 64)
    assert len(resnet.rows) == 8 and np.all(np.diff(resnet.rows) > 0) and 0 < resnet.rows[0] < resnet.rows[-1] < 1
