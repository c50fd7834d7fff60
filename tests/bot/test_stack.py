"""The served bot end to end: a real classifier service (a tiny champion from MLflow), a real Rasa model,
trained and served, its action server, the bot service, and the demo knowledge base.

One desk is trained for the module and served twice: as one stack, which most tests talk to over HTTP, then as two
bot replicas, two Rasa servers and their action servers behind HAProxy round-robin, on shared stores (PostgreSQL for
the handoff queue and Rasa's trackers, Redis for Rasa's locks, one lake): conversations with slots cross replicas and
stay coherent, and after `kill -9` of one bot and one Rasa every conversation goes on with its slots on the
survivors, while the turn log and the handoff queue hold every turn that got a reply. Slow: training the desk once
costs as much as starting either stack, so both share it.
"""

import ast
import os
import re
import shutil
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

import httpx
import pandas as pd
import pytest
from twilio.request_validator import RequestValidator

from supportflow.processes import descendants, gone
from tests.bot.conftest import TWILIO_TOKEN, PreparedDesk, prepared_desk, surest_example
from tests.servers import Postgres

ROOT = Path(__file__).resolve().parents[2]


def request_splitter() -> re.Pattern[str]:
    """Where the dialogue's classifier component splits a message into requests: its own `SPLIT`, read from its
    source, since the module imports Rasa, which lives in the Rasa venv only."""
    source = ROOT / "supportflow" / "dialogue" / "rasa_files" / "supportflow_classifier.py"
    for node in ast.parse(source.read_text()).body:
        if isinstance(node, ast.Assign) and [getattr(target, "id", None) for target in node.targets] == ["SPLIT"]:
            assert isinstance(node.value, ast.Call) and isinstance(node.value.args[0], ast.Constant)
            return re.compile(node.value.args[0].value, re.I)
    raise AssertionError(f"{source} defines no SPLIT")


TWO_REQUESTS = request_splitter()

pytestmark = pytest.mark.slow
CARD_QUESTION = "Is this about your physical card or a virtual card?"  # the demo desk's form asks it for change_pin


def chat(bot_url: str, conversations: dict[str, tuple[str, str]], conversation: str, message: str) -> httpx.Response:
    """A message in the conversation a test calls `conversation`: its first starts it, and the bot names it (its id and
    token are kept in `conversations`)."""
    if conversation in conversations:
        known, token = conversations[conversation]
        body, headers = {"conversation_id": known, "message": message}, {"X-Conversation-Token": token}
    else:
        body, headers = {"message": message}, {}
    response = httpx.post(f"{bot_url}/chat", json=body, headers=headers, timeout=60)
    if "conversation_token" in response.json():
        conversations[conversation] = (response.json()["conversation_id"], response.json()["conversation_token"])
    return response


@dataclass
class Served:
    stack: object
    settings: object
    rows: pd.DataFrame
    folder: Path
    conversations: dict[str, tuple[str, str]] = field(default_factory=dict)  # a test's name for it -> the bot's id, token

    def chat(self, conversation: str, message: str) -> httpx.Response:
        return chat(self.stack.bot_url, self.conversations, conversation, message)

    def token(self, conversation: str) -> dict[str, str]:
        return {"X-Conversation-Token": self.conversations[conversation][1]}

    def metrics(self, url: str) -> str:
        """/metrics, with the internal token the stack made for itself."""
        return httpx.get(f"{url}/metrics", headers={"Authorization": f"Bearer {self.stack.internal_token}"}, timeout=10).text

    def example(self, intent: str, one_request: bool = False, ending: str = "") -> str:
        """With `one_request`, among the examples the dialogue's classifier reads as a single request (no "and",
        "also", ";" or a question followed by more), so text added to it cannot make it two requests. An `ending`
        is added before the choice: the tiny classifier can be sure of an example and unsure of it with more words."""
        texts = self.rows.loc[self.rows["category"] == intent, "text"].tolist()
        if one_request:
            texts = [text for text in texts if not TWO_REQUESTS.search(text)]
        if ending:
            texts = [f"{text.rstrip('?.! ')}{ending}" for text in texts]
        return surest_example(self.stack.classifier_url, texts, intent)


@pytest.fixture(scope="module")
def desk(tmp_path_factory: pytest.TempPathFactory, tiny_base: Path, prefect_harness: None) -> Iterator[tuple[PreparedDesk, Path]]:
    folder = tmp_path_factory.mktemp("stack")
    with prepared_desk(folder, tiny_base) as prepared:
        yield prepared, folder


