"""Fake `python -m accelerate.commands.launch` (accelerate 1.6.0's option list, simple single-process launcher).

What it imitates (code: accelerate/commands/launch.py simple_launcher; run: docs/engine-notes.md):
- options parsed against accelerate's own launch parser (options.json), unknown ones -> exit 2;
- the "following values were not passed" warning when --num_processes / --num_machines /
  --mixed_precision / --dynamo_backend are missing and no --config_file is given;
- the script runs as a child `[python, script, args...]`; a failing child is re-raised as
  subprocess.CalledProcessError (traceback, exit 1), or a bare exit 1 with --quiet.
"""

import json
import os
import subprocess
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))
from _fake import common

WARN_DEFAULTS = {"num_processes": 0, "num_machines": 1, "mixed_precision": "'no'", "dynamo_backend": "'no'"}


def main() -> None:
    argv = sys.argv[1:]
    parser = common.build_parser("accelerate/commands/launch.py", prog="accelerate <command> [<args>] launch")
    try:
        args = parser.parse_args(argv)
    except SystemExit as e:
        run = common.FakeRun("accelerate/commands/launch.py")
        run.exit(e.code if isinstance(e.code, int) else 1)
    if not args.config_file:
        missing = [k for k in WARN_DEFAULTS if getattr(args, k, None) is None]
        if missing:
            print("The following values were not passed to `accelerate launch` and had defaults used instead:", file=sys.stderr)
            for k in missing:
                print(f"\t`--{k}` was set to a value of `{WARN_DEFAULTS[k]}`", file=sys.stderr)
            print("To avoid this warning pass in values for each of the problematic parameters or run `accelerate config`.", file=sys.stderr)
    cmd = [sys.executable, args.training_script, *args.training_script_args]
    env = dict(os.environ)
    env[common.ENV_LAUNCHER] = json.dumps({"argv": argv, "options": common.namespace_json(args)})
    if args.num_cpu_threads_per_process:
        env["OMP_NUM_THREADS"] = str(args.num_cpu_threads_per_process)
    if args.mixed_precision:
        env["ACCELERATE_MIXED_PRECISION"] = str(args.mixed_precision)
    sys.stderr.flush()
    process = subprocess.Popen(cmd, env=env)
    process.wait()
    if process.returncode != 0:
        if args.quiet:
            sys.exit(1)
        err = subprocess.CalledProcessError(returncode=process.returncode, cmd=cmd)
        print("Traceback (most recent call last):", file=sys.stderr)
        print(f'  File "{os.path.abspath(__file__)}", line 1, in simple_launcher', file=sys.stderr)
        print("    raise subprocess.CalledProcessError(returncode=process.returncode, cmd=cmd)", file=sys.stderr)
        print(f"subprocess.CalledProcessError: {err}", file=sys.stderr, flush=True)
        sys.exit(1)


if __name__ == "__main__":
    main()
