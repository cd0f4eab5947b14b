#!/usr/bin/env bash
# Build the documentation site as CI does (.ci/run): strict, so a broken link or anchor, a
# reference to a missing API name or a notebook cell that raises fails it, and every tutorial
# notebook executed against this checkout. Needs the docs extra: pip install -e ".[docs]".
# The site goes to site/; extra arguments go to mkdocs (e.g. --site-dir DIR).
set -euo pipefail
cd "$(dirname "$0")/.."
export DOCS_EXECUTE=true # every notebook runs, whatever the caller's environment says
export NO_MKDOCS_2_WARNING=1 # Material's notice about its successor, printed on every build
exec mkdocs build --strict "$@"
