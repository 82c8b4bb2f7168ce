#!/usr/bin/env bash
# Installs what the tests of what a user sees need, from Debian's packages: headless Chromium (harness report
# rendered in a real browser, tests/test_report.py), pdflatex with booktabs and pdftotext (harness leaderboard
# --latex compiled and read back, tests/test_latex.py). Without them those tests skip, saying why; CI runs this
# so they run. Needs root (apt-get); does nothing when everything is already there.
set -euo pipefail
need=()
command -v chromium >/dev/null || command -v chromium-browser >/dev/null || need+=(chromium)
command -v pdflatex >/dev/null || need+=(texlive-latex-base)
kpsewhich booktabs.sty >/dev/null 2>&1 || need+=(texlive-latex-recommended)
command -v pdftotext >/dev/null || need+=(poppler-utils)
if [ ${#need[@]} -eq 0 ]; then
    echo "viewers_up: chromium, pdflatex (booktabs) and pdftotext are installed"
    exit 0
fi
if [ "$(id -u)" != 0 ]; then
    echo "viewers_up: missing ${need[*]}; run as root (apt-get install -y --no-install-recommends ${need[*]})" >&2
    exit 1
fi
echo "viewers_up: installing ${need[*]} (log: /tmp/viewers_up-apt.log)"
export DEBIAN_FRONTEND=noninteractive
apt-get update >/tmp/viewers_up-apt.log 2>&1
apt-get install -y --no-install-recommends "${need[@]}" >>/tmp/viewers_up-apt.log 2>&1 \
    || { echo "viewers_up: apt-get install failed; see /tmp/viewers_up-apt.log" >&2; exit 1; }
