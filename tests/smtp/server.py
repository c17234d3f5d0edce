"""A local SMTP server for tests: STARTTLS required, AUTH LOGIN/PLAIN required (one
user), every accepted message written to OUT_DIR as <n>.eml. Listens on 127.0.0.1:PORT
and prints "ready" once it accepts connections.

Usage: server.py PORT CERT_PEM KEY_PEM USER PASSWORD OUT_DIR
"""

import asyncio
import os
import ssl
import sys

from aiosmtpd.controller import Controller
from aiosmtpd.smtp import AuthResult, LoginPassword


def main():
    port, cert, key, user, password, out = sys.argv[1:7]
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(cert, key)
    count = {"n": 0}

    class Handler:
        async def handle_DATA(self, server, session, envelope):
            count["n"] += 1
            path = os.path.join(out, f"{count['n']}.eml")
            with open(path + ".tmp", "wb") as f:
                f.write(envelope.original_content or envelope.content)
            os.replace(path + ".tmp", path)
            return "250 OK"

    def authenticator(server, session, envelope, mechanism, auth_data):
        ok = (
            isinstance(auth_data, LoginPassword)
            and auth_data.login.decode() == user
            and auth_data.password.decode() == password
        )
        return AuthResult(success=ok)

    controller = Controller(
        Handler(),
        hostname="127.0.0.1",
        port=int(port),
        tls_context=context,
        require_starttls=True,
        auth_required=True,
        auth_require_tls=True,
        authenticator=authenticator,
        server_hostname="localhost",
    )
    controller.start()
    print("ready", flush=True)
    try:
        asyncio.new_event_loop().run_forever()
    finally:
        controller.stop()


if __name__ == "__main__":
    main()
