"""``python -m capsa``: the one entry point, in the role its environment names.

``CAPSA_ROLE=supervisor`` makes this process the job supervisor (started by the
daemon, see capsa.runtime.supervisor), ``CAPSA_ROLE=zygote`` the single-threaded
fork server the supervisor starts; otherwise it is the ``capsa`` CLI.
"""

import os
from pathlib import Path


def _main() -> None:
    if os.environ.get("CAPSA_ROLE") == "zygote":
        import socket

        from capsa.runtime.zygote import zygote_main

        zygote_main(socket.socket(fileno=int(os.environ["CAPSA_ZYGOTE_FD"])))
    if os.environ.get("CAPSA_ROLE") == "supervisor":
        from capsa.runtime.supervisor import main

        main(Path(os.environ.get("CAPSA_HOME", "/var/lib/capsa")))
        return
    from capsa.cli.main import entry

    entry()


if __name__ == "__main__":
    _main()
