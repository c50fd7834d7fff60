"""The agent console's API and customers' ratings (issue 15, items 1 and 3), on the bot service in this process.

Rasa is not running (tests/bot/test_security.py's set-up), so every first message is handed off: the queue fills
without a dialogue model. The browser half is in tests/bot/test_stack.py, against the real stack.
"""

from pathlib import Path

from supportflow.bot.engine import AnswerRequest
from supportflow.bot.feedback import read_ratings
from supportflow.bot.turns import read_turns
from supportflow.lake import open_lake
from tests.bot import test_security
from tests.bot.test_security import PHONE, ServedBot

served = test_security.served  # the fixture: the bot in this process, Rasa down, two registered agents


def only_handoff(served: ServedBot) -> dict:
    (handoff,) = served.client.get("/agent/handoffs", headers=served.as_agent("ann")).json()["handoffs"]
    return handoff


def act(served: ServedBot, agent: str, handoff_id: int, action: str, **body: str | int) -> object:
    return served.client.post(f"/agent/handoffs/{handoff_id}/{action}", json=body, headers=served.as_agent(agent))


def test_the_console_page_is_served_and_holds_nothing_before_login(served: ServedBot) -> None:
    served.twilio(PHONE, "my card was stolen")
    page = served.client.get("/console")
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    assert 'id="login-form"' in page.text and "Authorization" in page.text and "sessionStorage" in page.text
    assert "my card was stolen" not in page.text  # the queue comes only through the agent API, with a token


def test_an_agent_works_a_handoff_and_every_action_is_recorded_under_their_name(served: ServedBot) -> None:
    assert served.client.get("/agent/me", headers=served.as_agent("bo")).json() == {"agent": "bo"}
    catalogue = served.client.get("/agent/catalogue", headers=served.as_agent("ann")).json()["intents"]
    assert "card_arrival" in catalogue and "nlu_fallback" not in catalogue
    served.twilio(PHONE, "my card was stolen")
    handoff = only_handoff(served)
    assert (handoff["status"], handoff["channel"], handoff["events"]) == ("waiting", "sms", [])
    act(served, "ann", handoff["id"], "claim")
    reply = act(served, "ann", handoff["id"], "answer", text="We blocked it.").json()["transcript"][-1]
    wrong = act(served, "ann", handoff["id"], "resolve", intent="lost_or_stolen_card", message_id=reply["id"])
    assert wrong.status_code == 409 and "is not one of the customer's messages" in wrong.json()["detail"]
    resolved = act(served, "ann", handoff["id"], "resolve", intent="lost_or_stolen_card").json()
    assert [(e["action"], e["agent"], e["intent"]) for e in resolved["events"]] == [
        ("claim", "ann", None),
        ("answer", "ann", None),
        ("resolve", "ann", "lost_or_stolen_card"),
    ]
    (label,) = [path for path in open_lake(served.settings).files("tickets") if "agent_label-" in path]
    ticket = open_lake(served.settings).read_parquet(label)
    assert (ticket["text"].iloc[0], ticket["intent"].iloc[0]) == ("my card was stolen", "lost_or_stolen_card")


def test_the_models_top_catalogue_intents_are_kept_with_the_handoff(served: ServedBot) -> None:
    stored = served.instance.keys.stored_id("web-suggested")
    ranking = [
        {"intent": "nlu_fallback", "confidence": 0.5},
        {"intent": "card_arrival", "confidence": 0.3},
        {"intent": "greet", "confidence": 0.1},
        {"intent": "card_linking", "confidence": 0.06},
        {"intent": "exchange_rate", "confidence": 0.03},
        {"intent": "top_up_failed", "confidence": 0.01},
    ]
    request = AnswerRequest(kind="handoff", conversation_id=stored, text="where's my card", intent="nlu_fallback", ranking=ranking)
    assert served.instance.bot.answer(request).route == "handoff"
    handoff = only_handoff(served)
    assert handoff["reason"] == "not understood with confidence"
    assert handoff["suggestions"] == [  # Rasa's fallback and dialogue acts are no label for a ticket
        {"intent": "card_arrival", "confidence": 0.3},
        {"intent": "card_linking", "confidence": 0.06},
        {"intent": "exchange_rate", "confidence": 0.03},
    ]


def test_an_agent_replying_to_a_conversation_another_agent_holds_is_refused_with_409(served: ServedBot) -> None:
    served.twilio(PHONE, "my card was stolen")
    handoff = only_handoff(served)
    act(served, "ann", handoff["id"], "claim")
    for action, body in (
        ("answer", {"text": "Bo here, pretending"}),
        ("claim", {}),
        ("give_back", {}),
        ("resolve", {"intent": "card_arrival"}),
    ):
        refused = act(served, "bo", handoff["id"], action, **body)
        assert refused.status_code == 409, (action, refused.text)
    after = only_handoff(served)
    assert (after["status"], after["agent"]) == ("claimed", "ann")
    assert [m["role"] for m in after["transcript"]] == ["customer"] and [e["agent"] for e in after["events"]] == ["ann"]


def test_wrong_or_missing_credentials_get_401_with_no_transcript(served: ServedBot) -> None:
    served.twilio(PHONE, "my card was stolen")
    handoff_id = only_handoff(served)["id"]
    strangers = ({}, {"Authorization": "Bearer not-a-token"}, {"Authorization": f"Basic {served.tokens['ann']}"})
    for headers in strangers:
        for method, path, body in (
            ("GET", "/agent/me", None),
            ("GET", "/agent/catalogue", None),
            ("GET", "/agent/handoffs?status=waiting", None),
            ("POST", f"/agent/handoffs/{handoff_id}/claim", {}),
            ("POST", f"/agent/handoffs/{handoff_id}/answer", {"text": "hello"}),
            ("POST", f"/agent/handoffs/{handoff_id}/give_back", {}),
        ):
            response = served.client.request(method, path, json=body, headers=headers)
            assert response.status_code == 401, (headers, path)
            assert "stolen" not in response.text and "transcript" not in response.text
    assert (only_handoff(served)["status"], only_handoff(served)["events"]) == ("waiting", [])


