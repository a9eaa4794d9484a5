#!/usr/bin/env bash
# Idempotent set-up for a fresh Debian machine: Debian packages, a Python venv
# with the project installed (all extras), and Apache Kafka's jars.
# Called by `make demo` and `make test`; safe to re-run (fast when done).
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${VENV:-.venv}
PYTHON=${PYTHON:-python3}

# Debian packages the product and its tests use for real:
#   libportaudio2 (sounddevice), libsndfile1 (soundfile), sox/espeak-ng/fluidsynth
#   + GM soundfont (dataset maker), prometheus (promtool, live scrape tests),
#   alsa-utils + pulseaudio + libasound2-plugins (the test microphone: a PulseAudio pipe source
#   captured through PortAudio's ALSA 'pulse' device), maven + a JRE (local Kafka broker).
#   podman + buildah + mmdebstrap + runc (the container images, built and run by the tests without Docker
#   or a registry: deploy/docker/build.sh), and CNI's dnsname plugin (compose services find each other by name);
#   chromium (headless, with a fake microphone: the live page and /record tested in a real browser).
DEB_PACKAGES=(libportaudio2 libsndfile1 sox libsox-fmt-all espeak-ng fluidsynth fluid-soundfont-gm
              prometheus alsa-utils pulseaudio pulseaudio-utils libasound2-plugins openmpt123 maven
              podman buildah mmdebstrap runc uidmap fuse-overlayfs slirp4netns
              golang-github-containernetworking-plugin-dnsname chromium fonts-dejavu-core)
command -v java >/dev/null 2>&1 || DEB_PACKAGES+=(default-jre-headless)
missing=()
for p in "${DEB_PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if ((${#missing[@]})); then
  SUDO=""; [ "$(id -u)" -eq 0 ] || SUDO="sudo"
  echo "setup: installing Debian packages: ${missing[*]}" >&2
  # wait (up to 10 min) for another apt/dpkg run holding the lock instead of failing at once
  APT=(apt-get -o DPkg::Lock::Timeout=600 -o Acquire::Retries=3)
  $SUDO "${APT[@]}" update -q >/dev/null
  DEBIAN_FRONTEND=noninteractive $SUDO "${APT[@]}" install -y -q --no-install-recommends "${missing[@]}" >/dev/null
fi

# Python venv with the project (editable) and every extra.
stamp="$VENV/.audiostream-installed"
want=$(sha256sum pyproject.toml | cut -c1-16)
if [ ! -x "$VENV/bin/python" ] || [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
  echo "setup: creating $VENV and installing audiostream[all,test] (about 2 GB, a few minutes) ..." >&2
  [ -x "$VENV/bin/python" ] || "$PYTHON" -m venv "$VENV"
  "$VENV/bin/python" -m pip install -q --upgrade pip >/dev/null
  # one line per package as pip collects it: progress without pip's full chatter
  if ! "$VENV/bin/python" -m pip install --progress-bar off -e '.[all,test]' 2>&1 \
      | { grep --line-buffered -E '^(Collecting|ERROR|error:|Successfully installed)' || true; } \
      | sed -u -e 's/^Successfully installed.*/setup: python packages installed/' -e 's/^Collecting /setup: pip: /' >&2
  then
    echo "setup: pip install failed (the lines above say why; run '$VENV/bin/python -m pip install -e .[all,test]' to see all)" >&2
    exit 1
  fi
  echo "$want" > "$stamp"
fi

# Apache Kafka broker jars from Maven Central (cached under ~/.cache/audiostream).
"$VENV/bin/python" deploy/kafka/local_kafka.py fetch >/dev/null
echo "setup: ready ($("$VENV/bin/python" --version), Kafka $(sed -n 's:.*<kafka.version>\(.*\)</kafka.version>.*:\1:p' deploy/kafka/pom.xml))" >&2
