"""The detector's vocabulary check: a message written mostly in words the desk's training messages never use is out
of scope, in whatever language the desk works. No model: the check reads texts only.
"""

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from supportflow.classifier.ood import DETECTOR_FILE, VERSION, OutOfScopeDetector, fit_detector, fit_vocabulary, words
from supportflow.errors import RegistryError
from tests.classifier.conftest import BANKING77, ROOT, TINY_INTENTS

MULTILINGUAL = ROOT / "bench" / "data" / "multilingual.csv"

# A small French desk: its training messages and, held apart, its validation messages.
FRENCH_TRAIN = [
    "Ma carte n'est pas encore arrivée",
    "Quand vais-je recevoir ma nouvelle carte ?",
    "J'ai perdu ma carte, pouvez-vous la bloquer ?",
    "On m'a volé ma carte bancaire hier",
    "Mon virement est toujours en attente",
    "Pourquoi mon virement n'est-il pas encore arrivé sur le compte ?",
    "Quel est le taux de change pour les dollars ?",
    "Le taux de change appliqué à mon paiement est faux",
    "Comment changer le code de ma carte ?",
    "Je voudrais modifier mon code secret",
    "Mon paiement par carte a été refusé",
    "Pourquoi ma carte est-elle refusée au magasin ?",
]
FRENCH_VALIDATION = [
    "Ma nouvelle carte n'est toujours pas arrivée",
    "Je n'ai pas encore reçu ma carte",
    "Mon virement est bloqué depuis hier",
    "Quel taux de change pour un paiement en dollars ?",
    "J'ai perdu ma carte bancaire",
]


def banking77_rows(intents: list[str]) -> pd.DataFrame:
    rows = pd.read_csv(BANKING77 / "train.csv")
    return rows[rows["category"].isin(intents)].sample(frac=1.0, random_state=0)


def test_words_are_letter_runs_in_spaced_scripts_and_single_characters_in_unspaced_ones() -> None:
    assert words("Ma CARTE n'est pas arrivée, commande 12345 !") == ["ma", "carte", "n", "est", "pas", "arrivée", "commande"]
    assert words("Ｃａｒｄ") == ["card"]  # full-width letters are the same word
    assert words("मेरा कार्ड अभी तक नहीं आया") == ["मेरा", "कार्ड", "अभी", "तक", "नहीं", "आया"]  # vowel signs stay in their word
    assert words("بطاقتي لم تصل") == ["بطاقتي", "لم", "تصل"]
    assert words("我的卡丢了") == ["我", "的", "卡", "丢", "了"]
    assert words("ATMでお金") == ["atm", "で", "お", "金"]
    assert words("🙂🙂 ?! 42") == []


def test_the_threshold_is_the_validation_quantile_of_the_unfamiliar_share() -> None:
    train = ["my card has not arrived", "where is my card"]
    validation = ["my card", "my new card", "my brand new card", "card"]  # unfamiliar shares 0, 1/3, 2/4, 0
    vocabulary = fit_vocabulary(train, validation, quantile=0.5)
    assert vocabulary.vocabulary == frozenset({"my", "card", "has", "not", "arrived", "where", "is"})
    assert vocabulary.threshold == pytest.approx(np.quantile([0.0, 1 / 3, 0.5, 0.0], 0.5))
    assert vocabulary.unfamiliar(["my card", "my lovely new card", "où est ma carte", "🙂"]).tolist() == [0.0, 0.5, 1.0, 0.0]


def test_an_english_desk_flags_foreign_questions_about_its_own_topics_and_not_its_new_english_ones() -> None:
    rows = banking77_rows(TINY_INTENTS)
    train, validation, held_out = rows.iloc[:600], rows.iloc[600:700], rows.iloc[700:900]
    vocabulary = fit_vocabulary(train["text"].tolist(), validation["text"].tolist(), quantile=0.99)
    english = vocabulary.unfamiliar(held_out["text"].tolist()) > vocabulary.threshold
    foreign = pd.read_csv(MULTILINGUAL)
    flagged = vocabulary.unfamiliar(foreign["text"].tolist()) > vocabulary.threshold
    assert english.mean() <= 0.05  # new phrasings of the desk's own questions: about 1% by construction
    assert flagged.mean() >= 0.9
    for language, chosen in foreign.groupby("language").groups.items():
        assert flagged[chosen].mean() >= 0.75, f"{language}: {foreign.loc[chosen[~flagged[chosen]], 'text'].tolist()}"


