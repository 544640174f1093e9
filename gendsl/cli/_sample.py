"""``gendsl sample``: draws from the trained model.

``--from prior`` (the default for a VI run) runs the model forward with the trained
parameters: latents from the prior, observations from the likelihood (for a
VAE: new images). ``--from posterior`` draws the latents from the guide given
the training data and then the observations (for a VAE: reconstructions of the
first ``N`` training images; for eight schools: posterior predictive draws). A NUTS run
(``gendsl fit --method nuts``) draws posterior predictive data from its posterior draws by
default (``_posterior_run``). ``--cond name=value`` sets a conditioning input that the program
declares (``conditions = ("y",)``) at every draw: ``--cond y=3`` draws threes from a
class-conditional VAE (``_program.condition``).

Writes ``samples.npz`` (every site, a leading axis of draws; addresses with
``/`` are saved with ``.``) and, when the observations are images (the
program's ``image_shape``, or a square number of pixels with values in [0, 1]),
``samples.png``: a grid of the observation distribution's means (the
probabilities, for Bernoulli pixels), which shows more than binary draws.
"""

from __future__ import annotations

import contextlib
import math
import os

import jax
import jax.numpy as jnp
import numpy as np

from gendsl import handlers
from gendsl.cli._errors import CLIError
from gendsl.cli._posterior_run import is_nuts_run, sample_posterior
from gendsl.cli._program import condition, take
from gendsl.cli._report import png
from gendsl.cli._runfolder import RunFolder
from gendsl.cli._trained import open_trained

__all__ = ["sample"]


def _site_values(trace, observed):
    values = {n: s["value"] for n, s in trace.items() if s["type"] in ("sample", "deterministic")}
    means = {}
    for name in observed:
        with contextlib.suppress(NotImplementedError, ValueError, TypeError):  # not every distribution has a mean
            means[name] = jnp.broadcast_to(trace[name]["fn"].mean, jnp.shape(trace[name]["value"]))
    return values, means


def sample(args) -> int:
    """Run ``gendsl sample``; returns the exit code."""
    conds = dict(getattr(args, "cond", None) or [])
    if is_nuts_run(args.run):
        if conds:
            raise CLIError("--cond: this is a NUTS run (posterior draws of the data it was fitted to): drop it")
        if getattr(args, "raw", False):
            raise CLIError("--raw: this is a NUTS run (posterior draws, no parameters): drop it")
        return sample_posterior(args)
    run = open_trained(args.program, args.run, args.data, raw=getattr(args, "raw", False))
    setup, params = run.setup, run.params
    if setup.kind.kind != "vi":
        if conds:
            raise CLIError(f"--cond: applies to a program with a model and a guide; {args.program} trains a "
                           f"{setup.kind.kind}: drop it (a class-conditional Trainable takes --class)")
        return _sample_direct(args, run)
    for flag, value, _ in _TRAINABLE_FLAGS(args):
        if value is not None:
            raise CLIError(f"{flag}: applies to a Trainable run (a gendsl.models model); this run trains a model "
                           "and a guide: drop it")
    n, kind = args.n, args.source or "prior"
    key = jax.random.key(args.seed)
    observed = setup.program.call(
        "in the model", lambda: jax.eval_shape(lambda k: setup.model.simulate(k, setup.first), key).observed
    )
    free = handlers.uncondition(setup.model.bind(params))
    guide = setup.guide.bind(params)

    def draw(k, x):
        k_guide, k_model = jax.random.split(k)
        fn = free
        if kind == "posterior":
            fn = handlers.substitute(free, data=guide.simulate(k_guide, x).latents)
        trace = handlers.trace(handlers.seed(fn, key=k_model)).get_trace(x)
        return _site_values(trace, observed)

    if setup.batched:
        # One execution over N data points: each point gets its own latents and observation.
        if kind == "posterior" and n > setup.n_train:
            raise CLIError(f"-n {n}: --from posterior reconstructs training points; there are {setup.n_train}")
        template = condition(setup.program, take(setup.data.train, jnp.arange(n) % setup.n_train), conds)
        values, means = setup.program.call("in the model", jax.jit(draw), key, template)
    else:
        keys = jax.random.split(key, n)
        values, means = setup.program.call("in the model", jax.jit(jax.vmap(draw, in_axes=(0, None))), keys,
                                           condition(setup.program, setup.data.train, conds))
    out = RunFolder(args.out) if args.out else run.folder
    out.create()
    arrays = {name.replace("/", "."): np.asarray(v) for name, v in values.items()}
    arrays.update({f"{name.replace('/', '.')}.mean": np.asarray(v) for name, v in means.items()})
    npz = out.write_with(RunFolder.SAMPLES, lambda f: np.savez(f, **arrays))
    given = "".join(f", {name}={value}" for name, value in conds.items())
    print(f"{n} draws from the {'prior' if kind == 'prior' else 'posterior'} of the trained model "
          f"(step {run.meta.get('step')}{given}) -> {npz}")
    for name, v in values.items():
        v = np.asarray(v)
        kind_ = "observed" if name in observed else "latent"
        print(f"  {name:<16} {kind_:<9} shape {v.shape!s:<16} mean {v.mean():.4g}  sd {v.std():.4g}")
    for name in observed:
        shape = _image_shape(setup.program.get("image_shape"), means.get(name, values[name]), args.image_shape)
        if shape is not None:
            png = _grid(np.asarray(means.get(name, values[name])), shape, out,
                  f"{os.path.basename(args.program)}: {n} {kind} draws of '{name}'{given.replace(',', ' given', 1)}"
                  + (" (means)" if name in means else ""))
            print(f"image grid of '{name}' -> {png}")
            break
    return 0


