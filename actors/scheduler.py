"""Scheduler actor: every flow decision of the node.

- Resolves each send's policy (mode and parameters) from the node's live
  defaults and the send's own overrides, then hands it to the sender;
  a cancel of the send is passed on the same way, so it cannot overtake
  its request (control.py, ``_cancel``).
- Paces flows that need it (token-bucket mode, any flow while the node has a
  ``--max-rate``, qos priorities): the sender reports what each could send
  now (``FlowDemand``), the scheduler answers with byte grants
  (``FlowGrant``) computed by :class:`~peercrypt.core.grants.GrantPlanner`
  every few milliseconds while someone waits.
- Owns congestion per destination peer (RFC 3124's Congestion Manager):
  aimd flows report acks, losses and timeouts in batches (``FlowReport``);
  one :class:`~peercrypt.core.congestion_manager.CongestionManager` window
  per peer is divided among its flows by priority and each is told its
  share (``FlowWindow``). ``status`` shows it as the ``congestion`` fact.
- Live settings (``SettingRequest``): node default mode, max-rate, one or
  every running transfer's rate, AIMD defaults and detectors, lanes.

Unpaced flows (normal, aimd, parallel without a node cap) never wait for
it: their acks and credit are the only clock.
"""

from __future__ import annotations

import dataclasses
import json
import logging

from peercrypt.core.congestion_manager import CongestionManager
from peercrypt.core.grants import GrantPlanner
from peercrypt.core.modes import (
    Policy,
    PolicyError,
    apply_congestion,
    capped_chunk_size,
    check_flow_rate,
    check_node_share,
    check_paced_rate,
    check_rate_range,
    default_burst,
    describe_congestion,
    with_overrides,
)
from peercrypt.errors import ResultCode
from peercrypt.runtime.actor import Actor, ActorEnv, Timer
from peercrypt.settings import NodeSettings
from peercrypt.sizes import readable
from peercrypt.wire import codec
from peercrypt.wire.messages import (
    CancelRequest,
    FlowDemand,
    FlowEnd,
    FlowGrant,
    FlowPacing,
    FlowRate,
    FlowReport,
    FlowStart,
    FlowWindow,
    SendRequest,
    SendResult,
    SettingReply,
    SettingRequest,
)

log = logging.getLogger("peercrypt.scheduler")

TICK = 0.005  # seconds between grant rounds while a flow waits
MIN_TICK = 0.0005
MIN_GRANT = 64 * 1024  # smallest bucket the scheduler makes
MAX_FLOWS_SHOWN = 32  # flows listed in the "flows" fact (status, top)
_POLICY_FIELDS = tuple(f.name for f in dataclasses.fields(Policy))


