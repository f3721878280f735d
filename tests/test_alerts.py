"""Alert storage and delivery: email through Django's mail, Apprise URLs (json://) and the
former ALERT_WEBHOOK_URL (through Apprise, the same {"text": ...} body) against a local
http.server, and a dead endpoint that must never hold up the monitor. Apprise is not mocked."""

import json
import socket
import threading
import time
from decimal import Decimal
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
    settings.ALERT_APPRISE_URLS = []
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
        self.apprise_url = f"json://hook-user:hook-password@127.0.0.1:{self.server.server_address[1]}/apprise/secret-path"
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


def _closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]  # nothing listens there any more


@pytest.mark.django_db
def test_the_former_webhook_still_gets_slack_json_through_apprise_and_email_is_sent(webhook, settings):
    hook = webhook()
    settings.ALERT_WEBHOOK_URL = hook.url
    alert = alert_send(kind="unprotected", message="long 10 AAPL #1 has no stop")
    assert (alert.email_status, alert.apprise_status) == (DeliveryStatus.PENDING, DeliveryStatus.PENDING)

    alert_deliver(alert=alert)

    alert.refresh_from_db()
    assert (alert.email_status, alert.apprise_status) == (DeliveryStatus.SENT, DeliveryStatus.SENT)
    assert alert.last_error == ""
    (body,) = hook.bodies
    assert body == {"text": "[Catalyst] Unprotected position: long 10 AAPL #1 has no stop"}
    (message,) = mail.outbox
    assert message.to == ["ops@example.com"]
    assert message.subject.startswith("[Catalyst] Unprotected position")
    assert "long 10 AAPL #1 has no stop" in message.body


@pytest.mark.django_db
def test_apprise_urls_get_apprise_json_with_its_credentials(webhook, settings):
    hook, second = webhook(), webhook()
    settings.ALERT_APPRISE_URLS = [hook.apprise_url, second.apprise_url]
    settings.ALERT_EMAIL_TO = []
    alert = alert_send(kind="fallback_exit", message="Fallback exit by the monitor for long 10 AAPL #4")
    alert_deliver(alert=alert)
    alert.refresh_from_db()
    assert (alert.email_status, alert.apprise_status) == (DeliveryStatus.SKIPPED, DeliveryStatus.SENT)
    for target in (hook, second):
        (body,) = target.bodies
        assert body["message"] == "[Catalyst] Fallback exit by the monitor: Fallback exit by the monitor for long 10 AAPL #4"
        assert body["type"] == "info"


@pytest.mark.django_db
def test_a_failing_url_is_retried_then_succeeds_and_only_it_is_retried(webhook, settings):
    flaky, steady = webhook(statuses=(500, 503, 200)), webhook()
    settings.ALERT_APPRISE_URLS = [flaky.apprise_url, steady.apprise_url]
    settings.ALERT_EMAIL_TO = []
    alert = alert_send(kind="operator_close", message="exit sent")
    assert alert.email_status == DeliveryStatus.SKIPPED

    alert_deliver(alert=alert)

    alert.refresh_from_db()
    assert alert.apprise_status == DeliveryStatus.SENT
    assert alert.attempts == 3 and len(flaky.bodies) == 3 and len(steady.bodies) == 1


@pytest.mark.django_db
def test_a_url_answering_errors_is_marked_failed_with_the_status_not_the_url(webhook, settings):
    hook = webhook(statuses=(500,))
    settings.ALERT_APPRISE_URLS = [hook.apprise_url]
    alert = alert_send(kind="exit_rejected", message="exit rejected")
    alert_deliver(alert=alert)
    alert.refresh_from_db()
    assert alert.apprise_status == DeliveryStatus.FAILED
    assert alert.email_status == DeliveryStatus.SENT
    assert alert.last_error == "apprise URL #1 (json): HTTP 500 after 3 attempt(s)"
    assert len(hook.bodies) == 3  # 1 + ALERT_WEBHOOK_RETRIES