def _image_shape(declared, values, given):
    if given is not None:
        return given
    per_draw = int(np.prod(np.shape(values)[1:]))
    if declared is not None:
        shape = tuple(int(d) for d in declared)
        if math.prod(shape) != per_draw:
            raise CLIError(f"image_shape {shape} has {math.prod(shape)} pixels, but a draw has {per_draw} numbers")
        return shape
    side = math.isqrt(per_draw)
    v = np.asarray(values)
    if side * side == per_draw and side >= 4 and v.min() >= 0.0 and v.max() <= 1.0:
        return (side, side)
    return None


def _grid(values: np.ndarray, shape, out: RunFolder, title: str) -> str:
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    n = values.shape[0]
    cols = math.ceil(math.sqrt(n))
    rows = math.ceil(n / cols)
    h, w = shape[0], shape[1] if len(shape) > 1 else 1
    canvas = np.full((rows * (h + 1) + 1, cols * (w + 1) + 1), 0.2)  # light grey separators
    for i in range(n):
        r, c = divmod(i, cols)
        canvas[1 + r * (h + 1): 1 + r * (h + 1) + h, 1 + c * (w + 1): 1 + c * (w + 1) + w] = (
            values[i].reshape(h, w)
        )
    fig, ax = plt.subplots(figsize=(min(12, 0.6 + cols * 0.7), min(12, 0.9 + rows * 0.7)))
    ax.imshow(canvas, cmap="gray_r", vmin=0.0, vmax=1.0, interpolation="nearest")
    ax.set_axis_off()
    ax.set_title(title, fontsize=9)
    fig.tight_layout()
    return out.write_bytes(RunFolder.SAMPLES_PNG, png(fig, dpi=110))


def _TRAINABLE_FLAGS(args):
    """The sampler flags of a Trainable run: ``(flag, value, the sample() option it sets)``."""
    return (("--sampling-steps", args.sampling_steps, "steps"), ("--sampler", args.sampler, "method"),
            ("--class", args.label, "labels"), ("--guidance-scale", args.guidance_scale, "guidance"))


