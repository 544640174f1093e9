"""The AIR model of ``gendsl.models.air`` written in Pyro (CPU torch), for ``benchmarks/air.py``.

Same networks (image embedding 2500-H, GRU cell, H-7 predictor, 400-100-2D encoder,
D-100-400 decoder, 2500-100-1 baseline), same priors, same masking of absent
objects, same "later z_pres are still drawn" structure, and the same axis-aligned
bilinear spatial transformer (two interpolation matrices). The batch is a
``pyro.plate`` of images.

Estimators:

* ``reinforce``: ``TraceGraph_ELBO`` with the learned baseline (``nn_baseline`` on the
  image) at every ``z_pres`` site: REINFORCE with baselines and Pyro's dependency
  tracking (each site's score is paired with its downstream cost).
* ``enum``: ``TraceEnum_ELBO`` with the guide's ``z_pres`` sites enumerated in parallel
  (each enumerated value adds a tensor dimension; the continuous sites after it are
  drawn once per branch).

Pyro has no measure-valued derivative estimator, and its ``RenyiELBO(alpha=0)`` (the
IWAE bound) adds no score-function term for non-reparameterizable sites (its surrogate
term is ``alpha / (1 - alpha) * log q = 0`` at ``alpha = 0``), so IWAE(2) with discrete
``z_pres`` has no unbiased Pyro counterpart; ``benchmarks/air.py`` reports those rows as n/a.

Requires the ``bench`` extra (``pip install -e ".[bench]"``: torch CPU and pyro-ppl).
"""

from __future__ import annotations

import pyro
import pyro.distributions as pdist
import torch
from pyro.infer import SVI, TraceEnum_ELBO, TraceGraph_ELBO, config_enumerate
from torch import nn

from gendsl.models.air import AIRConfig


def _centres(size: int) -> torch.Tensor:
    return (2.0 * torch.arange(size) + 1.0) / size - 1.0


def _pixel(u, size: int):
    return ((u + 1.0) * size - 1.0) / 2.0


def _hat(centres: torch.Tensor, size: int) -> torch.Tensor:
    return torch.clamp(1.0 - (centres.unsqueeze(-1) - torch.arange(size)).abs(), min=0.0)


def window_to_image(window: torch.Tensor, z_where: torch.Tensor, canvas: int) -> torch.Tensor:
    """Batched ``gendsl.models.air.window_to_image``: window (..., w, w), z_where (..., 3)."""
    s, x, y = z_where[..., 0:1], z_where[..., 1:2], z_where[..., 2:3]
    u = _centres(canvas)
    size = window.shape[-1]
    rows = _hat(_pixel(s * (u - y), size), size)  # (..., canvas, size)
    cols = _hat(_pixel(s * (u - x), size), size)
    return rows @ window @ cols.transpose(-1, -2)


def image_to_window(image: torch.Tensor, z_where: torch.Tensor, window: int) -> torch.Tensor:
    """Batched ``gendsl.models.air.image_to_window``."""
    s, x, y = z_where[..., 0:1], z_where[..., 1:2], z_where[..., 2:3]
    w = _centres(window)
    size = image.shape[-1]
    rows = _hat(_pixel(y + w / s, size), size)
    cols = _hat(_pixel(x + w / s, size), size)
    return rows @ image @ cols.transpose(-1, -2)


def _mlp(n_in, n_out, hidden):
    return nn.Sequential(nn.Linear(n_in, hidden), nn.ReLU(), nn.Linear(hidden, n_out))


class Nets(nn.Module):
    """All parameters of the Pyro AIR (decoder in the model; the rest in the guide)."""

    def __init__(self, c: AIRConfig):
        super().__init__()
        self.decoder = _mlp(c.what, c.window**2, c.mlp)
        self.embed = nn.Linear(c.canvas**2, c.hidden)
        self.rnn = nn.GRUCell(c.hidden + 1 + 3 + c.what, c.hidden)
        self.predict = nn.Linear(c.hidden, 7)
        self.encoder = _mlp(c.window**2, 2 * c.what, c.mlp)
        self.baseline = _mlp(c.canvas**2, 1, c.mlp)


