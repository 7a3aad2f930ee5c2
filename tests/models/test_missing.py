"""A stream missing for some examples of a batch (`inputs['missing']`): each such example gets the logits it gets
when run alone with that stream left out, in every fusion mode and head; the others are unaffected."""

from __future__ import annotations

import pytest
import torch

from mbt.engine.losses import mbt_loss
from mbt.errors import InputError
from tests.conftest import random_inputs

from .test_behaviour import MODES, small_model

# examples 0 and 3 have both streams, 1 lacks rgb, 2 lacks the spectrogram, 4 lacks rgb
MISSING = {"rgb": torch.tensor([False, True, False, False, True]),
           "spectrogram": torch.tensor([False, False, True, False, False])}


def alone(model, x, i):
    """Example i run by itself with the streams it has."""
    return model({m: x[m][i:i + 1] for m in model.config.modality_fusion if not MISSING[m][i]})


@pytest.mark.parametrize("scenic_schedule", [False, True])
@pytest.mark.parametrize("mode", sorted(MODES))
def test_a_masked_example_equals_that_example_run_without_the_stream(mode, scenic_schedule):
    model = small_model(**MODES[mode])
    model.scenic_vanilla_schedule = scenic_schedule
    x = random_inputs(model.config, batch=5)
    with torch.no_grad():
        out = model({**x, "missing": MISSING})
        full = model(x)
        for i in range(5):
            want = alone(model, x, i)
            torch.testing.assert_close(out.logits[i:i + 1], want.logits, rtol=0, atol=1e-5)
            if want.modality_logits:  # the token head: each present stream's own logits too
                for m, lg in want.modality_logits.items():
                    torch.testing.assert_close(out.modality_logits[m][i:i + 1], lg, rtol=0, atol=1e-5)
    assert out.present is not None and out.present["rgb"].tolist() == [True, False, True, True, False]
    # the examples with both streams do not depend on the others' flags
    torch.testing.assert_close(out.logits[[0, 3]], full.logits[[0, 3]], rtol=0, atol=1e-5)
    # and a missing stream's content no longer matters for the examples that lack it
    noisy = {**x, "rgb": x["rgb"] + 5 * torch.randn_like(x["rgb"])}
    with torch.no_grad():
        other = model({**noisy, "missing": MISSING})
    torch.testing.assert_close(other.logits[[1, 4]], out.logits[[1, 4]], rtol=0, atol=1e-5)
    assert (other.logits[0] - out.logits[0]).abs().max() > 1e-4  # ... while it does for those that have it


def test_training_uses_the_flags_in_the_loss_and_its_gradients():
    """In training (no dropout here), the token head's loss averages each example's present modalities, and a
    missing stream's input gets no gradient from the examples that lack it."""
    model = small_model(**MODES["bottleneck_mid"]).train()
    x = random_inputs(model.config, batch=5)
    x["rgb"].requires_grad_(True)
    labels = torch.nn.functional.one_hot(torch.arange(5) % 5, 5).float()
    out = model({**x, "missing": MISSING})
    loss = mbt_loss(out, labels, "single_label")
    for i in range(5):
        ref = alone(model, x, i)
        torch.testing.assert_close(loss[i:i + 1], mbt_loss(ref, labels[i:i + 1], "single_label"), rtol=0, atol=1e-5)
    loss.sum().backward()
    grad = x["rgb"].grad.flatten(1).abs().amax(1)
    assert grad[1] == 0 and grad[4] == 0 and grad[0] > 0


def test_flags_that_leave_an_example_nothing_are_refused():
    model = small_model(**MODES["bottleneck_mid"])
    x = random_inputs(model.config, batch=2)
    both = {"rgb": torch.tensor([True, False]), "spectrogram": torch.tensor([True, False])}
    with pytest.raises(InputError, match=r"example\(s\) \[0\] of the batch lack every stream"):
        model({**x, "missing": both})
    with pytest.raises(InputError, match="has 3 flags for a batch of 2"):
        model({**x, "missing": {"rgb": torch.tensor([True, False, False])}})
    # flags all off: the unmasked forward, bit for bit
    with torch.no_grad():
        assert torch.equal(model({**x, "missing": {"rgb": torch.zeros(2, dtype=torch.bool)}}).logits,
                           model(x).logits)
