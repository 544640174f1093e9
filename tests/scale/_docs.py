"""Worker: run the Python blocks of docs/scale.md in order, in one namespace, on 4 forced host devices.

Run as ``python tests/scale/_docs.py``; exits non-zero if a block fails or a result is not what the page says.
"""

from __future__ import annotations

import os
import pathlib
import re


def main():
    os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=4").strip()
    page = pathlib.Path(__file__).resolve().parents[2] / "docs" / "scale.md"
    blocks = re.findall(r"```python\n(.*?)```", page.read_text(), flags=re.S)
    namespace: dict = {}
    for block in blocks:
        exec(compile(block, str(page), "exec"), namespace)
    import jax
    import numpy as np

    assert len(jax.devices()) == 4 and namespace["mesh"].size == 4
    one, result = namespace["one"], namespace["result"]
    # The multi-host script, run as one process, is the one-device fit.
    np.testing.assert_allclose(result.objective, one.objective, rtol=1e-5)
    assert len(namespace["seeds"]) == 4 and len(namespace["final"]) == 4
    assert all(r.error is None for r in namespace["grid"])
    print("docs/scale.md: ok")


if __name__ == "__main__":
    main()
