"""The gateway's broadcast distribution to radio nodes, as a sans-IO state machine.

Phases, as the seed has them: announce, broadcast every block, bitmap rounds with
repair, key exchange against each node's birth certificate, authenticated start,
verify (the node's new version read back, authenticated). Nodes that stop answering
are dropped after bounded retries; the session carries on with the rest.

The session holds no sockets, threads or clocks. A driver feeds it events
(``start``, ``transmit_done``, ``frame_received``, ``timer_fired``, each with the
driver's current time) and performs the actions it returns (:mod:`harness.nodeproto.link`).
The protocol logic itself is written as one generator, so it reads as the sequence it
is; the class turns the generator's requests into actions and events into resumptions.

Repair rounds poll only what can change the repair: a round's re-broadcast is the union
of what polled nodes still miss, and polling stops as soon as that union covers every
block that any node may still miss (each node's last report bounds what it can miss).
Early rounds stop after a handful of reports; the last rounds poll only the nodes that
still miss blocks.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Generator, Iterable
from dataclasses import dataclass
from typing import Any

import numpy as np

from ...nodeproto.certs import BirthCertificate, CertificateError, verify_certificate
from ...nodeproto.crypto import (
    KeyExchangeError,
    macs_equal,
    start_mac,
    status_mac,
    wrap_image_key,
)
from ...nodeproto.frames import (
    START_DIGEST_SIZE,
    Abort,
    AbortReason,
    Announce,
    BitmapQuery,
    BitmapReport,
    Block,
    Cert,
    CertRequest,
    FrameKind,
    Key,
    KeyAck,
    KeyStatus,
    Message,
    NodeError,
    NodeState,
    Reassembler,
    Rejected,
    Resend,
    Start,
    Status,
    StatusQuery,
    encode,
    max_block_size,
)
from ...nodeproto.link import Action, NodeProgress, NodeResult, SetTimer, Transmit
from .metrics import SessionMetrics
from .plan import SessionPlan

#: A slow node's response timeout grows up to this many times the radio's.
MAX_SLOWDOWN = 16

#: Where each phase puts a node's progress (0..100 of the node upgrade).
PROGRESS = {"transfer": 60.0, "complete": 80.0, "key": 85.0, "started": 90.0}

_KEY_FAILURES = {
    KeyStatus.REFUSED: "key exchange refused by the node",
    KeyStatus.IMAGE_CHECK_FAILED: "image check failed on the node (digest of the decrypted image)",
    KeyStatus.INCOMPLETE: "the node reports its image incomplete",
    KeyStatus.BAD_KEY: "the node could not unwrap the image key",
}

_NODE_ERRORS = {
    NodeError.BAD_MAC: "bad MAC on the start",
    NodeError.REPLAYED: "replayed start counter",
    NodeError.DIGEST_MISMATCH: "the image it holds does not match the digest",
    NodeError.DOWNGRADE: "downgrade not allowed",
    NodeError.SELF_TEST_FAILED: "self-test failed",
    NodeError.POWER_LOSS: "power lost during apply",
    NodeError.NO_IMAGE: "no image for this session",
    NodeError.BUSY: "busy",
}


# -- what the protocol generator asks of the wrapper -----------------------------------------


@dataclass(frozen=True)
class _Send:
    """Transmit; resume when it is on air, or (with ``expect``) with the node's answer."""

    frames: tuple[bytes, ...]
    to: str | None
    kind: FrameKind
    expect: frozenset[FrameKind] = frozenset()
    timeout: float = 0.0


@dataclass(frozen=True)
class _Sleep:
    until: float


_Request = _Send | _Sleep
_Protocol = Generator[_Request, Message | None, None]


