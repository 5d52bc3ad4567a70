"""An SMTP server for the end-to-end tests that answers like real mail servers do and passes
accepted mail on to MailDev, where the tests read it.

Every RCPT TO address is printed as received ("RCPT <address>"). Recipients are answered by
their local part:
  reject...  550 5.1.1 (permanent: no such mailbox)
  defer...   451 4.7.1 every time (transient, never recovers)
  grey...    451 4.7.1 for the first two attempts per address, then accepted (greylisting)
  second...  the first mail accepted, then 451 4.7.1 for the next two attempts, then accepted
             (an invitation goes through; the welcome mail after it is deferred twice)
  hold...    no answer to RCPT TO until the test releases the address by creating the file
             RELEASE_DIR/<address>; prints "HELD <address>" when it starts holding and
             "RELEASED <address>" before it answers (then as "anything else")
  anything else: accepted

Accepted mail goes on to MailDev, except for quoted local parts ("john doe"@...), which MailDev
refuses with 501: the gate keeps those itself and prints "STORED <recipient> <Message-ID>".

With FORWARD_PORT 0 the gate is a mail sink of its own: it keeps every accepted mail and prints
"DELIVERED <EHLO name> <recipient> <Message-ID> <link>" for each recipient, the link being the
first /confirm link of the mail's text (or "-"). The fault campaign (tests/chaos) reads these
lines as the users' mailboxes.

GATE_MODE_FILE names a file whose content changes how the gate answers, read at every mail:
  accept (or no file)  as above
  refuse               451 4.3.2 to every MAIL FROM (a server refusing mail for now)
  slow SECONDS         DATA answered only after SECONDS (the mail is kept, even when the
                       client gave up waiting for the answer)

Optionally, like a submission server, it requires STARTTLS and AUTH:
  GATE_TLS_CERT, GATE_TLS_KEY   offer STARTTLS with this certificate and require it before mail
  GATE_AUTH_USER, GATE_AUTH_PASSWORD
                                require AUTH with these credentials (after STARTTLS when offered)
  GATE_AUTH_MECHANISMS          the mechanisms offered, e.g. "LOGIN" (default "PLAIN LOGIN")
Each login is printed as "AUTH <mechanism> <login> ok|refused", and each MAIL FROM as
"MAIL tls=yes|no auth=yes|no".

Usage: gate.py LISTEN_PORT FORWARD_HOST FORWARD_PORT [RELEASE_DIR]  (FORWARD_PORT 0: keep the mail)
"""

import asyncio
import collections
import email
import os
import re
import smtplib
import ssl
import sys

from aiosmtpd.controller import Controller
from aiosmtpd.smtp import AuthResult, LoginPassword


CONFIRM_LINK = re.compile(r"https?://\S+/confirm\?code=[A-Za-z0-9_.~%-]+")


def mode():
    """What GATE_MODE_FILE says: ("accept"|"refuse"|"slow", seconds)."""
    path = os.environ.get("GATE_MODE_FILE")
    try:
        words = open(path).read().split() if path else []
    except OSError:
        words = []
    if not words:
        return ("accept", 0.0)
    return (words[0], float(words[1]) if len(words) > 1 else 0.0)


def confirm_link(content):
    """The first /confirm link in the mail's text part, or "-"."""
    message = email.message_from_bytes(content)
    for part in message.walk():
        if part.get_content_type() == "text/plain":
            text = (part.get_payload(decode=True) or b"").decode("utf-8", "replace")
            found = CONFIRM_LINK.search(text)
            if found:
                return found.group(0)
    return "-"


