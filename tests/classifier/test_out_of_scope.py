"""The unknown-intent detector: fitted on in-scope messages only, stored with the model, computed by every variant.

The tiny model learns eight BANKING77 intents; messages of the other 69 intents are the out-of-scope traffic it never
saw, in training or in choosing its threshold.
"""

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from supportflow.classifier.ood import DETECTOR_FILE, OutOfScopeDetector, fit_detector, vocabulary_quantile, words
from supportflow.errors import RegistryError
from tests.classifier.conftest import BANKING77, ROOT, TINY_INTENTS, build_tiny_classifier

pytestmark = pytest.mark.slow  # one tiny fine-tuning for the module (~30 s on a shared core)
MULTILINGUAL = ROOT / "bench" / "data" / "multilingual.csv"  # 205 non-English support messages (bench/multilingual.py)


def test_threshold_keeps_the_chosen_share_of_validation_and_flags_what_lies_far() -> None:
    rng = np.random.default_rng(0)
    centres = rng.normal(scale=8.0, size=(4, 16))
    labels = rng.integers(0, 4, size=2000)
    train = centres[labels] + rng.normal(size=(2000, 16))
    validation = centres[rng.integers(0, 4, size=1000)] + rng.normal(size=(1000, 16))
    detector = fit_detector(train, labels, validation, quantile=0.9)
    flagged = detector.scores(validation) > detector.threshold
    assert flagged.mean() == pytest.approx(0.1, abs=0.002)  # the threshold is the validation distances' 90th percentile
    far = rng.normal(scale=8.0, size=(200, 16)) + 40.0  # nowhere near any centre
    assert (detector.scores(far) > detector.threshold).all()
    near_held_out = centres[rng.integers(0, 4, size=1000)] + rng.normal(size=(1000, 16))
    assert 0.05 < (detector.scores(near_held_out) > detector.threshold).mean() < 0.15  # new in-scope data: ~10% too


def test_fewer_messages_than_dimensions_still_give_finite_distances() -> None:
    rng = np.random.default_rng(1)
    train = rng.normal(size=(10, 64))  # a covariance of rank 8 at most: singular without the ridge
    detector = fit_detector(train, np.repeat([0, 1], 5), rng.normal(size=(5, 64)))
    assert np.isfinite(detector.scores(rng.normal(size=(3, 64)))).all() and np.isfinite(detector.threshold)


def _unit(vectors: np.ndarray) -> np.ndarray:
    return vectors / np.linalg.norm(vectors, axis=1, keepdims=True)


