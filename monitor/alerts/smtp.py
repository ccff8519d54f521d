"""E-mail sink: SMTP with plain, STARTTLS or TLS, optional login, the evidence PNG attached."""

from __future__ import annotations

import logging
import smtplib
import ssl
from email.message import EmailMessage
from email.utils import formatdate, make_msgid

from monitor.alerts.base import Sink, password
from monitor.alerts.config import EmailSinkConfig
from monitor.alerts.events import Alert, PermanentSinkError, SinkError

log = logging.getLogger(__name__)
_MAX_ATTACHMENT_BYTES = 10 * 2**20


def _permanent_code(code: object) -> bool:
    """An SMTP reply code that means "never" for this message (5xx), other than 530 (log in first).

    530 and a failed login (535) are the sink's configuration, not the alert: fixing the password must let
    the waiting alerts through, so those stay temporary.
    """
    return isinstance(code, int) and 500 <= code < 600 and code != 530


def smtp_error(exc: smtplib.SMTPException | OSError, where: str) -> SinkError:
    """The SinkError for what smtplib raised: permanent for 5xx replies about the sender, the recipients or
    the message (550 no such user, 553 malformed address, 552/554 message refused), temporary otherwise."""
    detail = f"SMTP {where}: {type(exc).__name__}: {exc}"
    if isinstance(exc, smtplib.SMTPRecipientsRefused):
        codes = [code for code, _ in exc.recipients.values()]
        if codes and all(_permanent_code(code) for code in codes):
            return PermanentSinkError(detail)
    elif isinstance(exc, (smtplib.SMTPSenderRefused, smtplib.SMTPDataError)) and _permanent_code(exc.smtp_code):
        return PermanentSinkError(detail)
    return SinkError(detail)


class EmailSink(Sink):
    """One message per alert to every recipient; a failure of the server or the login is retried.

    A 5xx refusal of the sender, of every recipient or of the message itself is permanent (smtp_error).
    """

    config: EmailSinkConfig

    def message(self, alert: Alert) -> EmailMessage:
        """The e-mail: subject from the alert's title, a short text body, the evidence image attached."""
        c = self.config
        msg = EmailMessage()
        msg["Subject"] = f"{c.subject_prefix} {alert.title()}".strip()
        msg["From"] = c.sender
        msg["To"] = ", ".join(c.to)
        msg["Date"] = formatdate(alert.created, localtime=False)
        msg["Message-ID"] = make_msgid(idstring=alert.id[:16])
        msg["X-Anomaly-Monitor-Source"] = alert.source
        msg["X-Anomaly-Monitor-Kind"] = alert.kind
        body = alert.text()
        evidence = alert.evidence if c.attach_evidence else None
        data = None
        if evidence is not None:
            try:
                if evidence.stat().st_size <= _MAX_ATTACHMENT_BYTES:
                    data = evidence.read_bytes()
                else:
                    body += f"\n(evidence image too large to attach: {evidence})"
            except OSError:
                body += f"\n(evidence image no longer available: {evidence})"
        msg.set_content(body + "\n")
        if data is not None and evidence is not None:
            subtype = "png" if evidence.suffix.lower() == ".png" else "jpeg"
            msg.add_attachment(data, maintype="image", subtype=subtype, filename=evidence.name)
        return msg

    def _tls_context(self) -> ssl.SSLContext:
        c = self.config
        ctx = ssl.create_default_context(cafile=str(c.ca_file) if c.ca_file else None)
        if not c.verify_tls:
            ctx.check_hostname = False
            ctx.verify_mode = ssl.CERT_NONE
        return ctx

    def send(self, alert: Alert) -> None:
        c = self.config
        secret = password(c.password_env, c.password_file)
        msg = self.message(alert)
        try:
            if c.security == "tls":
                smtp: smtplib.SMTP = smtplib.SMTP_SSL(c.host, c.effective_port, timeout=c.timeout_s,
                                                      context=self._tls_context())
            else:
                smtp = smtplib.SMTP(c.host, c.effective_port, timeout=c.timeout_s)
            with smtp:
                if c.security == "starttls":
                    smtp.starttls(context=self._tls_context())
                if c.username and secret is not None:
                    smtp.login(c.username, secret)
                refused = smtp.send_message(msg, from_addr=c.sender, to_addrs=c.to)
        except (smtplib.SMTPException, OSError) as exc:
            raise smtp_error(exc, f"{c.host}:{c.effective_port}") from None
        if refused and len(refused) == len(c.to):
            # smtplib raises SMTPRecipientsRefused for this itself; kept in case a server answers oddly.
            raise smtp_error(smtplib.SMTPRecipientsRefused(refused), f"{c.host}:{c.effective_port}")
        if refused:
            # The others got it: a retry would send them duplicates, so say so and count it delivered.
            log.warning("email_recipients_refused sink=%s refused=%s", self.name, ",".join(sorted(refused)))
