"""``emray judge-server``: an OpenAI-compatible judge on 127.0.0.1 with pluggable backends.

``start_judge_server(backend, options)`` runs it in a background thread (tests, ``base_url: local``);
``start_judge_server_process(...)`` runs ``python -m emray.cli judge-server`` as a subprocess.
"""

from emray.judge_server.server import (
    JudgeServer,
    JudgeServerProcess,
    start_judge_server,
    start_judge_server_process,
)

__all__ = ["JudgeServer", "JudgeServerProcess", "start_judge_server", "start_judge_server_process"]
