"""Alert storage and delivery: email through Django's mail, a Slack-compatible webhook on a
local http.server, and a dead webhook that must never hold up the monitor."""

import json
import socket
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from django.core import mail

from risk import alerts
from risk.alerts import alert_deliver, alert_send, alert_threads_join, alerts_deliver_pending, scrub
from risk.models import Alert, DeliveryStatus
from risk.reconcile import reconcile_run


@pytest.fixture(autouse=True)
def quick_retries(monkeypatch, settings):
    monkeypatch.setattr(alerts, "RETRY_BACKOFF_SECONDS", 0)
    settings.ALERT_EMAIL_TO = ["ops@example.com"]
    settings.ALERT_WEBHOOK_URL = ""
    settings.ALERT_WEBHOOK_RETRIES = 2
    settings.ALERT_WEBHOOK_TIMEOUT_SECONDS = 1


class _Webhook:
    """A tiny webhook on 127.0.0.1 that records each JSON body and answers with the given
    statuses in turn (the last one repeats)."""

    def __init__(self, statuses=(200,), delay: float = 0):
        self.bodies: list[dict] = []
        self.statuses = list(statuses)
        self.delay = delay
        hook = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):
                length = int(self.headers.get("Content-Length") or 0)
                hook.bodies.append(json.loads(self.rfile.read(length)))
                if hook.delay:
                    time.sleep(hook.delay)
                status = hook.statuses.pop(0) if len(hook.statuses) > 1 else hook.statuses[0]
                self.send_response(status)
                self.send_header("Content-Type", "text/plain")
                self.send_header("Content-Length", "2")
                self.end_headers()
                self.wfile.write(b"ok")

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hooks/T000/B000/secret-path"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self):
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def webhook():
    hooks = []

    def make(**kwargs) -> _Webhook:
        hook = _Webhook(**kwargs)
        hooks.append(hook)
        return hook

    yield make
    for hook in hooks:
        hook.close()


def _closed_port_url() -> str:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    return f"http://127.0.0.1:{port}/hook"  # nothing listens there any more


@pytest.mark.django_db
def test_a_working_webhook_gets_slack_json_and_email_is_sent(webhook, settings):
    hook = webhook()
    settings.ALERT_WEBHOOK_URL = hook.url
    alert = alert_send(kind="unprotected", message="long 10 AAPL #1 has no stop")
    assert (alert.email_status, alert.webhook_status) == (DeliveryStatus.PENDING, DeliveryStatus.PENDING)

    alert_deliver(alert=alert)

    alert.refresh_from_db()
    assert (alert.email_status, alert.webhook_status) == (DeliveryStatus.SENT, DeliveryStatus.SENT)
    assert alert.last_error == ""
    (body,) = hook.bodies
    assert set(body) == {"text"}
    assert body["text"] == "[Catalyst] Unprotected position: long 10 AAPL #1 has no stop"
    (message,) = mail.outbox
    assert message.to == ["ops@example.com"]
    assert message.subject.startswith("[Catalyst] Unprotected position")
    assert "long 10 AAPL #1 has no stop" in message.body


@pytest.mark.django_db
def test_the_webhook_is_retried_then_succeeds(webhook, settings):
    hook = webhook(statuses=(500, 503, 200))
    settings.ALERT_WEBHOOK_URL = hook.url
    settings.ALERT_EMAIL_TO = []
    alert = alert_send(kind="exit_sent", message="exit sent")
    assert alert.email_status == DeliveryStatus.SKIPPED

    alert_deliver(alert=alert)

    alert.refresh_from_db()
    assert alert.webhook_status == DeliveryStatus.SENT
    assert alert.attempts == 3 and len(hook.bodies) == 3


@pytest.mark.django_db
def test_a_webhook_answering_errors_is_marked_failed_with_the_status_not_the_url(webhook, settings):
    hook = webhook(statuses=(500,))
    settings.ALERT_WEBHOOK_URL = hook.url
    alert = alert_send(kind="exit_rejected", message="exit rejected")
    alert_deliver(alert=alert)
    alert.refresh_from_db()
    assert alert.webhook_status == DeliveryStatus.FAILED
    assert alert.email_status == DeliveryStatus.SENT
    assert "HTTP 500" in alert.last_error
    assert "secret-path" not in alert.last_error and "127.0.0.1" not in alert.last_error
    assert len(hook.bodies) == 3  # 1 + ALERT_WEBHOOK_RETRIES


@pytest.mark.django_db
def test_a_hung_webhook_times_out(webhook, settings):
    hook = webhook(delay=3)
    settings.ALERT_WEBHOOK_URL = hook.url
    settings.ALERT_WEBHOOK_TIMEOUT_SECONDS = "0.3"
    settings.ALERT_WEBHOOK_RETRIES = 1
    alert = alert_send(kind="monitor_errors", message="monitor failing")
    started = time.monotonic()
    alert_deliver(alert=alert)
    assert time.monotonic() - started < 2
    alert.refresh_from_db()
    assert alert.webhook_status == DeliveryStatus.FAILED and "Timeout" in alert.last_error


