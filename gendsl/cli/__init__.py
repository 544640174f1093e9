"""The ``gendsl`` command: ``gendsl fit``, ``gendsl sample`` and ``gendsl eval`` for a program file.

A program file declares a model, a guide and the data (see ``docs/fit.md`` and
``gendsl fit --help``); ``gendsl fit program.py`` trains it and writes the
parameters, metrics, a loss plot, posterior draws (ArviZ) and a summary.

Exit codes: 0 success; 1 training stopped (non-finite objective) or an
internal error; 2 a problem with the command line, the program or a run
folder (one line on stderr; ``--debug`` adds the traceback); 128 + the signal
number when SIGINT (130) or SIGTERM (143) stopped training after a checkpoint.

This is the one place in ``gendsl/`` that imports ``gendsl.inference``; the
core package does not import it.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
import traceback

__all__ = ["main"]

PROGRAM_HELP = """\
The program file is a Python file that defines:
  model        an @gendsl.model called as model(data), with observed sites
  guide        an @gendsl.model called as guide(data), or guide = "auto"
  data()       returns the training data, or (train, test); data(path) gets --data PATH
optionally:
  objective    a name ("iwelbo"), a factory objective(model, guide, particles=K), or an Expectation
  strategies   {address pattern: strategy} for guide sites, e.g. {"z": "enum"}
  defaults     {option: value} for the options below, e.g. {"steps": 3000, "lr": 3e-3}
  image_shape  e.g. (28, 28): `gendsl sample` then draws an image grid
  conditions   the data's dict keys the model is conditioned on, e.g. ("y",): `gendsl sample --cond y=3`
