"""The conditional VAE of pyro-ppl/pyro ``examples/cvae/cvae.py`` (with ``BaselineNet`` from
``examples/cvae/baseline.py`` and the quadrant masking of ``MaskImages`` in
``examples/cvae/mnist.py``), on 8×8 binarized digits.

The task, as there: from one quadrant of an image (``xs``: the other pixels set to −1), predict
the other three (``ys``: the full image with the input quadrant set to −1). The model is
``model(xs, ys)``: a conditional prior p(z | xs, ŷ) from ``prior_net`` (ŷ the baseline net's
guess, under ``torch.no_grad``), ``generation_net(z)`` → Bernoulli over the masked pixels
(observed site ``y``); the guide q(z | xs, ys) is ``recognition_net``. Data: the tuple
(xs, ys), per-row arrays.

What was changed:

- 784 pixels → 64 (``IMAGE_SIZE``), 28×28 quadrants → 4×4, the first 300 binarized digits of
  the train split; ``num_quadrant_inputs=1`` (the bottom-left quadrant is the input);
- sizes: z_dim 200 → 2, hidden 500/500 → 32/32, baseline 500/500 → 16/16;
- the baseline net is not pre-trained: a fixed network (seed 0), which is all the model needs
  of it (it is a constant input to the prior net);
- ``mask_loc = loc[(xs == -1).view(-1, 784)].view(batch_size, -1)`` and
  ``mask_ys = ys[xs == -1].view(batch_size, -1)`` become ``loc[..., masked]`` and
  ``ys[..., masked]`` with ``masked = (xs == -1)[0]`` (MaskImages hides the same quadrant in
  every row), so that the model broadcasts over a leading particle dimension;
- the ``ys is None`` (prediction) branch is kept but unused;
- ``sized_plate=True`` (not the default) replaces the example's unsized ``pyro.plate("data")``
  by ``pyro.plate("data", xs.shape[0])`` in model and guide, so that the rest of the pair can
  be tested where a library needs a sized data plate.
"""

from __future__ import annotations

import pyro
import pyro.distributions as dist
import torch
import torch.nn as nn

from . import Pair, digits

SOURCE = "examples/cvae/cvae.py"
IMAGE_SIZE = 64
SIDE = 8
ROWS = 300


class BaselineNet(nn.Module):
    def __init__(self, hidden_1, hidden_2):
        super().__init__()
        self.fc1 = nn.Linear(IMAGE_SIZE, hidden_1)
        self.fc2 = nn.Linear(hidden_1, hidden_2)
        self.fc3 = nn.Linear(hidden_2, IMAGE_SIZE)
        self.relu = nn.ReLU()

    def forward(self, x):
        x = x.view(-1, IMAGE_SIZE)
        hidden = self.relu(self.fc1(x))
        hidden = self.relu(self.fc2(hidden))
        y = torch.sigmoid(self.fc3(hidden))
        return y


class Encoder(nn.Module):
    def __init__(self, z_dim, hidden_1, hidden_2):
        super().__init__()
        self.fc1 = nn.Linear(IMAGE_SIZE, hidden_1)
        self.fc2 = nn.Linear(hidden_1, hidden_2)
        self.fc31 = nn.Linear(hidden_2, z_dim)
        self.fc32 = nn.Linear(hidden_2, z_dim)
        self.relu = nn.ReLU()

    def forward(self, x, y):
        # put x and y together in the same image for simplification
        xc = x.clone()
        xc[x == -1] = y[x == -1]
        xc = xc.view(-1, IMAGE_SIZE)
        hidden = self.relu(self.fc1(xc))
        hidden = self.relu(self.fc2(hidden))
        z_loc = self.fc31(hidden)
        z_scale = torch.exp(self.fc32(hidden))
        return z_loc, z_scale