@pytest.mark.django_db
def test_a_hung_endpoint_times_out(webhook, settings):
    hook = webhook(delay=3)
    settings.ALERT_APPRISE_URLS = [hook.apprise_url]
    settings.ALERT_WEBHOOK_TIMEOUT_SECONDS = Decimal("0.3")
    settings.ALERT_WEBHOOK_RETRIES = 1
    alert = alert_send(kind="monitor_errors", message="monitor failing")
    started = time.monotonic()
    alert_deliver(alert=alert)
    assert time.monotonic() - started < 2
    alert.refresh_from_db()
    assert alert.apprise_status == DeliveryStatus.FAILED
    assert alert.last_error == "apprise URL #1 (json): connection error or timeout after 2 attempt(s)"


@pytest.mark.django_db(transaction=True)
def test_a_dead_webhook_never_holds_up_reconciliation(paper_exchange, settings):
    """The real path: alert rows written during the run, delivery threads started on commit."""
    settings.ALERT_APPRISE_URLS = [f"json://127.0.0.1:{_closed_port()}/hook"]
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
        assert alert.apprise_status == DeliveryStatus.FAILED
        assert alert.email_status == DeliveryStatus.SENT
        assert "apprise URL #1 (json): connection error" in alert.last_error
        assert alert.attempts == 1 + 3  # one email, three webhook tries


@pytest.mark.django_db
def test_secrets_are_kept_out_of_stored_and_sent_messages_and_the_log(webhook, settings, caplog):
    hook, dead = webhook(), webhook(statuses=(500,))
    settings.ALERT_WEBHOOK_URL = hook.url
    settings.ALERT_APPRISE_URLS = [dead.apprise_url]
    settings.ALPACA_API_KEY = "AKLIVEKEY123456"
    settings.ALPACA_SECRET_KEY = "verysecretvalue987654"
    with caplog.at_level("DEBUG"):
        alert = alert_send(kind="exit_rejected",
                           message=f"broker said no: key AKLIVEKEY123456 secret_key=verysecretvalue987654 "
                                   f"token: abcdef hook {hook.url} apprise {dead.apprise_url}")
        alert_deliver(alert=alert)
    alert.refresh_from_db()
    assert alert.apprise_status == DeliveryStatus.FAILED  # the dead one; the former webhook got it
    for text in (alert.message, alert.last_error, hook.bodies[0]["text"], mail.outbox[0].body, caplog.text):
        for secret in ("AKLIVEKEY123456", "verysecretvalue987654", "abcdef", "secret-path", "hook-password"):
            assert secret not in text
    assert "[redacted]" in alert.message


def test_scrub_leaves_ordinary_text_alone(settings):
    settings.ALPACA_API_KEY = ""
    text = "Fallback exit by the monitor for long 10 AAPL #4: sell 10 at market, close reason STOP_LOSS_HIT"
    assert scrub(text) == text


@pytest.mark.django_db
def test_nothing_configured_means_skipped_and_no_thread(settings, django_capture_on_commit_callbacks):
    settings.ALERT_EMAIL_TO = []
    with django_capture_on_commit_callbacks() as callbacks:
        alert = alert_send(kind="adopted", message="adopted")
    assert (alert.email_status, alert.apprise_status) == (DeliveryStatus.SKIPPED, DeliveryStatus.SKIPPED)
    assert callbacks == []


@pytest.mark.django_db
def test_a_failing_mail_backend_does_not_stop_apprise(webhook, settings):
    hook = webhook()
    settings.ALERT_APPRISE_URLS = [hook.apprise_url]
    settings.MAILERS = {"default": {"BACKEND": "tests.test_alerts.BrokenEmailBackend"}}
    alert = alert_send(kind="mismatch", message="qty differs")
    alert_deliver(alert=alert)
    alert.refresh_from_db()
    assert alert.email_status == DeliveryStatus.FAILED and "email: ConnectionRefusedError" in alert.last_error
    assert alert.apprise_status == DeliveryStatus.SENT


@pytest.mark.django_db
def test_alerts_left_pending_are_delivered_by_the_sweeper(webhook, settings):
    hook = webhook()
    settings.ALERT_APPRISE_URLS = [hook.apprise_url]
    alert = alert_send(kind="adopted", message="adopted while the process was exiting")
    Alert.objects.filter(pk=alert.pk).update(created_at=alert.created_at.replace(year=alert.created_at.year - 1))
    assert alerts_deliver_pending(older_than_seconds=60) == 1
    alert.refresh_from_db()
    assert (alert.email_status, alert.apprise_status) == (DeliveryStatus.SENT, DeliveryStatus.SENT)
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
