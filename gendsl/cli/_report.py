"""``report.html``: one self-contained page per run folder, and the plots only it and ``compare`` need.

The page is built from the files already in the folder, so that ``gendsl report RUN`` can rebuild
it at any time and ``gendsl eval`` / ``gendsl sample`` can refresh it cheaply:

* the run (``config.json``: program, method, options, status),
* the training curve (``loss.png``) or, for ``--method nuts``, the sampling trace (``trace.png``),
* the evaluation table (``eval.json``, after ``gendsl eval``),
* the samples (``samples.png``, after ``gendsl sample`` of image data),
* the posterior marginals (``marginals.png``; drawn from ``posterior.nc`` when missing),
* ``summary.txt`` verbatim.

Every image is embedded as a ``data:image/png;base64`` URI and there is no external CSS, script or
link: the page opens offline, e-mailed or archived on its own. A section whose file is missing
says which command makes it.
"""

from __future__ import annotations

import base64
import datetime
import html
import io
import json
import math
import os

import numpy as np

from gendsl.cli._runfolder import RunFolder

__all__ = ["REPORT", "MARGINALS", "TRACE", "build", "plot_marginals", "plot_trace", "components", "png"]

REPORT = "report.html"
MARGINALS = "marginals.png"
TRACE = "trace.png"
MAX_PANELS = 16

_STYLE = """
body { font-family: system-ui, sans-serif; margin: 2em auto; max-width: 1100px; color: #222; padding: 0 1em; }
h1 { font-size: 1.5em; } h2 { font-size: 1.2em; border-bottom: 1px solid #ccc; padding-bottom: .2em; }
table { border-collapse: collapse; font-size: .9em; } td, th { border: 1px solid #ccc; padding: .25em .6em; }
th { background: #f3f3f3; text-align: left; } pre { background: #f7f7f7; padding: .8em; overflow-x: auto; }
img { max-width: 100%; } .missing { color: #777; font-style: italic; }
"""


def png(fig, dpi: int = 100) -> bytes:
    """A matplotlib figure as PNG bytes (the figure is closed)."""
    import matplotlib.pyplot as plt

    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi)
    plt.close(fig)
    return buf.getvalue()


def _pyplot():
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    return plt


def components(dataset, limit: int = MAX_PANELS) -> dict[str, np.ndarray]:
    """``{label: draws (chain, draw)}`` for the scalar components of a posterior, the first ``limit`` of them.

    A variable ``theta`` of shape ``(chain, draw, 8)`` gives ``theta[0]`` ... ``theta[7]``.
    """
    out: dict[str, np.ndarray] = {}
    for name, var in dataset.data_vars.items():
        values = np.asarray(var.values, dtype=float)
        flat = values.reshape(values.shape[0], values.shape[1], -1)
        shape = values.shape[2:]
        for i in range(flat.shape[-1]):
            if len(out) >= limit:
                return out
            label = name if not shape else f"{name}[{','.join(map(str, np.unravel_index(i, shape)))}]"
            out[label] = flat[:, :, i]
    return out


def plot_marginals(posterior, title: str) -> bytes:
    """Histograms of each scalar component of a posterior (ArviZ ``posterior`` group), as PNG bytes."""
    plt = _pyplot()
    parts = components(posterior)
    n = max(1, len(parts))
    cols = min(4, n)
    rows = math.ceil(n / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(3.2 * cols, 2.4 * rows), squeeze=False)
    for ax, (label, draws) in zip(axes.flat, parts.items(), strict=False):
        for c in range(draws.shape[0]):
            ax.hist(draws[c], bins=40, density=True, histtype="step", alpha=0.8,
                    label=f"chain {c}" if draws.shape[0] > 1 else None)
        ax.set_title(f"{label}: {draws.mean():.3g} ± {draws.std():.3g}", fontsize=9)
        ax.tick_params(labelsize=7)
    for ax in list(axes.flat)[len(parts):]:
        ax.set_axis_off()
    if not parts:
        axes[0, 0].text(0.5, 0.5, "no latent variables", ha="center", va="center")
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    return png(fig)


def plot_trace(idata, title: str) -> bytes:
    """The log density of each NUTS chain by draw, with divergent draws marked, as PNG bytes."""
    plt = _pyplot()
    stats = idata.sample_stats
    fig, ax = plt.subplots(figsize=(9, 3.6))
    lp = np.asarray(stats["lp"].values)
    for c in range(lp.shape[0]):
        ax.plot(lp[c], linewidth=0.6, alpha=0.8, label=f"chain {c}")
    if "diverging" in stats:
        div = np.asarray(stats["diverging"].values, dtype=bool)
        chains, draws = np.nonzero(div)
        if len(draws):
            ax.plot(draws, lp[chains, draws], "rx", markersize=5, label=f"divergent ({len(draws)})")
    ax.set_xlabel("draw (after warm-up)")
    ax.set_ylabel("log density (lp)")
    ax.set_title(f"{title}: NUTS trace", fontsize=10)
    ax.legend(fontsize=7, loc="lower right")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    return png(fig)


