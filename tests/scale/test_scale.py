"""Scale-out on JAX's sharding: data-parallel SVI on 1, 2 and 8 devices, many fits at once, two processes.

Forced host devices (``XLA_FLAGS=--xla_force_host_platform_device_count=N``) must be set
before JAX starts, so each check runs a worker script of this folder in a fresh Python
(``sys.executable``) and compares what it writes.

Tolerances (float32 reduction order). On N devices the program is the one-device program with
sharding annotations; the only difference is the order of the float32 sums over the batch
(per-device partial sums, then an all-reduce). Reordering a sum of n terms moves it by at most
about n * 2^-24 of the sum of magnitudes, typically sqrt(n) * 2^-24 (n ~ 10^3 terms in these
minibatch objectives: 2e-6). So:

* each step's objective estimate: ``rtol=1e-5`` (observed at most 6e-7);
* parameters after 50 Adam steps: ``atol=5e-5``. Adam's update ``lr * m / sqrt(v)`` carries a
  gradient's relative rounding change into the parameters, and magnifies it in coordinates whose
  gradient nearly cancels (observed at most 3.5e-6, ENUM; 1e-7 elsewhere). A real bug (a
  different minibatch, noise or baseline on some device) moves them by 1e-3 or more.
"""

from __future__ import annotations

import json
import os
import pathlib
import socket
import subprocess
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from gendsl.inference import SVI, DivergenceError, NonFiniteError, expectation, fit_many

HERE = pathlib.Path(__file__).resolve().parent
OBJECTIVE_RTOL, PARAMS_ATOL = 1e-5, 5e-5


def _worker(script: str, *args: str, timeout: float = 600) -> subprocess.CompletedProcess:
    done = subprocess.run([sys.executable, str(HERE / script), *args], capture_output=True, text=True,
                          timeout=timeout)
    assert done.returncode == 0, f"{script} failed:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
    return done


def _same_run(run: dict, reference: dict) -> None:
    np.testing.assert_allclose(run["objective"], reference["objective"], rtol=OBJECTIVE_RTOL)
    np.testing.assert_allclose(run["params"], reference["params"], rtol=0, atol=PARAMS_ATOL)


def _devices(tmp_path, case: str, devices: str, *flags: str) -> dict:
    out = tmp_path / f"{case}.json"
    _worker("_devices.py", case, str(out), "--devices", devices, *flags)
    return json.loads(out.read_text())


def test_two_devices_train_like_one_and_the_batch_is_really_split(tmp_path):
    """The one fast check: 50 minibatch steps on a 2-device mesh equal the one-device run; the compiled
    step takes the batch split in two (8 rows per device), the state replicated, and all-reduces."""
    out = _devices(tmp_path, "tiny", "0,2", "--inspect", "--light")
    one, two = out["runs"]["0"], out["runs"]["2"]
    assert len(two["objective"]) == 50
    _same_run(two, one)
    assert two["replicated"] and two["devices"] == [2] and one["devices"] == [1]
    assert one["compilations"] == two["compilations"] == 1  # two chunks, one program
    inspect = out["inspect"]
    assert inspect["num_partitions"] == 2
    assert inspect["batch_spec"] == ["P('data',)"] and inspect["batch_array_spec"] == "P('data',)"
    assert inspect["batch_shard_shapes"] == [[8], [8]]  # batch 16 over 2 devices
    assert inspect["state_specs"] == ["P()"] and inspect["output_replicated"]
    assert inspect["all_reduce"] >= 1  # the gradient's sum over the batch
    assert inspect["step"] == 1 and inspect["finite"]


@pytest.mark.slow
@pytest.mark.parametrize(
    "case", ["vae", "reinforce", "enum", "flow-matching", "mvd", "iwelbo-dreg", "vimco-per-point", "ddpm"]
)
def test_one_two_and_eight_devices_give_the_same_fit(tmp_path, case):
    flags = ("--resume", "--full") if case == "vae" else ()
    out = _devices(tmp_path, case, "0,1,2,8" if case == "vae" else "0,2,8", "--inspect", *flags)
    one = out["runs"]["0"]
    assert len(one["objective"]) == 50 and np.all(np.isfinite(one["objective"]))
    for n in sorted(set(out["runs"]) - {"0"}):
        _same_run(out["runs"][n], one)
        assert out["runs"][n]["replicated"] and out["runs"][n]["devices"] == [int(n)]
        assert out["runs"][n]["compilations"] == 1
    assert out["inspect"]["num_partitions"] == 8 and out["inspect"]["all_reduce"] >= 1
    shards = out["inspect"]["batch_shard_shapes"]  # the batch in 8 equal slices
    assert len(shards) == 8 and len({tuple(s) for s in shards}) == 1 and 8 * shards[0][0] == out["inspect"]["batch"]
    if case == "reinforce":  # the EMA baseline is kept per element of the plate, replicated on every device
        assert out["runs"]["8"]["baselines"] == {"sim0/z": [64]}
    if case == "vae":
        # A state written on 8 devices resumes on 2, and on one device without a mesh.
        for n in ("2", "0"):
            _same_run(out["resume"][n], one)
        assert out["resume"]["host_leaves_are_numpy"]
        for n in ("1", "2", "8"):  # without batch_size: the whole data set split over the devices
            _same_run(out["full"][n], out["full"]["0"])


