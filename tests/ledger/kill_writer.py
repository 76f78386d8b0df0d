"""Writers for the SIGKILL test: ``python -m tests.ledger.kill_writer <db>`` is a zygote that
imports p2pshard once (about 2 s) and, for each line on stdin, forks a writer process, prints
``pid <n>``, waits for the writer to die and prints ``dead``. A writer opens the store and settles
rounds made by :func:`tests.ledger.helpers.block_for` as fast as it can, printing ``round <r>``
after each commit, until it is killed."""

from __future__ import annotations

import os
import sys
import traceback

from p2pshard.ledger import LedgerStore
from tests.ledger.helpers import block_for, fresh


def write(path: str) -> None:
    store = LedgerStore.open(path, fresh())
    while True:
        out = store.append(block_for(store.state))
        assert not hasattr(out, "result"), out
        print(f"round {store.round - 1}", flush=True)


def main(path: str) -> None:
    for _ in sys.stdin:
        go_r, go_w = os.pipe()  # the writer starts once "pid" is out, so it is always the first line
        pid = os.fork()
        if pid == 0:
            try:
                os.close(go_w)
                os.read(go_r, 1)
                os.close(go_r)
                write(path)
            except BaseException:
                traceback.print_exc()
            finally:
                os._exit(1)
        os.close(go_r)
        print(f"pid {pid}", flush=True)
        os.write(go_w, b"g")
        os.close(go_w)
        os.waitpid(pid, 0)
        print("dead", flush=True)


if __name__ == "__main__":
    main(sys.argv[1])