@pytest.mark.django_db(transaction=True)
def test_a_dead_webhook_never_holds_up_reconciliation(paper_exchange, settings):
    """The real path: alert rows written during the run, delivery threads started on commit."""
    settings.ALERT_WEBHOOK_URL = _closed_port_url()
    settings.ALERT_WEBHOOK_TIMEOUT_SECONDS = 3
    alerts.RETRY_BACKOFF_SECONDS = 1  # restored by the autouse fixture's monkeypatch
    for symbol in ("MSFT", "TSLA", "NVDA"):
        paper_exchange.control.set_quote(symbol, "99.99", "100.01")
        paper_exchange.control.set_position(symbol, 5, "100")

    started = time.monotonic()
    report = reconcile_run()  # autocommit, as in the monitor: each delivery thread starts at once
    elapsed = time.monotonic() - started

    assert report.count("adopted") == 3 and report.ok
    assert elapsed < 1.5, f"reconcile took {elapsed:.1f}s with a dead webhook"
    assert Alert.objects.filter(kind="adopted").count() == 3  # stored before any delivery

    assert alert_threads_join(timeout=20)
    for alert in Alert.objects.filter(kind="adopted"):
        assert alert.webhook_status == DeliveryStatus.FAILED
        assert alert.email_status == DeliveryStatus.SENT
        assert "webhook: ConnectionError" in alert.last_error
        assert alert.attempts == 1 + 3  # one email, three webhook tries


@pytest.mark.django_db
def test_secrets_are_kept_out_of_stored_and_sent_messages(webhook, settings):
    hook = webhook()
    settings.ALERT_WEBHOOK_URL = hook.url
    settings.ALPACA_API_KEY = "AKLIVEKEY123456"
    settings.ALPACA_SECRET_KEY = "verysecretvalue987654"
    alert = alert_send(kind="exit_rejected",
                       message=f"broker said no: key AKLIVEKEY123456 secret_key=verysecretvalue987654 "
                               f"token: abcdef hook {hook.url}")
    alert_deliver(alert=alert)
    alert.refresh_from_db()
    for text in (alert.message, hook.bodies[0]["text"], mail.outbox[0].body):
        assert "AKLIVEKEY123456" not in text
        assert "verysecretvalue987654" not in text
        assert "abcdef" not in text
        assert "secret-path" not in text
        assert "[redacted]" in text


def test_scrub_leaves_ordinary_text_alone(settings):
    settings.ALPACA_API_KEY = ""
    text = "Fallback exit sent for long 10 AAPL #4: STOP_LOSS_HIT at 139.50"
    assert scrub(text) == text


@pytest.mark.django_db
def test_nothing_configured_means_skipped_and_no_thread(settings, django_capture_on_commit_callbacks):
    settings.ALERT_EMAIL_TO = []
    with django_capture_on_commit_callbacks() as callbacks:
        alert = alert_send(kind="adopted", message="adopted")
    assert (alert.email_status, alert.webhook_status) == (DeliveryStatus.SKIPPED, DeliveryStatus.SKIPPED)
    assert callbacks == []


@pytest.mark.django_db
def test_a_failing_mail_backend_does_not_stop_the_webhook(webhook, settings):
    hook = webhook()
    settings.ALERT_WEBHOOK_URL = hook.url
    settings.MAILERS = {"default": {"BACKEND": "tests.test_alerts.BrokenEmailBackend"}}
    alert = alert_send(kind="mismatch", message="qty differs")
    alert_deliver(alert=alert)
    alert.refresh_from_db()
    assert alert.email_status == DeliveryStatus.FAILED and "email: ConnectionRefusedError" in alert.last_error
    assert alert.webhook_status == DeliveryStatus.SENT


@pytest.mark.django_db
def test_alerts_left_pending_are_delivered_by_the_sweeper(webhook, settings):
    hook = webhook()
    settings.ALERT_WEBHOOK_URL = hook.url
    alert = alert_send(kind="adopted", message="adopted while the process was exiting")
    Alert.objects.filter(pk=alert.pk).update(created_at=alert.created_at.replace(year=alert.created_at.year - 1))
    assert alerts_deliver_pending(older_than_seconds=60) == 1
    alert.refresh_from_db()
    assert (alert.email_status, alert.webhook_status) == (DeliveryStatus.SENT, DeliveryStatus.SENT)
    assert alerts_deliver_pending(older_than_seconds=60) == 0


class BrokenEmailBackend:
    def __init__(self, *args, **kwargs):
        pass

    def send_messages(self, messages):
        raise ConnectionRefusedError("smtp down")

    def open(self):
        pass

    def close(self):
        pass

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False
