"""The bot service: channels (webchat, Twilio SMS/WhatsApp and voice), the Rasa actions' answer endpoint, the
agent API (whose replies to SMS/WhatsApp customers a sender thread pushes through Twilio), and the conversation
log. `bentoml serve bentos.bot.service:BotService` from the repository root.

The routes are a FastAPI app mounted on the BentoML service (form-encoded webhooks, HTML and precise
status codes are plain HTTP); BentoML adds `/healthz`, `/readyz` and `/metrics`, and the bundle. The internal
routes (`/internal/answer`, `/metrics`) need the internal token, and every request is bounded (supportflow/limits.py).

Who may do what: a webchat conversation belongs to whoever holds the token the server issued with its id
(`X-Conversation-Token`); an SMS or WhatsApp conversation exists only through the Twilio-signed `/twilio`; the
channel is the route's, never the client's word; Twilio's status callbacks and calls come signed too
(`/twilio/status`, `/twilio/voice`); an agent is whoever their bearer token names
(supportflow/bot/agents.py).
"""

import asyncio
import logging
import uuid
from concurrent.futures import ThreadPoolExecutor
from datetime import timedelta
from importlib.resources import files
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import bentoml
from fastapi import FastAPI, Header, HTTPException, Query, Request
from fastapi.responses import HTMLResponse, JSONResponse, Response
from pydantic import BaseModel, ConfigDict
from starlette.concurrency import run_in_threadpool

from supportflow.bot import metrics, voice
from supportflow.bot.agents import AgentError, Agents, require_agents
from supportflow.bot.delivery import PUSHED_CHANNELS, Deliveries, DeliveryError, reply_sender
from supportflow.bot.engine import AnswerRequest, ChatError, SupportBot
from supportflow.bot.feedback import Rating, record_rating
from supportflow.bot.handoff import MAX_PAGE, HandoffError, HandoffQueue, Status
from supportflow.bot.llm import LLMResponder
from supportflow.bot.sms_feedback import ANSWERS, FeedbackAsks
from supportflow.bot.turns import TurnLog, journal_folder
from supportflow.bot.twilio_channel import is_signed_by_twilio, parse, public_url, twiml
from supportflow.internal_auth import InternalRoutes, internal_token, is_loopback
from supportflow.keys import checked_secret, conversation_keys
from supportflow.lake import open_lake
from supportflow.limits import BodyLimit, TurnLimit
from supportflow.logs import configure_json_logging
from supportflow.review.gaps import read_report
from supportflow.review.queue import MAX_QUEUE, ReviewError, label_turn, pending
from supportflow.services import bentoml_service_config, freeze_startup_objects
from supportflow.settings import Settings, get_settings
from supportflow.validate.catalogue import load_catalogue
from supportflow.workspace import BUNDLED_WORKSPACE, Workspace, load_workspace, workspace

if TYPE_CHECKING:
    from supportflow.kb.build import KnowledgeBase

log = logging.getLogger("supportflow.bot")
web = FastAPI(title="supportflow bot")
WEBCHAT = files("supportflow.bot").joinpath("static/webchat.html").read_text()
CONSOLE = files("supportflow.bot").joinpath("static/console.html").read_text()
WEBCHAT_CHANNEL = "webchat"  # the only channel /chat serves; SMS and WhatsApp arrive signed, through /twilio
NOT_YOURS = {"detail": "unknown conversation, or a missing or wrong X-Conversation-Token"}  # one answer: no oracle


class ChatIn(BaseModel):
    """No `conversation_id`: a new conversation, whose id and token come back. No `channel`: the route decides it."""

    model_config = ConfigDict(extra="forbid")

    conversation_id: str | None = None
    message: str = ""


class FeedbackIn(BaseModel):
    """A customer's rating of one of the bot's turns in their conversation."""

    model_config = ConfigDict(extra="forbid")

    turn_id: str
    helpful: bool


class AgentAction(BaseModel):
    """No `agent`: who acts is whoever the bearer token belongs to."""

    model_config = ConfigDict(extra="forbid")

    text: str | None = None
    intent: str | None = None
    message_id: int | None = None  # resolve: the customer's message the intent labels, when not the handoff's question


