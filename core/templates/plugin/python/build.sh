# scripts/install-deps.sh installs componentize-py into this venv.
[[ -x /opt/husk/plugin-tools/bin/componentize-py ]] && PATH=$PATH:/opt/husk/plugin-tools/bin
need componentize-py
# The interpreter and app.py, snapshotted after start-up (about 18 MB).
componentize-py -d wit -w policy componentize app -o "$OUT"
