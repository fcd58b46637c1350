"""The offline drift report: a folder like the reference gives no alarm, a shifted one does, bad files are
listed not fatal, the HTML is self-contained, and ``drift profile`` rebuilds or explains why it cannot."""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from care_companion.cli.common import EXIT_DRIFT, EXIT_ERROR
from care_companion.cli.main import app
from care_companion.config import Settings
from care_companion.data.rejects import RejectSources
from care_companion.data.synthetic_chest import synth_chest
from care_companion.errors import ConfigError, DataError, ModelError
from care_companion.models.bundle import PROFILE_FILE
from care_companion.monitoring.drift import FAMILIES
from care_companion.workflows.drift_report import drift_report
from tests.conftest import add_profile, write_bundle

runner = CliRunner()


def chest_folder(root: Path, transform: Callable[[np.ndarray], np.ndarray], *, per_class: int = 12) -> Path:
    """Synthetic chest films (drawn like the reference's) written as PNGs, each passed through ``transform``."""
    rng = np.random.default_rng(100)
    root.mkdir(parents=True)
    for label in ("normal", "pneumonia", "tuberculosis"):
        for k in range(per_class):
            Image.fromarray(transform(synth_chest(label, rng, 96))).save(root / f"{label}-{k}.png")
    return root


@pytest.fixture(scope="module")
def bundle(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return add_profile(write_bundle(tmp_path_factory.mktemp("drift") / "bundle"))


@pytest.fixture(scope="module")
def folders(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("folders")
    like = chest_folder(root / "like", lambda x: x)
    nested = like / "more" / "deeper"
    nested.mkdir(parents=True)
    (nested / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"\0" * 40)  # a PNG cut short
    (like / "notes.jpg").write_bytes(b"not an image at all")
    inverted = chest_folder(root / "inverted", lambda x: (255 - x).astype(np.uint8))
    empty = root / "empty"
    empty.mkdir()
    (empty / "readme.txt").write_text("no images here")
    return {"like": like, "inverted": inverted, "empty": empty}


def test_like_folder_no_drift_and_self_contained_report(
    bundle: Path, folders: dict[str, Path], settings: Settings, tmp_path: Path
) -> None:
    found = drift_report(str(bundle), folders["like"], "chest", settings, tmp_path / "out" / "report.html")
    assert found.drifted is False and found.flagged == []
    assert found.window_inputs == found.window_size == 36 and found.files == 38
    assert all(found.raw_p_values[f] is not None for f in FAMILIES)
    assert sorted(s.path for s in found.skipped) == ["more/deeper/broken.png", "notes.jpg"]
    assert {s.reason for s in found.skipped} == {"truncated", "not_an_image"}

    text = found.report.read_text()
    assert not re.search(r"https?://", text)
    assert not re.search(r"""(src|href)\s*=\s*(?!["']?data:image/png)""", text)  # every src is an embedded PNG
    assert text.count('src="data:image/png;base64,') == 4  # features, embedding, class mix, confidence
    assert "No drift found" in text and "not about any patient" in text
    for family in FAMILIES:
        assert f"<b>{family}</b>" in text
    for part in ("edge_density", "KL baseline", "Rejection rate", "broken.png", "notes.jpg", str(bundle), "v-test"):
        assert part in text


def test_inverted_images_drift_in_their_features(
    bundle: Path, folders: dict[str, Path], settings: Settings, tmp_path: Path
) -> None:
    found = drift_report(str(bundle), folders["inverted"], None, settings, tmp_path / "report.html")
    assert found.drifted is True and "features" in found.flagged
    by_name = {f.name: f for f in found.features}
    assert by_name["mean"].adjusted < 1e-6 and by_name["mean"].current_median > by_name["mean"].reference_median
    assert found.kl_baseline is not None and found.kl_baseline > 0.5
    assert "Drift found" in found.report.read_text()


def test_bad_inputs_raise_clear_errors(
    bundle: Path, folders: dict[str, Path], settings: Settings, tmp_path: Path
) -> None:
    out = tmp_path / "r.html"
    with pytest.raises(DataError, match="no image files"):
        drift_report(str(bundle), folders["empty"], "chest", settings, out)
    with pytest.raises(ConfigError, match="chest model, not a wrist model"):
        drift_report(str(bundle), folders["like"], "wrist", settings, out)
    with pytest.raises(DataError, match="a drift test needs at least 50"):
        drift_report(str(bundle), folders["like"], "chest", settings, out, min_images=50)
    bare = write_bundle(tmp_path / "bare")
    with pytest.raises(ModelError, match="care-companion drift profile"):
        drift_report(str(bare), folders["like"], "chest", settings, out)
    assert not out.exists()


def test_cli_exit_codes(bundle: Path, folders: dict[str, Path], cli_env: Path, tmp_path: Path) -> None:
    def run(folder: Path | str, out: str) -> tuple[int, str]:
        args = ["drift", "report", "--task", "chest", "--reference", str(bundle), "--current", str(folder)]
        result = runner.invoke(app, [*args, "--out", str(tmp_path / out), "--workers", "1"])
        return result.exit_code, result.output

    code, output = run(folders["like"], "like.html")
    assert code == 0, output
    assert "no drift found" in output and "2 of 38 files skipped" in output and (tmp_path / "like.html").is_file()

    code, output = run(folders["inverted"], "inverted.html")
    assert code == EXIT_DRIFT == 3
    assert "drift found" in output and "features" in output

    missing = tmp_path / "nowhere"
    code, output = run(missing, "missing.html")
    assert code == EXIT_ERROR and "folder not found" in output and str(missing) in output.replace("\n", "")
    code, output = run(folders["empty"], "empty.html")
    assert code == EXIT_ERROR and "no image files" in output


def test_profile_needs_the_training_data_set(cli_env: Path, tmp_path: Path) -> None:
    bare = write_bundle(tmp_path / "bare")
    result = runner.invoke(app, ["drift", "profile", str(bare)])
    assert result.exit_code == EXIT_ERROR
    flat = " ".join(result.output.split())
    assert "data-set version v-test" in flat and "not in the object store" in flat
    assert not (bare / PROFILE_FILE).exists()


def test_profile_rebuilt_from_the_store(cli_env: Path, tmp_path: Path) -> None:
    from care_companion.config import get_settings
    from care_companion.data.chest import import_chest
    from care_companion.data.synthetic_chest import write_synthetic_chest_tree
    from care_companion.models.bundle import load_meta, save_meta
    from care_companion.monitoring.profile import ReferenceProfile
    from care_companion.storage import store_from_settings

    source = tmp_path / "source"
    write_synthetic_chest_tree(source, 12, seed=3, size=96, include_unknown=False)
    imported = import_chest(
        [source], store_from_settings(get_settings()), seed=3, rejects=RejectSources(non_xray=6), workers=1
    )
    bare = write_bundle(tmp_path / "bare")
    meta = load_meta(bare)
    save_meta(bare, meta.model_copy(update={"dataset_version": imported.version}))

    result = runner.invoke(app, ["drift", "profile", str(bare)])
    assert result.exit_code == 0, result.output
    profile = ReferenceProfile.load(bare / PROFILE_FILE)
    assert profile.task == "chest" and profile.counts["feature_images"] > 0 and profile.counts["validation_items"] > 0


def test_observations_match_the_service_path(bundle: Path, folders: dict[str, Path]) -> None:
    """Each file is decoded, described, scored and decided as the service does with an upload of it."""
    from care_companion.evaluation.decision import decide
    from care_companion.imaging.decode import decode_image
    from care_companion.models.predictor import BundlePredictor
    from care_companion.monitoring.features import describe
    from care_companion.tasks import CHEST
    from care_companion.workflows.drift_report import observe_folder

    predictor = BundlePredictor(bundle)
    observations, skipped = observe_folder(predictor, folders["inverted"], CHEST)
    assert len(observations) == 36 and not skipped
    first = sorted(folders["inverted"].glob("*.png"))[0]
    image = decode_image(first.read_bytes(), name=first.name)
    features, histogram = describe(image)
    probs = predictor.predict_proba([image])
    assert np.allclose(observations[0].features[0], features) and np.allclose(observations[0].histograms[0], histogram)
    assert np.allclose(observations[0].probabilities, probs[0], atol=1e-5)
    assert observations[0].decided == int(decide(probs, CHEST, predictor.thresholds)[0])


def test_wrist_images_are_one_view_studies(settings: Settings, tmp_path: Path) -> None:
    from care_companion.data.synthetic_wrist import synthetic_wrist_studies
    from care_companion.tasks import WRIST

    bundle = add_profile(write_bundle(tmp_path / "wrist", task=WRIST), per_class=10)
    folder = tmp_path / "laterals"
    folder.mkdir()
    studies = synthetic_wrist_studies(16, seed=5, size=96, one_view_rate=0.0)
    for k, study in enumerate(studies):
        Image.fromarray(study.views["lateral"]).save(folder / f"study{k}.png")
    found = drift_report(str(bundle), folder, "wrist", settings, tmp_path / "r.html", view="lateral")
    assert found.window_inputs == 16 and found.drifted is not None
    assert 0.0 <= found.raw_p_values["rejections"] <= 1.0  # the wrist task's reject class is watched too
    assert "each image taken as view" in found.report.read_text()
    with pytest.raises(ConfigError, match="use one of pa, lateral"):
        drift_report(str(bundle), folder, "wrist", settings, tmp_path / "r.html", view="ap")
