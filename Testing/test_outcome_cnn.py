"""The outcome CNN (rtrai outcome cnn fit | evaluate | predict) on real OpenKBP doses with a planted endpoint.

The cohort is built once per session in the test's tmp folder: OpenKBP validation patients, shrunk to half the
resolution and written as case folders (fast to read), where the "toxic" half of the patients get at least 50 Gy
everywhere in the left parotid and the others at most 20 Gy there. The label is then a property of where the dose lies
(one organ, one side: the right parotid, with its own real dose from 5 to 60 Gy, is left as planned), which the CNN
must find from 20 training patients. Bad inputs use small phantoms.
"""

from __future__ import annotations

import json
import warnings

import numpy as np
import pandas as pd
import pytest
import SimpleITK as sitk
from conftest import shared_path

from rtrai.cli import main
from rtrai.core.errors import InputError, ModelError
from rtrai.outcome import cnn

HIGH, LOW = 50.0, 20.0
FAST = ["--spacing", "8", "--epochs", "40", "--patience", "40", "--batch", "8", "--lr", "3e-3"]


def _shrink(image: sitk.Image, label: bool = False) -> sitk.Image:
    """Half the resolution (mean of 2x2x2 voxels); a mask keeps the voxels at least half inside."""
    if not label:
        return sitk.BinShrink(image, [2, 2, 2])
    return sitk.Cast(sitk.BinShrink(sitk.Cast(image, sitk.sitkFloat32), [2, 2, 2]) >= 0.5, sitk.sitkUInt8)


@pytest.fixture(scope="session")
def planted(tmp_path_factory):
    """(cases folder, table path, train IDs, test IDs) of the planted cohort."""
    from rtrai.core.case import Case
    from rtrai.io.case_io import list_cases, read_case, write_case

    source = shared_path("openkbp", "validation-pats")
    root = tmp_path_factory.mktemp("planted")
    cases, rows = root / "cases", []
    for k, folder in enumerate(list_cases(source)):
        original = read_case(folder)
        if not {"Parotid_L", "Parotid_R"} <= set(original.structures):
            continue
        label = len(rows) % 2
        dose = _shrink(original.dose)
        left = _shrink(original.structures["Parotid_L"], label=True)
        array = sitk.GetArrayFromImage(dose)
        inside = sitk.GetArrayViewFromImage(left) != 0
        # toxic: at least HIGH Gy everywhere in the left parotid; not toxic: at most LOW Gy there
        array[inside] = np.maximum(array[inside], HIGH) if label else np.minimum(array[inside], LOW)
        dose = sitk.GetImageFromArray(array)
        dose.CopyInformation(left)
        case = Case(ct=sitk.Cast(_shrink(original.ct), sitk.sitkInt16), dose=dose,
                    metadata={"patient_id": folder.name})
        for name in ("Parotid_L", "Parotid_R", "Bone_Mandible", "SpinalCord"):
            if name in original.structures:
                case.add_structure(name, _shrink(original.structures[name], label=True))
        write_case(case, cases / folder.name)
        rows.append({"ID": folder.name, "toxicity": label, "age": 50 + k})
        if len(rows) == 30:
            break
    table = pd.DataFrame(rows)
    table.to_csv(root / "table.csv", index=False)
    train, test = table["ID"][:20].tolist(), table["ID"][20:].tolist()
    table[table["ID"].isin(train)].to_csv(root / "train.csv", index=False)
    table[table["ID"].isin(test)].to_csv(root / "test.csv", index=False)
    return cases, root, train, test


@pytest.fixture(scope="session")
def fitted(planted, tmp_path_factory):
    cases, root, train, test = planted
    model = tmp_path_factory.mktemp("model") / "cnn"
    rc = main(["outcome", "cnn", "fit", "--cases", str(cases), "--table", str(root / "train.csv"), "--id", "ID",
               "--label", "toxicity", "--inputs", "dose,ct,structures", *FAST, "--cache", str(root / "cache"),
               "-o", str(model)])
    assert rc == 0
    return model