@pytest.fixture(scope="module")
def served(desk: tuple[PreparedDesk, Path]) -> Iterator[Served]:
    from supportflow.processes import free_port
    from supportflow.release.stack import Ports, start_stack

    prepared, folder = desk
    ports = Ports(bot=free_port(), classifier=free_port(), rasa=free_port(), actions=free_port())
    stack = start_stack(prepared.settings, prepared.rasa_project, prepared.rasa_model, folder / "logs", ports)
    try:
        yield Served(stack, prepared.settings, prepared.rows, folder)
    finally:
        stack.stop()


def test_classify_answers_the_contract_with_calibrated_confidence(served: Served) -> None:
    texts = [served.example("card_arrival"), served.example("exchange_rate")]
    response = httpx.post(f"{served.stack.classifier_url}/classify", json={"texts": texts}, timeout=30)
    assert response.status_code == 200
    results = response.json()
    assert [r["intent"] for r in results] == ["card_arrival", "exchange_rate"]
    for result in results:
        assert 0 < result["confidence"] <= 1 and result["ranking"][0]["intent"] == result["intent"]
        assert sum(r["confidence"] for r in result["ranking"]) == pytest.approx(1.0, abs=1e-4)


def test_a_question_is_answered_from_the_knowledge_base_through_rasa(served: Served) -> None:
    response = served.chat("it-answer", served.example("card_arrival"))
    body = response.json()
    assert response.status_code == 200, body
    assert (body["route"], body["intent"]) == ("kb", "card_arrival")
    text = "\n".join(body["replies"])  # Rasa's REST channel sends each paragraph as its own message
    assert "delivered" in text and "More: https://help.example.com/articles/card-arrival" in text


def test_two_requests_in_one_message_get_a_clarifying_question(served: Served) -> None:
    # each a single request, so the message splits into exactly these two, each one the tiny classifier is sure of
    first, second = served.example("change_pin", one_request=True).rstrip("?.! "), served.example("exchange_rate", one_request=True)
    body = served.chat("it-clarify", f"{first} and also {second}").json()
    assert body["route"] == "clarify", body
    assert "Which should we start with" in body["replies"][0] and "(1) How do I change my PIN" in body["replies"][0]  # its title


def test_a_request_that_needs_a_slot_is_asked_for_it_by_the_desks_form_then_answered(served: Served) -> None:
    asked = served.chat("it-form", served.example("change_pin")).json()
    assert (asked["route"], asked["replies"]) == ("dialogue", [CARD_QUESTION]), asked
    answered = served.chat("it-form", "the virtual one").json()
    assert (answered["route"], answered["intent"]) == ("kb", "change_pin"), answered
    assert "PIN" in "\n".join(answered["replies"])
    named = served.chat("it-form-named", served.example("change_pin", one_request=True, ending=" for my plastic card")).json()
    assert (named["route"], named["intent"]) == ("kb", "change_pin"), named  # the card was named: nothing to ask


def test_asking_for_a_person_hands_off_and_the_agent_answer_reaches_the_customer(served: Served) -> None:
    from supportflow.bot.agents import Agents
    from supportflow.keys import conversation_keys

    bot = served.stack.bot_url
    agents = Agents(served.settings.handoff_db_url)  # registered while the bot runs: from now on the API asks for tokens
    ann, bo = ({"Authorization": f"Bearer {agents.add(name)}"} for name in ("ann", "bo"))
    body = served.chat("it-handoff", "I want to talk to a human").json()
    assert body["route"] == "handoff" and "colleague" in body["replies"][0]
    assert httpx.get(f"{bot}/agent/handoffs", timeout=10).status_code == 401
    waiting = httpx.get(f"{bot}/agent/handoffs", params={"status": "waiting"}, headers=ann, timeout=10).json()["handoffs"]
    stored = conversation_keys(served.settings).stored_id(served.conversations["it-handoff"][0])
    handoff = next(h for h in waiting if h["conversation_id"] == stored)
    first = handoff["transcript"][0]
    assert first == {"id": first["id"], "role": "customer", "text": "I want to talk to a human", "at": first["at"]}
    assert httpx.post(f"{bot}/agent/handoffs/{handoff['id']}/claim", json={}, headers=ann, timeout=10).json()["agent"] == "ann"
    assert httpx.post(f"{bot}/agent/handoffs/{handoff['id']}/claim", json={}, headers=bo, timeout=10).status_code == 409
    httpx.post(f"{bot}/agent/handoffs/{handoff['id']}/answer", json={"text": "Hi, Ann here. How can I help?"}, headers=ann, timeout=10)
    replies = f"{bot}/chat/{served.conversations['it-handoff'][0]}/replies"
    assert httpx.get(replies, timeout=10).status_code == 403  # no token, no replies: and they stay undelivered
    assert httpx.get(replies, headers=served.token("it-handoff"), timeout=10).json()["replies"] == ["Hi, Ann here. How can I help?"]
    assert served.chat("it-handoff", "please close my account").json()["route"] == "handoff"  # with Ann: not the bot's
    resolved = httpx.post(f"{bot}/agent/handoffs/{handoff['id']}/resolve", json={"intent": "terminate_account"}, headers=ann, timeout=10)
    assert resolved.json()["status"] == "resolved"
    assert resolved.json()["transcript"][-2]["delivery"] == "delivered"  # the webchat took the reply
    question = next(m for m in resolved.json()["transcript"] if m["id"] == resolved.json()["question_id"])
    assert question["text"] == "please close my account"  # what the customer needed, not "I want to talk to a human"
    assert httpx.get(f"{bot}/chat/never-seen/replies", timeout=10).status_code == 403


