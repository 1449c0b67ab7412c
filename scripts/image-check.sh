#!/usr/bin/env bash
# Build the worker image and smoke-test it on the tiny checkpoints: CPU only, no network for the
# containers, no registry needed. Run it whenever the Dockerfile, the requirements or builder/
# change (too heavy for CI: a ~6 GB image). Usage: bash scripts/image-check.sh
#
# Engine: Docker when its daemon answers, else podman (installed from the distribution's packages
# when missing). Podman runs with this script's own configuration, written under the state folder
# and pointed to with CONTAINERS_CONF / CONTAINERS_STORAGE_CONF / CONTAINERS_REGISTRIES_CONF: the
# runtime, cgroup manager, event log and ulimits that work on this machine, and its own image store;
# the system's container files are never touched.
# Base: the Dockerfile's PYTHON_IMAGE when it is present or can be pulled; else a stand-in built
# once with debootstrap (Debian bookworm, Python 3.11 and venv, from the machine's apt mirror),
# cached in the state folder's image store and passed as --build-arg PYTHON_IMAGE.
# Proxies: the machine's locally added CA certificates and its pip index settings reach the
# build's pip step as build secrets (never a layer, never a build argument).
#
# Environment (all optional):
#   IMAGE_CHECK_DIR     state folder: container config, image store, tiny tree, results
#                       (default ${XDG_CACHE_HOME:-~/.cache}/ootd-image-check); results in $IMAGE_CHECK_DIR/out
#   IMAGE_CHECK_ENGINE  docker or podman (default: docker if its daemon answers, else podman)
#   IMAGE_CHECK_TAG     the image built and tested (default localhost/ootd-worker:image-check)
#   IMAGE_CHECK_DEBIAN_MIRROR  mirror for the stand-in base (default: the machine's apt sources)
#   IMAGE_CHECK_TIMEOUT seconds one container may run (default 2400: test_input.json's 20 steps at
#                       1024x768 take about 20 minutes on 2 busy cores)
#
# Steps (each named in the output and the summary; any failure makes the exit status 1):
#   engine base build tiny-tree cmd-job startup-log serve-runsync no-allow-cpu no-weights
#   compile-refused model-cache lb-ping no-secrets sizes cleanup
set -euo pipefail
cd "$(dirname "$0")/.."
REPO=$PWD

STATE=${IMAGE_CHECK_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/ootd-image-check}
IMAGE=${IMAGE_CHECK_TAG:-localhost/ootd-worker:image-check}
STANDIN=localhost/ootd-python-standin:3.11-bookworm
TIMEOUT=${IMAGE_CHECK_TIMEOUT:-2400}
LABEL=ootd-image-check  # on every container this script starts
OUT=$STATE/out
LOGS=$OUT/logs
NOTES=$OUT/.notes
TINY=$STATE/tiny-checkpoints  # the published layout, mounted as the image's baked folder
HUB=$STATE/hub-cache          # the same files as RunPod's model cache (hub cache layout)
RUNPOD_CACHE=/runpod-volume/huggingface-cache/hub
PY=$REPO/.venv/bin/python
HELPER=(nice -n 5 "$PY" "$REPO/scripts/image_check.py")
SMOKE_ENV=(-e ALLOW_CPU=true)
# The other jobs are test_input.json made small (2 steps at 256x192): on a CPU its 20 steps at
# 1024x768 take minutes, and the CMD step already runs it whole.
SMALL_JOB=$OUT/small_input.json
SMALL_ENV=(-e EXTRA_RESOLUTIONS=256x192)
# The runpod SDK's local test mode prints the job's result in its log, cut to 4096 characters; this
# hook (test equipment, mounted read-only, never in the image) lifts the cut so that the result
# image can be read back from the log. The CMD and the SDK run unchanged otherwise.
HOOKS=$STATE/hooks
RESULT_HOOK=(-v "$HOOKS:/opt/image-check-hooks:ro" -e PYTHONPATH=/opt/image-check-hooks)
SECRETS=$STATE/secrets
ENGINE_FILE=$STATE/engine  # the engine chosen by the first step, for the others

STEPS=(engine base build tiny-tree cmd-job startup-log serve-runsync no-allow-cpu no-weights
       compile-refused model-cache lb-ping no-secrets sizes cleanup)