def test_a_conversation_given_back_is_the_bots_again(served: ServedBot) -> None:
    served.twilio(PHONE, "my card was stolen")
    handoff = only_handoff(served)
    act(served, "ann", handoff["id"], "claim")
    assert act(served, "bo", handoff["id"], "give_back").status_code == 409  # ann holds it
    returned = act(served, "ann", handoff["id"], "give_back").json()
    assert (returned["status"], returned["events"][-1]["action"], returned["events"][-1]["agent"]) == ("returned", "give_back", "ann")
    assert served.client.get("/agent/handoffs?status=waiting", headers=served.as_agent("ann")).json()["handoffs"] == []
    assert act(served, "ann", handoff["id"], "answer", text="too late").status_code == 409
    assert served.instance.bot.handoffs.open_for(handoff["conversation_id"]) is None  # the next message goes to the bot


def test_a_customer_rates_a_turn_of_their_own_conversation(served: ServedBot) -> None:
    first = served.client.post("/chat", json={"message": "where is my card"}).json()
    conversation, token, turn_id = first["conversation_id"], first["conversation_token"], first["turn_id"]
    rated = served.client.post(
        f"/chat/{conversation}/feedback", json={"turn_id": turn_id, "helpful": False}, headers={"X-Conversation-Token": token}
    )
    assert rated.status_code == 200, rated.text
    (rating,) = read_ratings(open_lake(served.settings)).to_dict("records")
    assert (rating["turn_id"], rating["helpful"], rating["channel"]) == (turn_id, False, "webchat")
    served.instance.bot.turns.flush()
    turns = read_turns(open_lake(served.settings))  # the rating names the turn the turn log holds
    assert turn_id in set(turns["turn_id"]) and rating["conversation_id"] in set(turns["conversation_id"])


def test_a_rating_for_a_turn_that_does_not_exist_is_404_and_a_strangers_is_403(served: ServedBot) -> None:
    mine = served.client.post("/chat", json={"message": "where is my card"}).json()
    theirs = served.client.post("/chat", json={"message": "what is the exchange rate"}).json()
    url, own_token = f"/chat/{mine['conversation_id']}/feedback", {"X-Conversation-Token": mine["conversation_token"]}
    for made_up in ("0" * 32, "not-a-turn", theirs["turn_id"], mine["turn_id"][:16] + "f" * 16):
        missing = served.client.post(url, json={"turn_id": made_up, "helpful": True}, headers=own_token)
        assert missing.status_code == 404 and "no turn" in missing.json()["detail"], made_up
    for stranger in ({}, {"X-Conversation-Token": theirs["conversation_token"]}):
        refused = served.client.post(url, json={"turn_id": mine["turn_id"], "helpful": False}, headers=stranger)
        assert refused.status_code == 403
    assert read_ratings(open_lake(served.settings)).empty  # nothing the strangers or the made-up ids sent was kept


def test_talk_to_a_person_after_an_unhelpful_answer_starts_a_handoff(served: ServedBot) -> None:
    first = served.client.post("/chat", json={"message": "where is my card"}).json()  # Rasa is down: handed off
    conversation, token = first["conversation_id"], {"X-Conversation-Token": first["conversation_token"]}
    handoff = only_handoff(served)
    act(served, "ann", handoff["id"], "give_back")
    assert served.client.post(f"/chat/{conversation}/handoff").status_code == 403
    asked = served.client.post(f"/chat/{conversation}/handoff", headers=token)
    assert asked.status_code == 200 and asked.json()["route"] == "handoff"
    (again,) = served.client.get("/agent/handoffs?status=waiting", headers=served.as_agent("ann")).json()["handoffs"]
    assert again["id"] != handoff["id"] and again["reason"] == "asked for a person after an unhelpful answer"
    assert again["transcript"][0] == {**again["transcript"][0], "role": "customer", "text": "where is my card"}
    assert again["question_id"] == again["transcript"][0]["id"]  # what the answer did not help with: a label goes on it
    twice = served.client.post(f"/chat/{conversation}/handoff", headers=token).json()
    assert len(served.client.get("/agent/handoffs?status=waiting", headers=served.as_agent("ann")).json()["handoffs"]) == 1
    assert twice["replies"] != asked.json()["replies"]  # already with a person: told so, not queued twice


def test_the_demo_agent_is_created_once_and_its_token_kept_for_the_demo_to_print_again(tmp_path: Path) -> None:
    import stat

    from supportflow.bot.agents import DEMO_TOKEN_FILE, Agents, demo_agent_token

    agents, run_dir = Agents(f"sqlite:///{tmp_path / 'handoff.db'}"), tmp_path / "run"
    token = demo_agent_token(agents, run_dir)
    assert token and agents.identify(token, open_when_none=False) == "demo"
    assert stat.S_IMODE((run_dir / DEMO_TOKEN_FILE).stat().st_mode) == 0o600  # a credential: its owner's alone
    assert demo_agent_token(agents, run_dir) == token and [a.name for a in agents.registered()] == ["demo"]
    (run_dir / DEMO_TOKEN_FILE).unlink()
    assert demo_agent_token(agents, run_dir) is None  # shown once and not kept: the demo says how to mint a new one
