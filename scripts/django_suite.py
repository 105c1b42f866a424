"""Run Django's own test suite against a throwaway PostgreSQL, on pgreservoir's
backend or Django's stock one, on psycopg 3 or psycopg2.

Django's sdist carries the suite (tests/runtests.py); unpack it outside the
repository, install that Django and this project into one virtualenv (with
tblib, for --parallel), then for example:

    python scripts/django_suite.py /tmp/django-suite/django-5.2.20/tests \\
        --engine ours --driver psycopg2 --pool -- backends transactions

The server comes from pgreservoir.testing; the settings module is written to
a temporary directory. psycopg2 is chosen the only way Django allows, by
making ``import psycopg`` fail (a sitecustomize in that directory). The last
line printed is a summary: ran / failures / errors / skipped / expected failures.
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import tempfile
from pathlib import Path

from pgreservoir.testing import PostgresServer

_SETTINGS = """\
DATABASES = {{
    "default": {{
        "ENGINE": {engine!r}, "NAME": "django", "USER": {user!r},
        "HOST": {host!r}, "PORT": {port!r}, "OPTIONS": {options!r},
    }},
    "other": {{
        "ENGINE": {engine!r}, "NAME": "django_other", "USER": {user!r},
        "HOST": {host!r}, "PORT": {port!r}, "OPTIONS": {options!r},
    }},
}}
SECRET_KEY = "django_tests_secret_key"
PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]
DEFAULT_AUTO_FIELD = "django.db.models.AutoField"
USE_TZ = False
"""

_BLOCK_PSYCOPG = 'import sys\nsys.modules["psycopg"] = None  # Django then picks psycopg2\n'


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("tests_dir", type=Path, help="Django's tests/ directory")
    parser.add_argument("--engine", choices=("ours", "stock"), default="ours")
    parser.add_argument("--driver", choices=("psycopg", "psycopg2"), default="psycopg")
    parser.add_argument("--pool", action=argparse.BooleanOptionalAction, default=True)
    parser.add_argument("--parallel", type=int, default=2)
    parser.add_argument("--log", type=Path, help="write runtests.py's output here too")
    parser.add_argument("labels", nargs="*")
    args, extra = parser.parse_known_args()
    # Whatever follows "--" goes to runtests.py as it is (labels and options).
    labels = [arg for arg in [*extra, *args.labels] if arg != "--"]
    engine = "pgreservoir.django" if args.engine == "ours" else "django.db.backends.postgresql"
    options = {"pool": True} if args.pool else {}
    with PostgresServer(max_connections=300) as server, tempfile.TemporaryDirectory() as tmp:
        Path(tmp, "pgr_suite_settings.py").write_text(
            _SETTINGS.format(
                engine=engine, user=server.user, host=server.host, port=str(server.port),
                options=options,
            )
        )
        if args.driver == "psycopg2":
            Path(tmp, "sitecustomize.py").write_text(_BLOCK_PSYCOPG)
        env = dict(os.environ, PYTHONPATH=os.pathsep.join([tmp, str(args.tests_dir)]))
        command = [
            sys.executable, "-u", "runtests.py", "--settings=pgr_suite_settings",
            f"--parallel={args.parallel}", "--noinput", *labels,
        ]
        proc = subprocess.Popen(
            command, cwd=args.tests_dir, env=env, stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT, text=True,
        )
        assert proc.stdout is not None
        lines = []
        log = args.log.open("w") if args.log else None
        for line in proc.stdout:
            lines.append(line)
            if log:
                log.write(line)
                log.flush()
        code = proc.wait()
    text = "".join(lines)
    ran = re.findall(r"^Ran (\d+) tests?", text, re.M)
    counts = dict.fromkeys(("failures", "errors", "skipped", "expected failures"), 0)
    for key, value in re.findall(r"(failures|errors|skipped|expected failures)=(\d+)", text):
        counts[key] = int(value)
    print(
        f"SUMMARY engine={args.engine} driver={args.driver} pool={args.pool} "
        f"ran={ran[-1] if ran else '?'} "
        + " ".join(f"{k.replace(' ', '_')}={v}" for k, v in counts.items())
        + f" exit={code}"
    )
    return code


if __name__ == "__main__":
    sys.exit(main())
