"""The task worker behind ``AgentClient.serve``: the inbox subscriber and the tasks it runs.

The engine delivers tasks on ``chorus.task.<agent_id>`` at least once, until acknowledged
(``chorus.contracts.tasks``). For each task the worker:

1. waits for a free slot (``max_concurrency``), so an agent with no free slot leaves the
   task unacknowledged and the dispatcher can give it to another agent; then starts the
   handler, and acknowledges the task with ``task.accept`` (accepting a phase starts it)
   only if the handler is still running ``accept_after`` seconds later. A handler that
   finishes sooner acknowledges with its report (the engine takes the work itself as
   the acknowledgement), so a quick task costs the engine one command fewer; the grace
   is far below the engine's re-send interval and accept window. A refused accept (the
   attempt was taken back meanwhile) cancels the handler; ``accept_after=0`` accepts
   before the handler starts;
2. runs the handler with a ``TaskContext`` (progress and partial results), bounded by the
   task's lease: past ``lease_expires_at`` the engine counts the attempt lost, so the
   handler is cancelled and nothing more is reported;
3. completes the phase with the handler's return value, or fails it with the exception's
   message; a session task submits the value as the agent's result (an exception: a
   failed result); then claims the completion with its evidence, so it counts for the
   agent's reliability. Claims are not urgent: they wait up to ``CLAIM_LINGER`` seconds
   and go out together, as one ``verify_completions`` (``Claims``), which spares the
   engine a command per task (each claim is still judged and recorded on its own).

A ``cancel`` message cancels the running handler of that task (nothing is reported after
it). A repeat of a task already held (same ``task_id`` and ``attempt``) is ignored; a new
attempt of a task held under an older one replaces it. Each report is re-sent with its
command id until an engine answers, so a retry after a lost reply counts once.

On shutdown the worker stops taking tasks, lets running handlers finish for up to
``drain_timeout`` seconds, and hands back the rest: it cancels them and fails each phase
it accepted with the code ``handed_back`` (the dispatcher retries a failed attempt on
another agent); tasks it never accepted stay unaccepted, so their leases move them.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import msgspec
from chorus.agent_sdk import UNANSWERED, AgentClient
from chorus.contracts.agents import MAX_CLAIMS
from chorus.contracts.envelope import Reply
from chorus.contracts.subjects import task_subject
from chorus.contracts.tasks import TASK_DECODER, CancelTask, PhaseTask, SessionTask
from faststream.nats import NatsBroker
from faststream.nats.message import NatsMessage
from nats.aio.msg import Msg

log = logging.getLogger("chorus.agent")

Task = PhaseTask | SessionTask
#: Seconds a handler runs before its task is accepted (see the module's docstring): well
#: under the engine's re-send interval (1 s) and any accept window.
ACCEPT_AFTER = 0.25
#: ``async def handle(task, ctx) -> dict | None``: the result (None: an empty result).
Handler = Callable[[Task, "TaskContext"], Awaitable[dict[str, Any] | None]]
Clock = Callable[[], datetime]

#: Rejections meaning this attempt no longer counts: stop and report nothing more.
LOST_CODES = frozenset({
    "lease_lost", "not_assigned", "phase_not_current", "workflow_closed",
    "workflow_not_found", "session_closed", "session_not_found", "not_a_participant",
    "already_submitted",
})  # fmt: skip
#: Longest error message ``fail_phase`` accepts.
MAX_ERROR_MESSAGE = 10_000
#: How many finished (task, attempt) pairs to remember, to ignore late repeats.
REMEMBERED = 10_000
#: Seconds a completion claim waits for others to go out with it: at 30 tasks/s an agent
#: sends a claims command for about eight tasks, not one (an agent killed meanwhile loses
#: these claims, its record of the work, not the work).
CLAIM_LINGER = 0.25


async def _raw_body(message: NatsMessage) -> bytes:
    """The inbox's decoder: the body as sent (FastStream would try it as JSON first)."""
    return bytes(message.body)


class TaskLost(Exception):
    """The engine no longer counts this attempt (lease lost, cancelled, closed)."""

    def __init__(self, task_id: str, reply: Reply) -> None:
        error = reply.error
        super().__init__(f"{task_id}: {error.code if error else 'rejected'}: "
                         f"{error.message if error else ''}")  # fmt: skip
        self.task_id = task_id
        self.code = error.code if error else "rejected"


class TaskFailed(Exception):
    """Raise from a handler to fail the task with exactly this message (and ``code``);
    any other exception fails it with ``<ExceptionType>: <message>``."""

    def __init__(self, message: str, code: str = "agent_error") -> None:
        super().__init__(message)
        self.code = code


class CommandRejected(Exception):
    """A report was refused for a reason that does not end the attempt."""

    def __init__(self, reply: Reply) -> None:
        error = reply.error
        super().__init__(f"{error.code}: {error.message}" if error else "rejected")
        self.reply = reply


