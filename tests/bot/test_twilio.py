from twilio.request_validator import RequestValidator

from supportflow.bot.twilio_channel import is_signed_by_twilio, parse, twiml

TOKEN = "12345678901234567890123456789012"
URL = "https://bot.example.com/twilio"


def sign(form: dict[str, str]) -> str:
    return RequestValidator(TOKEN).compute_signature(URL, form)


def test_a_signed_request_is_accepted_and_a_tampered_one_rejected() -> None:
    form = {"From": "whatsapp:+15551234567", "Body": "my card has not arrived", "NumMedia": "0", "MessageSid": "SM1"}
    signature = sign(form)
    assert is_signed_by_twilio(TOKEN, URL, form, signature)
    assert not is_signed_by_twilio(TOKEN, URL, {**form, "Body": "send me money"}, signature)
    assert not is_signed_by_twilio(TOKEN, URL, form, None)


def test_whatsapp_and_sms_messages_are_told_apart() -> None:
    whatsapp = parse({"From": "whatsapp:+15551234567", "Body": " hi ", "NumMedia": "0"})
    sms = parse({"From": "+15557654321", "Body": "", "NumMedia": "1"})
    assert (whatsapp.channel, whatsapp.conversation_id, whatsapp.text) == ("whatsapp", "whatsapp:+15551234567", "hi")
    assert (sms.channel, sms.text, sms.media_count) == ("sms", "", 1)


def test_replies_are_twiml() -> None:
    assert (
        twiml(["one", "two & three"])
        == '<?xml version="1.0" encoding="UTF-8"?><Response><Message>one</Message><Message>two &amp; three</Message></Response>'
    )
