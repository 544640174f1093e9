"""Attend-Infer-Repeat (Eslami et al. 2016) on multi-MNIST: count and locate 0-3 digits on a 50x50 canvas.

A ``gendsl fit`` program (``gendsl.models.make_air``, a Trainable whose objective is the ELBO of one
image, with REINFORCE and a learned baseline at the presence sites; ``gendsl fit`` sums it over each
minibatch). The canvases are built from the MNIST images in the folder given with ``--data``
(``gendsl.datasets.multi_mnist``): 10,000 training canvases from the first 90% of the digits and
1,000 held-out canvases from the rest, with the true counts, so that ``gendsl eval`` reports the
count accuracy beside the ELBO. About five minutes on two CPU cores with the ``defaults`` below:

    gendsl fit examples/air_multi_mnist.py --data ../shared/data/mnist        # -> runs/air_multi_mnist/
    gendsl eval examples/air_multi_mnist.py --run runs/air_multi_mnist --limit 500   # ELBO, count accuracy
    gendsl sample examples/air_multi_mnist.py --run runs/air_multi_mnist -n 16       # canvases from the prior

For another estimator at the presence sites, e.g. exact enumeration, change ``strategy`` below
(``make_air(AIRConfig(), strategy=ENUM)``); ``benchmarks/air.py`` compares them (and Pyro).
"""

from gendsl.datasets import mnist_images, multi_mnist
from gendsl.models import AIRConfig, make_air

trainable = make_air(AIRConfig())
image_shape = (50, 50)


def data(path):
    """``((canvases, counts), (held-out canvases, counts))`` from the MNIST folder ``path``."""
    digits = mnist_images(path)
    split = len(digits) * 9 // 10
    return multi_mnist(digits[:split], 10000, seed=0), multi_mnist(digits[split:], 1000, seed=1)


defaults = {"steps": 4000, "batch_size": 64, "lr": 5e-4, "chunk_size": 50, "checkpoint_every": 500}


if __name__ == "__main__":
    import sys

    from gendsl.cli import main

    sys.exit(main(["fit", __file__, *sys.argv[1:]]))