def test_fit_writes_a_checked_model(fitted, planted):
    manifest = json.loads((fitted / "manifest.json").read_text())
    assert manifest["task"] == "outcome-cnn" and manifest["labels"] == ["toxicity"]
    assert manifest["inputs"]["channels"] == ["dose", "ct", "Parotid_L", "Parotid_R"]
    assert manifest["training"]["n"] == 20 and manifest["training"]["n_positive"] == 10
    assert manifest["training"]["pos_weight"] == pytest.approx(1.0, abs=0.35)
    from rtrai.core.provenance import sha256_file

    assert manifest["sha256"] == sha256_file(fitted / "weights.safetensors")
    assert (fitted / "provenance.json").is_file()
    model = cnn.OutcomeCNN.load(fitted)
    assert model.spec.box == (16, 20, 20)


def test_evaluate_with_gradcam_finds_the_planted_organ(fitted, planted, tmp_path, capsys):
    cases, root, train, test = planted
    out = tmp_path / "eval"
    rc = main(["outcome", "cnn", "evaluate", "--model", str(fitted), "--cases", str(cases), "--table",
               str(root / "test.csv"), "--gradcam", "--bootstrap", "200", "--cache", str(root / "cache"),
               "-o", str(out)])
    assert rc == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["n"] == 10 and metrics["n_positive"] == 5
    # >= 50 against <= 20 Gy in one parotid is a strong signal: the held-out patients must be ranked almost perfectly
    assert metrics["auc"] >= 0.8, metrics
    assert 0 <= metrics["brier"] < 0.25
    for name in ("roc.png", "calibration.png", "gradcam_montage.png", "gradcam_mean_positive.nrrd",
                 "dose_mean_positive.nrrd", "predictions.csv", "gradcam_structures.csv", "provenance.json"):
        assert (out / name).is_file(), name
    for case_id in test:  # one map per patient, on that patient's own grid
        cam = sitk.ReadImage(str(out / "gradcam" / f"{case_id}.nrrd"))
        ct = sitk.ReadImage(str(cases / case_id / "CT.nrrd"))
        assert cam.GetSize() == ct.GetSize() and np.allclose(cam.GetOrigin(), ct.GetOrigin())
        values = sitk.GetArrayViewFromImage(cam)
        assert values.min() >= 0 and values.max() <= 1 + 1e-6
    shares = pd.read_csv(out / "gradcam_structures.csv")
    assert {"Parotid_L", "Parotid_R", "Parotid_L+Parotid_R", "Bone_Mandible"} <= set(shares["structure"])
    assert shares["volume_share"].between(0, 1).all()
    # a map with no evidence for the outcome anywhere (all zero after Grad-CAM's ReLU) has no shares, not zeros
    empty = set(shares["ID"][shares["attribution_share"].isna()])
    for case_id in empty:
        assert sitk.GetArrayFromImage(sitk.ReadImage(str(out / "gradcam" / f"{case_id}.nrrd"))).max() == 0
    shares = shares.dropna()
    assert shares["attribution_share"].between(0, 1).all()
    wide = shares.pivot(index="ID", columns="structure", values="attribution_share")
    # the parotids do not overlap: the share inside their union is the sum of the two
    np.testing.assert_allclose(wide["Parotid_L+Parotid_R"], wide["Parotid_L"] + wide["Parotid_R"], atol=1e-4)
    np.testing.assert_allclose(shares["enrichment"], shares["attribution_share"] / shares["volume_share"], rtol=1e-3)
    # the default organs region: most of the attribution lies in the parotids, and more in the planted one
    assert metrics["gradcam"]["layer"] == "inside"
    assert wide["Parotid_L+Parotid_R"].median() > 0.5
    assert wide["Parotid_L"].median() > wide["Parotid_R"].median(), wide
    summary = metrics["gradcam"]["structures"]["Parotid_L"]
    assert summary["cases"] == 10 - len(empty)
    assert summary["attribution_share_mean"] == pytest.approx(wide["Parotid_L"].mean(), abs=1e-4)
    assert "Grad-CAM inside Parotid_L" in capsys.readouterr().out


def test_predict_matches_evaluate_and_is_deterministic(fitted, planted, tmp_path):
    cases, root, train, test = planted
    out = tmp_path / "predictions.csv"
    assert main(["outcome", "cnn", "predict", "--model", str(fitted), "--cases", str(cases), "--table",
                 str(root / "test.csv"), "--cache", str(root / "cache"), "-o", str(out)]) == 0
    first = pd.read_csv(out)
    assert list(first["ID"]) == test and first["probability"].between(0, 1).all()
    assert main(["outcome", "cnn", "predict", "--model", str(fitted), "--cases", str(cases), "--table",
                 str(root / "test.csv"), "-o", str(tmp_path / "again.csv")]) == 0  # without the cache: read afresh
    np.testing.assert_allclose(pd.read_csv(tmp_path / "again.csv")["probability"], first["probability"], atol=1e-4)