#: Keepalive reports that failed harmlessly.
SKIPPABLE: tuple[type[Exception], ...] = (CommandRejected, *UNANSWERED)


def utc_now() -> datetime:
    return datetime.now(UTC)


class TaskContext:
    """What a handler may do while it runs: report progress and partial results.

    Both report on a workflow phase; a session task has neither (its one report is the
    result), so they do nothing there. If the engine answers that the attempt is lost,
    they raise ``TaskLost`` (let it propagate: the worker reports nothing more).
    """

    def __init__(self, client: AgentClient, task: Task) -> None:
        self.client = client
        self.task = task
        self.last_progress = 0

    @property
    def agent_id(self) -> str:
        return self.client.agent_id

    async def progress(self, percent: int) -> None:
        """The phase's progress, 0..100, never lower than the last report. The same value
        again is fine: it tells the engine the work is alive (``heartbeat_seconds``)."""
        await self._report("report_progress", {"progress": percent})
        self.last_progress = max(self.last_progress, percent)

    async def partial(self, result: dict[str, Any]) -> None:
        """A partial result of the phase (kept in the workflow's ``partial_results``)."""
        await self._report("record_partial_result", {"result": result})

    async def _report(self, command: str, fields: dict[str, Any]) -> None:
        task = self.task
        if not isinstance(task, PhaseTask):
            return
        payload = {"workflow_id": task.workflow_id, "phase": task.phase, **fields}
        check(task.task_id, await self.client.send("workflow", command, payload))


def check(task_id: str, reply: Reply) -> None:
    """Raise unless the engine took the report (a duplicate was taken before)."""
    if reply.status != "rejected":
        return
    if reply.error is not None and reply.error.code in LOST_CODES:
        raise TaskLost(task_id, reply)
    raise CommandRejected(reply)


class Claims:
    """Completion claims on their way: the first waits ``linger`` seconds, then all that
    piled up go in one ``verify_completions`` (at most ``MAX_CLAIMS``; more, in order, in
    the next). A refused or unanswered batch is logged, as a refused claim always was: a
    claim is the agent's record, never the work, and the engine re-sends nothing for it."""

    def __init__(self, client: AgentClient, linger: float = CLAIM_LINGER) -> None:
        self.client = client
        self.linger = linger
        self.queued: list[dict[str, Any]] = []
        self.sending: asyncio.Task[None] | None = None
        self._hurry = asyncio.Event()  # set on shutdown: no more lingering

    def add(self, claim: dict[str, Any]) -> None:
        self.queued.append(claim)
        if self.sending is None or self.sending.done():
            self.sending = asyncio.create_task(self._send(), name="claims")

    async def flush(self) -> None:
        """Send what is queued now, without waiting (shutdown)."""
        self._hurry.set()
        if self.sending is not None:
            await self.sending

    async def _send(self) -> None:
        while self.queued:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._hurry.wait(), self.linger)
            batch, self.queued = self.queued[:MAX_CLAIMS], self.queued[MAX_CLAIMS:]
            try:
                reply = await self.client.verify_completions(batch)
            except UNANSWERED as error:
                log.warning("%d completion claim(s) unanswered: %r", len(batch), error)
                continue
            except Exception:  # disconnected, say: the claims are lost, the work is not
                log.exception("%d completion claim(s) not sent", len(batch))
                continue
            if reply.status == "rejected":
                log.info("%d completion claim(s) refused: %s", len(batch), reply.error)


@dataclass
class Running:
    task: Task
    job: asyncio.Task[None]
    cancelled: str | None = None  # why a cancel message stopped it
    accepted: bool = False