# ----------------------------------------------------------------------------- the page


def _img(data: bytes, alt: str) -> str:
    return f'<img alt="{html.escape(alt)}" src="data:image/png;base64,{base64.b64encode(data).decode()}">'


def _read(folder: RunFolder, name: str) -> bytes | None:
    try:
        with open(folder.file(name), "rb") as f:
            return f.read()
    except OSError:
        return None


def _json(folder: RunFolder, name: str):
    data = _read(folder, name)
    if data is None:
        return None
    try:
        return json.loads(data)
    except ValueError:
        return None


def _table(rows: list[tuple[str, str]]) -> str:
    body = "".join(f"<tr><th>{html.escape(str(k))}</th><td>{html.escape(str(v))}</td></tr>" for k, v in rows)
    return f"<table>{body}</table>"


def _missing(text: str) -> str:
    return f'<p class="missing">{html.escape(text)}</p>'


def _marginals(folder: RunFolder, title: str) -> bytes | None:
    """``marginals.png``, drawn from ``posterior.nc`` (and saved) when the folder lacks it."""
    data = _read(folder, MARGINALS)
    if data is not None or not folder.has(RunFolder.POSTERIOR):
        return data
    import arviz as az

    idata = az.from_netcdf(folder.file(RunFolder.POSTERIOR))
    data = plot_marginals(idata.posterior, f"{title}: posterior marginals")
    folder.write_bytes(MARGINALS, data)
    return data


def build(folder: RunFolder) -> str:
    """Write the folder's ``report.html`` from the files it holds; returns its path.

    Raises:
        OSError: the folder cannot be written.
    """
    config = _json(folder, RunFolder.CONFIG) or {}
    options = config.get("options") or {}
    method = options.get("method", "vi")
    program = config.get("program", "?")
    title = os.path.basename(str(program))
    parts = [f"<h1>gendsl run: {html.escape(title)}</h1>",
             f"<p>{html.escape(os.path.abspath(folder.path))}</p>"]

    run_rows = [("program", program), ("method", method), ("status", config.get("status", "?")),
                ("started", config.get("started", "?")), ("gendsl", config.get("gendsl_version", "?"))]
    if config.get("wall_s") is not None:
        run_rows.append(("wall time (s)", config["wall_s"]))
    for key, value in (config.get("resolved") or {}).items():
        if value is not None and not isinstance(value, (dict, list)):
            run_rows.append((key, value))
    run_rows += [(f"--{k.replace('_', '-')}", v) for k, v in options.items() if v not in (None, [], False)]
    parts += ['<h2 id="run">Run</h2>', _table(run_rows)]

    parts.append('<h2 id="training">Training</h2>' if method != "nuts" else '<h2 id="training">Sampling trace</h2>')
    curve = _read(folder, TRACE if method == "nuts" else RunFolder.LOSS)
    parts.append(_img(curve, "training curve") if curve else _missing("no curve yet (written by gendsl fit)"))

    parts.append('<h2 id="evaluation">Evaluation</h2>')
    ev = _json(folder, RunFolder.EVAL)
    if isinstance(ev, dict):
        metrics = ev.get("metrics") if isinstance(ev.get("metrics"), dict) else {}  # a Trainable's metrics
        rows = [(name, f"{m.get('value'):.6g} ± {m.get('se'):.3g}") for name, m in metrics.items()
                if isinstance(m, dict) and isinstance(m.get("value"), (int, float)) and isinstance(m.get("se"),
                                                                                                     (int, float))]
        parts.append(_table(rows + [(k, v) for k, v in ev.items() if k != "metrics" or not rows]))
    else:
        parts.append(_missing("no eval.json: run `gendsl eval PROGRAM --run RUN`"))

    parts.append('<h2 id="samples">Samples</h2>')
    samples = _read(folder, RunFolder.SAMPLES_PNG)
    parts.append(_img(samples, "samples") if samples else _missing(
        "no samples.png: `gendsl sample PROGRAM --run RUN` draws an image grid for image data"))

    parts.append('<h2 id="posterior">Posterior marginals</h2>')
    marginals = _marginals(folder, title)
    parts.append(_img(marginals, "posterior marginals") if marginals else _missing("no posterior.nc in this run"))

    parts.append('<h2 id="summary">Summary</h2>')
    summary = _read(folder, RunFolder.SUMMARY)
    parts.append(f"<pre>{html.escape(summary.decode(errors='replace'))}</pre>" if summary
                 else _missing("no summary.txt yet"))
    stamp = datetime.datetime.now().astimezone().isoformat(timespec="seconds")
    parts.append(f"<p class=\"missing\">built {html.escape(stamp)} by gendsl report</p>")
    page = ("<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n"
            f"<title>gendsl run: {html.escape(title)}</title>\n<style>{_STYLE}</style>\n</head>\n<body>\n"
            + "\n".join(parts) + "\n</body>\n</html>\n")
    return folder.write_text(REPORT, page)
