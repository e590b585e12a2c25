import json
from pathlib import Path

import pytest

from ovaal_backend.cli import main
from ovaal_backend.config import Config
from ovaal_backend.simulator.presets import METHOD_FIELDS
from tests.helpers.synthetic import make_dataset

CAMVID = Path(__file__).resolve().parents[2] / "shared" / "data" / "camvid"
FAST = ["--preset", "cpu", "--image-size", "48x64", "--encoder-weights", "none", "--rounds", "2",
        "--pixels-per-round", "6", "--init-pixels", "6", "--first-round-epochs", "2", "--epochs", "1",
        "--semi-epochs", "1", "--quiet"]


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    root = tmp_path_factory.mktemp("synthetic")
    return make_dataset(root / "train", 6, seed=1), make_dataset(root / "val", 3, seed=2)


@pytest.mark.slow  # a whole simulation per method
@pytest.mark.parametrize("method", ["ovaal", "ovaal+", "pixelpick", "random"])
def test_simulate_writes_the_result_file(folders, tmp_path, method):
    train, val = folders
    out, plot = tmp_path / "result.json", tmp_path / "result.png"
    assert main(["simulate", "--train", str(train), "--eval", str(val), "--out", str(out), "--plot", str(plot),
                 "--method", method, *FAST]) == 0
    result = json.loads(out.read_text())
    assert result["method"] == method
    rounds = result["rounds"]
    assert [r["round"] for r in rounds] == [0, 1, 2, 3]
    assert [r["labelled_pixels"] for r in rounds] == [36, 72, 108, 108]
    assert rounds[-1]["phase"] == ("semi" if method == "ovaal+" else "final")
    for r in rounds:
        assert 0 <= r["miou"] <= 100 and set(r["per_class_iou"]) == {"background", "square", "disc"}
        assert r["labelled_fraction"] == pytest.approx(r["labelled_pixels"] / (6 * 48 * 64))
    assert result["diversity"]["pixels"] == 72 and result["diversity"]["spatial"] > 0
    assert plot.stat().st_size > 1000
    if method == "ovaal+":
        ablation = result["final_without_semi"]
        assert ablation["phase"] == "final" and ablation["labelled_pixels"] == 108
    else:
        assert result["final_without_semi"] is None


@pytest.mark.slow  # a whole simulation (or several)
def test_exclude_void_never_queries_void(folders, tmp_path):
    train, val = folders
    out = tmp_path / "r.json"
    assert main(["simulate", "--train", str(train), "--eval", str(val), "--out", str(out), "--method", "ovaal",
                 "--exclude-void", *FAST]) == 0
    result = json.loads(out.read_text())
    assert all(r["void_answers"] == 0 for r in result["rounds"])
    assert "excluded" in result["void_policy"]


@pytest.mark.slow  # a whole simulation (or several)
def test_table_ii_grid_combinations_are_accepted(folders, tmp_path):
    train, val = folders
    out = tmp_path / "r.json"
    assert main(["simulate", "--train", str(train), "--eval", str(val), "--out", str(out),
                 "--classifier", "multiclass", "--selection", "random", "--class-balance", "0", *FAST]) == 0
    assert json.loads(out.read_text())["method"] == "random"
    assert main(["simulate", "--train", str(train), "--eval", str(val), "--out", str(out),
                 "--classifier", "ova-shared", "--selection", "random", *FAST]) == 0
    assert json.loads(out.read_text())["method"] == "ova-shared+random"
    assert main(["simulate", "--train", str(train), "--eval", str(val), "--out", str(out),
                 "--classifier", "multiclass", "--selection", "ova", *FAST]) == 0
    assert json.loads(out.read_text())["method"] == "multiclass+ova"


@pytest.mark.slow  # a whole simulation (or several)
def test_method_default_is_what_the_backend_runs_with_no_setting(folders, tmp_path):
    train, val = folders
    out = tmp_path / "r.json"
    assert main(["simulate", "--train", str(train), "--eval", str(val), "--out", str(out), "--method", "default",
                 *FAST]) == 0
    result = json.loads(out.read_text())
    assert result["method"] == "default" and result["is_default"]
    assert {k: result["config"][k] for k in METHOD_FIELDS} == {k: getattr(Config(), k) for k in METHOD_FIELDS}
    assert main(["simulate", "--train", str(train), "--eval", str(val), "--out", str(out), "--method", "default",
                 "--class-balance", "1", *FAST]) == 0
    assert not json.loads(out.read_text())["is_default"]


