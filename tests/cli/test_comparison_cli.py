"""``ppl-vae compare``: a complete report whose every link exists; errors are one line."""

import re

import pandas as pd

from ppl_vae import Comparison
from ppl_vae.cli import main

ARGS = [
    "compare",
    "--model",
    "models/bernoulli_vae.py",
    "--data",
    "digits",
    "--steps",
    "16",
    "--seeds",
    "0",
    "1",
    "--batch-size",
    "64",
    "--draws",
    "4",
    "--checkpoints",
    "1",
    "--ll-samples",
    "20",
    "--gap-rows",
    "6",
    "--gap-steps",
    "10",
    "--no-progress",
]


def test_compare_writes_a_complete_report(tmp_path, capsys):
    out = tmp_path / "report"
    assert main([*ARGS, "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "held-out ELBO" in printed and str(out / "report.md") in printed

    report = (out / "report.md").read_text()
    links = re.findall(r"\]\(([^)]+)\)", report)
    assert {"convergence_steps.png", "gradients.png", "summary.csv", "settings.json"} <= set(links)
    for link in links:
        assert (out / link).is_file() and (out / link).stat().st_size > 0, link
    for png in out.glob("*.png"):
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "ppl-vae compare --model models/bernoulli_vae.py --data digits --steps 16" in report
    assert "## Verdict" in report and "pyro-ppl 1.9" in report

    loaded = Comparison.load(out)
    assert list(loaded.summary["estimator"]) == ["sampled", "analytic"]
    assert loaded.settings["evaluated_on"] == "test_data"
    assert loaded.settings["eval_rows"] == 359
    curves = pd.read_csv(out / "curves.csv")
    assert curves.groupby(["estimator", "seed"]).size().eq(17).all()


def test_compare_refuses_to_clobber_a_report(tmp_path, capsys):
    out = tmp_path / "report"
    out.mkdir()
    (out / "report.md").write_text("mine")
    assert main([*ARGS, "--steps", "2", "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "--overwrite" in err
    assert (out / "report.md").read_text() == "mine"


def test_compare_rejects_unknown_estimator(tmp_path, capsys):
    code = None
    try:
        main([*ARGS, "--estimators", "sampled", "exact", "--out", str(tmp_path / "r")])
    except SystemExit as e:
        code = e.code
    assert code == 2
    assert capsys.readouterr().err.count("\n") == 1
    assert not (tmp_path / "r").exists()