class Decoder(nn.Module):
    def __init__(self, z_dim, hidden_1, hidden_2):
        super().__init__()
        self.fc1 = nn.Linear(z_dim, hidden_1)
        self.fc2 = nn.Linear(hidden_1, hidden_2)
        self.fc3 = nn.Linear(hidden_2, IMAGE_SIZE)
        self.relu = nn.ReLU()

    def forward(self, z):
        y = self.relu(self.fc1(z))
        y = self.relu(self.fc2(y))
        y = torch.sigmoid(self.fc3(y))
        return y


class CVAE(nn.Module):
    def __init__(self, z_dim, hidden_1, hidden_2, pre_trained_baseline_net, sized_plate=False):
        super().__init__()
        self.sized_plate = sized_plate
        self.baseline_net = pre_trained_baseline_net
        self.prior_net = Encoder(z_dim, hidden_1, hidden_2)
        self.generation_net = Decoder(z_dim, hidden_1, hidden_2)
        self.recognition_net = Encoder(z_dim, hidden_1, hidden_2)

    def data_plate(self, xs):
        # as written: pyro.plate("data"), unsized
        return pyro.plate("data", xs.shape[0]) if self.sized_plate else pyro.plate("data")

    def model(self, xs, ys=None):
        # register this pytorch module and all of its sub-modules with pyro
        pyro.module("generation_net", self)
        with self.data_plate(xs):
            # Prior network uses the baseline predictions as initial guess.
            with torch.no_grad():
                y_hat = self.baseline_net(xs).view(xs.shape)

            # sample the handwriting style from the prior distribution, which is
            # modulated by the input xs.
            prior_loc, prior_scale = self.prior_net(xs, y_hat)
            zs = pyro.sample("z", dist.Normal(prior_loc, prior_scale).to_event(1))

            # the output y is generated from the distribution pθ(y|x, z)
            loc = self.generation_net(zs)

            if ys is not None:
                # In training, we will only sample in the masked image (the same quadrant
                # of every row; indexed so that a leading particle dimension broadcasts)
                masked = (xs == -1)[0]
                mask_loc = loc[..., masked]
                mask_ys = ys[..., masked]
                pyro.sample(
                    "y",
                    dist.Bernoulli(mask_loc, validate_args=False).to_event(1),
                    obs=mask_ys,
                )
            else:
                pyro.deterministic("y", loc.detach())

            # return the loc so we can visualize it later
            return loc

    def guide(self, xs, ys=None):
        with self.data_plate(xs):
            if ys is None:
                # at inference time, ys is not provided. In that case,
                # the model uses the prior network
                y_hat = self.baseline_net(xs).view(xs.shape)
                loc, scale = self.prior_net(xs, y_hat)
            else:
                # at training time, uses the variational distribution
                # q(z|x,y) = normal(loc(x,y),scale(x,y))
                loc, scale = self.recognition_net(xs, ys)

            pyro.sample("z", dist.Normal(loc, scale).to_event(1))


def mask_images(images: torch.Tensor, mask_with: float = -1.0) -> tuple[torch.Tensor, torch.Tensor]:
    """``MaskImages(num_quadrant_inputs=1)`` on flattened 8×8 images: (input, output)."""
    tensor = images.view(-1, SIDE, SIDE)
    out = tensor.clone()
    h, w = SIDE, SIDE
    # removes the bottom left quadrant from the target output
    out[:, h // 2 :, : w // 2] = mask_with
    # now, sets the input as complementary
    inp = tensor.clone()
    inp[out != -1] = mask_with
    return inp.reshape(-1, IMAGE_SIZE), out.reshape(-1, IMAGE_SIZE)


def pair(seed: int = 0, rows: int = ROWS, *, sized_plate: bool = False) -> Pair:
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        cvae = CVAE(2, 32, 32, BaselineNet(16, 16), sized_plate=sized_plate)
    xs, ys = mask_images(digits(binarize=True, split="train")[:rows])
    return Pair(
        name="cvae[sized plate]" if sized_plate else "cvae",
        source=SOURCE,
        model=cvae.model,
        guide=cvae.guide,
        data=(xs, ys),
        extras={"modules": (cvae,)},
    )