def test_the_pretrained_encoders_neighbours_flag_what_the_fine_tuned_space_pulls_into_an_intent() -> None:
    """The failure the second distance is for: unseen questions the fine-tuned space places among a known intent's
    messages, which the pretrained space still places away from every training message."""
    rng = np.random.default_rng(2)
    centres = rng.normal(scale=8.0, size=(4, 16))
    known_topics, unseen_topics = rng.normal(size=(40, 32)), rng.normal(size=(40, 32))

    def messages(n: int, topics: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        labels = rng.integers(0, 4, size=n)
        fine_tuned = centres[labels] + rng.normal(size=(n, 16))  # unseen or not, the same place here
        pretrained = _unit(topics[rng.integers(0, len(topics), size=n)] + rng.normal(scale=0.15, size=(n, 32)))
        return fine_tuned, labels, pretrained

    train, labels, train_sentences = messages(2000, known_topics)
    validation, _, validation_sentences = messages(1000, known_topics)
    unseen, _, unseen_sentences = messages(500, unseen_topics)
    alone = fit_detector(train, labels, validation, quantile=0.9)
    paired = fit_detector(train, labels, validation, 0.9, None, train_sentences, validation_sentences)
    assert paired.neighbours is not None and len(paired.neighbours.embeddings) == 2000
    # Both keep the validation quantile's share of in-scope messages; only the pair sees the unseen ones.
    assert (paired.scores(validation, validation_sentences) > paired.threshold).mean() == pytest.approx(0.1, abs=0.002)
    assert (alone.scores(unseen) > alone.threshold).mean() < 0.2
    assert (paired.scores(unseen, unseen_sentences) > paired.threshold).mean() > 0.9
    with pytest.raises(RegistryError, match="pretrained encoder's embedding"):
        paired.scores(unseen)
    with pytest.raises(ValueError, match="both the training and the validation"):
        fit_detector(train, labels, validation, 0.9, None, train_sentences, None)


def test_the_neighbours_survive_storage_and_are_searched_in_bounded_chunks(tmp_path: Path) -> None:
    rng = np.random.default_rng(3)
    train, validation, queries = (rng.normal(size=(n, 8)) for n in (300, 100, 1500))
    sentences, validation_sentences, query_sentences = (rng.normal(size=(n, 24)) for n in (300, 100, 1500))
    detector = fit_detector(train, np.arange(300) % 3, validation, 0.95, None, sentences, validation_sentences)
    detector.save(tmp_path)
    loaded = OutOfScopeDetector.load(tmp_path)
    assert loaded is not None and loaded.neighbours is not None and loaded.threshold == detector.threshold
    # Stored as float16, which the fit already rounded to: the served scores are those the threshold was chosen on.
    np.testing.assert_array_equal(loaded.scores(queries, query_sentences), detector.scores(queries, query_sentences))
    assert len(query_sentences) > 2 * 512  # more than two of the search's chunks
    expected = 1 - (_unit(query_sentences) @ _unit(sentences).T).max(axis=1)
    np.testing.assert_allclose(loaded.neighbours.distances(query_sentences), expected, atol=2e-3)


def test_a_large_desk_keeps_a_bounded_neighbour_search_in_which_every_intent_keeps_its_messages() -> None:
    from supportflow.classifier.ood import neighbour_sample

    labels = np.array([0] * 500 + [1] * 3 + [2] * 300)
    kept = neighbour_sample(labels, cap=400)
    assert len(kept) <= 400 and len(set(kept.tolist())) == len(kept)
    assert np.bincount(labels[kept]).tolist() == [198, 3, 198]  # the largest equal quota that fits; the rare intent whole
    assert neighbour_sample(labels, cap=400).tolist() == kept.tolist()  # the same draw every time
    assert neighbour_sample(labels, cap=1000).tolist() == list(range(803))  # under the cap: every message
    rng = np.random.default_rng(4)
    detector = fit_detector(
        rng.normal(size=(803, 4)), labels, rng.normal(size=(50, 4)), 0.9, None, rng.normal(size=(803, 6)), rng.normal(size=(50, 6))
    )
    assert detector.neighbours is not None and len(detector.neighbours.embeddings) == 803


@pytest.mark.parametrize("quantile", [0.0, 1.0, 1.5])
def test_a_quantile_outside_zero_to_one_is_refused(quantile: float) -> None:
    with pytest.raises(ValueError, match="strictly between 0 and 1"):
        fit_detector(np.ones((4, 2)), np.array([0, 0, 1, 1]), np.ones((2, 2)), quantile)


def test_no_validation_messages_is_refused() -> None:
    with pytest.raises(ValueError, match="needs validation messages"):
        fit_detector(np.ones((4, 2)), np.array([0, 0, 1, 1]), np.ones((0, 2)))


@dataclass(frozen=True)
class Tiny:
    built: object  # BuiltClassifier
    in_scope: list[str]  # test messages of the learnt intents
    unknown: list[str]  # messages of intents the model never saw
    train: list[str]  # the training messages, whose words the detector keeps
    validation: list[str]  # the validation messages, which set both thresholds


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory, tiny_base: Path) -> Iterator[Tiny]:
    built, splits = build_tiny_classifier(tmp_path_factory.mktemp("tiny-classifier") / "model", tiny_base)
    others = pd.read_csv(BANKING77 / "test.csv")
    unknown = others[~others["category"].isin(TINY_INTENTS)].sample(n=200, random_state=0)["text"].tolist()
    yield Tiny(built, splits.test["text"].tolist(), unknown, splits.train["text"].tolist(), splits.validation["text"].tolist())