@pytest.mark.slow
def test_fit_many_equals_separate_runs_on_one_device_and_split_over_four(tmp_path):
    out_path = tmp_path / "fits.json"
    _worker("_fits.py", str(out_path))
    out = json.loads(out_path.read_text())
    for name in ("many", "many_mesh", "resumed"):
        assert len(out[name]) == 4
        for run, reference in zip(out[name], out["separate"], strict=True):
            _same_run(run, reference)
    for run, reference in zip(out["grid_many"], out["grid_separate"], strict=True):
        _same_run(run, reference)
    finals = [r["params"][0] for r in out["grid_many"]]
    assert len(set(finals)) == 4  # four learning rates, four different fits


@pytest.mark.slow
def test_a_failing_fit_stops_alone_and_carries_its_error():
    """Ascent on log(w) - 2w from w = 1: lr 0.1 converges to 0.5; lr 10 jumps to w = -9, where log is NaN."""
    objective = expectation(lambda p: jnp.log(p["w"]) - 2.0 * p["w"], init=lambda key: ({"w": jnp.float32(1.0)}, {}))
    svi = SVI(objective, optax.inject_hyperparams(optax.sgd)(learning_rate=0.1))
    seen = []
    results = fit_many(svi, [0, 0], 200, progress=False, chunk_size=50, divergence=None,
                       hyperparams={"learning_rate": jnp.array([0.1, 10.0])},
                       callback=lambda infos: seen.append([(i.step, len(i.objective)) for i in infos]))
    # The failed fit took one step, then stays at its last finite state.
    assert seen == [[(50 * c, 50), (1, 1 if c == 1 else 0)] for c in (1, 2, 3, 4)]
    good, bad = results
    assert good.error is None and len(good.objective) == 200 and abs(float(good.params["w"]) - 0.5) < 1e-4
    assert isinstance(bad.error, NonFiniteError) and not isinstance(bad.error, DivergenceError)
    assert bad.error.step == 2 and len(bad.objective) == 1 and float(bad.params["w"]) == -9.0
    with pytest.raises(NonFiniteError):  # what SVI.run raises for the same fit
        SVI(objective, optax.sgd(10.0)).run(jax.random.key(0), 200, progress=False, divergence=None)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("localhost", 0))
        return s.getsockname()[1]


def _two_processes(tmp_path, *flags: str, timeout: float):
    port = str(_free_port())
    procs = [
        subprocess.Popen([sys.executable, str(HERE / "_two_process.py"), "worker", str(tmp_path / f"p{i}.json"),
                          "--port", port, "--process-id", str(i), *flags],
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        for i in range(2)
    ]
    start, outputs = time.monotonic(), []
    try:
        for p in procs:
            out, err = p.communicate(timeout=max(1.0, timeout - (time.monotonic() - start)))
            outputs.append((p.returncode, out, err, time.monotonic() - start))
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
    return outputs


@pytest.mark.slow
def test_two_processes_holding_half_the_data_each_fit_like_one_process(tmp_path):
    single = tmp_path / "single.json"
    _worker("_two_process.py", "single", str(single))
    reference = json.loads(single.read_text())
    for code, out, err, _ in _two_processes(tmp_path, timeout=300):
        assert code == 0, f"{out[-2000:]}\n{err[-3000:]}"
    for i in range(2):
        got = json.loads((tmp_path / f"p{i}.json").read_text())
        assert got["process_count"] == 2
        for phase in ("minibatch", "full"):
            _same_run(got[phase], reference[phase])


@pytest.mark.slow
def test_when_one_process_dies_the_other_exits_with_an_error_instead_of_hanging(tmp_path):
    """Process 1 exits abruptly after its first chunk; process 0, waiting in the next step's all-reduce,
    is terminated by JAX's coordination service after the 5 s heartbeat timeout (here: well within 120 s)."""
    (code0, _, err0, seconds), (code1, out1, _, _) = _two_processes(tmp_path, "--die", timeout=120)
    assert code1 == 1 and "exiting abruptly" in out1
    assert code0 != 0 and seconds < 120
    assert "another task died" in err0 and "heartbeat" in err0


@pytest.mark.slow
def test_the_examples_of_docs_scale_md_run_as_written():
    assert "docs/scale.md: ok" in _worker("_docs.py").stdout


@pytest.mark.slow
def test_the_gpu_check_runs_on_cpu_devices():
    """benchmarks/gpu_check.sh is for a GPU machine; its shell parses and its Python runs here on 2 host devices."""
    root = HERE.parents[1]
    assert subprocess.run(["bash", "-n", str(root / "benchmarks" / "gpu_check.sh")]).returncode == 0
    env = {**os.environ, "XLA_FLAGS": "--xla_force_host_platform_device_count=2"}
    command = [sys.executable, str(root / "benchmarks" / "gpu_check.py"), "--batches", "16", "--rounds", "1",
               "--warmup", "1"]
    done = subprocess.run(command, capture_output=True, text=True, env=env, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    rows = [line.split("|")[1:4] for line in done.stdout.splitlines() if line.startswith("| vae") or
            line.startswith("| ddpm")]
    assert [[c.strip() for c in row] for row in rows] == [
        ["vae", "16", "1"], ["vae", "16", "2"], ["ddpm", "16", "1"], ["ddpm", "16", "2"]
    ]
