"""Run `ncs` in a subprocess that SIGKILLs itself at the Nth call of one fault site.

    python _fault_driver.py SITE N -- ncs arguments...
    fork_run(SITE, N, ncs_arguments)      # the same in a forked child of the test process

Sites (patched here, in the child only; the product code has no test hooks):
  step    the Nth optimizer step (mid-epoch)
  eval    the Nth ModelTrainer.evaluate call (during evaluation)
  write   the Nth safetensors file write: half the bytes reach the temporary file, then the kill
          (mid-write of a checkpoint, an init/best snapshot, a final model or a mask file)
  json    the Nth JSON/YAML write of the run directory: half the text, then the kill
N = 0 never kills (the child then counts the calls of every site into $NCS_FAULT_COUNTS).
"""
import json
import os
import signal
import sys

SITE, AT = "none", 0
COUNTS = {"step": 0, "eval": 0, "write": 0, "json": 0}


def hit(site, before_kill=None):
    COUNTS[site] += 1
    if site == SITE and COUNTS[site] == AT:
        if before_kill is not None:
            before_kill()
        os.kill(os.getpid(), signal.SIGKILL)


def run_with_fault(site, at, args, counts_path=None):
    """Patch the fault sites (in this process: call it in a child), run `ncs ARGS`, return rc."""
    global SITE, AT
    SITE, AT = site, int(at)
    import ncs.report
    import safetensors.torch as st

    ncs.report.plot_curves = ncs.report.plot_masks = lambda *a, **k: None  # no figures: not compared

    from ncs import cli
    from ncs.train import checkpoint, stages

    real_step = stages.Optimizers.step

    def step(self, *a, **k):
        hit("step")
        return real_step(self, *a, **k)

    real_eval = stages.ModelTrainer.evaluate

    def evaluate(self, *a, **k):
        hit("eval")
        return real_eval(self, *a, **k)

    real_save = st.save_file

    def save_file(tensors, filename, metadata=None):
        def half():
            real_save(tensors, filename, metadata=metadata)
            size = os.path.getsize(filename)
            with open(filename, "r+b") as f:
                f.truncate(size // 2)
        hit("write", half)
        return real_save(tensors, filename, metadata=metadata)

    real_text = checkpoint._atomic_write_text

    def write_text(path, text):
        def half():
            with open(path + ".partial", "w") as f:
                f.write(text[: len(text) // 2])
        hit("json", half)
        return real_text(path, text)

    from ncs.train import runner

    real_dump = runner.dump_config

    def dump_config(cfg, path):
        def half():
            import yaml
            with open(path + ".tmp", "w") as f:
                text = yaml.safe_dump(cfg.to_dict())
                f.write(text[: len(text) // 2])
        hit("json", half)
        return real_dump(cfg, path)

    runner.dump_config = dump_config
    stages.Optimizers.step = step
    stages.ModelTrainer.evaluate = evaluate
    st.save_file = save_file
    checkpoint._atomic_write_text = write_text
    rc = cli.main(list(args))
    if counts_path:
        with open(counts_path, "w") as f:
            json.dump(COUNTS, f)
    return rc


def fork_run(site, at, args, counts_path=None):
    """run_with_fault in a forked child (no interpreter start-up); returns its wait status as
    (exit code or None, killing signal or None)."""
    sys.stdout.flush()
    sys.stderr.flush()
    pid = os.fork()
    if pid == 0:
        code = 99
        try:
            code = run_with_fault(site, at, args, counts_path)
        finally:
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    if os.WIFSIGNALED(status):
        return None, os.WTERMSIG(status)
    return os.WEXITSTATUS(status), None


if __name__ == "__main__":
    sys.exit(run_with_fault(sys.argv[1], sys.argv[2], sys.argv[sys.argv.index("--") + 1:]))