# Without these the later steps cannot run: a failure here marks the rest "not run".
ESSENTIAL=" engine base build tiny-tree "

say() { printf '    %s\n' "$*"; }
fail() { printf '    FAILED: %s\n' "$*" >&2; exit 1; }
skip() { printf '    skipped: %s\n' "$*"; note "skipped: $*"; exit 75; }
note() { printf '%s\n' "$*" >>"$NOTES/$CURRENT"; }  # a line for the summary

# The engine's command line (in ENGINE), with this script's configuration for podman, at low priority.
engine_command() {
  if [ "$(cat "$ENGINE_FILE")" = podman ]; then
    ENGINE=(env "CONTAINERS_CONF=$STATE/containers/containers.conf"
            "CONTAINERS_STORAGE_CONF=$STATE/containers/storage.conf"
            "CONTAINERS_REGISTRIES_CONF=$STATE/containers/registries.conf" nice -n 5 podman)
  else
    ENGINE=(env DOCKER_BUILDKIT=1 nice -n 5 docker)
  fi
}
engine() { engine_command; "${ENGINE[@]}" "$@"; }

# run_container NAME LOG [engine run options] IMAGE [command]: one container to its end, its output
# in LOG; returns the container's exit status (124 or 137 when it ran past IMAGE_CHECK_TIMEOUT:
# the container itself outlives a killed client, so it is removed then).
run_container() {
  local name=$1 log=$2 rc=0
  shift 2
  engine_command
  timeout -k 20 "$TIMEOUT" "${ENGINE[@]}" run --rm --name "$name" --label "$LABEL" "$@" >"$log" 2>&1 || rc=$?
  case $rc in
    124|137) echo "    (stopped after IMAGE_CHECK_TIMEOUT=$TIMEOUT s)"; engine rm -f "$name" >/dev/null 2>&1 || true ;;
  esac
  return "$rc"
}

# ---- steps -----------------------------------------------------------------------------------

