"""``gendsl fit --method nuts``, ``gendsl compare`` and ``report.html``.

Ground truth: the conjugate normal program (tests/cli/programs/normal.py) has an exact posterior,
and eight schools has posteriordb's Stan reference moments (slow suite). Bad input to every new
option exits 2 with one line and leaves the run folder as it was.
"""

import html.parser
import json
import pathlib
import re
import shutil

import arviz as az
import numpy as np
import pytest

from gendsl.cli import main
from gendsl.inference import nuts
from tests.cli.cli_helpers import EXAMPLES, PROGRAMS, assert_one_line, listing
from tests.cli.test_reliability import snapshot

REFERENCE = pathlib.Path("/work/shared/external/posteriordb/eight_schools-eight_schools_noncentered")
FAST_NUTS = ["--method", "nuts", "--chains", "2", "--warmup", "300", "--draws", "500", "--quiet"]


def _exact(x, prior_sd=10.0):
    """Posterior (mean, sd) of mu in mu ~ N(0, prior_sd), x_i ~ N(mu, 1)."""
    precision = 1.0 / prior_sd**2 + len(x)
    return float(np.sum(x) / precision), float(np.sqrt(1.0 / precision))


def _program_data():
    import importlib.util

    spec = importlib.util.spec_from_file_location("normal_prog", PROGRAMS / "normal.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.data()


def _train_data():
    return np.asarray(_program_data()[0])


@pytest.fixture(scope="module")
def nuts_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("nuts") / "run"
    assert main(["fit", str(PROGRAMS / "normal.py"), "--out", str(out), *FAST_NUTS]) == 0
    return out


@pytest.fixture(scope="module")
def vi_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("vi") / "run"
    assert main(["fit", str(PROGRAMS / "normal.py"), "--out", str(out), "--quiet", "--steps", "300",
                 "--chunk-size", "100", "--checkpoint-every", "300", "--posterior-draws", "500"]) == 0
    return out


# ----------------------------------------------------------------------------- --method nuts


def test_nuts_matches_the_exact_conjugate_posterior(nuts_run):
    mean, sd = _exact(_train_data())
    idata = az.from_netcdf(nuts_run / "posterior.nc")
    draws = idata.posterior["mu"].values
    assert draws.shape == (2, 500)
    ess = float(az.ess(idata, var_names=["mu"])["mu"])
    assert abs(draws.mean() - mean) < 4 * sd / np.sqrt(ess)  # 4 Monte-Carlo standard errors
    assert abs(draws.std() / sd - 1) < 0.15
    assert "diverging" in idata.sample_stats and "log_likelihood" in idata.groups()
    assert float(az.rhat(idata)["mu"]) < 1.05


def test_nuts_run_folder_and_summary(nuts_run):
    assert listing(nuts_run) == sorted([".lock", "config.json", "marginals.png", "metrics.csv", "posterior.nc",
                                        "report.html", "summary.txt", "trace.png"])
    summary = (nuts_run / "summary.txt").read_text()
    assert "divergences: 0 of 1000" in summary and "largest R-hat" in summary
    for column in ("ess_bulk", "ess_tail", "r_hat", "mcse_mean"):
        assert column in summary
    config = json.loads((nuts_run / "config.json").read_text())
    assert config["status"] == "completed" and config["options"]["method"] == "nuts"
    assert config["diagnostics"]["divergences"] == 0


def test_nuts_eval_is_the_exact_predictive_density(nuts_run, tmp_path):
    """Held-out lpd and PSIS-LOO of the conjugate model against their closed forms.

    The predictive density of a new point given data x is N(mean, 1 + sd^2) with (mean, sd) the exact
    posterior of mu given x; LOO uses the posterior given x without point i. The Monte-Carlo error of
    each log-mean-exp over the S draws is about r_i / sqrt(ESS), r_i the coefficient of variation of
    p(x_i | mu_s) over the draws; the tolerance is 4 times the sum (or mean) of those.
    """
    from scipy.stats import norm

    run = tmp_path / "run"
    shutil.copytree(nuts_run, run)
    train, test = _train_data(), np.asarray(_program_data()[1])
    idata = az.from_netcdf(run / "posterior.nc")
    mu = idata.posterior["mu"].values.ravel()
    ess = float(az.ess(idata, var_names=["mu"])["mu"])

    def mc_error(points):
        p = norm.pdf(points[:, None] - mu[None, :])
        return p.std(1) / p.mean(1) / np.sqrt(ess)

    assert main(["eval", str(PROGRAMS / "normal.py"), "--run", str(run)]) == 0
    result = json.loads((run / "eval.json").read_text())
    mean, sd = _exact(train)
    exact = norm.logpdf(test, mean, np.sqrt(1 + sd**2)).mean()
    assert result["split"] == "test" and result["points"] == len(test)
    assert abs(result["metrics"]["lpd"]["value"] - exact) < 4 * mc_error(test).mean()

    assert main(["eval", str(PROGRAMS / "normal.py"), "--run", str(run), "--split", "train"]) == 0
    result = json.loads((run / "eval.json").read_text())
    loo = sum(norm.logpdf(train[i], *(lambda m, s: (m, np.sqrt(1 + s**2)))(*_exact(np.delete(train, i))))
              for i in range(len(train)))
    assert abs(result["metrics"]["elpd_loo"]["value"] - loo) < 4 * mc_error(train).sum()
    assert result["metrics"]["elpd_loo"]["se"] > 0


def test_nuts_sample_draws_the_posterior_predictive(nuts_run, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(nuts_run, run)
    assert main(["sample", str(PROGRAMS / "normal.py"), "--run", str(run), "-n", "400"]) == 0
    with np.load(run / "samples.npz") as f:
        x, mu = f["x"], f["mu"]
    assert x.shape == (400, 40) and mu.shape == (400,)
    posterior = az.from_netcdf(run / "posterior.nc").posterior["mu"].values.ravel()
    assert set(np.round(mu, 5)) <= set(np.round(posterior, 5))  # the latents are NUTS draws
    # x = mu + e, e ~ N(0, 1): the residuals are standard normal; their mean over 16,000 values has SE 1/126.
    resid = x - mu[:, None]
    assert abs(resid.mean()) < 4 / np.sqrt(resid.size) and abs(resid.std() - 1) < 0.03
    rows = (run / "metrics.csv").read_text().splitlines()
    assert rows[0].startswith("chain,draw,") and "diverging" in rows[0] and len(rows) == 1 + 2 * 500


def test_library_nuts_rejects_bad_settings():
    import jax

    for bad in (dict(num_chains=0), dict(chain_method="threads"), dict(target_accept_prob=1.0)):
        with pytest.raises(ValueError, match="nuts: "):
            nuts(lambda: None, jax.random.key(0), **bad)


# ----------------------------------------------------------------------------- compare


def test_compare_prints_both_runs(vi_run, nuts_run, tmp_path, capsys):
    capsys.readouterr()
    out = tmp_path / "cmp"
    assert main(["compare", str(vi_run), str(nuts_run), "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "(vi)" in printed and "(nuts)" in printed
    row = next(line for line in printed.splitlines() if line.startswith("mu "))
    mean_a, _, mean_b, _, _, ratio = map(float, row.split()[1:])
    assert abs(mean_a - mean_b) < 0.1 and abs(ratio - 1) < 0.3  # VI is exact here (a normal guide)
    assert (out / "compare.txt").read_text().startswith("A: ")
    assert (out / "compare.png").read_bytes()[:4] == b"\x89PNG"


# ----------------------------------------------------------------------------- report.html


class _Page(html.parser.HTMLParser):
    def __init__(self):
        super().__init__()
        self.images, self.links, self.ids, self.open = [], [], [], []

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        if tag == "img":
            self.images.append(attrs.get("src", ""))
        for name in ("href", "src"):
            if name in attrs and tag != "img":
                self.links.append(attrs[name])
        if tag in ("script", "link", "iframe", "object", "embed"):
            self.links.append(tag)
        if "id" in attrs:
            self.ids.append(attrs["id"])


def _parse(path):
    page = _Page()
    page.feed(path.read_text())
    page.close()
    return page


@pytest.mark.parametrize("which", ["vi_run", "nuts_run"])
def test_report_is_self_contained_html_with_its_sections(which, request):
    run = request.getfixturevalue(which)
    page = _parse(run / "report.html")
    assert page.images and all(src.startswith("data:image/png;base64,") for src in page.images)
    assert page.links == []
    assert {"run", "training", "evaluation", "samples", "posterior", "summary"} <= set(page.ids)
    assert not re.search(r"https?://", (run / "report.html").read_text())


def test_eval_and_sample_rebuild_the_report_and_report_rebuilds_it(vi_run, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(vi_run, run)
    before = len(_parse(run / "report.html").images)
    assert main(["eval", str(PROGRAMS / "normal.py"), "--run", str(run), "-k", "5", "--samples", "2"]) == 0
    text = (run / "report.html").read_text()
    assert "iwae_5" in text
    (run / "report.html").unlink()
    assert main(["report", str(run)]) == 0
    assert len(_parse(run / "report.html").images) == before
    assert "iwae_5" in (run / "report.html").read_text()


def test_report_draws_marginals_from_posterior_nc_when_missing(nuts_run, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(nuts_run, run)
    (run / "marginals.png").unlink()
    assert main(["report", str(run)]) == 0
    assert (run / "marginals.png").exists() and len(_parse(run / "report.html").images) == 2


# ----------------------------------------------------------------------------- bad input


def _fit(*extra):
    return ("fit", "{prog}", "--out", "{out}", *extra)


BAD = {
    "unknown-method": (_fit("--method", "hmc"), ("--method", "vi, nuts")),
    "zero-chains": (_fit("--method", "nuts", "--chains", "0"), ("--chains",)),
    "negative-warmup": (_fit("--method", "nuts", "--warmup", "-1"), ("--warmup",)),
    "zero-draws": (_fit("--method", "nuts", "--draws", "0"), ("--draws",)),
    "target-accept-one": (_fit("--method", "nuts", "--target-accept", "1"), ("--target-accept", "between 0 and 1")),
    "target-accept-nan": (_fit("--method", "nuts", "--target-accept", "nan"), ("--target-accept",)),
    "unknown-chain-method": (_fit("--method", "nuts", "--chain-method", "threads"), ("--chain-method",)),
    "parallel-without-devices": (_fit("--method", "nuts", "--chains", "64", "--chain-method", "parallel"),
                                 ("one device per chain",)),
    "vi-option-with-nuts": (_fit("--method", "nuts", "--lr", "0.1"), ("--lr applies to --method vi",)),
    "nuts-option-with-vi": (_fit("--chains", "2"), ("--chains applies to --method nuts",)),
    "nuts-resume": (_fit("--method", "nuts", "--resume"), ("--resume",)),
    "nuts-over-a-run": (_fit("--method", "nuts"), ("already holds a run", "--overwrite")),
    "eval-nuts-probes": (("eval", "{prog}", "--run", "{nuts}", "--probes", "2"), ("--probes", "NUTS run")),
    "sample-nuts-raw": (("sample", "{prog}", "--run", "{nuts}", "--raw"), ("--raw", "NUTS run")),
    "sample-nuts-class": (("sample", "{prog}", "--run", "{nuts}", "--class", "0"), ("--class", "NUTS run")),
    "report-no-folder": (("report", "{tmp}/nope"), ("no such directory",)),
    "report-not-a-run": (("report", "{tmp}"), ("no config.json",)),
    "compare-no-posterior": (("compare", "{tmp}", "{out}"), ("RUN_A", "no posterior.nc")),
    "compare-missing-b": (("compare", "{out}", "{tmp}/nope"), ("RUN_B", "no such directory")),
    "compare-damaged-posterior": (("compare", "{out}", "{bad}"), ("posterior.nc: damaged",)),
}


# Cases whose --out starts as a copy of a finished VI run; the others start with no --out at all.
ON_A_RUN = ("nuts-over-a-run", "compare-no-posterior", "compare-missing-b", "compare-damaged-posterior")


@pytest.mark.parametrize("name", list(BAD))
def test_bad_input_is_one_line_and_changes_nothing(name, nuts_run, vi_run, tmp_path, gendsl_cli):
    argv, fragments = BAD[name]
    out = tmp_path / "out"
    if name in ON_A_RUN:
        shutil.copytree(vi_run, out)
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "posterior.nc").write_bytes(b"not netcdf")
    (tmp_path / "empty").mkdir()
    names = {"prog": PROGRAMS / "normal.py", "out": out, "tmp": tmp_path / "empty", "nuts": nuts_run, "bad": bad}
    before = {p: snapshot(p) for p in (out, nuts_run, bad)}
    result = gendsl_cli(*(str(a).format(**names) for a in argv))
    assert_one_line(result, *(f.format(**names) for f in fragments))
    assert {p: snapshot(p) for p in (out, nuts_run, bad)} == before


# ----------------------------------------------------------------------------- eight schools (slow)


@pytest.mark.slow
@pytest.mark.skipif(not REFERENCE.exists(), reason="posteriordb reference not available")
def test_eight_schools_nuts_matches_posteriordb(tmp_path):
    out = tmp_path / "es"
    assert main(["fit", str(EXAMPLES / "eight_schools.py"), "--method", "nuts", "--out", str(out), "--quiet"]) == 0
    moments = json.loads((REFERENCE / "reference_moments.json").read_text())["moments"]
    idata = az.from_netcdf(out / "posterior.nc")
    rhat = az.rhat(idata)
    for label, ref in moments.items():
        name, _, index = label.partition("[")
        draws = idata.posterior[name].values
        if index:
            draws = draws[..., int(index.rstrip("]")) - 1]  # Stan counts from 1
            r = float(rhat[name].values[int(index.rstrip("]")) - 1])
        else:
            r = float(rhat[name])
        assert abs(draws.mean() - ref["mean"]) < 0.1 * ref["sd"], (label, draws.mean(), ref["mean"])
        assert r < 1.01, (label, r)
    assert int(idata.sample_stats["diverging"].sum()) < 0.01 * idata.posterior.sizes["draw"] * 4
