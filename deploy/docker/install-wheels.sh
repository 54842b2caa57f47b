#!/bin/sh
# Installs distributions into the image's venv from the wheels of the Dockerfile's build stage
# only (mounted at /wheels): no index, no cache, nothing left behind. `+examples` stands for every
# example plugin under plugins/ (the list the build stage wrote).
set -eu
args=""
for a in "$@"; do
    if [ "$a" = "+examples" ]; then args="$args $(cat /wheels/example-plugins.txt)"; else args="$args $a"; fi
done
# Word-splitting of $args is intended: a list of requirement specifiers.
# shellcheck disable=SC2086
exec pip install --no-index --find-links /wheels/deps --find-links /wheels/app \
    --find-links /wheels/extra $args
