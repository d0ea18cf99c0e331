"""Run in a fresh subprocess: install an audit hook and limits BEFORE torchsmith is imported, read
every file of a corpus, and print one JSON line per file with what happened.

Usage: python _audit_runner.py CORPUS_DIR   (each entry: a file or folder; its name says what it is)
"""

from __future__ import annotations

import contextlib
import json
import os
import resource
import signal
import sys
import time

EXEC_EVENTS = {"exec", "compile", "os.system", "subprocess.Popen", "os.exec", "os.posix_spawn", "os.spawn",
               "os.fork", "ctypes.dlopen", "code.__new__", "builtins.input", "pty.spawn"}  # fmt: skip
NET_EVENTS = {"socket.connect", "socket.getaddrinfo", "socket.gethostbyname", "urllib.Request",
              "http.client.connect"}  # fmt: skip
events: list[tuple[str, str]] = []
armed = [False]


def hook(event: str, args: tuple) -> None:
    if not armed[0]:
        return
    if event == "compile" and len(args) > 1 and str(args[1]).endswith(".py") and os.path.isfile(str(args[1])):
        return  # the import system compiling a module from disk (its import event is checked)
    code = args[0] if event == "exec" and args else None
    if getattr(code, "co_name", "") == "<module>" and os.path.isfile(getattr(code, "co_filename", "")):
        return  # a module body run by an import (its import event is checked)
    if event in EXEC_EVENTS or event in NET_EVENTS:
        events.append((event, repr(args)[:120]))
    elif event == "import":
        events.append(("import", str(args[0])))


sys.addaudithook(hook)  # before torchsmith (or torch) is imported
LIMIT = 512 << 20
resource.setrlimit(resource.RLIMIT_CPU, (120, 130))  # a hard backstop for the whole run


def rss_kib() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss


class Timeout(Exception):
    pass


def on_alarm(*_):
    raise Timeout


signal.signal(signal.SIGALRM, on_alarm)

import torchsmith  # noqa: E402
from torchsmith.checkpoint.dcp import read_dcp_metadata  # noqa: E402
from torchsmith.checkpoint.inspect import inspect_checkpoint  # noqa: E402
from torchsmith.checkpoint.verify import verify_checkpoint  # noqa: E402
from torchsmith.errors import TorchsmithError  # noqa: E402

OPS = {
    "inspect": inspect_checkpoint,
    "read_state_dict": torchsmith.read_state_dict,
    "verify": verify_checkpoint,
    "load_model": torchsmith.load_model,
}


def warm(corpus: str) -> None:
    # Lazy imports of torchsmith's own modules happen once, on a benign file, before arming.
    import torch

    ok = os.path.join(corpus, "..", "warm.pt")
    torch.save({"w": torch.zeros(1)}, ok)
    for fn in OPS.values():
        with contextlib.suppress(TorchsmithError):
            fn(ok)
    # The libraries a recorded model is built with, imported (and their dataclasses made) up front.
    import timm  # noqa: F401
    import torch.distributed.checkpoint

    import torchsmith.spec
    import torchsmith.surgery

    m = torchsmith.create_model("torchvision:resnet18", num_classes=2)
    torchsmith.apply_surgery(m, [{"op": "freeze", "patterns": ["re:fc"]}])
    torchsmith.create_model("timm:resnet18")
    torchsmith.spec.validate_spec({"chain": [{"type": "torchvision:fasterrcnn_mobilenet_v3_large_fpn"}]})


def main() -> None:
    corpus = sys.argv[1]
    warm(corpus)
    for name in sorted(os.listdir(corpus)):
        path = os.path.join(corpus, name)
        for op, fn in OPS.items():
            if name.startswith("dcp") and op == "load_model":
                fn = read_dcp_metadata
            events.clear()
            base = rss_kib()
            start = time.perf_counter()
            outcome = "ok"
            signal.alarm(10)
            armed[0] = True
            try:
                fn(path)
            except TorchsmithError as e:
                outcome = "error:" + type(e).__name__ + ":" + str(e).splitlines()[0][:160] if str(e) else ""
            except Timeout:
                outcome = "timeout"
            except BaseException as e:
                outcome = f"escape:{type(e).__name__}:{str(e)[:160]}"
            finally:
                armed[0] = False
                signal.alarm(0)
            print(json.dumps({
                "file": name, "op": op, "outcome": outcome, "seconds": round(time.perf_counter() - start, 3),
                "rss_growth_mib": round((rss_kib() - base) / 1024, 1), "events": events[:10],
            }), flush=True)  # fmt: skip


if __name__ == "__main__":
    main()