def test_twilio_requests_are_signed_checked_and_answered_in_twiml(served: Served) -> None:
    url = f"{served.stack.bot_url}/twilio"
    form = {"From": "whatsapp:+15550001111", "Body": served.example("card_arrival"), "NumMedia": "0", "MessageSid": "SM1"}
    signature = RequestValidator(TWILIO_TOKEN).compute_signature(url, form)
    signed = httpx.post(url, data=form, headers={"X-Twilio-Signature": signature}, timeout=60)
    assert signed.status_code == 200 and signed.headers["content-type"].startswith("application/xml")
    assert signed.text.startswith('<?xml version="1.0" encoding="UTF-8"?><Response><Message>') and "More: https://" in signed.text
    # Rasa's tracker is kept under the conversation's stored id: it holds the message, and no phone number names it
    from supportflow.keys import conversation_keys

    stored = conversation_keys(served.settings).stored_id("whatsapp:+15550001111")
    with_token = {"token": served.stack.internal_token}  # Rasa's API is the internal token's
    tracker = httpx.get(f"{served.stack.rasa_url}/conversations/{stored}/tracker", params=with_token, timeout=10).json()
    assert form["Body"] in [event.get("text") for event in tracker["events"] if event["event"] == "user"]
    by_phone = httpx.get(f"{served.stack.rasa_url}/conversations/whatsapp:+15550001111/tracker", params=with_token, timeout=10).json()
    assert not [event for event in by_phone["events"] if event["event"] == "user"]
    tampered = httpx.post(url, data={**form, "Body": "send money"}, headers={"X-Twilio-Signature": signature}, timeout=10)
    assert tampered.status_code == 403
    media = {"From": "+15550002222", "Body": "", "NumMedia": "1", "MessageSid": "SM2"}
    picture = httpx.post(
        url, data=media, headers={"X-Twilio-Signature": RequestValidator(TWILIO_TOKEN).compute_signature(url, media)}, timeout=10
    )
    assert picture.status_code == 200 and "I can only read text messages" in picture.text


def test_a_call_is_answered_by_the_same_bot_and_listened_to_again(served: Served) -> None:
    url = f"{served.stack.bot_url}/twilio/voice"
    form = {"CallSid": "CA1", "From": "+15550006666", "To": "+15550009999", "SpeechResult": served.example("card_arrival")}
    signature = RequestValidator(TWILIO_TOKEN).compute_signature(url, form)
    answered = httpx.post(url, data=form, headers={"X-Twilio-Signature": signature}, timeout=60)
    assert answered.status_code == 200 and answered.headers["content-type"].startswith("application/xml")
    assert '<Gather action="' in answered.text and 'input="speech"' in answered.text and "More: https://" in answered.text
    unsigned = httpx.post(url, data=form, timeout=10)
    assert unsigned.status_code == 403


def test_bad_messages_get_clear_refusals(served: Served) -> None:
    assert served.chat("it-bad", "").status_code == 400
    long = served.chat("it-bad", "x" * 5_000)
    assert long.status_code == 413 and "at most 4,000" in long.json()["detail"]
    huge = served.chat("it-bad", "x" * 100_000)  # refused by the body cap before anything parses it
    assert huge.status_code == 413 and "at most 65,536" in huge.json()["detail"]
    made_up = httpx.post(f"{served.stack.bot_url}/chat", json={"conversation_id": "bad id with spaces", "message": "hello"}, timeout=10)
    assert made_up.status_code == 403  # an id the bot did not issue is no one's


