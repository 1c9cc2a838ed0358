"""``train_net.py`` that kills itself with SIGKILL (as ``kill -9`` would) at a chosen point, for
the kill-and-resume tests of tests/engine/test_kill_resume.py:

    python killed_train_net.py POINT TRAIN_NET_ARGS...

POINT is one of

* ``save:NAME``: inside the save of checkpoint ``NAME.pth``, once its temporary file holds a few
  bytes (the run dies mid-write);
* ``saved:NAME``: right after checkpoint ``NAME.pth`` is complete and ``last_checkpoint`` names
  it, before anything else happens;
* ``step:N``: in iteration N, after its optimizer step and before the hooks that follow it.

Only this script patches; the project's code has no test switch.
"""

import os
import runpy
import signal
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, ROOT)


def _die():
    sys.stdout.flush()
    sys.stderr.flush()
    os.kill(os.getpid(), signal.SIGKILL)


def main():
    point, args = sys.argv[1], sys.argv[2:]
    kind, _, target = point.partition(":")
    if kind == "save":
        import torch

        real_save = torch.save

        def save(obj, f, *a, **k):
            name = os.path.basename(getattr(f, "name", str(f)))
            if name.startswith(f".{target}.pth.tmp-"):
                f.write(b"PK\x03\x04 a checkpoint cut off by kill -9")
                f.flush()
                _die()
            return real_save(obj, f, *a, **k)

        torch.save = save
    elif kind == "saved":
        from lite_detr.checkpoint import LiteDetrCheckpointer

        real_tag = LiteDetrCheckpointer.tag_last_checkpoint

        def tag_last_checkpoint(self, basename):
            real_tag(self, basename)
            if basename == f"{target}.pth":
                _die()

        LiteDetrCheckpointer.tag_last_checkpoint = tag_last_checkpoint
    elif kind == "step":
        from lite_detr.engine.train_loop import LiteDetrTrainer

        real_step = LiteDetrTrainer.run_step

        def run_step(self):
            real_step(self)
            if self.iter == int(target):
                _die()

        LiteDetrTrainer.run_step = run_step
    else:
        raise SystemExit(f"unknown kill point {point!r}")
    sys.argv = [os.path.join(ROOT, "train_net.py"), *args]
    runpy.run_path(sys.argv[0], run_name="__main__")


if __name__ == "__main__":
    main()
