"""`ppl-vae diagnose` on a real train run: outputs, reloaded parameters, user errors."""

import json

import arviz as az
import pandas as pd
import pytest

from ppl_vae.cli import main


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    out = tmp_path_factory.mktemp("diagnose") / "run"
    code = main(["train", "--model", "models/bernoulli_vae.py", "--data", "digits",
                 "--steps", "60", "--lr", "3e-3", "--batch-size", "64", "--seed", "2",
                 "--out", str(out), "--no-progress"])  # fmt: skip
    assert code == 0
    return out


def test_diagnose_writes_netcdf_khat_summary_and_figures(trained, tmp_path, capsys):
    out = tmp_path / "diag"
    code = main(["diagnose", "--run", str(trained), "--out", str(out), "--rows", "3",
                 "--samples", "60", "--khat-samples", "300", "--sbc-simulations", "300",
                 "--gap-rows", "10", "--gap-steps", "40"])  # fmt: skip
    assert code == 0
    assert sorted(p.name for p in out.iterdir()) == sorted(
        ["posterior.nc", "khat.csv", "elpd.csv", "summary.csv", "diagnostics.json"]
        + ["posterior.png"]
        + ["ppc.png", "khat.png", "calibration.csv", "ranks.csv", "calibration.png"]
        + ["gap.csv", "gap.png"]
    )
    assert all((out / f).stat().st_size > 1000 for f in ("calibration.png", "gap.png"))
    sbc = pd.read_csv(out / "calibration.csv")
    assert sbc["coordinate"].tolist() == [f"z[{i}]" for i in range(8)]
    assert pd.read_csv(out / "ranks.csv", index_col="simulation").shape == (300, 8)
    gap = pd.read_csv(out / "gap.csv", index_col="datapoint")
    assert len(gap) == 10
    assert (gap["amortization_gap"] + gap["approximation_gap"]
            - gap["total_gap"]).abs().max() < 1e-9
    assert all((out / f).stat().st_size > 1000 for f in ("posterior.png", "ppc.png", "khat.png"))
    khat = pd.read_csv(out / "khat.csv", index_col="datapoint")
    assert len(khat) == 359  # every test row
    assert list(khat.columns) == ["khat", "psis_log_likelihood", "log_likelihood", "ess", "verdict"]
    # the trained parameters were loaded: the IS estimate of log p(x) matches the train run's
    # (K=1000 there, 300 here; an untrained decoder gives about -44 per datapoint)
    run = json.loads((trained / "summary.json").read_text())
    assert khat["log_likelihood"].mean() == pytest.approx(
        run["metrics"]["test_log_likelihood"], abs=0.3
    )
    # the ELPD per datapoint: for a VAE the PSIS estimate of log p(x_n), k̂'s own draws
    elpd = pd.read_csv(out / "elpd.csv", index_col="datapoint")
    assert list(elpd.columns) == ["elpd", "pareto_k", "iwae"] and len(elpd) == 359
    pd.testing.assert_series_equal(elpd["elpd"], khat["psis_log_likelihood"], check_names=False)
    pd.testing.assert_series_equal(elpd["iwae"], khat["log_likelihood"], check_names=False)
    idata = az.from_netcdf(out / "posterior.nc")
    assert idata.posterior["z"].shape == (1, 60, 3, 8)
    assert idata.posterior["obs"].values.tolist() == [0, 1, 2]
    assert idata.posterior.attrs["estimator"] == "analytic" and idata.posterior.attrs["seed"] == 2
    summary = pd.read_csv(out / "summary.csv", index_col=0)
    assert len(summary) == 3 * 8 and "r_hat" not in summary.columns
    report = json.loads((out / "diagnostics.json").read_text())
    assert sum(report["khat_counts"].values()) == 359
    assert report["khat_counts"]["good"] == int((khat["khat"] < 0.5).sum())
    assert report["elpd"]["elpd"] == pytest.approx(elpd["elpd"].sum())
    assert report["elpd"]["evaluated_on"].startswith("held-out")
    printed = capsys.readouterr().out
    assert report["verdict"] in printed
    assert f"ELPD: {report['elpd']['elpd']:.1f} ± {report['elpd']['se']:.1f}" in printed
    assert report["calibration"]["summary"] in printed and "SBC (300 simulations" in printed
    assert report["calibration"]["num_simulations"] == 300
    assert report["inference_gap"]["summary"] in printed
    assert report["inference_gap"]["mean"]["total_gap"]["mean"] == pytest.approx(
        gap["total_gap"].mean()
    )


def test_same_seed_same_table_on_the_train_split(trained, tmp_path):
    tables = []
    for name in ("a", "b"):
        code = main(["diagnose", "--run", str(trained), "--out", str(tmp_path / name),
                     "--split", "train", "--rows", "1", "--samples", "10",
                     "--khat-samples", "50", "--seed", "7", "--sbc-simulations", "0",
                     "--gap-rows", "0"])  # fmt: skip
        assert code == 0
        tables.append(pd.read_csv(tmp_path / name / "khat.csv"))
    assert len(tables[0]) == 1438
    pd.testing.assert_frame_equal(tables[0], tables[1])


def test_user_errors_are_one_line_and_clobber_nothing(trained, tmp_path, capsys):
    assert main(["diagnose", "--run", str(tmp_path / "missing")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "does not exist" in err
    out = tmp_path / "diag"
    out.mkdir()
    (out / "notes.txt").write_text("keep me")
    assert main(["diagnose", "--run", str(trained), "--out", str(out), "--rows", "1",
                 "--samples", "5", "--khat-samples", "20"]) == 2  # fmt: skip
    assert "--overwrite" in capsys.readouterr().err
    assert (out / "notes.txt").read_text() == "keep me"
    assert main(["diagnose", "--run", str(trained), "--rows", "0"]) == 2
    assert "--rows must be at least 1" in capsys.readouterr().err
    for option, value, message in (("--sbc-simulations", "-1", "at least 0 (0 skips it)"),
                                    ("--sbc-draws", "0", "--sbc-draws must be at least 1"),
                                    ("--gap-steps", "0", "--gap-steps must be at least 1")):
        assert main(["diagnose", "--run", str(trained), option, value]) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and message in err