def test_the_detector_is_stored_with_the_model_and_flags_unseen_intents_more_than_learnt_ones(tiny: Tiny) -> None:
    from supportflow.classifier.inference import OnnxClassifier

    built = tiny.built
    assert (built.folder / DETECTOR_FILE).exists()
    stored = OutOfScopeDetector.load(built.folder)
    assert stored is not None and stored.threshold == pytest.approx(built.detector.threshold)
    assert stored.quantile == 0.95  # as the fixture built it
    # The second distance's neighbours are the training messages, in the pretrained encoder's space.
    assert stored.neighbours is not None and len(stored.neighbours.embeddings) == len(tiny.train)
    # The vocabulary is the training messages' words; its threshold is read off the validation messages alone.
    assert stored.vocabulary is not None and stored.vocabulary.vocabulary == frozenset(w for text in tiny.train for w in words(text))
    validation_shares = stored.vocabulary.unfamiliar(tiny.validation)
    assert stored.vocabulary.threshold == pytest.approx(np.quantile(validation_shares, vocabulary_quantile(0.95)))
    served = OnnxClassifier(built.folder, "fp32", threads=1)
    in_scope = served.classify(tiny.in_scope, top_k=3)
    unknown = served.classify(tiny.unknown, top_k=3)
    unfamiliar = stored.vocabulary.unfamiliar(tiny.in_scope + tiny.unknown)
    for result, share in zip(in_scope + unknown, unfamiliar, strict=True):
        assert result["out_of_scope"] == (result["ood_score"] > stored.threshold or share > stored.vocabulary.threshold)
    in_scope_rate = np.mean([r["out_of_scope"] for r in in_scope])
    unknown_rate = np.mean([r["out_of_scope"] for r in unknown])
    # Chosen at validation's 95th percentile: few in-scope messages are flagged, and far more of the unseen intents'.
    assert in_scope_rate <= 0.2
    assert unknown_rate > in_scope_rate + 0.2
    assert np.mean([r["ood_score"] for r in unknown]) > np.mean([r["ood_score"] for r in in_scope])


def test_foreign_questions_about_the_learnt_topics_are_out_of_scope(tiny: Tiny) -> None:
    from supportflow.classifier.inference import OnnxClassifier

    foreign = pd.read_csv(MULTILINGUAL)
    results = OnnxClassifier(tiny.built.folder, "int8", threads=1).classify(foreign["text"].tolist(), top_k=1)
    flagged = np.array([r["out_of_scope"] for r in results])
    assert flagged.mean() >= 0.9, foreign["text"][~flagged].tolist()


def test_every_variant_computes_the_same_detector(tiny: Tiny) -> None:
    from supportflow.classifier.inference import OnnxClassifier
    from supportflow.classifier.predict import IntentClassifier

    texts = tiny.in_scope[:20] + tiny.unknown[:20]
    torch_results = IntentClassifier(tiny.built.folder, threads=1).classify(texts)
    onnx_results = OnnxClassifier(tiny.built.folder, "fp32", threads=1).classify(texts)
    for ours, theirs in zip(onnx_results, torch_results, strict=True):
        assert ours["intent"] == theirs["intent"]
        assert ours["ood_score"] == pytest.approx(theirs["ood_score"], rel=1e-3, abs=1e-3)  # standardised: near 0 too
    int8 = OnnxClassifier(tiny.built.folder, "int8", threads=1).classify(texts)
    assert all(r["ood_score"] is not None and np.isfinite(r["ood_score"]) for r in int8)