def test_a_changed_weights_file_is_refused(fitted, tmp_path, capsys):
    import shutil

    copy = tmp_path / "model"
    shutil.copytree(fitted, copy)
    data = bytearray((copy / "weights.safetensors").read_bytes())
    data[-1] ^= 0xFF
    (copy / "weights.safetensors").write_bytes(bytes(data))
    with pytest.raises(ModelError, match="checksum"):
        cnn.OutcomeCNN.load(copy)


def test_training_is_seeded():
    rng = np.random.default_rng(0)
    X = rng.random((24, 2, 12, 12, 12)).astype(np.float16)
    y = np.array([0, 1] * 12)
    spec = cnn.GridSpec(inputs=["dose", "ct"], structures=[], spacing_mm=10, box_mm=(80, 80, 80))
    config = cnn.TrainConfig(epochs=2, batch=8, seed=3)
    a, _ = cnn.train(X, y, spec, config)
    b, _ = cnn.train(X, y, spec, config)
    assert all(np.array_equal(a[k].numpy(), b[k].numpy()) for k in a)
    c, _ = cnn.train(X, y, spec, cnn.TrainConfig(epochs=2, batch=8, seed=4))
    assert not all(np.array_equal(a[k].numpy(), c[k].numpy()) for k in a)


def test_lateral_flip_swaps_left_and_right_channels():
    spec = cnn.GridSpec(structures=["Parotid_L", "Parotid_R", "Brainstem"])
    assert spec.channels == ["dose", "ct", "Parotid_L", "Parotid_R", "Brainstem"]
    swap = cnn._lateral_swap(spec.channels)
    assert swap == [0, 1, 3, 2, 4]
    x = np.zeros((5, 4, 4, 6), np.float32)
    x[2, :, :, 4] = 1  # the left parotid on the patient's left (high x in LPS)
    flipped = x[swap][..., ::-1]
    # after the flip the organ seen on the left is the mirrored right one, and it is in the Parotid_L channel
    assert flipped[2].sum() == 0 and flipped[3][:, :, 1].sum() == 16


# ------------------------------------------------------------------------------------------------ bad input

@pytest.fixture(scope="module")
def phantoms(tmp_path_factory):
    from rtrai.io.case_io import write_case
    from rtrai.phantom import make_phantom

    root = tmp_path_factory.mktemp("phantoms")
    for seed in range(8):
        case = make_phantom(seed=seed, size=(40, 40, 32), spacing=(8.0, 8.0, 8.0), noise_hu=0)
        if seed == 7:
            case.structures.pop("Parotid_R", None)
        write_case(case, root / "cases" / f"P{seed}")
    pd.DataFrame({"ID": [f"P{i}" for i in range(8)] + ["P99"], "y": [0, 1] * 4 + [1]}).to_csv(root / "t.csv",
                                                                                           index=False)
    pd.DataFrame({"ID": [f"P{i}" for i in range(8)], "y": [1] * 8}).to_csv(root / "one.csv", index=False)
    return root


def _fit(root, table, *extra):
    return main(["outcome", "cnn", "fit", "--cases", str(root / "cases"), "--table", str(root / table), "--id", "ID",
                 "--label", "y", "--spacing", "12", "--epochs", "1", *extra, "-o", str(root / "m")])


def test_ids_without_cases_and_missing_structures_are_warned_with_numbers(phantoms, capsys):
    assert _fit(phantoms, "t.csv") == 0
    err = capsys.readouterr().err
    assert "1 of 9 table IDs have no case folder and are left out: 'P99'" in err
    assert "structure 'Parotid_R' is missing in 1 of 8 cases" in err and "'P7'" in err


def test_case_folders_not_in_the_table_are_warned(phantoms, tmp_path, capsys):
    pd.DataFrame({"ID": [f"P{i}" for i in range(6)], "y": [0, 1] * 3}).to_csv(tmp_path / "six.csv", index=False)
    from rtrai.outcome.data import read_table

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        paths = cnn.match_cases([phantoms / "cases"], read_table(tmp_path / "six.csv")["ID"])
    assert len(paths) == 6
    assert any("2 of 8 case folders are not in the table" in str(w.message) for w in caught)


