need node
need npm
# componentize-qjs, at the version package.json pins, into node_modules.
if [[ ! -x node_modules/.bin/componentize-qjs || package.json -nt node_modules/.package-lock.json ]]; then
    npm install --no-audit --no-fund
fi
# QuickJS and policy.js in one component (about 1.6 MB).
./node_modules/.bin/componentize-qjs --wit wit --world policy --sync --stub-wasi \
    --js policy.js -o "$OUT"