def test_the_export_searches_the_neighbours_as_numpy_does_and_an_export_without_the_search_is_served_the_same(tiny: Tiny) -> None:
    """The nearest training message is searched in the graph (int8 reads the neighbours quantised); a folder exported
    before, whose graph has no such output, gets the same scores from the search in numpy."""
    from dataclasses import replace

    from supportflow.classifier.inference import NEAREST_OUTPUT, OnnxClassifier, classify_outputs, onnx_outputs

    texts = tiny.in_scope[:20] + tiny.unknown[:20]
    # int8: ONNX Runtime's u8s8 product can saturate on a CPU without VNNI (AVX2 only). There a few cosines move by
    # a tenth or more (BANKING77's quick model: 0.038 at most of 400 test messages, median 0.0007, none flagged
    # differently; this tiny model, random in each session, 0.06 once and 0.136 another time), where a CPU with VNNI
    # keeps them within 0.01. The median holds on both.
    vnni = any(flag in Path("/proc/cpuinfo").read_text().split() for flag in ("avx512_vnni", "avx_vnni", "amx_int8"))
    for variant, tolerance in (("fp32", 1e-5), ("int8", 0.02 if vnni else 0.25)):
        served = OnnxClassifier(tiny.built.folder, variant, threads=1)
        assert NEAREST_OUTPUT in {output.name for output in served.session.get_outputs()}
        outputs = onnx_outputs(served.session, served.tokenizer, texts)
        detector = served.parts.detector
        assert detector is not None and detector.neighbours is not None and outputs.nearest_cosines is not None
        searched = 1.0 - detector.neighbours.distances(outputs.sentence_embeddings)
        np.testing.assert_allclose(outputs.nearest_cosines, searched, atol=tolerance)
        assert np.median(np.abs(outputs.nearest_cosines - searched)) < min(tolerance, 0.01)  # most are close on any CPU
        graph = classify_outputs(texts, outputs, served.parts)
        without_search = classify_outputs(texts, replace(outputs, nearest_cosines=None), served.parts)
        for ours, older in zip(graph, without_search, strict=True):
            assert ours["intent"] == older["intent"]
            if variant == "fp32":  # int8's score follows its cosine's error, scaled by the detector's spread
                assert ours["ood_score"] == pytest.approx(older["ood_score"], abs=1e-4)
                assert ours["out_of_scope"] == older["out_of_scope"]
    with pytest.raises(RegistryError, match="pretrained encoder"):
        detector.scores(outputs.embeddings)  # neither the graph's search nor the embedding to search with


def test_the_second_encoder_is_the_pretrained_one_frozen_and_its_export_is_required(tiny: Tiny, tiny_base: Path, tmp_path: Path) -> None:
    import shutil

    import torch
    from transformers import AutoModel

    from supportflow.classifier.artifacts import SENTENCE_ENCODER_DIR
    from supportflow.classifier.inference import SENTENCE_OUTPUT, OnnxClassifier
    from supportflow.classifier.onnx_export import export_onnx
    from supportflow.classifier.predict import load_sentence_encoder

    kept = load_sentence_encoder(tiny.built.folder)
    assert kept is not None
    pretrained = AutoModel.from_pretrained(str(tiny_base)).state_dict()
    assert all(torch.equal(value, pretrained[name]) for name, value in kept.state_dict().items())
    served = OnnxClassifier(tiny.built.folder, "int8", threads=1)
    assert SENTENCE_OUTPUT in {output.name for output in served.session.get_outputs()}
    # A folder whose export lacks the pretrained encoder (made without it) is refused, not served on half a detector.
    stripped = tmp_path / "stripped"
    shutil.copytree(tiny.built.folder, stripped, ignore=shutil.ignore_patterns(SENTENCE_ENCODER_DIR))
    export_onnx(stripped)
    with pytest.raises(RegistryError, match=SENTENCE_OUTPUT):
        OnnxClassifier(stripped, "fp32", threads=1)


def test_serving_refuses_a_variant_whose_detector_hands_off_more_in_scope_messages() -> None:
    """int8's noise, whitened, can push in-scope messages past the threshold its fp32 twin keeps them within: then the
    faster variant is not the one served, however close its accuracy."""
    from supportflow.classifier.onnx_export import VariantParity, fastest_within

    fp32 = VariantParity("fp32", 0.90, 0.90, seconds_per_100=2.0, out_of_scope_rate=0.012, torch_out_of_scope_rate=0.010)
    noisy_int8 = VariantParity("int8", 0.90, 0.90, seconds_per_100=1.0, out_of_scope_rate=0.30, torch_out_of_scope_rate=0.010)
    assert fastest_within([fp32, noisy_int8], tolerance=0.005, alarm_tolerance=0.01) == "fp32"
    faithful_int8 = VariantParity("int8", 0.899, 0.90, seconds_per_100=1.0, out_of_scope_rate=0.015, torch_out_of_scope_rate=0.010)
    assert fastest_within([fp32, faithful_int8], tolerance=0.005, alarm_tolerance=0.01) == "int8"
    noisy_fp32 = VariantParity("fp32", 0.90, 0.90, seconds_per_100=2.0, out_of_scope_rate=0.05, torch_out_of_scope_rate=0.010)
    assert fastest_within([noisy_fp32, noisy_int8], tolerance=0.005, alarm_tolerance=0.01) == "torch"