@pytest.mark.slow  # a whole simulation (or several)
def test_table_ii_cells_keep_their_classifier(folders, tmp_path):
    train, val = folders
    out = tmp_path / "r.json"
    for method, classifier, selection in [("ova-margin", "ova-shared", "margin"),
                                          ("softmax-ovaselect", "multiclass", "ova")]:
        assert main(["simulate", "--train", str(train), "--eval", str(val), "--out", str(out), "--method", method,
                     *FAST]) == 0
        config = json.loads(out.read_text())["config"]
        assert (config["classifier"], config["selection"], config["class_balance"]) == (classifier, selection, 0.0)


@pytest.mark.slow  # a whole simulation (or several)
def test_converged_preset_trains_the_final_model_afresh_and_measures_pool_masks(folders, tmp_path):
    train, val = folders
    out = tmp_path / "r.json"
    assert main(["simulate", "--train", str(train), "--eval", str(val), "--out", str(out), "--method", "default",
                 "--preset", "converged", "--image-size", "48x64", "--encoder-weights", "none", "--rounds", "1",
                 "--init-pixels", "6", "--pixels-per-round", "6", "--first-round-epochs", "1", "--epochs", "1",
                 "--semi-epochs", "2", "--logit-taus", "0.5,2", "--convergence-check", "--quiet"]) == 0
    result = json.loads(out.read_text())
    assert result["config"]["final_from_scratch"] and result["config"]["encoder_lr_ratio"] == 0.1
    final = result["rounds"][-1]
    assert final["phase"] == "final" and set(final["logit_adjusted"]) == {"0.5", "2.0"}
    pool = result["pool"]
    assert 0 <= pool["miou"] <= 100 and set(pool["per_class_iou"]) == {"background", "square", "disc"}
    assert set(pool["logit_adjusted"]) == {"0.5", "2.0"}
    convergence = result["convergence"]
    assert (convergence["final_epochs"], convergence["double_epochs"]) == (2, 4)
    assert convergence["final_miou"] == final["miou"] and 0 <= convergence["double"]["miou"] <= 100


def test_image_size_must_be_height_x_width(folders, tmp_path, capsys):
    train, val = folders
    with pytest.raises(SystemExit):
        main(["simulate", "--train", str(train), "--eval", str(val), "--out", str(tmp_path / "r.json"),
              "--image-size", "48-64"])
    assert "HEIGHTxWIDTH" in capsys.readouterr().err


def test_bad_input_gives_a_message_not_a_traceback(folders, tmp_path, capsys):
    train, _ = folders
    assert main(["simulate", "--train", str(tmp_path), "--eval", str(train), "--out", str(tmp_path / "r.json"),
                 *FAST]) == 2
    assert "no images/ folder" in capsys.readouterr().err
    assert main(["simulate", "--train", str(train), "--eval", str(train), "--out", str(tmp_path / "r.json"),
                 "--classifier", "multiclass", "--semi", *FAST]) == 2
    assert "OVA" in capsys.readouterr().err


@pytest.mark.camvid
@pytest.mark.slow  # a simulation on CamVid
@pytest.mark.skipif(not CAMVID.is_dir(), reason="../shared/data/camvid is not present")
def test_camvid_smoke(tmp_path):
    out = tmp_path / "camvid.json"
    assert main(["simulate", "--train", str(CAMVID / "train"), "--eval", str(CAMVID / "val"), "--out", str(out),
                 "--method", "ovaal", "--encoder-weights", "lite0-offline", "--max-train-images", "4",
                 "--max-eval-images", "2", "--rounds", "1", "--first-round-epochs", "1", "--epochs", "1",
                 "--semi-epochs", "0", "--quiet"]) == 0
    result = json.loads(out.read_text())
    assert result["classes"] == json.loads((CAMVID / "classes.json").read_text())["classes"]
    for r in result["rounds"]:
        assert list(r["per_class_iou"]) == result["classes"] and 0 <= r["miou"] <= 100
    assert result["rounds"][-1]["labelled_pixels"] == 4 * 44
