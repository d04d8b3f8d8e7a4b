"""tether leaves the process group it joined at interpreter exit (a gloo process that exits without
``destroy_process_group`` can abort during finalisation, failing a finished torchrun run)."""

import os
import subprocess
import sys

from tether.train import distributed as distributed_module
from tether.train.distributed import Distributed, leave_process_group


def test_joining_registers_leaving_at_exit(monkeypatch):
    registered, joined = [], []
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setattr(distributed_module.dist, "is_initialized", lambda: False)
    monkeypatch.setattr(distributed_module.dist, "init_process_group", lambda backend: joined.append(backend))
    monkeypatch.setattr(distributed_module.dist, "get_rank", lambda: 0)
    monkeypatch.setattr(distributed_module.dist, "get_world_size", lambda: 2)
    monkeypatch.setattr(distributed_module.atexit, "register", registered.append)
    Distributed.from_environment()
    assert joined == ["gloo"] and registered == [leave_process_group]


def test_a_torchrun_script_leaves_the_group_before_exit(tmp_path):
    script = tmp_path / "job.py"
    script.write_text(
        "import atexit, torch, torch.distributed as dist\n"
        "from tether.train.distributed import Distributed\n"
        # registered before tether's handler, so it runs after it (atexit is last-in, first-out)
        "import os, pathlib\n"
        "out = pathlib.Path(__file__).with_name('rank-' + os.environ['RANK'])\n"
        "atexit.register(lambda: out.write_text(str(dist.is_initialized())))\n"
        "d = Distributed.from_environment()\n"
        "t = torch.ones(1); dist.all_reduce(t); assert t.item() == 2\n")
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    done = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                           str(script)], env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    # both ranks had left the group when the interpreter exited
    assert [(tmp_path / f"rank-{r}").read_text() for r in (0, 1)] == ["False", "False"]


def test_ending_a_worker_runs_the_exit_handlers_then_exits_with_its_code(tmp_path):
    marker = tmp_path / "handlers-ran"
    code = ("import atexit, pathlib\n"
            f"atexit.register(lambda: pathlib.Path({str(marker)!r}).write_text('yes'))\n"
            "from tether.train.distributed import end_worker_process\n"
            "print('flushed', end='')\n"
            "end_worker_process(3)\n"
            "raise SystemExit('not reached')\n")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 3 and done.stdout == "flushed" and marker.read_text() == "yes", done.stderr


def test_the_command_line_ends_a_torchrun_worker_that_way(monkeypatch):
    from tether import cli

    ended = []
    monkeypatch.setattr(distributed_module, "joined_process_group", lambda: True)
    monkeypatch.setattr(distributed_module, "end_worker_process", ended.append)
    monkeypatch.setattr(sys, "argv", ["tether", "config", "show"])
    assert cli.main() == 0 and ended == [0]
    assert cli.main(["config", "show"]) == 0 and ended == [0]  # called in-process with arguments: returns
