import pytest

from supportflow.redact import Redactor


@pytest.mark.parametrize(
    ("text", "expected", "kind"),
    [
        ("write to jane.doe+bank@example.co.uk today", "write to <EMAIL> today", "email"),
        ("my card 4111 1111 1111 1111 was declined", "my card <CARD> was declined", "card"),
        ("card 4111-1111-1111-1111 blocked", "card <CARD> blocked", "card"),
        ("pay to DE89 3704 0044 0532 0130 00 please", "pay to <IBAN> please", "iban"),
        ("IBAN GB82WEST12345698765432", "IBAN <IBAN>", "iban"),
        ("call me on +44 20 7946 0958", "call me on <PHONE>", "phone"),
        ("ring 555-123-4567 after 5", "ring <PHONE> after 5", "phone"),
    ],
)
def test_each_kind_of_pii_gets_its_typed_placeholder(text: str, expected: str, kind: str) -> None:
    redactor = Redactor()
    assert redactor.redact(text) == expected
    assert redactor.counts == {kind: 1}


@pytest.mark.parametrize(
    "text",
    [
        "I paid 100 dollars on 12/03 at 3pm",
        "my order 1234567890123456789 never came",  # too long for a card, fails the Luhn check
        "top up of 20 pounds 2 days ago",
        "what is the exchange rate for 1000 EUR?",
    ],
)
def test_ordinary_numbers_are_left_alone(text: str) -> None:
    redactor = Redactor()
    assert redactor.redact(text) == text
    assert not redactor.counts


def test_a_column_is_redacted_and_counted_in_one_pass() -> None:
    redactor = Redactor()
    texts = ["a@b.io and c@d.io", None, "", "nothing", "card 4111111111111111"]
    assert redactor.redact_all(texts) == ["<EMAIL> and <EMAIL>", None, "", "nothing", "card <CARD>"]
    assert redactor.counts == {"email": 2, "card": 1}