def make_pyro_air(c: AIRConfig, seed: int = 0):
    """``(model, guide, nets)`` for a batch of images ``(B, canvas, canvas)``."""
    torch.manual_seed(seed)
    nets = Nets(c)
    s_mean, s_sd = c.scale_prior
    where_loc = torch.tensor([s_mean, 0.0, 0.0])
    where_sd = torch.tensor([s_sd, c.shift_prior, c.shift_prior])

    def model(images):
        pyro.module("decoder", nets.decoder)
        n = images.shape[0]
        with pyro.plate("data", n):
            canvas = torch.zeros(())
            present = torch.ones(())
            for t in range(c.steps):
                z_pres = pyro.sample(f"z_pres_{t}", pdist.Bernoulli(torch.full((n,), c.pres_prior)))
                present = present * z_pres
                mask = present > 0.5
                z_where = pyro.sample(f"z_where_{t}", pdist.Normal(where_loc, where_sd).to_event(1).mask(mask))
                z_what = pyro.sample(
                    f"z_what_{t}", pdist.Normal(torch.zeros(c.what), 1.0).to_event(1).mask(mask)
                )
                window = torch.sigmoid(nets.decoder(z_what)).reshape((*z_what.shape[:-1], c.window, c.window))
                canvas = canvas + present[..., None, None] * window_to_image(window, z_where, c.canvas)
            pyro.sample("image", pdist.Normal(canvas, c.pixel_noise).to_event(2), obs=images)

    def guide(images):
        for name in ("embed", "rnn", "predict", "encoder", "baseline"):
            pyro.module(name, getattr(nets, name))
        n = images.shape[0]
        flat = images.reshape(n, -1)
        baseline = {"nn_baseline": lambda x: nets.baseline(x).squeeze(-1), "nn_baseline_input": flat}
        with pyro.plate("data", n):
            features = torch.tanh(nets.embed(flat))
            h = torch.zeros(n, c.hidden)
            z_where, z_what = torch.zeros(n, 3), torch.zeros(n, c.what)
            present = torch.ones(n)
            for t in range(c.steps):
                parts = [features, present[..., None], z_where, z_what]
                # Enumeration adds leading dimensions; the GRU cell takes a matrix.
                batch = torch.broadcast_shapes(h.shape[:-1], *(x.shape[:-1] for x in parts))
                inputs = torch.cat([x.expand(batch + x.shape[-1:]) for x in parts], -1).reshape(-1, sum(
                    x.shape[-1] for x in parts))
                h = nets.rnn(inputs, h.expand(batch + h.shape[-1:]).reshape(-1, c.hidden)).reshape((*batch, -1))
                out = nets.predict(h)
                z_pres = pyro.sample(
                    f"z_pres_{t}", pdist.Bernoulli(logits=out[..., 0]), infer={"baseline": baseline}
                )
                present = present * z_pres
                mask = present > 0.5
                loc = out[..., 1:4] + where_loc * torch.tensor([1.0, 0.0, 0.0])
                scale = nn.functional.softplus(out[..., 4:7]) * torch.tensor([0.1, 0.2, 0.2]) + 1e-3
                z_where = pyro.sample(f"z_where_{t}", pdist.Normal(loc, scale).to_event(1).mask(mask))
                window = image_to_window(images, z_where, c.window)
                enc = nets.encoder(window.reshape((*window.shape[:-2], -1)))
                what_scale = nn.functional.softplus(enc[..., c.what :]) + 1e-3
                z_what = pyro.sample(f"z_what_{t}", pdist.Normal(enc[..., : c.what], what_scale).to_event(1).mask(mask))

    return model, guide, nets


def make_svi(kind: str, c: AIRConfig, lr: float, seed: int = 0):
    """A Pyro ``SVI`` for ``kind`` in ``("reinforce", "enum")``, and the networks."""
    pyro.clear_param_store()
    model, guide, nets = make_pyro_air(c, seed)
    if kind == "reinforce":
        loss = TraceGraph_ELBO()
    elif kind == "enum":
        guide = config_enumerate(guide, "parallel", expand=False)
        loss = TraceEnum_ELBO(max_plate_nesting=1)
    else:
        raise ValueError(
            f"make_svi: kind must be 'reinforce' or 'enum' (Pyro has no MVD / unbiased IWAE here), got {kind!r}"
        )
    return SVI(model, guide, pyro.optim.Adam({"lr": lr}), loss), nets


if __name__ == "__main__":
    import time

    torch.set_num_threads(2)
    c = AIRConfig()
    images = torch.rand(64, c.canvas, c.canvas) * (torch.rand(64, c.canvas, c.canvas) > 0.9)
    for kind in ("reinforce", "enum"):
        svi, _ = make_svi(kind, c, 1e-4)
        svi.step(images)
        t = time.perf_counter()
        for _ in range(3):
            loss = svi.step(images)
        print(kind, loss, f"{(time.perf_counter() - t) / 3 * 1e3:.0f} ms/step")