def test_parity_counts_each_variants_false_alarms_one_message_at_a_time(tiny: Tiny) -> None:
    from supportflow.classifier.inference import OnnxClassifier
    from supportflow.classifier.onnx_export import check_parity

    texts = tiny.in_scope[:40]
    parities = check_parity(tiny.built.folder, ["fp32", "int8"], texts, tiny.built.test_labels[:40], 1.0, 1, torch_out_of_scope_rate=0.0)
    for parity in parities:
        alone = [OnnxClassifier(tiny.built.folder, parity.variant, threads=1).classify([text])[0]["out_of_scope"] for text in texts]
        assert parity.out_of_scope_rate == pytest.approx(np.mean(alone))
        assert parity.alarm_rise == pytest.approx(parity.out_of_scope_rate)


def test_a_model_trained_before_the_detector_flags_nothing(tiny: Tiny, tmp_path: Path) -> None:
    import shutil

    from supportflow.classifier.inference import OnnxClassifier

    old = tmp_path / "old"
    shutil.copytree(tiny.built.folder, old)
    (old / DETECTOR_FILE).unlink()
    results = OnnxClassifier(old, "fp32", threads=1).classify(tiny.unknown[:5])
    assert [(r["out_of_scope"], r["ood_score"]) for r in results] == [(False, None)] * 5
    assert OnnxClassifier(old, "fp32", threads=1).classify([]) == []


def test_texts_without_words_are_out_of_scope_and_long_texts_say_they_were_cut(tiny: Tiny) -> None:
    from supportflow.classifier.inference import OnnxClassifier
    from supportflow.classifier.predict import IntentClassifier

    wordless = ["", "🙂🙂🙂", "?!...", "a", "   "]
    long = "I would like to know why my card has not arrived yet, " * 40  # far beyond the tiny model's 32 tokens
    texts = [*wordless, tiny.in_scope[0], long]
    onnx = OnnxClassifier(tiny.built.folder, "fp32", threads=1)
    read = onnx.tokenizer.encode(long)
    beginning = onnx.tokenizer.decode(read.ids)  # the 30 word pieces between [CLS] and [SEP] the model was given
    assert len(read.ids) == 32 and len(onnx.tokenizer.encode(beginning).ids) == 32
    for classifier in (onnx, IntentClassifier(tiny.built.folder, threads=1)):
        results = classifier.classify(texts)
        assert [r["out_of_scope"] for r in results[: len(wordless)]] == [True] * len(wordless)
        assert all(r["ood_score"] is not None for r in results)  # still scored: the flag is the rule's, not a guess
        assert [r["truncated"] for r in results] == [False] * (len(texts) - 1) + [True]
        # What was read is the beginning: the long text is classified as its first 32 tokens are.
        (alone,) = classifier.classify([beginning])
        assert not alone["truncated"] and alone["intent"] == results[-1]["intent"]
        assert alone["confidence"] == pytest.approx(results[-1]["confidence"], rel=1e-4)


def test_a_batch_of_ten_thousand_needs_working_memory_of_one_batch_not_of_the_whole(tiny: Tiny) -> None:
    import tracemalloc

    from supportflow.classifier.inference import OnnxClassifier

    classifier = OnnxClassifier(tiny.built.folder, "int8", threads=1)
    texts = [f"{text} {n}" for n, text in enumerate((tiny.in_scope + tiny.unknown) * 50)][:10_000]
    assert len(texts) == 10_000
    tracemalloc.start()
    try:
        results = classifier.classify(texts, top_k=3)
        answer, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert len(results) == 10_000 and all(r["ranking"] for r in results)
    # Beyond the answers it returns, the work is done 128 texts at a time: a few megabytes, whatever the batch.
    assert peak - answer < 16 * 2**20


