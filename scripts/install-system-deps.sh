#!/usr/bin/env bash
# Installs the Debian packages the test suite starts for real: Prometheus (promtool), Alertmanager,
# ffmpeg (MJPEG camera streams), GStreamer's RTSP server, mosquitto (MQTT), systemd-analyze, and chromium with
# its driver (the review page is tested in a real headless browser).
# Does nothing when every tool is already there; needs root (or sudo) otherwise.
set -euo pipefail

need=()
have() { command -v "$1" >/dev/null 2>&1; }
have promtool || need+=(prometheus)
have prometheus-alertmanager || need+=(prometheus-alertmanager)
have ffmpeg || need+=(ffmpeg)
have mosquitto || [ -x /usr/sbin/mosquitto ] || need+=(mosquitto)
have systemd-analyze || need+=(systemd)
have openssl || need+=(openssl)  # self-signed certificates for the SMTP STARTTLS/TLS tests
have gst-launch-1.0 || need+=(gstreamer1.0-tools)
have chromium || need+=(chromium)
have chromedriver || [ -x /usr/bin/chromedriver ] || need+=(chromium-driver)
/usr/bin/python3 -c 'import gi; gi.require_version("GstRtspServer", "1.0"); from gi.repository import GstRtspServer' \
    >/dev/null 2>&1 || need+=(python3-gi gir1.2-gst-rtsp-server-1.0 gstreamer1.0-plugins-base gstreamer1.0-plugins-good)

if [ ${#need[@]} -eq 0 ]; then
    exit 0
fi
echo "installing Debian packages: ${need[*]}"
SUDO=""
if [ "$(id -u)" -ne 0 ]; then
    if have sudo; then SUDO="sudo"; else
        echo "error: these Debian packages are missing and this user cannot install them: ${need[*]}" >&2
        exit 1
    fi
fi
export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update -qq
$SUDO apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
