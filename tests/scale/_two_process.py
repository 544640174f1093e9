"""Worker: the VAE case of ``_programs`` in one process, or as one of two processes holding half the data each.

* ``python _two_process.py single OUT.json``: one process, one device, the whole data.
* ``python _two_process.py worker OUT.json --port P --process-id I``: process ``I`` of two on
  localhost (``initialize_distributed``, gloo CPU collectives, 2 host devices each), holding
  rows ``[128 I, 128 (I + 1))`` of the 256 points as its part of a global array
  (``shard_data``); trains with minibatches drawn from the global array, then full-batch.
* ``--die``: process 1 exits abruptly (``os._exit``) after the first chunk of a long run, to
  check that process 0 terminates with JAX's error instead of waiting forever.
"""

from __future__ import annotations

import argparse
import json
import os
import sys

STEPS, FULL_STEPS, CHUNK = 30, 10, 10


def main(argv=None):
    parser = argparse.ArgumentParser()
    parser.add_argument("mode", choices=["single", "worker"])
    parser.add_argument("out")
    parser.add_argument("--port", type=int)
    parser.add_argument("--process-id", type=int)
    parser.add_argument("--die", action="store_true")
    args = parser.parse_args(argv)
    if args.mode == "worker":
        flags = os.environ.get("XLA_FLAGS", "")
        os.environ["XLA_FLAGS"] = f"{flags} --xla_force_host_platform_device_count=2".strip()

    import jax
    import numpy as np

    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    from _programs import case

    from gendsl.inference import data_mesh, initialize_distributed, shard_data

    mesh = None
    if args.mode == "worker":
        assert initialize_distributed(f"localhost:{args.port}", 2, args.process_id, heartbeat_timeout_seconds=5,
                                      initialization_timeout=60)
        mesh = data_mesh()  # every device of both processes
    svi, data, batch_size, _ = case("vae")
    if mesh is not None:
        assert len(mesh.devices.flat) == 4 and len(mesh.local_devices) == 2
        half = data.shape[0] // 2
        local = np.asarray(data)[half * args.process_id : half * (args.process_id + 1)]
        data = shard_data(local, mesh)
        assert not data.is_fully_addressable and data.shape == (2 * half, local.shape[1])

    def flat(tree):
        return np.concatenate([np.asarray(a, np.float64).ravel() for a in jax.tree_util.tree_leaves(tree)]).tolist()

    if args.die:
        def callback(info):
            if args.process_id == 1:
                print("process 1: exiting abruptly", flush=True)
                os._exit(1)

        svi.run(jax.random.key(0), 10**6, data, batch_size=batch_size, chunk_size=CHUNK, progress=False,
                mesh=mesh, callback=callback)
        return
    mini = svi.run(jax.random.key(0), STEPS, data, batch_size=batch_size, chunk_size=CHUNK, progress=False, mesh=mesh)
    full = svi.run(jax.random.key(1), FULL_STEPS, data, state=mini.state, chunk_size=CHUNK, progress=False, mesh=mesh)
    out = {
        "minibatch": {"objective": mini.objective.tolist(), "params": flat(mini.params)},
        "full": {"objective": full.objective.tolist(), "params": flat(full.params)},
        "process_count": jax.process_count(),
    }
    with open(args.out, "w") as f:
        json.dump(out, f)


if __name__ == "__main__":
    main()