def test_one_class_is_refused(phantoms, capsys):
    assert _fit(phantoms, "one.csv") == 2
    assert "only one class (1) in 8 cases" in capsys.readouterr().err


def test_a_structure_no_case_has_is_refused(phantoms, capsys):
    assert _fit(phantoms, "t.csv", "--structures", "Parotid_L,Cochlea_L") == 2
    assert "structure 'Cochlea_L' is in none of the 8 cases" in capsys.readouterr().err


def test_a_constant_input_is_refused(phantoms, tmp_path, capsys):
    from rtrai.io.case_io import read_case, write_case

    for i in range(8):
        case = read_case(phantoms / "cases" / f"P{i}")
        case.dose = sitk.Image(case.ct.GetSize(), sitk.sitkFloat32)
        case.dose.CopyInformation(case.ct)
        write_case(case, tmp_path / "cases" / f"P{i}")
    (tmp_path / "t.csv").write_text((phantoms / "t.csv").read_text())
    assert _fit(tmp_path, "t.csv", "--inputs", "dose,structures") == 2
    assert "input 'dose' is constant (0) in all 8 cases" in capsys.readouterr().err


def test_no_matching_case_is_refused(phantoms, tmp_path, capsys):
    pd.DataFrame({"ID": ["X1", "X2"], "y": [0, 1]}).to_csv(tmp_path / "t.csv", index=False)
    (tmp_path / "cases").symlink_to(phantoms / "cases")
    assert _fit(tmp_path, "t.csv") == 2
    assert "none of the 2 table IDs names a case folder" in capsys.readouterr().err


def test_grid_spec_checks_its_arguments():
    with pytest.raises(InputError, match="unknown input"):
        cnn.GridSpec(inputs=["dose", "pet"])
    with pytest.raises(InputError, match="positive"):
        cnn.GridSpec(spacing_mm=0)


# ------------------------------------------------------------------------------------- the organs region

def test_organ_coordinates_are_relative_to_each_structure():
    import torch

    shares = torch.zeros(1, 2, 10, 6, 12)
    shares[0, 0, 2:6, 1:3, 1:4] = 1  # 4 slices, 2 rows, 3 columns
    shares[0, 1, 5:9, 2:5, 7:11] = 1  # another organ, elsewhere and of another shape
    coords = cnn.organ_coordinates(shares)[0].numpy()
    # z of the first organ: slices 2..5, mean 3.5, spread sqrt(1.25): (z - 3.5) / (2 sqrt(1.25))
    np.testing.assert_allclose(coords[0, 2:6, 1, 1], (np.arange(2, 6) - 3.5) / (2 * np.sqrt(1.25)), rtol=1e-5)
    # the same relative position in both organs, whatever their place: the top slice of each is its most positive z
    assert coords[0, 5, 1, 1] == pytest.approx(coords[0, 8, 3, 8])
    np.testing.assert_allclose(coords[1, 2, 1:3, 1], [-0.5, 0.5], rtol=1e-5)  # 2 rows: mean 1.5, spread 0.5
    outside = shares[0].sum(0).numpy() == 0
    assert np.all(coords[:, outside] == 0)


def test_organ_quantiles_are_rank_positions_inside_each_structure():
    import torch

    shares = torch.zeros((1, 2, 10, 4, 10))
    shares[0, 0, 2, 1, 1] = 1  # slice volumes 1, 1, 2, 4 along z
    shares[0, 0, 3, 1, 1] = 1
    shares[0, 0, 4, 1:3, 1] = 1
    shares[0, 0, 5, 0:4, 1] = 1
    shares[0, 1, 6:9, 2, 7:9] = 1  # another organ elsewhere: 3 equal slices
    q = cnn.organ_quantiles(shares)[0].numpy()
    # z: (volume below + half its own slice) / 8, scaled to -1..1: 0.5/8, 1.5/8, 3/8, 6/8
    np.testing.assert_allclose(q[0, 2:6, 1, 1], np.array([0.5, 1.5, 3, 6]) / 8 * 2 - 1, rtol=1e-6)
    np.testing.assert_allclose(q[0, 6:9, 2, 7], [-2 / 3, 0, 2 / 3], atol=1e-6)  # the same fractions in any place
    np.testing.assert_allclose(q[2, 6, 2, 7:9], [-0.5, 0.5], atol=1e-6)  # x: two equal halves
    assert np.all(q[:, shares[0].sum(0).numpy() == 0] == 0)
    shifted = cnn.organ_quantiles(torch.roll(shares, 1, dims=2))[0].numpy()  # follows translations
    np.testing.assert_allclose(shifted[:, 3:7], q[:, 2:6], atol=1e-6)


