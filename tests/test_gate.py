"""The upload gate: groups, thresholds, verdicts and messages."""

from __future__ import annotations

import numpy as np
import pytest

import belka
from belka.errors import ModelError, UsageError
from belka.gate import Gate
from belka.models.labels import IMAGENET_GROUPS, imagenet_labels, resolve

skdata = pytest.importorskip("skimage.data")


@pytest.fixture(scope="module")
def model():
    return belka.load()


def test_groups_name_the_right_classes():
    labels = imagenet_labels()
    assert labels[335] == "fox squirrel"
    assert [labels[i] for i in IMAGENET_GROUPS["cat"]] == [
        "tabby", "tiger cat", "Persian cat", "Siamese cat", "Egyptian cat"]
    assert labels[IMAGENET_GROUPS["dog"][0]] == "Chihuahua" and len(IMAGENET_GROUPS["dog"]) == 118
    assert all(i not in IMAGENET_GROUPS["bird"] for i in (25, 79, 101, 126, 147))


def test_resolve_names_indices_groups_and_lists():
    labels = imagenet_labels()
    assert resolve("squirrel", labels) == [335]
    assert resolve("Fox Squirrel", labels) == [335]
    assert resolve("335", labels) == [335]
    assert resolve("tabby,squirrel", labels) == [281, 335]
    assert resolve(["cat", 281], labels) == [281, 282, 283, 284, 285]


def test_unknown_class_lists_close_matches():
    with pytest.raises(ModelError, match="'fox squirrel'"):
        resolve("fox squirel", imagenet_labels())
    with pytest.raises(ModelError, match="out of range"):
        resolve(1000, imagenet_labels())


def test_cat_is_warned_for_squirrel_and_accepted_for_cat(model):
    cat = skdata.chelsea()
    warned = model.check(cat, allow="squirrel")
    assert warned.verdict == "warn" and not warned.accepted
    assert warned.message.startswith("this does not look like a squirrel: top guess tiger cat 0.")
    accepted = model.check(cat, allow="cat")
    assert accepted.verdict == "accept"
    # The score is the summed probability of the five cat classes: of the whole image without
    # tiles; with tiles (the default) of the best view, the whole image being one of them.
    probs = model.probabilities(cat)[0]
    whole = Gate(model, allow="cat", tiles=False).check_many([cat])[0]
    assert whole.score == pytest.approx(float(probs[281:286].sum()), abs=1e-6)
    assert accepted.score >= whole.score - 1e-6
    assert accepted.score > 0.9


def test_threshold_decides(model):
    gate = Gate(model, allow="cat", threshold=0.5)
    probs = np.zeros(1000, np.float32)
    probs[281], probs[0] = 0.3, 0.7
    assert gate.decide(probs).verdict == "warn"
    probs[281], probs[282], probs[0] = 0.3, 0.2, 0.5
    assert gate.decide(probs).verdict == "accept"  # 0.3 + 0.2 reaches 0.5
    with pytest.raises(UsageError):
        Gate(model, allow="cat", threshold=1.5)


def test_batch_check_returns_one_result_each(model):
    results = model.check([skdata.chelsea(), skdata.coffee()], allow="cat")
    assert [r.verdict for r in results] == ["accept", "warn"]
    assert results[1].predictions[0].label == "espresso"


def test_a_result_carries_the_whole_image_embedding(model):
    """Calibration groups bursts by content from these, so they must be the whole image's."""
    image = skdata.astronaut()                     # 512 x 512: tiles too
    result = Gate(model, "cat", tiles=True).check_many([image])[0]
    assert result.views > 1 and result.embedding is not None
    whole = model.preprocessing.resize(image)[np.newaxis]
    _, want = model.embed_batch(whole)
    np.testing.assert_allclose(result.embedding, want[0], rtol=1e-4, atol=1e-5)
    assert "embedding" not in result.to_dict()


def test_messages_name_classes_given_by_index(model):
    """`--allow 335` used to say "does not look like a 335"."""
    result = Gate(model, allow="335", tiles=False).check_many([skdata.chelsea()])[0]
    assert result.allowed == "fox squirrel"
    assert result.message.startswith("this does not look like a fox squirrel: top guess ")
    assert Gate(model, allow="281, 282", tiles=False).allowed == "tabby or tiger cat"
    assert Gate(model, allow="squirrel").allowed == "squirrel"


def test_a_warned_top_guess_of_the_allowed_class_is_worded_as_doubt(model):
    """With a head, "does not look like a squirrel: top guess squirrel 0.41" contradicted
    itself: when the top guess is an allowed class that fell short, say so."""
    gate = Gate(model, allow="cat", tiles=False, threshold=0.99)
    result = gate.check_many([skdata.chelsea()])[0]   # a tiger cat or tabby near 0.4
    assert result.verdict == "warn" and result.predictions[0].index in gate.allow_indices
    assert result.message.startswith("not sure this is a cat: the top guess is ")
    assert "but only at 0." in result.message and "< 0.99" in result.message
