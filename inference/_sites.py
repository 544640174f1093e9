"""The site handler: applies each latent site's gradient strategy while ``sim`` runs a model.

It sits on NumPyro's handler stack around the model. For every latent site it resolves the
strategy (the site's ``strategy=``, a ``gendsl.handlers.strategy`` rule, or the default) and
makes one call on it (see ``_strategies``): ``sample_site`` for an ordinary site,
``loop_site`` for a site of a ``gendsl.scan`` body (the loop asks it through the
``LoopSiteHandler`` protocol of ``gendsl.internal``) and ``loop_site_done`` for the stacked
loop site after the loop.
"""

from __future__ import annotations

from numpyro.primitives import Messenger

from gendsl.inference._execution import Execution
from gendsl.inference._strategies import Site, Strategy, resolve
from gendsl.internal import INFER_LOOP, INFER_STRATEGY, join

__all__ = ["SiteHandler"]


class SiteHandler(Messenger):
    """Applies the gradient strategy of every latent site drawn by one ``sim``.

    Args:
        execution: the running execution, where strategies register what they found.
        address: the address of the ``sim`` (site addresses are prefixed with it).
        score_paths: see ``Site.score_paths``.
    """

    def __init__(self, execution: Execution, address: str, score_paths: bool = True) -> None:
        super().__init__()
        self.execution = execution
        self.address = address
        self.score_paths = score_paths
        self.loop_strategies: dict[str, Strategy] = {}

    def _site(self, name: str) -> Site:
        return Site(join(self.address, name), self.execution, self.score_paths)

    def loop_site(self, probe) -> None:
        """Called by ``gendsl.scan`` for each site of a loop body (see ``LoopSiteHandler``)."""
        if probe["is_observed"]:
            return
        site = self._site(probe["name"])
        strategy = resolve(probe["infer"].get(INFER_STRATEGY), probe["fn"], site.address)
        self.loop_strategies[site.address] = strategy
        strategy.loop_site(site, probe)

    def postprocess_message(self, msg) -> None:
        if msg["type"] != "sample" or msg["is_observed"]:
            return
        site = self._site(msg["name"])
        if msg["infer"].get(INFER_LOOP) is not None:
            # Resolved and checked inside the loop already; the replayed site's distribution
            # only carries the stacked log density.
            strategy = self.loop_strategies.get(site.address)
            if strategy is not None:
                strategy.loop_site_done(site, msg)
            return
        resolve(msg["infer"].get(INFER_STRATEGY), msg["fn"], site.address).sample_site(site, msg)