def _sample_direct(args, run) -> int:
    """``trainable.sample(params, key, n, **options)``: samples.npz, and a scatter (2-D) or grid (images) PNG."""
    setup, params, kind = run.setup, run.params, run.setup.kind
    if kind.kind != "trainable":
        raise CLIError(f"{args.program}: an objective alone has no sampler; define a gendsl.models Trainable "
                       "(`trainable = ...`) to sample from the trained parameters")
    accepts = tuple(getattr(kind.trainable, "sample_options", ()))
    options = {}
    for flag, value, name in _TRAINABLE_FLAGS(args):
        if value is None:
            continue
        if name not in accepts:
            offered = ", ".join(accepts) or "none"
            raise CLIError(f"{flag}: {type(kind.trainable).__name__}.sample has no `{name}` option (its options: "
                           f"{offered}); drop {flag}")
        options[name] = value
    if args.source == "posterior":
        raise CLIError("--from posterior: a Trainable run has no guide; drop --from")
    classes = getattr(kind.trainable, "num_classes", None)
    if classes is not None and args.label is None and "labels" in accepts:
        raise CLIError(f"{type(kind.trainable).__name__} `{kind.name}` is class-conditional (classes "
                       f"0..{classes - 1}): pass --class C (and optionally --guidance-scale W)")
    if classes is not None and args.label is not None and args.label >= classes:
        raise CLIError(f"--class {args.label}: `{kind.name}` has classes 0..{classes - 1}")
    if args.guidance_scale is not None and args.label is None and "guidance" in accepts:
        raise CLIError(f"--guidance-scale {args.guidance_scale:g}: guidance steers toward a class; add --class C")
    x = setup.program.call(f"in {kind.name}.sample(params, key, n)", kind.trainable.sample, params,
                           jax.random.key(args.seed), args.n, **options)
    x = np.asarray(x)
    out = RunFolder(args.out) if args.out else run.folder
    out.create()
    npz = out.write_with(RunFolder.SAMPLES, lambda f: np.savez(f, x=x))
    weights = ", EMA weights" if run.meta.get("weights") == "ema" else ""
    shown = "".join(f", {k}={v:g}" if isinstance(v, float) else f", {k}={v}" for k, v in options.items())
    print(f"{args.n} draws from {type(kind.trainable).__name__} `{kind.name}` (step {run.meta.get('step')}{weights}"
          f"{shown}) -> {npz}")
    print(f"  x  shape {x.shape!s:<16} mean {x.mean():.4g}  sd {x.std():.4g}")
    title = f"{os.path.basename(args.program)}: {args.n} draws{shown.replace('labels=', 'class ')}"
    train = np.asarray(jax.tree_util.tree_leaves(setup.data.train)[0])
    if x.ndim == 2 and x.shape[1] == 2:
        png = _scatter(x, train, out, title)
        print(f"scatter plot over the training data -> {png}")
    elif x.ndim >= 2:
        flat = x.reshape(x.shape[0], -1)
        shape = args.image_shape
        if shape is None and x.ndim in (3, 4):
            shape = x.shape[1:3] if x.ndim == 3 or x.shape[-1] == 1 else None
        shape = _image_shape(setup.program.get("image_shape"), flat, shape)
        if shape is not None:
            lo, hi = float(flat.min()), float(flat.max())
            png = _grid((flat - lo) / max(hi - lo, 1e-12), shape, out, title + " (scaled to [0, 1])")
            print(f"image grid -> {png}")
    return 0


def _scatter(x: np.ndarray, data: np.ndarray, out: RunFolder, title: str) -> str:
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5, 5))
    if data.ndim == 2 and data.shape[1] == 2:
        ax.scatter(data[:, 0], data[:, 1], s=3, c="0.75", label="training data")
    ax.scatter(x[:, 0], x[:, 1], s=3, c="tab:blue", label="samples")
    ax.legend(loc="best", fontsize=8, markerscale=3)
    ax.set_title(title, fontsize=9)
    fig.tight_layout()
    return out.write_bytes(RunFolder.SAMPLES_PNG, png(fig, dpi=110))
