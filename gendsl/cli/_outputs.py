"""What ``gendsl fit`` writes: metrics.csv, loss.png, posterior.nc, summary.txt and config.json.

* ``metrics.csv``: one row per step: ``step`` (1-based), ``objective`` (the
  step's estimate, at the parameters before the step), ``objective_per_point``
  (divided by the minibatch size, with ``--batch-size``), ``held_out_elbo``
  (at step 0 and at every checkpoint, when the program has test data; per data
  point with ``--batch-size``), ``wall_s`` (training seconds so far).
* ``loss.png``: the objective (raw and a moving average) and the held-out ELBO.
* ``posterior.nc``: ArviZ ``InferenceData`` of guide draws, with the model's
  ``gendsl.deterministic`` sites, observed data and pointwise log-likelihood
  (``gendsl.inference.to_inference_data``). With ``--batch-size`` it covers the
  first ``--posterior-points`` training points, and the number of draws shrinks
  so that the latents stay under about 2 million numbers.
* ``summary.txt``: an ArviZ summary (mean, sd, 5/50/95% quantiles) of the named
  latents; per-data-point latents are summarized for the first two points.
"""

from __future__ import annotations

import csv
import io
import math
import os

import jax
import jax.numpy as jnp
import numpy as np

from gendsl.cli._checkpoint import atomic_write
from gendsl.cli._program import take
from gendsl.cli._report import png
from gendsl.cli._runfolder import RunFolder

__all__ = ["Metrics", "plot_loss", "posterior", "write_posterior", "write_summary", "summary_table", "COLUMNS"]

COLUMNS = ("step", "objective", "objective_per_point", "held_out_elbo", "wall_s", "held_out_objective")
MAX_LATENT_NUMBERS = 2_000_000


# ----------------------------------------------------------------------------- metrics


def _fmt(x) -> str:
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return ""
    if isinstance(x, (int, np.integer)):
        return str(int(x))
    return repr(float(x))


class Metrics:
    """The rows of a run folder's ``metrics.csv``, appended as training goes."""

    def __init__(self, folder: RunFolder) -> None:
        self.path = folder.file(RunFolder.METRICS)

    def start(self, keep_until: int | None) -> list[dict]:
        """Begin a fresh file (``keep_until=None``) or keep the rows up to step ``keep_until`` (resume)."""
        rows = [] if keep_until is None else [r for r in self.read() if r["step"] <= keep_until]
        buf = io.StringIO()
        writer = csv.writer(buf, lineterminator="\n")
        writer.writerow(COLUMNS)
        for r in rows:
            writer.writerow([_fmt(r.get(c)) for c in COLUMNS])
        atomic_write(self.path, lambda f: f.write(buf.getvalue()), mode="w")
        return rows

    def append(self, rows: list[dict]) -> None:
        """Append rows (dicts keyed by ``COLUMNS``)."""
        with open(self.path, "a", newline="") as f:
            writer = csv.writer(f, lineterminator="\n")
            for r in rows:
                writer.writerow([_fmt(r.get(c)) for c in COLUMNS])

    def read(self) -> list[dict]:
        """All rows, numbers parsed (empty cells are None)."""
        if not os.path.exists(self.path):
            return []
        rows = []
        with open(self.path, newline="") as f:
            for r in csv.DictReader(f):
                try:
                    row = {c: (float(r[c]) if r.get(c) not in (None, "") else None) for c in COLUMNS}
                except ValueError:
                    continue  # a line cut short by a crash
                row["step"] = int(row["step"]) if row["step"] is not None else -1
                rows.append(row)
        return rows


# ----------------------------------------------------------------------------- loss.png


def _moving_average(y: np.ndarray, window: int) -> np.ndarray:
    if window <= 1 or len(y) < window:
        return y
    c = np.cumsum(np.insert(y, 0, 0.0))
    head = c[1:window] / np.arange(1, window)
    return np.concatenate([head, (c[window:] - c[:-window]) / window])


