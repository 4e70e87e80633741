"""`endless serve` as a user runs it: prints its URL, answers /healthz, stops on Ctrl-C."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
import urllib.request

from conftest import timeout


def test_serve_prints_its_url_is_healthy_and_stops_cleanly_on_sigint():
    """`endless serve --port 0` prints the URL to open, serves /healthz, exits 0 on SIGINT."""
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "server.cli", "serve", "--port", "0", "--model", "random"],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env=env,
    )
    try:
        deadline = time.monotonic() + timeout(60)
        url = None
        while url is None and time.monotonic() < deadline:
            line = proc.stdout.readline()
            if not line:
                break
            m = re.search(r"serving on (http://\S+/)", line)
            url = m.group(1) if m else None
        assert url, "serve printed no URL"
        with urllib.request.urlopen(url + "healthz", timeout=5) as r:
            assert r.status == 200
        proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout(20)) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_serve_refuses_bad_sampling_settings_with_a_clear_error():
    """Bad sampling settings (a reversed interval, zero steps, ...): exit 2 and say why."""
    for args, said in (
        (["--guidance-interval", "0.9", "0.1"], "guidance interval"),
        (["--steps", "0"], "steps must be"),
        (["--guidance", "nan"], "guidance must be"),
        (["--guidance-chunks", "-1"], "guidance_chunks must be"),
        (["--warmup-chunks", "99"], "warmup_chunks must be at most"),
        (["--context-noise", "0.9"], "context_noise must be"),
        (["--motion-guidance", "-1"], "motion_guidance must be"),
        (["--motion-guidance-from", "2"], "motion_guidance_from must be"),
    ):
        done = subprocess.run(
            [sys.executable, "-m", "server.cli", "serve", "--port", "0", *args],
            capture_output=True,
            text=True,
            timeout=timeout(60),
        )
        assert done.returncode == 2 and said in done.stderr, done.stderr


def test_serve_refuses_to_bind_beyond_loopback_without_an_api_key():
    """`endless serve --host 0.0.0.0` with no key: exit 2, naming --api-key and --insecure."""
    env = {k: v for k, v in os.environ.items() if k != "ENDLESS_API_KEY"}
    done = subprocess.run(
        [sys.executable, "-m", "server.cli", "serve", "--host", "0.0.0.0", "--port", "0"],
        capture_output=True,
        text=True,
        timeout=timeout(60),
        env=env,
    )
    assert done.returncode == 2, done.stderr
    assert "without an API key" in done.stderr and "--insecure" in done.stderr


def test_the_api_key_comes_from_the_flag_or_ENDLESS_API_KEY(monkeypatch):
    """--api-key (repeatable) and ENDLESS_API_KEY both give keys; --ice-address is kept."""
    import argparse

    from server import serve_cmd

    parser = argparse.ArgumentParser()
    serve_cmd.add_arguments(parser)
    monkeypatch.setenv("ENDLESS_API_KEY", "from-env")
    args = parser.parse_args(
        ["--host", "0.0.0.0", "--api-key", "a", "--api-key", "b", "--ice-address", "192.0.2.9"]
    )
    config = serve_cmd.config_from(args)
    assert config.api_keys == ("a", "b", "from-env")
    assert config.ice_addresses == ("192.0.2.9",)
    monkeypatch.delenv("ENDLESS_API_KEY")
    assert serve_cmd.config_from(parser.parse_args(["--insecure", "--host", "::"])).insecure
