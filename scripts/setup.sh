#!/usr/bin/env bash
# Creates .venv at the repository root and installs the project with its worker and test extras.
# Idempotent: a second run with an unchanged pyproject.toml installs nothing.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
# The viewer's tests drive Debian's Chromium and ChromeDriver: installed here, never downloaded by a test.
# Only as root; otherwise (or should apt fail) tests/test_viewer.py skips and says why.
if { [ ! -x /usr/bin/chromium ] || [ ! -x /usr/bin/chromedriver ]; } && [ "$(id -u)" = 0 ]; then
  { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
      chromium chromium-driver >/dev/null; } || echo "setup.sh: could not install chromium; the viewer tests will skip" >&2
fi
# The DICOMweb tests start their own Orthanc PACS (Debian's orthanc and orthanc-dicomweb) on loopback ports;
# nothing uses the system service, so a policy-rc.d keeps the packages' post-install from starting one.
# Only as root; otherwise (or should apt fail) tests/test_delivery.py and the DICOMweb tests skip and say why.
if { [ ! -x /usr/sbin/Orthanc ] || [ ! -f /usr/share/orthanc/plugins/libOrthancDicomWeb.so ]; } && [ "$(id -u)" = 0 ]; then
  own_policy=
  if [ ! -e /usr/sbin/policy-rc.d ]; then
    printf '#!/bin/sh\nexit 101\n' >/usr/sbin/policy-rc.d && chmod 755 /usr/sbin/policy-rc.d && own_policy=1
  fi
  { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
      orthanc orthanc-dicomweb >/dev/null; } || echo "setup.sh: could not install orthanc; the DICOMweb tests will skip" >&2
  [ -z "$own_policy" ] || rm -f /usr/sbin/policy-rc.d
fi
stamp=.venv/.installed-$(sha256sum pyproject.toml | cut -c1-16)
if [ -f "$stamp" ]; then exit 0; fi
[ -x .venv/bin/python ] || "$PYTHON" -m venv .venv
.venv/bin/python -m pip install --quiet --upgrade pip
.venv/bin/python -m pip install --quiet -e '.[worker,dev]'
rm -f .venv/.installed-* && touch "$stamp"