class Worker:
    """One agent's inbox on a FastStream broker, and the handlers it runs."""

    def __init__(
        self,
        client: AgentClient,
        broker: NatsBroker,
        handler: Handler,
        *,
        max_concurrency: int = 1,
        claim_completions: bool = True,
        keepalive: bool = False,
        accept_after: float = ACCEPT_AFTER,
        clock: Clock = utc_now,
    ) -> None:
        if max_concurrency < 1:
            raise ValueError("max_concurrency must be at least 1")
        if accept_after < 0:
            raise ValueError("accept_after must not be negative")
        self.accept_after = accept_after
        self.client = client
        self.broker = broker
        self.handler = handler
        self.max_concurrency = max_concurrency
        self.claim_completions = claim_completions
        self.claims = Claims(client)
        self.keepalive = keepalive
        self.clock = clock
        self.running: dict[str, Running] = {}
        self._finished: OrderedDict[tuple[str, int], None] = OrderedDict()
        self._slots = asyncio.Semaphore(max_concurrency)
        self._stopping = asyncio.Event()
        self.taking = False

    def shutdown(self) -> None:
        self._stopping.set()

    async def run(
        self,
        *,
        capabilities: list[str],
        type: str = "generic",
        metadata: dict[str, Any] | None = None,
        drain_timeout: float = 30.0,
    ) -> None:
        """Subscribe, register, heartbeat; take tasks until ``shutdown`` or cancelled."""
        started = not self.broker.running
        if started:
            await self.broker.start()  # connects
        inbox = await self._subscribe()
        self.taking = True
        try:
            # Subscribed first: tasks given the moment it registers are not missed.
            reply = await self.client.register(
                type=type, capabilities=capabilities, metadata=metadata,
                max_concurrency=self.max_concurrency,
            )  # fmt: skip
            if reply.status == "rejected":
                raise CommandRejected(reply)
            await self.client.start()
            await self._stopping.wait()
        finally:
            self.taking = False
            with contextlib.suppress(Exception):
                await inbox()
            await self.drain(drain_timeout)
            await self.claims.flush()
            await self.client.stop()
            if started:
                await self.broker.stop()

    async def drain(self, timeout: float) -> None:
        """Let running handlers finish for ``timeout`` seconds; hand back the rest.

        A phase it accepted is handed back with ``fail_phase`` (code ``handed_back``), so
        the dispatcher gives it to another agent now rather than at the lease's end.
        """
        held = list(self.running.values())
        if not held:
            return
        _, pending = await asyncio.wait([r.job for r in held], timeout=timeout)
        for job in pending:
            job.cancel()
        for job in pending:
            with contextlib.suppress(asyncio.CancelledError):
                await job
        back = [r.task for r in held if r.job in pending and r.accepted]
        for task in back:
            if isinstance(task, PhaseTask):
                with contextlib.suppress(TaskLost, CommandRejected, *UNANSWERED):
                    await self._fail(task, f"agent {self.client.agent_id} stopped before "
                                     "finishing; the phase goes to another agent", "handed_back")  # fmt: skip
        if pending:
            log.warning("handed back %d unfinished task(s)", len(pending))

    # The inbox ------------------------------------------------------------------------------

    async def _subscribe(self) -> Callable[[], Awaitable[None]]:
        """Subscribe the inbox; returns what unsubscribes it.

        On a connected broker the inbox is a nats-py subscription on the broker's own
        connection: a task message is opaque bytes to decode, and FastStream's consume path
        (its middlewares, a parsed ``StreamMessage``, dependency resolution, a context scope)
        cost about 300 us of CPU per message, five times the worker's own work; with many
        tasks in flight that delayed the completions past the engine's re-send interval, so
        every task arrived twice. Without a real connection (FastStream's test broker) it
        is a FastStream subscriber that takes the raw body (``_raw_body``)."""
        subject = task_subject(self.client.agent_id)
        nc = self.client.connection()
        if nc is not None:
            subscription = await nc.subscribe(subject, cb=self._on_msg)
            return subscription.unsubscribe
        inbox = self.broker.subscriber(subject, persistent=False, decoder=_raw_body)
        inbox(self._on_message)
        await inbox.start()
        return inbox.stop

    async def _on_msg(self, msg: Msg) -> None:
        await self._on_message(msg.data)

    async def _on_message(self, body: bytes) -> None:
        """Quick by design: decode, then start or cancel a job; the work runs apart."""
        try:
            task = TASK_DECODER.decode(body)
        except (msgspec.DecodeError, msgspec.ValidationError) as error:
            log.warning("ignored a malformed task message: %s", error)
            return
        if isinstance(task, CancelTask):
            self.cancel(task)
        else:
            self.take(task)

    def take(self, task: Task) -> None:
        if not self.taking or (task.task_id, task.attempt) in self._finished:
            return  # stopping (it goes to another agent), or a late repeat
        held = self.running.get(task.task_id)
        if held is not None:
            if held.task.attempt >= task.attempt:
                return  # a repeat: accepting it again is the job's business
            held.cancelled = f"superseded by attempt {task.attempt}"
            held.job.cancel()
        job = asyncio.create_task(self._execute(task), name=f"task-{task.task_id}")
        self.running[task.task_id] = Running(task, job)

    def cancel(self, message: CancelTask) -> None:
        held = self.running.get(message.task_id)
        if held is None:
            return
        if message.attempt is not None and message.attempt != held.task.attempt:
            return  # it ends another attempt, not the one running here
        held.cancelled = message.reason
        held.job.cancel()

    # One task -------------------------------------------------------------------------------

    async def _execute(self, task: Task) -> None:
        try:
            async with self._slots:
                await self._accept_and_run(task)
        except asyncio.CancelledError:
            held = self.running.get(task.task_id)
            if held is None or held.task is not task or held.cancelled is None:
                raise  # shutdown: hand back
            log.info("task %s cancelled: %s", task.task_id, held.cancelled)
        except TaskLost as lost:
            log.info("task %s attempt %d lost: %s", task.task_id, task.attempt, lost)
        except Exception:
            log.exception("task %s: reporting failed", task.task_id)
        finally:
            held = self.running.get(task.task_id)
            if held is not None and held.task is task:
                del self.running[task.task_id]
            self._finished[(task.task_id, task.attempt)] = None
            while len(self._finished) > REMEMBERED:
                self._finished.popitem(last=False)

    async def _accept(self, task: Task) -> None:
        check(task.task_id, await self.client.accept(task.task_id))
        held = self.running.get(task.task_id)
        if held is not None and held.task is task:
            held.accepted = True

    def _accept_later(self, task: Task) -> Callable[[], None]:
        """Accept ``task`` if its handler (the current task) runs ``accept_after``
        seconds; a refusal (or a lost lease) cancels the handler. Returns what stops it.
        A timer, not a task that sleeps: most handlers finish first, and a cancelled
        timer costs nothing."""
        handler = asyncio.current_task()
        assert handler is not None

        async def accept() -> None:
            try:
                await self._accept(task)
            except TaskLost as lost:
                held = self.running.get(task.task_id)
                if held is not None and held.task is task:
                    held.cancelled = f"accept refused: {lost.code}"
                handler.cancel()
            except SKIPPABLE:
                pass  # unanswered: the handler's own report acknowledges it

        started: list[asyncio.Task[None]] = []

        def start() -> None:
            started.append(asyncio.create_task(accept(), name=f"accept-{task.task_id}"))

        timer = asyncio.get_running_loop().call_later(self.accept_after, start)

        def stop() -> None:
            timer.cancel()
            for accepting in started:
                accepting.cancel()

        return stop

    async def _accept_and_run(self, task: Task) -> None:
        accepting = None
        if self.accept_after > 0:
            accepting = self._accept_later(task)
        else:
            await self._accept(task)
        ctx = TaskContext(self.client, task)
        lease = max(0.0, (task.lease_expires_at - self.clock()).total_seconds())
        beats = self._keep_alive(ctx)
        try:
            async with asyncio.timeout(lease) as bound:
                result = await self.handler(task, ctx)
        except TaskLost:
            raise
        except TimeoutError:
            if bound.expired():
                log.warning("task %s: lease expired before the handler finished", task.task_id)
                return
            await self._fail(task, "TimeoutError")
            return
        except TaskFailed as error:
            await self._fail(task, str(error) or "failed", error.code)
            return
        except Exception as error:
            message = f"{type(error).__name__}: {error}" if str(error) else type(error).__name__
            await self._fail(task, message)
            return
        finally:
            if beats is not None:
                beats.cancel()
            if accepting is not None:
                accepting()
        await self._complete(task, result or {})

    def _keep_alive(self, ctx: TaskContext) -> asyncio.Task[None] | None:
        """With ``keepalive``, re-report a phase's last progress three times per
        ``heartbeat_seconds`` while its handler runs; a lost lease cancels the handler."""
        task = ctx.task
        if not (self.keepalive and isinstance(task, PhaseTask) and task.heartbeat_seconds):
            return None
        handler = asyncio.current_task()
        assert handler is not None
        every = max(0.1, task.heartbeat_seconds / 3)

        async def beat() -> None:
            while True:
                await asyncio.sleep(every)
                try:
                    await ctx.progress(ctx.last_progress)
                except TaskLost as lost:
                    held = self.running.get(task.task_id)
                    if held is not None and held.task is task:
                        held.cancelled = f"lease lost: {lost.code}"
                    handler.cancel()
                    return
                except SKIPPABLE:
                    continue  # unanswered, or a report of its own overtook this one

        return asyncio.create_task(beat(), name=f"keepalive-{task.task_id}")

    async def _complete(self, task: Task, result: dict[str, Any]) -> None:
        if isinstance(task, PhaseTask):
            payload = {"workflow_id": task.workflow_id, "phase": task.phase, "result": result}
            reply = await self.client.send("workflow", "complete_phase", payload)
        else:
            reply = await self.client.submit_result(task.session_id, result)
        check(task.task_id, reply)
        if self.claim_completions:
            self.claims.add(self.client.claim(task.task_id, result))

    async def _fail(self, task: Task, message: str, code: str = "agent_error") -> None:
        message = message[-MAX_ERROR_MESSAGE:]
        if isinstance(task, PhaseTask):
            payload = {"workflow_id": task.workflow_id, "phase": task.phase,
                       "error": {"code": code[:100], "message": message}}  # fmt: skip
            reply = await self.client.send("workflow", "fail_phase", payload)
        else:
            reply = await self.client.submit_result(
                task.session_id, {"error": message}, success=False
            )
        check(task.task_id, reply)