step_engine() {
  if [ -z "${IMAGE_CHECK_ENGINE:-}" ] && command -v docker >/dev/null && docker info >/dev/null 2>&1; then
    echo docker >"$ENGINE_FILE"
    say "Docker's daemon answers: building with docker ($(docker version --format '{{.Server.Version}}'))"
    note "docker $(docker version --format '{{.Server.Version}}')"
    return
  fi
  if [ "${IMAGE_CHECK_ENGINE:-podman}" = docker ]; then
    fail "IMAGE_CHECK_ENGINE=docker but Docker's daemon does not answer (docker info)"
  fi
  say "no Docker daemon: using podman"
  local missing=()
  command -v podman >/dev/null || missing+=(podman)
  command -v runc >/dev/null || missing+=(runc)
  if [ ${#missing[@]} -gt 0 ]; then
    say "installing ${missing[*]} from the distribution's packages (apt-get)"
    [ "$(id -u)" = 0 ] || fail "installing ${missing[*]} needs root (or install them yourself)"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
  fi
  echo podman >"$ENGINE_FILE"
  write_podman_config
  engine info --format '{{.Store.GraphDriverName}} storage in {{.Store.GraphRoot}}' | sed 's/^/    /'
  note "podman $(podman version --format '{{.Client.Version}}'), runc, cgroupfs, own config in $STATE/containers"
}

# Podman's configuration for this machine, in files of its own. Each setting is one that this
# kind of VM needs: crun refuses cgroups in hybrid (v1+v2) mode, so runc; no systemd session, so
# cgroupfs and a file event log; root without CAP_SYS_RESOURCE cannot raise ulimits past the hard
# limits, and podman's defaults ask for more (runc then fails with "error setting rlimit type 6/7:
# operation not permitted"): nofile is the hard limit, nproc at most 32768, which is what podman
# leaves its own processes (conmon, runc) when it cannot raise theirs; short names mean Docker Hub.
write_podman_config() {
  local conf=$STATE/containers run_root=/run/ootd-image-check
  [ -w /run ] || run_root=$STATE/run
  mkdir -p "$conf/networks" "$run_root"
  local nofile nproc
  nofile=$(ulimit -Hn)
  nproc=$(ulimit -Hu)
  [ "$nofile" = unlimited ] && nofile=1048576
  if [ "$nproc" = unlimited ] || [ "$nproc" -gt 32768 ]; then nproc=32768; fi
  cat >"$conf/containers.conf" <<EOF
# Written by scripts/image-check.sh for this machine; the system's files are left alone.
[containers]
default_ulimits = ["nofile=$nofile:$nofile", "nproc=$nproc:$nproc"]

[engine]
runtime = "runc"
cgroup_manager = "cgroupfs"
events_logger = "file"
events_logfile_path = "$STATE/containers/events.log"
tmp_dir = "$run_root/libpod"

[network]
network_config_dir = "$conf/networks"
EOF
  cat >"$conf/storage.conf" <<EOF
# Written by scripts/image-check.sh: an image store of its own (overlay: vfs would copy the 6 GB
# pip layer once per later layer).
[storage]
driver = "overlay"
graphroot = "$STATE/storage"
runroot = "$run_root/storage"
EOF
  cat >"$conf/registries.conf" <<EOF
# Written by scripts/image-check.sh: short names (python:3.11-slim-bookworm) mean Docker Hub.
unqualified-search-registries = ["docker.io"]
short-name-mode = "permissive"
EOF
}

step_base() {
  local official
  official=$(sed -n 's/^ARG PYTHON_IMAGE=//p' Dockerfile)
  [ -n "$official" ] || fail "the Dockerfile names no ARG PYTHON_IMAGE"
  rm -f "$STATE/base"
  if engine image inspect "$official" >/dev/null 2>&1 || timeout 120 engine pull -q "$official" >/dev/null 2>&1; then
    say "official base $official is available"
    echo "$official" >"$STATE/base"
    note "official $official"
    return
  fi
  say "the official base $official cannot be pulled (no registry reachable):"
  say "building on a STAND-IN instead, Debian bookworm + Debian's Python 3.11 (debootstrap)."
  say "Sizes and Python's patch release differ a little from the official image; the layers above it do not."
  if engine image inspect "$STANDIN" >/dev/null 2>&1; then
    say "stand-in $STANDIN is cached (built $(engine image inspect --format '{{.Created}}' "$STANDIN" | cut -c1-19))"
  else
    build_standin
  fi
  echo "$STANDIN" >"$STATE/base"
  note "stand-in $STANDIN (official $official not pullable), $(human_size "$(engine image inspect --format '{{.Size}}' "$STANDIN")")"
}

# The first bookworm mirror of the machine's apt sources (deb822 .sources files or sources.list).
debian_mirror() {
  if [ -n "${IMAGE_CHECK_DEBIAN_MIRROR:-}" ]; then echo "$IMAGE_CHECK_DEBIAN_MIRROR"; return; fi
  local file uri=""
  for file in /etc/apt/sources.list.d/*.sources; do
    [ -f "$file" ] || continue
    uri=$(awk 'BEGIN { RS = ""; FS = "\n" }
      { types = uris = suites = ""
        for (i = 1; i <= NF; i++) {
          if ($i ~ /^Types:/) types = $i; if ($i ~ /^URIs:/) uris = $i; if ($i ~ /^Suites:/) suites = $i }
        if (types ~ /[ \t]deb([ \t]|$)/ && suites ~ /[ \t]bookworm([ \t]|$)/) { split(uris, u, /[ \t]+/); print u[2]; exit } }' "$file")
    [ -n "$uri" ] && break
  done
  if [ -z "$uri" ] && [ -f /etc/apt/sources.list ]; then
    uri=$(sed -E 's/\[[^]]*\]//' /etc/apt/sources.list | awk '$1 == "deb" && $3 == "bookworm" { print $2; exit }')
  fi
  echo "${uri:-http://deb.debian.org/debian}"
}

build_standin() {
  local mirror root=$STATE/standin-root
  mirror=$(debian_mirror)
  if ! command -v debootstrap >/dev/null; then
    say "installing debootstrap (apt-get)"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends debootstrap >/dev/null
  fi
  say "debootstrap bookworm from $mirror (a few minutes, once; log: $LOGS/base.log)"
  rm -rf "$root"
  # python3-distutils: without it python3.11-venv stays half-configured (debootstrap does not
  # resolve the virtual package it depends on).
  nice -n 5 debootstrap --variant=minbase --include=python3.11,python3.11-venv,python3-distutils,ca-certificates \
    bookworm "$root" "$mirror" >"$LOGS/base.log" 2>&1 || { tail -n 20 "$LOGS/base.log"; fail "debootstrap failed"; }
  rm -rf "$root"/var/cache/apt/archives/*.deb "$root"/var/lib/apt/lists/*
  tar -C "$root" -c . | engine import \
    --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
    --change 'ENV LANG=C.UTF-8' \
    --change "LABEL org.opencontainers.image.description=stand-in for python:3.11-slim-bookworm (debootstrap from $mirror)" \
    --change 'CMD ["python3.11"]' - "$STANDIN" >>"$LOGS/base.log" 2>&1
  rm -rf "$root"
  say "stand-in $STANDIN built and cached"
}

step_build() {
  local base args=(--build-arg BAKE_WEIGHTS=none) secrets=()
  base=$(cat "$STATE/base")
  args+=(--build-arg "PYTHON_IMAGE=$base")
  [ "$(cat "$ENGINE_FILE")" = podman ] && args+=(--format docker)  # OCI format would drop SHELL
  mkdir -p "$SECRETS"
  chmod 700 "$SECRETS"
  rm -f "$SECRETS"/*
  # The machine's CA bundle plus its locally added certificates: a package index behind a proxy
  # with its own certificate authority is then trusted by pip in the build, and only there.
  local local_cas=() ca
  for ca in /usr/local/share/ca-certificates/*.crt /usr/local/share/ca-certificates/*/*.crt; do
    [ -f "$ca" ] && local_cas+=("$ca")
  done
  if [ ${#local_cas[@]} -gt 0 ]; then
    cat /etc/ssl/certs/ca-certificates.crt "${local_cas[@]}" >"$SECRETS/ca_bundle" 2>/dev/null ||
      cat "${local_cas[@]}" >"$SECRETS/ca_bundle"
    secrets+=(--secret "id=ca_bundle,src=$SECRETS/ca_bundle")
    say "this machine trusts ${#local_cas[@]} locally added CA certificate(s) (${local_cas[*]}):"
    say "the build's pip step trusts them too, through the build secret ca_bundle (never in a layer)"
    note "local CAs passed as a build secret: ${#local_cas[*]}"
  fi
  # The machine's pip index settings (pip config and PIP_* variables), as far as they work in the
  # build; a file:// index or a local folder does not exist there.
  "$PY" -m pip config list 2>/dev/null | "${HELPER[@]}" pip-config --describe "$SECRETS/pip_conf.txt" \
    >"$SECRETS/pip_conf"
  if [ -s "$SECRETS/pip_conf" ]; then
    secrets+=(--secret "id=pip_conf,src=$SECRETS/pip_conf")
    say "pip settings for the build (build secret pip_conf):"
  fi
  sed 's/^/      /' "$SECRETS/pip_conf.txt"
  say "building $IMAGE on $base with BAKE_WEIGHTS=none (log: $LOGS/build.log)"
  local start=$SECONDS rc=0
  engine build "${args[@]}" "${secrets[@]}" -t "$IMAGE" . >"$LOGS/build.log" 2>&1 || rc=$?
  rm -f "$SECRETS"/*
  [ "$rc" = 0 ] || fail "the build failed (exit $rc)"
  local took=$((SECONDS - start)) cached pip_check="the pip layer came from the layer cache"
  cached=$(grep -c -E '^(--> Using cache|#[0-9]+ CACHED)' "$LOGS/build.log" || true)
  if grep -q 'No broken requirements found' "$LOGS/build.log"; then pip_check="pip check: no broken requirements"; fi
  say "built in ${took} s ($cached steps from the layer cache); $pip_check"
  note "built in ${took} s ($cached steps from the layer cache)"
  engine image prune -f >/dev/null  # the previous build of the tag, if any, now dangling
}

step_tiny_tree() {
  if [ ! -x "$PY" ]; then
    say "no .venv in this checkout: creating it with scripts/setup-dev.sh"
    nice -n 5 bash scripts/setup-dev.sh
  fi
  rm -rf "$TINY" "$HUB"
  nice -n 5 "$PY" -m tiny_checkpoints "$TINY" --hub-cache "$HUB" 2>/dev/null | sed 's/^/    /'
  mkdir -p "$HOOKS"
  cat >"$HOOKS/sitecustomize.py" <<'EOF'
"""Written by scripts/image-check.sh: the runpod SDK logs whole job results (it cuts at 4096 chars).

Lazy: only a process that imports the SDK's logger is touched (importing the SDK here would run
in every Python process of the container, its own subprocesses included).
"""
import importlib.util
import sys

LOGGER = "runpod.serverless.modules.rp_logger"


class LiftTheCut:
    def find_spec(self, name, path=None, target=None):
        if name != LOGGER:
            return None
        sys.meta_path.remove(self)
        spec = importlib.util.find_spec(name)
        run = spec.loader.exec_module

        def exec_module(module):
            run(module)
            module.MAX_MESSAGE_LENGTH = 1 << 30

        spec.loader.exec_module = exec_module
        return spec


sys.meta_path.insert(0, LiftTheCut())
EOF
  "$PY" -c 'import json, sys
job = json.load(open("test_input.json"))
job["input"].update(steps=2, resolution="256x192")
json.dump(job, sys.stdout)' >"$SMALL_JOB"
  note "$(du -sh "$TINY" | cut -f1) tree, same files as a hub cache"
}

# The image's CMD runs test_input.json through the runpod SDK's local test mode.
step_cmd_job() {
  local rc=0
  run_container "$LABEL-cmd" "$LOGS/cmd-job.log" --network none -v "$TINY:/weights:ro" "${SMOKE_ENV[@]}" \
    "${RESULT_HOOK[@]}" "$IMAGE" || rc=$?
  [ "$rc" = 0 ] || fail "the CMD exited $rc"
  grep -q "Job local_test completed successfully" "$LOGS/cmd-job.log" || fail "no 'completed successfully' in the log"
  "${HELPER[@]}" save-result "$LOGS/cmd-job.log" "$OUT/cmd-job" | sed 's/^/    /'
  note "$(basename "$(ls "$OUT"/cmd-job-0.*)") saved"
}

# What a person reads at start-up on the CPU: no error-level line (a refused start is another step).
step_startup_log() {
  grep -q "Job local_test completed successfully" "$LOGS/cmd-job.log" 2>/dev/null ||
    fail "no start-up log to read (cmd-job did not complete)"
  local errors
  errors=$(grep -n -E '(^|[ |])(ERROR|CRITICAL)([ |:]|$)|\[E:onnxruntime|^Traceback' "$LOGS/cmd-job.log" | cut -c1-220 || true)
  if [ -n "$errors" ]; then
    printf '%s\n' "$errors" | sed 's/\x1b\[[0-9;]*m//g; s/^/      /'
    fail "$(printf '%s\n' "$errors" | wc -l) error line(s) in the CPU start-up log of the image"
  fi
  say "no error line in $LOGS/cmd-job.log"
}

free_port() {
  "$PY" -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

# wait_for_http NAME URL WANT [curl options]: poll until URL answers WANT (an HTTP status) or the
# container NAME stops; prints every distinct status seen.
wait_for_http() {
  local name=$1 url=$2 want=$3 seen="" code
  shift 3
  local deadline=$((SECONDS + TIMEOUT))
  while [ $SECONDS -lt $deadline ]; do
    code=$(curl -s -o /dev/null -w '%{http_code}' --max-time 5 "$@" "$url" || true)
    case " $seen " in *" $code "*) ;; *) seen="$seen $code" ;; esac
    if [ "$code" = "$want" ]; then echo "${seen# }"; return 0; fi
    [ "$(engine inspect --format '{{.State.Running}}' "$name" 2>/dev/null)" = true ] || { echo "${seen# }"; return 1; }
    sleep 2
  done
  echo "${seen# }"
  return 1
}

# `python -m worker.serve` in the container, published on a loopback port of the host only.
step_serve_runsync() {
  local name=$LABEL-serve port key url statuses
  port=$(free_port)
  key=$("$PY" -c 'import secrets; print(secrets.token_urlsafe(24))')
  url=http://127.0.0.1:$port/v2/local
  # shellcheck disable=SC2064  # expanded now: the step's locals are gone when the trap runs
  trap "engine logs $name >'$LOGS/serve-runsync.log' 2>&1 || true; engine rm -f $name >/dev/null 2>&1 || true" EXIT
  engine run -d --name "$name" --label "$LABEL" -p "127.0.0.1:$port:8000" -v "$TINY:/weights:ro" \
    "${SMOKE_ENV[@]}" "${SMALL_ENV[@]}" -e "LOCAL_API_KEY=$key" "$IMAGE" python -u -m worker.serve --host 0.0.0.0 --port 8000 >/dev/null
  say "container listening on 127.0.0.1:$port only; waiting for $url/health"
  statuses=$(wait_for_http "$name" "$url/health" 200 -H "Authorization: Bearer $key") ||
    fail "no 200 from /health (statuses seen: ${statuses:-none})"
  local unauthorized
  unauthorized=$(curl -s -o /dev/null -w '%{http_code}' --max-time 10 -X POST "$url/runsync" -H 'Content-Type: application/json' -d '{"input": {}}')
  [ "$unauthorized" = 401 ] || fail "a /runsync without the key got $unauthorized, not 401"
  curl -sS --max-time $((TIMEOUT + 30)) -X POST "$url/runsync?wait=300000" -H "Authorization: Bearer $key" \
    -H 'Content-Type: application/json' -d @"$SMALL_JOB" -o "$OUT/serve-runsync.json" || fail "the /runsync request failed"
  "${HELPER[@]}" save-result "$OUT/serve-runsync.json" "$OUT/serve-runsync" | sed 's/^/    /'
  note "/runsync from the host answered COMPLETED; without the key 401"
}

# refused_start NAME LOG PATTERN [engine run options]: the container exits 1 with one
# 'cannot start' line matching PATTERN (an extended regex) and no traceback.
refused_start() {
  local name=$1 log=$2 pattern=$3 rc=0
  shift 3
  run_container "$name" "$log" --network none "$@" "$IMAGE" || rc=$?
  [ "$rc" = 1 ] || fail "exit status $rc, expected 1"
  grep -Eq "cannot start: $pattern" "$log" || fail "the reason is not in the log"
  ! grep -q '^Traceback' "$log" || fail "a traceback instead of one line"
  [ "$(grep -c 'cannot start' "$log")" = 1 ] || fail "more than one 'cannot start' line"
  say "exit 1: $(grep -o 'cannot start: .*' "$log" | cut -c1-160)..."
}

# Without ALLOW_CPU a machine without CUDA is a failed start, in one line.
step_no_allow_cpu() {
  refused_start "$LABEL-nocpu" "$LOGS/no-allow-cpu.log" 'no CUDA GPU is available' -v "$TINY:/weights:ro"
  note "exit 1, one line"
}

# No weights anywhere: a failed start that names every place it looked.
step_no_weights() {
  local rc=0 log=$LOGS/no-weights.log
  run_container "$LABEL-noweights" "$log" --network none "${SMOKE_ENV[@]}" "$IMAGE" || rc=$?
  [ "$rc" = 1 ] || fail "exit status $rc, expected 1"
  local place
  for place in "baked weights /weights" "model cache $RUNPOD_CACHE/models--levihsu--OOTDiffusion" \
               "model cache $RUNPOD_CACHE/models--openai--clip-vit-large-patch14"; do
    grep -qF "$place" "$log" || fail "the message does not name $place"
  done
  ! grep -q '^Traceback' "$log" || fail "a traceback instead of one line"
  say "exit 1: $(grep -o 'cannot start: .*' "$log" | cut -c1-160)..."
  note "exit 1, names /weights and both cached repos"
}

# OOTD_COMPILE=true in an image without a C compiler (issue 18): a failed start in one line, before
# any weights load, instead of a warm-up that fails at every start (a crash loop on RunPod).
step_compile_refused() {
  refused_start "$LABEL-compile" "$LOGS/compile-refused.log" 'OOTD_COMPILE=true needs a C(\+\+)? compiler' \
    -v "$TINY:/weights:ro" "${SMOKE_ENV[@]}" -e OOTD_COMPILE=true
  note "exit 1, one line naming the missing compiler"
}

# The weights as RunPod's model cache holds them (blob symlinks, refs/main): found, and a job runs.
step_model_cache() {
  local rc=0 log=$LOGS/model-cache.log part
  run_container "$LABEL-cache" "$log" --network none -v "$HUB:$RUNPOD_CACHE:ro" "${SMOKE_ENV[@]}" "${SMALL_ENV[@]}" \
    "${RESULT_HOOK[@]}" "$IMAGE" python -u handler.py --test_input "$(cat "$SMALL_JOB")" || rc=$?
  [ "$rc" = 0 ] || fail "exit status $rc"
  for part in "OOTD diffusion weights from model cache: $RUNPOD_CACHE/models--levihsu--OOTDiffusion/snapshots/" \
              "CLIP image encoder from model cache: $RUNPOD_CACHE/models--openai--clip-vit-large-patch14/snapshots/" \
              "preprocessing networks from model cache: $RUNPOD_CACHE/models--levihsu--OOTDiffusion/snapshots/"; do
    grep -qF "$part" "$log" || fail "the log does not say: $part..."
    say "${part}..."
  done
  "${HELPER[@]}" save-result "$log" "$OUT/model-cache" | sed 's/^/    /'
  note "all three parts from the model cache, job completed"
}

# The load-balancing mode (issue 21): the image's CMD with WORKER_MODE=lb serves HTTP on PORT, and
# /ping answers 204 while loading, 200 when ready.
step_lb_ping() {
  if ! engine run --rm --network none --label "$LABEL" "$IMAGE" python -m worker.serve --help 2>/dev/null | grep -q -- '--lb'; then
    skip "the image has no load-balancing mode yet (python -m worker.serve --lb, WORKER_MODE=lb: issue 21)"
  fi
  local name=$LABEL-lb port statuses
  port=$(free_port)
  # shellcheck disable=SC2064  # expanded now: the step's locals are gone when the trap runs
  trap "engine logs $name >'$LOGS/lb-ping.log' 2>&1 || true; engine rm -f $name >/dev/null 2>&1 || true" EXIT
  engine run -d --name "$name" --label "$LABEL" -p "127.0.0.1:$port:8080" -v "$TINY:/weights:ro" \
    "${SMOKE_ENV[@]}" -e WORKER_MODE=lb -e PORT=8080 "$IMAGE" >/dev/null
  statuses=$(wait_for_http "$name" "http://127.0.0.1:$port/ping" 200) || fail "no 200 from /ping (seen: ${statuses:-none})"
  say "/ping answered: $statuses"
  local page
  page=$(curl -s --max-time 10 "http://127.0.0.1:$port/") || fail "no answer from / (the playground page)"
  grep -q 'playground.js' <<<"$page" || fail "/ does not serve the playground page"
  say "/ serves the playground page"
  note "/ping: $statuses; / serves the playground"
}

# The build secrets are in no layer: no secret file, no pip setting pointing at them or at an
# index, and none of the machine's local CA certificates in any certificate file of the image.
step_no_secrets() {
  local bodies=() ca found history
  for ca in /usr/local/share/ca-certificates/*.crt /usr/local/share/ca-certificates/*/*.crt; do
    [ -f "$ca" ] && bodies+=("$(sed -n '2p' "$ca")")  # the first line of the certificate's base64
  done
  found=$(printf '%s\n' "${bodies[@]}" | engine run -i --rm --network none --label "$LABEL" "$IMAGE" bash -c '
    cat >/tmp/local-cas
    ls -A /run/secrets 2>/dev/null | sed "s|^|/run/secrets/|"
    env | grep -E "^PIP_(CERT|CONFIG_FILE|INDEX_URL|EXTRA_INDEX_URL|TRUSTED_HOST)="
    pip config list 2>/dev/null | grep -E "index-url|cert|find-links|trusted-host"
    if [ -s /tmp/local-cas ]; then
      find / -xdev -type f \( -name "*.pem" -o -name "*.crt" -o -name "*.conf" \) -print0 2>/dev/null |
        xargs -0 grep -lF -f /tmp/local-cas 2>/dev/null | grep -v "^/tmp/local-cas$" | sed "s|$|: holds a local CA|"
    fi
    true')
  [ -z "$found" ] || fail "found in the image: $(printf '%s' "$found" | tr '\n' ' ')"
  history=$(engine history --no-trunc --format '{{.CreatedBy}}' "$IMAGE")
  ! grep -q -E 'BEGIN CERTIFICATE|index-url *=' <<<"$history" || fail "secret contents in the image history"
  say "no /run/secrets, no pip index or certificate setting, none of the ${#bodies[@]} local CA(s) in the image"
  note "checked ${#bodies[@]} local CA(s), pip settings, history"
}

step_sizes() {
  local base base_layers
  base=$(cat "$STATE/base")
  base_layers=$(engine image inspect --format '{{len .RootFS.Layers}}' "$base")
  # Gzip sizes are remembered by layer digest in the state folder: an unchanged pip layer is not
  # compressed again on the next run (the first run takes minutes).
  engine save "$IMAGE" | "${HELPER[@]}" sizes --image "$IMAGE" --base-layers "$base_layers" \
    --json "$OUT/sizes.json" --known "$STATE/layer-gzip-sizes.json" | tee "$OUT/sizes.txt" | sed 's/^/    /'
  note "$(head -n 1 "$OUT/sizes.txt" | sed "s|^$IMAGE: ||")"
}

# Nothing left behind: this script's containers, and dangling images from earlier builds.
step_cleanup() {
  local ids
  mapfile -t ids < <(engine ps -a -q --filter "label=$LABEL")
  [ ${#ids[@]} = 0 ] || engine rm -f "${ids[@]}" >/dev/null
  engine image prune -f >/dev/null
  say "$(engine images --format '{{.Repository}}:{{.Tag}} {{.Size}}' | tr '\n' ';' | sed 's/;$//; s/;/; /g')"
  note "containers removed, dangling images pruned"
}

human_size() { awk -v b="$1" 'BEGIN { if (b >= 1e9) printf "%.2f GB", b / 1e9; else printf "%.0f MB", b / 1e6 }'; }

# ---- runner ----------------------------------------------------------------------------------

mkdir -p "$STATE" "$LOGS"
rm -rf "$NOTES" "${OUT:?}"/*.png "$OUT"/*.json "$OUT"/*.txt "${LOGS:?}"/*
mkdir -p "$NOTES"
declare -A RESULT TOOK
stop_after=""
started=$SECONDS
for CURRENT in "${STEPS[@]}"; do
  if [ -n "$stop_after" ]; then RESULT[$CURRENT]="not run"; TOOK[$CURRENT]=0; continue; fi
  echo "==> [$CURRENT]"
  t0=$SECONDS
  set +e
  (set -euo pipefail; "step_${CURRENT//-/_}")
  rc=$?
  set -e
  TOOK[$CURRENT]=$((SECONDS - t0))
  case $rc in
    0) RESULT[$CURRENT]=ok ;;
    75) RESULT[$CURRENT]=skipped ;;
    *) RESULT[$CURRENT]=FAILED
       if [ -s "$LOGS/$CURRENT.log" ]; then
         echo "    last lines of $LOGS/$CURRENT.log:"
         tail -n 15 "$LOGS/$CURRENT.log" | cut -c1-300 | sed 's/^/      | /'
       fi
       case $ESSENTIAL in *" $CURRENT "*) stop_after=$CURRENT ;; esac ;;
  esac
done

echo
echo "==> summary ($(date -u '+%Y-%m-%d %H:%M UTC'), $((SECONDS - started)) s; results and logs in $OUT)"
failed=0
for CURRENT in "${STEPS[@]}"; do
  [ "${RESULT[$CURRENT]}" = ok ] || [ "${RESULT[$CURRENT]}" = skipped ] || failed=1
  details=""
  [ -f "$NOTES/$CURRENT" ] && details=$(awk 'NR > 1 { printf "; " } { printf "%s", $0 }' "$NOTES/$CURRENT")
  printf '  %-15s %-8s %5ss  %s\n' "$CURRENT" "${RESULT[$CURRENT]}" "${TOOK[$CURRENT]}" "$details"
done
if [ "$failed" = 1 ]; then
  echo "image check FAILED"
  exit 1
fi
echo "image check passed"
