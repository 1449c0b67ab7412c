"""docker-compose.yml checked without Docker: the services, their wiring, and what the README names.

Compose is not run here (no Docker, no GPU in CI); what can go wrong in the file is checked
against the code it configures: the worker's command is `worker.serve` on the published port,
the upload variables are the ones `storage.settings` reads, the presigned URLs' host is one the
machine running Compose can reach, and the bucket-creating snippet really creates a bucket on a
real S3 server (the tests' SeaweedFS).
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
import uuid
from pathlib import Path
from urllib.parse import urlsplit

import pytest
import yaml

from storage.settings import ACCESS_KEY_VARS, BUCKET_VARS, ENDPOINT_VARS, SECRET_KEY_VARS
from worker.serve import ServeSettings

REPO = Path(__file__).resolve().parent.parent
COMPOSE = REPO / "docker-compose.yml"
_VARIABLE = re.compile(r"\$\{(?P<name>[A-Z_][A-Z0-9_]*)(?::-(?P<default>[^}]*))?\}")


def interpolate(text: str, env: dict[str, str] | None = None) -> str:
    """Compose's `${NAME:-default}` substitution, enough for this file."""
    env = env or {}
    return _VARIABLE.sub(lambda m: env.get(m.group("name")) or m.group("default") or "", text)


@pytest.fixture(scope="module")
def compose() -> dict:
    return yaml.safe_load(COMPOSE.read_text())


def published(service: dict) -> dict[int, str]:
    """Container port -> host binding of a service's `ports` (short syntax, defaults filled in)."""
    mapping = {}
    for entry in service.get("ports", []):
        host_ip, host_port, container_port = interpolate(entry).rsplit(":", 2)
        mapping[int(container_port)] = f"{host_ip}:{host_port}"
    return mapping


def test_services_and_the_worker_command(compose: dict) -> None:
    services = compose["services"]
    assert set(services) == {"s3", "s3-bucket", "worker"}
    worker = services["worker"]
    assert worker["command"][:4] == ["python", "-u", "-m", "worker.serve"]
    arguments = dict(zip(worker["command"][4::2], worker["command"][5::2], strict=True))
    assert arguments["--host"] == "0.0.0.0"
    assert worker["build"]["context"] == "." and "OOTD_MODEL_TYPES" in worker["build"]["args"]
    (gpu,) = worker["deploy"]["resources"]["reservations"]["devices"]
    assert gpu["driver"] == "nvidia" and "gpu" in gpu["capabilities"]
    # The worker lives in the S3 service's network, so that service publishes the worker's port.
    assert worker["network_mode"] == services["s3-bucket"]["network_mode"] == "service:s3"
    ports = published(services["s3"])
    assert ports[int(arguments["--port"])] == "127.0.0.1:8000"  # loopback unless BIND_ADDRESS says so
    assert worker["depends_on"]["s3-bucket"]["condition"] == "service_completed_successfully"
    assert services["s3-bucket"]["image"] == worker["image"]


def test_the_worker_uploads_to_the_local_s3_with_urls_the_host_can_fetch(compose: dict) -> None:
    services = compose["services"]
    env = {name: interpolate(str(value)) for name, value in services["worker"]["environment"].items()}
    names = (ENDPOINT_VARS[0], ACCESS_KEY_VARS[0], SECRET_KEY_VARS[0], BUCKET_VARS[0])
    assert all(env[name] for name in names), env
    endpoint = urlsplit(env["BUCKET_ENDPOINT_URL"])
    # Presigned URLs carry this host, and the host machine reaches it through the published port.
    assert endpoint.hostname == "localhost"
    assert published(services["s3"])[endpoint.port] == f"127.0.0.1:{endpoint.port}"
    assert f"-s3.port={endpoint.port}" in interpolate(services["s3"]["command"])
    moved = {"S3_PORT": "9444"}  # another port moves the listener, the mapping and the signed host
    assert urlsplit(interpolate(services["worker"]["environment"]["BUCKET_ENDPOINT_URL"], moved)).port == 9444
    assert "-s3.port=9444" in interpolate(services["s3"]["command"], moved)
    assert any(interpolate(entry, moved).endswith(":9444:9444") for entry in services["s3"]["ports"])

    # The S3 server's identities carry the same credentials, by default and when overridden.
    (config,) = services["s3"]["configs"]
    assert f"-s3.config={config['target']}" in services["s3"]["command"]
    content = compose["configs"][config["source"]]["content"]
    for overrides in ({}, {"S3_ACCESS_KEY": "me", "S3_SECRET_KEY": "s3cret"}):
        (identity,) = json.loads(interpolate(content, overrides))["identities"]
        (credentials,) = identity["credentials"]
        raw = services["worker"]["environment"]
        keys = {name: interpolate(raw[name], overrides) for name in (ACCESS_KEY_VARS[0], SECRET_KEY_VARS[0])}
        assert credentials == {"accessKey": keys[ACCESS_KEY_VARS[0]], "secretKey": keys[SECRET_KEY_VARS[0]]}
        assert "Write" in identity["actions"]
    assert ServeSettings.from_env(env).api_key is None  # no key unless LOCAL_API_KEY is set


def test_the_bucket_snippet_creates_the_bucket_on_a_real_s3_server(compose: dict, s3_server) -> None:
    service = compose["services"]["s3-bucket"]
    assert service["entrypoint"] == ["python", "-c"]
    (snippet,) = service["command"]
    bucket = f"compose-{uuid.uuid4().hex[:12]}"
    env = {"PATH": "/usr/bin:/bin", **s3_server.env(bucket)}
    for _ in range(2):  # a second start (bucket already there) must succeed too
        done = subprocess.run(
            [sys.executable, "-c", snippet], env=env, capture_output=True, text=True, timeout=120
        )
        assert done.returncode == 0 and f"bucket ready: {bucket}" in done.stdout, done.stderr[-2000:]
    assert bucket in [entry["Name"] for entry in s3_server.client().list_buckets()["Buckets"]]
    s3_server.buckets.append(bucket)


def test_the_readme_names_every_setting_of_the_compose_file() -> None:
    readme = (REPO / "README.md").read_text()
    after = readme.split("### Local endpoint with docker compose", 1)[1]
    section = re.split(r"\n#{2,3} ", after, maxsplit=1)[0]
    names = {match.group("name") for match in _VARIABLE.finditer(COMPOSE.read_text())}
    assert names >= {"OOTD_PORT", "S3_PORT", "S3_ACCESS_KEY", "S3_SECRET_KEY", "S3_BUCKET", "LOCAL_API_KEY"}
    missing = sorted(name for name in names if f"`{name}`" not in section)
    assert not missing, f"README's compose section does not name {missing}"
    assert "docker compose up" in section and "RUNPOD_ENDPOINT_BASE_URL" in section
