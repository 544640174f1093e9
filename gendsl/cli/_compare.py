"""``gendsl compare RUN_A RUN_B``: two runs' posteriors side by side.

Reads each run's ``posterior.nc`` (a VI run's guide draws or a NUTS run's chains), takes the
scalar components of the variables both have (``theta`` of shape 8 gives ``theta[0]`` ...
``theta[7]``), and reports per component the mean and sd under each run, the difference of
the means in units of B's sd, and the ratio of the sds. Put the reference second: for VI
against NUTS, ``gendsl compare runs/vi runs/nuts`` reads "VI's mean is off by z of NUTS's sds,
and its sd is r times NUTS's".

Writes ``compare.txt`` (the table) and ``compare.png`` (per component, the two marginal
histograms overlaid) to ``--out`` (default: ``compare-<A>-vs-<B>`` beside RUN_A), and prints
the table.
"""

from __future__ import annotations

import contextlib
import math
import os

import numpy as np

from gendsl.cli._errors import CLIError
from gendsl.cli._report import components, png
from gendsl.cli._runfolder import RunFolder

__all__ = ["compare", "TEXT", "PLOT", "MAX_ROWS"]

TEXT = "compare.txt"
PLOT = "compare.png"
MAX_ROWS = 60
MAX_PANELS = 24


def _open(path: str, which: str):
    """``(posterior group, label)`` of the run folder ``path``."""
    import arviz as az

    folder = RunFolder(path)
    if not os.path.isdir(path):
        raise CLIError(f"{which} {path}: no such directory; give a run folder written by `gendsl fit`")
    if not folder.has(RunFolder.POSTERIOR):
        raise CLIError(f"{which} {path}: no posterior.nc; give a finished run folder of `gendsl fit`")
    try:
        idata = az.from_netcdf(folder.file(RunFolder.POSTERIOR))
        posterior = idata.posterior
    except Exception as exc:
        raise CLIError(f"{folder.file(RunFolder.POSTERIOR)}: damaged, not an ArviZ netCDF file ({type(exc).__name__})"
                       "; fit the run again", cause=exc) from exc
    method = "vi"
    with contextlib.suppress(CLIError):  # the posterior is what is compared; the label only loses its method
        method = folder.read_config("fit the run again")["options"].get("method", "vi")
    return posterior, f"{os.path.basename(os.path.normpath(path))} ({method})"


def _default_out(a: str, b: str) -> str:
    parent = os.path.dirname(os.path.normpath(a))
    return os.path.join(parent, f"compare-{os.path.basename(os.path.normpath(a))}-vs-"
                                f"{os.path.basename(os.path.normpath(b))}")


def table(parts_a: dict, parts_b: dict, label_a: str, label_b: str) -> tuple[str, list[str]]:
    """The comparison table of the components both runs have, and notes on the rest."""
    common = [k for k in parts_a if k in parts_b]
    notes = []
    only_a = [k for k in parts_a if k not in parts_b]
    only_b = [k for k in parts_b if k not in parts_a]
    if only_a:
        notes.append(f"only in A: {', '.join(only_a[:10])}{' ...' if len(only_a) > 10 else ''}")
    if only_b:
        notes.append(f"only in B: {', '.join(only_b[:10])}{' ...' if len(only_b) > 10 else ''}")
    if len(common) > MAX_ROWS:
        notes.append(f"the table shows {MAX_ROWS} of {len(common)} components")
        common = common[:MAX_ROWS]
    width = max([9, *(len(k) for k in common)])
    head = (f"{'parameter':<{width}}  {'mean A':>10} {'sd A':>9}  {'mean B':>10} {'sd B':>9}  "
            f"{'(A-B)/sd B':>10} {'sd A/sd B':>9}")
    lines = [f"A: {label_a}", f"B: {label_b}", "", head, "-" * len(head)]
    for k in common:
        a, b = parts_a[k], parts_b[k]
        ma, sa, mb, sb = float(a.mean()), float(a.std()), float(b.mean()), float(b.std())
        z = (ma - mb) / sb if sb > 0 else float("nan")
        r = sa / sb if sb > 0 else float("nan")
        lines.append(f"{k:<{width}}  {ma:>10.4g} {sa:>9.4g}  {mb:>10.4g} {sb:>9.4g}  {z:>10.3f} {r:>9.3f}")
    return "\n".join(lines), notes


def plot(parts_a: dict, parts_b: dict, label_a: str, label_b: str) -> bytes:
    """Per component, the two runs' marginal histograms overlaid, as PNG bytes."""
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    common = [k for k in parts_a if k in parts_b][:MAX_PANELS]
    n = max(1, len(common))
    cols = min(4, n)
    rows = math.ceil(n / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(3.2 * cols, 2.4 * rows + 0.4), squeeze=False)
    for ax, k in zip(axes.flat, common, strict=False):
        a, b = parts_a[k].ravel(), parts_b[k].ravel()
        lo, hi = np.quantile(np.concatenate([a, b]), [0.005, 0.995])
        bins = np.linspace(lo, hi, 41) if hi > lo else 40
        ax.hist(a, bins=bins, density=True, alpha=0.5, color="tab:blue", label="A")
        ax.hist(b, bins=bins, density=True, histtype="step", linewidth=1.4, color="tab:orange", label="B")
        ax.set_title(k, fontsize=9)
        ax.tick_params(labelsize=7)
    for ax in list(axes.flat)[len(common):]:
        ax.set_axis_off()
    axes[0, 0].legend(fontsize=7)
    fig.suptitle(f"A: {label_a}   B: {label_b}", fontsize=10)
    fig.tight_layout()
    return png(fig)


def compare(args) -> int:
    """Run ``gendsl compare``; returns the exit code."""
    post_a, label_a = _open(args.run_a, "RUN_A")
    post_b, label_b = _open(args.run_b, "RUN_B")
    parts_a = components(post_a, limit=10**9)
    parts_b = components(post_b, limit=10**9)
    if not any(k in parts_b for k in parts_a):
        raise CLIError(f"{args.run_a} and {args.run_b} share no posterior variable (A has "
                       f"{', '.join(list(parts_a)[:5]) or 'none'}; B has {', '.join(list(parts_b)[:5]) or 'none'}): "
                       "compare two runs of the same model")
    text, notes = table(parts_a, parts_b, label_a, label_b)
    body = text + ("\n\nNotes:\n" + "\n".join(f"  - {n}" for n in notes) if notes else "") + "\n"
    out = RunFolder(args.out or _default_out(args.run_a, args.run_b))
    out.create()
    out.write_text(TEXT, body)
    out.write_bytes(PLOT, plot(parts_a, parts_b, label_a, label_b))
    print(body, end="")
    print(f"wrote {out.file(TEXT)} and {out.file(PLOT)}")
    return 0