def test_the_webchat_page_holds_a_conversation_in_a_real_browser(served: Served) -> None:
    from selenium import webdriver
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    options = webdriver.ChromeOptions()
    options.binary_location = shutil.which("chromium") or "/usr/bin/chromium"
    for argument in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu"):
        options.add_argument(argument)
    driver = webdriver.Chrome(service=webdriver.ChromeService(executable_path=shutil.which("chromedriver")), options=options)
    try:
        driver.get(f"{served.stack.bot_url}/")
        assert driver.title == "Support chat"
        for message in ("hello", served.example("card_arrival")):
            before = len(driver.find_elements(By.CSS_SELECTOR, ".msg.bot"))
            driver.find_element(By.ID, "message").send_keys(message)
            driver.find_element(By.ID, "send").click()
            WebDriverWait(driver, 60).until(lambda d, n=before: len(d.find_elements(By.CSS_SELECTOR, ".msg.bot")) > n)
        replies = [element.text for element in driver.find_elements(By.CSS_SELECTOR, ".msg.bot")]
        assert replies[0].startswith("Hello!") and any("More: https://help.example.com/" in reply for reply in replies[1:])
        assert driver.find_elements(By.CSS_SELECTOR, ".msg.customer")[0].text == "hello"
    finally:
        driver.quit()


def chromium() -> object:
    """Headless Debian Chromium through its chromedriver: the browser a customer or an agent would use."""
    from selenium import webdriver

    options = webdriver.ChromeOptions()
    options.binary_location = shutil.which("chromium") or "/usr/bin/chromium"
    for argument in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu"):
        options.add_argument(argument)
    return webdriver.Chrome(service=webdriver.ChromeService(executable_path=shutil.which("chromedriver")), options=options)


def waiting(driver: object, seconds: float) -> object:
    """A wait that tries again when the page redraws an element under it: the console and the webchat re-render on
    every poll, so an element found a moment ago can be gone by the time it is read or clicked."""
    from selenium.common.exceptions import NoSuchElementException, StaleElementReferenceException
    from selenium.webdriver.support.ui import WebDriverWait

    return WebDriverWait(driver, seconds, ignored_exceptions=(NoSuchElementException, StaleElementReferenceException))


def clicked(by: str, value: str) -> object:
    """A wait condition that finds and clicks in one go, so a redraw between the two is retried, not failed."""

    def click(driver: object) -> bool:
        driver.find_element(by, value).click()
        return True

    return click


def test_a_handoff_is_worked_from_the_webchat_to_the_console_and_back_in_real_browsers(served: Served) -> None:
    """A customer finds an answer unhelpful and asks for a person; an agent logs in to the console, claims, replies;
    the customer's page shows the reply without reloading; the agent labels and resolves, and the label is in the lake.
    Two browsers, as two people: a background tab's timers are throttled, and the webchat's poll is one."""
    import json

    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import Select

    from supportflow.bot.agents import Agents
    from supportflow.bot.feedback import read_ratings
    from supportflow.keys import conversation_keys
    from supportflow.lake import open_lake

    bot, question, reply = served.stack.bot_url, served.example("card_arrival"), "Hi, Cleo here: I am checking with the courier."
    token = Agents(served.settings.handoff_db_url).add("cleo")
    customer, agent = chromium(), chromium()
    try:
        customer.get(f"{bot}/")
        customer.find_element(By.ID, "message").send_keys(question)
        customer.find_element(By.ID, "send").click()
        waiting(customer, 60).until(clicked(By.CSS_SELECTOR, ".rating button.unhelpful"))
        waiting(customer, 20).until(clicked(By.CSS_SELECTOR, ".rating button.person"))
        waiting(customer, 20).until(lambda d: "colleague" in d.find_elements(By.CSS_SELECTOR, ".msg.bot")[-1].text)
        conversation = json.loads(customer.execute_script("return sessionStorage.getItem('supportflow-conversation')"))
        stored = conversation_keys(served.settings).stored_id(conversation["id"])

        agent.get(f"{bot}/console")
        agent.find_element(By.ID, "agent-name").send_keys("cleo")
        agent.find_element(By.ID, "agent-token").send_keys(token)
        agent.find_element(By.ID, "login-button").click()
        queue = httpx.get(f"{bot}/agent/handoffs", params={"status": "waiting"}, headers={"Authorization": f"Bearer {token}"}, timeout=10)
        handoff_id = next(h["id"] for h in queue.json()["handoffs"] if h["conversation_id"] == stored)
        waiting(agent, 20).until(clicked(By.ID, f"handoff-{handoff_id}"))
        waiting(agent, 20).until(lambda d: question in d.find_element(By.ID, "transcript").text)
        meta = waiting(agent, 20).until(lambda d: d.find_element(By.ID, "handoff-meta").text)
        assert "asked for a person after an unhelpful answer" in meta
        waiting(agent, 20).until(clicked(By.ID, "claim"))
        waiting(agent, 20).until(lambda d: d.find_element(By.ID, "reply").send_keys(reply) or True)
        waiting(agent, 20).until(clicked(By.ID, "send-reply"))

        waiting(customer, 30).until(lambda d: d.find_elements(By.CSS_SELECTOR, ".msg.bot")[-1].text == reply)
        assert customer.execute_script("return performance.getEntriesByType('navigation').length") == 1  # never reloaded
        # the console says the webchat took the reply (its state in the agent API)
        states = "#transcript .msg.agent .delivery"
        waiting(agent, 30).until(lambda d: [e.text for e in d.find_elements(By.CSS_SELECTOR, states)][-1:] == ["delivered"])

        waiting(agent, 20).until(lambda d: Select(d.find_element(By.ID, "intent")).select_by_value("card_arrival") or True)
        waiting(agent, 20).until(clicked(By.ID, "resolve"))
        assert "is resolved" in waiting(agent, 20).until(lambda d: d.find_element(By.ID, "closed").text)
    finally:
        customer.quit()
        agent.quit()
    lake = open_lake(served.settings)
    labels = pd.concat([lake.read_parquet(path) for path in lake.files("tickets") if "agent_label-" in path])
    assert ((labels["text"] == question) & (labels["intent"] == "card_arrival") & (labels["source"] == "agent_label")).any()
    ratings = read_ratings(lake)
    assert not ratings.loc[ratings["conversation_id"] == stored, "helpful"].any() and (ratings["conversation_id"] == stored).sum() == 1
    resolved = httpx.get(f"{bot}/agent/handoffs", params={"status": "resolved"}, headers={"Authorization": f"Bearer {token}"}, timeout=10)
    handoff = next(h for h in resolved.json()["handoffs"] if h["id"] == handoff_id)
    assert [(e["action"], e["agent"]) for e in handoff["events"]] == [("claim", "cleo"), ("answer", "cleo"), ("resolve", "cleo")]


