"""The layout the import contracts (.importlinter) can't see: which module may change orders."""

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
ORDER_WRITES = {"submit_bracket", "submit_oco_exit", "submit_market", "cancel_order", "cancel_all_orders",
                "replace_order", "close_position", "close_all_positions"}


def _broker_writes(path: Path) -> set[str]:
    """Names of the broker's order-writing functions a module uses (broker.x or imported by name)."""
    used = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Attribute) and node.attr in ORDER_WRITES and getattr(node.value, "id", "") == "broker":
            used.add(node.attr)
        if isinstance(node, ast.ImportFrom) and (node.module or "").endswith("broker"):
            used |= {alias.name for alias in node.names if alias.name in ORDER_WRITES}
    return used


def test_only_trading_orders_sends_or_cancels_orders():
    writers = {}
    for path in ROOT.glob("*/**/*.py"):
        relative = path.relative_to(ROOT)
        if relative.parts[0] in (".venv", "tests", "paper_exchange", "bench") or relative == Path("trading/broker.py"):
            continue
        used = _broker_writes(path)
        if used:
            writers[str(relative)] = used
    assert set(writers) == {"trading/orders.py"}, writers
