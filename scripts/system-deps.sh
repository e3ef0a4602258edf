#!/usr/bin/env bash
# Install the Debian packages pacs-vlm's demo and tests need, only when something is missing.
#   dcmtk (storescu/storescp/dsrdump), orthanc + orthanc-dicomweb (a real PACS peer),
#   dicom3tools (dciodvfy), docker-compose (validates docker-compose.yml without an engine),
#   chromium (the review page's browser test, driven by Playwright),
#   tesseract-ocr (burned-in text in images bound for an untrusted model server),
#   npm (fetches the OHIF viewer release the viewer test serves against our DICOMweb),
#   prometheus (only for promtool: tests/test_deploy.py checks deploy/prometheus/alerts.yml),
#   postgresql / redis-server only when no server answers on 127.0.0.1:5432 / :6379
#   (the tests then start throwaway ones).
set -euo pipefail

need=()
command -v /usr/bin/storescu >/dev/null 2>&1 || need+=(dcmtk)
command -v /usr/sbin/Orthanc >/dev/null 2>&1 || need+=(orthanc)
[ -e /usr/share/orthanc/plugins/libOrthancDicomWeb.so ] || need+=(orthanc-dicomweb)
command -v dciodvfy >/dev/null 2>&1 || need+=(dicom3tools)
command -v docker-compose >/dev/null 2>&1 || need+=(docker-compose)
[ -x /usr/bin/chromium ] || need+=(chromium)
command -v tesseract >/dev/null 2>&1 || need+=(tesseract-ocr)
command -v npm >/dev/null 2>&1 || need+=(npm)
command -v promtool >/dev/null 2>&1 || need+=(prometheus)

port_open() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }
if ! port_open 5432 && ! ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1; then need+=(postgresql); fi
if ! port_open 6379 && ! command -v redis-server >/dev/null 2>&1; then need+=(redis-server); fi

if [ ${#need[@]} -eq 0 ]; then
  exit 0
fi
echo "installing Debian packages: ${need[*]}"
sudo=""
if [ "$(id -u)" -ne 0 ]; then sudo="sudo"; fi
export DEBIAN_FRONTEND=noninteractive
$sudo apt-get update -qq
# policy-rc.d keeps the packages' own services (orthanc, postgresql, prometheus) from starting system-wide
# where the image has one (Docker's exits 101); on a host run by systemd without one, prometheus (wanted for
# promtool only) is stopped and disabled again right after the install.
$sudo apt-get install -y -qq --no-install-recommends "${need[@]}"
if [[ " ${need[*]} " == *" prometheus "* ]] && [ -d /run/systemd/system ] && ! [ -x /usr/sbin/policy-rc.d ]; then
  $sudo systemctl disable --now prometheus.service || true
fi