def metric_samples(served: Served, url: str) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    """Each sample line of a /metrics page, by name and labels: its value (the `# HELP` and `# TYPE` lines name
    every family even before it has a sample, so a name alone proves nothing)."""
    from prometheus_client.parser import text_string_to_metric_families

    text = served.metrics(url)
    return {(s.name, frozenset(s.labels.items())): s.value for f in text_string_to_metric_families(text) for s in f.samples}


def test_metrics_expose_latency_confidence_and_handoffs(served: Served) -> None:
    before = metric_samples(served, served.stack.bot_url)
    assert served.chat("it-metrics-answer", served.example("card_arrival")).json()["route"] == "kb"
    assert served.chat("it-metrics-person", "I want to talk to a human").json()["route"] == "handoff"
    after = metric_samples(served, served.stack.bot_url)

    def grew(name: str, **labels: str) -> float:
        key = (name, frozenset(labels.items()))
        assert key in after, f"no sample {name}{labels} on /metrics"
        return after[key] - before.get(key, 0.0)

    assert grew("supportflow_turn_latency_seconds_count", channel="webchat", route="any") == 2
    assert grew("supportflow_turn_latency_seconds_sum", channel="webchat", route="any") > 0
    assert grew("supportflow_turn_latency_seconds_bucket", channel="webchat", route="any", le="+Inf") == 2
    assert grew("supportflow_intent_confidence_count") >= 1  # the answered turn had an intent and its confidence
    assert grew("supportflow_turns_total", channel="webchat", route="kb") == 1
    assert grew("supportflow_turns_total", channel="webchat", route="handoff") == 1
    assert grew("supportflow_handoffs_total", reason="bot") == 1
    assert httpx.get(f"{served.stack.bot_url}/healthz", timeout=10).status_code == 200


def test_deploy_files_use_only_metrics_the_services_export(served: Served) -> None:
    """Every metric the alert rules and the Grafana dashboard select is on the real bot's or classifier's /metrics
    (after the turns above; a labelled family with no sample yet still has its `# TYPE` line)."""
    from prometheus_client.parser import text_string_to_metric_families

    from supportflow.ops import exported_metric_names, referenced_metric_names

    served.chat("it-metrics", served.example("exchange_rate"))
    exported = set()
    for url in (served.stack.bot_url, served.stack.classifier_url):
        exported |= exported_metric_names(served.metrics(url))
    deploy = ROOT / "deploy"
    used = referenced_metric_names(deploy / "prometheus" / "alerts.yml", deploy / "grafana" / "supportflow-dashboard.json")
    missing = {name: sorted(where) for name, where in used.items() if name not in exported}
    assert not missing, f"deploy/ uses metrics no service exports: {missing}"
    assert {"supportflow_turns_total", "bentoml_service_request_duration_seconds_bucket"} <= set(used)
    # the label values the classifier alerts and panels select on
    families = text_string_to_metric_families(served.metrics(served.stack.classifier_url))
    classify = [s.labels for f in families for s in f.samples if s.name.startswith("bentoml_") and s.labels.get("endpoint") == "/classify"]
    assert classify and all(labels["service_name"] == "supportflow-classifier" for labels in classify)