class SchedulerActor(Actor):
    name = "scheduler"

    def __init__(self, env: ActorEnv, settings: NodeSettings) -> None:
        super().__init__(env)
        self.settings = settings
        self.defaults = settings.policy
        self.planner: GrantPlanner[int] = GrantPlanner()
        self.ticker: Timer | None = None
        self.flows: dict[int, FlowStart] = {}  # every running transfer, paced or not
        self.congestion: CongestionManager[int] = CongestionManager()  # aimd flows, per peer

    def setup(self) -> None:
        if self.settings.max_rate:
            self.planner.set_node_rate(
                self.settings.max_rate, self._node_burst(self.settings.max_rate), self.now()
            )
        self._publish()

    def _node_burst(self, rate: int) -> int:
        # A tenth of a second at the cap (grants add up in the sender, so a
        # bucket smaller than a chunk only delays that chunk, never blocks it).
        return max(rate // 10, MIN_GRANT)

    def report(self) -> None:
        self.facts["congestion"] = self._congestion_facts()
        # What `peercrypt top` shows as the scheduler's shares and caps.
        self.facts["flows"] = json.dumps(
            [
                {"id": f.request, "priority": f.priority, "rate": f.rate, "paced": f.paced}
                for f in list(self.flows.values())[:MAX_FLOWS_SHOWN]
            ],
            separators=(",", ":"),
        )
        super().report()

    def report_due(self) -> bool:
        return bool(self.flows) or super().report_due()  # shares and caps move with flows

    def _publish(self) -> None:
        self.facts["mode"] = self.defaults.mode
        self.facts["parallel_threads"] = str(self.defaults.lanes)
        self.facts["max_rate"] = str(int(self.planner.node_rate))
        self.facts["aimd"] = (
            f"w={self.defaults.window_kb} min={self.defaults.min_window_kb} "
            f"max={self.defaults.max_window_kb} KB threshold={self.defaults.ack_threshold} "
            f"timeout={'on' if self.defaults.timeout_detect else 'off'} "
            f"dupack={'on' if self.defaults.dupack_detect else 'off'}"
        )

    # -- sends ------------------------------------------------------------------

    def on_mail(self, msg: codec.Message) -> None:
        if isinstance(msg, SendRequest):
            self._resolve(msg)
        elif isinstance(msg, CancelRequest):  # behind its request (control.py, _cancel)
            self.tell("sender", msg)
        elif isinstance(msg, FlowStart):
            self.flows[msg.request] = msg
            self._pace(msg)
            if msg.congestion:
                self._manage(msg)
        elif isinstance(msg, FlowReport):
            self.count("flow-reports")
            self.congestion.report(
                msg.request,
                msg.sent,
                msg.acked,
                msg.losses,
                msg.timeouts,
                msg.in_flight,
                self.now(),
            )
            self._tell_windows()
        elif isinstance(msg, FlowDemand):
            self.count("flow-demands")
            if msg.request in self.planner.flows():
                self.planner.demand(msg.request, msg.nbytes)
                self._arm()
        elif isinstance(msg, FlowEnd):
            self.flows.pop(msg.request, None)
            self.planner.remove(msg.request)
            self.congestion.remove(msg.request)
            self._tell_windows()
        elif isinstance(msg, SettingRequest):
            self.tell("control", self._setting(msg))
        else:
            super().on_mail(msg)

    def _resolve(self, req: SendRequest) -> None:
        overrides = {name: getattr(req, name) for name in _POLICY_FIELDS}
        code = ResultCode.LOCAL
        try:
            if req.mode is None and self.defaults.mode == "token-bucket" and not req.rate:
                raise PolicyError(
                    "the node's default mode is token-bucket, which needs a rate: give "
                    "-r BYTES_PER_SEC (or --mode normal)"
                )
            policy = with_overrides(self.defaults, **overrides)
            if policy.mode == "multicast":  # the CLI sends these to the multicast sender
                if req.mode is None:  # the node's default: the CLI sends it as a multicast
                    code = ResultCode.MULTICAST_DEFAULT
                raise PolicyError("multicast sends need their targets: send -m/--to HOST:PORT")
            chunk_size = req.chunk_size
            if self.planner.node_rate > 0:  # its share must bring a chunk within the idle limit
                running = [f.priority for f in self.flows.values() if f.paced]
                node_rate = int(self.planner.node_rate)
                chunk_size = capped_chunk_size(
                    chunk_size, req.timeout, node_rate, policy.priority, running
                )
                # Nor may its share take what a running send's chunks need.
                flows = [*self._shares(), (req.request, policy.priority, 0)]
                what = f"the node's rate cap of {node_rate} B/s shared with this send"
                check_node_share(node_rate, flows, what, ", or send when fewer run")
        except PolicyError as exc:
            self.count(f"refused-{code}")
            self.tell(
                "control",
                SendResult(
                    request=req.request,
                    code=code,
                    reason=str(exc)[:500],
                    size=0,
                    digest=b"",
                    stored_as="",
                ),
            )
            return
        capped = self.planner.node_rate > 0  # the live cap, not the one at start
        log.debug("send %d to %s:%d: %s (node cap %s)", req.request, req.host, req.port,
                  policy, "on" if capped else "off")  # fmt: skip
        resolved = dataclasses.replace(
            req, **dataclasses.asdict(policy), node_capped=capped, chunk_size=chunk_size
        )
        self.tell("sender", resolved)

    # -- congestion (RFC 3124: one window per destination peer) ----------------------

    def _manage(self, flow: FlowStart) -> None:
        try:
            policy = with_overrides(
                self.defaults,
                mode="aimd",
                window_kb=flow.window_kb or None,
                min_window_kb=flow.min_window_kb or None,
                max_window_kb=flow.max_window_kb or None,
                timeout_detect=flow.timeout_detect,
                dupack_detect=flow.dupack_detect,
            )
        except PolicyError:
            policy = dataclasses.replace(self.defaults, mode="aimd")
        self.congestion.add(flow.request, flow.peer, flow.priority, policy)
        self._tell_windows()

    def _tell_windows(self) -> None:
        """Tell each flow whose share of its peer's window changed."""
        for request, share in self.congestion.changed().items():
            peer = self.congestion.peer_of(request)
            flow = self.flows.get(request)
            if peer is None or flow is None:
                continue
            self.tell(
                flow.owner,
                FlowWindow(
                    request=request,
                    nbytes=share,
                    window=peer.window,
                    decreases=peer.control.decreases,
                ),
            )

    def _congestion_facts(self) -> str:
        """Per destination peer: the shared window and each flow's share (JSON,
        bounded to what one status fact may hold)."""
        out: dict[str, object] = {}
        for name in self.congestion.peers():
            peer = self.congestion.peer(name)
            assert peer is not None
            flows = self.congestion.flows(name)
            entry = {
                "window": peer.window,
                "decreases": peer.control.decreases,
                "losses": peer.control.fast_retransmits,
                "timeouts": peer.control.timeouts,
                "flows": {
                    str(request): {
                        "weight": f.weight,
                        "share": f.share,
                        "in_flight": f.in_flight,
                        "acked": f.acked,
                        "losses": f.losses,
                    }
                    for request, f in list(flows.items())[:16]
                },
            }
            if len(json.dumps({**out, name[:300]: entry})) > 4000:
                break
            out[name[:300]] = entry
        return json.dumps(out, separators=(",", ":"))

    def _live_windows(self) -> str:
        """The running peers' windows, for the ``congestion`` command's answer
        (new defaults apply to peers whose flows start afterwards)."""
        parts = []
        for name in self.congestion.peers()[:8]:
            peer = self.congestion.peer(name)
            if peer is not None:
                parts.append(f"{name} {peer.window // 1024} KB ({peer.flows} flows)")
        return f"; running windows: {', '.join(parts)}" if parts else ""

    # -- grants -----------------------------------------------------------------

    def on_actor_restarted(self, name: str) -> None:
        # A sender or msender that crashed (or was attached and got lost)
        # lost its transfers: their flows must not keep a share of the rate
        # or of a peer's congestion window.
        for request, flow in list(self.flows.items()):
            if flow.owner == name:
                del self.flows[request]
                self.planner.remove(request)
                self.congestion.remove(request)
        self._tell_windows()  # the peers' other flows get the freed share

    def _pace(self, flow: FlowStart) -> None:
        """Pace a flow iff it has its own rate or the node has a cap; tell the
        sender when that differs from what it assumed."""
        paced = flow.rate > 0 or self.planner.node_rate > 0
        known = flow.request in self.planner.flows()
        if paced and not known:
            self.planner.add(flow.request, flow.priority, flow.rate, flow.burst, self.now())
        elif not paced and known:
            self.planner.remove(flow.request)
        if paced != flow.paced:
            log.debug("flow %d: %s", flow.request, "paced" if paced else "unpaced")
            self.flows[flow.request] = dataclasses.replace(flow, paced=paced)
            self.tell(flow.owner, FlowPacing(request=flow.request, paced=paced))

    def _arm(self) -> None:
        if self.ticker is None:
            # Every TICK, or sooner when a bucket would overflow before then
            # (a small bucket at a high rate): when it is half full, so that
            # the poll loop's millisecond granularity loses no tokens.
            full = self.planner.next_full(self.now(), 0.5)
            delay = TICK if full is None else max(MIN_TICK, min(TICK, full))
            self.ticker = self.call_later(delay, self._tick)

    def _tick(self) -> None:
        self.ticker = None
        for request, nbytes in self.planner.tick(self.now()).items():
            flow = self.flows.get(request)
            owner = flow.owner if flow is not None else "sender"
            self.tell(owner, FlowGrant(request=request, nbytes=nbytes))
        if self.planner.waiting:
            self._arm()

    # -- live settings ------------------------------------------------------------

    def _setting(self, req: SettingRequest) -> SettingReply:
        try:
            text = self._apply(req)
        except (PolicyError, ValueError, KeyError) as exc:
            return SettingReply(request=req.request, ok=False, text=str(exc)[:500])
        log.debug("setting %s=%s: %s", req.name, req.value, text)
        self._publish()
        self.report()  # before the reply, so a status right after it shows the change
        return SettingReply(request=req.request, ok=True, text=text, settings=dict(self.facts))

    def _shares(self) -> list[tuple[int, int, int]]:
        """The running flows as a node cap shares among them: (request,
        priority, chunk size); under a cap every flow is paced."""
        return [(f.request, f.priority, f.chunk_size) for f in self.flows.values()]

    def _apply(self, req: SettingRequest) -> str:
        name, value, now = req.name, req.value.strip(), self.now()
        if name == "mode":
            self.defaults = with_overrides(self.defaults, as_defaults=True, mode=value)
            return f"default mode is now {value}"
        if name == "max-rate":
            rate = _rate_value(value, "max-rate")
            check_paced_rate(rate, "max-rate")  # below it, every send is dropped as idle
            check_node_share(rate, self._shares(), f"max-rate {rate}")
            self.planner.set_node_rate(rate, self._node_burst(rate), now)
            for flow in list(self.flows.values()):
                self._pace(flow)
            if rate == 0:
                return "node rate cap removed"
            return f"node rate cap is now {readable(rate, rate=True)}"
        if name == "rate":
            rate = _rate_value(value, "rate")
            if req.transfer and req.transfer not in self.flows:
                raise PolicyError(f"no running transfer {req.transfer}")
            targets = [req.transfer] if req.transfer else list(self.flows)
            # The largest chunk first: the rate named is the one that does for all
            # (the smallest chunk's named 274 B/s under sends of 1 MiB chunks).
            for request in sorted(targets, key=lambda r: -self.flows[r].chunk_size):
                check_flow_rate(rate, request, self.flows[request].chunk_size)
            check_paced_rate(rate, "rate")  # (no send: a rate no send could take)
            if not targets:  # (it said "rate of 0 transfer(s) is now ...")
                raise PolicyError("no send is running (`max-rate` caps the node's sends)")
            for request in targets:
                burst = default_burst(rate)  # what a send's -r alone gets
                flow = self.flows[request] = dataclasses.replace(
                    self.flows[request], rate=rate, burst=burst
                )
                self._pace(flow)
                # Its samples record the rate: the sender learns it.
                self.tell(flow.owner, FlowRate(request=request, rate=rate))
                if request in self.planner.flows():
                    self.planner.set_rate(request, rate, burst, now)
            cap = readable(rate, rate=True) if rate else "unlimited"
            return f"rate of {len(targets)} transfer(s) is now {cap}"
        if name == "lanes":
            self.defaults = with_overrides(self.defaults, as_defaults=True, lanes=int(value))
            return f"default parallel lanes: {value}"
        if name == "congestion" or name.startswith("congestion."):
            # "congestion.KEY" = VALUE, or "congestion" = "KEY=VALUE KEY=VALUE ..."
            pairs: list[tuple[str, ...]] = (
                [(name.removeprefix("congestion."), value)]
                if name != "congestion"
                else [tuple(item.split("=", 1)) for item in value.split()]
            )
            self.defaults = apply_congestion(self.defaults, pairs)
            return describe_congestion(self.defaults) + self._live_windows()
        raise PolicyError(f"unknown setting {name!r}")


def _rate_value(value: str, what: str) -> int:
    """A live rate from the control socket, within 0..MAX_RATE as the CLI's."""
    try:
        number = int(value)
    except ValueError:
        raise PolicyError(f"{what} must be a whole number of bytes per second") from None
    check_rate_range(number, what)
    return number
