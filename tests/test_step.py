"""The loss of an optimizer step is normalized by the label tokens of the whole step: the same examples cut
as 1 rank x 8, 1 rank x 2 x 4 accumulation steps and 2 ranks x 2 x 2 give the same loss and the same
gradients, for every objective, on the real engine (tests/loss_cuts.py, through DeepSpeed's launcher)."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch
from conftest import ROOT, deepspeed_exe, free_port, run

pytestmark = pytest.mark.slow  # three launches of the real engine

CUTS = {"1 rank x 8": (1, 8, 1), "1 rank x 2 x 4 accumulation": (1, 2, 4), "2 ranks x 2 x 2 accumulation": (2, 2, 2)}


@pytest.fixture(scope="module")
def cuts(tmp_path_factory) -> dict[str, dict]:
    out = {}
    for name, (world, micro, gas) in CUTS.items():
        path = tmp_path_factory.mktemp("cut") / "result.pt"
        run([deepspeed_exe(), "--num_gpus", str(world), "--master_port", str(free_port()),
             str(ROOT / "tests" / "loss_cuts.py"), "--micro", str(micro), "--gas", str(gas), "--out", str(path)])
        out[name] = torch.load(path, weights_only=True)
    return out


@pytest.mark.parametrize("objective", ["mlm", "clm", "plm"])
def test_every_cut_gives_the_same_loss_and_gradients(cuts, objective):
    reference, *others = [cuts[name][objective] for name in CUTS]
    for name, other in zip(list(CUTS)[1:], others, strict=True):
        assert other["label_tokens"] == reference["label_tokens"], name  # the same masks in every cut
        assert other["loss"] == pytest.approx(reference["loss"], rel=1e-6), name
        assert torch.allclose(other["grad"], reference["grad"], rtol=1e-4, atol=1e-7), name
    assert reference["grad"].abs().sum() > 0
    print(f"{objective}: loss {reference['loss']:.6f}, grad norm {reference['grad'].norm():.6f} in every cut; "
          f"mean of micro-batch means: " + ", ".join(f"{n}: {cuts[n][objective]['old_loss']:.6f}" for n in CUTS),
          file=sys.stderr)


def test_the_old_mean_of_means_would_depend_on_the_cut(cuts):
    """The cuts are uneven enough to tell: a mean per micro batch, averaged, gives another loss per cut, apart
    by more than a hundred times the tolerance the cuts agree within above."""
    for objective in ("mlm", "clm", "plm"):
        old = [cuts[name][objective]["old_loss"] for name in CUTS]
        assert max(old) - min(old) > 100 * 1e-6 * abs(old[0]), (objective, old)
        assert old[0] == pytest.approx(cuts["1 rank x 8"][objective]["loss"], rel=1e-6)  # one micro batch: the same


if __name__ == "__main__":
    sys.exit(pytest.main([str(Path(__file__)), "-q", "-s"]))