def _part_cohort(n: int, seed: int):
    """Cases whose label depends on the dose in the upper half of a structure, not on its lower half."""
    rng = np.random.default_rng(seed)
    X = np.zeros((n, 2, 12, 8, 8), np.float16)
    X[:, 1, 2:10, 2:6, 2:6] = 1  # Parotid_L: 8 slices
    upper, lower = rng.random(n), rng.random(n)
    X[:, 0, 6:10] = upper[:, None, None, None]
    X[:, 0, 2:6] = lower[:, None, None, None]
    X[:, 0] += rng.normal(0, 0.02, X[:, 0].shape).astype(np.float16)
    return X, (upper > 0.5).astype(int), upper


def test_the_subregions_region_learns_which_part_of_an_organ_matters():
    from sklearn.metrics import roc_auc_score

    spec = cnn.GridSpec(inputs=["dose", "structures"], structures=["Parotid_L"], spacing_mm=10, box_mm=(120, 80, 80),
                        shift=0)
    X, y, upper = _part_cohort(96, 0)
    model = cnn.fit(X, y, spec, "y", cnn.TrainConfig(epochs=60, patience=60, batch=16, lr=0.03),
                    network={"region": "subregions"})
    assert model.manifest["network"]["channels"] == cnn.SUBREGION_CHANNELS
    X_test, y_test, upper_test = _part_cohort(64, 1)
    p = model.probabilities(X_test)
    # the organ's mean dose alone would reach about 0.85 here; the upper half's dose, 1
    mean_dose = X_test[:, 0, 2:10].astype(float).mean(axis=(1, 2, 3))
    assert roc_auc_score(y_test, mean_dose) < 0.9
    assert roc_auc_score(y_test, p) > 0.95
    cams = model.gradcam(X_test[y_test == 1])
    assert np.all(cams[:, X_test[0, 1] == 0] == 0)  # nothing outside the structure
    assert cams[:, 6:10].sum() > 2 * cams[:, 2:6].sum()  # most of it on the part that matters


def test_the_organs_region_sees_only_the_structures_and_their_context():
    import torch

    torch.manual_seed(0)
    spec = cnn.GridSpec(inputs=["dose", "structures"], structures=["Parotid_L", "Parotid_R"], spacing_mm=8,
                        box_mm=(96, 96, 96), shift=0)
    net = cnn.build_network(3, cnn.network_spec(spec, {"region": "organs"})).eval()
    x = np.zeros((1, 3, 12, 12, 12), np.float32)
    x[0, 0] = np.random.default_rng(0).random((12, 12, 12)) * 0.8
    x[0, 1, 4:7, 3:6, 7:10] = 1
    x[0, 2, 5:8, 4:7, 1:4] = 1
    from scipy.ndimage import binary_dilation

    size = 2 * cnn.CONTEXT + 1
    far = ~binary_dilation(x[0, 1:].sum(0) > 0, np.ones((size, size, size)))
    changed = x.copy()
    changed[0, 0][far] = 1.0  # dose changed only beyond the structures' context
    with torch.no_grad():
        a, b = net(torch.as_tensor(x)), net(torch.as_tensor(changed))
        x[0, 0, 5, 4, 8] += 0.5  # ... and inside the left parotid: the output must move
        c = net(torch.as_tensor(x))
    assert float(a) == pytest.approx(float(b), abs=1e-6)
    assert abs(float(c) - float(a)) > 1e-4
    from rtrai.models.gradcam import grad_cam

    cam = grad_cam(net, x, cnn.gradcam_layer({"region": "organs"}))
    assert cam.shape == (12, 12, 12)
    assert np.all(cam[x[0, 1:].sum(0) == 0] == 0)  # all attribution inside the structures
    # the convolution window (a training-speed and memory setting) does not change the output
    occupancy = torch.as_tensor(x[:, 1:].sum(1, keepdims=True))
    assert cnn.conv_window(occupancy) == (slice(2, 10), slice(1, 9), slice(0, 12))  # organs +- 2, inside
    assert cnn.conv_window(occupancy, (9, 12, 4)) == (slice(2, 11), slice(0, 12), slice(0, 12))  # at least
    net.window = (10, 11, 12)
    with torch.no_grad():
        assert float(net(torch.as_tensor(x))) == pytest.approx(float(c), abs=1e-6)