def test_the_internal_doors_of_the_served_stack_refuse_strangers(served: Served) -> None:
    """The attacker's requests at each internal port of the real stack (tests/bot/test_internal_doors.py has the bot's
    own doors): Rasa's API, the action server, the classifier's metrics and per-request caps."""
    token = served.stack.internal_token
    rasa, actions = served.stack.rasa_url, f"http://127.0.0.1:{served.stack.ports.actions}"
    assert httpx.get(f"{rasa}/status", timeout=10).status_code == 401
    assert httpx.get(f"{rasa}/conversations/it-answer/tracker", timeout=10).status_code == 401  # a customer's conversation
    assert httpx.put(f"{rasa}/model", json={"model_file": "/tmp/attacker.tar.gz"}, timeout=10).status_code == 401
    assert httpx.get(f"{rasa}/status", params={"token": token}, timeout=10).status_code == 200
    # ... and no local user reads the token from Rasa's command line (`ps`): it reaches Rasa through its environment
    import psutil

    (rasa_process,) = [p for p in served.stack.processes if p.name == "rasa"]
    command_lines = [" ".join(p.cmdline()) for p in [psutil.Process(rasa_process.pid), *psutil.Process(rasa_process.pid).children(True)]]
    assert "--enable-api" in command_lines[0] and not [line for line in command_lines if token in line]
    call = {"next_action": "action_handoff", "sender_id": "sms:+15550100", "tracker": {"sender_id": "sms:+15550100"}, "domain": {}}
    assert httpx.post(f"{actions}/webhook", json=call, timeout=10).status_code == 401
    assert httpx.get(f"{served.stack.classifier_url}/metrics", timeout=10).status_code == 401
    too_many = httpx.post(f"{served.stack.classifier_url}/classify", json={"texts": ["where is my card"] * 257}, timeout=30)
    too_long = httpx.post(f"{served.stack.classifier_url}/classify", json={"texts": ["card " * 1000]}, timeout=30)
    assert (too_many.status_code, too_long.status_code) == (400, 400)  # refused per request, before batching
    assert "at most 256 items" in too_many.text and "at most 4000 characters" in too_long.text
    refused = httpx.post(f"{served.stack.bot_url}/chat", json={"message": "hello", "channel": "made-up-channel"}, timeout=10)
    assert refused.status_code == 422 and "made-up-channel" not in served.metrics(served.stack.bot_url)  # the route's channel


