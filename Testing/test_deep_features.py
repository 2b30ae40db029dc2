"""Deep features (rtrai radiomics deep): hn-oar-ct's encoder pooled inside an ROI, deterministic, joinable by ID; and
``rtrai outcome fit`` on several feature tables joined by ID."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import SimpleITK as sitk
from conftest import shared_path

from rtrai.cli import main
from rtrai.core.errors import InputError
from rtrai.models import read_manifest


@pytest.fixture(scope="module")
def case_folder(tmp_path_factory):
    """One OpenKBP validation patient as a case folder (CT.nrrd + Structures.seg.nrrd) and a labelmap of its left
    parotid."""
    from rtrai.io.case_io import read_case, write_case

    case = read_case(shared_path("openkbp", "validation-pats", "pt_201"))
    root = tmp_path_factory.mktemp("deep")
    write_case(case, root / "pt_201")
    sitk.WriteImage(case.structures["Parotid_L"], str(root / "parotid_l.nrrd"))
    sitk.WriteImage(case.structures["Bone_Mandible"], str(root / "mandible.nrrd"))
    return root, case


def feature_count() -> int:
    """Two features (mean, max) per encoder channel of the shipped hn-oar-ct."""
    return 2 * sum(read_manifest("hn-oar-ct")["network"]["channels"])


@pytest.fixture(scope="module")
def extractor():
    from rtrai.radiomics.deep import DeepFeatureExtractor

    return DeepFeatureExtractor("hn-oar-ct")


def test_features_are_pooled_per_level_and_channel_and_deterministic(extractor, case_folder):
    _, case = case_folder
    channels = read_manifest("hn-oar-ct")["network"]["channels"]  # version 7: 24, 48, 96, 192, 320
    first = extractor.features(case.ct, case.structures["Parotid_L"])
    assert len(first) == feature_count()
    assert list(first)[:2] == ["deep_hn-oar-ct_l1_c0_mean", "deep_hn-oar-ct_l1_c0_max"]
    assert f"deep_hn-oar-ct_l5_c{channels[-1] - 1}_max" in first
    values = np.array(list(first.values()))
    assert np.isfinite(values).all()
    means, maxima = values[0::2], values[1::2]
    assert (maxima >= means - 1e-5).all()  # a maximum is never below the mean of the same cells
    again = np.array(list(extractor.features(case.ct, case.structures["Parotid_L"]).values()))
    assert np.array_equal(values, again)  # bit for bit
    other = np.array(list(extractor.features(case.ct, case.structures["Bone_Mandible"]).values()))
    assert np.abs(other - values).mean() > 0.01  # another region gives other numbers


def test_level_one_means_are_the_encoder_activations_inside_the_roi(extractor, case_folder):
    """Known answer: the level-1 means are the stage-1 activations averaged over the cells at least half inside."""
    import torch
    import torch.nn.functional as F

    _, case = case_folder
    x, roi = extractor.inputs(case.ct, case.structures["Parotid_R"])
    with torch.no_grad():
        h = extractor.stages[0](torch.as_tensor(x)[None])[0]
    cells = F.adaptive_avg_pool3d(torch.as_tensor(roi)[None, None], h.shape[1:])[0, 0] >= 0.5
    expected = h[:, cells].mean(1).numpy()
    row = extractor.features(case.ct, case.structures["Parotid_R"])
    got = np.array([row[f"deep_hn-oar-ct_l1_c{c}_mean"] for c in range(len(expected))])
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-6)


def test_cli_single_and_cohort_tables_join_by_id(case_folder, tmp_path):
    root, _ = case_folder
    single = tmp_path / "deep.csv"
    assert main(["radiomics", "deep", "--image", str(root / "pt_201" / "CT.nrrd"), "--mask",
                 str(root / "parotid_l.nrrd"), "--model", "hn-oar-ct", "-o", str(single)]) == 0
    table = pd.read_csv(single)
    assert table.shape == (1, 1 + feature_count()) and table.columns[0] == "ID"
    assert (tmp_path / "deep.csv.provenance.json").is_file()
    batch = tmp_path / "batch.csv"
    batch.write_text(f"ID,Image,Mask\nleft,{root / 'pt_201' / 'CT.nrrd'},{root / 'parotid_l.nrrd'}\n"
                     f"jaw,{root / 'pt_201' / 'CT.nrrd'},{root / 'mandible.nrrd'}\n")
    assert main(["radiomics", "deep", "--cohort", str(batch), "-o", str(tmp_path / "cohort.csv")]) == 0
    cohort = pd.read_csv(tmp_path / "cohort.csv")
    assert list(cohort["ID"]) == ["left", "jaw"]
    np.testing.assert_allclose(cohort.iloc[0, 1:].to_numpy(float), table.iloc[0, 1:].to_numpy(float), rtol=1e-6)
    from rtrai.outcome.data import join_tables

    clinical = pd.DataFrame({"ID": ["jaw", "left"], "age": [61, 57]})
    joined = join_tables([("deep", cohort), ("clinical", clinical)], "ID")
    assert joined.shape == (2, 2 + feature_count()) and joined.set_index("ID").loc["left", "age"] == 57


def test_a_case_folder_and_structure_and_an_empty_roi(case_folder, tmp_path, capsys):
    root, case = case_folder
    out = tmp_path / "deep.csv"
    assert main(["radiomics", "deep", "--image", str(root / "pt_201"), "--structure", "Parotid_L", "-o",
                 str(out)]) == 0
    assert pd.read_csv(out).shape == (1, 1 + feature_count())
    empty = sitk.Image(case.ct.GetSize(), sitk.sitkUInt8)
    empty.CopyInformation(case.ct)
    sitk.WriteImage(empty, str(tmp_path / "empty.nrrd"))
    assert main(["radiomics", "deep", "--image", str(root / "pt_201" / "CT.nrrd"), "--mask",
                 str(tmp_path / "empty.nrrd"), "-o", str(tmp_path / "x.csv")]) == 2
    assert "no voxel with label 1" in capsys.readouterr().err


def test_an_image_that_is_no_ct_is_refused_or_still_deterministic(extractor):
    from rtrai.core.errors import ModelError
    from rtrai.radiomics.deep import DeepFeatureExtractor

    with pytest.raises(ModelError, match="unknown model"):
        DeepFeatureExtractor("no-such-model")
    with pytest.raises(InputError):
        image = sitk.Image([20, 20, 20], sitk.sitkFloat32)
        extractor.features(image, sitk.Image([20, 20, 20], sitk.sitkUInt8))


# --------------------------------------------------------------------- outcome fit with several feature tables

def test_outcome_fit_joins_several_tables_by_id(tmp_path, capsys):
    from rtrai.outcome import make_planted_cohort

    cohort = make_planted_cohort(n=160, n_features=20, seed=1)
    features = [c for c in cohort.columns if c.startswith("original_")]
    handcrafted = cohort[["PatientID", *features[:10]]]
    deep = cohort[["PatientID", *features[10:]]].rename(columns=lambda c: c.replace("original_", "deep_"))
    clinical = cohort[["PatientID", "label"]].iloc[:150]  # 10 patients without an outcome row
    for name, table in (("hand", handcrafted), ("deep", deep), ("clin", clinical)):
        table.to_csv(tmp_path / f"{name}.csv", index=False)
    rc = main(["outcome", "fit", "--table", str(tmp_path / "hand.csv"), str(tmp_path / "deep.csv"), "--table",
               str(tmp_path / "clin.csv"), "--id", "PatientID", "--label", "label", "--folds", "3",
               "--inner-folds", "3", "-o", str(tmp_path / "model")])
    assert rc == 0
    captured = capsys.readouterr()
    assert "150 patients are in all of them" in captured.err and "hand.csv: 10" in captured.err
    model = json.loads((tmp_path / "model" / "model.json").read_text())
    assert model["training"]["n_positive"] == int(clinical["label"].sum())
    # the planted features are original_feature_000, _005 and _010; the last is now deep_feature_010, in the other
    # table: selection inside the CV folds sees the columns of both
    assert cohort.attrs["planted"] == ["original_feature_000", "original_feature_005", "original_feature_010"]
    chosen = set(model["features"])
    assert {"original_feature_000", "deep_feature_010"} <= chosen, chosen
    # evaluate and predict join the same tables by the model's ID column
    assert main(["outcome", "predict", "--model", str(tmp_path / "model"), "--table", str(tmp_path / "hand.csv"),
                 str(tmp_path / "deep.csv"), "-o", str(tmp_path / "p.csv")]) == 0
    assert len(pd.read_csv(tmp_path / "p.csv")) == 160


def test_overlapping_columns_and_missing_ids_are_refused(tmp_path, capsys):
    a = pd.DataFrame({"ID": ["a", "b"], "x": [1, 2]})
    a.to_csv(tmp_path / "a.csv", index=False)
    a.to_csv(tmp_path / "b.csv", index=False)
    assert main(["outcome", "fit", "--table", str(tmp_path / "a.csv"), str(tmp_path / "b.csv"), "--id", "ID",
                 "--label", "x", "-o", str(tmp_path / "m")]) == 2
    assert "column 'x' is in both" in capsys.readouterr().err
    assert main(["outcome", "fit", "--table", str(tmp_path / "a.csv"), str(tmp_path / "b.csv"), "--id", "PID",
                 "--label", "x", "-o", str(tmp_path / "m")]) == 2
    assert "ID column 'PID' not in" in capsys.readouterr().err
