"""Heat maps through the service: every answer of a model with class maps carries one map per view read, the
stored prediction's maps are served as see-through PNGs at the film's size, under the prediction's department
rules."""

from __future__ import annotations

import io
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image

from care_companion.imaging.decode import decode_image
from care_companion.models.bundle import load_meta, save_meta
from care_companion.models.factory import load_bundle_model
from care_companion.models.heatmap import MapCentres, heatmap_png, view_maps
from care_companion.models.predictor import BundlePredictor, softmax
from care_companion.records.repos import create_patient, create_study
from care_companion.records.schemas import PatientCreate, StudyCreate
from care_companion.tasks import WRIST
from tests.conftest import write_bundle
from tests.helpers import seed_users, service_client, tokens_for

USERS = (("tech", "technician", "er"), ("far", "radiologist", "icu"), ("rad", "radiologist", "er"))


def png(seed: int, height: int, width: int) -> bytes:
    pixels = (np.random.default_rng(seed).random((height, width)) * 255).astype(np.uint8)
    out = io.BytesIO()
    Image.fromarray(pixels).save(out, format="PNG")
    return out.getvalue()


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    root = tmp_path_factory.mktemp("heatmaps")
    bundle = write_bundle(root / "wrist", task=WRIST, backbone="test_resnet", reject_bias=-20)
    meta = load_meta(bundle)  # the cells' centres, measured as training records them
    save_meta(bundle, meta.model_copy(update={"map_centres": load_bundle_model(bundle).map_centres(meta.input_size)}))
    with service_client(root / "service", login=False, wrist_model=str(bundle)) as client:
        app: Any = client.app
        with app.state.sessions() as session, session.begin():
            seed_users(session, USERS)
            patient = create_patient(session=session, patient_in=PatientCreate(mrn="H1", name="Al", department="er"))
            study = create_study(session=session, study_in=StudyCreate(patient_id=patient.id, task="wrist")).id
        tokens = tokens_for(app.state.settings, USERS)
        yield {"client": client, "study": study, "tokens": tokens, "bundle": bundle}


def test_a_model_without_class_maps_answers_without_a_heat_map(tmp_path: Path) -> None:
    """(First in the module: two services with SQLite stores in one process at once failed a migration here.)"""
    bundle = write_bundle(tmp_path / "lcnet", task=WRIST, backbone="lcnet_050", reject_bias=-20)
    with service_client(tmp_path / "service", wrist_model=str(bundle)) as client:
        response = client.post("/v1/predict/wrist", files={"pa": ("pa.png", png(7, 100, 100), "image/png")})
    assert response.status_code == 200, response.text
    assert response.json()["heatmap"] is None


def post(world: dict[str, Any], views: dict[str, bytes], *, study: bool = True) -> dict[str, Any]:
    response = world["client"].post(
        "/v1/predict/wrist",
        files={view: (f"{view}.png", data, "image/png") for view, data in views.items()},
        data={"study_id": str(world["study"])} if study else {},
        headers={"Authorization": f"Bearer {world['tokens']['tech']}"},
    )
    assert response.status_code == 200, response.text
    return dict(response.json())


def get(world: dict[str, Any], path: str, user: str = "rad") -> Any:
    return world["client"].get(path, headers={"Authorization": f"Bearer {world['tokens'][user]}"})