def test_evaluate_counts_what_chat_returned_for_each_labelled_message(
    served: Served, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """`supportflow evaluate --bot-url` on a small labelled export: one message per intent, and one that asks two
    things (the bot asks which first). Every counted outcome is what /chat says to that message in a new
    conversation; the figures land in the results folder and in MLflow, both under tmp_path."""
    import json

    import mlflow

    from supportflow.cli import main
    from supportflow.release.resolution import OUTCOMES, judge
    from supportflow.settings import get_settings
    from supportflow.tracking import connect

    labelled = served.rows.groupby("category").head(1)[["text", "category"]]
    two_requests = f"{served.example('change_pin').rstrip('?.! ')} and also {served.example('exchange_rate')}"
    labelled = pd.concat([labelled, pd.DataFrame({"text": [two_requests], "category": ["change_pin"]})], ignore_index=True)
    export = tmp_path / "labelled.csv"
    labelled.to_csv(export, index=False)
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("SUPPORTFLOW_RESULTS_DIR", str(tmp_path / "results"))
        get_settings.cache_clear()
        try:
            assert main(["evaluate", "--file", str(export), "--bot-url", served.stack.bot_url, "--json"]) == 0
        finally:
            get_settings.cache_clear()
    report = json.loads(capsys.readouterr().out)

    assert report["errors"] == 0 and report["n"] == len(labelled) == 9
    assert sum(report[outcome] for outcome in OUTCOMES) == report["n"]
    # The tiny model and the demo KB answer most; the card questions' form asks first, and the customer answers it;
    # the two requests get "which first?", whose options the customer picks from like an offer's.
    assert report["answered_right"] >= 1 and report["clarified"] + report["slot_questions"] + report["offers"] >= 1
    assert sum(counts["n"] for counts in report["by_intent"].values()) == report["n"]
    figures = json.loads((tmp_path / "results" / "resolution_banking77.json").read_text())
    assert {key: figures[key] for key in (*OUTCOMES, "n", "errors")} == {key: report[key] for key in (*OUTCOMES, "n", "errors")}
    assert figures["classifier_version"] == "1" and figures["kb_build"] and figures["release_id"] is None

    client = connect(served.settings)
    experiment = client.get_experiment_by_name(served.settings.resolution_experiment)
    (run,) = client.search_runs([experiment.experiment_id])
    assert run.data.metrics["n"] == 9 and run.data.metrics["answered_right"] == report["answered_right"]
    assert (run.data.tags["workspace"], run.data.tags["evaluated_by"], run.data.tags["classifier_version"]) == ("banking77", "cli", "1")
    artifacts = Path(mlflow.artifacts.download_artifacts(run_id=run.info.run_id, artifact_path="resolution", dst_path=str(tmp_path)))
    confusion = pd.read_csv(artifacts / "confusion.csv", index_col="gold_intent")
    assert int(confusion.to_numpy().sum()) == report["n"]
    replayed = pd.read_csv(artifacts / "examples.csv", keep_default_na=False)
    assert replayed["conversation_id"].nunique() == len(replayed) == 9  # each message its own new conversation
    for number, row in enumerate(replayed.itertuples()):
        again = served.chat(f"it-evaluate-{number}", row.text)
        body = again.json()
        first = judge(row.gold_intent, again.status_code, body).outcome
        if row.offered != "[]" or row.slot_answers != "[]":  # the customer answered what the bot asked: that reply counted
            assert first == "clarified" and row.outcome != "error", (row.text, body)
        else:
            assert first == row.outcome, (row.text, body)
            assert (body["route"], body.get("answer_intent") or "") == (row.route, row.answer_intent), row.text


def test_when_the_classifier_or_rasa_is_down_the_bot_hands_off_gracefully(served: Served) -> None:
    classifier = next(p for p in served.stack.processes if p.name == "classifier")
    question = served.example("card_arrival")  # asked of the classifier while it still answers
    classifier.stop()
    down = served.chat("it-down", question)
    assert down.status_code == 503 and "passed your message to a colleague" in down.json()["replies"][0]
    rasa = next(p for p in served.stack.processes if p.name == "rasa")
    rasa.stop()
    alone = served.chat("it-down-2", "hello")
    assert alone.status_code == 503 and alone.json()["route"] == "handoff"


def test_every_turn_reached_the_lake(served: Served) -> None:
    from supportflow.bot.turns import read_turns
    from supportflow.lake import open_lake

    bot = next(p for p in served.stack.processes if p.name == "bot")
    bot.stop()  # flushes the turn log
    deadline = time.monotonic() + 30
    turns = pd.DataFrame()
    while time.monotonic() < deadline and turns.empty:
        turns = read_turns(open_lake(served.settings))
        time.sleep(0.5)
    from supportflow.keys import conversation_keys

    keys = conversation_keys(served.settings)
    stored = {name: keys.stored_id(conversation) for name, (conversation, _) in served.conversations.items()}
    assert {stored[name] for name in ("it-answer", "it-clarify", "it-handoff", "it-down")} <= set(turns["conversation_id"])
    assert not [c for c in turns["conversation_id"] if not c.startswith("c-")]  # no turn keeps a customer's own id
    answered = turns[turns["conversation_id"] == stored["it-answer"]].iloc[0]
    assert (answered["route"], answered["intent"], answered["kb_doc_id"]) == ("kb", "card_arrival", "card_arrival")
    assert answered["model_version"] == "1" and answered["latency_ms"] > 0
    assert os.path.exists(served.folder / "logs" / "bot.log")


@dataclass
class Replicated:
    stack: object
    settings: object
    rows: pd.DataFrame
    conversations: dict[str, tuple[str, str]] = field(default_factory=dict)
    replied: dict[str, int] = field(default_factory=dict)  # a test's conversation name -> turns that got a reply

    def chat(self, conversation: str, message: str) -> dict:
        response = chat(self.stack.bot_url, self.conversations, conversation, message)
        assert response.status_code == 200, (conversation, response.status_code, response.text[:300])
        self.replied[conversation] = self.replied.get(conversation, 0) + 1
        return response.json()

    def example(self, intent: str) -> str:
        address = urlsplit(self.stack.classifier.health_url)
        return surest_example(
            f"{address.scheme}://{address.netloc}", self.rows.loc[self.rows["category"] == intent, "text"].tolist(), intent
        )

    def turns_served(self, port: int) -> float:
        """The bot replica's own count of turns, read from its /metrics (behind the internal token)."""
        headers = {"Authorization": f"Bearer {self.stack.internal_token}"}
        text = httpx.get(f"http://127.0.0.1:{port}/metrics", headers=headers, timeout=10).text
        return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines() if line.startswith("supportflow_turns_total{"))


