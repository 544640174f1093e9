"""Worker: train one case of ``_programs`` without a mesh and on meshes of several devices; write JSON.

Run as ``python tests/scale/_devices.py CASE OUT.json --devices 0,1,2,8 [--steps 50] [--resume]
[--inspect]`` (0 means no mesh). It forces ``max(devices)`` host devices before JAX starts,
which is why the tests run it in a subprocess.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import re
import sys


def main(argv=None):
    parser = argparse.ArgumentParser()
    parser.add_argument("case")
    parser.add_argument("out")
    parser.add_argument("--devices", default="0,1,2,8")
    parser.add_argument("--steps", type=int, default=50)
    parser.add_argument("--chunk", type=int, default=25)
    parser.add_argument("--resume", action="store_true", help="also: half the steps on most devices, rest on 2 / none")
    parser.add_argument("--inspect", action="store_true", help="also: the compiled step's shardings and collectives")
    parser.add_argument("--full", action="store_true", help="also: full-batch runs (no batch_size) on each mesh")
    parser.add_argument("--light", action="store_true", help="compile with jax_disable_most_optimizations")
    args = parser.parse_args(argv)
    counts = [int(c) for c in args.devices.split(",")]
    os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") +
                               f" --xla_force_host_platform_device_count={max(max(counts), 1)}").strip()

    import jax
    import numpy as np

    if args.light:
        jax.config.update("jax_disable_most_optimizations", True)
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    from _programs import case

    from gendsl.inference import data_mesh, data_parallel_step

    svi, data, batch_size, extra = case(args.case)
    compiles = _CompileCounter("jit(chunk)")
    key = jax.random.key(0)

    def flat(tree):
        leaves = [np.asarray(a, np.float64).ravel() for a in jax.tree_util.tree_leaves(jax.device_get(tree))]
        return np.concatenate(leaves).tolist()

    def run(devices, steps, state=None, mesh_key=key):
        mesh = None if devices == 0 else data_mesh(devices)
        return svi.run(mesh_key, steps, data, *extra, batch_size=batch_size, chunk_size=args.chunk, progress=False,
                       state=state, mesh=mesh)

    out = {"runs": {}}
    for d in counts:
        compiles.count = 0
        result = run(d, args.steps)
        leaves = jax.tree_util.tree_leaves(result.state)
        out["runs"][str(d)] = {
            "objective": result.objective.tolist(),
            "params": flat(result.params),
            "baselines": {a: list(np.shape(b)) for a, b in result.state.baselines.items()},
            "replicated": all(a.sharding.is_fully_replicated for a in leaves),
            "devices": sorted({len(a.sharding.device_set) for a in leaves}),
            "compilations": compiles.count,  # of the chunk, for a run of several chunks
        }
    if args.full:
        out["full"] = {}
        for d in counts:
            mesh = None if d == 0 else data_mesh(d)
            result = svi.run(key, 10, data, *extra, chunk_size=5, progress=False, mesh=mesh)
            out["full"][str(d)] = {"objective": result.objective.tolist(), "params": flat(result.params)}
    if args.resume:
        half = args.steps // 2
        first = run(max(counts), half)
        out["resume"] = {}
        for d in (2, 0):
            rest = run(d, args.steps - half, state=first.state)
            out["resume"][str(d)] = {"objective": first.objective.tolist() + rest.objective.tolist(),
                                     "params": flat(rest.params)}
        host = jax.device_get(first.state.params)  # a checkpoint's arrays: plain numpy
        out["resume"]["host_leaves_are_numpy"] = all(isinstance(a, np.ndarray) for a in jax.tree_util.tree_leaves(host))
    if args.inspect:
        d = max(counts)
        mesh = data_mesh(d)
        step = data_parallel_step(svi, mesh)
        state = svi.init(jax.random.key(1), data[:batch_size], *extra)
        _, placed_batch, _ = step.place(state, data[:batch_size], *extra)
        compiled = step.lower(state, data[:batch_size], *extra).compile()
        (state_in, batch_in, _), _ = compiled.input_shardings
        text = compiled.as_text()
        new, info = step(state, data[:batch_size], *extra)
        out["inspect"] = {
            "batch_spec": [str(s.spec) for s in jax.tree_util.tree_leaves(batch_in)],
            "batch_array_spec": str(placed_batch.sharding.spec),
            "batch": batch_size,
            "batch_shard_shapes": [list(s.data.shape) for s in placed_batch.addressable_shards],
            "state_specs": sorted({str(s.spec) for s in jax.tree_util.tree_leaves(state_in)}),
            "output_replicated": all(s.is_fully_replicated
                                     for s in jax.tree_util.tree_leaves(compiled.output_shardings)),
            "all_reduce": text.count("all-reduce("),
            "num_partitions": int(re.search(r"num_partitions=(\d+)", text).group(1)),
            "step": int(new.step),
            "finite": bool(info.finite),
        }
    with open(args.out, "w") as f:
        json.dump(out, f)


class _CompileCounter(logging.Handler):
    """Counts JAX's "Compiling <name>" log records (``jax_log_compiles``)."""

    def __init__(self, name: str):
        super().__init__()
        import jax

        jax.config.update("jax_log_compiles", True)
        self.name, self.count = name, 0
        logger = logging.getLogger("jax")
        logger.addHandler(self)
        logger.propagate = False  # keep the records off stderr

    def emit(self, record):
        if record.getMessage().startswith(f"Compiling {self.name} "):
            self.count += 1


if __name__ == "__main__":
    main()