def test_region_choices(phantoms, capsys):
    assert _fit(phantoms, "t.csv", "--region", "box") == 0
    assert json.loads((phantoms / "m" / "manifest.json").read_text())["network"]["region"] == "box"
    assert _fit(phantoms, "t.csv", "--inputs", "dose,ct", "--region", "organs") == 2
    assert "--region organs needs structures among the --inputs" in capsys.readouterr().err
    assert _fit(phantoms, "t.csv", "--region", "box", "--members", "2") == 2
    assert "--members 2: the organs and subregions regions average" in capsys.readouterr().err
    assert _fit(phantoms, "t.csv", "--inputs", "dose,ct", "--region", "subregions") == 2
    assert "--region subregions needs structures among the --inputs" in capsys.readouterr().err


# ------------------------------------------------------------------------------------ simulated endpoints

def test_cranial_part_and_lkb_known_answers():
    from rtrai.outcome import simulate

    array = np.zeros((8, 5, 6), np.uint8)
    array[:, 1:4, 1:5] = 1  # 8 slices of 12 voxels
    mask = sitk.GetImageFromArray(array)
    part = simulate.cranial_part(mask, 0.25)  # identity direction: the highest z index is the most superior
    assert part[6:].sum() == 24 and part[:6].sum() == 0
    flipped = sitk.GetImageFromArray(array)
    flipped.SetDirection((1, 0, 0, 0, 1, 0, 0, 0, -1))  # z index runs inferior: the cranial slices come first
    assert simulate.cranial_part(flipped, 0.25)[:2].sum() == 24
    assert simulate.lkb_ntcp(simulate.TD50_GY) == pytest.approx(0.5)
    # one standard deviation above TD50 is m * TD50 Gy
    assert simulate.lkb_ntcp(21.8 * 1.4, td50=21.8, m=0.4) == pytest.approx(0.8413, abs=1e-4)
    metrics = pd.DataFrame({"ID": ["a", "b", "c"], "parotids": [2, 2, 0], "dmean_parotids": [70.0, 10.0, np.nan],
                            "dmean_cranial": [5.0, 50.0, np.nan]})
    with pytest.warns(Warning, match="1 of 3 cases have no parotid"):
        table = simulate.simulate(metrics, seed=0)
    assert list(table["ID"]) == ["a", "b"]
    np.testing.assert_allclose(table["ntcp_cranial"], simulate.lkb_ntcp([5.0, 50.0], simulate.TD50_CRANIAL_GY))
    assert table["ntcp_mean"][0] > 0.9 and table["ntcp_cranial"][0] < 0.1  # the endpoints differ by where dose is


def test_members_average_networks_trained_apart():
    rng = np.random.default_rng(0)
    X = np.zeros((24, 3, 12, 12, 12), np.float16)
    X[:, 0] = rng.random((24, 12, 12, 12))
    X[:, 1, 3:7, 3:7, 2:5] = 1
    X[:, 2, 3:7, 3:7, 7:10] = 1
    y = np.array([0, 1] * 12)
    spec = cnn.GridSpec(inputs=["dose", "structures"], structures=["Parotid_L", "Parotid_R"], spacing_mm=10,
                        box_mm=(80, 80, 80))
    ensemble = cnn.fit(X, y, spec, "y", cnn.TrainConfig(epochs=2, batch=8, members=3), network={"region": "organs"})
    assert ensemble.manifest["network"]["members"] == 3 and len(ensemble.manifest["training"]["members"]) == 3
    raw = []
    for m in range(3):  # member m is what a one-network fit with seed 1000 m gives
        one = cnn.fit(X, y, spec, "y", cnn.TrainConfig(epochs=2, batch=8, seed=1000 * m), network={"region": "organs"})
        raw.append(one.logits(X) + one.manifest["training"]["logit_offset"])
    np.testing.assert_allclose(ensemble.logits(X) + ensemble.manifest["training"]["logit_offset"], np.mean(raw, 0),
                               atol=1e-5)
    with pytest.raises(InputError, match="members"):
        cnn.fit(X, y, spec, "y", cnn.TrainConfig(epochs=1, members=2), network={"region": "box"})