class ReviewLabel(BaseModel):
    """No `agent`: the label is recorded as given by whoever the bearer token belongs to."""

    model_config = ConfigDict(extra="forbid")

    intent: str


def served_model_version(settings: object) -> str | None:
    """The classifier version the turns are attributed to: configured, or the production release's."""
    if settings.model_version:
        return settings.model_version
    try:
        from supportflow.release.production import served_version

        return served_version(settings)[0]
    except Exception as error:
        log.warning("served classifier version unknown: %s", error)
        return None


class BundleArguments(BaseModel):
    dialogue: str | None = None  # the BentoML model tag of the Rasa archive a bundle carries


ARGUMENTS = bentoml.use_arguments(BundleArguments)


@bentoml.service(name="supportflow-bot", traffic={"timeout": 60}, **bentoml_service_config(get_settings()))
@bentoml.asgi_app(web, path="/")
class BotService:
    if ARGUMENTS.dialogue:
        dialogue = bentoml.models.BentoModel(ARGUMENTS.dialogue)  # Rasa serves it; the bundle carries it

    def desk(self) -> Workspace:
        """The desk this bot speaks for: the one its bundle was built for, else the configured workspace."""
        if ARGUMENTS.dialogue:
            return load_workspace(Path(self.dialogue.path) / BUNDLED_WORKSPACE)
        return workspace(get_settings())

    def __init__(self) -> None:
        configure_json_logging()
        settings = get_settings()
        self.settings = settings
        self.keys = conversation_keys(settings)  # a placeholder or short key stops the start here
        self.agents = self.check_doors(settings)
        if internal_token(settings) is None:
            log.warning("no internal token: /internal/answer and /metrics are closed, so every turn Rasa answers is handed off")
        lake = open_lake(settings)
        self.lake = lake  # where the review queue and the knowledge-gap report are read from
        desk = self.desk()
        self.channels = desk.config.channels
        self.feedback_asks = FeedbackAsks(settings.handoff_db_url) if self.channels.sms_feedback else None
        retention = timedelta(days=settings.handoff_retention_days)
        from supportflow.kb.serving import KnowledgeFollower

        def serve(knowledge: "KnowledgeBase") -> None:
            self.bot.knowledge = knowledge  # one assignment: turns under way keep the build they read

        # The served build, or None (every question goes to a person, the reason logged); then every
        # `kb_refresh_seconds` the build a `kb_index` run promoted, without a restart.
        self.knowledge_follower = KnowledgeFollower(settings, serve)
        self.bot = SupportBot(
            knowledge=self.knowledge_follower.open_promoted(),
            llm=LLMResponder(settings),
            handoffs=HandoffQueue(settings.handoff_db_url, lake, load_catalogue(desk.catalogue_file).intents, retention),
            turns=TurnLog(
                lake,
                flush_every=settings.turn_flush_every,
                flush_seconds=settings.turn_flush_seconds,
                max_buffered=settings.turn_buffer_max,
                journal=journal_folder(settings.run_dir, lake),  # each turn durable before its reply; replayed on start
            ).start(),
            rasa_url=settings.rasa_url,
            keys=self.keys,
            model_version=served_model_version(settings),
            max_message_chars=settings.max_message_chars,
            offer_options=settings.offer_options,
            offer_min_share=settings.offer_min_share,
            texts=desk.config.texts,
            conversations_in_memory=settings.conversations_in_memory,
            conversation_memory_s=settings.conversation_memory_s,
        )
        self.deliveries = Deliveries(
            settings.handoff_db_url,
            self.keys,
            reply_sender(settings, public_url(settings.twilio_webhook_url, "/status", "") if settings.twilio_webhook_url else None),
            attempts=settings.twilio_send_attempts,
            retry_base_s=settings.twilio_retry_base_s,
            retry_max_s=settings.twilio_retry_max_s,
        ).start()
        # The action server's callbacks run here, never on the threads the turns hold while they wait on them.
        self.callbacks = ThreadPoolExecutor(max_workers=settings.max_concurrent_turns, thread_name_prefix="internal-answer")
        if settings.follow_production and not settings.model_version:
            from supportflow.release.production import ProductionFollower

            def attribute(version: str, variant: str) -> None:
                self.bot.model_version = version

            self.follower = ProductionFollower(settings, self.bot.model_version, attribute)
            self.follower.start()
        self.knowledge_follower.start()
        freeze_startup_objects()

    @staticmethod
    def check_doors(settings: Settings) -> Agents:
        """Refuse to start with a door that would stand open: a retired shared agent token, a placeholder Twilio
        token (anyone could sign as Twilio), or an agent API reachable from elsewhere with no agent registered."""
        if settings.agent_token is not None:
            raise AgentError("SUPPORTFLOW_AGENT_TOKEN is retired: each agent has their own token (`supportflow agent add NAME`); unset it")
        if settings.twilio_auth_token is not None:
            checked_secret("SUPPORTFLOW_TWILIO_AUTH_TOKEN", settings.twilio_auth_token)
        agents = Agents(settings.handoff_db_url)
        require_agents(agents, settings.bind_host)
        return agents

    @bentoml.on_shutdown
    def flush_turns(self) -> None:
        self.bot.turns.stop()

    @bentoml.on_shutdown
    def stop_following_knowledge(self) -> None:
        self.knowledge_follower.stop()

    @bentoml.on_shutdown
    def stop_sender(self) -> None:
        """Replies still queued stay in the database: the next start sends them."""
        self.deliveries.stop()

    def _respond(self, conversation_id: str, text: str, channel: str, request_id: str) -> tuple[int, dict]:
        try:
            with metrics.TURN_LATENCY.labels(channel=metrics.channel_label(channel), route="any").time():
                result = self.bot.chat(conversation_id, text, channel, request_id)
        except ChatError as error:
            metrics.REJECTED.labels(reason=str(error.status)).inc()
            return error.status, {"detail": str(error), "request_id": request_id}
        metrics.TURNS.labels(channel=metrics.channel_label(channel), route=result.route).inc()
        if result.confidence is not None:
            metrics.INTENT_CONFIDENCE.observe(result.confidence)
        if result.route == "handoff":
            metrics.FALLBACKS.inc()
            metrics.HANDOFFS.labels(reason="dialogue unavailable" if result.status == 503 else "bot").inc()
        body = {
            "conversation_id": conversation_id,
            "replies": result.replies,
            "route": result.route,
            "intent": result.intent,
            "confidence": result.confidence,
            "kb_doc_id": result.kb_doc_id,
            "answer_intent": result.answer_intent,
            "offered": result.offered,
            "request_id": request_id,
            "turn_id": result.turn_id,
        }
        return result.status, body

    @web.get("/status")
    def status(self) -> dict:
        """What this bot serves now (the build it follows the promotions to) and the classifier version its turns are
        attributed to."""
        knowledge = self.bot.knowledge
        return {"knowledge_base": knowledge.build_id if knowledge else None, "model_version": self.bot.model_version}

    @web.get("/", response_class=HTMLResponse)
    def webchat(self) -> str:
        return WEBCHAT

    def _refuse_stranger(self) -> JSONResponse:
        metrics.REJECTED.labels(reason="conversation token").inc()
        return JSONResponse(NOT_YOURS, status_code=403)

    @web.post("/chat")
    def chat(
        self,
        body: ChatIn,
        x_conversation_token: Annotated[str | None, Header()] = None,
        x_request_id: Annotated[str | None, Header()] = None,
    ) -> JSONResponse:
        if body.conversation_id is None:
            conversation_id, token = self.keys.new_webchat_conversation()
        elif self.keys.owns_webchat_conversation(body.conversation_id, x_conversation_token):
            conversation_id, token = body.conversation_id, None
        else:
            return self._refuse_stranger()
        status, payload = self._respond(conversation_id, body.message, WEBCHAT_CHANNEL, x_request_id or uuid.uuid4().hex)
        if token is not None and "replies" in payload:  # a refused first message starts no conversation
            payload["conversation_token"] = token
        return JSONResponse(payload, status_code=status)

    @web.get("/chat/{conversation_id}/replies")
    def replies(self, conversation_id: str, x_conversation_token: Annotated[str | None, Header()] = None) -> JSONResponse:
        if not self.keys.owns_webchat_conversation(conversation_id, x_conversation_token):
            return self._refuse_stranger()
        return JSONResponse({"conversation_id": conversation_id, "replies": self.bot.agent_replies(conversation_id)})

    @web.post("/chat/{conversation_id}/feedback")
    def feedback(
        self, conversation_id: str, body: FeedbackIn, x_conversation_token: Annotated[str | None, Header()] = None
    ) -> JSONResponse:
        """A customer's rating of one turn of their conversation, kept beside the turn log (supportflow/bot/feedback.py)."""
        if not self.keys.owns_webchat_conversation(conversation_id, x_conversation_token):
            return self._refuse_stranger()
        stored = self.keys.stored_id(conversation_id)
        if not self.keys.issued_turn(stored, body.turn_id):
            return JSONResponse({"detail": f"no turn {body.turn_id[:40]!r} in this conversation"}, status_code=404)
        record_rating(self.lake, Rating(turn_id=body.turn_id, conversation_id=stored, channel=WEBCHAT_CHANNEL, helpful=body.helpful))
        metrics.RATINGS.labels(channel=WEBCHAT_CHANNEL, rating="helpful" if body.helpful else "unhelpful").inc()
        return JSONResponse({"turn_id": body.turn_id, "helpful": body.helpful})

    @web.post("/chat/{conversation_id}/handoff")
    def ask_for_person(self, conversation_id: str, x_conversation_token: Annotated[str | None, Header()] = None) -> JSONResponse:
        """The webchat's "talk to a person" button: a handoff at the customer's word, with no message to classify."""
        if not self.keys.owns_webchat_conversation(conversation_id, x_conversation_token):
            return self._refuse_stranger()
        replies = self.bot.hand_off(conversation_id, WEBCHAT_CHANNEL, "asked for a person after an unhelpful answer")
        metrics.HANDOFFS.labels(reason="customer").inc()
        return JSONResponse({"conversation_id": conversation_id, "replies": replies, "route": "handoff"})

    @web.post("/twilio")
    async def twilio(self, request: Request, x_twilio_signature: Annotated[str | None, Header()] = None) -> Response:
        form = await self._signed_form(request, "", x_twilio_signature)
        if form is None:
            return Response("invalid Twilio signature", status_code=403, media_type="text/plain")
        inbound = parse(form)
        if not inbound.text:
            reply = "I can only read text messages. Please type your question." if inbound.media_count else "Please type your question."
            return Response(twiml([reply]), media_type="application/xml")
        asking = self.feedback_asks is not None and inbound.channel == "sms"
        if asking and (rated := await run_in_threadpool(self._rated, inbound.conversation_id, inbound.text)):
            return Response(twiml([rated]), media_type="application/xml")
        # The turn waits on Rasa, whose actions call back into this service: never block the event loop with it.
        status, payload = await run_in_threadpool(self._respond, inbound.conversation_id, inbound.text, inbound.channel, uuid.uuid4().hex)
        if asking and payload.get("route") in ANSWERS:
            await run_in_threadpool(self.feedback_asks.ask, self.keys.stored_id(inbound.conversation_id), payload["turn_id"])
            payload["replies"] = [*payload["replies"], self.bot.texts.feedback_question]
        if payload.get("route") == "handoff" and self.deliveries.pushing:  # where the agent's replies will be pushed to
            self.deliveries.remember_address(self.keys.stored_id(inbound.conversation_id), inbound.customer, inbound.desk)
        replies = payload.get("replies") or [payload.get("detail", "Sorry, something went wrong.")]
        return Response(twiml(replies), media_type="application/xml", status_code=200 if status < 500 else status)

    def _rated(self, conversation_id: str, text: str) -> str | None:
        """Record the SMS as a rating when it answers the feedback question (returning the thanks), else None."""
        stored = self.keys.stored_id(conversation_id)
        settled = self.feedback_asks.settle(stored, text)
        if settled is None:
            return None
        turn_id, helpful = settled
        try:
            record_rating(self.lake, Rating(turn_id=turn_id, conversation_id=stored, channel="sms", helpful=helpful))
        except Exception as error:  # the lake may be down: the customer is thanked all the same, the loss logged
            log.error("a rating was not recorded", extra={"turn_id": turn_id, "error": type(error).__name__})
        else:
            metrics.RATINGS.labels(channel="sms", rating="helpful" if helpful else "unhelpful").inc()
        return self.bot.texts.feedback_thanks

    async def _signed_form(self, request: Request, route_suffix: str, signature: str | None) -> dict[str, str] | None:
        """The form of a request to `/twilio<route_suffix>` if Twilio signed it, else None (counted as refused)."""
        form = {key: str(value) for key, value in (await request.form()).items()}
        token = self.settings.twilio_auth_token
        url = public_url(self.settings.twilio_webhook_url, route_suffix, str(request.url))
        if token is None or not is_signed_by_twilio(token.get_secret_value(), url, form, signature):
            metrics.REJECTED.labels(reason="twilio signature").inc()
            return None
        return form

    @web.post("/twilio/status")
    async def twilio_status(self, request: Request, x_twilio_signature: Annotated[str | None, Header()] = None) -> Response:
        """Twilio's status callback for a pushed reply; a replayed or late one changes nothing and is answered the same."""
        form = await self._signed_form(request, "/status", x_twilio_signature)
        if form is None:
            return Response("invalid Twilio signature", status_code=403, media_type="text/plain")
        if not form.get("MessageSid") or not form.get("MessageStatus"):
            return Response("a status callback needs MessageSid and MessageStatus", status_code=400, media_type="text/plain")
        try:
            state = await run_in_threadpool(self.deliveries.on_status, form["MessageSid"], form["MessageStatus"], form.get("ErrorCode"))
        except DeliveryError as error:
            return Response(str(error), status_code=400, media_type="text/plain")
        if state is None:
            return Response("no reply was sent with this MessageSid", status_code=404, media_type="text/plain")
        return Response(state, media_type="text/plain")

    @web.post("/twilio/voice")
    async def twilio_voice(
        self,
        request: Request,
        silence: Annotated[int | None, Query(ge=0, lt=voice.NO_SPEECH_TRIES)] = None,
        x_twilio_signature: Annotated[str | None, Header()] = None,
    ) -> Response:
        """A phone call, one signed request per exchange (supportflow/bot/voice.py); TwiML out."""
        form = await self._signed_form(request, "/voice", x_twilio_signature)
        if form is None:
            return Response("invalid Twilio signature", status_code=403, media_type="text/plain")
        here = public_url(self.settings.twilio_webhook_url, "/voice", str(request.url.replace(query="")))
        call = voice.parse(form)

        def reachable(conversation_id: str) -> None:
            """Where an agent's reply to the handoff is texted: the caller's number, from the one they called."""
            if self.deliveries.pushing and call.caller is not None:
                self.deliveries.remember_address(self.keys.stored_id(conversation_id), call.caller, call.desk)

        def respond(conversation_id: str, text: str) -> voice.VoiceReply:
            _, payload = self._respond(conversation_id, text, voice.CHANNEL, uuid.uuid4().hex)
            handed_off = payload.get("route") == "handoff"
            if handed_off:
                reachable(conversation_id)
            return voice.VoiceReply(payload.get("replies") or [payload.get("detail", self.bot.texts.outage)], handed_off)

        def hand_off(conversation_id: str) -> None:
            self.bot.handoffs.enqueue(self.keys.stored_id(conversation_id), voice.CHANNEL, [], "no speech heard on the call", None)
            reachable(conversation_id)
            metrics.HANDOFFS.labels(reason="no speech").inc()

        twiml_out = await run_in_threadpool(
            voice.answer_call,
            call,
            silence,
            lambda silences: f"{here}?silence={silences}",
            respond,
            hand_off,
            self.bot.texts,
            self.channels.agent_phone,
        )
        return Response(twiml_out, media_type="application/xml")

    @web.post("/internal/answer")
    async def answer(self, body: AnswerRequest) -> dict:
        return (await asyncio.get_running_loop().run_in_executor(self.callbacks, self.bot.answer, body)).model_dump()

    def _agent(self, authorization: str | None) -> str:
        """The agent the bearer token belongs to (on a loopback-bound bot with no agent registered: `local`)."""
        scheme, _, token = (authorization or "").partition(" ")
        agent = self.agents.identify(token.strip() if scheme.lower() == "bearer" else None, is_loopback(self.settings.bind_host))
        if agent is None:
            metrics.REJECTED.labels(reason="agent token").inc()
            raise HTTPException(401, "the agent API needs `Authorization: Bearer <agent token>`", headers={"WWW-Authenticate": "Bearer"})
        return agent

    @web.get("/console", response_class=HTMLResponse)
    def console(self) -> str:
        """The agents' page; it holds nothing until an agent's token opens the API it calls."""
        return CONSOLE

    @web.get("/agent/me")
    def me(self, authorization: Annotated[str | None, Header()] = None) -> dict:
        """Who the credential names: the console's login check."""
        return {"agent": self._agent(authorization)}

    @web.get("/agent/catalogue")
    def catalogue(self, authorization: Annotated[str | None, Header()] = None) -> dict:
        """The intents an agent may confirm a handoff with (the desk's catalogue, in its order)."""
        self._agent(authorization)
        return {"intents": list(self.bot.handoffs.intents)}

    @web.get("/agent/handoffs")
    def handoffs(
        self,
        status: Status | None = None,
        limit: Annotated[int, Query(ge=1, le=MAX_PAGE)] = 50,
        offset: Annotated[int, Query(ge=0)] = 0,
        authorization: Annotated[str | None, Header()] = None,
    ) -> dict:
        """One page, oldest first; `next_offset` is null on the last page."""
        self._agent(authorization)
        page = self.bot.handoffs.page(status, limit, offset)
        return page.model_copy(update={"handoffs": [self.deliveries.annotate(view) for view in page.handoffs]}).model_dump()

    @web.post("/agent/handoffs/{handoff_id}/{action}")
    def act(
        self, handoff_id: int, action: str, body: AgentAction | None = None, authorization: Annotated[str | None, Header()] = None
    ) -> dict:
        """Claiming and giving back carry nothing: their body may be left out."""
        agent = self._agent(authorization)
        body = body or AgentAction()
        queue = self.bot.handoffs
        try:
            if action == "claim":
                return self.deliveries.annotate(queue.claim(handoff_id, agent))
            if action == "answer":
                if not body.text:
                    raise HTTPException(400, "an answer needs `text`")
                view = queue.answer(handoff_id, agent, body.text)
                if view["channel"] in PUSHED_CHANNELS:
                    self.deliveries.queue(view["transcript"][-1]["id"], view["conversation_id"])
                return self.deliveries.annotate(view)
            if action == "resolve":
                return self.deliveries.annotate(queue.resolve(handoff_id, agent, body.intent, body.message_id))
            if action == "give_back":
                return self.deliveries.annotate(queue.give_back(handoff_id, agent))
        except HandoffError as error:
            raise HTTPException(404 if "no handoff" in str(error) else 409, str(error)) from error
        raise HTTPException(404, f"unknown action {action!r}; use claim, answer, resolve or give_back")

    @web.get("/agent/review")
    def review(self, limit: Annotated[int, Query(ge=1, le=MAX_QUEUE)] = 20, authorization: Annotated[str | None, Header()] = None) -> dict:
        """Bot-answered turns worth a label, the most useful first (built by the `review_queue` flow)."""
        self._agent(authorization)
        return {"items": [item.model_dump() for item in pending(self.lake, limit)]}

    @web.post("/agent/review/{turn_id}/label")
    def label(self, turn_id: str, body: ReviewLabel, authorization: Annotated[str | None, Header()] = None) -> dict:
        agent = self._agent(authorization)
        try:
            return label_turn(self.lake, turn_id, body.intent, agent, self.bot.handoffs.intents).model_dump(mode="json")
        except ReviewError as error:
            raise HTTPException(error.status, str(error)) from error

    @web.get("/agent/gaps")
    def gaps(self, authorization: Annotated[str | None, Header()] = None) -> dict:
        """The latest knowledge-gap report (the `knowledge_gaps` flow's); no topics before its first run."""
        self._agent(authorization)
        report = read_report(self.lake)
        if report is None:
            return {"generated_at": None, "topics": []}
        return {"generated_at": report.generated_at.isoformat(), "topics": [topic.model_dump() for topic in report.topics]}


# Outermost first: the body cap and the turn limit refuse before anything is parsed or waits; then the token.
BotService.add_asgi_middleware(BodyLimit)
BotService.add_asgi_middleware(TurnLimit)
BotService.add_asgi_middleware(InternalRoutes)