def test_a_french_desk_keeps_french_in_scope_and_flags_english() -> None:
    vocabulary = fit_vocabulary(FRENCH_TRAIN, FRENCH_VALIDATION, quantile=0.9)
    french = ["Ma carte est perdue, pouvez-vous la bloquer ?", "Mon virement n'est pas arrivé"]
    english = banking77_rows(["card_arrival", "lost_or_stolen_card", "exchange_rate"])["text"].head(30).tolist()
    assert not (vocabulary.unfamiliar(french) > vocabulary.threshold).any()
    assert (vocabulary.unfamiliar(english) > vocabulary.threshold).mean() >= 0.9


def tiny_detector(vocabulary: bool) -> OutOfScopeDetector:
    rng = np.random.default_rng(0)
    labels = np.repeat([0, 1], 20)
    train = np.array([[0.0, 0.0], [10.0, 10.0]])[labels] + rng.normal(size=(40, 2))
    validation = np.array([[0.0, 0.0], [10.0, 10.0]])[np.repeat([0, 1], 10)] + rng.normal(size=(20, 2))
    check = fit_vocabulary(FRENCH_TRAIN, FRENCH_VALIDATION, quantile=0.9) if vocabulary else None
    return fit_detector(train, labels, validation, quantile=0.9, vocabulary=check)


def test_a_message_is_out_of_scope_when_far_from_every_intent_or_in_unfamiliar_words() -> None:
    detector = tiny_detector(vocabulary=True)
    texts = ["Ma carte n'est pas arrivée", "Ma carte n'est pas arrivée", "Where is my card?", "Where is my card?"]
    distances = detector.scores(np.array([[0.0, 0.0], [40.0, -40.0], [10.0, 10.0], [40.0, -40.0]]))
    assert detector.out_of_scope(texts, distances).tolist() == [False, True, True, True]
    assert tiny_detector(vocabulary=False).out_of_scope(texts, distances).tolist() == [False, True, False, True]


def test_the_vocabulary_is_stored_with_the_detector_and_read_back(tmp_path: Path) -> None:
    detector = tiny_detector(vocabulary=True)
    detector.save(tmp_path)
    loaded = OutOfScopeDetector.load(tmp_path)
    assert loaded is not None and loaded.vocabulary is not None and detector.vocabulary is not None
    assert loaded.vocabulary.vocabulary == detector.vocabulary.vocabulary and "arrivée" in loaded.vocabulary.vocabulary
    assert loaded.vocabulary.threshold == detector.vocabulary.threshold
    with np.load(tmp_path / DETECTOR_FILE) as stored:  # readable without pickle, which np.load refuses by default
        assert int(stored["version"]) == VERSION and stored["vocabulary"].dtype.kind == "U"


def test_a_detector_stored_before_the_vocabulary_check_loads_and_flags_by_distance_alone(tmp_path: Path) -> None:
    detector = tiny_detector(vocabulary=False)
    # Version 1's layout, as models registered before the check hold it: no version, no vocabulary.
    np.savez(
        tmp_path / DETECTOR_FILE,
        centres=detector.centres,
        whitening=detector.whitening,
        threshold=detector.threshold,
        quantile=detector.quantile,
        method="mahalanobis",
    )
    loaded = OutOfScopeDetector.load(tmp_path)
    assert loaded is not None and loaded.vocabulary is None and loaded.threshold == detector.threshold
    near = loaded.scores(np.array([[0.0, 0.0]]))
    assert loaded.out_of_scope(["Où est ma carte ? Je l'attends depuis des semaines"], near).tolist() == [False]


def test_a_detector_from_a_newer_supportflow_is_refused_with_its_version(tmp_path: Path) -> None:
    detector = tiny_detector(vocabulary=False)
    np.savez(tmp_path / DETECTOR_FILE, centres=detector.centres, whitening=detector.whitening, threshold=1.0, quantile=0.9,
             method="mahalanobis", version=VERSION + 1)  # fmt: skip
    with pytest.raises(RegistryError, match=f"version {VERSION + 1} detector"):
        OutOfScopeDetector.load(tmp_path)


@pytest.mark.parametrize(
    ("train", "validation", "quantile", "reason"),
    [
        (FRENCH_TRAIN, FRENCH_VALIDATION, 1.0, "strictly between 0 and 1"),
        (FRENCH_TRAIN, [], 0.9, "needs validation messages"),
        (["🙂", "42", "?!"], FRENCH_VALIDATION, 0.9, "hold no words"),
    ],
)
def test_a_vocabulary_that_cannot_be_fitted_is_refused_with_the_reason(
    train: list[str], validation: list[str], quantile: float, reason: str
) -> None:
    with pytest.raises(ValueError, match=reason):
        fit_vocabulary(train, validation, quantile)