class Gate:
    def __init__(self, forward_host, forward_port, release_dir):
        self.forward = (forward_host, forward_port)
        self.release_dir = release_dir
        self.seen = collections.Counter()

    async def handle_MAIL(self, server, session, envelope, address, mail_options):
        if mode()[0] == "refuse":
            return "451 4.3.2 <%s>: not accepting mail now, try again later" % address
        print(
            "MAIL tls=%s auth=%s"
            % ("yes" if session.ssl else "no", "yes" if session.authenticated else "no"),
            flush=True,
        )
        envelope.mail_from = address
        envelope.mail_options.extend(mail_options)
        return "250 OK"

    async def handle_RCPT(self, server, session, envelope, address, rcpt_options):
        # Every recipient as it came on the wire, for the tests to read back.
        print("RCPT %s" % address, flush=True)
        local = address.rsplit("@", 1)[0].strip('"').lower()
        if local.startswith("reject"):
            return "550 5.1.1 <%s>: mailbox unavailable" % address
        if local.startswith("defer"):
            return "451 4.7.1 <%s>: try again later" % address
        if local.startswith("hold"):
            # Only this session waits: others are served meanwhile.
            print("HELD %s" % address, flush=True)
            while not os.path.exists(os.path.join(self.release_dir or "", address)):
                await asyncio.sleep(0.05)
            print("RELEASED %s" % address, flush=True)
        if local.startswith("second"):
            self.seen[address] += 1
            if self.seen[address] in (2, 3):
                return "451 4.7.1 <%s>: try again later" % address
        if local.startswith("grey"):
            self.seen[address] += 1
            if self.seen[address] <= 2:
                return "451 4.7.1 <%s>: greylisted, try again later" % address
        envelope.rcpt_tos.append(address)
        return "250 OK"

    async def handle_DATA(self, server, session, envelope):
        how, seconds = mode()
        if how == "slow":
            await asyncio.sleep(seconds)
        if self.forward[1] == 0:
            message_id = email.message_from_bytes(envelope.original_content).get("Message-ID", "")
            link = confirm_link(envelope.original_content)
            for r in envelope.rcpt_tos:
                print("DELIVERED %s %s %s %s" % (session.host_name, r, message_id, link), flush=True)
            return "250 2.0.0 OK: kept by the gate"
        kept = [r for r in envelope.rcpt_tos if r.startswith('"')]
        passed = [r for r in envelope.rcpt_tos if not r.startswith('"')]
        message_id = email.message_from_bytes(envelope.original_content).get("Message-ID", "")
        for r in kept:
            print("STORED %s %s" % (r, message_id), flush=True)

        def relay():
            if not passed:
                return
            with smtplib.SMTP(*self.forward, timeout=10) as smtp:
                smtp.sendmail(envelope.mail_from, passed, envelope.original_content)

        try:
            await asyncio.get_running_loop().run_in_executor(None, relay)
        except Exception as e:  # the forward target is down: ask the sender to retry
            return "451 4.3.0 cannot pass the message on: %s" % e
        return "250 2.0.0 OK: queued as gate"


class Authenticator:
    def __init__(self, user, password):
        self.expected = (user.encode(), password.encode())

    def __call__(self, server, session, envelope, mechanism, auth_data):
        ok = isinstance(auth_data, LoginPassword) and tuple(auth_data) == self.expected
        login = auth_data.login.decode(errors="replace") if isinstance(auth_data, LoginPassword) else "?"
        print("AUTH %s %s %s" % (mechanism, login, "ok" if ok else "refused"), flush=True)
        # Not handled here: aiosmtpd answers a refusal with 535 itself.
        return AuthResult(success=ok, handled=False)


def submission_options():
    """STARTTLS and AUTH as the environment asks (see the module's description)."""
    options = {}
    cert, key = os.environ.get("GATE_TLS_CERT"), os.environ.get("GATE_TLS_KEY")
    if cert:
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        context.load_cert_chain(cert, key)
        options.update(tls_context=context, require_starttls=True)
    user = os.environ.get("GATE_AUTH_USER")
    if user:
        offered = os.environ.get("GATE_AUTH_MECHANISMS", "PLAIN LOGIN").split()
        options.update(
            authenticator=Authenticator(user, os.environ["GATE_AUTH_PASSWORD"]),
            auth_required=True,
            auth_require_tls=bool(cert),
            auth_exclude_mechanism=[m for m in ("PLAIN", "LOGIN") if m not in offered],
        )
    return options


def main():
    port, host, forward_port = int(sys.argv[1]), sys.argv[2], int(sys.argv[3])
    release_dir = sys.argv[4] if len(sys.argv) > 4 else None
    controller = Controller(
        Gate(host, forward_port, release_dir),
        hostname="127.0.0.1",
        port=port,
        **submission_options(),
    )
    controller.start()
    print("gate listening on 127.0.0.1:%d, forwarding to %s:%d" % (port, host, forward_port), flush=True)
    try:
        asyncio.run(asyncio.Event().wait())
    finally:
        controller.stop()


if __name__ == "__main__":
    main()