def test_each_view_read_gets_the_engines_map_and_a_png_at_its_films_size(world: dict[str, Any]) -> None:
    pa, lateral = png(1, 120, 80), png(2, 90, 150)
    body = post(world, {"pa": pa, "lateral": lateral})
    heatmap = body["heatmap"]
    assert heatmap["method"] == "grad-cam" and set(heatmap["views"]) == {"pa", "lateral"}
    assert heatmap["shows"] == ("fracture" if body["label"] == "fracture" else "P(abnormal)")
    assert (heatmap["views"]["pa"]["height"], heatmap["views"]["pa"]["width"]) == (120, 80)
    # the map equals the bundle's own engine's on the same films
    engine = BundlePredictor(world["bundle"])
    feed = engine.preprocess_studies([{"pa": decode_image(pa, name="pa"), "lateral": decode_image(lateral, name="l")}])
    logits, maps = engine.class_maps(feed)
    expected = view_maps(WRIST, maps[0], softmax(logits, engine.temperature)[0], WRIST.index(body["label"]))
    for view in ("pa", "lateral"):
        assert np.allclose(heatmap["views"][view]["grid"], expected[view], atol=1e-3)
    assert any(np.asarray(v["grid"]).max() > 0 for v in heatmap["views"].values())

    assert heatmap["url"] == f"/v1/predictions/{body['prediction_id']}/heatmap.png"
    first = get(world, heatmap["url"])
    assert first.status_code == 200 and first.headers["content-type"] == "image/png"
    image = Image.open(io.BytesIO(first.content))
    assert image.mode == "RGBA" and image.size == (80, 120)  # width x height of the PA film
    centres = load_meta(world["bundle"]).map_centres
    assert centres is not None and centres != MapCentres.even(*np.shape(heatmap["views"]["pa"]["grid"]))
    assert heatmap["views"]["pa"]["centres"] == centres.model_dump()  # each cell drawn where it is centred
    assert first.content == heatmap_png(heatmap["views"]["pa"]["grid"], 120, 80, centres)
    second = get(world, f"/v1/predictions/{body['prediction_id']}/heatmap/lateral.png")
    assert second.status_code == 200 and Image.open(io.BytesIO(second.content)).size == (150, 90)


def test_a_missing_view_has_no_map_and_asking_for_it_is_404(world: dict[str, Any]) -> None:
    body = post(world, {"lateral": png(3, 100, 100)})
    assert set(body["heatmap"]["views"]) == {"lateral"}
    missing = get(world, f"/v1/predictions/{body['prediction_id']}/heatmap/pa.png")
    assert missing.status_code == 404 and "lateral" in missing.json()["detail"]
    assert get(world, f"/v1/predictions/{body['prediction_id']}/heatmap.png").status_code == 200  # the view read
    rows = get(world, "/v1/worklist?task=wrist&limit=100").json()["data"]
    row = next(r for r in rows if r["prediction_id"] == body["prediction_id"])
    assert row["confidence"] == "low" and row["confidence_reasons"] == body["confidence_reasons"]  # kept for reading
    assert any("missing" in reason for reason in row["confidence_reasons"])


def test_another_departments_user_and_unstored_results_get_no_map(world: dict[str, Any]) -> None:
    body = post(world, {"pa": png(4, 100, 100), "lateral": png(5, 100, 100)})
    other = get(world, body["heatmap"]["url"], user="far")
    assert other.status_code == 404 and other.json()["error"] == "not_found"
    assert world["client"].get(body["heatmap"]["url"]).status_code == 401
    anonymous = post(world, {"pa": png(6, 100, 100)}, study=False)
    assert anonymous["heatmap"]["views"]["pa"]["grid"] and anonymous["heatmap"]["url"] is None
    if anonymous["prediction_id"] is not None:
        assert get(world, f"/v1/predictions/{anonymous['prediction_id']}/heatmap.png").status_code == 404
    assert get(world, "/v1/predictions/999999/heatmap.png").status_code == 404


def test_the_reading_view_gets_each_views_film_and_the_worklist_names_them(world: dict[str, Any]) -> None:
    """The worklist row of a study names its latest film of each view; each is served as the grayscale PNG the
    model read, at its own size, to readers of the study's department only."""
    pa, lateral = png(8, 110, 70), png(9, 64, 128)
    body = post(world, {"pa": pa, "lateral": lateral})
    rows = get(world, "/v1/worklist?task=wrist&limit=100").json()["data"]
    row = next(r for r in rows if r["prediction_id"] == body["prediction_id"])
    assert set(row["images"]) == {"pa", "lateral"}
    for view, sent in (("pa", pa), ("lateral", lateral)):
        film = get(world, f"/v1/images/{row['images'][view]}/film.png")
        assert film.status_code == 200 and film.headers["content-type"] == "image/png"
        shown = np.asarray(Image.open(io.BytesIO(film.content)))
        assert np.array_equal(shown, decode_image(sent, name=view))  # the pixels the model read, full size
        assert get(world, f"/v1/images/{row['images'][view]}/film.png", user="far").status_code == 404
    assert get(world, "/v1/images/999999/film.png").status_code == 404