class BroadcastSession:
    """One image to many nodes. Create with a :class:`SessionPlan`, then drive it."""

    def __init__(self, plan: SessionPlan) -> None:
        self.plan = plan
        self.now = 0.0
        self.metrics = SessionMetrics(nodes=len(plan.nodes))
        self.results: dict[str, NodeResult] = {}
        #: Birth certificates read and verified in this session (the gateway may keep them).
        self.certificates: dict[str, BirthCertificate] = {}
        self.done = False
        self.block_size = max_block_size(plan.max_frame)
        self.block_count = -(-len(plan.ciphertext) // self.block_size)
        self.metrics.blocks = self.block_count
        if self.block_count > 0xFFFF:
            raise ValueError(
                f"image of {len(plan.ciphertext)} bytes needs {self.block_count} blocks of "
                f"{self.block_size} bytes; the protocol counts at most 65535"
            )
        self._gen = self._protocol()
        self._waiting: _Request | None = None
        self._sent = False
        self._deadline: float | None = None
        self._started_at: float | None = None
        self._out: list[Action] = []
        self._reassemblers: dict[str, Reassembler] = {}
        #: Birth certificates nodes sent with their last bitmap report (want_cert).
        self._offered: dict[str, bytes] = {}
        #: Factor on the response timeout of nodes that answered late.
        self._slow: dict[str, int] = {}
        self._block_frames: list[bytes] | None = None

    # -- events ----------------------------------------------------------------------------

    def start(self, now: float) -> list[Action]:
        self._started_at = now
        return self._resume(now, None)

    def transmit_done(self, now: float) -> list[Action]:
        """Everything transmitted so far is on air."""
        waiting = self._waiting
        if not isinstance(waiting, _Send) or self._sent:
            return []
        self._sent = True
        if not waiting.expect:
            return self._resume(now, None)
        self._deadline = now + waiting.timeout
        return [SetTimer(self._deadline)]

    def frame_received(self, now: float, node: str, raw: bytes) -> list[Action]:
        reassembler = self._reassemblers.get(node)
        if reassembler is None:
            reassembler = self._reassemblers[node] = Reassembler()
        message = reassembler.feed(raw)
        waiting = self._waiting
        if message is None:
            if isinstance(waiting, _Send) and waiting.to == node and self._deadline is not None:
                # More of a long answer is coming: the wait is for silence, not for its end.
                self._deadline = now + waiting.timeout
                return [SetTimer(self._deadline)]
            return []
        if isinstance(message, Rejected):
            self.metrics.rejected_frames += 1
            return []
        self.metrics.received_frames[message.kind.name] += 1
        offered = isinstance(message, Cert) and message.session == self.plan.session_id
        if offered:
            self._offered[node] = message.certificate  # type: ignore[union-attr]
        if (
            isinstance(waiting, _Send)
            and waiting.to == node
            and message.kind in waiting.expect
            and message.session == self.plan.session_id
        ):
            return self._resume(now, message)
        if offered:
            return []  # a certificate sent with a report: kept for the key exchange
        self.metrics.late_messages += 1
        if message.session == self.plan.session_id:
            # An answer after we gave up waiting: this node is slow, wait longer for it.
            self._slow[node] = min(self._slow.get(node, 1) * 2, MAX_SLOWDOWN)
        return []

    def timer_fired(self, now: float) -> list[Action]:
        waiting = self._waiting
        if isinstance(waiting, _Sleep) and now >= waiting.until:
            return self._resume(now, None)
        if isinstance(waiting, _Send) and self._deadline is not None and now >= self._deadline:
            self.metrics.timeouts += 1
            return self._resume(now, None)
        return []

    def cancel(self, now: float, reason: str = "session canceled") -> list[Action]:
        """Stop here: every node without a result fails with ``reason``; nodes are told."""
        if self.done:
            return []
        self.now = now
        self._gen.close()
        frames = tuple(
            encode(Abort(self.plan.session_id, AbortReason.CANCELED), self.plan.max_frame)
        )
        self._out.append(Transmit(frames, None, FrameKind.ABORT))
        started = getattr(self, "_started", {})
        for node in self.plan.nodes:
            if node in started:
                # Applying or applied already: an ABORT does not undo a started upgrade.
                self._fail(node, f"{reason} after the start (the node may run the new image)")
            else:
                self._fail(node, reason)
        self._finish(now)
        return self._take()

    # -- the wrapper -----------------------------------------------------------------------

    def _resume(self, now: float, value: Message | None) -> list[Action]:
        self.now = now
        try:
            request = self._gen.send(value)
        except StopIteration:
            self._finish(now)
            return self._take()
        self._waiting = request
        self._sent = False
        self._deadline = None
        if isinstance(request, _Send) and not request.frames:
            # Nothing to send, only an answer to wait for (the rest of what a node sends).
            self._sent = True
            self._deadline = now + request.timeout
            self._out.append(SetTimer(self._deadline))
        elif isinstance(request, _Send):
            self._out.append(Transmit(request.frames, request.to, request.kind))
            if request.kind is FrameKind.ANNOUNCE:
                self.metrics.announce_frames += len(request.frames)
            if request.to is not None:
                self.metrics.unicast_frames[request.kind.name] += len(request.frames)
        else:
            self._out.append(SetTimer(request.until))
        return self._take()

    def _take(self) -> list[Action]:
        out, self._out = self._out, []
        return out

    def _finish(self, now: float) -> None:
        self.done = True
        self._waiting = None
        if self._started_at is not None:
            self.metrics.duration = now - self._started_at

    def _progress(self, nodes: Iterable[str], value: float, phase: str) -> None:
        self._out.extend(NodeProgress(n, value, phase) for n in nodes)

    def _fail(self, node: str, reason: str, version: str | None = None) -> None:
        """``node`` failed; ``version`` is what it runs, when it said so."""
        if node not in self.results:
            self.results[node] = NodeResult(node, False, reason, version)
            self._out.append(self.results[node])

    def _succeed(self, node: str, version: str) -> None:
        if node not in self.results:
            self.results[node] = NodeResult(node, True, None, version)
            self._out.append(self.results[node])

    # -- the protocol ----------------------------------------------------------------------

    def _encode(self, message: Message) -> tuple[bytes, ...]:
        return tuple(encode(message, self.plan.max_frame))

    def _ask(self, node: str, message: Message, *expect: FrameKind) -> _ProtocolReturning:
        """Send ``message`` to ``node`` and wait for one of ``expect``, trying ``retries``
        times; after a timeout that left a long answer partial, ask only for its lost
        fragments. None when the node never answered."""
        original = self._encode(message)
        frames, kind = original, message.kind
        for _ in range(self.plan.retries):
            if kind is FrameKind.BITMAP_QUERY:
                self.metrics.queries += 1
            reply = yield _Send(frames, node, kind, frozenset(expect), self._timeout(node))
            if reply is not None:
                return reply
            frames, kind = original, message.kind
            reassembler = self._reassemblers.get(node)
            for answer in expect if reassembler is not None else ():
                mask = reassembler.missing_fragments(answer, self.plan.session_id)  # type: ignore[union-attr]
                if mask:
                    resend = Resend(self.plan.session_id, answer, mask)
                    frames, kind = self._encode(resend), FrameKind.RESEND
                    break
        return None

    def _pause(self, since: float) -> _Protocol:
        """Before trying silent nodes again, let ``pass_interval`` pass since the last try:
        a node rebooting after a power cut, or in a long fade, gets the time to return."""
        if self.now < since + self.plan.pass_interval:
            yield _Sleep(since + self.plan.pass_interval)

    def _each(self, nodes: Iterable[str], step: _Step, what: str) -> _Protocol:
        """Run ``step`` for every node; a node that does not answer is tried again after the
        others (a fade passes), up to ``passes`` times, then fails."""
        pending = list(nodes)
        started = self.now
        for n in range(self.plan.passes):
            if n:
                yield from self._pause(started)
                started = self.now
            deferred = []
            for node in pending:
                answered = yield from step(node)
                if not answered:
                    deferred.append(node)
            pending = deferred
            if not pending:
                return
        tries = self.plan.passes * self.plan.retries
        for node in pending:
            self._fail(node, f"no answer to the {what} after {tries} tries (offline?)")

    def _timeout(self, node: str) -> float:
        """The response timeout for ``node``, longer for a node whose answers came late."""
        return self.plan.response_timeout * self._slow.get(node, 1)

    def _protocol(self) -> _Protocol:
        plan = self.plan
        announce = Announce(
            plan.session_id,
            image_size=len(plan.ciphertext),
            block_size=self.block_size,
            block_count=self.block_count,
            digest=plan.digest,
            version=plan.version,
            encrypted=True,
        )
        self._announce = self._encode(announce)
        for _ in range(plan.announce_repeats):
            yield _Send(self._announce, None, FrameKind.ANNOUNCE)
        # The first pass, with the announce again every eighth: a node that missed it joins
        # mid-pass instead of after all rounds, when it would need every block once more.
        step = max(1, -(-self.block_count // 8))
        for first in range(0, self.block_count, step):
            if first:
                yield _Send(self._announce, None, FrameKind.ANNOUNCE)
            yield from self._broadcast_blocks(range(first, min(first + step, self.block_count)))
        self._progress(plan.nodes, PROGRESS["transfer"], "transfer")
        complete = yield from self._repair(list(plan.nodes))
        self._mac_keys: dict[str, bytes] = {}
        yield from self._each(complete, self._exchange_key, "key exchange")
        self._started: dict[str, float] = {}
        ready = [n for n in complete if n in self._mac_keys]
        for node in ready:
            yield from self._start(node)
        yield from self._verify_all(ready)

    def _broadcast_blocks(self, indices: Iterable[int]) -> _Protocol:
        if self._block_frames is None:
            data, size, sid = self.plan.ciphertext, self.block_size, self.plan.session_id
            self._block_frames = [
                encode(Block(sid, i, data[i * size : (i + 1) * size]), self.plan.max_frame)[0]
                for i in range(self.block_count)
            ]
        frames = tuple(self._block_frames[i] for i in indices)
        if frames:
            self.metrics.data_broadcasts += len(frames)
            yield _Send(frames, None, FrameKind.BLOCK)

    def _repair(self, nodes: list[str]) -> _ProtocolReturning:
        """Bitmap rounds until every answering node holds every block; returns those nodes.

        A round re-broadcasts the union of what the polled nodes miss. Polling stops once
        that union covers every block any node may still miss: each node's last report
        bounds what it can miss (blocks are never lost), an unpolled node may miss all.
        """
        k = self.block_count
        everything = np.ones(k, dtype=bool)
        bound: dict[str, np.ndarray] = {}
        silent: dict[str, int] = {}  # rounds in a row a node did not answer
        active = list(nodes)
        complete: list[str] = []
        for _ in range(self.plan.max_rounds):
            if not active:
                break
            round_started = self.now
            candidates = np.zeros(k, dtype=bool)
            for node in active:
                if node not in bound:
                    candidates = everything
                    break
                candidates |= bound[node]
            union = np.zeros(k, dtype=bool)
            # Unpolled nodes first, then the widest bounds: they fill the union fastest.
            order = sorted(active, key=lambda n: -int(bound[n].sum()) if n in bound else -k - 1)
            still: list[str] = []
            estimate = _UnionEstimate(int(candidates.sum()), self.plan.repair_waste)
            for i, node in enumerate(order):
                report = yield from self._poll(node, node in bound and bound[node].sum() <= 3)
                if report is _GONE:
                    continue
                if report is None:
                    silent[node] = silent.get(node, 0) + 1
                    if silent[node] < self.plan.passes:
                        still.append(node)
                    else:
                        del silent[node]
                        tries = self.plan.passes * self.plan.retries
                        self._fail(node, f"no answer to {tries} bitmap queries (offline?)")
                    continue
                silent.pop(node, None)
                assert isinstance(report, BitmapReport)
                missing = report.missing
                self.metrics.bitmap_bytes += missing.encoded_size
                if missing.complete:
                    estimate.add(0)
                    complete.append(node)
                    self._progress([node], PROGRESS["complete"], "transfer")
                    continue
                bits = missing.to_bool_array()
                bound[node] = bits
                union |= bits
                still.append(node)
                uncovered = int((candidates & ~union).sum())
                if not uncovered:
                    still.extend(order[i + 1 :])  # unpolled: nothing they say can widen it
                    break
                if estimate.covers(len(missing), uncovered, len(order) - i - 1):
                    # The rest would almost surely miss the few blocks left: send them all
                    # rather than poll everyone to spare a block or two.
                    union = candidates.copy()
                    still.extend(order[i + 1 :])
                    break
            active = still
            if union.any():
                self.metrics.repair_rounds += 1
                yield from self._broadcast_blocks(np.flatnonzero(union).tolist())
            elif silent:
                yield from self._pause(round_started)
        for node in active:
            left = int(bound[node].sum()) if node in bound else k
            self._fail(
                node,
                f"transfer incomplete after {self.plan.max_rounds} rounds ({left} of {k} "
                "blocks missing)",
            )
        return complete

    def _poll(self, node: str, likely_done: bool = False) -> _ProtocolReturning:
        """A node's bitmap report; None if it did not answer, _GONE if it failed for good.
        A node that missed the announce (it answers with a status) gets it again. A node
        likely done is asked for its birth certificate in the same exchange."""
        want_cert = likely_done and not self._certificate(node)
        query = BitmapQuery(self.plan.session_id, want_cert=want_cert)
        expect = (FrameKind.BITMAP_REPORT, FrameKind.STATUS)
        for _ in range(self.plan.retries):
            reply = yield from self._ask(node, query, *expect)
            if reply is None or isinstance(reply, BitmapReport):
                if reply is not None and reply.missing.count != self.block_count:
                    got = reply.missing.count
                    self._fail(node, f"bitmap report for {got} blocks, not {self.block_count}")
                    return _GONE
                if (
                    reply is not None
                    and want_cert
                    and reply.missing.complete
                    and node not in self._offered
                ):
                    # Its certificate follows the report: let it finish before we talk.
                    listen = frozenset({FrameKind.CERT})
                    yield _Send((), node, FrameKind.CERT, listen, self._timeout(node))
                return reply
            yield _Send(self._announce, node, FrameKind.ANNOUNCE)
        self._fail(node, f"the node never took the session announce ({self.plan.retries} tries)")
        return _GONE

    def _exchange_key(self, node: str) -> _ProtocolReturning:
        """The node's image key, wrapped against its birth certificate. False: no answer."""
        plan = self.plan
        cert = self._certificate(node)
        if cert is None:
            raw = self._offered.get(node)
            if raw is None:
                reply = yield from self._ask(node, CertRequest(plan.session_id), FrameKind.CERT)
                if reply is None:
                    return False
                assert isinstance(reply, Cert)
                raw = reply.certificate
            try:
                cert = BirthCertificate.decode(raw)
                verify_certificate(cert, plan.ca_public_key, node_id=node)
            except CertificateError as exc:
                self._fail(node, f"birth certificate refused: {exc}")
                return True
            self.certificates[node] = cert
        try:
            envelope, mac_key = wrap_image_key(
                plan.image_key, cert.public_key, plan.key_context, self._ephemeral(node)
            )
        except KeyExchangeError as exc:
            self._fail(node, f"cannot wrap the image key for this certificate: {exc}")
            return True
        key = Key(plan.session_id, envelope.encode())
        ack = yield from self._ask(node, key, FrameKind.KEY_ACK)
        if ack is None:
            return False
        assert isinstance(ack, KeyAck)
        if ack.status is not KeyStatus.OK:
            self._fail(node, _KEY_FAILURES.get(ack.status, f"key exchange failed ({ack.status})"))
            return True
        self._mac_keys[node] = mac_key
        self._progress([node], PROGRESS["key"], "key exchange")
        return True

    def _certificate(self, node: str) -> BirthCertificate | None:
        """The node's birth certificate if already read and verified (now or before)."""
        return self.plan.certificates.get(node) or self.certificates.get(node)

    def _ephemeral(self, node: str) -> bytes | None:
        seed = self.plan.key_seed
        if seed is None:
            return None
        return hashlib.sha256(b"ota-hil ephemeral" + seed + node.encode()).digest()

    def _start_message(self, node: str) -> Start:
        plan = self.plan
        mac = start_mac(
            self._mac_keys[node],
            node,
            plan.digest,
            plan.version,
            plan.counter,
            plan.allow_downgrade,
        )
        return Start(
            plan.session_id,
            counter=plan.counter,
            version=plan.version,
            digest=plan.digest[:START_DIGEST_SIZE],
            mac=mac,
            allow_downgrade=plan.allow_downgrade,
        )

    def _start(self, node: str) -> _Protocol:
        """The authenticated start, sent once and not answered: the node may be rebooting
        into the new image at once. What became of it is the verify step's to read."""
        yield _Send(self._encode(self._start_message(node)), node, FrameKind.START)
        self._started[node] = self.now
        self._progress([node], PROGRESS["started"], "start")

    def _verify_all(self, nodes: list[str]) -> _Protocol:
        """Read every started node's status back, in rounds: a node still READY (its START
        was lost) is started again and read in the next round, after the others, so no one
        waits out its apply time alone; a silent node gets ``passes`` rounds."""
        plan = self.plan
        pending, silent = list(nodes), dict.fromkeys(nodes, 0)
        started = self.now
        for n in range(plan.retries * plan.passes):
            if not pending:
                return
            if n and any(silent[node] for node in pending):
                yield from self._pause(started)  # a rebooting node needs the time
            started = self.now
            again = []
            for node in sorted(pending, key=self._started.__getitem__):
                ready_at = self._started[node] + plan.apply_time
                if self.now < ready_at:
                    yield _Sleep(ready_at)
                outcome = yield from self._verify(node)
                if outcome is _AGAIN:
                    again.append(node)
                elif outcome is None:
                    silent[node] += 1
                    if silent[node] < plan.passes:
                        again.append(node)
                    else:
                        tries = plan.passes * plan.retries
                        self._fail(
                            node,
                            f"no answer to the status query after the start after "
                            f"{tries} tries (offline?)",
                        )
            pending = again
        tries = plan.retries * plan.passes
        for node in pending:
            self._fail(node, f"the node did not take the start after {tries} tries")

    def _verify(self, node: str) -> _ProtocolReturning:
        """One status read: success only on an authenticated report of the new version
        under this session's counter. _AGAIN: still READY, started again; None: silent."""
        plan = self.plan
        reply = yield from self._ask(node, StatusQuery(plan.session_id), FrameKind.STATUS)
        if reply is None:
            return None
        assert isinstance(reply, Status)
        expected = status_mac(
            self._mac_keys[node],
            node,
            int(reply.state),
            int(reply.error),
            reply.counter,
            reply.version,
        )
        why = _NODE_ERRORS.get(reply.error, reply.error.name)
        if not macs_equal(expected, reply.mac):
            self._fail(node, "status report not authenticated (bad MAC)")
        elif reply.state is NodeState.READY and reply.error is not NodeError.NONE:
            self._fail(node, f"the node refused the start: {why}", reply.version)
        elif reply.state is NodeState.READY:
            yield from self._start(node)  # the start was lost on the way
            return _AGAIN
        elif reply.counter != plan.counter:
            self._fail(
                node,
                f"status report of start {reply.counter}, not of this session's "
                f"{plan.counter} (stale or replayed)",
            )
        elif reply.state is NodeState.RUNNING_NEW and reply.version == plan.version:
            self._succeed(node, reply.version)
        elif reply.state is NodeState.ROLLED_BACK:
            self._fail(node, f"rolled back to {reply.version}: {why}", reply.version)
        else:
            self._fail(
                node,
                f"after the start the node is {reply.state.name} at version "
                f"{reply.version} ({reply.error.name})",
                reply.version,
            )
        return True


#: _poll's answer for a node that failed for good (as opposed to None: no answer).
_GONE = object()
#: _verify's answer for a node started again (its START was lost).
_AGAIN = object()


class _UnionEstimate:
    """Whether polling the rest of a round can still change its repair broadcast.

    From the reports so far it estimates q, the chance that a node misses a given
    candidate block; ``uncovered`` blocks nobody reported missing yet would all be
    missed by some of the ``remaining`` nodes unless (1 - q) ** remaining of them are
    not. When the expected number of such needless blocks is below ``waste`` of the
    candidates, the round stops polling and re-broadcasts every candidate.
    """

    MIN_SAMPLES = 8

    def __init__(self, candidates: int, waste: float) -> None:
        self.candidates = max(candidates, 1)
        self.waste = waste
        self.samples = 0
        self.missed = 0

    def add(self, missing: int) -> None:
        self.samples += 1
        self.missed += missing

    def covers(self, missing: int, uncovered: int, remaining: int) -> bool:
        self.add(missing)
        if self.samples < self.MIN_SAMPLES or not remaining:
            return False
        q = min(self.missed / (self.samples * self.candidates), 1.0)
        return uncovered * (1.0 - q) ** remaining < self.waste * self.candidates


_ProtocolReturning = Generator[_Request, Message | None, Any]
_Step = Callable[[str], _ProtocolReturning]