See docs/fit.md."""

EXIT_HELP = """\
exit codes: 0 done; 1 training stopped (non-finite or diverging objective); 2 bad command line, program, data or run
folder (one line; --debug shows the traceback), a run folder in use by another fit, or --resume --steps below
the steps done; 130/143 stopped by SIGINT/SIGTERM after a checkpoint. See "What can go wrong" in docs/fit.md."""


class _Parser(argparse.ArgumentParser):
    """An ``ArgumentParser`` whose errors are one line (raised, and printed by ``main``)."""

    def error(self, message):
        from gendsl.cli._errors import CLIError

        raise CLIError(f"{message} (see `{self.prog} --help`)")


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--debug", action="store_true", help="show full tracebacks of errors")


def build_parser() -> argparse.ArgumentParser:
    """The ``gendsl`` argument parser."""
    import gendsl
    from gendsl.cli import _options

    formatter = argparse.RawDescriptionHelpFormatter
    parser = _Parser(
        prog="gendsl",
        description="Train and use gendsl programs from the command line.\n\n" + PROGRAM_HELP,
        epilog="Run `gendsl COMMAND --help` for a command's options.\n" + EXIT_HELP,
        formatter_class=formatter,
    )
    parser.add_argument("--version", action="version", version=f"gendsl {gendsl.__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)

    fit = commands.add_parser(
        "fit", help="train a program's guide and model parameters", formatter_class=formatter,
        description=(
            "Train the program's model and guide by stochastic variational inference, with a progress bar.\n"
            "Writes to --out: params.npz (constrained parameters, no pickle), checkpoint.npz, metrics.csv,\n"
            "loss.png, posterior.nc (ArviZ InferenceData), marginals.png, report.html, summary.txt, config.json.\n"
            "With --method nuts: sample the model's posterior with NUTS instead (no guide): posterior.nc with\n"
            "sampling diagnostics, summary.txt with R-hat, ESS and divergences, trace.png, marginals.png,\n"
            "report.html and config.json.\n\n"
            "Option values come from the command line, else the program's `defaults`, else the defaults shown.\n\n"
            + PROGRAM_HELP
        ),
        epilog=EXIT_HELP,
    )
    fit.add_argument("program", help="the program file (.py)")
    _options.add_options(fit)
    fit.add_argument("--resume", action="store_true",
                     help="continue the run in --out from its last checkpoint, with its configuration; --steps is the "
                          "total to reach (fewer than the steps already done is an error); the result is bit-for-bit "
                          "that of an uninterrupted run of that many steps")
    fit.add_argument("--overwrite", action="store_true", help="replace a run that already exists in --out")
    fit.add_argument("--quiet", action="store_true", help="no progress bar or messages on stderr")
    _common(fit)
    fit.set_defaults(func=_command_fit)

    sample = commands.add_parser(
        "sample", help="draw from a trained model", formatter_class=formatter,
        description=(
            "Draw from the trained model of a run: with --from prior (default), latents from the prior and\n"
            "observations from the likelihood; with --from posterior, latents from the guide given the first N\n"
            "training points (or the data set), then observations. Writes samples.npz and, for image data,\n"
            "samples.png (a grid of the observation means)."
        ),
        epilog=EXIT_HELP,
    )
    sample.add_argument("program", help="the program file (.py) the run was trained with")
    sample.add_argument("--run", required=True, metavar="DIR", help="the run folder written by `gendsl fit`")
    sample.add_argument("-n", type=_positive, default=64, metavar="N", help="number of draws (default 64)")
    sample.add_argument("--from", dest="source", choices=("prior", "posterior"), default=None,
                        help="draw latents from the prior (default for VI runs) or from the posterior: the guide given "
                             "the data, or a NUTS run's draws (default for NUTS runs)")
    sample.add_argument("--seed", type=_natural, default=0, metavar="S", help="random seed (default 0)")
    sample.add_argument("--out", metavar="DIR", default=None, help="where to write (default: the run folder)")
    sample.add_argument("--image-shape", type=_shape, default=None, metavar="HxW",
                        help="draw observations as HxW images (default: the program's image_shape, or square "
                             "images in [0, 1] when the size is a square)")
    sample.add_argument("--data", default=None, metavar="PATH", help="data path (default: the run's)")
    sample.add_argument("--sampling-steps", type=_positive, default=None, metavar="N",
                        help="a Trainable run: the sampler's steps (its `steps` option; default: the model's)")
    sample.add_argument("--sampler", default=None, metavar="NAME",
                        help="a Trainable run: the sampler (its `method` option, e.g. ancestral, ddim, heun, ode; "
                             "default: the model's)")
    sample.add_argument("--class", dest="label", type=_natural, default=None, metavar="C",
                        help="a class-conditional Trainable run: draw class C (its `labels` option)")
    sample.add_argument("--guidance-scale", type=_nonnegative, default=None, metavar="W",
                        help="a class-conditional Trainable run: classifier-free guidance weight W (its `guidance` "
                             "option; 0: none, the default)")
    sample.add_argument("--cond", type=_condition, action="append", default=None, metavar="NAME=VALUE",
                        help="set a conditioning input that the program declares (`conditions`) for every draw, "
                             "e.g. --cond y=3 (repeatable; comma-separated numbers for a vector)")
    sample.add_argument("--raw", action="store_true",
                        help="use the trained parameters (params.npz), not their EMA (ema_params.npz, the default "
                             "for runs fitted with --ema)")
    _common(sample)
    sample.set_defaults(func=_command_sample)

    ev = commands.add_parser(
        "eval", help="held-out ELBO and IWAE-K log-likelihood of a trained run", formatter_class=formatter,
        description=(
            "Evaluate a run on the program's test data (or the training data when there is none): the ELBO\n"
            "and the importance-weighted bound IWAE-K, per data point with minibatch training (as in Burda et\n"
            "al. 2016), with Monte-Carlo standard errors. Writes eval.json into the run folder."
        ),
        epilog=EXIT_HELP,
    )
    ev.add_argument("program", help="the program file (.py) the run was trained with")
    ev.add_argument("--run", required=True, metavar="DIR", help="the run folder written by `gendsl fit`")
    ev.add_argument("--particles", "-k", type=_positive, default=100, metavar="K",
                    help="importance samples of the IWAE bound (default 100)")
    ev.add_argument("--samples", type=_positive, default=10, metavar="S",
                    help="samples averaged in each ELBO estimate (default 10; a Trainable whose evaluate "
                         "estimates a bound, e.g. VDM or DDPM: draws per point)")
    ev.add_argument("--repeats", type=_repeats, default=3, metavar="R",
                    help="independent estimates, for the standard error (default 3)")
    ev.add_argument("--split", choices=("test", "train"), default="test", help="data to evaluate (default test)")
    ev.add_argument("--limit", type=_positive, default=None, metavar="N", help="evaluate only the first N points")
    ev.add_argument("--eval-batch-size", type=_positive, default=100, metavar="B",
                    help="data points evaluated at once (default 100; fewer with large K)")
    ev.add_argument("--seed", type=_natural, default=0, metavar="S", help="random seed (default 0)")
    ev.add_argument("--data", default=None, metavar="PATH", help="data path (default: the run's)")
    ev.add_argument("--raw", action="store_true",
                    help="use the trained parameters (params.npz), not their EMA (ema_params.npz, the default for "
                         "runs fitted with --ema)")
    divergence = ev.add_mutually_exclusive_group()
    divergence.add_argument("--exact", action="store_true",
                            help="an ODE likelihood (flows, PFGM++, EDM): the exact divergence, the Jacobian's trace "
                                 "(the default)")
    divergence.add_argument("--probes", type=_positive, default=None, metavar="N",
                            help="an ODE likelihood: Hutchinson's unbiased divergence estimate with N Rademacher "
                                 "probes per point instead (cheaper in high dimension)")
    _common(ev)
    ev.set_defaults(func=_command_eval)

    report = commands.add_parser(
        "report", help="rebuild a run folder's report.html", formatter_class=formatter,
        description=(
            "Rebuild report.html in a run folder from the files it holds: the run, the training curve (or the\n"
            "NUTS trace), eval.json, samples.png, the posterior marginals and summary.txt. One self-contained\n"
            "page: images embedded, nothing fetched from the network."
        ),
        epilog=EXIT_HELP,
    )
    report.add_argument("run", metavar="RUN", help="the run folder written by `gendsl fit`")
    _common(report)
    report.set_defaults(func=_command_report, program=None)

    cmp = commands.add_parser(
        "compare", help="two runs' posteriors side by side (e.g. VI against NUTS)", formatter_class=formatter,
        description=(
            "Put two runs' posteriors (posterior.nc) side by side: per parameter, the mean and sd under each,\n"
            "the difference of the means in units of RUN_B's sd and the ratio of the sds (so put the reference,\n"
            "e.g. a NUTS run, second). Prints the table and writes compare.txt and compare.png (the marginals\n"
            "overlaid, per parameter) to --out."
        ),
        epilog=EXIT_HELP,
    )
    cmp.add_argument("run_a", metavar="RUN_A", help="a run folder written by `gendsl fit`")
    cmp.add_argument("run_b", metavar="RUN_B", help="another run folder (the reference)")
    cmp.add_argument("--out", metavar="DIR", default=None,
                     help="where to write compare.txt and compare.png (default: compare-A-vs-B beside RUN_A)")
    _common(cmp)
    cmp.set_defaults(func=_command_compare, program=None)
    return parser


def _positive(text):
    from gendsl.cli._options import positive_int

    try:
        return positive_int(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _repeats(text):
    value = _positive(text)
    if value < 2:
        raise argparse.ArgumentTypeError("expected at least 2 (the standard error needs two estimates)")
    return value


def _nonnegative(text):
    from gendsl.cli._options import nonnegative_float

    try:
        return nonnegative_float(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _natural(text):
    from gendsl.cli._options import natural_int

    try:
        return natural_int(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _condition(text):
    name, sep, value = text.partition("=")
    if not sep or not name.strip() or not value.strip():
        raise argparse.ArgumentTypeError(f"expected NAME=VALUE such as y=3, got {text!r}")
    return name.strip(), value.strip()


def _shape(text):
    try:
        shape = tuple(int(p) for p in text.lower().split("x"))
        if not shape or any(d < 1 for d in shape):
            raise ValueError
        return shape
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected HxW such as 28x28, got {text!r}") from None


def _command_fit(args):
    from gendsl.cli._fit import fit

    return fit(args)


def _command_sample(args):
    from gendsl.cli._sample import sample

    code = sample(args)
    if code == 0 and (args.out is None or os.path.abspath(args.out) == os.path.abspath(args.run)):
        _refresh_report(args.run)
    return code


def _command_eval(args):
    from gendsl.cli._eval import evaluate

    code = evaluate(args)
    if code == 0:
        _refresh_report(args.run)
    return code


def _command_report(args):
    from gendsl.cli._errors import CLIError
    from gendsl.cli._report import build
    from gendsl.cli._runfolder import RunFolder

    folder = RunFolder(args.run)
    if not os.path.isdir(args.run):
        raise CLIError(f"RUN {args.run}: no such directory; give a run folder written by `gendsl fit`")
    if not folder.has(RunFolder.CONFIG):
        raise CLIError(f"RUN {args.run}: no config.json; give a run folder written by `gendsl fit`")
    print(f"wrote {build(folder)}")
    return 0


def _command_compare(args):
    from gendsl.cli._compare import compare

    return compare(args)


def _refresh_report(run: str) -> None:
    """Rebuild ``report.html`` after ``eval`` / ``sample`` when the run has one (it embeds their outputs)."""
    from gendsl.cli._report import REPORT, build
    from gendsl.cli._runfolder import RunFolder

    folder = RunFolder(run)
    if not folder.has(REPORT):
        return
    try:
        build(folder)
    except Exception as exc:  # the command's own output is written; a stale page is only a warning
        print(f"warning: report.html not rebuilt ({type(exc).__name__}: {exc}); run `gendsl report {run}`",
              file=sys.stderr)


def _quiet_xla() -> None:
    """Hide XLA's C++ warnings (``Constant folding an instruction is taking > 1s``), which read like errors.

    JAX sets ``TF_CPP_MIN_LOG_LEVEL=1`` (warnings shown) when it is imported, which the
    ``gendsl`` entry point does before ``main`` runs; so the level is raised here, in the
    environment (for XLA code that reads it later, and child processes) and through JAX's
    own ``jax_logging_level`` option (for the C++ logger already set up). A level the user
    lowered on purpose (``0``) stays; ``--debug`` keeps everything.
    """
    if os.environ.get("TF_CPP_MIN_LOG_LEVEL", "1") in ("", "1"):
        os.environ["TF_CPP_MIN_LOG_LEVEL"] = "2"
        import jax

        with contextlib.suppress(Exception):  # an older JAX without the option: the variable is all we can do
            jax.config.update("jax_logging_level", "ERROR")


def main(argv: list[str] | None = None) -> int:
    """Run the ``gendsl`` command with ``argv`` (default ``sys.argv[1:]``); returns the exit code.

    Example:
        >>> main(["fit", "no-such-program.py"])  # one line on stderr, exit code 2
        2
    """
    from gendsl.cli._errors import CLIError, describe, first_line, program_frame

    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser()
    try:
        # parse_known_args: leftover arguments belong to the command, whose --help lists its options
        args, unknown = parser.parse_known_args(argv)
        if unknown and args.command is not None:
            raise CLIError(f"unrecognized arguments: {' '.join(unknown)} (see `gendsl {args.command} --help`)")
        if unknown:
            parser.error(f"unrecognized arguments: {' '.join(unknown)}")
    except CLIError as exc:
        print(f"gendsl: error: {exc}", file=sys.stderr)
        return 2
    except SystemExit as exc:  # --help, --version
        return exc.code if isinstance(exc.code, int) else 0
    if args.command is None:
        parser.print_help(sys.stderr)
        return 2
    args.argv = argv
    prog = f"gendsl {args.command}"
    if not args.debug:
        _quiet_xla()
    try:
        return args.func(args)
    except CLIError as exc:
        if args.debug and exc.cause is not None:
            traceback.print_exception(exc.cause)
        print(f"{prog}: error: {exc}", file=sys.stderr)
        return exc.code
    except KeyboardInterrupt:  # before training started, or outside `gendsl fit`
        print(f"{prog}: interrupted", file=sys.stderr)
        return 130
    except Exception as exc:
        if args.debug:
            traceback.print_exception(exc)
        if args.program is not None and program_frame(exc, args.program) is not None:
            print(f"{prog}: error: {describe(exc, args.program, 'in the program')}", file=sys.stderr)
            return 2
        print(f"{prog}: internal error: {type(exc).__name__}: {first_line(exc)} (rerun with --debug for the "
              "traceback)", file=sys.stderr)
        return 1
