#!/usr/bin/env bash
# Build audiostream's container images with Docker or podman, with or without a container registry.
#
#   deploy/docker/build.sh [--engine docker|podman] [--base IMAGE] [--ca-bundle FILE] [IMAGE ...]
#
# IMAGE is any of: analyzer producer kafka prometheus (default: all four)
#   audiostream-analyzer:VERSION    the analyzer, file replay and tools (librosa + onnxruntime)
#   audiostream-producer:VERSION    the edge microphone producer (no librosa, no onnxruntime)
#   audiostream-kafka:KAFKA_VERSION Apache Kafka from the Maven jars the tests use (KRaft, one node)
#   audiostream-prometheus:VERSION  Prometheus from Debian's package, with the scrape config and alert rules
#
# Base image (what the Dockerfiles call python:3.11-slim): --base IMAGE, else python:3.11-slim when it is
# present or can be pulled, else one made here from Debian packages (mmdebstrap, then Dockerfile.python):
# no registry needed. --ca-bundle FILE (or AUDIOSTREAM_BUILD_CA): the CA bundle pip inside the build must
# trust behind a TLS-intercepting proxy; passed as a build secret, never stored in an image.
# Podman on a host with hybrid cgroups needs the runc runtime and ulimits within the host's hard limits:
# this script writes its own containers.conf for that (CONTAINERS_CONF), never the host's.
set -euo pipefail
# podman's CNI bridge runs iptables from /usr/sbin, which a non-login shell's PATH may lack
export PATH="$PATH:/usr/sbin:/sbin"
cd "$(dirname "$0")/../.."

ENGINE=${AUDIOSTREAM_CONTAINER_ENGINE:-}
BASE=${AUDIOSTREAM_BASE_IMAGE:-}
CA=${AUDIOSTREAM_BUILD_CA:-}
WANT=()
while (($#)); do
  case "$1" in
    --engine) ENGINE=$2; shift 2 ;;
    --base) BASE=$2; shift 2 ;;
    --ca-bundle) CA=$2; shift 2 ;;
    -h|--help) sed -n '2,19p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    analyzer|producer|kafka|prometheus) WANT+=("$1"); shift ;;
    *) echo "build.sh: unknown argument '$1' (see --help)" >&2; exit 2 ;;
  esac
done
((${#WANT[@]})) || WANT=(analyzer producer kafka prometheus)
[ -z "$CA" ] || [ -s "$CA" ] || { echo "build.sh: --ca-bundle $CA: no such file (or empty)" >&2; exit 2; }

if [ -z "$ENGINE" ]; then
  if command -v docker >/dev/null 2>&1 && docker info >/dev/null 2>&1; then ENGINE=docker
  elif command -v podman >/dev/null 2>&1; then ENGINE=podman
  else echo "build.sh: neither a running Docker engine nor podman (Debian: apt-get install podman)" >&2; exit 2; fi
fi
VERSION=$(sed -n 's/^version = "\(.*\)"/\1/p' pyproject.toml)
KAFKA_VERSION=$(sed -n 's:.*<kafka.version>\(.*\)</kafka.version>.*:\1:p' deploy/kafka/pom.xml)
CACHE=${AUDIOSTREAM_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/audiostream}
BUILD=deploy/docker/.build   # build-context extras (git-ignored)
mkdir -p "$CACHE" "$BUILD"

if [ "$ENGINE" = podman ] && [ -z "${CONTAINERS_CONF:-}" ]; then
  export CONTAINERS_CONF="$CACHE/containers.conf"
  nofile=$(ulimit -Hn); nproc=$(ulimit -Hu)   # podman's defaults can exceed them; so can the hard nproc itself
  [ "$nofile" = unlimited ] || [ "$nofile" -gt 20000 ] && nofile=20000
  [ "$nproc" = unlimited ] || [ "$nproc" -gt 32768 ] && nproc=32768
  cat > "$CONTAINERS_CONF" <<CONF
[containers]
default_ulimits = ["nofile=$nofile:$nofile", "nproc=$nproc:$nproc"]
[engine]
$(command -v runc >/dev/null 2>&1 && echo 'runtime = "runc"')
CONF
fi
has_image() { "$ENGINE" image inspect "$1" >/dev/null 2>&1; }
say() { echo "build.sh: $*" >&2; }

# -- the base image -------------------------------------------------------------------------------
if [ -z "$BASE" ]; then
  if has_image python:3.11-slim || "$ENGINE" pull -q python:3.11-slim >/dev/null 2>&1; then
    BASE=python:3.11-slim
  else
    BASE=localhost/audiostream-python:3.11
    if ! has_image "$BASE"; then
      if ! has_image localhost/audiostream-debian:bookworm; then
        command -v mmdebstrap >/dev/null 2>&1 || { say "no registry and no mmdebstrap (apt-get install mmdebstrap)"; exit 2; }
        say "no registry: making a Debian bookworm base from Debian packages (mmdebstrap, ~1 min) ..."
        mmdebstrap --quiet --variant=minbase --include=ca-certificates bookworm "$BUILD/rootfs.tar"
        "$ENGINE" import -q "$BUILD/rootfs.tar" localhost/audiostream-debian:bookworm >/dev/null
        rm -f "$BUILD/rootfs.tar"
      fi
      say "building $BASE (a python:3.11-slim stand-in from Debian's python3) ..."
      "$ENGINE" build -q -f deploy/docker/Dockerfile.python -t "$BASE" deploy/docker >/dev/null
    fi
  fi
fi

# -- the images -------------------------------------------------------------------------------------
ca_file="$BUILD/ca.pem"
if [ -n "$CA" ]; then cp "$CA" "$ca_file"; else : > "$ca_file"; fi
secret=(--secret "id=ca,src=$ca_file")
from=(--from "$BASE")  # podman: replace the Dockerfiles' FROM python:3.11-slim
if [ "$ENGINE" = docker ]; then  # docker has no --from: tag the base under the name the Dockerfiles use
  [ "$BASE" = python:3.11-slim ] || docker tag "$BASE" python:3.11-slim
  from=()
  export DOCKER_BUILDKIT=1
fi
build() {  # tag dockerfile
  local t0=$SECONDS
  say "building $1 ($2, base $BASE) ..."
  "$ENGINE" build -q "${from[@]}" "${secret[@]}" -f "$2" -t "$1" . >/dev/null \
    || { say "building $1 failed (run without -q to see why: $ENGINE build -f $2 .)"; exit 1; }
  say "built $1 in $((SECONDS - t0)) s"
}
for want in "${WANT[@]}"; do
  case "$want" in
    analyzer) build "audiostream-analyzer:$VERSION" deploy/docker/Dockerfile.analyzer ;;
    producer) build "audiostream-producer:$VERSION" deploy/docker/Dockerfile.producer ;;
    kafka)
      libs=$(python3 deploy/kafka/local_kafka.py fetch)   # the jars the tests use (Maven, cached)
      rm -rf "$BUILD/kafka-libs" && cp -r "$libs" "$BUILD/kafka-libs"
      build "audiostream-kafka:$KAFKA_VERSION" deploy/docker/Dockerfile.kafka ;;
    prometheus) build "audiostream-prometheus:$VERSION" deploy/docker/Dockerfile.prometheus ;;
  esac
done
rm -f "$ca_file"
say "ready: $("$ENGINE" images --format '{{.Repository}}:{{.Tag}} {{.Size}}' | grep -E 'audiostream-(analyzer|producer|kafka|prometheus)' | tr '\n' ';')"