@pytest.fixture(scope="module")
def replicated(desk: tuple[PreparedDesk, Path], postgres: Postgres, redis_url: str) -> Iterator[Replicated]:
    """The module's desk on shared stores: its handoff queue and Rasa's trackers in PostgreSQL, Rasa's locks in Redis."""
    from supportflow.release.replicas import start_replicas
    from supportflow.settings import get_settings

    prepared, folder = desk
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("SUPPORTFLOW_HANDOFF_DB_URL", postgres.new_database())
        patch.setenv("SUPPORTFLOW_RASA_TRACKER_STORE_URL", postgres.new_database().replace("+psycopg", ""))  # Rasa has psycopg2
        patch.setenv("SUPPORTFLOW_RASA_LOCK_STORE_URL", redis_url)
        get_settings.cache_clear()
        settings = get_settings()
        stack = start_replicas(settings, prepared.rasa_project, prepared.rasa_model, folder / "replicas", count=2)
        try:
            yield Replicated(stack, settings, prepared.rows)
        finally:
            stack.stop()
            get_settings.cache_clear()


def test_conversations_with_slots_cross_replicas_and_stay_coherent(replicated: Replicated) -> None:
    for name in ("cross-1", "cross-2", "cross-3"):
        asked = replicated.chat(name, replicated.example("change_pin"))
        assert (asked["route"], asked["replies"]) == ("dialogue", [CARD_QUESTION]), asked
        answered = replicated.chat(name, "the virtual one")  # round-robin: the other replica takes this turn
        assert (answered["route"], answered["intent"]) == ("kb", "change_pin"), answered
    served = [replicated.turns_served(replica.bot_port) for replica in replicated.stack.replicas]
    assert all(count > 0 for count in served), f"a replica took no turn: {served}"


def test_killing_a_bot_and_a_rasa_loses_no_conversation_turn_or_handoff(replicated: Replicated) -> None:
    from supportflow.bot.turns import read_turns
    from supportflow.keys import conversation_keys
    from supportflow.lake import open_lake

    pending = [f"killed-{index}" for index in range(4)]
    for name in pending:  # each waits for its card type when the kills land
        assert replicated.chat(name, replicated.example("change_pin"))["replies"] == [CARD_QUESTION]
    replicated.chat("handed-before", "I want to talk to a human")

    doomed_bot, doomed_rasa = replicated.stack.replicas[0].bot, replicated.stack.replicas[1].rasa
    workers = descendants(doomed_bot.pid)  # BentoML's, each in a session of its own
    assert workers
    for process in (doomed_bot, doomed_rasa):
        process.kill()
    assert all(gone(worker) for worker in workers)  # no orphan goes on serving the killed bot's port

    for name in pending:  # the form goes on where it stopped: the slot it asked for, then the answer
        answered = replicated.chat(name, "the virtual one")
        assert (answered["route"], answered["intent"]) == ("kb", "change_pin"), (name, answered)
    replicated.chat("handed-after", "I want to talk to a human")
    fresh = replicated.chat("fresh-after", replicated.example("change_pin"))
    assert fresh["replies"] == [CARD_QUESTION]

    keys = conversation_keys(replicated.settings)
    stored = {name: keys.stored_id(conversation) for name, (conversation, _) in replicated.conversations.items()}
    listed = httpx.get(f"{replicated.stack.bot_url}/agent/handoffs", params={"limit": 100}, timeout=30).json()["handoffs"]
    assert {stored["handed-before"], stored["handed-after"]} <= {handoff["conversation_id"] for handoff in listed}

    doomed_bot.start(timeout=300)  # restarted, as Kubernetes restarts a killed pod: its write-ahead turns replay
    for replica in replicated.stack.replicas:
        replica.bot.stop()  # the survivors flush what they hold
    deadline, counts = time.monotonic() + 60, pd.Series(dtype=int)
    while time.monotonic() < deadline:
        counts = read_turns(open_lake(replicated.settings))["conversation_id"].value_counts()
        if all(counts.get(stored[name], 0) >= replied for name, replied in replicated.replied.items()):
            break
        time.sleep(1)
    missing = {
        name: (replied, int(counts.get(stored[name], 0)))
        for name, replied in replicated.replied.items()
        if counts.get(stored[name], 0) < replied
    }
    assert not missing, f"turns that got a reply but are not in the turn log (replied, logged): {missing}"
    duplicated = {name: int(counts[stored[name]]) for name, replied in replicated.replied.items() if counts.get(stored[name], 0) > replied}
    assert not duplicated, f"turns logged twice: {duplicated}"