def test_the_embedding_averages_a_messages_own_tokens_whatever_it_is_batched_with(tiny: Tiny) -> None:
    """The detector and the prototypes read the mean of the last layer's token vectors: the padding a longer message
    in the same batch adds must not move it, and it is not the [CLS] vector older folders were fitted on."""
    from supportflow.classifier.predict import IntentClassifier, predict_outputs

    classifier = IntentClassifier(tiny.built.folder, threads=1)
    assert classifier.card.embedding_pooling == "mean"
    short, long = min(tiny.in_scope, key=len), max(tiny.in_scope, key=len)

    def embedding(texts: list[str], pooling: str = "mean") -> np.ndarray:
        return predict_outputs(classifier.model, classifier.tokenizer, texts, classifier.card.max_length, pooling=pooling).embeddings

    alone, padded = embedding([short])[0], embedding([short, long])[0]
    np.testing.assert_allclose(padded, alone, rtol=1e-4, atol=1e-5)
    assert not np.allclose(embedding([short], "cls")[0], alone, atol=1e-3)


def test_a_folder_fitted_on_cls_embeddings_is_still_served_by_them(tiny: Tiny, tmp_path: Path) -> None:
    """A card written before the pooling was recorded says nothing of it: its detector and prototypes were fitted on
    [CLS] vectors, so torch pools those and its ONNX export (made again here) gives those. Such a folder is older
    than the pretrained encoder's neighbours, prototypes and sentence neighbours too: it has none of them."""
    import dataclasses
    import json
    import shutil

    from supportflow.classifier.artifacts import CLASSIFIER_CARD, SENTENCE_ENCODER_DIR, ClassifierCard
    from supportflow.classifier.inference import OnnxClassifier
    from supportflow.classifier.neighbours import SENTENCE_NEIGHBOURS_FILE
    from supportflow.classifier.onnx_export import export_onnx
    from supportflow.classifier.predict import IntentClassifier, predict_outputs
    from supportflow.classifier.prototypes import SENTENCE_PROTOTYPES_FILE

    old = tmp_path / "old"
    newer = shutil.ignore_patterns(SENTENCE_ENCODER_DIR, SENTENCE_PROTOTYPES_FILE, SENTENCE_NEIGHBOURS_FILE)
    shutil.copytree(tiny.built.folder, old, ignore=newer)
    fitted = OutOfScopeDetector.load(old)
    assert fitted is not None
    dataclasses.replace(fitted, neighbours=None).save(old)
    card = json.loads((old / CLASSIFIER_CARD).read_text())
    del card["embedding_pooling"], card["sentence_prototype_weight"], card["sentence_neighbour_weight"]
    (old / CLASSIFIER_CARD).write_text(json.dumps(card))
    assert ClassifierCard.load(old).embedding_pooling == "cls"
    export_onnx(old)
    texts = tiny.in_scope[:10] + tiny.unknown[:10]
    torch_classifier = IntentClassifier(old, threads=1)
    cls = torch_classifier.outputs(texts).embeddings  # the card says "cls"
    detector = OutOfScopeDetector.load(old)
    assert detector is not None
    onnx_results = OnnxClassifier(old, "fp32", threads=1).classify(texts)
    torch_results = torch_classifier.classify(texts)
    expected = detector.scores(cls)
    model, tokenizer, max_length = torch_classifier.model, torch_classifier.tokenizer, torch_classifier.card.max_length
    mean = predict_outputs(model, tokenizer, texts, max_length, pooling="mean").embeddings
    assert np.median(np.abs(detector.scores(mean) / expected - 1)) > 0.05  # so the tolerance below tells them apart
    for ours, theirs, distance in zip(onnx_results, torch_results, expected, strict=True):
        assert ours["ood_score"] == pytest.approx(distance, rel=1e-2)  # fp32 ONNX against torch, whitened
        assert theirs["ood_score"] == pytest.approx(distance, rel=1e-5)


def test_a_card_naming_an_unknown_pooling_is_refused(tiny: Tiny, tmp_path: Path) -> None:
    import json
    import shutil

    from supportflow.classifier.artifacts import CLASSIFIER_CARD, ClassifierCard
    from supportflow.errors import RegistryError

    later = tmp_path / "later"
    shutil.copytree(tiny.built.folder, later)
    card = json.loads((later / CLASSIFIER_CARD).read_text()) | {"embedding_pooling": "max"}
    (later / CLASSIFIER_CARD).write_text(json.dumps(card))
    with pytest.raises(RegistryError, match="'max'"):
        ClassifierCard.load(later)