def plot_loss(rows: list[dict], folder: RunFolder, title: str, *, nats: bool = True) -> None:
    """Plot the training objective and the held-out figure to the folder's ``loss.png`` (Agg backend).

    The held-out figure is the ELBO of a VI run or the objective of a Trainable / objective run
    (``held_out_objective``), whichever the rows hold; ``nats``: the objective is a log density
    (a bound), not e.g. a denoising loss.
    """
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    train = [r for r in rows if r["step"] >= 1 and r.get("objective") is not None]
    per_point = bool(train) and train[0].get("objective_per_point") is not None
    key = "objective_per_point" if per_point else "objective"
    column = "held_out_elbo" if any(r.get("held_out_elbo") is not None for r in rows) else "held_out_objective"
    held = [r for r in rows if r.get(column) is not None]
    fig, axes = plt.subplots(1, 2 if held else 1, figsize=(11 if held else 6.5, 4), squeeze=False)
    ax = axes[0, 0]
    if train:
        steps = np.array([r["step"] for r in train])
        y = np.array([r[key] for r in train])
        smooth = _moving_average(y, max(1, len(y) // 50))
        ax.plot(steps, y, color="tab:blue", alpha=0.25, linewidth=0.6, label="per step")
        ax.plot(steps, smooth, color="tab:blue", linewidth=1.6, label="moving average")
        # Leave out the first 5% of steps (the objective starts far below where it ends), and
        # the rarest 1% of single-step estimates, so that the trend stays readable.
        start = len(y) // 20 if len(y) > 20 else 0
        lo = min(float(np.percentile(y[start:], 1)), float(np.min(smooth[start:])))
        hi = max(float(np.percentile(y[start:], 99)), float(np.max(smooth[start:])))
        pad = 0.05 * (hi - lo) if hi > lo else 1.0
        ax.set_ylim(lo - pad, hi + pad)
        ax.legend(loc="lower right")
    ax.set_xlabel("step")
    ax.set_ylabel(f"objective{' per data point' if per_point else ''}{' (nats)' if nats else ''}")
    ax.set_title(f"{title}: training objective (higher is better)", fontsize=10)
    ax.grid(alpha=0.3)
    if held:
        ax2 = axes[0, 1]
        steps, values = [r["step"] for r in held], [r[column] for r in held]
        ax2.plot(steps, values, "o-", color="tab:orange")
        best = int(np.argmax(values))
        ax2.annotate(f"best {values[best]:.2f} (step {steps[best]})", (steps[best], values[best]),
                     textcoords="offset points", xytext=(0, -14), fontsize=8,
                     ha="right" if best > len(values) // 2 else "left")
        ax2.set_xlabel("step")
        what = "ELBO" if column == "held_out_elbo" else "objective"
        ax2.set_ylabel(f"{what}{' per data point' if per_point else ''}")
        ax2.set_title(f"held-out {what} (higher is better)", fontsize=10)
        ax2.grid(alpha=0.3)
    fig.tight_layout()
    folder.write_bytes(RunFolder.LOSS, png(fig, dpi=110))


# ----------------------------------------------------------------------------- posterior.nc


def _var(address: str) -> str:
    return address.replace("/", ".")


def posterior(setup, params, key, draws: int, points: int):
    """``(InferenceData, data points covered or None, notes)`` of guide draws on the training data."""
    from gendsl.inference import to_inference_data

    data, covered, notes = setup.data.train, None, []
    if setup.batched:
        covered = min(points, setup.n_train)
        data = take(data, jnp.arange(covered))
        if covered < setup.n_train:
            notes.append(f"posterior.nc covers the first {covered} of {setup.n_train} training points "
                         "(--posterior-points)")
    bound = setup.guide.bind(params)
    latents = jax.eval_shape(lambda k: bound.simulate(k, data).latents, key)
    per_draw = sum(math.prod(s.shape) for s in latents.values())
    if per_draw * draws > MAX_LATENT_NUMBERS:
        draws = max(100, MAX_LATENT_NUMBERS // max(per_draw, 1))
        notes.append(f"{draws} draws (fewer than --posterior-draws, to keep posterior.nc small)")
    # With the model, the draws come with its deterministic sites, observed data and pointwise log-likelihood.
    idata = to_inference_data(setup.guide, params, data, key=key, num_samples=draws, model=setup.model)
    return idata, covered, notes


def write_posterior(idata, folder: RunFolder) -> None:
    """Write ``idata`` to the folder's ``posterior.nc`` (netCDF) atomically."""
    path = folder.file(RunFolder.POSTERIOR)
    tmp = os.path.join(folder.path, f".{RunFolder.POSTERIOR}.tmp-{os.getpid()}")
    try:
        idata.to_netcdf(tmp)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


# ----------------------------------------------------------------------------- summary.txt


def summary_table(idata, covered: int | None, max_elements: int = 40):
    """ArviZ summary of the posterior's variables, and notes on what was left out."""
    import arviz as az
    import xarray as xr

    post = idata.posterior
    chosen, notes = {}, []
    for name, var in post.data_vars.items():
        dims = [d for d in var.dims if d not in ("chain", "draw")]
        size = int(np.prod([var.sizes[d] for d in dims])) if dims else 1
        if covered is not None and dims and var.sizes[dims[0]] == covered and covered > 2:
            var = var.isel({dims[0]: slice(0, 2)})
            notes.append(f"{name}: one per data point ({covered} points x {size // covered} numbers in "
                         "posterior.nc); the table shows data points 0 and 1")
            size = int(np.prod([var.sizes[d] for d in dims]))
        if size > max_elements:
            flat = var.values.reshape(var.sizes["chain"], var.sizes["draw"], -1)[:, :, :max_elements]
            var = xr.DataArray(flat, dims=("chain", "draw", f"{name}_flat"))
            notes.append(f"{name}: {size} numbers; the table shows the first {max_elements} (flattened)")
        chosen[name] = var
    if not chosen:
        return "(the guide has no latent sites)", notes
    stats = {
        "5%": lambda x: np.quantile(x, 0.05),
        "50%": lambda x: np.quantile(x, 0.5),
        "95%": lambda x: np.quantile(x, 0.95),
    }
    table = az.summary(xr.Dataset(chosen), kind="stats", stat_funcs=stats, extend=True, hdi_prob=0.9, round_to=4)
    table = table[["mean", "sd", "5%", "50%", "95%"]]
    return table.to_string(), notes


def write_summary(folder: RunFolder, header: list[str], table: str, notes: list[str]) -> None:
    """Write the folder's ``summary.txt``."""
    lines = [*header, "", table]
    if notes:
        lines += ["", "Notes:"] + [f"  - {n}" for n in notes]
    folder.write_text(RunFolder.SUMMARY, "\n".join(lines) + "\n")
