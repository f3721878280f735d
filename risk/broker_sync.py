"""The quick sync: our records brought up to the broker's state in a few requests.

Every order the broker may still act on, in one listing (flat, legs included, a request per
500), tells which of the orders we think live have changed since we last looked; only
those groups are read back, and their positions follow them (risk.follow). It runs every
monitor cycle while the trade_updates stream is not healthy, and each time the stream
(re)connects, since events missed while disconnected are never sent again. The full
reconciliation (adoption, mismatches, unexplained closes) stays with housekeeping.
"""

import logging
from dataclasses import dataclass, field

from django.utils import timezone

from trading import broker
from trading.holdings import order_tops
from trading.models import ExitShare, Order, Position
from trading.orders import order_refresh

from .follow import Change, position_follow
from .journal import event_record
from .models import MONITOR, Heartbeat, RiskEventKind
from .protection import protection_audit

log = logging.getLogger("risk.sync")


@dataclass
class SyncReport:
    live_at_broker: int = 0
    changed_orders: int = 0
    changes: dict[int, str] = field(default_factory=dict)  # position id -> what changed

    def summary(self) -> str:
        moved = ", ".join(f"#{pk} {change}" for pk, change in sorted(self.changes.items())) or "nothing changed"
        return f"broker sync: {self.live_at_broker} live orders at the broker, {self.changed_orders} changed; {moved}"


def broker_sync(*, by: str = MONITOR) -> SyncReport:
    """Raises BrokerError when the broker can't be read (the caller records it). `by` names the
    heartbeat (the monitor's or the stream's) that notes when the broker last confirmed it all."""
    report = SyncReport()
    live_ids = {order.id for order in broker.list_live_orders_flat()}
    report.live_at_broker = len(live_ids)
    ours = Order.objects.live().exclude(broker_order_id=None)
    stale_pks = [pk for pk, broker_id in ours.values_list("pk", "broker_order_id") if broker_id not in live_ids]
    stale = list(Order.objects.filter(pk__in=stale_pks).select_related("parent")) if stale_pks else []
    report.changed_orders = len(stale)
    tops = order_tops(stale)
    for top in tops:
        order_refresh(order=top)
    touched = {top.position_id for top in tops} | set(  # an exit netted over several positions has none
        ExitShare.objects.filter(order__in=tops).values_list("position_id", flat=True))
    unprotected = []
    for position in Position.objects.filter(pk__in=touched - {None}):
        change = position_follow(position=position)
        if change != Change.NONE:
            report.changes[position.pk] = str(change)
        if change == Change.UNPROTECTED:
            unprotected.append(position)
    if unprotected:
        for result in protection_audit(positions=unprotected):  # PROTECTION_POLICY at once
            report.changes[result.position.pk] += f" -> {result.action}"
    _confirmed(by)
    if report.changes:
        event_record(kind=RiskEventKind.ORDER_SYNCED, reason="broker sync", message=report.summary())
    return report


def _confirmed(by: str) -> None:
    """Every position's protection was just confirmed with the broker (one row: the positions'
    own protection_checked_at says when each last changed or was judged)."""
    now = timezone.now()
    if not Heartbeat.objects.filter(name=by).update(last_broker_sync_at=now) and by == MONITOR:
        Heartbeat.objects.get_or_create(name=MONITOR, defaults={"last_broker_sync_at": now})  # its first cycle
